//! Convolution.
//!
//! The input gradient of a convolution is a transposed convolution of the output
//! gradient with the same weights. For stride 1 it is also an ordinary
//! convolution with spatially flipped weights whose input and output channels
//! are swapped within each group. ONNX Runtime 1.31's Conv kernels ran that far
//! faster than ConvTranspose on EfficientNet-Lite0, so the flipped weights are
//! computed here, at derive time, whenever the weights are constant. Strided
//! convolutions stay ConvTranspose: the alternatives tried there (zero insertion,
//! sub-kernel convolutions) were slower.

use crate::GradientError;
use crate::derive::{Backward, NodeGrads};
use crate::proto::{Values, attr_int, int_attr, ints_attr};
use crate::shapes::{Dim, fixed_dims, window_attributes, window_pads};

/// The geometry of a windowed operator, with `auto_pad` resolved.
#[derive(Debug, Clone)]
pub(super) struct Window {
    pub kernel: Vec<i64>,
    pub strides: Vec<i64>,
    pub dilations: Vec<i64>,
    pub pads_begin: Vec<i64>,
    pub pads_end: Vec<i64>,
}

impl Window {
    /// Reads the geometry of `n`'s node for a kernel of the given spatial size.
    pub fn read(bw: &Backward, n: &NodeGrads, kernel: Vec<i64>) -> Result<Self, GradientError> {
        let spatial = kernel.len();
        let spatial_in = bw
            .shape(n.input(0))
            .and_then(|s| s.get(2..).map(<[Dim]>::to_vec))
            .unwrap_or_else(|| vec![Dim::Unknown; spatial]);
        if kernel.iter().any(|&k| k <= 0) {
            return Err(n.unsupported(format!("kernel shape {kernel:?} is not positive")));
        }
        let (strides, dilations) = window_attributes(n.node, spatial).ok_or_else(|| {
            n.unsupported(format!(
                "strides and dilations must have {spatial} positive entries, one per spatial axis"
            ))
        })?;
        let (pads_begin, pads_end) =
            window_pads(n.node, &spatial_in, &kernel).ok_or_else(|| {
                GradientError::MissingShape {
                    tensor: n.input(0).to_owned(),
                    purpose: format!("resolve the padding of `{}`", n.label()),
                }
            })?;
        Ok(Window {
            strides,
            dilations,
            kernel,
            pads_begin,
            pads_end,
        })
    }

    /// Returns the extent of the dilated kernel along spatial axis `i`.
    pub fn extent(&self, i: usize) -> i64 {
        (self.kernel[i] - 1) * self.dilations[i] + 1
    }
}

pub(super) fn conv(bw: &mut Backward, n: &NodeGrads) -> Result<(), GradientError> {
    for i in [1, 2] {
        if n.wants(i) {
            return Err(n.unsupported_input(i, "the weights or bias"));
        }
    }
    let weight = n.input(1);
    let weight_dims = bw
        .graph
        .constant(weight)
        .map(|c| c.dims.clone())
        .or_else(|| bw.shape(weight).and_then(fixed_dims))
        .ok_or_else(|| GradientError::MissingShape {
            tensor: weight.to_owned(),
            purpose: format!("read the kernel size of `{}`", n.label()),
        })?;
    if weight_dims.len() < 3 {
        return Err(n.unsupported(format!(
            "weight `{weight}` has shape {weight_dims:?}; expected [out, in/groups, k...]"
        )));
    }
    let window = Window::read(bw, n, weight_dims[2..].to_vec())?;
    let group = attr_int(n.node, "group").unwrap_or(1);

    let unit_stride = window.strides.iter().all(|&s| s == 1);
    let flipped = flipped_weights(bw, weight, group);
    let pads: Option<Vec<i64>> = (0..window.kernel.len())
        .map(|i| window.extent(i) - 1 - window.pads_begin[i])
        .chain((0..window.kernel.len()).map(|i| window.extent(i) - 1 - window.pads_end[i]))
        .map(|p| (p >= 0).then_some(p))
        .collect();

    let result = match (unit_stride, flipped, pads) {
        (true, Some((dims, values)), Some(pads)) => {
            let w = bw.em.float_constant("flipped_weight", &dims, &values);
            let attributes = vec![
                int_attr("group", group),
                ints_attr("dilations", &window.dilations),
                ints_attr("pads", &pads),
                ints_attr("kernel_shape", &window.kernel),
            ];
            bw.em.op("Conv", &[n.grad(), &w], attributes)
        }
        _ => {
            let sizes = spatial_sizes(bw, n.input(0));
            transposed_conv(bw, n.grad(), weight, n.input(0), sizes, &window, group)
        }
    };
    bw.accumulate(n.input(0), result);
    Ok(())
}

