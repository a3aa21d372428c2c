//! Matrix products and batch normalization.

use super::{unbroadcast, unbroadcast_shaped};
use crate::GradientError;
use crate::derive::{Backward, NodeGrads};
use crate::proto::{Values, attr_float, attr_int, float_attr, int_attr, ints_attr};
use crate::shapes::{Shape, broadcast};

/// Gemm: `alpha * A' B' + beta * C`, with `A'` and `B'` optionally transposed.
pub(super) fn gemm(bw: &mut Backward, n: &NodeGrads) -> Result<(), GradientError> {
    let g = n.grad().to_owned();
    let (a, b) = (n.input(0).to_owned(), n.input(1).to_owned());
    let alpha = attr_float(n.node, "alpha").unwrap_or(1.0);
    let beta = attr_float(n.node, "beta").unwrap_or(1.0);
    let trans_a = attr_int(n.node, "transA").unwrap_or(0);
    let trans_b = attr_int(n.node, "transB").unwrap_or(0);
    let gemm = |bw: &mut Backward, p: &str, q: &str, ta: i64, tb: i64| {
        let attributes = vec![
            float_attr("alpha", alpha),
            int_attr("transA", ta),
            int_attr("transB", tb),
        ];
        bw.em.op("Gemm", &[p, q], attributes)
    };

    if n.wants(0) {
        let da = if trans_a == 0 {
            gemm(bw, &g, &b, 0, 1 - trans_b)
        } else {
            gemm(bw, &b, &g, trans_b, 1)
        };
        bw.accumulate(&a, da);
    }
    if n.wants(1) {
        let db = if trans_b == 0 {
            gemm(bw, &a, &g, 1 - trans_a, 0)
        } else {
            gemm(bw, &g, &a, 1, trans_a)
        };
        bw.accumulate(&b, db);
    }
    if n.wants(2) {
        let scaled = bw.em.scale(&g, beta);
        let dc = unbroadcast(bw, &scaled, n.input(2), n.output(0))?;
        bw.accumulate(n.input(2), dc);
    }
    Ok(())
}

/// MatMul with numpy batching. Operands of rank 1 are not supported.
pub(super) fn matmul(bw: &mut Backward, n: &NodeGrads) -> Result<(), GradientError> {
    let (a, b, g) = (
        n.input(0).to_owned(),
        n.input(1).to_owned(),
        n.grad().to_owned(),
    );
    let rank = |bw: &Backward, t: &str| {
        bw.graph.rank(t).ok_or_else(|| GradientError::MissingShape {
            tensor: t.to_owned(),
            purpose: format!("transpose the operands of `{}`", n.label()),
        })
    };
    let (rank_a, rank_b) = (rank(bw, &a)?, rank(bw, &b)?);
    if rank_a < 2 || rank_b < 2 {
        return Err(n.unsupported("operands of rank 1 are not supported; reshape them to rank 2"));
    }
    let batch = batch_shape(bw, &a, &b);

    if n.wants(0) {
        let bt = transposed_last(bw, &b, rank_b);
        let local = bw.em.op("MatMul", &[&g, &bt], vec![]);
        let shape = matrix_shape(&batch, bw.shape(&a), rank_a);
        let da = unbroadcast_shaped(bw, &local, &a, shape)?;
        bw.accumulate(&a, da);
    }
    if n.wants(1) {
        let at = transposed_last(bw, &a, rank_a);
        let local = bw.em.op("MatMul", &[&at, &g], vec![]);
        let shape = matrix_shape(&batch, bw.shape(&b), rank_b);
        let db = unbroadcast_shaped(bw, &local, &b, shape)?;
        bw.accumulate(&b, db);
    }
    Ok(())
}

/// Broadcasts the batch dims of both operands, when known.
fn batch_shape(bw: &Backward, a: &str, b: &str) -> Option<Shape> {
    let sa = bw.shape(a)?;
    let sb = bw.shape(b)?;
    broadcast(&sa[..sa.len() - 2].to_vec(), &sb[..sb.len() - 2].to_vec())
}

/// Builds the shape of an operand's local gradient: the batch dims, then its matrix dims.
fn matrix_shape(batch: &Option<Shape>, operand: Option<&Shape>, rank: usize) -> Option<Shape> {
    let mut shape = batch.clone()?;
    shape.extend(operand?[rank - 2..].iter().cloned());
    Some(shape)
}

/// `t` with its last two axes swapped; folded at derive time for a 2-D constant.
fn transposed_last(bw: &mut Backward, t: &str, rank: usize) -> String {
    if let Some(constant) = bw.graph.constant(t).filter(|c| c.dims.len() == 2)
        && let Values::Float(values) = &constant.values
    {
        let (rows, cols) = (constant.dims[0] as usize, constant.dims[1] as usize);
        let mut swapped = vec![0.0f32; values.len()];
        for r in 0..rows {
            for c in 0..cols {
                swapped[c * rows + r] = values[r * cols + c];
            }
        }
        let dims = [cols as i64, rows as i64];
        return bw.em.float_constant("transposed_weight", &dims, &swapped);
    }
    let mut perm: Vec<i64> = (0..rank as i64).collect();
    perm.swap(rank - 2, rank - 1);
    bw.em.op("Transpose", &[t], vec![ints_attr("perm", &perm)])
}

