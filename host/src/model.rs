//! Models: their declarations, ONNX Runtime sessions, preprocessing and
//! scores.
//!
//! [`ModelCatalog`] contains every model declared in the models folder. A
//! [`Model`] turns photos into input frames and tensors
//! ([`preprocess`](self::preprocess)) and runs them ([`Model::logits`]).
//! The model service does not know plugins: the sandbox translates plugin
//! calls into these functions and counts them against its limits.

pub mod declaration;
pub mod gradient;
pub mod preprocess;
pub mod runtime;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use image::RgbaImage;
use ort::session::RunOptions;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use declaration::{Layout, ModelDeclaration, OutputKind};

use crate::job::spec::{ClassScore, CropRect};

/// Why a model call failed. The variants match the WIT `model-error`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ModelError {
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    #[error("model run failed: {0}")]
    Failed(String),
}

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Declaration(#[from] declaration::DeclarationError),
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model `{model}`: {message}")]
    Invalid { model: String, message: String },
}

/// A loaded model, ready to run.
pub struct Model {
    pub declaration: ModelDeclaration,
    pub labels: Vec<String>,
    /// SHA-256 of the ONNX file, lowercase hex.
    pub content_hash: String,
    /// The intermediate tensors plugins may inspect, in graph order.
    pub tensors: Vec<InspectableTensor>,
    /// The gradient models, or why the model cannot be differentiated.
    gradients: Result<gradient::Gradients, String>,
    // `Session::run` takes `&mut self`; ONNX Runtime parallelizes inside a
    // run, so one run at a time per model loses little on a small machine.
    session: Mutex<Session>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("id", &self.declaration.id)
            .field("content_hash", &self.content_hash)
            .finish_non_exhaustive()
    }
}

/// Options of the ONNX Runtime sessions, shared by all models.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    /// The ONNX Runtime library; see [`runtime::locate`].
    pub library: Option<PathBuf>,
    /// Threads per run; 0 lets ONNX Runtime choose.
    pub intra_op_threads: usize,
}

