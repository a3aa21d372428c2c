//! Convolution.
//!
//! The input gradient of a convolution is a transposed convolution of the output
//! gradient with the same weights. For stride 1 it is also an ordinary
//! convolution with spatially flipped weights whose input and output channels
//! are swapped within each group. ONNX Runtime 1.31's Conv kernels ran that far
//! faster than ConvTranspose on EfficientNet-Lite0, so the flipped weights are
//! computed here, at derive time, whenever the weights are constant.
//!
//! A strided depthwise 2-D convolution becomes two steps: a 1x1 ConvTranspose
//! with unit weights spreads the gradient out to the strided grid (zeros in
//! between), then a stride-1 depthwise Conv with flipped weights does the
//! arithmetic. ONNX Runtime runs that Conv in its blocked NCHWc layout, while
//! its grouped ConvTranspose loops over every channel of every item. On
//! EfficientNet-Lite0 at batch 16 this cut the gradient pass from 291 ms to
//! 246 ms. Other strided convolutions stay ConvTranspose: for the dense stem
//! of the same model, and for sub-kernel (polyphase) rewrites, the
//! alternatives measured slower.

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

    let sizes = spatial_sizes(bw, n.input(0));
    let unit_stride = window.strides.iter().all(|&s| s == 1);
    // The flipped Conv applies to the gradient itself at stride 1, and to
    // the gradient spread onto the strided grid for a depthwise 2-D
    // convolution. Everything else, or any pad the Conv cannot express,
    // takes ConvTranspose.
    let flipped = flipped_weights(bw, weight, group).and_then(|(dims, values)| {
        let depthwise = dims[1] == 1 && dims[0] == group && window.kernel.len() == 2;
        let (pads, spread) = if unit_stride {
            (unit_stride_pads(&window)?, None)
        } else if depthwise {
            let plan = Spread::plan(&window, sizes.as_deref()?)?;
            (plan.pads, Some(plan.trailing))
        } else {
            return None;
        };
        Some((dims, values, pads, spread))
    });
    let result = match flipped {
        Some((dims, values, pads, spread)) => {
            let g = match spread {
                Some(trailing) => spread_to_grid(bw, n.grad(), group, &window.strides, &trailing),
                None => n.grad().to_owned(),
            };
            let w = bw.em.float_constant("flipped_weight", &dims, &values);
            flipped_conv(bw, &g, &w, &window, group, &pads)
        }
        None => transposed_conv(bw, n.grad(), weight, n.input(0), sizes, &window, group),
    };
    bw.accumulate(n.input(0), result);
    Ok(())
}

/// Emits a stride-1 Conv of `g` with the flipped weights `w` and the given pads.
fn flipped_conv(
    bw: &mut Backward,
    g: &str,
    w: &str,
    window: &Window,
    group: i64,
    pads: &[i64],
) -> String {
    let attributes = vec![
        int_attr("group", group),
        ints_attr("dilations", &window.dilations),
        ints_attr("pads", pads),
        ints_attr("kernel_shape", &window.kernel),
    ];
    bw.em.op("Conv", &[g, w], attributes)
}

/// Returns the pads of the flipped stride-1 Conv that computes a stride-1
/// convolution's input gradient: `extent - 1 - pad` on each side, or `None` when a forward pad is
/// wider than the kernel (a negative pad that ONNX cannot express).
fn unit_stride_pads(window: &Window) -> Option<Vec<i64>> {
    let spatial = window.kernel.len();
    (0..spatial)
        .map(|i| window.extent(i) - 1 - window.pads_begin[i])
        .chain((0..spatial).map(|i| window.extent(i) - 1 - window.pads_end[i]))
        .map(|p| (p >= 0).then_some(p))
        .collect()
}

/// The plan for spreading a strided convolution's output gradient onto the
/// strided grid (see [`spread_to_grid`]) and reading it with a flipped stride-1
/// Conv.
struct Spread {
    /// `output_padding` of the spreading ConvTranspose: trailing zeros of the grid.
    trailing: Vec<i64>,
    /// Pads of the flipped Conv.
    pads: Vec<i64>,
}

impl Spread {
    /// Plans the spread for a forward input of spatial `sizes`, or `None` when
    /// a pad would be negative.
    ///
    /// Along one axis with input size `x`, output size `o`, stride `s` and
    /// begin pad `p`, the grid has `(o - 1) * s + 1 + t` positions, `t`
    /// trailing zeros. Input position `i` gathers grid position `i + p - d * k`
    /// through kernel tap `k`, so the flipped Conv pads `extent - 1 - p` at the
    /// start and `x - grid + p` at the end. The trailing zeros (at most
    /// `s - 1`) stand in for end padding: ONNX Runtime ran the Conv over the
    /// even-sized grids of EfficientNet-Lite0 faster than over odd-sized grids
    /// with one more pad.
    fn plan(window: &Window, sizes: &[i64]) -> Option<Self> {
        let spatial = window.kernel.len();
        if sizes.len() != spatial {
            return None;
        }
        let mut trailing = Vec::with_capacity(spatial);
        let mut begin = Vec::with_capacity(spatial);
        let mut end = Vec::with_capacity(spatial);
        for (i, &size) in sizes.iter().enumerate() {
            let stride = window.strides[i];
            let span = size + window.pads_begin[i] + window.pads_end[i] - window.extent(i);
            if span < 0 {
                return None;
            }
            let grid = span / stride * stride + 1;
            let zeros = (size - grid).clamp(0, stride - 1);
            trailing.push(zeros);
            begin.push(window.extent(i) - 1 - window.pads_begin[i]);
            end.push(size - grid - zeros + window.pads_begin[i]);
        }
        let pads: Vec<i64> = begin.into_iter().chain(end).collect();
        pads.iter()
            .all(|&p| p >= 0)
            .then_some(Spread { trailing, pads })
    }
}

/// Spreads each value of `g` (`channels` channels) to every `stride`-th position,
/// with zeros between and `trailing` zeros at the end of each axis: a 1x1
/// ConvTranspose with unit weights, one group per channel.
fn spread_to_grid(
    bw: &mut Backward,
    g: &str,
    channels: i64,
    strides: &[i64],
    trailing: &[i64],
) -> String {
    let mut dims = vec![channels, 1];
    dims.extend(std::iter::repeat_n(1, strides.len()));
    let count = usize::try_from(channels).unwrap_or(0);
    let ones = bw
        .em
        .float_constant("unit_weight", &dims, &vec![1.0; count]);
    let mut attributes = vec![
        int_attr("group", channels),
        ints_attr("strides", strides),
        ints_attr("kernel_shape", &vec![1; strides.len()]),
    ];
    if trailing.iter().any(|&t| t != 0) {
        attributes.push(ints_attr("output_padding", trailing));
    }
    bw.em.op("ConvTranspose", &[g, &ones], attributes)
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
