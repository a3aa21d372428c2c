//! A plugin whose id is HTML markup with terminal control characters. The
//! host must reject the id at load time and show the rejection escaped, in
//! the pages and in its log.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "visualization",
});

struct MarkupId;

impl Guest for MarkupId {
    fn describe() -> Descriptor {
        Descriptor {
            id: "<script>alert('id')</script>\u{1b}[2J\u{7}".to_owned(),
            version: "0.1.0".to_owned(),
            title: "Markup id".to_owned(),
            description: String::new(),
            reference: String::new(),
            needs_gradients: false,
            settings: Vec::new(),
        }
    }

    fn render(_input: Image, _settings: Vec<Setting>) -> Result<Vec<Panel>, String> {
        Err("never loaded".to_owned())
    }
}

export!(MarkupId);