impl Model {
    /// Loads the declaration at `path`, its labels and ONNX file, and checks
    /// with one run on a blank frame that the output has one score per
    /// label.
    ///
    /// # Errors
    ///
    /// An invalid declaration, unreadable files, ONNX Runtime failing to
    /// start or to load the graph, or an output that does not match.
    pub fn load(path: &Path, options: &SessionOptions) -> Result<Model, LoadError> {
        let declaration = ModelDeclaration::load(path)?;
        let id = declaration.id.clone();
        let invalid = |message: String| LoadError::Invalid {
            model: id.clone(),
            message,
        };
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| LoadError::Read {
                path: path.to_owned(),
                source,
            })
        };

        let labels_text = String::from_utf8(read(&declaration.labels)?).map_err(|_| {
            invalid(format!(
                "labels file `{}` is not UTF-8",
                declaration.labels.display()
            ))
        })?;
        let labels: Vec<String> = labels_text.lines().map(str::to_owned).collect();
        let onnx = read(&declaration.onnx)?;
        let content_hash = hex::encode(Sha256::digest(&onnx));
        let (tensors, gradients) = differentiate(&onnx, options, labels.len());
        if let Err(reason) = &gradients {
            tracing::warn!(model = %id, %reason, "gradients unavailable; gradient plugins are disabled for this model");
        }

        let session = new_session(&onnx, options).map_err(|error| {
            invalid(format!(
                "ONNX Runtime cannot load `{}`: {error}",
                declaration.onnx.display()
            ))
        })?;
        let model = Model {
            declaration,
            labels,
            content_hash,
            tensors,
            gradients,
            session: Mutex::new(session),
        };
        model.check_output().map_err(invalid)?;
        Ok(model)
    }

    fn check_output(&self) -> Result<(), String> {
        let blank = RgbaImage::new(self.declaration.input.width, self.declaration.input.height);
        let (shape, data) = preprocess::normalize(&self.declaration, &[&blank]);
        let (_, classes) = self
            .run_logits(&shape, &data, None)
            .map_err(|error| format!("a test run on a blank frame failed: {error}"))?;
        if classes != self.labels.len() {
            return Err(format!(
                "the output `{}` has {classes} classes but the labels file `{}` has {} lines; \
                 make them match",
                self.declaration.output.name,
                self.declaration.labels.display(),
                self.labels.len()
            ));
        }
        Ok(())
    }

    /// The model's identifier.
    pub fn id(&self) -> &str {
        &self.declaration.id
    }

    /// Whether `name` is one of the inspectable tensors.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.tensors.iter().any(|t| t.name == name)
    }

    /// The number of classes.
    pub fn classes(&self) -> usize {
        self.labels.len()
    }

    /// Cuts and scales a photo to the input frame; see [`preprocess::frame`].
    pub fn frame(&self, photo: &RgbaImage) -> (RgbaImage, CropRect) {
        preprocess::frame(&self.declaration, photo)
    }

    /// Normalizes images into one input batch. Images already at the input
    /// size are used as they are; others are framed first.
    pub fn preprocess(&self, images: &[RgbaImage]) -> (Vec<usize>, Vec<f32>) {
        let (width, height) = (self.declaration.input.width, self.declaration.input.height);
        let framed: Vec<std::borrow::Cow<'_, RgbaImage>> = images
            .iter()
            .map(|image| {
                if image.dimensions() == (width, height) {
                    std::borrow::Cow::Borrowed(image)
                } else {
                    std::borrow::Cow::Owned(self.frame(image).0)
                }
            })
            .collect();
        let refs: Vec<&RgbaImage> = framed.iter().map(|c| c.as_ref()).collect();
        preprocess::normalize(&self.declaration, &refs)
    }

    /// The expected shape of an input batch of `batch` items.
    pub fn input_shape(&self, batch: usize) -> Vec<usize> {
        let input = &self.declaration.input;
        let (c, h, w) = (
            self.declaration.channels() as usize,
            input.height as usize,
            input.width as usize,
        );
        match input.layout {
            Layout::Nchw => vec![batch, c, h, w],
            Layout::Nhwc => vec![batch, h, w, c],
        }
    }

    /// Checks that `shape` and `data` form a valid input batch and returns
    /// the batch size.
    ///
    /// # Errors
    ///
    /// [`ModelError::InvalidArgument`] naming the wrong shape, length or
    /// non-finite value.
    pub fn check_input(&self, shape: &[usize], data: &[f32]) -> Result<usize, ModelError> {
        let batch = shape.first().copied().unwrap_or(0);
        let expected = self.input_shape(batch);
        if batch == 0 || shape != expected.as_slice() {
            return Err(ModelError::InvalidArgument(format!(
                "input shape is {shape:?}; model `{}` expects [batch, ...] = {:?} with batch >= 1",
                self.id(),
                self.input_shape(1)
            )));
        }
        let length: usize = shape.iter().product();
        if data.len() != length {
            return Err(ModelError::InvalidArgument(format!(
                "input has {} values but shape {shape:?} needs {length}",
                data.len()
            )));
        }
        if let Some(index) = data.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::InvalidArgument(format!(
                "input value {index} is {}; inputs must be finite",
                data[index]
            )));
        }
        Ok(batch)
    }

    /// Runs a checked batch and returns the logits, row-major
    /// `[batch, classes]`. For a model that outputs probabilities, the
    /// logits are their natural logarithms.
    ///
    /// # Errors
    ///
    /// An invalid batch, or a failed or terminated run.
    pub fn logits(
        &self,
        shape: &[usize],
        data: &[f32],
        options: Option<&RunOptions>,
    ) -> Result<Vec<f32>, ModelError> {
        self.check_input(shape, data)?;
        let (logits, _) = self.run_logits(shape, data, options)?;
        Ok(logits)
    }

    /// Preprocesses images and runs them, skipping the input checks of
    /// [`Model::logits`]: a batch built by [`Model::preprocess`] has the
    /// right shape and finite values by construction.
    ///
    /// # Errors
    ///
    /// A failed or terminated run.
    pub fn logits_of_images(
        &self,
        images: &[RgbaImage],
        options: Option<&RunOptions>,
    ) -> Result<Vec<f32>, ModelError> {
        let (shape, data) = self.preprocess(images);
        let (logits, _) = self.run_logits(&shape, &data, options)?;
        Ok(logits)
    }

    fn run_logits(
        &self,
        shape: &[usize],
        data: &[f32],
        options: Option<&RunOptions>,
    ) -> Result<(Vec<f32>, usize), ModelError> {
        let failed = |error: ort::Error| ModelError::Failed(error.to_string());
        let input = TensorRef::from_array_view((shape.to_vec(), data)).map_err(failed)?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| ModelError::Failed("an earlier run panicked".to_owned()))?;
        let inputs = ort::inputs![self.declaration.input.name.as_str() => input];
        let outputs = match options {
            Some(options) => session.run_with_options(inputs, options),
            None => session.run(inputs),
        }
        .map_err(failed)?;
        let output_name = self.declaration.output.name.as_str();
        let output = outputs.get(output_name).ok_or_else(|| {
            ModelError::Failed(format!("the graph has no output `{output_name}`"))
        })?;
        let (out_shape, values) = output.try_extract_tensor::<f32>().map_err(failed)?;
        let classes = match out_shape.as_ref() {
            [n, c] if *n as usize == shape[0] => *c as usize,
            other => {
                return Err(ModelError::Failed(format!(
                    "output `{output_name}` has shape {other:?}; expected [batch, classes]"
                )));
            }
        };
        let logits = match self.declaration.output.kind {
            OutputKind::Logits => values.to_vec(),
            OutputKind::Probabilities => values.iter().map(|p| p.max(1e-30).ln()).collect(),
        };
        Ok((logits, classes))
    }

    /// Runs the gradient model on a batch: the logits, the gradient of each
    /// item's seeded score with respect to the input, and optionally the
    /// activations and gradient of an intermediate tensor.
    ///
    /// # Errors
    ///
    /// [`ModelError::Unsupported`] when the model cannot be differentiated;
    /// an invalid batch, seed or tensor name; a failed or terminated run.
    pub fn gradients(
        &self,
        shape: &[usize],
        data: &[f32],
        seeds: &[gradient::Seed],
        tensor: Option<&str>,
        options: Option<&RunOptions>,
    ) -> Result<gradient::GradientOutput, ModelError> {
        self.check_input(shape, data)?;
        let gradients = self.gradients.as_ref().map_err(|reason| {
            ModelError::Unsupported(format!("model `{}` has no gradients: {reason}", self.id()))
        })?;
        if let Some(name) = tensor
            && !self.has_tensor(name)
        {
            return Err(ModelError::InvalidArgument(format!(
                "model `{}` has no inspectable tensor `{name}`; model.info lists them",
                self.id()
            )));
        }
        gradients.run(shape, data, seeds, tensor, options)
    }

    /// Ranks one item's logits into class scores, best first, with softmax
    /// probabilities.
    pub fn scores(&self, logits: &[f32]) -> Vec<ClassScore> {
        let probabilities = softmax(logits);
        let mut scores: Vec<ClassScore> = logits
            .iter()
            .zip(&probabilities)
            .enumerate()
            .map(|(index, (&logit, &probability))| ClassScore {
                index: index as u32,
                label: self.labels.get(index).cloned().unwrap_or_default(),
                logit,
                probability,
            })
            .collect();
        scores.sort_by(|a, b| b.logit.total_cmp(&a.logit));
        scores
    }

    /// What the API lists about the model.
    pub fn summary(&self) -> ModelSummary {
        let input = &self.declaration.input;
        ModelSummary {
            id: self.declaration.id.clone(),
            name: self.declaration.name.clone(),
            content_hash: self.content_hash.clone(),
            input: InputSummary {
                layout: input.layout,
                width: input.width,
                height: input.height,
                channels: self.declaration.channels(),
            },
            classes: self.labels.len(),
            labels: self.labels.clone(),
            tensors: self.tensors.clone(),
            gradients_unavailable: self.gradients.as_ref().err().cloned(),
        }
    }
}

