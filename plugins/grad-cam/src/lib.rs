//! A Picasso plugin that maps where a convolutional layer finds evidence for
//! a class: Grad-CAM (Selvaraju, Cogswell, Das, Vedantam, Parikh and Batra,
//! "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
//! Localization", 2017, <https://arxiv.org/abs/1610.02391>).
//!
//! Let A be the activations of a 4-D intermediate tensor, with channels k
//! over an h x w grid, and y the logit (before softmax) of the target
//! class. Each channel's weight is the spatial mean of its gradient,
//! `w_k = mean over (i, j) of dy/dA_k(i, j)`, and the map is
//! `ReLU(sum over k of w_k A_k)`, an h x w grid upsampled bilinearly to the
//! W x H input frame. High values mark the regions whose features raise
//! the class's score.
//!
//! The tensor is the `tensor` setting, or by default the last tensor in
//! graph order that is 4-D with a spatial grid larger than 1 x 1 in both
//! directions: in a classifier, the last feature map before global
//! pooling, as the paper recommends.
//!
//! Which axis of a 4-D tensor `[1, d1, d2, d3]` holds the channels: an
//! NHWC model's inner tensors may still be channels-first after its
//! Transposes, so the model's input layout alone does not tell. The plugin
//! considers both readings, channels first (grid d2 x d3) and channels last
//! (grid d1 x d2). A reading whose grid is larger than the input frame in
//! either direction is dropped, because a classifier's feature maps only
//! shrink. If both remain, the one whose grid's aspect ratio is closer to
//! the frame's wins. If that ties too, as for a 7 x 7 x 7 tensor, or if
//! neither remains, the model's input layout decides.

use picasso_plugin_sdk::attribution::{self, Targets};
use picasso_plugin_sdk::channels::InputShape;
use picasso_plugin_sdk::grid::resize_bilinear;
use picasso_plugin_sdk::model::{self, DEFAULT_BATCH_SIZE, Layout, Seed, TensorInfo};
use picasso_plugin_sdk::{
    Descriptor, Error, HeatmapScale, Image, Panel, SettingSpec, Settings, Tensor, Visualization,
};

/// The `grad-cam` visualization.
#[derive(Debug)]
pub struct GradCam;

impl Visualization for GradCam {
    fn describe() -> Descriptor {
        let descriptor = Descriptor::new("grad-cam", env!("CARGO_PKG_VERSION"), "Grad-CAM")
            .description(DESCRIPTION)
            .reference("https://arxiv.org/abs/1610.02391")
            .needs_gradients(true)
            .setting(SettingSpec::tensor(
                "tensor",
                "Layer",
                "The 4-D activation tensor to weight by its gradient. Unset: the last one with \
                 a spatial grid above 1 x 1, usually the last convolutional features before \
                 global pooling.",
            ));
        Targets::declare(descriptor)
    }

    fn render(input: &Image, settings: &Settings) -> Result<Vec<Panel>, Error> {
        let shape = InputShape::of_model();
        let info = model::info();
        let tensor = match settings.tensor("tensor")? {
            Some(name) => chosen_tensor(name, &info.tensors, &shape)?,
            None => default_tensor(&info.tensors, &shape)?,
        };
        let (batch, targets) = Targets::for_input(input, settings)?;

        let maps = class_activation_maps(&batch.data, &targets.classes, &tensor, &shape)?;

        targets.panels(
            "Grad-CAM",
            shape.frame(),
            HeatmapScale::Sequential,
            maps,
            |class, (map, grid)| {
                let meaning = format!(
                    "ReLU of the sum of `{}` channels weighted by the gradient of the logit \
                     of {} ({} x {} grid, upsampled)",
                    tensor.name,
                    attribution::class_phrase(class),
                    grid.width,
                    grid.height
                );
                Ok((map, meaning))
            },
        )
    }
}

picasso_plugin_sdk::export_visualization!(GradCam);

const DESCRIPTION: &str = "Weights each channel of a convolutional layer's activations by the \
    mean gradient of the class's score (its logit, before softmax) over that channel, sums \
    the weighted channels and keeps the positive part, then stretches the coarse grid over \
    the image. Bright regions are where the layer finds features that raise the class's \
    score. The default layer is the last feature map before global pooling, whose cells are \
    coarse (7 x 7 for a 224-pixel ImageNet model) but carry the most class-specific \
    features; earlier layers give finer but less specific maps. The class is the chosen one, \
    or each of the image's `top-k` most likely classes.";

