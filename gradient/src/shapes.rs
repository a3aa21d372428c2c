//! Static shape knowledge: what the graph records, plus a light propagation.
//!
//! Gradient rules prefer decisions made at derive time (which axes a broadcast
//! gradient sums over, how large a transposed convolution's output is), because
//! they cost nothing at run time. The graph's `value_info` usually records every
//! shape; where it does not, [`infer`] propagates shapes through the common
//! operators. Rules fall back to `Shape` operators when a shape stays unknown.

use std::collections::HashMap;

use onnx_protobuf::NodeProto;

use crate::graph::Graph;
use crate::proto::{attr_int, attr_ints, attr_string, optional_input};

/// One dimension of a tensor shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dim {
    Fixed(i64),
    /// A symbolic dimension such as `batch`: equal names are equal sizes.
    Param(String),
    Unknown,
}

impl Dim {
    pub fn fixed(&self) -> Option<i64> {
        match self {
            Dim::Fixed(v) => Some(*v),
            _ => None,
        }
    }
}

pub(crate) type Shape = Vec<Dim>;

/// Returns the sizes of a shape whose dimensions are all fixed.
pub(crate) fn fixed_dims(shape: &Shape) -> Option<Vec<i64>> {
    shape.iter().map(Dim::fixed).collect()
}

/// Fills in shapes of node outputs that the graph does not record, in node order.
pub(crate) fn infer(graph: &Graph, shapes: &mut HashMap<String, Shape>) {
    for node in graph.nodes() {
        let Some(first) = node.output.first() else {
            continue;
        };
        if first.is_empty() || shapes.contains_key(first) {
            continue;
        }
        if let Some(shape) = infer_node(graph, node, shapes) {
            shapes.insert(first.clone(), shape);
        }
    }
}

fn infer_node(graph: &Graph, node: &NodeProto, shapes: &HashMap<String, Shape>) -> Option<Shape> {
    let input = |i: usize| optional_input(node, i).and_then(|name| shapes.get(name));
    match node.op_type.as_str() {
        "Relu" | "LeakyRelu" | "PRelu" | "Clip" | "Sigmoid" | "Tanh" | "Erf" | "HardSigmoid"
        | "HardSwish" | "Softmax" | "LogSoftmax" | "Dropout" | "Identity" | "Cast"
        | "BatchNormalization" | "LayerNormalization" | "Neg" | "Exp" | "Log" | "Sqrt" | "Abs"
        | "Reciprocal" | "Softplus" | "Gelu" => input(0).cloned(),
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Where" | "Sum" => {
            let mut result = input(0)?.clone();
            for i in 1..node.input.len() {
                result = broadcast(&result, input(i)?)?;
            }
            Some(result)
        }
        "Conv" => {
            let weight = graph.shape_or_constant_dims(optional_input(node, 1)?, shapes)?;
            let x = input(0)?;
            let spatial = window_output(node, x, &weight.get(2..)?.to_vec(), false)?;
            let mut out = vec![x.first()?.clone(), weight.first()?.clone()];
            out.extend(spatial);
            Some(out)
        }
        "MaxPool" | "AveragePool" => {
            let x = input(0)?;
            let kernel: Shape = attr_ints(node, "kernel_shape")?
                .into_iter()
                .map(Dim::Fixed)
                .collect();
            let ceil = attr_int(node, "ceil_mode").unwrap_or(0) == 1;
            let spatial = window_output(node, x, &kernel, ceil)?;
            let mut out = x.get(..2)?.to_vec();
            out.extend(spatial);
            Some(out)
        }
        "GlobalAveragePool" | "GlobalMaxPool" => {
            let x = input(0)?;
            let mut out = x.get(..2)?.to_vec();
            out.extend(std::iter::repeat_n(
                Dim::Fixed(1),
                x.len().saturating_sub(2),
            ));
            Some(out)
        }
        "Flatten" => {
            let x = input(0)?;
            let rank = x.len() as i64;
            let axis = attr_int(node, "axis").unwrap_or(1);
            let axis = usize::try_from(if axis < 0 { axis + rank } else { axis }).ok()?;
            Some(vec![product(x.get(..axis)?), product(x.get(axis..)?)])
        }
        "Gemm" => {
            let a = input(0)?;
            let b = graph.shape_or_constant_dims(&node.input[1], shapes)?;
            let m = if attr_int(node, "transA").unwrap_or(0) == 1 {
                &a[1]
            } else {
                &a[0]
            };
            let n = if attr_int(node, "transB").unwrap_or(0) == 1 {
                &b[0]
            } else {
                &b[1]
            };
            Some(vec![m.clone(), n.clone()])
        }
        "Transpose" => {
            let x = input(0)?;
            let perm =
                attr_ints(node, "perm").unwrap_or_else(|| (0..x.len() as i64).rev().collect());
            perm.iter()
                .map(|&p| x.get(usize::try_from(p).ok()?).cloned())
                .collect()
        }
        "Reshape" => {
            let x = input(0)?;
            let target = graph.constant(optional_input(node, 1)?)?.ints()?;
            reshape(x, &target)
        }
        "MatMul" => {
            let a = graph.shape_or_constant_dims(optional_input(node, 0)?, shapes)?;
            let b = graph.shape_or_constant_dims(optional_input(node, 1)?, shapes)?;
            matmul(&a, &b)
        }
        "Concat" => {
            let parts: Vec<Shape> = node
                .input
                .iter()
                .map(|name| graph.shape_or_constant_dims(name, shapes))
                .collect::<Option<_>>()?;
            concat(&parts, attr_int(node, "axis")?)
        }
        _ => None,
    }
}

