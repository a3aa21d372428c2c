//! The classifier being explained, as the host provides it during a render.
//!
//! Everything here works on the model chosen for the current render, in
//! the model's own input frame: [`info`] gives its size, layout and labels,
//! [`preprocess`] turns images into an input batch, and [`logits`] and
//! [`gradients`] run it. Every image sent through `logits` or `gradients`
//! counts against the render's budget of model work. A render that spends
//! its budget or passes its deadline is stopped by the host, so the call
//! does not return; a single call that is too large fails with
//! [`ModelError::LimitExceeded`] instead.
//!
//! Most plugins need only the batching helpers: [`for_each_batch`] and
//! [`map_batches`] preprocess and run a stream of images in batches and
//! report progress, [`for_each_gradient_batch`] does the same for gradients
//! of input tensors, and [`classify`] returns ranked class scores.
//!
//! The functions that call the host work only on wasm32 inside a render;
//! in native builds they panic.

use std::sync::OnceLock;

use crate::__bindings::picasso::plugin::model as imports;
use crate::channels::InputShape;
use crate::{ClassScore, Error, Image, Tensor, host, scores};

/// The results of [`gradients`]: logits, the input gradient, and the
/// activations of a requested intermediate tensor with their gradient.
pub use imports::GradientResult as Gradients;
/// Why a model call failed: invalid argument, unsupported, limit exceeded
/// or a failed run.
pub use imports::ModelError;
/// A description of the model: identity, input frame, labels and
/// inspectable tensors.
pub use imports::ModelInfo;
/// The seed of a gradient: one class, or a weight per class.
pub use imports::Seed;
/// An intermediate tensor that [`gradients`] can return.
pub use imports::TensorInfo;
/// The memory order of the input tensor and the kind of output vector.
pub use imports::{Layout, OutputKind};

/// A batch size that keeps a batch of 224 x 224 RGB inputs near 10 MB and
/// amortizes the cost of each host call.
pub const DEFAULT_BATCH_SIZE: usize = 16;

/// Returns the description of the model.
///
/// The host creates a fresh instance for every render, so the first call
/// fetches the description and later calls in the same render reuse it.
pub fn info() -> &'static ModelInfo {
    static INFO: OnceLock<ModelInfo> = OnceLock::new();
    INFO.get_or_init(imports::info)
}

/// Returns the label of class `index`, if the model has that class.
pub fn label(index: u32) -> Option<&'static str> {
    info().labels.get(index as usize).map(String::as_str)
}

/// Converts images to one input batch. The host takes images already at
/// the model's input size as they are, resizes and crops others as the
/// model's configuration says, then normalizes each. Alpha is ignored.
///
/// # Errors
///
/// Fails with [`Error::Model`] if the host rejects the images or the
/// render's budget is spent.
pub fn preprocess(images: &[Image]) -> Result<Tensor, Error> {
    imports::preprocess(images).map_err(Error::model("preprocess"))
}

/// Runs the model on an input batch and returns its logits, shaped
/// `[batch, classes]`.
///
/// For models whose output is already probabilities, the host's logits are
/// the natural logarithms of those probabilities, so [`scores::softmax`]
/// returns the probabilities in both cases.
///
/// # Errors
///
/// Fails with [`Error::Model`] if the host rejects the batch or the run
/// fails, and with [`Error::Shape`] if the result is not one row per item.
pub fn logits(batch: &Tensor) -> Result<Tensor, Error> {
    let logits = imports::logits(batch).map_err(Error::model("logits"))?;
    let items = batch.shape.first().copied().unwrap_or(0);
    check_logits(&logits, items as usize)?;
    Ok(logits)
}

/// Preprocesses images and runs the model on them in one host call,
/// returning the logits shaped `[batch, classes]`.
///
/// The result equals `logits(&preprocess(images)?)`, but the input tensor,
/// three times the size of the images, is never copied into the plugin, so
/// batches of perturbed images run faster this way.
///
/// # Errors
///
/// Fails as [`preprocess`] and [`logits`] do.
pub fn logits_of_images(images: &[Image]) -> Result<Tensor, Error> {
    let logits = imports::logits_of_images(images).map_err(Error::model("logits-of-images"))?;
    check_logits(&logits, images.len())?;
    Ok(logits)
}

