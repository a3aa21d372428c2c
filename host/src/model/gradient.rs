//! Gradients of a model's logits, computed by gradient models that
//! `picasso-gradient` derives from the ONNX graph and ONNX Runtime runs.
//!
//! One gradient model is derived per requested intermediate tensor (or none)
//! and its session is built on first use, then kept: building an
//! EfficientNet-sized session takes a few hundred milliseconds.

use std::sync::{Arc, Mutex};

use onnx_protobuf::ModelProto;
use ort::session::{RunOptions, Session};
use ort::value::TensorRef;
use picasso_gradient::{GradientModel, Request};

use super::{ModelError, SessionOptions, new_session};

/// The most gradient sessions kept per model. Each holds a copy of the
/// weights, so a plugin that walks every tensor of a large model should not
/// keep them all alive.
const MAX_SESSIONS: usize = 4;

/// A seed of a gradient computation for one batch item.
#[derive(Debug, Clone, PartialEq)]
pub enum Seed {
    /// The gradient of this class's logit.
    Class(u32),
    /// The gradient of the weighted sum of the logits.
    Weights(Vec<f32>),
}

/// What a gradient run returns, row-major.
#[derive(Debug, Clone)]
pub struct GradientOutput {
    /// `[batch, classes]`.
    pub logits: Vec<f32>,
    /// Shaped like the input batch.
    pub input_gradient: Vec<f32>,
    /// The intermediate tensor's shape, activations and gradient, when one
    /// was requested.
    pub intermediate: Option<(Vec<usize>, Vec<f32>, Vec<f32>)>,
}

struct Derived {
    names: GradientModel,
    session: Mutex<Session>,
}

/// The gradient models of one forward model.
pub struct Gradients {
    proto: ModelProto,
    options: SessionOptions,
    classes: usize,
    sessions: Mutex<Vec<(Option<String>, Arc<Derived>)>>,
}

impl std::fmt::Debug for Gradients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gradients")
            .field("classes", &self.classes)
            .finish_non_exhaustive()
    }
}

impl Gradients {
    /// Checks that the model can be differentiated by deriving its input
    /// gradient model once.
    ///
    /// # Errors
    ///
    /// The derivation error, such as an operator without a gradient rule.
    pub fn new(
        proto: ModelProto,
        options: &SessionOptions,
        classes: usize,
    ) -> Result<Gradients, picasso_gradient::GradientError> {
        picasso_gradient::derive(&proto, &Request::default())?;
        Ok(Gradients {
            proto,
            options: options.clone(),
            classes,
            sessions: Mutex::new(Vec::new()),
        })
    }

    fn derived(&self, tensor: Option<&str>) -> Result<Arc<Derived>, ModelError> {
        let key = tensor.map(str::to_owned);
        let mut sessions = self
            .sessions
            .lock()
            .map_err(|_| ModelError::Failed("an earlier gradient run panicked".to_owned()))?;
        if let Some((_, derived)) = sessions.iter().find(|(k, _)| *k == key) {
            return Ok(derived.clone());
        }

        let started = std::time::Instant::now();
        let request = Request {
            intermediates: key.iter().cloned().collect(),
            ..Request::default()
        };
        let names = picasso_gradient::derive(&self.proto, &request)
            .map_err(|error| ModelError::InvalidArgument(error.to_string()))?;
        let session = new_session(&names.to_bytes(), &self.options).map_err(|error| {
            ModelError::Failed(format!("cannot load the gradient model: {error}"))
        })?;
        tracing::info!(
            tensor = key.as_deref().unwrap_or("-"),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "built gradient model"
        );
        let derived = Arc::new(Derived {
            names,
            session: Mutex::new(session),
        });
        if sessions.len() >= MAX_SESSIONS {
            // The input-only model (first in the list) is the one most used;
            // drop the oldest intermediate one.
            let evict = usize::from(sessions.len() > 1 && sessions[0].0.is_none());
            sessions.remove(evict);
        }
        sessions.push((key, derived.clone()));
        Ok(derived)
    }

    /// Builds the `[batch, classes]` seed tensor.
    ///
    /// # Errors
    ///
    /// A class out of range, or weights of the wrong length or not finite.
    pub fn seed_tensor(&self, seeds: &[Seed]) -> Result<Vec<f32>, ModelError> {
        let classes = self.classes;
        let mut data = vec![0.0f32; seeds.len() * classes];
        for (item, seed) in seeds.iter().enumerate() {
            let row = &mut data[item * classes..(item + 1) * classes];
            match seed {
                Seed::Class(class) if (*class as usize) < classes => row[*class as usize] = 1.0,
                Seed::Class(class) => {
                    return Err(ModelError::InvalidArgument(format!(
                        "seed {item}: class {class} is out of range; the model has classes 0 to {}",
                        classes - 1
                    )));
                }
                Seed::Weights(weights) if weights.len() != classes => {
                    return Err(ModelError::InvalidArgument(format!(
                        "seed {item}: {} weights for {classes} classes",
                        weights.len()
                    )));
                }
                Seed::Weights(weights) if weights.iter().any(|w| !w.is_finite()) => {
                    return Err(ModelError::InvalidArgument(format!(
                        "seed {item}: weights must be finite"
                    )));
                }
                Seed::Weights(weights) => row.copy_from_slice(weights),
            }
        }
        Ok(data)
    }

    /// Runs the gradient model on a checked input batch.
    ///
    /// # Errors
    ///
    /// Invalid seeds or tensor name, or a failed or terminated run.
    pub fn run(
        &self,
        shape: &[usize],
        data: &[f32],
        seeds: &[Seed],
        tensor: Option<&str>,
        options: Option<&RunOptions>,
    ) -> Result<GradientOutput, ModelError> {
        let batch = shape[0];
        if seeds.len() != batch {
            return Err(ModelError::InvalidArgument(format!(
                "{} seeds for a batch of {batch}; give one seed per item",
                seeds.len()
            )));
        }
        let seed = self.seed_tensor(seeds)?;
        let derived = self.derived(tensor)?;
        let names = &derived.names;
        let failed = |error: ort::Error| ModelError::Failed(error.to_string());

        let input = TensorRef::from_array_view((shape.to_vec(), data)).map_err(failed)?;
        let seed_value =
            TensorRef::from_array_view(([batch, self.classes], &seed[..])).map_err(failed)?;
        let mut session = derived
            .session
            .lock()
            .map_err(|_| ModelError::Failed("an earlier gradient run panicked".to_owned()))?;
        let inputs = ort::inputs![names.input.as_str() => input, names.seed.as_str() => seed_value];
        let outputs = match options {
            Some(options) => session.run_with_options(inputs, options),
            None => session.run(inputs),
        }
        .map_err(failed)?;

        let extract = |name: &str| -> Result<(Vec<usize>, Vec<f32>), ModelError> {
            let value = outputs.get(name).ok_or_else(|| {
                ModelError::Failed(format!("the gradient model has no output `{name}`"))
            })?;
            let (shape, values) = value.try_extract_tensor::<f32>().map_err(failed)?;
            Ok((shape.iter().map(|&d| d as usize).collect(), values.to_vec()))
        };
        let (_, logits) = extract(&names.logits)?;
        let (_, input_gradient) = extract(&names.input_gradient)?;
        let intermediate = match names.intermediates.first() {
            Some(outputs) => {
                let (shape, activation) = extract(&outputs.activation)?;
                let (_, gradient) = extract(&outputs.gradient)?;
                Some((shape, activation, gradient))
            }
            None => None,
        };
        Ok(GradientOutput {
            logits,
            input_gradient,
            intermediate,
        })
    }
}
