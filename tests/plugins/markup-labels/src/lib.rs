//! A valid plugin whose visible texts are HTML: the pages must show them
//! escaped and never run them.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "visualization",
});

struct MarkupLabels;

impl Guest for MarkupLabels {
    fn describe() -> Descriptor {
        Descriptor {
            id: "markup-labels".to_owned(),
            version: "0.1.0".to_owned(),
            title: "<script>alert('title')</script>".to_owned(),
            description: "<img src=x onerror=alert('description')>".to_owned(),
            reference: String::new(),
            needs_gradients: false,
            settings: vec![SettingSpec {
                name: "mode".to_owned(),
                label: "<script>alert('label')</script>".to_owned(),
                help: "<b onmouseover=alert('help')>help</b>".to_owned(),
                kind: SettingKind::Choice(vec![
                    "<script>alert('option')</script>".to_owned(),
                    "plain".to_owned(),
                ]),
                default: SettingValue::Choice("plain".to_owned()),
            }],
        }
    }

    fn render(_input: Image, _settings: Vec<Setting>) -> Result<Vec<Panel>, String> {
        Ok(vec![Panel {
            title: "<script>alert('panel')</script>".to_owned(),
            content: PanelContent::Scores(Vec::new()),
        }])
    }
}

export!(MarkupLabels);