/// Runs the model and its derivative on an input batch, with one seed per
/// item. When `tensor` names one of [`ModelInfo::tensors`], its activations
/// and their gradient come back too.
///
/// # Errors
///
/// Fails with [`Error::Model`], for example [`ModelError::Unsupported`] for
/// a model whose gradients the host cannot compute.
pub fn gradients(batch: &Tensor, seeds: &[Seed], tensor: Option<&str>) -> Result<Gradients, Error> {
    imports::gradients(batch, seeds, tensor).map_err(Error::model("gradients"))
}

/// Returns the smallest and largest value that [`preprocess`] gives any
/// channel of any pixel: the range of the normalized input tensor for pixel
/// values 0 to 255. Noise scaled to this range means the same for models
/// with different normalizations.
///
/// It preprocesses a black and a white image of the input size, which costs
/// no model run.
///
/// # Errors
///
/// Fails as [`preprocess`] does, or if the result is empty or not finite.
pub fn input_range() -> Result<(f32, f32), Error> {
    let info = info();
    let black = Image::filled(info.width, info.height, [0, 0, 0, 255]);
    let white = Image::filled(info.width, info.height, [255, 255, 255, 255]);
    let batch = preprocess(&[black, white])?;
    let (min, max) = batch
        .data
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(min, max), &value| {
            (min.min(value), max.max(value))
        });
    if !(min.is_finite() && max.is_finite()) {
        return Err(batch.shape_error("the preprocessed black and white images", "finite values"));
    }
    Ok((min, max))
}

/// Runs the model on an input batch and returns each item's class
/// probabilities: the softmax of its logits.
///
/// # Errors
///
/// Fails as [`logits`] does.
pub fn probabilities(batch: &Tensor) -> Result<Vec<Vec<f32>>, Error> {
    let logits = logits(batch)?;
    let rows = logits.rows("the logits")?;
    Ok(rows.map(scores::softmax).collect())
}

/// Returns the `k` most likely classes of one row of logits, most likely
/// first, labeled with the model's labels.
pub fn top_k(logits: &[f32], k: usize) -> Vec<ClassScore> {
    scores::class_scores(logits, &info().labels, k)
}

/// Preprocesses and runs `images` and returns each image's `k` most likely
/// classes, most likely first. Reports no progress.
///
/// # Errors
///
/// Fails as [`preprocess`] and [`logits`] do.
pub fn classify(images: &[Image], k: usize) -> Result<Vec<Vec<ClassScore>>, Error> {
    let mut classes = Vec::with_capacity(images.len());
    run_batches(
        images.iter().cloned(),
        DEFAULT_BATCH_SIZE,
        &mut run_model,
        &mut |_, _| {},
        |batch| {
            classes.extend(batch.rows().map(|row| top_k(row, k)));
            Ok(())
        },
    )?;
    Ok(classes)
}

/// One batch of model results, handed to the callback of
/// [`for_each_batch`] and [`map_batches`].
#[derive(Debug)]
pub struct Batch {
    /// The position of the batch's first image in the whole stream.
    pub first: usize,
    /// The logits, shaped `[items, classes]`, one row per image.
    pub logits: Tensor,
}

impl Batch {
    /// Returns the number of images in the batch.
    pub fn len(&self) -> usize {
        self.logits.shape.first().map_or(0, |&items| items as usize)
    }

    /// Returns whether the batch contains no image; never true for a batch
    /// handed to a callback.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns the logits of each image, in stream order.
    pub fn rows(&self) -> std::slice::ChunksExact<'_, f32> {
        let classes = self.logits.shape.get(1).map_or(1, |&c| c as usize);
        self.logits.data.chunks_exact(classes.max(1))
    }

    /// Returns the class probabilities of each image, in stream order.
    pub fn probabilities(&self) -> impl Iterator<Item = Vec<f32>> + '_ {
        self.rows().map(scores::softmax)
    }
}

