//! Operators that move, select or pad elements without arithmetic.

use crate::GradientError;
use crate::derive::{Backward, NodeGrads};
use crate::proto::{
    attr_int, attr_ints, attr_string, int_attr, ints_attr, optional_input, string_attr,
};

/// Reshape, Flatten, Squeeze and Unsqueeze: the gradient reshaped to the input's shape.
pub(super) fn reshape(bw: &mut Backward, n: &NodeGrads) -> Result<(), GradientError> {
    if n.wants(0) {
        let result = bw.reshape_to(n.grad(), n.input(0), n.output(0));
        bw.accumulate(n.input(0), result);
    }
    Ok(())
}

/// Transpose: the gradient transposed by the inverse permutation.
pub(super) fn transpose(bw: &mut Backward, n: &NodeGrads) -> Result<(), GradientError> {
    let attributes = match attr_ints(n.node, "perm") {
        Some(perm) => {
            let mut inverse = vec![0i64; perm.len()];
            for (i, &p) in perm.iter().enumerate() {
                let target = usize::try_from(p)
                    .ok()
                    .filter(|&t| t < perm.len())
                    .ok_or_else(|| n.unsupported(format!("perm {perm:?} is not a permutation")))?;
                inverse[target] = i as i64;
            }
            vec![ints_attr("perm", &inverse)]
        }
        // Without perm, Transpose reverses the axes, which is its own inverse.
        None => vec![],
    };
    let result = bw.em.op("Transpose", &[n.grad()], attributes);
    bw.accumulate(n.input(0), result);
    Ok(())
}

/// Concat: each input gets its slice of the gradient along the axis.
pub(super) fn concat(bw: &mut Backward, n: &NodeGrads) -> Result<(), GradientError> {
    let axis =
        attr_int(n.node, "axis").ok_or_else(|| n.unsupported("the attribute axis is missing"))?;
    let axes = bw.em.ints(&[axis]);
    let static_sizes: Option<Vec<i64>> = n
        .node
        .input
        .iter()
        .map(|x| {
            let shape = bw.shape(x)?;
            let rank = shape.len() as i64;
            let a = usize::try_from(if axis < 0 { axis + rank } else { axis }).ok()?;
            shape.get(a)?.fixed()
        })
        .collect();

    if let Some(sizes) = static_sizes {
        let mut start = 0;
        for (i, size) in sizes.iter().enumerate() {
            if n.wants(i) {
                let starts = bw.em.ints(&[start]);
                let ends = bw.em.ints(&[start + size]);
                let part = bw.em.slice(n.grad(), &starts, &ends, &axes);
                bw.accumulate(n.input(i), part);
            }
            start += size;
        }
        return Ok(());
    }

    let mut start = bw.em.ints(&[0]);
    for i in 0..n.node.input.len() {
        let shape = bw.em.shape(n.input(i));
        let size = bw
            .em
            .op("Gather", &[&shape, &axes], vec![int_attr("axis", 0)]);
        let end = bw.em.add(&start, &size);
        if n.wants(i) {
            let part = bw.em.slice(n.grad(), &start, &end, &axes);
            bw.accumulate(n.input(i), part);
        }
        start = end;
    }
    Ok(())
}

