//! A plugin whose `describe` never returns: the host must stop it when it
//! loads the file and list the plugin as failed.

use std::hint::black_box;

wit_bindgen::generate!({
    path: "../../../wit",
    world: "visualization",
});

struct DescribeLoop;

impl Guest for DescribeLoop {
    // An endless loop is the point of this plugin; the host must stop it.
    #[allow(clippy::empty_loop)]
    fn describe() -> Descriptor {
        let mut counter = 0u64;
        loop {
            counter = black_box(counter.wrapping_add(1));
        }
    }

    fn render(_input: Image, _settings: Vec<Setting>) -> Result<Vec<Panel>, String> {
        Err("never loaded".to_owned())
    }
}

export!(DescribeLoop);