/// The tensor a render weights, with its name for the host and its shape.
#[derive(Debug, Clone, PartialEq)]
struct Layer {
    name: String,
    grid: Grid,
}

/// The channel count, spatial grid and channel axis of a 4-D tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Grid {
    channels: usize,
    height: usize,
    width: usize,
    channels_first: bool,
}

impl Grid {
    /// Reads the dimensions `[d1, d2, d3]` of one item of a 4-D tensor with
    /// the channel-axis rule of the crate docs.
    fn of(dims: [usize; 3], frame: &InputShape) -> Self {
        let [d1, d2, d3] = dims;
        let first = Self {
            channels: d1,
            height: d2,
            width: d3,
            channels_first: true,
        };
        let last = Self {
            channels: d3,
            height: d1,
            width: d2,
            channels_first: false,
        };
        let by_layout = match frame.layout {
            Layout::Nchw => first,
            Layout::Nhwc => last,
        };
        match (first.fits(frame), last.fits(frame)) {
            (true, false) => first,
            (false, true) => last,
            (false, false) => by_layout,
            (true, true) => {
                let (first_error, last_error) =
                    (first.aspect_error(frame), last.aspect_error(frame));
                if (first_error - last_error).abs() < 1e-9 {
                    by_layout
                } else if first_error < last_error {
                    first
                } else {
                    last
                }
            }
        }
    }

    fn fits(&self, frame: &InputShape) -> bool {
        self.height <= frame.height && self.width <= frame.width
    }

    /// Returns how far the grid's aspect ratio is from the frame's, as the
    /// absolute difference of their logarithms.
    fn aspect_error(&self, frame: &InputShape) -> f64 {
        let ratio = |height: usize, width: usize| (height as f64 / width.max(1) as f64).ln();
        (ratio(self.height, self.width) - ratio(frame.height, frame.width)).abs()
    }

    fn cells(&self) -> usize {
        self.height * self.width
    }

    fn len(&self) -> usize {
        self.channels * self.cells()
    }

    fn index(&self, channel: usize, cell: usize) -> usize {
        if self.channels_first {
            channel * self.cells() + cell
        } else {
            cell * self.channels + channel
        }
    }
}

/// Returns the 3 item dimensions of a known 4-D batch-1 shape, or `None`.
fn item_dims(shape: &[i64]) -> Option<[usize; 3]> {
    let [_, d1, d2, d3] = *shape else {
        return None;
    };
    let known = |dim: i64| usize::try_from(dim).ok().filter(|&dim| dim > 0);
    Some([known(d1)?, known(d2)?, known(d3)?])
}

/// Picks the default tensor: the last 4-D one whose grid is larger than
/// 1 x 1 in both directions.
fn default_tensor(tensors: &[TensorInfo], frame: &InputShape) -> Result<Layer, Error> {
    tensors
        .iter()
        .rev()
        .find_map(|tensor| {
            let grid = Grid::of(item_dims(&tensor.shape)?, frame);
            (grid.height > 1 && grid.width > 1).then(|| Layer {
                name: tensor.name.clone(),
                grid,
            })
        })
        .ok_or_else(|| {
            Error::msg(
                "the model has no 4-D tensor with a spatial grid above 1 x 1, which Grad-CAM \
                 needs; choose a model with convolutional layers",
            )
        })
}

