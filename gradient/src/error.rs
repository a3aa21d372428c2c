//! The error type of gradient derivation.

use thiserror::Error;

/// Why a gradient model could not be derived.
///
/// Every variant names the tensor, node or value at fault so that the message
/// alone tells a model author what to change.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GradientError {
    /// The model contains an operator that has no gradient rule.
    #[error(
        "unsupported operator `{op_type}` in node `{node}` on the path being differentiated; \
         supported operators: {}",
        crate::supported_ops().join(", ")
    )]
    UnsupportedOp {
        /// The ONNX operator type, prefixed with its domain when not the default one.
        op_type: String,
        /// The node's name, or its first output when the node has no name.
        node: String,
    },

    /// An operator is supported only in some of its forms, and this node uses another.
    #[error("node `{node}` ({op_type}): {detail}")]
    UnsupportedForm {
        /// The ONNX operator type.
        op_type: String,
        /// The node's name, or its first output when the node has no name.
        node: String,
        /// What is unsupported and how to avoid it.
        detail: String,
    },

    /// A requested tensor does not exist in the graph.
    #[error("tensor `{name}` given as {role} is not in the graph; {hint}")]
    UnknownTensor {
        /// The requested tensor name.
        name: String,
        /// Which part of the request named it.
        role: &'static str,
        /// What names are available.
        hint: String,
    },

    /// The request leaves a choice open that the graph does not settle.
    #[error(
        "{what} is ambiguous: the graph has {count} candidates ({candidates}); name one in the request"
    )]
    Ambiguous {
        /// What had to be chosen.
        what: &'static str,
        /// How many candidates there are.
        count: usize,
        /// The candidates' names, comma-separated.
        candidates: String,
    },

    /// A static shape is needed and neither the graph nor its value_info provides it.
    #[error(
        "the shape of `{tensor}` is needed to {purpose} but is not known; add value_info \
         for it (for example with onnx.shape_inference.infer_shapes), or export the model \
         with a fixed input size when the graph input's own dimensions are symbolic"
    )]
    MissingShape {
        /// The tensor whose shape is missing.
        tensor: String,
        /// Why the shape is needed.
        purpose: String,
    },

    /// A tensor on the differentiated path has an element type other than float32.
    #[error(
        "tensor `{tensor}` on the differentiated path has element type {}; gradients are \
         derived for float32 tensors only, so export the model in float32",
        crate::proto::type_name(*elem_type)
    )]
    UnsupportedType {
        /// The tensor's name.
        tensor: String,
        /// The ONNX `TensorProto.DataType` number.
        elem_type: i32,
    },

    /// The model's default-domain opset is outside the range this crate handles.
    #[error(
        "the model imports ONNX opset {version}; opsets 11 to 21 are supported, re-export the model with one of them"
    )]
    UnsupportedOpset {
        /// The opset version the model imports.
        version: i64,
    },

    /// The graph breaks a rule of the ONNX format.
    #[error("malformed graph: {0}")]
    Malformed(String),
}