/// Preprocesses and runs `images` in batches of `batch_size` and calls `f`
/// with each batch's logits, in order. After each batch it reports
/// progress as images done out of `images.len()`.
///
/// `images` may be a lazy iterator, such as perturbed copies made on the
/// fly, so that only one batch of images is in memory at a time.
///
/// # Errors
///
/// Fails if `batch_size` is 0, if a model call fails, or with the first
/// error `f` returns; no batch runs after an error.
pub fn for_each_batch<I, F>(images: I, batch_size: usize, f: F) -> Result<(), Error>
where
    I: IntoIterator<Item = Image>,
    I::IntoIter: ExactSizeIterator,
    F: FnMut(Batch) -> Result<(), Error>,
{
    run_batches(images, batch_size, &mut run_model, &mut host::progress, f)
}

/// Like [`for_each_batch`], but collects what `f` returns for each batch.
///
/// # Errors
///
/// Fails as [`for_each_batch`] does.
pub fn map_batches<I, T, F>(images: I, batch_size: usize, mut f: F) -> Result<Vec<T>, Error>
where
    I: IntoIterator<Item = Image>,
    I::IntoIter: ExactSizeIterator,
    F: FnMut(Batch) -> Result<T, Error>,
{
    let mut results = Vec::new();
    for_each_batch(images, batch_size, |batch| {
        results.push(f(batch)?);
        Ok(())
    })?;
    Ok(results)
}

/// One batch of gradient results, handed to the callback of
/// [`for_each_gradient_batch`].
#[derive(Debug)]
pub struct GradientBatch {
    /// The position of the batch's first item in the whole stream.
    pub first: usize,
    /// The host's results: logits, input gradients and, when a tensor was
    /// requested, its activations and their gradient, each shaped
    /// `[items, ...]`.
    pub gradients: Gradients,
}

impl GradientBatch {
    /// Returns the number of items in the batch.
    pub fn len(&self) -> usize {
        self.gradients
            .logits
            .shape
            .first()
            .map_or(0, |&items| items as usize)
    }

    /// Returns whether the batch contains no item; never true for a batch
    /// handed to a callback.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns the logits of each item, in stream order.
    ///
    /// # Errors
    ///
    /// Fails if the host's logits are not `[items, classes]`.
    pub fn logits(&self) -> Result<std::slice::ChunksExact<'_, f32>, Error> {
        self.gradients.logits.rows("the logits of `gradients`")
    }

    /// Returns the input gradient of each item, in stream order, in the
    /// model's input layout.
    ///
    /// # Errors
    ///
    /// Fails if the host's input gradient does not split into items.
    pub fn input_gradients(&self) -> Result<std::slice::ChunksExact<'_, f32>, Error> {
        self.gradients
            .input_gradient
            .items("the input gradient of `gradients`")
    }
}

/// Runs the gradients of a stream of input items in batches of
/// `batch_size` and calls `f` with each batch's results, in order. After
/// each batch it reports progress as items done out of `items.len()`.
///
/// Each item is one normalized input in the model's layout (as
/// [`InputShape::of_model`] describes it, without the batch dimension) with
/// its [`Seed`]. Items of different seeds may share a batch. When `tensor`
/// names an inspectable tensor, its activations and their gradient come
/// back too. `items` may be a lazy iterator, such as noisy copies made on
/// the fly, so that only one batch is in memory at a time.
///
/// # Errors
///
/// Fails if `batch_size` is 0, if an item does not contain one input's
/// values, or if a model call fails or returns a result of the wrong size.
/// Also fails with the first error that `f` returns. No batch runs after an
/// error.
pub fn for_each_gradient_batch<I, F>(
    items: I,
    tensor: Option<&str>,
    batch_size: usize,
    f: F,
) -> Result<(), Error>
where
    I: IntoIterator<Item = (Vec<f32>, Seed)>,
    I::IntoIter: ExactSizeIterator,
    F: FnMut(GradientBatch) -> Result<(), Error>,
{
    let mut run = |batch: &Tensor, seeds: &[Seed]| gradients(batch, seeds, tensor);
    run_gradient_batches(
        items,
        InputShape::of_model(),
        batch_size,
        tensor.is_some(),
        &mut run,
        &mut host::progress,
        f,
    )
}