/// Checks the tensor the user chose.
fn chosen_tensor(name: &str, tensors: &[TensorInfo], frame: &InputShape) -> Result<Layer, Error> {
    let Some(tensor) = tensors.iter().find(|tensor| tensor.name == name) else {
        return Err(Error::invalid_setting(
            "tensor",
            format!("the model has no inspectable tensor `{name}`"),
        ));
    };
    let Some(dims) = item_dims(&tensor.shape) else {
        let suggestion = default_tensor(tensors, frame)
            .map(|layer| format!("; choose a 4-D one such as `{}`", layer.name))
            .unwrap_or_default();
        return Err(Error::invalid_setting(
            "tensor",
            format!(
                "`{name}` has shape {:?}, but Grad-CAM needs a 4-D activation of known \
                 size{suggestion}",
                tensor.shape
            ),
        ));
    };
    let grid = Grid::of(dims, frame);
    if grid.cells() == 1 {
        let suggestion = default_tensor(tensors, frame)
            .map(|layer| format!("; choose one with a larger grid, such as `{}`", layer.name))
            .unwrap_or_default();
        return Err(Error::invalid_setting(
            "tensor",
            format!(
                "`{name}` has a 1 x 1 spatial grid, so its map would be one flat \
                 value{suggestion}"
            ),
        ));
    }
    Ok(Layer {
        name: name.to_owned(),
        grid,
    })
}

/// Runs the gradient of each class with `layer`'s activations and returns
/// each class's map in the input frame, with the grid it was computed on.
fn class_activation_maps(
    input: &[f32],
    classes: &[u32],
    layer: &Layer,
    frame: &InputShape,
) -> Result<Vec<(Vec<f32>, Grid)>, Error> {
    let items = classes
        .iter()
        .map(|&class| (input.to_vec(), Seed::Class(class)));
    let mut maps = Vec::with_capacity(classes.len());
    model::for_each_gradient_batch(items, Some(&layer.name), DEFAULT_BATCH_SIZE, |batch| {
        let (Some(activations), Some(gradients)) = (
            &batch.gradients.activations,
            &batch.gradients.activation_gradient,
        ) else {
            return Err(Error::msg(format!(
                "the host returned no activations for `{}`",
                layer.name
            )));
        };
        let grid = batch_grid(activations, layer, frame)?;
        let items = activations
            .items("the activations")?
            .zip(gradients.items("the activation gradient")?);
        for (activation, gradient) in items {
            let cam = grad_cam(&grid, activation, gradient);
            let (width, height) = frame.frame();
            let map = resize_bilinear(&cam, grid.width as u32, grid.height as u32, width, height)?;
            maps.push((map, grid));
        }
        Ok(())
    })?;
    Ok(maps)
}

/// Reads the grid of the activations the host returned, which may be more
/// precise than the model's description when that has unknown dimensions.
fn batch_grid(activations: &Tensor, layer: &Layer, frame: &InputShape) -> Result<Grid, Error> {
    let shape: Vec<i64> = activations
        .shape
        .iter()
        .map(|&dim| i64::from(dim))
        .collect();
    let dims = item_dims(&shape)
        .ok_or_else(|| activations_error(activations, &layer.name, "a 4-D [batch, ...] tensor"))?;
    let grid = Grid::of(dims, frame);
    if grid.len() == 0 {
        return Err(activations_error(
            activations,
            &layer.name,
            "a non-empty grid",
        ));
    }
    Ok(grid)
}

fn activations_error(activations: &Tensor, name: &str, expected: &str) -> Error {
    Error::Shape {
        what: format!("the activations of `{name}`"),
        found: activations.shape.clone(),
        expected: expected.to_owned(),
    }
}

