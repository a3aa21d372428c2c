//! A Picasso plugin that maps gradient times input: the elementwise product
//! of the input gradient of a class's logit with the input, the attribution
//! of Shrikumar, Greenside, Shcherbina and Kundaje, "Not Just a Black Box:
//! Learning Important Features Through Propagating Activation
//! Differences", 2016, <https://arxiv.org/abs/1605.01713>.
//!
//! For each target class c, the host computes the gradient g of the class's
//! logit (before softmax) with respect to the normalized input tensor x.
//! Each pixel of the W x H map is the sum over the pixel's color channels
//! of g * x: a first-order estimate of how much that pixel's values add to
//! the logit compared with an all-zero input. Values are signed: positive
//! for evidence for the class, negative for evidence against it.
//!
//! The input is the normalized tensor the model receives, so "zero" is the
//! normalization's mean (for example pixel 127 for EfficientNet-Lite's
//! `(pixel - 127) / 128`), not black.
//!
//! The targets are the class of the `target` setting, or when it is unset,
//! the `top-k` most likely classes of the image.

use picasso_plugin_sdk::attribution::{self, Targets};
use picasso_plugin_sdk::channels::InputShape;
use picasso_plugin_sdk::{Descriptor, Error, HeatmapScale, Image, Panel, Settings, Visualization};

/// The `gradient-input` visualization.
#[derive(Debug)]
pub struct GradientInput;

impl Visualization for GradientInput {
    fn describe() -> Descriptor {
        Targets::declare(
            Descriptor::new(
                "gradient-input",
                env!("CARGO_PKG_VERSION"),
                "Gradient \u{d7} input",
            )
            .description(DESCRIPTION)
            .reference("https://arxiv.org/abs/1605.01713")
            .needs_gradients(true),
        )
    }

    fn render(input: &Image, settings: &Settings) -> Result<Vec<Panel>, Error> {
        let shape = InputShape::of_model();
        let (batch, targets) = Targets::for_input(input, settings)?;
        let gradients = attribution::input_gradients(&batch.data, &targets.classes)?;

        targets.panels(
            "gradient \u{d7} input",
            shape.frame(),
            HeatmapScale::Diverging,
            gradients,
            |class, gradient| {
                let meaning = format!(
                    "gradient of the logit of {} \u{d7} normalized input, summed over channels",
                    attribution::class_phrase(class)
                );
                let map = gradient_times_input(&shape, &gradient, &batch.data)?;
                Ok((map, meaning))
            },
        )
    }
}

picasso_plugin_sdk::export_visualization!(GradientInput);

const DESCRIPTION: &str = "The gradient of the class's score (its logit, before softmax) with \
    respect to the model's normalized input, multiplied by that input and summed over each \
    pixel's color channels. It estimates, to first order, how much each pixel adds to the \
    score compared with an input of zeros, which is the normalization's mean color. Red \
    (positive) pixels push the score up, blue (negative) ones push it down. The class is the \
    chosen one, or each of the image's `top-k` most likely classes.";

/// Returns, per pixel, the sum over channels of `gradient * input`.
fn gradient_times_input(
    shape: &InputShape,
    gradient: &[f32],
    input: &[f32],
) -> Result<Vec<f32>, Error> {
    if gradient.len() != input.len() {
        return Err(Error::msg(format!(
            "the input gradient contains {} values for an input of {}",
            gradient.len(),
            input.len()
        )));
    }
    let products: Vec<f32> = gradient.iter().zip(input).map(|(g, x)| g * x).collect();
    shape.sum_over_channels(&products)
}

#[cfg(test)]
mod tests {
    use super::*;
    use picasso_plugin_sdk::model::Layout;

    #[test]
    fn descriptor_is_valid() {
        assert_eq!(GradientInput::describe().validate(), Ok(()));
    }

    #[test]
    fn products_are_summed_per_pixel() {
        // Two pixels, three channels, interleaved (NHWC).
        let shape = InputShape::new(Layout::Nhwc, 3, 2, 1);
        let gradient = [1.0, 2.0, 3.0, -1.0, 0.5, 0.0];
        let input = [1.0, 1.0, 1.0, 2.0, 2.0, 9.0];

        let map = gradient_times_input(&shape, &gradient, &input).expect("same length");

        assert_eq!(map, [6.0, -1.0]);
        assert!(gradient_times_input(&shape, &gradient, &input[..5]).is_err());
    }
}
