//! Pooling.

use super::conv::{Window, spatial_sizes, transposed_conv};
use crate::GradientError;
use crate::derive::{Backward, NodeGrads};
use crate::proto::{
    FLOAT, attr_int, attr_ints, float_tensor, int_attr, ints_attr, string_attr, tensor_attr,
};
use crate::shapes::{checked_product, fixed_dims};

/// MaxPool: each window's gradient goes to the position its maximum came from.
///
/// The positions come from MaxPool's own `Indices` output, added to the forward
/// node. ONNX Runtime's kernel, like PyTorch, keeps the first maximum of a window
/// in row-major order, which decides ties on flat backgrounds such as MNIST's.
/// The gradient is then scattered into a flat zero tensor: with `reduction="add"`
/// when windows overlap (opset 16 and later), by scattering each class of
/// non-overlapping windows separately and summing before that, and plainly when
/// windows do not overlap.
pub(super) fn max_pool(bw: &mut Backward, n: &NodeGrads) -> Result<(), GradientError> {
    if attr_int(n.node, "storage_order").unwrap_or(0) != 0 {
        return Err(n.unsupported("storage_order=1 (column-major indices) is not supported"));
    }
    let kernel = attr_ints(n.node, "kernel_shape")
        .ok_or_else(|| n.unsupported("the attribute kernel_shape is missing"))?;
    let window = Window::read(bw, n, kernel)?;
    let indices = indices_output(bw, n);

    let x = n.input(0);
    let size = bw.em.size_1d(x);
    let zeros = bw.em.zeros_of_shape(&size);
    let spatial = window.kernel.len();
    let classes: Vec<i64> = (0..spatial)
        .map(|i| (window.extent(i) + window.strides[i] - 1) / window.strides[i])
        .collect();
    let overlapping = classes.iter().any(|&c| c > 1);

    let flat = if !overlapping {
        scatter(bw, &zeros, &indices, n.grad(), false)
    } else if bw.em.opset >= 16 {
        scatter(bw, &zeros, &indices, n.grad(), true)
    } else {
        scatter_by_class(bw, &zeros, &indices, n.grad(), &classes)
    };
    let result = bw.em.reshape_like(&flat, x);
    bw.accumulate(x, result);
    Ok(())
}

/// Returns the forward MaxPool's `Indices` output, adding one when absent.
fn indices_output(bw: &mut Backward, n: &NodeGrads) -> String {
    if let Some(existing) = n.node.output.get(1).filter(|o| !o.is_empty()) {
        return existing.clone();
    }
    let name = bw.em.fresh("maxpool_indices");
    let node = &mut bw.forward[n.index];
    node.output.truncate(1);
    node.output.push(name.clone());
    name
}

fn scatter(bw: &mut Backward, zeros: &str, indices: &str, g: &str, add: bool) -> String {
    let flat_indices = bw.em.flatten_1d(indices);
    let flat_g = bw.em.flatten_1d(g);
    let mut attributes = vec![int_attr("axis", 0)];
    if add {
        attributes.push(string_attr("reduction", "add"));
    }
    bw.em.op(
        "ScatterElements",
        &[zeros, &flat_indices, &flat_g],
        attributes,
    )
}

