//! The reverse walk: which tensors need gradients, their accumulation, and the
//! assembly of the derived model.

use std::collections::{HashMap, HashSet};

use onnx_protobuf::{GraphProto, ModelProto, NodeProto};

use crate::emitter::Emitter;
use crate::graph::{Graph, is_default_domain};
use crate::proto::{FLOAT, attr_int, is_floating, node_label, value_info};
use crate::shapes::{Dim, Shape};
use crate::{GradientError, GradientModel, IntermediateOutputs, Request, rules};

/// Operators whose outputs carry no gradient even when an input does: shape
/// arithmetic, comparisons and rounding have zero or undefined derivatives.
const NON_DIFFERENTIABLE: &[&str] = &[
    "Shape",
    "Size",
    "ConstantOfShape",
    "Equal",
    "Greater",
    "GreaterOrEqual",
    "Less",
    "LessOrEqual",
    "Not",
    "And",
    "Or",
    "Xor",
    "ArgMax",
    "ArgMin",
    "NonZero",
    "Range",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "IsNaN",
    "IsInf",
    "EyeLike",
    "RandomNormalLike",
    "RandomUniformLike",
    "Constant",
];

/// The state of one derivation: the forward graph, the nodes emitted so far and
/// the gradient contributions waiting to be summed.
#[derive(Debug)]
pub(crate) struct Backward<'g, 'm> {
    pub graph: &'g Graph<'m>,
    pub em: Emitter,
    /// Copies of the forward nodes; rules may add outputs (MaxPool's indices).
    pub forward: Vec<NodeProto>,
    needs: HashSet<String>,
    contributions: HashMap<String, Vec<String>>,
    totals: HashMap<String, Option<String>>,
}

/// One node seen by a gradient rule.
#[derive(Debug)]
pub(crate) struct NodeGrads<'n> {
    pub node: &'n NodeProto,
    /// The node's position in the forward graph.
    pub index: usize,
    /// The gradient of each output, `None` where no gradient flows back.
    pub outputs: Vec<Option<String>>,
    /// Whether each input needs a gradient.
    pub wants: Vec<bool>,
}

impl NodeGrads<'_> {
    pub fn input(&self, i: usize) -> &str {
        self.node.input.get(i).map_or("", String::as_str)
    }

    pub fn output(&self, i: usize) -> &str {
        self.node.output.get(i).map_or("", String::as_str)
    }

    pub fn wants(&self, i: usize) -> bool {
        self.wants.get(i).copied().unwrap_or(false)
    }

    /// Returns the gradient of output 0, which exists whenever a rule runs for a
    /// single-output operator.
    pub fn grad(&self) -> &str {
        self.outputs
            .first()
            .and_then(Option::as_deref)
            .unwrap_or("")
    }

    pub fn label(&self) -> String {
        node_label(self.node)
    }

    /// Builds the error for an input whose gradient this operator's rule does not derive.
    pub fn unsupported_input(&self, i: usize, what: &str) -> GradientError {
        GradientError::UnsupportedForm {
            op_type: self.node.op_type.clone(),
            node: self.label(),
            detail: format!(
                "the gradient with respect to {what} (input `{}`) is not supported; \
                 only data inputs may depend on the differentiated input",
                self.input(i)
            ),
        }
    }

    pub fn unsupported(&self, detail: impl Into<String>) -> GradientError {
        GradientError::UnsupportedForm {
            op_type: self.node.op_type.clone(),
            node: self.label(),
            detail: detail.into(),
        }
    }
}

impl Backward<'_, '_> {
    /// Adds `gradient` to the gradient of `tensor`.
    pub fn accumulate(&mut self, tensor: &str, gradient: String) {
        self.contributions
            .entry(tensor.to_owned())
            .or_default()
            .push(gradient);
    }

