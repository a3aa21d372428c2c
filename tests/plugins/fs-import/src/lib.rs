//! A plugin that reads a host file with `std::fs`, which makes the
//! component import `wasi:filesystem`. The host must reject it at load time.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "visualization",
});

struct FsImport;

impl Guest for FsImport {
    fn describe() -> Descriptor {
        Descriptor {
            id: "fs-import".to_owned(),
            version: "0.1.0".to_owned(),
            title: "Reads files".to_owned(),
            description: String::new(),
            reference: String::new(),
            needs_gradients: false,
            settings: Vec::new(),
        }
    }

    fn render(_input: Image, _settings: Vec<Setting>) -> Result<Vec<Panel>, String> {
        let text = std::fs::read_to_string("/etc/passwd").map_err(|error| error.to_string())?;
        Err(format!("read {} bytes of /etc/passwd", text.len()))
    }
}

export!(FsImport);
