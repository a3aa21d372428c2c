//! Elementwise arithmetic with numpy-style broadcasting.

use super::unbroadcast;
use crate::GradientError;
use crate::derive::{Backward, NodeGrads};
use crate::proto::{FLOAT, int_attr};

/// Add, Sub, Mul, Div and Sum.
pub(super) fn binary(bw: &mut Backward, n: &NodeGrads) -> Result<(), GradientError> {
    let g = n.grad().to_owned();
    let y = n.output(0).to_owned();
    // Operands that are all the same tensor (x * x) broadcast nothing.
    let same_operands = n.node.input.iter().all(|i| i == n.input(0));
    for i in 0..n.node.input.len() {
        if !n.wants(i) {
            continue;
        }
        let local = match (n.node.op_type.as_str(), i) {
            ("Add" | "Sum", _) | ("Sub", 0) => g.clone(),
            ("Sub", _) => bw.em.neg(&g),
            ("Mul", _) => bw.em.mul(&g, n.input(1 - i)),
            ("Div", 0) => bw.em.div(&g, n.input(1)),
            // d(a/b)/db = -a/b² = -y/b.
            _ => {
                let ratio = bw.em.div(&y, n.input(1));
                let product = bw.em.mul(&g, &ratio);
                bw.em.neg(&product)
            }
        };
        let reduced = if same_operands {
            local
        } else {
            unbroadcast(bw, &local, n.input(i), &y)?
        };
        bw.accumulate(n.input(i), reduced);
    }
    Ok(())
}

/// Where(condition, a, b): the gradient goes to `a` where the condition holds, else to `b`.
pub(super) fn where_(bw: &mut Backward, n: &NodeGrads) -> Result<(), GradientError> {
    let zero = bw.em.scalar(0.0);
    for i in [1, 2] {
        if !n.wants(i) {
            continue;
        }
        let routed = if i == 1 {
            bw.em.op("Where", &[n.input(0), n.grad(), &zero], vec![])
        } else {
            bw.em.op("Where", &[n.input(0), &zero, n.grad()], vec![])
        };
        let reduced = unbroadcast(bw, &routed, n.input(i), n.output(0))?;
        bw.accumulate(n.input(i), reduced);
    }
    Ok(())
}

/// Neg, Exp, Log, Sqrt, Abs, Reciprocal and Softplus.
pub(super) fn unary(bw: &mut Backward, n: &NodeGrads) -> Result<(), GradientError> {
    let (g, x, y) = (n.grad(), n.input(0), n.output(0));
    let result = match n.node.op_type.as_str() {
        "Neg" => bw.em.neg(g),
        "Exp" => bw.em.mul(g, y),
        "Log" => bw.em.div(g, x),
        "Sqrt" => {
            let twice = bw.em.scale(y, 2.0);
            bw.em.div(g, &twice)
        }
        // d(1/x)/dx = -1/x² = -y².
        "Reciprocal" => {
            let square = bw.em.mul(y, y);
            let product = bw.em.mul(g, &square);
            bw.em.neg(&product)
        }
        // d log(1 + e^x)/dx = sigmoid(x).
        "Softplus" => {
            let sigmoid = bw.em.op("Sigmoid", &[x], vec![]);
            bw.em.mul(g, &sigmoid)
        }
        // Sign(0) = 0 matches PyTorch's choice of 0 for the gradient of |x| at 0.
        _ => {
            let sign = bw.em.op("Sign", &[x], vec![]);
            bw.em.mul(g, &sign)
        }
    };
    bw.accumulate(x, result);
    Ok(())
}

/// Pow with an exponent that does not depend on the input: `e * x^(e - 1)`.
pub(super) fn pow(bw: &mut Backward, n: &NodeGrads) -> Result<(), GradientError> {
    if n.wants(1) {
        return Err(n.unsupported_input(1, "the exponent"));
    }
    let (g, x, exponent) = (n.grad(), n.input(0), n.input(1));
    let constant = bw.graph.constant(exponent).and_then(|c| c.floats());
    let (lowered, factor) = match constant.as_deref() {
        Some([e]) => (bw.em.scalar(e - 1.0), bw.em.scalar(*e)),
        _ => {
            // The exponent may be an integer tensor (Pow's T1 differs from T).
            let to_float = vec![int_attr("to", i64::from(FLOAT))];
            let factor = bw.em.op("Cast", &[exponent], to_float);
            let one = bw.em.scalar(1.0);
            (bw.em.sub(&factor, &one), factor)
        }
    };
    let power = bw.em.op("Pow", &[x, &lowered], vec![]);
    let slope = bw.em.mul(&power, &factor);
    let local = bw.em.mul(g, &slope);
    let result = unbroadcast(bw, &local, x, n.output(0))?;
    bw.accumulate(x, result);
    Ok(())
}
