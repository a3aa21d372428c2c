//! A Picasso plugin that maps the input gradient of a class's logit: the
//! saliency map of Simonyan, Vedaldi and Zisserman, "Deep Inside
//! Convolutional Networks: Visualising Image Classification Models and
//! Saliency Maps", 2013, <https://arxiv.org/abs/1312.6034>.
//!
//! For each target class c, the host computes the gradient of the class's
//! logit (before softmax) with respect to the normalized input tensor. Each
//! pixel of the W x H map is the largest absolute gradient over the pixel's
//! color channels, as in the paper. High values mark the pixels
//! whose small changes move the class's score most.
//!
//! The targets are the class of the `target` setting, or when it is unset,
//! the `top-k` most likely classes of the image.

use picasso_plugin_sdk::attribution::{self, Targets};
use picasso_plugin_sdk::channels::InputShape;
use picasso_plugin_sdk::{Descriptor, Error, HeatmapScale, Image, Panel, Settings, Visualization};

/// The `saliency` visualization.
#[derive(Debug)]
pub struct Saliency;

impl Visualization for Saliency {
    fn describe() -> Descriptor {
        Targets::declare(
            Descriptor::new("saliency", env!("CARGO_PKG_VERSION"), "Saliency (gradient)")
                .description(DESCRIPTION)
                .reference("https://arxiv.org/abs/1312.6034")
                .needs_gradients(true),
        )
    }

    fn render(input: &Image, settings: &Settings) -> Result<Vec<Panel>, Error> {
        let shape = InputShape::of_model();
        let (batch, targets) = Targets::for_input(input, settings)?;
        let gradients = attribution::input_gradients(&batch.data, &targets.classes)?;

        targets.panels(
            "saliency",
            shape.frame(),
            HeatmapScale::Sequential,
            gradients,
            |class, gradient| {
                let meaning = format!(
                    "max over channels of |gradient of the logit of {}|",
                    attribution::class_phrase(class)
                );
                Ok((shape.max_abs_over_channels(&gradient)?, meaning))
            },
        )
    }
}

picasso_plugin_sdk::export_visualization!(Saliency);

const DESCRIPTION: &str = "The gradient of the class's score (its logit, before softmax) with \
    respect to the model's normalized input. Each pixel shows the largest absolute gradient \
    over its color channels: how strongly a small change of that pixel moves the score, up \
    or down. Bright regions are those the score is most sensitive to, which is not always \
    what the model relies on; maps are often speckled. The class is the chosen one, or each \
    of the image's `top-k` most likely classes.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_is_valid() {
        assert_eq!(Saliency::describe().validate(), Ok(()));
        assert!(Saliency::describe().needs_gradients);
    }
}