/// A gradient model call on a batch and its seeds.
type GradientRun<'a> = dyn FnMut(&Tensor, &[Seed]) -> Result<Gradients, Error> + 'a;

/// Runs the batching loop of [`for_each_gradient_batch`], with the model run
/// and the progress report passed in so that it can be tested natively.
fn run_gradient_batches<I, F>(
    items: I,
    shape: InputShape,
    batch_size: usize,
    with_tensor: bool,
    run: &mut GradientRun<'_>,
    progress: &mut dyn FnMut(usize, usize),
    mut f: F,
) -> Result<(), Error>
where
    I: IntoIterator<Item = (Vec<f32>, Seed)>,
    I::IntoIter: ExactSizeIterator,
    F: FnMut(GradientBatch) -> Result<(), Error>,
{
    if batch_size == 0 {
        return Err(Error::msg("batch size is 0; use at least 1"));
    }

    let mut items = items.into_iter();
    let total = items.len();
    let mut done = 0;
    loop {
        let mut data = Vec::new();
        let mut seeds = Vec::with_capacity(batch_size);
        for (input, seed) in items.by_ref().take(batch_size) {
            if input.len() != shape.len() {
                return Err(Error::msg(format!(
                    "gradient item {} contains {} values, expected {} for one {:?} input",
                    done + seeds.len(),
                    input.len(),
                    shape.len(),
                    shape.dims()
                )));
            }
            data.extend_from_slice(&input);
            seeds.push(seed);
        }
        if seeds.is_empty() {
            return Ok(());
        }

        let mut dims = vec![seeds.len() as u32];
        dims.extend(shape.dims());
        let batch = Tensor::new(dims, data)?;
        let gradients = run(&batch, &seeds)?;
        check_gradients(&gradients, &batch, with_tensor)?;
        f(GradientBatch {
            first: done,
            gradients,
        })?;
        done += seeds.len();
        progress(done, total);
    }
}

fn check_gradients(gradients: &Gradients, batch: &Tensor, with_tensor: bool) -> Result<(), Error> {
    let items = batch.shape.first().copied().unwrap_or(0) as usize;
    check_logits(&gradients.logits, items)?;
    let input_gradient = &gradients.input_gradient;
    if input_gradient.shape != batch.shape || input_gradient.data.len() != batch.data.len() {
        return Err(input_gradient.shape_error(
            "the input gradient of `gradients`",
            &format!("the input batch's shape {:?}", batch.shape),
        ));
    }
    if with_tensor {
        let (Some(activations), Some(gradient)) =
            (&gradients.activations, &gradients.activation_gradient)
        else {
            return Err(Error::msg(
                "`gradients` returned no activations for the requested tensor",
            ));
        };
        let items_of = |tensor: &Tensor| tensor.shape.first().copied().unwrap_or(0) as usize;
        if items_of(activations) != items || gradient.shape != activations.shape {
            return Err(gradient.shape_error(
                "the activation gradient of `gradients`",
                &format!(
                    "the activations' shape {:?}, one item per input",
                    activations.shape
                ),
            ));
        }
    }
    Ok(())
}

fn run_model(images: &[Image]) -> Result<Tensor, Error> {
    logits_of_images(images)
}

/// The batching loop of [`for_each_batch`], with the model run and the
/// progress report passed in so that it can be tested natively.
fn run_batches<I, F>(
    images: I,
    batch_size: usize,
    run: &mut dyn FnMut(&[Image]) -> Result<Tensor, Error>,
    progress: &mut dyn FnMut(usize, usize),
    mut f: F,
) -> Result<(), Error>
where
    I: IntoIterator<Item = Image>,
    I::IntoIter: ExactSizeIterator,
    F: FnMut(Batch) -> Result<(), Error>,
{
    if batch_size == 0 {
        return Err(Error::msg("batch size is 0; use at least 1"));
    }

    let mut images = images.into_iter();
    let total = images.len();
    let mut done = 0;
    let mut chunk = Vec::with_capacity(batch_size.min(total));
    loop {
        chunk.clear();
        chunk.extend(images.by_ref().take(batch_size));
        if chunk.is_empty() {
            return Ok(());
        }

        let logits = run(&chunk)?;
        check_logits(&logits, chunk.len())?;
        f(Batch {
            first: done,
            logits,
        })?;
        done += chunk.len();
        progress(done, total);
    }
}