/// Lists the inspectable tensors and derives the gradient model once, to
/// learn whether gradients are available.
fn differentiate(
    onnx: &[u8],
    options: &SessionOptions,
    classes: usize,
) -> (Vec<InspectableTensor>, Result<gradient::Gradients, String>) {
    use onnx_protobuf::Message;

    let proto = match onnx_protobuf::ModelProto::parse_from_bytes(onnx) {
        Ok(proto) => proto,
        Err(error) => {
            return (
                Vec::new(),
                Err(format!("cannot parse the ONNX file: {error}")),
            );
        }
    };
    let tensors = picasso_gradient::inspectable_tensors(&proto)
        .into_iter()
        .map(|t| InspectableTensor {
            name: t.name,
            shape: t.shape,
            op_type: t.op_type,
        })
        .collect();
    let gradients =
        gradient::Gradients::new(proto, options, classes).map_err(|error| error.to_string());
    (tensors, gradients)
}

fn new_session(onnx: &[u8], options: &SessionOptions) -> Result<Session, ort::Error> {
    let environment = runtime::environment(options.library.as_deref())
        .map_err(|error| ort::Error::new(error.to_string()))?;
    let mut builder = Session::builder(environment)?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|error| -> ort::Error { error.into() })?;
    if options.intra_op_threads > 0 {
        builder = builder
            .with_intra_threads(options.intra_op_threads)
            .map_err(|error| -> ort::Error { error.into() })?;
    }
    builder.commit_from_memory(onnx)
}

