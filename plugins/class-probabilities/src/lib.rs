//! A Picasso plugin that lists the model's most likely classes for an
//! image, with their softmax probabilities.

use picasso_plugin_sdk::{Descriptor, Error, Image, Panel, SettingSpec, Settings, Visualization};

/// The `class-probabilities` visualization.
#[derive(Debug)]
pub struct ClassProbabilities;

impl Visualization for ClassProbabilities {
    fn describe() -> Descriptor {
        Descriptor::new(
            "class-probabilities",
            env!("CARGO_PKG_VERSION"),
            "Class probabilities",
        )
        .description(
            "The classes the model finds most likely for the image, most likely first, \
             with their probabilities: the softmax of the model's logits. No heatmap: \
             this is what every other visualization explains.",
        )
        .reference("https://en.wikipedia.org/wiki/Softmax_function")
        .setting(SettingSpec::integer(
            "k",
            "Classes",
            "How many of the most likely classes to list.",
            1..=20,
            5,
        ))
    }

    fn render(input: &Image, settings: &Settings) -> Result<Vec<Panel>, Error> {
        let k = settings.integer_as::<usize>("k")?;

        let scores = picasso_plugin_sdk::model::classify(std::slice::from_ref(input), k)?;

        let top = scores.into_iter().next().unwrap_or_default();
        Ok(vec![Panel::scores(format!("Top {k} classes"), top)])
    }
}

picasso_plugin_sdk::export_visualization!(ClassProbabilities);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_is_valid() {
        assert_eq!(ClassProbabilities::describe().validate(), Ok(()));
    }
}