    /// Sums the gradient of `tensor`. Call it only after all its consumers are processed.
    fn total(&mut self, tensor: &str) -> Option<String> {
        if let Some(total) = self.totals.get(tensor) {
            return total.clone();
        }
        let parts = self.contributions.remove(tensor).unwrap_or_default();
        let total = match parts.len() {
            0 => None,
            1 => parts.into_iter().next(),
            _ => {
                let inputs: Vec<&str> = parts.iter().map(String::as_str).collect();
                Some(self.em.op("Sum", &inputs, vec![]))
            }
        };
        self.totals.insert(tensor.to_owned(), total.clone());
        total
    }

    /// Sums the gradient of `tensor`, or makes zeros shaped like it when nothing flows back.
    fn total_or_zeros(&mut self, tensor: &str) -> String {
        match self.total(tensor) {
            Some(total) => total,
            None => {
                let shape = self.em.shape(tensor);
                self.em.zeros_of_shape(&shape)
            }
        }
    }

    pub fn shape(&self, tensor: &str) -> Option<&Shape> {
        self.graph.shape(tensor)
    }

    /// Reshapes gradient `g` (shaped like `y`) to the shape of `x`.
    ///
    /// The target is a constant when the shapes allow, with a symbolic batch
    /// dimension that `x` and `y` share written as 0 (copy from `g`). ONNX Runtime
    /// can then infer the gradient's shape, so its NCHWc layout pass keeps the
    /// elementwise gradient operators in the blocked layout instead of
    /// reordering tensors around each of them.
    pub fn reshape_to(&mut self, g: &str, x: &str, y: &str) -> String {
        match self.static_target(x, Some(y), 0) {
            Some(target) => {
                let target = self.em.ints(&target);
                self.em.reshape(g, &target)
            }
            None => self.em.reshape_like(g, x),
        }
    }

    /// Expands gradient `g`, which has size 1 or `x`'s size in every dimension, to
    /// the shape of `x`. When `g` keeps `x`'s batch dimension the target can be a
    /// constant, for the reason given at [`Self::reshape_to`].
    pub fn expand_to(&mut self, g: &str, x: &str, keeps_batch: bool) -> String {
        let constant = keeps_batch
            .then(|| self.static_target(x, None, 1))
            .flatten();
        let target = match constant {
            Some(target) => self.em.ints(&target),
            None => self.em.shape(x),
        };
        self.em.op("Expand", &[g, &target], vec![])
    }

    /// `x`'s shape as constants: fixed dims as they are, and a symbolic first
    /// dim as `batch_value` when `like` (if given) has the same symbolic first dim.
    fn static_target(&self, x: &str, like: Option<&str>, batch_value: i64) -> Option<Vec<i64>> {
        let xs = self.shape(x)?;
        let (first, rest) = xs.split_first()?;
        let mut target = Vec::with_capacity(xs.len());
        match first {
            Dim::Fixed(v) => target.push(*v),
            Dim::Param(_) => {
                let same =
                    like.is_none_or(|y| self.shape(y).and_then(|s| s.first()) == Some(first));
                if !same {
                    return None;
                }
                target.push(batch_value);
            }
            Dim::Unknown => return None,
        }
        for dim in rest {
            target.push(dim.fixed()?);
        }
        Some(target)
    }

    /// Tells whether the element type recorded for `tensor` is float32 (unknown counts as yes).
    fn is_float(&self, tensor: &str) -> bool {
        self.graph.elem_type(tensor).is_none_or(|t| t == FLOAT)
    }
}

/// The tensors resolved from a request.
struct Targets {
    input: String,
    output: String,
    intermediates: Vec<String>,
}

