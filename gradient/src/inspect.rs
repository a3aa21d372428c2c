//! The intermediate tensors that callers may ask gradients for.

use std::collections::HashSet;

use onnx_protobuf::ModelProto;

use crate::graph::Graph;
use crate::proto::FLOAT;
use crate::shapes::Dim;

/// An intermediate tensor of the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name in the ONNX graph.
    pub name: String,
    /// The ONNX operator type of the node producing it, such as `Conv`.
    pub op_type: String,
    /// The shape for a batch of one: a symbolic first dimension becomes 1, other
    /// unknown dimensions -1. Empty when even the rank is unknown.
    pub shape: Vec<i64>,
}

/// Lists the tensors a caller may inspect: float outputs of nodes that depend on
/// a model input, in graph order.
///
/// A model that fails to index (no graph, unsupported opset, nodes out of order)
/// has no inspectable tensors.
pub fn inspectable_tensors(model: &ModelProto) -> Vec<TensorInfo> {
    match Graph::new(model) {
        Ok(graph) => candidates(&graph),
        Err(_) => Vec::new(),
    }
}

/// Lists the inspectable tensors of an indexed graph; see [`inspectable_tensors`].
pub(crate) fn candidates(graph: &Graph) -> Vec<TensorInfo> {
    let mut variable: HashSet<&str> = graph.runtime_inputs().into_iter().collect();
    let mut result = Vec::new();
    for node in graph.nodes() {
        if !node.input.iter().any(|i| variable.contains(i.as_str())) {
            continue;
        }
        for output in node.output.iter().filter(|o| !o.is_empty()) {
            variable.insert(output);
            // The graph records the types that operators such as Shape or
            // Equal fix, so an unknown type is most likely float.
            if graph.elem_type(output).is_some_and(|t| t != FLOAT) {
                continue;
            }
            result.push(TensorInfo {
                name: output.clone(),
                op_type: node.op_type.clone(),
                shape: batch_one_shape(graph.shape(output)),
            });
        }
    }
    result
}

fn batch_one_shape(shape: Option<&Vec<Dim>>) -> Vec<i64> {
    let Some(shape) = shape else {
        return Vec::new();
    };
    shape
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            Dim::Fixed(v) => *v,
            Dim::Param(_) if i == 0 => 1,
            _ => -1,
        })
        .collect()
}