fn check_logits(logits: &Tensor, items: usize) -> Result<(), Error> {
    let rows = logits.rows("the logits of `logits`")?;
    if rows.len() != items {
        return Err(logits.shape_error(
            "the logits of `logits`",
            &format!("one row for each of the {items} images in the batch"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for the model: image `i`'s logits are `[i, -i]`, where
    /// `i` is its red value, so every row can be traced to its image.
    fn red_logits(images: &[Image]) -> Result<Tensor, Error> {
        let data = images
            .iter()
            .flat_map(|image| {
                let red = f32::from(image.pixels[0]);
                [red, -red]
            })
            .collect();
        Tensor::new(vec![images.len() as u32, 2], data)
    }

    fn numbered(count: u8) -> impl ExactSizeIterator<Item = Image> {
        (0..count).map(|red| Image::filled(2, 2, [red, 0, 0, 255]))
    }

    #[test]
    fn batches_cover_stream_in_order() {
        let mut sizes = Vec::new();
        let mut firsts = Vec::new();
        let mut reds = Vec::new();
        let mut reports = Vec::new();

        run_batches(
            numbered(37),
            16,
            &mut red_logits,
            &mut |done, total| reports.push((done, total)),
            |batch| {
                sizes.push(batch.len());
                firsts.push(batch.first);
                reds.extend(batch.rows().map(|row| row[0] as u8));
                Ok(())
            },
        )
        .expect("37 images");

        assert_eq!(sizes, [16, 16, 5]);
        assert_eq!(firsts, [0, 16, 32]);
        assert_eq!(reds, (0..37).collect::<Vec<u8>>());
        assert_eq!(reports, [(16, 37), (32, 37), (37, 37)]);
    }

    #[test]
    fn empty_stream_runs_nothing() {
        let mut calls = 0;

        run_batches(
            numbered(0),
            16,
            &mut |images| {
                calls += 1;
                red_logits(images)
            },
            &mut |_, _| {},
            |_| Ok(()),
        )
        .expect("no images");

        assert_eq!(calls, 0);
    }

    #[test]
    fn zero_batch_size_is_rejected() {
        let result = run_batches(numbered(3), 0, &mut red_logits, &mut |_, _| {}, |_| Ok(()));

        assert!(result.is_err_and(|error| error.to_string().contains("batch size is 0")));
    }

    #[test]
    fn callback_error_stops_the_stream() {
        let mut batches = 0;

        let result = run_batches(numbered(40), 8, &mut red_logits, &mut |_, _| {}, |batch| {
            batches += 1;
            if batch.first >= 8 {
                Err(Error::msg("stop"))
            } else {
                Ok(())
            }
        });

        assert!(result.is_err());
        assert_eq!(batches, 2);
    }

    #[test]
    fn wrong_row_count_is_rejected() {
        let mut one_row = |_: &[Image]| Tensor::new(vec![1, 2], vec![0.0, 1.0]);

        let result = run_batches(numbered(3), 4, &mut one_row, &mut |_, _| {}, |_| Ok(()));

        let error = result.expect_err("1 row for 3 images");
        assert!(error.to_string().contains("3 images"), "{error}");
    }

    #[test]
    fn batch_probabilities_are_row_softmax() {
        let batch = Batch {
            first: 0,
            logits: Tensor::new(vec![2, 2], vec![0.0, 0.0, 1.0, -1.0]).expect("2 x 2"),
        };

        let probabilities: Vec<Vec<f32>> = batch.probabilities().collect();

        assert_eq!(probabilities[0], [0.5, 0.5]);
        assert_eq!(probabilities[1], scores::softmax(&[1.0, -1.0]));
    }

    /// A stand-in for the gradient model on 1 x 2 x 1 inputs: an item's
    /// logits are `[sum of its values, its seed class]` and its input
    /// gradient is its values times the seed class plus one.
    fn seeded_gradients(batch: &Tensor, seeds: &[Seed]) -> Result<Gradients, Error> {
        let class = |seed: &Seed| match seed {
            Seed::Class(class) => *class as f32,
            Seed::Weights(_) => -1.0,
        };
        let mut logits = Vec::new();
        let mut input_gradient = Vec::new();
        for (item, seed) in batch.data.chunks_exact(2).zip(seeds) {
            logits.extend([item.iter().sum(), class(seed)]);
            input_gradient.extend(item.iter().map(|v| v * (class(seed) + 1.0)));
        }
        Ok(Gradients {
            logits: Tensor::new(vec![seeds.len() as u32, 2], logits)?,
            input_gradient: Tensor::new(batch.shape.clone(), input_gradient)?,
            activations: None,
            activation_gradient: None,
        })
    }

    fn gradient_items(count: usize) -> impl ExactSizeIterator<Item = (Vec<f32>, Seed)> {
        (0..count).map(|i| (vec![i as f32, 1.0], Seed::Class((i % 3) as u32)))
    }

    const ONE_BY_TWO: InputShape = InputShape {
        layout: Layout::Nchw,
        channels: 1,
        width: 2,
        height: 1,
    };

    #[test]
    fn gradient_batches_keep_items_and_seeds_in_order() {
        let mut shapes = Vec::new();
        let mut firsts = Vec::new();
        let mut gradients = Vec::new();
        let mut classes = Vec::new();
        let mut reports = Vec::new();

        run_gradient_batches(
            gradient_items(5),
            ONE_BY_TWO,
            2,
            false,
            &mut |batch, seeds| {
                shapes.push(batch.shape.clone());
                seeded_gradients(batch, seeds)
            },
            &mut |done, total| reports.push((done, total)),
            |batch| {
                firsts.push(batch.first);
                for row in batch.input_gradients()? {
                    gradients.push(row.to_vec());
                }
                classes.extend(batch.logits()?.map(|row| row[1]));
                Ok(())
            },
        )
        .expect("5 items");

        assert_eq!(
            shapes,
            [vec![2, 1, 1, 2], vec![2, 1, 1, 2], vec![1, 1, 1, 2]]
        );
        assert_eq!(firsts, [0, 2, 4]);
        assert_eq!(classes, [0.0, 1.0, 2.0, 0.0, 1.0]);
        assert_eq!(gradients[2], [6.0, 3.0], "item 2 times class 2 plus one");
        assert_eq!(reports, [(2, 5), (4, 5), (5, 5)]);
    }

    #[test]
    fn gradient_item_of_wrong_size_is_rejected() {
        let items = vec![
            (vec![0.0; 2], Seed::Class(0)),
            (vec![0.0; 3], Seed::Class(0)),
        ];

        let result = run_gradient_batches(
            items,
            ONE_BY_TWO,
            4,
            false,
            &mut seeded_gradients,
            &mut |_, _| {},
            |_| Ok(()),
        );

        let error = result.expect_err("3 values for a 1 x 2 x 1 input");
        assert!(
            error
                .to_string()
                .contains("gradient item 1 contains 3 values"),
            "{error}"
        );
    }

    #[test]
    fn missing_activations_are_rejected() {
        let result = run_gradient_batches(
            gradient_items(2),
            ONE_BY_TWO,
            4,
            true,
            &mut seeded_gradients,
            &mut |_, _| {},
            |_| Ok(()),
        );

        let error = result.expect_err("no activations");
        assert!(error.to_string().contains("no activations"), "{error}");
    }

    #[test]
    fn zero_gradient_batch_size_is_rejected() {
        let result = run_gradient_batches(
            gradient_items(2),
            ONE_BY_TWO,
            0,
            false,
            &mut seeded_gradients,
            &mut |_, _| {},
            |_| Ok(()),
        );

        assert!(result.is_err_and(|error| error.to_string().contains("batch size is 0")));
    }
}
