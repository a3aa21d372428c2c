//! Gradient rules, one per operator, and the dispatch between them.
//!
//! A rule receives the gradients of a node's outputs and adds the gradients of
//! the inputs that need one with [`Backward::accumulate`]. Rules emit operators
//! chosen for speed on ONNX Runtime's CPU kernels; the reasons sit next to each.

mod activation;
mod arithmetic;
mod conv;
mod layout;
mod linear;
mod pool;
mod reduce;

use crate::GradientError;
use crate::derive::{Backward, NodeGrads};
use crate::graph::is_default_domain;
use crate::shapes::{Dim, Shape};

/// Every operator with a gradient rule, in alphabetical order.
pub(crate) const SUPPORTED: &[&str] = &[
    "Abs",
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Clip",
    "Concat",
    "Conv",
    "Div",
    "Dropout",
    "Elu",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Gather",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "LayerNormalization",
    "LeakyRelu",
    "Log",
    "LogSoftmax",
    "MatMul",
    "MaxPool",
    "Mul",
    "Neg",
    "PRelu",
    "Pad",
    "Pow",
    "Reciprocal",
    "ReduceMean",
    "ReduceSum",
    "Relu",
    "Reshape",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Softplus",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Tanh",
    "Transpose",
    "Unsqueeze",
    "Where",
];

/// Derives the input gradients of one node.
pub(crate) fn apply(bw: &mut Backward, n: &NodeGrads) -> Result<(), GradientError> {
    if !is_default_domain(n.node) {
        return Err(GradientError::UnsupportedOp {
            op_type: format!("{}.{}", n.node.domain, n.node.op_type),
            node: n.label(),
        });
    }
    match n.node.op_type.as_str() {
        "Add" | "Sub" | "Mul" | "Div" | "Sum" => arithmetic::binary(bw, n),
        "Where" => arithmetic::where_(bw, n),
        "Neg" | "Exp" | "Log" | "Sqrt" | "Abs" | "Reciprocal" | "Softplus" => {
            arithmetic::unary(bw, n)
        }
        "Pow" => arithmetic::pow(bw, n),
        "Identity" | "Dropout" | "Cast" => {
            pass_through(bw, n);
            Ok(())
        }
        "Relu" | "LeakyRelu" | "PRelu" | "Clip" | "Elu" => activation::piecewise(bw, n),
        "Sigmoid" | "Tanh" | "Erf" | "HardSigmoid" | "HardSwish" | "Gelu" => {
            activation::smooth(bw, n)
        }
        "Softmax" | "LogSoftmax" => reduce::softmax(bw, n),
        "ReduceMean" | "ReduceSum" => reduce::reduce(bw, n),
        "Conv" => conv::conv(bw, n),
        "MaxPool" => pool::max_pool(bw, n),
        "AveragePool" => pool::average_pool(bw, n),
        "GlobalAveragePool" => pool::global_average_pool(bw, n),
        "Gemm" => linear::gemm(bw, n),
        "MatMul" => linear::matmul(bw, n),
        "BatchNormalization" => linear::batch_norm(bw, n),
        "LayerNormalization" => linear::layer_norm(bw, n),
        "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" => layout::reshape(bw, n),
        "Transpose" => layout::transpose(bw, n),
        "Concat" => layout::concat(bw, n),
        "Split" => layout::split(bw, n),
        "Slice" | "Gather" => layout::gather_like(bw, n),
        "Pad" => layout::pad(bw, n),
        "Expand" => {
            let g = unbroadcast(bw, n.grad(), n.input(0), n.output(0))?;
            bw.accumulate(n.input(0), g);
            Ok(())
        }
        _ => Err(GradientError::UnsupportedOp {
            op_type: n.node.op_type.clone(),
            node: n.label(),
        }),
    }
}

/// Operators whose output equals their first input on the differentiated path.
fn pass_through(bw: &mut Backward, n: &NodeGrads) {
    if n.wants(0) {
        bw.accumulate(n.input(0), n.grad().to_owned());
    }
}