pub(crate) fn derive(
    model: &ModelProto,
    request: &Request,
) -> Result<GradientModel, GradientError> {
    let graph = Graph::new(model)?;
    let targets = resolve(&graph, request)?;

    let used = all_names(graph.proto());
    let mut bw = Backward {
        graph: &graph,
        em: Emitter::new(graph.opset, used),
        forward: graph.nodes().to_vec(),
        needs: HashSet::new(),
        contributions: HashMap::new(),
        totals: HashMap::new(),
    };
    bw.needs = needs_gradient(&graph, &targets);
    check_types(&bw)?;

    let seed = bw.em.reserve("seed");
    bw.accumulate(&targets.output, seed.clone());
    walk_backward(&mut bw)?;

    let result = assemble(bw, model, &targets, &seed);
    tracing::debug!(
        nodes = result.model.graph.as_ref().map_or(0, |g| g.node.len()),
        "derived gradient model"
    );
    Ok(result)
}

fn resolve(graph: &Graph, request: &Request) -> Result<Targets, GradientError> {
    let inputs = graph.runtime_inputs();
    let input = match &request.input {
        Some(name) if inputs.contains(&name.as_str()) => name.clone(),
        Some(name) => {
            return Err(GradientError::UnknownTensor {
                name: name.clone(),
                role: "the input",
                hint: format!("graph inputs: {}", inputs.join(", ")),
            });
        }
        None => match inputs.as_slice() {
            [single] => (*single).to_owned(),
            _ => {
                return Err(GradientError::Ambiguous {
                    what: "the input",
                    count: inputs.len(),
                    candidates: inputs.join(", "),
                });
            }
        },
    };

    let output = match &request.output {
        Some(name) if graph.contains(name) => name.clone(),
        Some(name) => {
            return Err(GradientError::UnknownTensor {
                name: name.clone(),
                role: "the output",
                hint: "name a graph output or a node output".into(),
            });
        }
        None => default_output(graph)?,
    };

    let mut intermediates: Vec<String> = Vec::new();
    for name in &request.intermediates {
        if !graph.contains(name) {
            return Err(GradientError::UnknownTensor {
                name: name.clone(),
                role: "an intermediate",
                hint: intermediate_hint(graph),
            });
        }
        if !intermediates.contains(name) {
            intermediates.push(name.clone());
        }
    }
    // The seed multiplies the output and the rules emit float32 arithmetic,
    // so an output or intermediate of another type would give a model that
    // ONNX Runtime refuses to load.
    for tensor in std::iter::once(&output).chain(&intermediates) {
        if let Some(elem_type) = graph.elem_type(tensor).filter(|&t| t != FLOAT) {
            return Err(GradientError::UnsupportedType {
                tensor: tensor.clone(),
                elem_type,
            });
        }
    }
    Ok(Targets {
        input,
        output,
        intermediates,
    })
}

/// Names a few inspectable tensors for the error about an unknown one.
fn intermediate_hint(graph: &Graph) -> String {
    const SHOWN: usize = 8;
    let names: Vec<String> = crate::inspect::candidates(graph)
        .into_iter()
        .map(|t| format!("`{}`", t.name))
        .collect();
    match names.len() {
        0 => "the model has no float32 tensor between its input and output to inspect".into(),
        n if n <= SHOWN => format!("the inspectable tensors are {}", names.join(", ")),
        n => format!(
            "the last {SHOWN} of its {n} inspectable tensors are {}",
            names[n - SHOWN..].join(", ")
        ),
    }
}

/// Picks the single graph output, or the input of the Softmax or LogSoftmax
/// over the classes that produces it (through any Identity nodes), because
/// gradients of probabilities vanish near 0 and 1.
fn default_output(graph: &Graph) -> Result<String, GradientError> {
    let outputs: Vec<&str> = graph
        .proto()
        .output
        .iter()
        .map(|o| o.name.as_str())
        .collect();
    let [output] = outputs.as_slice() else {
        return Err(GradientError::Ambiguous {
            what: "the output",
            count: outputs.len(),
            candidates: outputs.join(", "),
        });
    };
    if graph.producer(output).is_none() && !graph.contains(output) {
        return Err(GradientError::Malformed(format!(
            "the graph output `{output}` is not produced by any node, input or initializer"
        )));
    }
    let mut tensor = *output;
    while let Some(node) = graph.producer(tensor)
        && is_default_domain(node)
        && node.op_type == "Identity"
        && let Some(input) = node.input.first()
    {
        tensor = input;
    }
    match graph.producer(tensor) {
        Some(node)
            if is_default_domain(node)
                && matches!(node.op_type.as_str(), "Softmax" | "LogSoftmax")
                && normalizes_last_axis(graph, node, tensor) =>
        {
            node.input.first().cloned().ok_or_else(|| {
                GradientError::Malformed(format!("node `{}` has no input", node_label(node)))
            })
        }
        _ => Ok((*output).to_owned()),
    }
}