/// Returns the shape of `a @ b` under NumPy's matmul rules: a rank-1 operand gains
/// and then loses a unit axis, and the batch axes broadcast.
fn matmul(a: &Shape, b: &Shape) -> Option<Shape> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let a2: Shape = if a.len() == 1 {
        vec![Dim::Fixed(1), a[0].clone()]
    } else {
        a.clone()
    };
    let b2: Shape = if b.len() == 1 {
        vec![b[0].clone(), Dim::Fixed(1)]
    } else {
        b.clone()
    };
    let (a_batch, b_batch) = (a2[..a2.len() - 2].to_vec(), b2[..b2.len() - 2].to_vec());
    // The rank is what the rules need most, so sizes that do not settle
    // stay unknown rather than losing the whole shape.
    let mut shape = broadcast(&a_batch, &b_batch)
        .unwrap_or_else(|| vec![Dim::Unknown; a_batch.len().max(b_batch.len())]);
    if a.len() > 1 {
        shape.push(a2[a2.len() - 2].clone());
    }
    if b.len() > 1 {
        shape.push(b2[b2.len() - 1].clone());
    }
    Some(shape)
}

/// Returns the shape of a Concat of `parts` along `axis`. It has the parts'
/// shared rank, the sum of their sizes on `axis` (unknown unless all are
/// fixed), and the first part's size on every other axis.
fn concat(parts: &[Shape], axis: i64) -> Option<Shape> {
    let first = parts.first()?;
    let rank = first.len();
    if parts.iter().any(|part| part.len() != rank) {
        return None;
    }
    let axis = usize::try_from(if axis < 0 { axis + rank as i64 } else { axis }).ok()?;
    let joined = parts
        .iter()
        .map(|part| part.get(axis).and_then(Dim::fixed))
        .sum::<Option<i64>>()
        .map_or(Dim::Unknown, Dim::Fixed);
    let mut shape = first.clone();
    *shape.get_mut(axis)? = joined;
    Some(shape)
}

fn product(dims: &[Dim]) -> Dim {
    dims.iter()
        .map(Dim::fixed)
        .try_fold(1i64, |acc, d| acc.checked_mul(d?))
        .map_or(Dim::Unknown, Dim::Fixed)
}

/// Multiplies `values`, returning `None` on overflow.
pub(crate) fn checked_product(values: &[i64]) -> Option<i64> {
    values.iter().try_fold(1i64, |acc, &v| acc.checked_mul(v))
}

/// Strides, dilations and explicit pads of a windowed operator, when they have
/// one positive entry per spatial axis (pads: two, and non-negative).
pub(crate) fn window_attributes(node: &NodeProto, spatial: usize) -> Option<(Vec<i64>, Vec<i64>)> {
    let strides = attr_ints(node, "strides").unwrap_or_else(|| vec![1; spatial]);
    let dilations = attr_ints(node, "dilations").unwrap_or_else(|| vec![1; spatial]);
    let valid = |v: &Vec<i64>| v.len() == spatial && v.iter().all(|&x| x > 0);
    (valid(&strides) && valid(&dilations)).then_some((strides, dilations))
}

/// Broadcasts two shapes numpy-style, or returns `None` when undecidable.
pub(crate) fn broadcast(a: &Shape, b: &Shape) -> Option<Shape> {
    let rank = a.len().max(b.len());
    let pad = |s: &Shape, i: usize| -> Dim {
        let offset = rank - s.len();
        if i < offset {
            Dim::Fixed(1)
        } else {
            s[i - offset].clone()
        }
    };
    (0..rank)
        .map(|i| match (pad(a, i), pad(b, i)) {
            (Dim::Fixed(1), d) | (d, Dim::Fixed(1)) => Some(d),
            (x, y) if x == y => Some(x),
            (Dim::Fixed(x), _) | (_, Dim::Fixed(x)) => Some(Dim::Fixed(x)),
            _ => None,
        })
        .collect()
}

