//! A plugin whose settings schema is invalid: the default of an integer
//! setting lies outside its range. The host must reject it at load time.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "visualization",
});

struct BadSchema;

impl Guest for BadSchema {
    fn describe() -> Descriptor {
        Descriptor {
            id: "bad-schema".to_owned(),
            version: "0.1.0".to_owned(),
            title: "Bad schema".to_owned(),
            description: "Declares a setting whose default is out of range.".to_owned(),
            reference: String::new(),
            needs_gradients: false,
            settings: vec![SettingSpec {
                name: "window".to_owned(),
                label: "Window".to_owned(),
                help: "A size in pixels.".to_owned(),
                kind: SettingKind::Integer(IntegerRange { min: 1, max: 10 }),
                default: SettingValue::Integer(99),
            }],
        }
    }

    fn render(_input: Image, _settings: Vec<Setting>) -> Result<Vec<Panel>, String> {
        Err("never loaded".to_owned())
    }
}

export!(BadSchema);
