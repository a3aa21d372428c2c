//! A plugin that opens a TCP connection with `std::net`, which makes the
//! component import `wasi:sockets`. The host must reject it at load time.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "visualization",
});

struct SocketImport;

impl Guest for SocketImport {
    fn describe() -> Descriptor {
        Descriptor {
            id: "socket-import".to_owned(),
            version: "0.1.0".to_owned(),
            title: "Opens sockets".to_owned(),
            description: String::new(),
            reference: String::new(),
            needs_gradients: false,
            settings: Vec::new(),
        }
    }

    fn render(_input: Image, _settings: Vec<Setting>) -> Result<Vec<Panel>, String> {
        let stream = std::net::TcpStream::connect("127.0.0.1:9").map_err(|e| e.to_string())?;
        Err(format!("connected to {:?}", stream.peer_addr()))
    }
}

export!(SocketImport);
