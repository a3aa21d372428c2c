//! A read-only index over the forward graph: producers, constants, types and shapes.

use std::collections::{HashMap, HashSet};

use onnx_protobuf::{GraphProto, ModelProto, NodeProto};

use crate::GradientError;
use crate::proto::{BOOL, Constant, INT64, attr_int, read_constant_node, read_tensor, tensor_type};
use crate::shapes::{self, Dim, Shape};

/// The lowest and highest default-domain opsets whose operator forms the rules know.
pub(crate) const MIN_OPSET: i64 = 11;
pub(crate) const MAX_OPSET: i64 = 21;

#[derive(Debug)]
pub(crate) struct Graph<'m> {
    proto: &'m GraphProto,
    pub opset: i64,
    /// Tensor name to the index of the node that produces it.
    producers: HashMap<&'m str, usize>,
    initializers: HashSet<&'m str>,
    constants: HashMap<String, Constant>,
    elem_types: HashMap<String, i32>,
    shapes: HashMap<String, Shape>,
    /// Outer-scope tensors that a node's subgraphs (`If`, `Loop`, `Scan`) read,
    /// by node index.
    captured: HashMap<usize, Vec<String>>,
}

impl<'m> Graph<'m> {
    /// Indexes `model`'s main graph.
    ///
    /// # Errors
    ///
    /// Fails on a missing graph, an unsupported opset, a tensor produced twice or a node
    /// that reads a tensor no earlier node, input or initializer provides.
    pub fn new(model: &'m ModelProto) -> Result<Self, GradientError> {
        let proto = model
            .graph
            .as_ref()
            .ok_or_else(|| GradientError::Malformed("the model has no graph".into()))?;
        let opset = default_opset(model);
        if opset < MIN_OPSET {
            return Err(GradientError::UnsupportedOpset { version: opset });
        }
        if opset > MAX_OPSET {
            tracing::warn!(
                opset,
                "model opset is newer than the newest one tested ({MAX_OPSET})"
            );
        }

        let mut graph = Graph {
            proto,
            opset,
            producers: HashMap::new(),
            initializers: proto.initializer.iter().map(|t| t.name.as_str()).collect(),
            constants: HashMap::new(),
            elem_types: HashMap::new(),
            shapes: HashMap::new(),
            captured: HashMap::new(),
        };
        graph.index_nodes()?;
        graph.index_types();
        let mut shapes = std::mem::take(&mut graph.shapes);
        shapes::infer(&graph, &mut shapes);
        graph.shapes = shapes;
        Ok(graph)
    }

    fn index_nodes(&mut self) -> Result<(), GradientError> {
        let mut available: HashSet<&str> = self.initializers.clone();
        available.extend(self.proto.input.iter().map(|i| i.name.as_str()));
        for (index, node) in self.proto.node.iter().enumerate() {
            for input in node.input.iter().filter(|i| !i.is_empty()) {
                if !available.contains(input.as_str()) {
                    return Err(GradientError::Malformed(format!(
                        "node `{}` reads tensor `{input}` before any node produces it \
                         (nodes must be in topological order)",
                        crate::proto::node_label(node)
                    )));
                }
            }
            for output in node.output.iter().filter(|o| !o.is_empty()) {
                if self.producers.insert(output, index).is_some() {
                    return Err(GradientError::Malformed(format!(
                        "tensor `{output}` is produced by more than one node"
                    )));
                }
                available.insert(output);
            }
            let captured = captured_tensors(node);
            if !captured.is_empty() {
                self.captured.insert(index, captured);
            }
            // Some operators fix their output type: value_info, read later,
            // may still override what is recorded here.
            if let (Some(out), Some(elem_type)) = (node.output.first(), fixed_output_type(node)) {
                self.elem_types.insert(out.clone(), elem_type);
            }
            if node.op_type == "Constant"
                && is_default_domain(node)
                && let (Some(out), Some(value)) = (node.output.first(), read_constant_node(node))
            {
                self.constants.insert(out.clone(), value);
            }
        }
        Ok(())
    }

    fn index_types(&mut self) {
        let infos = self
            .proto
            .input
            .iter()
            .chain(&self.proto.output)
            .chain(&self.proto.value_info);
        for info in infos {
            if let Some((elem_type, shape)) = tensor_type(info) {
                self.elem_types.insert(info.name.clone(), elem_type);
                if let Some(shape) = shape {
                    self.shapes.insert(info.name.clone(), shape);
                }
            }
        }
        for tensor in &self.proto.initializer {
            self.elem_types
                .insert(tensor.name.clone(), tensor.data_type);
            let dims = tensor.dims.iter().map(|&d| Dim::Fixed(d)).collect();
            self.shapes.insert(tensor.name.clone(), dims);
            if let Some(value) = read_tensor(tensor) {
                self.constants.insert(tensor.name.clone(), value);
            }
        }
        for (name, constant) in &self.constants {
            let dims = constant.dims.iter().map(|&d| Dim::Fixed(d)).collect();
            self.shapes.entry(name.clone()).or_insert(dims);
        }
    }

