//! Reverse-mode differentiation of ONNX graphs into gradient graphs.
//!
//! ONNX Runtime runs forward graphs only. This crate derives, from a classifier's
//! ONNX model, a second ONNX model that computes the classifier's logits and the
//! gradient of a seeded score with respect to the input (and, on request, to
//! intermediate tensors). ONNX Runtime then runs the gradient model with the same
//! kernels, threads and batching as the forward model; no second ML framework is
//! involved.
//!
//! # The model
//!
//! [`derive()`] is a compiler pass over the graph. It marks the tensors that both
//! depend on the input and influence the differentiated tensor, walks the nodes in
//! reverse order, and for each node appends the operators of its gradient rule.
//! Gradients reaching one tensor from several consumers are summed. The derived
//! graph contains the forward nodes it needs, the gradient nodes, and one extra
//! input, the *seed*: a float tensor shaped like the logits, `[batch, classes]`.
//! For each batch item `i` the differentiated scalar is `dot(seed[i], logits[i])`,
//! so a one-hot seed selects a class and a weight vector mixes classes.
//!
//! Shapes come from the graph's `value_info` and a light propagation through
//! common operators. Where a rule needs a shape that stays unknown, it computes
//! it at run time with `Shape` operators, so a symbolic batch dimension works.
//!
//! # Running the derived model
//!
//! Feed the forward input and a seed with the same batch size, and read the
//! outputs named in [`GradientModel`]. Build the session with all graph
//! optimizations (`GraphOptimizationLevel::Level3`, ORT_ENABLE_ALL): the rules
//! choose operators for ONNX Runtime's fused and NCHWc kernels, and
//! `BENCHMARKS.md` in this crate records the resulting cost, about 3.3 to 4
//! forward passes for EfficientNet-Lite0 on 2 threads.
//!
//! # Key types
//!
//! - [`Request`]: which tensor to differentiate, with respect to which input, and
//!   which intermediate tensors to report.
//! - [`GradientModel`]: the derived model and the names of its inputs and outputs.
//! - [`GradientError`]: why derivation failed, naming the operator, node or tensor.
//! - [`TensorInfo`]: an intermediate tensor a caller may request, from
//!   [`inspectable_tensors`].
//!
//! # Supported operators
//!
//! Default-domain operators of opsets 11 to 21 (see [`supported_ops`]): Abs, Add,
//! AveragePool, BatchNormalization (inference form), Cast, Clip, Concat, Conv,
//! Div, Dropout, Elu, Erf, Exp, Expand, Flatten, Gather, Gelu, Gemm,
//! GlobalAveragePool, HardSigmoid, HardSwish, Identity, LayerNormalization,
//! LeakyRelu, Log, LogSoftmax, MatMul, MaxPool, Mul, Neg, PRelu, Pad, Pow,
//! Reciprocal, ReduceMean, ReduceSum, Relu, Reshape, Sigmoid, Slice, Softmax,
//! Softplus, Split, Sqrt, Squeeze, Sub, Sum, Tanh,
//! Transpose, Unsqueeze and Where. Shape arithmetic (Shape, Gather on shapes,
//! ConstantOfShape, integer Cast, comparisons) may appear anywhere: it carries no
//! gradient. Every other operator on the differentiated path is an error.
//!
//! # Example
//!
//! ```no_run
//! use picasso_gradient::{Request, derive};
//! use onnx_protobuf::{Message, ModelProto};
//!
//! let bytes = std::fs::read("models/mnist-cnn.onnx")?;
//! let model = ModelProto::parse_from_bytes(&bytes)?;
//! let gradient = derive(&model, &Request::default())?;
//! std::fs::write("mnist-cnn.gradient.onnx", gradient.to_bytes())?;
//! println!("feed `{}` and `{}`, read `{}`", gradient.input, gradient.seed, gradient.input_gradient);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod derive;
mod emitter;
mod error;
mod graph;
mod inspect;
mod proto;
mod rules;
mod shapes;

use onnx_protobuf::{Message, ModelProto};

pub use error::GradientError;
pub use inspect::{TensorInfo, inspectable_tensors};

/// What to differentiate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// Tensor to differentiate. `None` means the graph's single output; when the
    /// node producing it is Softmax or LogSoftmax, that node's input is
    /// differentiated instead, so probabilities never saturate the map.
    pub output: Option<String>,
    /// The graph input to differentiate with respect to. `None` means the graph's
    /// single input that is not an initializer.
    pub input: Option<String>,
    /// Intermediate tensors whose activations and gradients are also wanted.
    pub intermediates: Vec<String>,
}

/// A derived gradient model and the names of its inputs and outputs.
#[derive(Debug, Clone)]
pub struct GradientModel {
    /// The derived graph, ready to serialize.
    pub model: ModelProto,
    /// The name of the model input (the same as in the forward model).
    pub input: String,
    /// The name of the seed input, float `[batch, classes]`: the scalar
    /// differentiated for item `i` is `dot(seed[i], logits[i])`.
    pub seed: String,
    /// The output holding the differentiated tensor (pre-softmax logits).
    pub logits: String,
    /// The output holding the gradient with respect to the input, shaped like it.
    pub input_gradient: String,
    /// The outputs for each requested intermediate tensor, in request order.
    pub intermediates: Vec<IntermediateOutputs>,
}

/// The outputs reporting one intermediate tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntermediateOutputs {
    /// The tensor's name in the forward graph.
    pub tensor: String,
    /// The output holding the tensor's activation.
    pub activation: String,
    /// The output holding the gradient of the seeded score with respect to it.
    pub gradient: String,
}

impl GradientModel {
    /// Serializes the derived model in the ONNX protobuf format.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Writing a message to a Vec cannot fail: protobuf only reports I/O errors
        // and size overflow past 2 GiB, which ModelProto parsing already rejects.
        self.model.write_to_bytes().unwrap_or_default()
    }
}

/// Derives the gradient model of `model` for `request`.
///
/// # Errors
///
/// Fails with [`GradientError::UnsupportedOp`] for an operator without a gradient
/// rule on the differentiated path, [`GradientError::UnknownTensor`] or
/// [`GradientError::Ambiguous`] when the request does not name existing tensors
/// unambiguously, [`GradientError::MissingShape`] when a rule needs a static shape
/// that the graph does not record, and [`GradientError::Malformed`] for graphs that
/// break the ONNX format.
pub fn derive(model: &ModelProto, request: &Request) -> Result<GradientModel, GradientError> {
    derive::derive(model, request)
}

/// The operator types that have gradient rules, in alphabetical order.
pub fn supported_ops() -> &'static [&'static str] {
    rules::SUPPORTED
}