/// Scatters overlapping windows without `reduction`: windows whose output
/// positions agree modulo `classes` (ceil(extent / stride) per axis) never
/// overlap, so each class scatters unique indices.
fn scatter_by_class(
    bw: &mut Backward,
    zeros: &str,
    indices: &str,
    g: &str,
    classes: &[i64],
) -> String {
    let spatial = classes.len();
    let axes: Vec<i64> = (2..2 + spatial as i64).collect();
    let axes = bw.em.ints(&axes);
    let ends = bw.em.ints(&vec![i64::MAX; spatial]);
    let steps = bw.em.ints(classes);
    let total: i64 = classes.iter().product();

    let mut parts = Vec::new();
    for class in 0..total {
        let mut rest = class;
        let mut offsets = vec![0; spatial];
        for i in (0..spatial).rev() {
            offsets[i] = rest % classes[i];
            rest /= classes[i];
        }
        let starts = bw.em.ints(&offsets);
        let part_indices = bw
            .em
            .op("Slice", &[indices, &starts, &ends, &axes, &steps], vec![]);
        let part_g = bw
            .em
            .op("Slice", &[g, &starts, &ends, &axes, &steps], vec![]);
        parts.push(scatter(bw, zeros, &part_indices, &part_g, false));
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    bw.em.op("Sum", &refs, vec![])
}

/// AveragePool: a transposed convolution with a kernel of ones, applied to each
/// channel separately by folding channels into the batch axis.
pub(super) fn average_pool(bw: &mut Backward, n: &NodeGrads) -> Result<(), GradientError> {
    let kernel = attr_ints(n.node, "kernel_shape")
        .ok_or_else(|| n.unsupported("the attribute kernel_shape is missing"))?;
    let window = Window::read(bw, n, kernel.clone())?;
    check_ceil_mode(bw, n, &window)?;
    let x = n.input(0);
    let volume = checked_product(&kernel)
        .filter(|&v| v > 0)
        .ok_or_else(|| n.unsupported(format!("kernel shape {kernel:?} is invalid")))?;
    let padded = window
        .pads_begin
        .iter()
        .chain(&window.pads_end)
        .any(|&p| p != 0);
    let include_pad = attr_int(n.node, "count_include_pad").unwrap_or(0) == 1;

    let mut weight_dims = vec![1, 1];
    weight_dims.extend(&kernel);
    let folded_shape = {
        let head = bw.em.ints(&[-1, 1]);
        let tail = bw.em.shape_tail(n.grad(), 2);
        bw.em.concat(&[&head, &tail], 0)
    };
    let folded = bw.em.reshape(n.grad(), &folded_shape);

    let (scaled, weight) = if padded && !include_pad {
        let ones_weight =
            bw.em
                .float_constant("ones_kernel", &weight_dims, &vec![1.0; volume as usize]);
        let counts = window_counts(bw, x, &ones_weight, &window);
        (bw.em.div(&folded, &counts), ones_weight)
    } else {
        let mean = vec![1.0 / volume as f32; volume as usize];
        (
            folded,
            bw.em.float_constant("mean_kernel", &weight_dims, &mean),
        )
    };

    let sizes = spatial_sizes(bw, x);
    let spread = transposed_conv(bw, &scaled, &weight, x, sizes, &window, 1);
    let result = bw.em.reshape_like(&spread, x);
    bw.accumulate(x, result);
    Ok(())
}

/// Counts the non-padding positions in each window, shaped `[1, 1, out...]`.
fn window_counts(bw: &mut Backward, x: &str, ones_weight: &str, window: &Window) -> String {
    let head = bw.em.ints(&[1, 1]);
    let tail = bw.em.shape_tail(x, 2);
    let plane = bw.em.concat(&[&head, &tail], 0);
    let one = float_tensor("", &[1], &[1.0]);
    let ones = bw.em.op(
        "ConstantOfShape",
        &[&plane],
        vec![tensor_attr("value", one)],
    );
    let pads: Vec<i64> = window
        .pads_begin
        .iter()
        .chain(&window.pads_end)
        .copied()
        .collect();
    let attributes = vec![
        ints_attr("strides", &window.strides),
        ints_attr("dilations", &window.dilations),
        ints_attr("pads", &pads),
        ints_attr("kernel_shape", &window.kernel),
    ];
    bw.em.op("Conv", &[&ones, ones_weight], attributes)
}

/// Rejects `ceil_mode=1` unless it leaves the output size unchanged: the extra
/// windows it adds have divisors that differ between runtimes.
fn check_ceil_mode(bw: &Backward, n: &NodeGrads, window: &Window) -> Result<(), GradientError> {
    if attr_int(n.node, "ceil_mode").unwrap_or(0) == 0 {
        return Ok(());
    }
    let sizes = spatial_sizes(bw, n.input(0)).ok_or_else(|| GradientError::MissingShape {
        tensor: n.input(0).to_owned(),
        purpose: format!("check that ceil_mode=1 of `{}` adds no window", n.label()),
    })?;
    for (i, size) in sizes.iter().enumerate() {
        let span = size + window.pads_begin[i] + window.pads_end[i] - window.extent(i);
        if span % window.strides[i] != 0 {
            return Err(n.unsupported(
                "ceil_mode=1 adds partial windows here; export with ceil_mode=0 or pad explicitly",
            ));
        }
    }
    Ok(())
}

/// GlobalAveragePool: the gradient divided by the number of positions, spread
/// over every position.
pub(super) fn global_average_pool(bw: &mut Backward, n: &NodeGrads) -> Result<(), GradientError> {
    let x = n.input(0);
    let positions = bw
        .shape(x)
        .and_then(|s| s.get(2..).map(<[_]>::to_vec))
        .and_then(|s| fixed_dims(&s))
        .and_then(|dims| checked_product(&dims));
    let scaled = match positions {
        Some(count) => bw.em.scale(n.grad(), 1.0 / count as f32),
        None => {
            let tail = bw.em.shape_tail(x, 2);
            let as_float = bw
                .em
                .op("Cast", &[&tail], vec![int_attr("to", i64::from(FLOAT))]);
            let count = bw
                .em
                .op("ReduceProd", &[&as_float], vec![int_attr("keepdims", 0)]);
            bw.em.div(n.grad(), &count)
        }
    };
    let result = bw.expand_to(&scaled, x, true);
    bw.accumulate(x, result);
    Ok(())
}
