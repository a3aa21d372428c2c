//! A Picasso plugin that averages saliency maps over noisy copies of the
//! input: SmoothGrad (Smilkov, Thorat, Kim, Viégas and Wattenberg,
//! "SmoothGrad: removing noise by adding noise", 2017,
//! <https://arxiv.org/abs/1706.03825>).
//!
//! Let x be the normalized input tensor and [lo, hi] the range that
//! normalization gives pixel values 0 to 255 ([`model::input_range`]). For
//! each target class, `samples` copies x + n go through the gradient model,
//! where each value of n is drawn from a normal distribution with standard
//! deviation `noise * (hi - lo)`, from the host's seeded stream. Each pixel
//! of the W x H map is the mean over the copies of the largest absolute
//! gradient of the class's logit over the pixel's color channels: the
//! paper's smoothing applied to the saliency map of Simonyan et al. The
//! noisy values are not clipped to the range.
//!
//! The targets are the class of the `target` setting, or when it is unset,
//! the `top-k` most likely classes of the image.

use picasso_plugin_sdk::attribution::{self, Targets};
use picasso_plugin_sdk::channels::InputShape;
use picasso_plugin_sdk::model::{self, DEFAULT_BATCH_SIZE, Seed};
use picasso_plugin_sdk::{
    Descriptor, Error, HeatmapScale, Image, Panel, SettingSpec, Settings, Visualization, host,
};

/// The `smoothgrad` visualization.
#[derive(Debug)]
pub struct SmoothGrad;

impl Visualization for SmoothGrad {
    fn describe() -> Descriptor {
        let descriptor = Descriptor::new("smoothgrad", env!("CARGO_PKG_VERSION"), "SmoothGrad")
            .description(DESCRIPTION)
            .reference("https://arxiv.org/abs/1706.03825")
            .needs_gradients(true)
            .setting(SettingSpec::integer(
                "samples",
                "Samples",
                "How many noisy copies of the image to average per class. Each is one \
                 gradient run; the paper finds little change beyond about 50.",
                1..=200,
                25,
            ))
            .setting(SettingSpec::float(
                "noise",
                "Noise level",
                "Standard deviation of the Gaussian noise, as a fraction of the range of the \
                 model's normalized input (pixel 0 to 255). The paper recommends 0.1 to 0.2.",
                0.0..=1.0,
                0.15,
            ));
        Targets::declare(descriptor)
    }

    fn render(input: &Image, settings: &Settings) -> Result<Vec<Panel>, Error> {
        let samples = settings.integer_as::<usize>("samples")?;
        let noise = settings.float("noise")? as f32;
        let shape = InputShape::of_model();
        let (batch, targets) = Targets::for_input(input, settings)?;
        let (low, high) = model::input_range()?;
        let sigma = noise * (high - low);

        let maps = smoothed_maps(&shape, &batch.data, &targets.classes, samples, sigma)?;

        targets.panels(
            "SmoothGrad",
            shape.frame(),
            HeatmapScale::Sequential,
            maps,
            |class, map| {
                let meaning = format!(
                    "mean over {samples} noisy copies of max over channels of |gradient of \
                     the logit of {}|",
                    attribution::class_phrase(class)
                );
                Ok((map, meaning))
            },
        )
    }
}

picasso_plugin_sdk::export_visualization!(SmoothGrad);

const DESCRIPTION: &str = "A saliency map averaged over noisy copies of the image. Gaussian \
    noise, scaled to the model's input range by `noise`, is added to the normalized input \
    `samples` times; each copy gives the gradient of the class's score (its logit, before \
    softmax), and each pixel shows the mean over the copies of the largest absolute gradient \
    over its color channels. Averaging removes much of the speckle of a single gradient, so \
    the map shows more clearly which regions the score is sensitive to. The class is the \
    chosen one, or each of the image's `top-k` most likely classes.";

/// Runs `samples` noisy copies of `input` per class and returns one mean
/// map per class.
fn smoothed_maps(
    shape: &InputShape,
    input: &[f32],
    classes: &[u32],
    samples: usize,
    sigma: f32,
) -> Result<Vec<Vec<f32>>, Error> {
    let len = u32::try_from(input.len())
        .map_err(|_| Error::msg(format!("an input of {} values is too large", input.len())))?;
    let items = (0..classes.len() * samples).map(|item| {
        let noisy = add_noise(input, &host::random_normal(len), sigma);
        (noisy, Seed::Class(classes[item / samples]))
    });

    let mut maps = vec![vec![0.0; shape.pixels()]; classes.len()];
    model::for_each_gradient_batch(items, None, DEFAULT_BATCH_SIZE, |batch| {
        for (offset, gradient) in batch.input_gradients()?.enumerate() {
            let saliency = shape.max_abs_over_channels(gradient)?;
            let map = &mut maps[(batch.first + offset) / samples];
            for (sum, value) in map.iter_mut().zip(saliency) {
                *sum += value / samples as f32;
            }
        }
        Ok(())
    })?;
    Ok(maps)
}

/// Returns `input + sigma * normal`, value by value.
fn add_noise(input: &[f32], normal: &[f32], sigma: f32) -> Vec<f32> {
    input
        .iter()
        .zip(normal)
        .map(|(x, n)| x + sigma * n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_is_valid() {
        assert_eq!(SmoothGrad::describe().validate(), Ok(()));
    }

    #[test]
    fn noise_is_scaled_by_sigma() {
        let noisy = add_noise(&[1.0, -1.0, 0.0], &[0.5, -2.0, 1.0], 0.2);

        for (got, want) in noisy.iter().zip([1.1, -1.4, 0.2]) {
            assert!((got - want).abs() < 1e-6, "{noisy:?}");
        }
    }
}