/// Tells whether a Softmax or LogSoftmax normalizes each item over its
/// classes: over the last axis from opset 13 on, or from an axis after the
/// batch axis before it. With an unknown rank, only axis -1 qualifies.
fn normalizes_last_axis(graph: &Graph, node: &NodeProto, output: &str) -> bool {
    let default = if graph.opset >= 13 { -1 } else { 1 };
    let axis = attr_int(node, "axis").unwrap_or(default);
    let rank = graph.rank(output).and_then(|r| i64::try_from(r).ok());
    match rank {
        Some(rank) if graph.opset < 13 => {
            // Coerced to 2-D at `axis`: the axes from it on are normalized
            // together, per item unless that includes the batch axis 0.
            let axis = if axis < 0 { axis + rank } else { axis };
            (1..rank).contains(&axis)
        }
        Some(rank) => axis == -1 || axis == rank - 1,
        None => axis == -1,
    }
}

/// Tensors that depend on a source (the input or an intermediate) and that the
/// differentiated output depends on.
fn needs_gradient(graph: &Graph, targets: &Targets) -> HashSet<String> {
    let mut forward: HashSet<&str> = HashSet::new();
    forward.insert(&targets.input);
    forward.extend(targets.intermediates.iter().map(String::as_str));
    for (index, node) in graph.nodes().iter().enumerate() {
        if !graph.reads(index).any(|i| forward.contains(i)) {
            continue;
        }
        for (k, output) in node.output.iter().enumerate() {
            if carries_gradient(graph, node, k, output) {
                forward.insert(output);
            }
        }
    }

    let mut backward: HashSet<&str> = HashSet::new();
    backward.insert(&targets.output);
    for (index, node) in graph.nodes().iter().enumerate().rev() {
        if node.output.iter().any(|o| backward.contains(o.as_str())) {
            backward.extend(graph.reads(index));
        }
    }

    forward
        .intersection(&backward)
        .map(|s| (*s).to_owned())
        .collect()
}

/// Tells whether output `k` of `node` can carry a gradient from its inputs.
/// Floating-point outputs of any width do, so that a float16 or float64
/// stretch of the path is reported by `check_types` instead of silently
/// cutting the gradient to zero.
fn carries_gradient(graph: &Graph, node: &NodeProto, k: usize, output: &str) -> bool {
    if output.is_empty() || graph.elem_type(output).is_some_and(|t| !is_floating(t)) {
        return false;
    }
    if !is_default_domain(node) {
        return true;
    }
    let op = node.op_type.as_str();
    if NON_DIFFERENTIABLE.contains(&op) {
        return false;
    }
    if op == "Cast"
        && attr_int(node, "to").is_some_and(|t| !i32::try_from(t).is_ok_and(is_floating))
    {
        return false;
    }
    // Indices of MaxPool, the mask of Dropout and the statistics of
    // BatchNormalization and LayerNormalization are not differentiable outputs.
    match op {
        "MaxPool" | "Dropout" | "BatchNormalization" | "LayerNormalization" | "TopK" => k == 0,
        _ => true,
    }
}