/// BatchNormalization in inference form: a per-channel scale of the gradient by
/// `scale / sqrt(var + epsilon)`, folded at derive time when the parameters are
/// constant.
pub(super) fn batch_norm(bw: &mut Backward, n: &NodeGrads) -> Result<(), GradientError> {
    for i in 1..5 {
        if n.wants(i) {
            return Err(n.unsupported_input(i, "a normalization parameter"));
        }
    }
    if attr_int(n.node, "training_mode").unwrap_or(0) == 1 {
        return Err(
            n.unsupported("training_mode=1 is not supported; export the model in eval mode")
        );
    }
    let x = n.input(0);
    let rank = bw
        .graph
        .rank(x)
        .or_else(|| bw.graph.rank(n.output(0)))
        .ok_or_else(|| GradientError::MissingShape {
            tensor: x.to_owned(),
            purpose: format!("broadcast the scale of `{}` over channels", n.label()),
        })?;
    let epsilon = attr_float(n.node, "epsilon").unwrap_or(1e-5);
    let mut factor_dims = vec![-1i64];
    factor_dims.extend(std::iter::repeat_n(1, rank.saturating_sub(2)));

    let factor = match folded_factor(bw, n, epsilon) {
        Some(values) => {
            factor_dims[0] = values.len() as i64;
            bw.em
                .float_constant("batchnorm_factor", &factor_dims, &values)
        }
        None => {
            let eps = bw.em.scalar(epsilon);
            let shifted = bw.em.add(n.input(4), &eps);
            let root = bw.em.op("Sqrt", &[&shifted], vec![]);
            let per_channel = bw.em.div(n.input(1), &root);
            let dims = bw.em.ints(&factor_dims);
            bw.em.reshape(&per_channel, &dims)
        }
    };
    let result = bw.em.mul(n.grad(), &factor);
    bw.accumulate(x, result);
    Ok(())
}

fn folded_factor(bw: &Backward, n: &NodeGrads, epsilon: f32) -> Option<Vec<f32>> {
    let scale = bw.graph.constant(n.input(1))?.floats()?;
    let var = bw.graph.constant(n.input(4))?.floats()?;
    (scale.len() == var.len()).then(|| {
        scale
            .iter()
            .zip(&var)
            .map(|(s, v)| s / (v + epsilon).sqrt())
            .collect()
    })
}

/// LayerNormalization over the axes from `axis` on:
/// `dx = r * (ĝ - mean(ĝ) - x̂ * mean(ĝ * x̂))` with `ĝ = g * scale`,
/// `x̂ = (x - mean(x)) * r` and `r = 1 / sqrt(var(x) + epsilon)`, the means taken
/// over the normalized axes. The statistics are recomputed in the gradient
/// graph rather than read from the node's optional outputs, which inference
/// exports leave out.
pub(super) fn layer_norm(bw: &mut Backward, n: &NodeGrads) -> Result<(), GradientError> {
    for i in [1, 2] {
        if n.wants(i) {
            return Err(n.unsupported_input(i, "the scale or bias"));
        }
    }
    let x = n.input(0);
    let axis = attr_int(n.node, "axis").unwrap_or(-1);
    let axes: Vec<i64> = if axis < 0 {
        (axis..0).collect()
    } else {
        let rank = bw
            .graph
            .rank(x)
            .ok_or_else(|| GradientError::MissingShape {
                tensor: x.to_owned(),
                purpose: format!("list the normalized axes of `{}`", n.label()),
            })?;
        (axis..rank as i64).collect()
    };
    let epsilon = attr_float(n.node, "epsilon").unwrap_or(1e-5);

    let mean = bw.em.reduce_mean(x, &axes);
    let centered = bw.em.sub(x, &mean);
    let square = bw.em.mul(&centered, &centered);
    let variance = bw.em.reduce_mean(&square, &axes);
    let eps = bw.em.scalar(epsilon);
    let shifted = bw.em.add(&variance, &eps);
    let deviation = bw.em.op("Sqrt", &[&shifted], vec![]);
    let inverse = bw.em.op("Reciprocal", &[&deviation], vec![]);
    let normalized = bw.em.mul(&centered, &inverse);

    let scaled = bw.em.mul(n.grad(), n.input(1));
    let scaled_mean = bw.em.reduce_mean(&scaled, &axes);
    let product = bw.em.mul(&scaled, &normalized);
    let product_mean = bw.em.reduce_mean(&product, &axes);
    let correction = bw.em.mul(&normalized, &product_mean);
    let first = bw.em.sub(&scaled, &scaled_mean);
    let inner = bw.em.sub(&first, &correction);
    let result = bw.em.mul(&inner, &inverse);
    bw.accumulate(x, result);
    Ok(())
}