/// Split: the output gradients concatenated, with zeros for outputs that
/// receive none.
pub(super) fn split(bw: &mut Backward, n: &NodeGrads) -> Result<(), GradientError> {
    let axis = attr_int(n.node, "axis").unwrap_or(0);
    let mut parts = Vec::with_capacity(n.node.output.len());
    for (k, output) in n.node.output.iter().enumerate() {
        let part = match n.outputs.get(k).cloned().flatten() {
            Some(g) => g,
            None => {
                let shape = bw.em.shape(output);
                bw.em.zeros_of_shape(&shape)
            }
        };
        parts.push(part);
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    let result = bw.em.concat(&refs, axis);
    bw.accumulate(n.input(0), result);
    Ok(())
}

/// Slice and Gather: the gradient scattered back to the positions the operator read.
///
/// The positions are found by applying the same operator, with the same
/// parameters, to a tensor that contains each element's flat index. This reuses
/// ONNX Runtime's own reading of negative, clamped and stepped parameters in
/// every opset form instead of re-implementing it.
pub(super) fn gather_like(bw: &mut Backward, n: &NodeGrads) -> Result<(), GradientError> {
    for i in 1..n.node.input.len() {
        if n.wants(i) {
            return Err(n.unsupported_input(i, "a parameter"));
        }
    }
    // Gather may read one element twice; Slice never does.
    let repeats = n.node.op_type == "Gather" && !unique_constant(bw, n.input(1));
    if repeats && bw.em.opset < 16 {
        return Err(n.unsupported(
            "Gather with indices that may repeat needs ScatterElements reduction=\"add\" \
             (opset 16); re-export at opset 16 or later",
        ));
    }
    let positions = index_image(bw, n, |bw, index| {
        let mut inputs: Vec<&str> = vec![index];
        inputs.extend(n.node.input[1..].iter().map(String::as_str));
        bw.em.op(&n.node.op_type, &inputs, n.node.attribute.clone())
    });
    let result = scatter_to(bw, n.input(0), &positions, n.grad(), repeats, 0);
    bw.accumulate(n.input(0), result);
    Ok(())
}

fn unique_constant(bw: &Backward, indices: &str) -> bool {
    let Some(values) = bw.graph.constant(indices).and_then(|c| c.ints()) else {
        return false;
    };
    let mut seen = std::collections::HashSet::new();
    values.iter().all(|v| seen.insert(*v)) && values.iter().all(|&v| v >= 0)
}

/// Applies `rebuild` to a tensor of flat indices shaped like the node's input,
/// returning the index each output element came from.
fn index_image(
    bw: &mut Backward,
    n: &NodeGrads,
    rebuild: impl FnOnce(&mut Backward, &str) -> String,
) -> String {
    let x = n.input(0);
    let start = bw.em.int_scalar(0);
    let delta = bw.em.int_scalar(1);
    let size = bw.em.op("Size", &[x], vec![]);
    let range = bw.em.op("Range", &[&start, &size, &delta], vec![]);
    let index = bw.em.reshape_like(&range, x);
    rebuild(bw, &index)
}

/// Scatters `g` into zeros shaped like `x` at the flat `positions` (shifted down
/// by `offset`, whose slots below zero are dropped).
fn scatter_to(
    bw: &mut Backward,
    x: &str,
    positions: &str,
    g: &str,
    add: bool,
    offset: i64,
) -> String {
    let size = bw.em.size_1d(x);
    let slots = if offset == 0 {
        size
    } else {
        let extra = bw.em.ints(&[offset]);
        bw.em.add(&size, &extra)
    };
    let zeros = bw.em.zeros_of_shape(&slots);
    let flat_positions = bw.em.flatten_1d(positions);
    let flat_g = bw.em.flatten_1d(g);
    let mut attributes = vec![int_attr("axis", 0)];
    if add {
        attributes.push(string_attr("reduction", "add"));
    }
    let scattered = bw.em.op(
        "ScatterElements",
        &[&zeros, &flat_positions, &flat_g],
        attributes,
    );
    let kept = if offset == 0 {
        scattered
    } else {
        let starts = bw.em.ints(&[offset]);
        let ends = bw.em.ints(&[i64::MAX]);
        let axes = bw.em.ints(&[0]);
        bw.em.slice(&scattered, &starts, &ends, &axes)
    };
    bw.em.reshape_like(&kept, x)
}

/// Pad: for constant padding the gradient is a slice of the output gradient.
/// For the other modes and for cropping (negative pads) it is scattered back
/// through the flat-index image of the padding.
pub(super) fn pad(bw: &mut Backward, n: &NodeGrads) -> Result<(), GradientError> {
    for i in 1..n.node.input.len() {
        if n.wants(i) {
            return Err(n.unsupported_input(i, "a parameter"));
        }
    }
    let mode = attr_string(n.node, "mode").unwrap_or_else(|| "constant".into());
    let pads = if bw.em.opset >= 11 {
        optional_input(n.node, 1)
            .and_then(|p| bw.graph.constant(p))
            .and_then(|c| c.ints())
    } else {
        attr_ints(n.node, "pads")
    };
    let axes: Option<Vec<i64>> = match optional_input(n.node, 3) {
        Some(name) => bw.graph.constant(name).and_then(|c| c.ints()),
        None => pads.as_ref().map(|p| (0..(p.len() / 2) as i64).collect()),
    };

    if let (Some(pads), Some(axes), "constant") = (&pads, &axes, mode.as_str())
        && pads.iter().all(|&p| p >= 0)
        && pads.len() == 2 * axes.len()
    {
        let starts = bw.em.ints(&pads[..axes.len()]);
        let axes = bw.em.ints(axes);
        let shape = bw.em.shape(n.input(0));
        let sizes = bw
            .em
            .op("Gather", &[&shape, &axes], vec![int_attr("axis", 0)]);
        let ends = bw.em.add(&starts, &sizes);
        let result = bw.em.slice(n.grad(), &starts, &ends, &axes);
        bw.accumulate(n.input(0), result);
        return Ok(());
    }
    if bw.em.opset < 16 {
        return Err(n.unsupported(format!(
            "mode \"{mode}\" or negative or non-constant pads need ScatterElements \
             reduction=\"add\" (opset 16); re-export at opset 16 or later"
        )));
    }
    // Shift indices up by one so that padded positions (value 0) land in a
    // dropped slot.
    let positions = index_image(bw, n, |bw, index| {
        let one = bw.em.int_scalar(1);
        let shifted = bw.em.add(index, &one);
        let mut inputs: Vec<&str> = vec![&shifted];
        inputs.extend(n.node.input[1..].iter().map(String::as_str));
        if let Some(value) = inputs.get_mut(2) {
            // The constant value must match the int64 index type; 0 is the default.
            *value = "";
        }
        bw.em.op("Pad", &inputs, n.node.attribute.clone())
    });
    let result = scatter_to(bw, n.input(0), &positions, n.grad(), true, 1);
    bw.accumulate(n.input(0), result);
    Ok(())
}
