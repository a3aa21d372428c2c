//! Activation functions.
//!
//! Masks of piecewise-linear activations are built as `Mul(g, Cast(mask))`
//! from the activation's output where possible: on ONNX Runtime 1.31 this ran
//! faster than `Where`, and it leaves the forward input unused, so ORT can still
//! fuse Conv with the activation in the forward part of the graph.

use crate::GradientError;
use crate::derive::{Backward, NodeGrads};
use crate::proto::{attr_float, attr_string, optional_input};

/// Relu, LeakyRelu, PRelu, Clip and Elu. At the kinks the gradient is the one
/// PyTorch uses: zero at 0 for Relu, and zero at both bounds of Clip (ReLU6).
pub(super) fn piecewise(bw: &mut Backward, n: &NodeGrads) -> Result<(), GradientError> {
    for i in 1..n.node.input.len() {
        if n.wants(i) {
            return Err(n.unsupported_input(i, "a parameter"));
        }
    }
    let (g, x, y) = (n.grad(), n.input(0), n.output(0));
    let zero = bw.em.scalar(0.0);
    let result = match n.node.op_type.as_str() {
        "Relu" => {
            let positive = bw.em.op("Greater", &[y, &zero], vec![]);
            let mask = bw.em.float_mask(&positive);
            bw.em.mul(g, &mask)
        }
        "LeakyRelu" => {
            let alpha = attr_float(n.node, "alpha").unwrap_or(0.01);
            let positive = bw.em.op("Greater", &[x, &zero], vec![]);
            let scaled = bw.em.scale(g, alpha);
            bw.em.op("Where", &[&positive, g, &scaled], vec![])
        }
        "PRelu" => {
            let positive = bw.em.op("Greater", &[x, &zero], vec![]);
            let scaled = bw.em.mul(g, n.input(1));
            bw.em.op("Where", &[&positive, g, &scaled], vec![])
        }
        "Elu" => {
            // For x <= 0, y = alpha * (exp(x) - 1), so dy/dx = y + alpha.
            let alpha = attr_float(n.node, "alpha").unwrap_or(1.0);
            let positive = bw.em.op("Greater", &[x, &zero], vec![]);
            let alpha = bw.em.scalar(alpha);
            let slope = bw.em.add(y, &alpha);
            let scaled = bw.em.mul(g, &slope);
            bw.em.op("Where", &[&positive, g, &scaled], vec![])
        }
        _ => clip(bw, n)?,
    };
    bw.accumulate(x, result);
    Ok(())
}

fn clip(bw: &mut Backward, n: &NodeGrads) -> Result<String, GradientError> {
    let (g, y) = (n.grad(), n.output(0));
    // Opset 11 moved the bounds from attributes to optional inputs.
    let (low, high) = if bw.em.opset >= 11 {
        (
            optional_input(n.node, 1).map(str::to_owned),
            optional_input(n.node, 2).map(str::to_owned),
        )
    } else {
        (
            attr_float(n.node, "min").map(|v| bw.em.scalar(v)),
            attr_float(n.node, "max").map(|v| bw.em.scalar(v)),
        )
    };
    let above = low.map(|low| bw.em.op("Greater", &[y, &low], vec![]));
    let below = high.map(|high| bw.em.op("Less", &[y, &high], vec![]));
    let inside = match (above, below) {
        (Some(a), Some(b)) => bw.em.op("And", &[&a, &b], vec![]),
        (Some(c), None) | (None, Some(c)) => c,
        (None, None) => return Ok(g.to_owned()),
    };
    let mask = bw.em.float_mask(&inside);
    Ok(bw.em.mul(g, &mask))
}

/// Sigmoid, Tanh, Erf, HardSigmoid, HardSwish and Gelu.
pub(super) fn smooth(bw: &mut Backward, n: &NodeGrads) -> Result<(), GradientError> {
    let (g, x, y) = (n.grad(), n.input(0), n.output(0));
    let derivative = match n.node.op_type.as_str() {
        "Sigmoid" => {
            let one = bw.em.scalar(1.0);
            let complement = bw.em.sub(&one, y);
            bw.em.mul(y, &complement)
        }
        "Tanh" => {
            let one = bw.em.scalar(1.0);
            let square = bw.em.mul(y, y);
            bw.em.sub(&one, &square)
        }
        "Erf" => {
            let square = bw.em.mul(x, x);
            let negated = bw.em.neg(&square);
            let exp = bw.em.op("Exp", &[&negated], vec![]);
            bw.em.scale(&exp, std::f32::consts::FRAC_2_SQRT_PI)
        }
        "HardSigmoid" => {
            let alpha = attr_float(n.node, "alpha").unwrap_or(0.2);
            let zero = bw.em.scalar(0.0);
            let one = bw.em.scalar(1.0);
            let above = bw.em.op("Greater", &[y, &zero], vec![]);
            let below = bw.em.op("Less", &[y, &one], vec![]);
            let inside = bw.em.op("And", &[&above, &below], vec![]);
            let mask = bw.em.float_mask(&inside);
            bw.em.scale(&mask, alpha)
        }
        "HardSwish" => hard_swish_derivative(bw, x),
        _ => gelu_derivative(bw, n)?,
    };
    let result = bw.em.mul(g, &derivative);
    bw.accumulate(x, result);
    Ok(())
}

/// 0 below -3, x/3 + 1/2 from -3 to 3 inclusive, 1 above 3, as in PyTorch's
/// `hardswish_backward`.
fn hard_swish_derivative(bw: &mut Backward, x: &str) -> String {
    let third = bw.em.scale(x, 1.0 / 3.0);
    let half = bw.em.scalar(0.5);
    let ramp = bw.em.add(&third, &half);
    let low = bw.em.scalar(-3.0);
    let high = bw.em.scalar(3.0);
    let zero = bw.em.scalar(0.0);
    let one = bw.em.scalar(1.0);
    let below = bw.em.op("Less", &[x, &low], vec![]);
    let clipped_low = bw.em.op("Where", &[&below, &zero, &ramp], vec![]);
    let above = bw.em.op("Greater", &[x, &high], vec![]);
    bw.em.op("Where", &[&above, &one, &clipped_low], vec![])
}

/// Φ(x) + x·φ(x) for the exact Gelu.
fn gelu_derivative(bw: &mut Backward, n: &NodeGrads) -> Result<String, GradientError> {
    let approximate = attr_string(n.node, "approximate").unwrap_or_else(|| "none".into());
    if approximate != "none" {
        return Err(n.unsupported(format!(
            "approximate=\"{approximate}\" has no gradient rule; export with approximate=\"none\""
        )));
    }
    let x = n.input(0);
    let scaled = bw.em.scale(x, std::f32::consts::FRAC_1_SQRT_2);
    let erf = bw.em.op("Erf", &[&scaled], vec![]);
    let one = bw.em.scalar(1.0);
    let shifted = bw.em.add(&erf, &one);
    let cdf = bw.em.scale(&shifted, 0.5);
    let square = bw.em.mul(x, x);
    let exponent = bw.em.scale(&square, -0.5);
    let exp = bw.em.op("Exp", &[&exponent], vec![]);
    // 1/sqrt(2π)
    let pdf = bw.em.scale(&exp, 0.398_942_3);
    let x_pdf = bw.em.mul(x, &pdf);
    Ok(bw.em.add(&cdf, &x_pdf))
}