/// Returns `ReLU(sum over k of w_k A_k)` over the grid, with `w_k` the mean
/// of channel k's gradient.
fn grad_cam(grid: &Grid, activation: &[f32], gradient: &[f32]) -> Vec<f32> {
    let cells = grid.cells();
    let mut cam = vec![0.0f32; cells];
    for channel in 0..grid.channels {
        let weight = (0..cells)
            .map(|cell| gradient[grid.index(channel, cell)])
            .sum::<f32>()
            / cells as f32;
        for (cell, value) in cam.iter_mut().enumerate() {
            *value += weight * activation[grid.index(channel, cell)];
        }
    }
    for value in &mut cam {
        *value = value.max(0.0);
    }
    cam
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQUARE_NCHW: InputShape = InputShape {
        layout: Layout::Nchw,
        channels: 3,
        width: 224,
        height: 224,
    };

    fn info(name: &str, shape: &[i64]) -> TensorInfo {
        TensorInfo {
            name: name.to_owned(),
            shape: shape.to_vec(),
            op_type: "Conv".to_owned(),
        }
    }

    #[test]
    fn descriptor_is_valid() {
        assert_eq!(GradCam::describe().validate(), Ok(()));
    }

    #[test]
    fn channel_axis_follows_the_grid_that_fits() {
        let nhwc = InputShape {
            layout: Layout::Nhwc,
            ..SQUARE_NCHW
        };

        // Channels first in an NHWC model, as after a Transpose.
        assert!(Grid::of([1280, 7, 7], &nhwc).channels_first);
        // Channels last in an NCHW model.
        assert!(!Grid::of([7, 7, 1280], &SQUARE_NCHW).channels_first);
        // Both fit: the square grid matches the square frame.
        assert!(Grid::of([16, 28, 28], &SQUARE_NCHW).channels_first);
        assert!(!Grid::of([28, 28, 16], &SQUARE_NCHW).channels_first);
        // A tie goes to the model's layout.
        assert!(Grid::of([7, 7, 7], &SQUARE_NCHW).channels_first);
        assert!(!Grid::of([7, 7, 7], &nhwc).channels_first);
    }

    #[test]
    fn default_is_the_last_grid_above_one_cell() {
        let tensors = [
            info("conv1", &[1, 32, 112, 112]),
            info("features", &[1, 1280, 7, 7]),
            info("pooled", &[1, 1280, 1, 1]),
            info("flat", &[1, 1280]),
            info("logits", &[1, 1000]),
        ];

        let layer = default_tensor(&tensors, &SQUARE_NCHW).expect("has features");

        assert_eq!(layer.name, "features");
        assert_eq!((layer.grid.channels, layer.grid.height), (1280, 7));
    }

    #[test]
    fn unknown_dimensions_are_skipped() {
        let tensors = [info("a", &[1, 8, 5, 5]), info("b", &[1, 8, -1, 5])];

        assert_eq!(
            default_tensor(&tensors, &SQUARE_NCHW)
                .map(|layer| layer.name)
                .ok(),
            Some("a".to_owned())
        );
        assert!(default_tensor(&tensors[1..], &SQUARE_NCHW).is_err());
    }

    #[test]
    fn chosen_tensor_must_be_4d() {
        let tensors = [info("features", &[1, 1280, 7, 7]), info("flat", &[1, 1280])];

        let error = chosen_tensor("flat", &tensors, &SQUARE_NCHW).expect_err("2-D");

        assert!(error.to_string().contains("`flat`"), "{error}");
        assert!(error.to_string().contains("`features`"), "{error}");
        assert!(chosen_tensor("missing", &tensors, &SQUARE_NCHW).is_err());
        assert!(chosen_tensor("features", &tensors, &SQUARE_NCHW).is_ok());
    }

    #[test]
    fn chosen_tensor_needs_more_than_one_cell() {
        let tensors = [
            info("features", &[1, 1280, 7, 7]),
            info("pooled", &[1, 1280, 1, 1]),
        ];

        let error = chosen_tensor("pooled", &tensors, &SQUARE_NCHW).expect_err("1 x 1");

        assert!(error.to_string().contains("`pooled`"), "{error}");
        assert!(error.to_string().contains("1 x 1"), "{error}");
        assert!(error.to_string().contains("`features`"), "{error}");
    }

    #[test]
    fn cam_weights_channels_by_mean_gradient() {
        // Two channels on a 1 x 2 grid, channels first. Channel 0 has mean
        // gradient 1 and channel 1 mean gradient -0.5.
        let grid = Grid {
            channels: 2,
            height: 1,
            width: 2,
            channels_first: true,
        };
        let activation = [1.0, 3.0, 4.0, 2.0];
        let gradient = [0.5, 1.5, -1.0, 0.0];

        let cam = grad_cam(&grid, &activation, &gradient);

        // Cell 0: 1 * 1 - 0.5 * 4 = -1, cut to 0; cell 1: 3 - 1 = 2.
        assert_eq!(cam, [0.0, 2.0]);
    }

    #[test]
    fn cam_reads_channels_last() {
        let grid = Grid {
            channels: 2,
            height: 1,
            width: 2,
            channels_first: false,
        };
        // The same values as above, interleaved per cell.
        let activation = [1.0, 4.0, 3.0, 2.0];
        let gradient = [0.5, -1.0, 1.5, 0.0];

        assert_eq!(grad_cam(&grid, &activation, &gradient), [0.0, 2.0]);
    }
}