/// Sums the gradient `g` of a broadcast result `y` down to the shape of operand `x`.
///
/// Decides the summed axes at derive time when the shapes allow it; otherwise
/// computes them at run time by comparing `Shape(x)` with `Shape(g)`.
pub(crate) fn unbroadcast(
    bw: &mut Backward,
    g: &str,
    x: &str,
    y: &str,
) -> Result<String, GradientError> {
    let ys = bw.shape(y).cloned();
    unbroadcast_shaped(bw, g, x, ys)
}

/// [`unbroadcast`] for a gradient whose static shape, when known, is `ys`.
pub(crate) fn unbroadcast_shaped(
    bw: &mut Backward,
    g: &str,
    x: &str,
    ys: Option<Shape>,
) -> Result<String, GradientError> {
    let xs = bw.shape(x).cloned();
    if let (Some(xs), Some(ys)) = (&xs, &ys)
        && let Some(axes) = static_broadcast_axes(xs, ys)
    {
        if axes.is_empty() && xs.len() == ys.len() {
            return Ok(g.to_owned());
        }
        let summed = if axes.is_empty() {
            g.to_owned()
        } else {
            bw.em.reduce_sum(g, &axes, true)
        };
        if xs.len() == ys.len() {
            return Ok(summed);
        }
        return Ok(bw.em.reshape_like(&summed, x));
    }
    if let Some(ones) = xs
        .as_ref()
        .filter(|s| s.iter().all(|d| d == &Dim::Fixed(1)))
    {
        // A scalar-like operand (a bias of shape [1] or []): sum everything.
        let total = bw.em.op(
            "ReduceSum",
            &[g],
            vec![crate::proto::int_attr("keepdims", 0)],
        );
        let dims = bw.em.ints(&vec![1; ones.len()]);
        return Ok(bw.em.reshape(&total, &dims));
    }
    if bw.em.opset < 13 {
        return Err(GradientError::MissingShape {
            tensor: x.to_owned(),
            purpose: "decide which axes the gradient of its broadcast use sums over, together \
                      with the shape of the node's output (run-time axes need opset 13)"
                .into(),
        });
    }
    Ok(dynamic_unbroadcast(bw, g, x))
}

/// Finds the axes of `y` over which `x` was broadcast, or `None` when undecidable.
fn static_broadcast_axes(xs: &[Dim], ys: &[Dim]) -> Option<Vec<i64>> {
    if xs.len() > ys.len() {
        return None;
    }
    let offset = ys.len() - xs.len();
    let mut axes: Vec<i64> = (0..offset as i64).collect();
    for (i, dx) in xs.iter().enumerate() {
        let dy = &ys[i + offset];
        match (dx, dy) {
            (Dim::Fixed(1), Dim::Fixed(1)) => {}
            // Summing over an axis of size 1 is harmless, so this is safe even when
            // `dy` turns out to be 1 at run time.
            (Dim::Fixed(1), _) => axes.push((i + offset) as i64),
            (_, Dim::Fixed(1)) => {}
            (a, b) if a == b && a != &Dim::Unknown => {}
            (Dim::Fixed(_), Dim::Fixed(_)) => return None,
            (Dim::Fixed(a), _) if *a > 1 => {}
            _ => return None,
        }
    }
    Some(axes)
}

fn dynamic_unbroadcast(bw: &mut Backward, g: &str, x: &str) -> String {
    let gs = bw.em.shape(g);
    let xs = bw.em.shape(x);
    let g_rank = bw.em.op("Shape", &[&gs], vec![]);
    let x_rank = bw.em.op("Shape", &[&xs], vec![]);
    let missing = bw.em.sub(&g_rank, &x_rank);
    let ones = bw.em.int_fill(&missing, 1);
    let padded = bw.em.concat(&[&ones, &xs], 0);
    let same = bw.em.op("Equal", &[&padded, &gs], vec![]);
    let differ = bw.em.op("Not", &[&same], vec![]);
    let positions = bw.em.op("NonZero", &[&differ], vec![]);
    let axes = bw.em.flatten_1d(&positions);
    let summed = bw.em.reduce_sum_dynamic(g, &axes);
    bw.em.reshape(&summed, &xs)
}