fn check_types(bw: &Backward) -> Result<(), GradientError> {
    for tensor in &bw.needs {
        if let Some(elem_type) = bw.graph.elem_type(tensor).filter(|&t| t != FLOAT) {
            return Err(GradientError::UnsupportedType {
                tensor: tensor.clone(),
                elem_type,
            });
        }
    }
    Ok(())
}

fn walk_backward(bw: &mut Backward) -> Result<(), GradientError> {
    let graph = bw.graph;
    for (index, node) in graph.nodes().iter().enumerate().rev() {
        if !node.output.iter().any(|o| bw.needs.contains(o)) {
            continue;
        }
        let outputs: Vec<Option<String>> = node
            .output
            .iter()
            .map(|o| {
                if bw.needs.contains(o) {
                    bw.total(o)
                } else {
                    None
                }
            })
            .collect();
        // A subgraph that reads a tensor of the path from the enclosing scope
        // is part of the path even when none of its explicit inputs is.
        if graph.captured(index).iter().any(|c| bw.needs.contains(c)) {
            return Err(GradientError::UnsupportedOp {
                op_type: node.op_type.clone(),
                node: node_label(node),
            });
        }
        let wants: Vec<bool> = node
            .input
            .iter()
            .map(|i| !i.is_empty() && bw.needs.contains(i) && bw.is_float(i))
            .collect();
        if outputs.iter().all(Option::is_none) || !wants.contains(&true) {
            continue;
        }
        let grads = NodeGrads {
            node,
            index,
            outputs,
            wants,
        };
        rules::apply(bw, &grads)?;
    }
    Ok(())
}

fn all_names(graph: &GraphProto) -> HashSet<String> {
    let mut names: HashSet<String> = graph.input.iter().map(|i| i.name.clone()).collect();
    names.extend(graph.initializer.iter().map(|t| t.name.clone()));
    for node in &graph.node {
        names.extend(node.output.iter().cloned());
        names.insert(node.name.clone());
    }
    names
}

/// A graph output of the derived model.
struct Exposed {
    name: String,
    shape: Option<Shape>,
}

fn assemble(mut bw: Backward, model: &ModelProto, targets: &Targets, seed: &str) -> GradientModel {
    let graph = bw.graph;
    let mut exposed: Vec<Exposed> = Vec::new();

    let logits = expose_forward(&mut bw, &mut exposed, &targets.output);
    let input_grad = bw.total_or_zeros(&targets.input);
    let input_gradient = expose_gradient(
        &mut bw,
        &mut exposed,
        &input_grad,
        &format!("{}_grad", targets.input),
        &targets.input,
    );

    let mut intermediates = Vec::new();
    for tensor in &targets.intermediates {
        let activation = expose_forward(&mut bw, &mut exposed, tensor);
        let grad = bw.total_or_zeros(tensor);
        let gradient = expose_gradient(
            &mut bw,
            &mut exposed,
            &grad,
            &format!("{tensor}_grad"),
            tensor,
        );
        intermediates.push(IntermediateOutputs {
            tensor: tensor.clone(),
            activation,
            gradient,
        });
    }

    let seed_shape = graph.shape(&targets.output).cloned();
    let proto = build_graph(bw, &exposed, &targets.input, seed, seed_shape.as_ref());
    let mut derived = model.clone();
    derived.graph = Some(proto).into();
    derived.doc_string = format!(
        "Gradient of dot(`{seed}`, `{}`) with respect to `{}`, derived by picasso-gradient.",
        targets.output, targets.input
    );
    derived.producer_name = "picasso-gradient".into();
    derived.producer_version = env!("CARGO_PKG_VERSION").into();

    let mut docs: Vec<(&str, String)> = vec![
        (
            &targets.input,
            "The model input, as the forward model takes it.".into(),
        ),
        (
            seed,
            format!(
                "Per-item weights shaped like `{}`: item i's score is the dot product of \
                 seed[i] and its values, so a one-hot row selects one class.",
                targets.output
            ),
        ),
        (
            &logits,
            format!("`{}` as the forward model computes it.", targets.output),
        ),
        (
            &input_gradient,
            format!(
                "Gradient of each item's score with respect to `{}`, shaped like it.",
                targets.input
            ),
        ),
    ];
    for outputs in &intermediates {
        docs.push((
            &outputs.activation,
            format!("The activations of `{}`.", outputs.tensor),
        ));
        docs.push((
            &outputs.gradient,
            format!(
                "Gradient of each item's score with respect to `{}`.",
                outputs.tensor
            ),
        ));
    }
    if let Some(graph) = derived.graph.as_mut() {
        for info in graph.input.iter_mut().chain(graph.output.iter_mut()) {
            if let Some((_, doc)) = docs.iter().find(|(name, _)| *name == info.name) {
                info.doc_string.clone_from(doc);
            }
        }
    }

    GradientModel {
        model: derived,
        input: targets.input.clone(),
        seed: seed.to_owned(),
        logits,
        input_gradient,
        intermediates,
    }
}