    pub fn proto(&self) -> &'m GraphProto {
        self.proto
    }

    pub fn nodes(&self) -> &'m [NodeProto] {
        &self.proto.node
    }

    /// Lists the tensors node `index` reads: its inputs, then the outer-scope
    /// tensors its subgraphs read.
    pub fn reads(&self, index: usize) -> impl Iterator<Item = &str> {
        self.proto.node[index]
            .input
            .iter()
            .chain(self.captured.get(&index).into_iter().flatten())
            .map(String::as_str)
            .filter(|name| !name.is_empty())
    }

    /// Lists the outer-scope tensors that node `index`'s subgraphs read.
    pub fn captured(&self, index: usize) -> &[String] {
        self.captured.get(&index).map_or(&[], Vec::as_slice)
    }

    pub fn producer(&self, tensor: &str) -> Option<&'m NodeProto> {
        self.producers.get(tensor).map(|&i| &self.proto.node[i])
    }

    pub fn is_initializer(&self, tensor: &str) -> bool {
        self.initializers.contains(tensor)
    }

    /// Tells whether `tensor` names a value of the graph: an input, initializer or node output.
    pub fn contains(&self, tensor: &str) -> bool {
        self.producers.contains_key(tensor)
            || self.is_initializer(tensor)
            || self.proto.input.iter().any(|i| i.name == tensor)
    }

    /// Lists the graph inputs that are not initializers, in order.
    pub fn runtime_inputs(&self) -> Vec<&'m str> {
        self.proto
            .input
            .iter()
            .map(|i| i.name.as_str())
            .filter(|name| !self.is_initializer(name))
            .collect()
    }

    /// Returns the value of an initializer or `Constant` node output.
    pub fn constant(&self, tensor: &str) -> Option<&Constant> {
        self.constants.get(tensor)
    }

    pub fn elem_type(&self, tensor: &str) -> Option<i32> {
        self.elem_types.get(tensor).copied()
    }

    pub fn shape(&self, tensor: &str) -> Option<&Shape> {
        self.shapes.get(tensor)
    }

    pub fn rank(&self, tensor: &str) -> Option<usize> {
        self.shape(tensor).map(Vec::len)
    }

    /// Returns the shape from `shapes`, or the constant's dims (used while inferring).
    pub fn shape_or_constant_dims(
        &self,
        tensor: &str,
        shapes: &HashMap<String, Shape>,
    ) -> Option<Shape> {
        shapes.get(tensor).cloned().or_else(|| {
            self.constant(tensor)
                .map(|c| c.dims.iter().map(|&d| Dim::Fixed(d)).collect())
        })
    }
}

/// Returns the element type of `node`'s first output when the operator fixes
/// it: a Cast's `to`, int64 for shapes, sizes and indices, bool for
/// comparisons and logic.
fn fixed_output_type(node: &NodeProto) -> Option<i32> {
    if !is_default_domain(node) {
        return None;
    }
    match node.op_type.as_str() {
        "Cast" => attr_int(node, "to").and_then(|to| i32::try_from(to).ok()),
        "Shape" | "Size" | "ArgMax" | "ArgMin" | "NonZero" => Some(INT64),
        "Equal" | "Greater" | "Less" | "GreaterOrEqual" | "LessOrEqual" | "Not" | "And" | "Or"
        | "Xor" | "IsNaN" | "IsInf" => Some(BOOL),
        _ => None,
    }
}

/// Returns the tensors that `node`'s subgraph attributes read from enclosing
/// scopes: names used inside a subgraph that it neither takes as an input nor
/// defines, at any depth.
fn captured_tensors(node: &NodeProto) -> Vec<String> {
    let mut captured = Vec::new();
    for attribute in &node.attribute {
        for subgraph in attribute.g.as_ref().into_iter().chain(&attribute.graphs) {
            collect_captured(subgraph, &HashSet::new(), &mut captured);
        }
    }
    captured
}

fn collect_captured(graph: &GraphProto, outer: &HashSet<String>, captured: &mut Vec<String>) {
    let mut defined: HashSet<String> = outer.clone();
    defined.extend(graph.input.iter().map(|i| i.name.clone()));
    defined.extend(graph.initializer.iter().map(|t| t.name.clone()));
    let mut note = |name: &str, defined: &HashSet<String>| {
        if !name.is_empty() && !defined.contains(name) && !captured.iter().any(|c| c == name) {
            captured.push(name.to_owned());
        }
    };
    for node in &graph.node {
        for input in &node.input {
            note(input, &defined);
        }
        for attribute in &node.attribute {
            for subgraph in attribute.g.as_ref().into_iter().chain(&attribute.graphs) {
                let mut inner = Vec::new();
                collect_captured(subgraph, &defined, &mut inner);
                for name in inner {
                    note(&name, &defined);
                }
            }
        }
        defined.extend(node.output.iter().cloned());
    }
    for output in &graph.output {
        note(&output.name, &defined);
    }
}

pub(crate) fn is_default_domain(node: &NodeProto) -> bool {
    node.domain.is_empty() || node.domain == "ai.onnx"
}

fn default_opset(model: &ModelProto) -> i64 {
    model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(1, |o| o.version)
}
