//! A plugin built against `picasso:plugin@0.2.0`, a copy of the host's WIT
//! (in `wit/` beside this file) with only the version changed. For 0.x
//! versions a new minor version is a breaking change, so the host must
//! reject it at load time and name both versions.

wit_bindgen::generate!({
    path: "wit",
    world: "visualization",
});

struct WitNext;

impl Guest for WitNext {
    fn describe() -> Descriptor {
        Descriptor {
            id: "wit-next".to_owned(),
            version: "0.1.0".to_owned(),
            title: "Built for a newer WIT".to_owned(),
            description: String::new(),
            reference: String::new(),
            needs_gradients: false,
            settings: Vec::new(),
        }
    }

    fn render(_input: Image, _settings: Vec<Setting>) -> Result<Vec<Panel>, String> {
        // A call into the model, so the component imports the versioned
        // interface that the host checks.
        let info = picasso::plugin::model::info();
        Err(format!("never loaded ({})", info.id))
    }
}

export!(WitNext);