/// Makes a forward tensor a graph output, copying it where the name is a graph
/// input or already an output.
fn expose_forward(bw: &mut Backward, exposed: &mut Vec<Exposed>, tensor: &str) -> String {
    let shape = bw.shape(tensor).cloned();
    let taken = exposed.iter().any(|e| e.name == tensor);
    let name = if taken || bw.graph.producer(tensor).is_none() {
        let copy = bw.em.fresh(tensor);
        bw.em.op_into("Identity", &[tensor], vec![], &[&copy]);
        copy
    } else {
        tensor.to_owned()
    };
    exposed.push(Exposed {
        name: name.clone(),
        shape,
    });
    name
}

/// Makes a gradient tensor a graph output named `wanted` (or a fresh variant),
/// shaped like `like`.
fn expose_gradient(
    bw: &mut Backward,
    exposed: &mut Vec<Exposed>,
    tensor: &str,
    wanted: &str,
    like: &str,
) -> String {
    let name = bw.em.reserve(wanted);
    bw.em.op_into("Identity", &[tensor], vec![], &[&name]);
    exposed.push(Exposed {
        name: name.clone(),
        shape: bw.shape(like).cloned(),
    });
    name
}

fn build_graph(
    bw: Backward,
    exposed: &[Exposed],
    input: &str,
    seed: &str,
    seed_shape: Option<&Shape>,
) -> GraphProto {
    let source = bw.graph.proto();
    let mut nodes = bw.forward;
    nodes.extend(bw.em.nodes);
    let mut initializers = source.initializer.clone();
    initializers.extend(bw.em.initializers);

    // Keep only what the outputs need: the original outputs (such as
    // probabilities) and unrelated branches would cost run time for nothing.
    let mut needed: HashSet<String> = exposed.iter().map(|e| e.name.clone()).collect();
    let mut kept = Vec::with_capacity(nodes.len());
    for node in nodes.into_iter().rev() {
        if node.output.iter().any(|o| needed.contains(o)) {
            needed.extend(node.input.iter().cloned());
            kept.push(node);
        }
    }
    kept.reverse();
    initializers.retain(|t| needed.contains(&t.name));

    let mut inputs: Vec<_> = source
        .input
        .iter()
        .filter(|i| {
            i.name == input || (needed.contains(&i.name) && !bw.graph.is_initializer(&i.name))
        })
        .cloned()
        .collect();
    inputs.push(value_info(seed, FLOAT, seed_shape));

    let outputs = exposed
        .iter()
        .map(|e| value_info(&e.name, FLOAT, e.shape.as_ref()))
        .collect();
    let value_infos = source
        .value_info
        .iter()
        .filter(|v| needed.contains(&v.name))
        .cloned()
        .collect();

    GraphProto {
        name: format!("{}_gradient", source.name),
        node: kept,
        initializer: initializers,
        input: inputs,
        output: outputs,
        value_info: value_infos,
        ..Default::default()
    }
}