fn reshape(x: &Shape, target: &[i64]) -> Option<Shape> {
    let mut out: Shape = target
        .iter()
        .enumerate()
        .map(|(i, &t)| match t {
            0 => x.get(i).cloned().unwrap_or(Dim::Unknown),
            -1 => Dim::Unknown,
            t => Dim::Fixed(t),
        })
        .collect();
    if let Some(hole) = target.iter().position(|&t| t == -1) {
        let total = fixed_dims(x).and_then(|d| checked_product(&d));
        let known: Option<Vec<i64>> = out
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != hole)
            .map(|(_, d)| d.fixed())
            .collect();
        let known = known.and_then(|k| checked_product(&k));
        if let (Some(total), Some(known)) = (total, known) {
            if known > 0 {
                out[hole] = Dim::Fixed(total / known);
            }
        } else if x.first().is_some_and(|d| matches!(d, Dim::Param(_)))
            && target.first() == Some(&0)
        {
            // `[0, -1]` after a symbolic batch: the rest is the product of fixed dims.
            let rest = checked_product(&fixed_dims(&x[1..].to_vec())?)?;
            let others: Option<Vec<i64>> = out[1..]
                .iter()
                .enumerate()
                .filter(|&(i, _)| i + 1 != hole)
                .map(|(_, d)| d.fixed())
                .collect();
            let others = checked_product(&others?)?;
            out[hole] = Dim::Fixed(rest / Some(others).filter(|&o| o > 0)?);
        }
    }
    Some(out)
}

/// Explicit begin and end pads of a windowed operator (Conv, MaxPool, AveragePool),
/// resolving `auto_pad` when the input's spatial sizes are known.
pub(crate) fn window_pads(
    node: &NodeProto,
    spatial_in: &[Dim],
    kernel: &[i64],
) -> Option<(Vec<i64>, Vec<i64>)> {
    let n = kernel.len();
    let (strides, dilations) = window_attributes(node, n)?;
    let auto_pad = attr_string(node, "auto_pad").unwrap_or_else(|| "NOTSET".into());
    match auto_pad.as_str() {
        "VALID" => Some((vec![0; n], vec![0; n])),
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut begin = Vec::with_capacity(n);
            let mut end = Vec::with_capacity(n);
            for i in 0..n {
                let k_eff = (kernel[i] - 1) * dilations[i] + 1;
                let total = if strides[i] == 1 {
                    k_eff - 1
                } else {
                    let size = spatial_in.get(i)?.fixed()?;
                    let out = (size + strides[i] - 1) / strides[i];
                    ((out - 1) * strides[i] + k_eff - size).max(0)
                };
                let small = total / 2;
                let (b, e) = if auto_pad == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                };
                begin.push(b);
                end.push(e);
            }
            Some((begin, end))
        }
        _ => {
            let pads = attr_ints(node, "pads").unwrap_or_else(|| vec![0; 2 * n]);
            (pads.len() == 2 * n && pads.iter().all(|&p| p >= 0))
                .then(|| (pads[..n].to_vec(), pads[n..].to_vec()))
        }
    }
}

fn window_output(node: &NodeProto, x: &Shape, kernel: &Shape, ceil: bool) -> Option<Shape> {
    let kernel = fixed_dims(&kernel.to_vec())?;
    let spatial_in = x.get(2..)?;
    let n = kernel.len();
    if spatial_in.len() != n {
        return None;
    }
    let (begin, end) = window_pads(node, spatial_in, &kernel)?;
    let (strides, dilations) = window_attributes(node, n)?;
    Some(
        (0..n)
            .map(|i| match spatial_in[i].fixed() {
                Some(size) => {
                    let k_eff = (kernel[i] - 1) * dilations[i] + 1;
                    let span = size + begin[i] + end[i] - k_eff;
                    let mut steps = if ceil {
                        (span + strides[i] - 1) / strides[i]
                    } else {
                        span / strides[i]
                    };
                    // ONNX Runtime, like PyTorch, drops a last ceil_mode window
                    // that would start inside the end padding.
                    if ceil && steps > 0 && steps * strides[i] >= size + begin[i] {
                        steps -= 1;
                    }
                    Dim::Fixed(steps + 1)
                }
                None => Dim::Unknown,
            })
            .collect(),
    )
}
