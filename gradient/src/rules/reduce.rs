//! Reductions and the softmax family.

use crate::GradientError;
use crate::derive::{Backward, NodeGrads};
use crate::proto::{attr_int, attr_ints, int_attr, optional_input};
use crate::shapes::{checked_product, fixed_dims};

/// Softmax and LogSoftmax.
///
/// Before opset 13 both operators flatten the input to 2-D at `axis` (default 1)
/// and normalize over the whole second part. From opset 13 they normalize over
/// the single axis `axis` (default -1). The older form is handled by computing in
/// the flattened 2-D shape and reshaping back.
pub(super) fn softmax(bw: &mut Backward, n: &NodeGrads) -> Result<(), GradientError> {
    let (g, x, y) = (n.grad(), n.input(0), n.output(0));
    let log = n.node.op_type == "LogSoftmax";
    let legacy = bw.em.opset < 13;
    let axis = attr_int(n.node, "axis").unwrap_or(if legacy { 1 } else { -1 });

    let (g2, y2, reduce_axis) = if legacy {
        let flatten = vec![int_attr("axis", axis)];
        let g2 = bw.em.op("Flatten", &[g], flatten.clone());
        let y2 = bw.em.op("Flatten", &[y], flatten);
        (g2, y2, 1)
    } else {
        (g.to_owned(), y.to_owned(), axis)
    };

    let result = if log {
        // d/dx of log_softmax: g - softmax(x) * sum(g).
        let total = bw.em.reduce_sum(&g2, &[reduce_axis], true);
        let probabilities = bw.em.op("Exp", &[&y2], vec![]);
        let spread = bw.em.mul(&probabilities, &total);
        bw.em.sub(&g2, &spread)
    } else {
        // d/dx of softmax: y * (g - sum(g * y)).
        let weighted = bw.em.mul(&g2, &y2);
        let total = bw.em.reduce_sum(&weighted, &[reduce_axis], true);
        let centered = bw.em.sub(&g2, &total);
        bw.em.mul(&y2, &centered)
    };
    let result = if legacy {
        bw.em.reshape_like(&result, x)
    } else {
        result
    };
    bw.accumulate(x, result);
    Ok(())
}

/// ReduceMean and ReduceSum: the gradient, with reduced axes restored, expanded
/// over the input (and divided by the number of reduced elements for the mean).
pub(super) fn reduce(bw: &mut Backward, n: &NodeGrads) -> Result<(), GradientError> {
    if n.wants(1) {
        return Err(n.unsupported_input(1, "the axes"));
    }
    let (g, x, y) = (n.grad(), n.input(0), n.output(0));
    // ReduceSum took `axes` as an input from opset 13, ReduceMean from opset 18.
    let axes_as_input = match n.node.op_type.as_str() {
        "ReduceSum" => bw.em.opset >= 13,
        _ => bw.em.opset >= 18,
    };
    let keepdims = attr_int(n.node, "keepdims").unwrap_or(1) == 1;
    let noop_when_empty = attr_int(n.node, "noop_with_empty_axes").unwrap_or(0) == 1;

    enum Axes {
        All,
        Constant(Vec<i64>),
        Runtime(String),
    }
    let axes = if axes_as_input {
        match optional_input(n.node, 1) {
            None => Axes::All,
            Some(name) => match bw.graph.constant(name).and_then(|c| c.ints()) {
                Some(values) if values.is_empty() => Axes::All,
                Some(values) => Axes::Constant(values),
                None => Axes::Runtime(name.to_owned()),
            },
        }
    } else {
        match attr_ints(n.node, "axes") {
            Some(values) if !values.is_empty() => Axes::Constant(values),
            _ => Axes::All,
        }
    };
    if matches!(axes, Axes::All) && noop_when_empty && axes_as_input {
        // Empty axes with noop_with_empty_axes=1 make the reduction an identity.
        bw.accumulate(x, g.to_owned());
        return Ok(());
    }

    let restored = match (&axes, keepdims) {
        (_, true) | (Axes::All, false) => g.to_owned(),
        (Axes::Constant(values), false) => bw.em.unsqueeze(g, values),
        (Axes::Runtime(name), false) => bw.em.op("Unsqueeze", &[g, name], vec![]),
    };
    let scaled = if n.node.op_type == "ReduceMean" {
        let constant_axes = match &axes {
            Axes::Constant(values) => Some(values.as_slice()),
            _ => None,
        };
        mean_scale(bw, &restored, x, y, constant_axes)
    } else {
        restored
    };
    let rank = bw.graph.rank(x).unwrap_or(0) as i64;
    let keeps_batch = match &axes {
        Axes::Constant(values) => values.iter().all(|&a| a != 0 && a != -rank),
        _ => false,
    };
    let result = bw.expand_to(&scaled, x, keeps_batch);
    bw.accumulate(x, result);
    Ok(())
}

/// Divides `g` by the number of elements each output averaged.
fn mean_scale(bw: &mut Backward, g: &str, x: &str, y: &str, axes: Option<&[i64]>) -> String {
    if let Some(count) = static_count(bw, x, axes) {
        return bw.em.scale(g, 1.0 / count as f32);
    }
    let to_float = || int_attr("to", i64::from(crate::proto::FLOAT));
    let x_size = bw.em.op("Size", &[x], vec![]);
    let y_size = bw.em.op("Size", &[y], vec![]);
    let x_size = bw.em.op("Cast", &[&x_size], vec![to_float()]);
    let y_size = bw.em.op("Cast", &[&y_size], vec![to_float()]);
    let ratio = bw.em.div(&x_size, &y_size);
    bw.em.div(g, &ratio)
}

/// Counts the elements reduced into each output, when the reduced dims are fixed.
fn static_count(bw: &Backward, x: &str, axes: Option<&[i64]>) -> Option<i64> {
    let shape = bw.shape(x)?;
    let rank = shape.len() as i64;
    match axes {
        None => fixed_dims(shape).and_then(|dims| checked_product(&dims)),
        Some(axes) => {
            let dims: Option<Vec<i64>> = axes
                .iter()
                .map(|&a| {
                    let a = usize::try_from(if a < 0 { a + rank } else { a }).ok()?;
                    shape.get(a)?.fixed()
                })
                .collect();
            checked_product(&dims?)
        }
    }
}