/// Weights `[out, in/g, k...]` rearranged to `[in, out/g, k...]` with every spatial
/// axis reversed, or `None` when the weights are not a readable constant.
fn flipped_weights(bw: &Backward, weight: &str, group: i64) -> Option<(Vec<i64>, Vec<f32>)> {
    let constant = bw.graph.constant(weight)?;
    let Values::Float(values) = &constant.values else {
        return None;
    };
    let dims = &constant.dims;
    let (out, in_per_group) = (
        usize::try_from(dims[0]).ok()?,
        usize::try_from(dims[1]).ok()?,
    );
    let group = usize::try_from(group)
        .ok()
        .filter(|&g| g > 0 && out % g == 0)?;
    let out_per_group = out / group;
    let volume: usize = dims[2..].iter().map(|&d| d as usize).product();

    let mut flipped = vec![0.0f32; values.len()];
    for gi in 0..group {
        for co in 0..out_per_group {
            for ci in 0..in_per_group {
                let src = ((gi * out_per_group + co) * in_per_group + ci) * volume;
                let dst = ((gi * in_per_group + ci) * out_per_group + co) * volume;
                for p in 0..volume {
                    // Reversing the flat spatial index reverses every spatial axis.
                    flipped[dst + volume - 1 - p] = values[src + p];
                }
            }
        }
    }
    let mut new_dims = vec![(group * in_per_group) as i64, out_per_group as i64];
    new_dims.extend_from_slice(&dims[2..]);
    Some((new_dims, flipped))
}

/// Returns the static spatial sizes of an NC... tensor, when all are known.
pub(super) fn spatial_sizes(bw: &Backward, x: &str) -> Option<Vec<i64>> {
    bw.shape(x)
        .and_then(|s| s.get(2..).map(<[Dim]>::to_vec))
        .and_then(|s| fixed_dims(&s))
}

/// ConvTranspose of `g` with `weight`, sized exactly like the spatial dims of
/// `like` (whose static `sizes` are used when known).
///
/// With known input sizes, `output_padding` restores the rows and columns that a
/// strided window skipped. Without them, the transposed convolution pads only at
/// the start, adds `stride - 1` at the end (never less than the input size), and
/// slices to the run-time input size.
pub(super) fn transposed_conv(
    bw: &mut Backward,
    g: &str,
    weight: &str,
    like: &str,
    sizes: Option<Vec<i64>>,
    window: &Window,
    group: i64,
) -> String {
    let spatial = window.kernel.len();
    let mut attributes = vec![
        int_attr("group", group),
        ints_attr("strides", &window.strides),
        ints_attr("dilations", &window.dilations),
        ints_attr("kernel_shape", &window.kernel),
    ];

    if let Some(sizes) = sizes.filter(|s| s.len() == spatial) {
        let output_padding: Vec<i64> = (0..spatial)
            .map(|i| {
                let span = sizes[i] + window.pads_begin[i] + window.pads_end[i] - window.extent(i);
                span.rem_euclid(window.strides[i])
            })
            .collect();
        let pads: Vec<i64> = window
            .pads_begin
            .iter()
            .chain(&window.pads_end)
            .copied()
            .collect();
        attributes.push(ints_attr("pads", &pads));
        if output_padding.iter().any(|&p| p != 0) {
            attributes.push(ints_attr("output_padding", &output_padding));
        }
        return bw.em.op("ConvTranspose", &[g, weight], attributes);
    }

    let pads: Vec<i64> = window
        .pads_begin
        .iter()
        .copied()
        .chain(vec![0; spatial])
        .collect();
    let output_padding: Vec<i64> = window.strides.iter().map(|s| s - 1).collect();
    attributes.push(ints_attr("pads", &pads));
    attributes.push(ints_attr("output_padding", &output_padding));
    let full = bw.em.op("ConvTranspose", &[g, weight], attributes);
    let starts = bw.em.ints(&vec![0; spatial]);
    let ends = bw.em.shape_tail(like, 2);
    let axes: Vec<i64> = (2..2 + spatial as i64).collect();
    let axes = bw.em.ints(&axes);
    bw.em.slice(&full, &starts, &ends, &axes)
}