/// Softmax of one row, computed in a numerically stable way.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// What the API lists about a model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub id: String,
    pub name: String,
    pub content_hash: String,
    pub input: InputSummary,
    pub classes: usize,
    pub labels: Vec<String>,
    pub tensors: Vec<InspectableTensor>,
    /// The reason the gradient-based plugins cannot run on this model, or
    /// `None` when they can.
    pub gradients_unavailable: Option<String>,
}

/// An intermediate tensor that plugins may inspect.
#[derive(Debug, Clone, Serialize)]
pub struct InspectableTensor {
    pub name: String,
    /// The shape for a batch of one; -1 where unknown.
    pub shape: Vec<i64>,
    /// The type of the node that produces it, such as `Conv`.
    pub op_type: String,
}

/// The input part of a [`ModelSummary`].
#[derive(Debug, Clone, Serialize)]
pub struct InputSummary {
    pub layout: Layout,
    pub width: u32,
    pub height: u32,
    pub channels: u32,
}

/// A model declaration that failed to load.
#[derive(Debug, Clone, Serialize)]
pub struct FailedModel {
    pub file: String,
    pub error: String,
}

/// Every model of the models folder.
#[derive(Debug, Default)]
pub struct ModelCatalog {
    models: Vec<Arc<Model>>,
    failed: Vec<FailedModel>,
}

impl ModelCatalog {
    /// Loads every `*.toml` declaration in `dir`, in file-name order. A model
    /// that fails to load is logged and listed in [`ModelCatalog::failed`];
    /// the others still load.
    ///
    /// # Errors
    ///
    /// Only when `dir` cannot be listed.
    pub fn load_dir(dir: &Path, options: &SessionOptions) -> std::io::Result<ModelCatalog> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();

        let mut catalog = ModelCatalog::default();
        for file in files {
            match Model::load(&file, options) {
                Ok(model) if catalog.get(model.id()).is_some() => {
                    let error = format!("a model with id `{}` is already loaded", model.id());
                    tracing::warn!(file = %file.display(), %error, "skipped model");
                    catalog.failed.push(FailedModel {
                        file: file.display().to_string(),
                        error,
                    });
                }
                Ok(model) => {
                    tracing::info!(
                        model = model.id(),
                        classes = model.classes(),
                        "loaded model"
                    );
                    catalog.models.push(Arc::new(model));
                }
                Err(error) => {
                    tracing::warn!(file = %file.display(), %error, "failed to load model");
                    catalog.failed.push(FailedModel {
                        file: file.display().to_string(),
                        error: error.to_string(),
                    });
                }
            }
        }
        Ok(catalog)
    }

    /// The model with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<Model>> {
        self.models.iter().find(|m| m.id() == id)
    }

    /// Every loaded model, in file-name order.
    pub fn models(&self) -> &[Arc<Model>] {
        &self.models
    }

    /// The declarations that failed to load, with their errors.
    pub fn failed(&self) -> &[FailedModel] {
        &self.failed
    }

    /// Summaries of every loaded model.
    pub fn list(&self) -> Vec<ModelSummary> {
        self.models.iter().map(|m| m.summary()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_survives_large_logits() {
        let p = softmax(&[1000.0, 999.0, -5.0]);
        let sum: f32 = p.iter().sum();
        assert!((sum - 1.0).abs() < 1e-6, "sum {sum}");
        assert!(p[0] > p[1] && p[1] > p[2]);
    }
}
