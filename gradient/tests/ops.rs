//! Per-operator gradient checks against central finite differences run through
//! ONNX Runtime. Each graph is small and generated here; inputs avoid the kinks
//! of piecewise-linear operators by more than the finite-difference step.

mod common;

use common::{
    D, GraphBuilder, Rng, array, assert_matches_finite_differences, float, int, ints, string,
};
use ndarray::ArrayD;
use picasso_gradient::{Request, derive};

const N: D = D::S("N");

/// A batch-1 input of random values in [-1, 1).
fn random_input(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let count = shape.iter().product();
    array(shape, Rng::new(seed).values(count, -1.0, 1.0))
}

fn dims(shape: &[usize]) -> Vec<D> {
    let mut dims = vec![N];
    dims.extend(shape[1..].iter().map(|&d| D::N(d as i64)));
    dims
}

/// Conv weights of shape [out, in/groups, k...], random and seeded.
fn weights(b: &mut GraphBuilder, shape: &[i64], seed: u64) -> String {
    let count = shape.iter().product::<i64>() as usize;
    b.floats(shape, Rng::new(seed).values(count, -1.0, 1.0))
}

/// Builds x -> Conv(attributes) and checks it, with the input's spatial size
/// either declared (static rules) or symbolic (run-time fallbacks).
fn check_conv(
    case: &str,
    input: &[usize],
    weight: &[i64],
    attributes: Vec<onnx_protobuf::AttributeProto>,
    opset: i64,
) {
    for static_shapes in [true, false] {
        let mut b = GraphBuilder::new(opset);
        let input_dims = if static_shapes {
            dims(input)
        } else {
            let mut d = vec![N, D::N(input[1] as i64)];
            d.extend(
                [D::S("H"), D::S("W"), D::S("Z")]
                    .iter()
                    .take(input.len() - 2),
            );
            d
        };
        let x = b.input("x", &input_dims);
        let w = weights(&mut b, weight, 3);
        let bias = b.floats(&[weight[0]], vec![0.1; weight[0] as usize]);
        let y = b.op("Conv", &[&x, &w, &bias], attributes.clone());
        let model = b.build(&y);
        let label = format!("{case} (static shapes: {static_shapes})");
        assert_matches_finite_differences(&label, &model, &random_input(input, 11));
    }
}

#[test]
fn conv_stride_one_padded() {
    check_conv(
        "conv 3x3 stride 1 pad 1",
        &[1, 3, 6, 5],
        &[4, 3, 3, 3],
        vec![ints("pads", &[1, 1, 1, 1])],
        17,
    );
}

#[test]
fn conv_stride_two_odd_size_asymmetric_pads() {
    let attributes = vec![ints("strides", &[2, 2]), ints("pads", &[1, 0, 0, 1])];
    check_conv(
        "conv stride 2 on 7x6, pads [1,0,0,1]",
        &[1, 2, 7, 6],
        &[3, 2, 3, 3],
        attributes,
        17,
    );
}

#[test]
fn conv_grouped() {
    let attributes = vec![int("group", 2), ints("pads", &[1, 1, 1, 1])];
    check_conv(
        "conv groups 2",
        &[1, 4, 5, 5],
        &[6, 2, 3, 3],
        attributes,
        13,
    );
}

#[test]
fn conv_depthwise_with_multiplier() {
    let attributes = vec![int("group", 3), ints("pads", &[2, 1, 0, 1])];
    check_conv(
        "depthwise conv, multiplier 2",
        &[1, 3, 6, 6],
        &[6, 1, 3, 3],
        attributes,
        18,
    );
}

#[test]
fn conv_depthwise_stride_two() {
    let attributes = vec![
        int("group", 4),
        ints("strides", &[2, 2]),
        ints("pads", &[0, 0, 1, 1]),
    ];
    check_conv(
        "depthwise conv stride 2",
        &[1, 4, 7, 7],
        &[4, 1, 3, 3],
        attributes,
        18,
    );
}

/// Strided depthwise convolutions with static sizes take the spread-and-flip
/// form (a 1x1 ConvTranspose, then a stride-1 Conv). These geometries vary
/// what that form computes: odd and even sizes, per-axis strides that leave
/// trailing rows and columns unread, dilation, a 5x5 kernel and pads that
/// differ per side.
#[test]
fn conv_depthwise_strided_spread_and_flip() {
    check_strided_depthwise(
        "depthwise 5x5 stride 2, pads [1,1,2,2], 8x8",
        &[1, 3, 8, 8],
        &[3, 1, 5, 5],
        vec![ints("strides", &[2, 2]), ints("pads", &[1, 1, 2, 2])],
    );
    check_strided_depthwise(
        "depthwise 3x3 strides [2,3] on 9x10, pads [0,1,1,0]",
        &[1, 2, 9, 10],
        &[2, 1, 3, 3],
        vec![ints("strides", &[2, 3]), ints("pads", &[0, 1, 1, 0])],
    );
    check_strided_depthwise(
        "depthwise 3x3 stride 2 dilation 2 on 11x8, pads [2,2,2,2]",
        &[1, 2, 11, 8],
        &[2, 1, 3, 3],
        vec![
            ints("strides", &[2, 2]),
            ints("dilations", &[2, 2]),
            ints("pads", &[2, 2, 2, 2]),
        ],
    );
    check_strided_depthwise(
        "depthwise 3x3 stride 3, no pads, 8x7",
        &[1, 2, 8, 7],
        &[2, 1, 3, 3],
        vec![ints("strides", &[3, 3])],
    );
}

/// Checks a depthwise Conv against finite differences and that its static
/// form derives to the forward Conv, one spreading ConvTranspose and one
/// flipped Conv.
fn check_strided_depthwise(
    case: &str,
    input: &[usize],
    weight: &[i64],
    mut attributes: Vec<onnx_protobuf::AttributeProto>,
) {
    attributes.push(int("group", weight[0]));
    check_conv(case, input, weight, attributes.clone(), 17);

    let mut b = GraphBuilder::new(17);
    let x = b.input("x", &dims(input));
    let w = weights(&mut b, weight, 3);
    let y = b.op("Conv", &[&x, &w], attributes);
    let derived = derive(&b.build(&y), &Request::default()).expect("derive succeeds");
    let ops: Vec<&str> = derived
        .model
        .graph
        .node
        .iter()
        .map(|n| n.op_type.as_str())
        .collect();
    let count = |op: &str| ops.iter().filter(|&&o| o == op).count();
    assert_eq!(
        (count("Conv"), count("ConvTranspose")),
        (2, 1),
        "{case}: expected the forward Conv, one spreading ConvTranspose and one flipped Conv, \
         got {ops:?}"
    );
}

#[test]
fn conv_dilated() {
    let attributes = vec![ints("dilations", &[2, 1]), ints("pads", &[2, 1, 2, 1])];
    check_conv("dilated conv", &[1, 2, 7, 5], &[2, 2, 3, 3], attributes, 11);
}

#[test]
fn conv_auto_pad_same() {
    let upper = vec![string("auto_pad", "SAME_UPPER"), ints("strides", &[2, 2])];
    let mut b = GraphBuilder::new(17);
    let x = b.input("x", &dims(&[1, 2, 7, 6]));
    let w = weights(&mut b, &[3, 2, 3, 3], 4);
    let y = b.op("Conv", &[&x, &w], upper);
    assert_matches_finite_differences(
        "conv SAME_UPPER stride 2",
        &b.build(&y),
        &random_input(&[1, 2, 7, 6], 5),
    );

    let lower = vec![
        string("auto_pad", "SAME_LOWER"),
        ints("kernel_shape", &[2, 2]),
    ];
    check_conv(
        "conv SAME_LOWER stride 1, even kernel",
        &[1, 2, 5, 5],
        &[2, 2, 2, 2],
        lower,
        17,
    );
}

#[test]
fn conv_one_dimensional() {
    let attributes = vec![ints("strides", &[2]), ints("pads", &[1, 2])];
    check_conv("1-D conv stride 2", &[1, 2, 9], &[3, 2, 3], attributes, 17);
}

#[test]
fn relu_and_leaky_relu() {
    for op in ["Relu", "LeakyRelu"] {
        let mut b = GraphBuilder::new(17);
        let x = b.input("x", &dims(&[1, 2, 3, 4]));
        let attributes = if op == "LeakyRelu" {
            vec![float("alpha", 0.2)]
        } else {
            vec![]
        };
        let y = b.op(op, &[&x], attributes);
        let input = array(&[1, 2, 3, 4], Rng::new(1).away_from_zero(24, 0.05));
        assert_matches_finite_differences(op, &b.build(&y), &input);
    }
}

#[test]
fn prelu_with_channel_slopes() {
    let mut b = GraphBuilder::new(17);
    let x = b.input("x", &dims(&[1, 3, 2, 2]));
    let slope = b.floats(&[3, 1, 1], vec![0.1, -0.5, 2.0]);
    let y = b.op("PRelu", &[&x, &slope], vec![]);
    let input = array(&[1, 3, 2, 2], Rng::new(2).away_from_zero(12, 0.05));
    assert_matches_finite_differences("PRelu", &b.build(&y), &input);
}

#[test]
fn clip_both_opset_forms() {
    // Values stay at least 0.05 away from both bounds.
    let input = array(&[1, 2, 3, 4], Rng::new(3).distinct(24, 0.1));
    let mut b = GraphBuilder::new(11);
    let x = b.input("x", &dims(&[1, 2, 3, 4]));
    let low = b.scalar(-0.42);
    let high = b.scalar(0.53);
    let y = b.op("Clip", &[&x, &low, &high], vec![]);
    assert_matches_finite_differences("Clip opset 11, both bounds", &b.build(&y), &input);

    let mut b = GraphBuilder::new(13);
    let x = b.input("x", &dims(&[1, 2, 3, 4]));
    let low = b.scalar(-0.37);
    let y = b.op("Clip", &[&x, &low], vec![]);
    assert_matches_finite_differences("Clip opset 13, min only", &b.build(&y), &input);

    let mut b = GraphBuilder::new(13);
    let x = b.input("x", &dims(&[1, 2, 3, 4]));
    let high = b.scalar(0.33);
    let y = b.op("Clip", &[&x, "", &high], vec![]);
    assert_matches_finite_differences("Clip opset 13, max only", &b.build(&y), &input);
}

#[test]
fn smooth_activations() {
    for op in ["Sigmoid", "Tanh", "Erf", "Exp", "Neg", "Elu"] {
        let mut b = GraphBuilder::new(17);
        let x = b.input("x", &dims(&[1, 2, 5]));
        let y = b.op(op, &[&x], vec![]);
        assert_matches_finite_differences(op, &b.build(&y), &random_input(&[1, 2, 5], 4));
    }
    for op in ["Log", "Sqrt"] {
        let mut b = GraphBuilder::new(17);
        let x = b.input("x", &dims(&[1, 2, 5]));
        let y = b.op(op, &[&x], vec![]);
        let input = array(&[1, 2, 5], Rng::new(5).values(10, 0.5, 2.0));
        assert_matches_finite_differences(op, &b.build(&y), &input);
    }
    let mut b = GraphBuilder::new(17);
    let x = b.input("x", &dims(&[1, 2, 5]));
    let y = b.op("Abs", &[&x], vec![]);
    let input = array(&[1, 2, 5], Rng::new(6).away_from_zero(10, 0.05));
    assert_matches_finite_differences("Abs", &b.build(&y), &input);
}

#[test]
fn gelu_exact() {
    let mut b = GraphBuilder::new(20);
    let x = b.input("x", &dims(&[1, 3, 4]));
    let y = b.op("Gelu", &[&x], vec![]);
    let input = array(&[1, 3, 4], Rng::new(7).values(12, -3.0, 3.0));
    assert_matches_finite_differences("Gelu", &b.build(&y), &input);
}

#[test]
fn hard_sigmoid_and_hard_swish() {
    // Spread over [-4.5, 4.5] in steps of 0.3 (shifted off the kinks at ±3 and at
    // HardSigmoid's ±2.5): both flat regions and the ramp are exercised.
    let values: Vec<f32> = (0..30).map(|i| -4.45 + 0.3 * i as f32).collect();
    let input = array(&[1, 3, 10], values);
    for op in ["HardSigmoid", "HardSwish"] {
        let mut b = GraphBuilder::new(17);
        let x = b.input("x", &dims(&[1, 3, 10]));
        let y = b.op(op, &[&x], vec![]);
        assert_matches_finite_differences(op, &b.build(&y), &input);
    }
}

#[test]
fn max_pool_overlapping_windows() {
    for opset in [12, 17] {
        for static_shapes in [true, false] {
            let mut b = GraphBuilder::new(opset);
            let input_dims = if static_shapes {
                dims(&[1, 2, 7, 7])
            } else {
                vec![N, D::N(2), D::S("H"), D::S("W")]
            };
            let x = b.input("x", &input_dims);
            let attributes = vec![
                ints("kernel_shape", &[3, 3]),
                ints("strides", &[2, 2]),
                ints("pads", &[1, 1, 1, 1]),
            ];
            let y = b.op("MaxPool", &[&x], attributes);
            let input = array(&[1, 2, 7, 7], Rng::new(8).distinct(98, 0.05));
            let case =
                format!("MaxPool 3x3 stride 2, opset {opset}, static shapes {static_shapes}");
            assert_matches_finite_differences(&case, &b.build(&y), &input);
        }
    }
}

#[test]
fn max_pool_non_overlapping_and_stride_one() {
    let cases = [
        (
            "MaxPool 2x2 stride 2",
            vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])],
        ),
        ("MaxPool 2x2 stride 1", vec![ints("kernel_shape", &[2, 2])]),
        (
            "MaxPool 3x2 dilated",
            vec![
                ints("kernel_shape", &[3, 2]),
                ints("dilations", &[2, 1]),
                ints("strides", &[1, 2]),
            ],
        ),
    ];
    for (case, attributes) in cases {
        let mut b = GraphBuilder::new(13);
        let x = b.input("x", &dims(&[1, 2, 6, 5]));
        let y = b.op("MaxPool", &[&x], attributes);
        let input = array(&[1, 2, 6, 5], Rng::new(9).distinct(60, 0.05));
        assert_matches_finite_differences(case, &b.build(&y), &input);
    }
}

/// With `ceil_mode=1`, a last window that would start inside the end padding
/// is dropped, as ONNX Runtime does: 9 rows with pads [1, 0] and stride 2 give
/// 5 windows, 8 columns with pads [0, 1] give 4, not 5.
#[test]
fn max_pool_ceil_window_in_padding() {
    for static_shapes in [true, false] {
        let mut b = GraphBuilder::new(13);
        let input_dims = if static_shapes {
            dims(&[1, 2, 9, 8])
        } else {
            vec![N, D::N(2), D::S("H"), D::S("W")]
        };
        let x = b.input("x", &input_dims);
        let attributes = vec![
            ints("kernel_shape", &[3, 2]),
            ints("strides", &[2, 2]),
            ints("pads", &[1, 0, 0, 1]),
            int("ceil_mode", 1),
        ];
        let pooled = b.op("MaxPool", &[&x], attributes);
        // A pooling of the pooled map makes the shape of MaxPool's output matter.
        let y = b.op("GlobalAveragePool", &[&pooled], vec![]);
        let input = array(&[1, 2, 9, 8], Rng::new(12).distinct(144, 0.05));
        let case = format!("MaxPool ceil_mode (static shapes: {static_shapes})");
        assert_matches_finite_differences(&case, &b.build(&y), &input);
    }
}

#[test]
fn average_pool_padding_modes() {
    for include in [0, 1] {
        for static_shapes in [true, false] {
            let mut b = GraphBuilder::new(17);
            let input_dims = if static_shapes {
                dims(&[1, 2, 7, 6])
            } else {
                vec![N, D::N(2), D::S("H"), D::S("W")]
            };
            let x = b.input("x", &input_dims);
            let attributes = vec![
                ints("kernel_shape", &[3, 3]),
                ints("strides", &[2, 2]),
                ints("pads", &[1, 0, 1, 1]),
                int("count_include_pad", include),
            ];
            let y = b.op("AveragePool", &[&x], attributes);
            let case =
                format!("AveragePool count_include_pad={include}, static shapes {static_shapes}");
            assert_matches_finite_differences(
                &case,
                &b.build(&y),
                &random_input(&[1, 2, 7, 6], 10),
            );
        }
    }
}

#[test]
fn global_average_pool() {
    for static_shapes in [true, false] {
        let mut b = GraphBuilder::new(17);
        let input_dims = if static_shapes {
            dims(&[1, 3, 4, 5])
        } else {
            vec![N, D::N(3), D::S("H"), D::S("W")]
        };
        let x = b.input("x", &input_dims);
        let y = b.op("GlobalAveragePool", &[&x], vec![]);
        let case = format!("GlobalAveragePool, static shapes {static_shapes}");
        assert_matches_finite_differences(&case, &b.build(&y), &random_input(&[1, 3, 4, 5], 12));
    }
}

#[test]
fn gemm_transposes_and_scales() {
    for (trans_a, trans_b) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        let mut b = GraphBuilder::new(13);
        // With transA the input is [4, N]: the batch axis moves, so the
        // perturbed copies are stacked through a Transpose after the input.
        let x = b.input("x", &[N, D::N(4)]);
        let a = if trans_a == 1 {
            b.op("Transpose", &[&x], vec![])
        } else {
            x.clone()
        };
        let w_shape: &[i64] = if trans_b == 1 { &[3, 4] } else { &[4, 3] };
        let w = weights(&mut b, w_shape, 13);
        let c = b.floats(&[3], vec![0.5, -0.25, 1.0]);
        let attributes = vec![
            int("transA", trans_a),
            int("transB", trans_b),
            float("alpha", 0.7),
            float("beta", 1.3),
        ];
        let y = b.op("Gemm", &[&a, &w, &c], attributes);
        let case = format!("Gemm transA={trans_a} transB={trans_b}");
        assert_matches_finite_differences(&case, &b.build(&y), &random_input(&[1, 4], 14));
    }
}

#[test]
fn gemm_with_both_operands_on_the_path() {
    // The batch axis is fixed: A·Bᵀ mixes batch items.
    let mut b = GraphBuilder::new(13);
    let x = b.input("x", &[D::N(3), D::N(4)]);
    let half = b.scalar(0.5);
    let scaled = b.op("Mul", &[&x, &half], vec![]);
    let axes = b.ints(&[1]);
    let c = b.op("ReduceSum", &[&x, &axes], vec![int("keepdims", 1)]);
    let y = b.op(
        "Gemm",
        &[&x, &scaled, &c],
        vec![int("transB", 1), float("beta", 0.5)],
    );
    assert_matches_finite_differences(
        "Gemm A, B and C from the input",
        &b.build(&y),
        &random_input(&[3, 4], 15),
    );
}

#[test]
fn matmul_batched_and_broadcast() {
    let mut b = GraphBuilder::new(17);
    let x = b.input("x", &dims(&[1, 3, 4]));
    let w = weights(&mut b, &[4, 5], 16);
    let y = b.op("MatMul", &[&x, &w], vec![]);
    assert_matches_finite_differences(
        "MatMul [N,3,4] x [4,5]",
        &b.build(&y),
        &random_input(&[1, 3, 4], 17),
    );

    // Both operands from the input, with the right one broadcast over a new axis.
    let mut b = GraphBuilder::new(17);
    let x = b.input("x", &dims(&[1, 2, 3, 3]));
    let first_param = b.ints(&[1]);
    let first = b.op("ReduceSum", &[&x, &first_param], vec![int("keepdims", 1)]);
    let y = b.op("MatMul", &[&x, &first], vec![]);
    b.declare(&first, &[N, D::N(1), D::N(3), D::N(3)]);
    assert_matches_finite_differences(
        "MatMul [N,2,3,3] x [N,1,3,3]",
        &b.build(&y),
        &random_input(&[1, 2, 3, 3], 18),
    );
}

/// Builds `a op b` where `a` is `[N, 3, 1]` and `b` is `[N, 1, 4]`, both from the
/// input, so each operand is broadcast along a different axis.
fn two_way_broadcast(op: &str, opset: i64, declare: bool) -> onnx_protobuf::ModelProto {
    let mut b = GraphBuilder::new(opset);
    let x = b.input("x", &dims(&[1, 3, 4]));
    let reduce = |b: &mut GraphBuilder, axis: i64| {
        if opset >= 18 {
            let axes = b.ints(&[axis]);
            b.op("ReduceMean", &[&x, &axes], vec![])
        } else {
            b.op("ReduceMean", &[&x], vec![ints("axes", &[axis])])
        }
    };
    let rows = reduce(&mut b, 2);
    let columns = reduce(&mut b, 1);
    // Div needs a divisor away from zero.
    let columns = if op == "Div" {
        b.op("Exp", &[&columns], vec![])
    } else {
        columns
    };
    if declare {
        b.declare(&rows, &[N, D::N(3), D::N(1)]);
        b.declare(&columns, &[N, D::N(1), D::N(4)]);
    }
    let y = b.op(op, &[&rows, &columns], vec![]);
    let bias = b.floats(&[4], vec![0.1, 0.2, 0.3, 0.4]);
    let z = b.op(op, &[&y, &bias], vec![]);
    let scale = b.floats(&[3, 1], vec![1.5, -0.5, 2.0]);
    let w = b.op(op, &[&scale, &z], vec![]);
    b.build(&w)
}

#[test]
fn arithmetic_broadcasting_both_directions() {
    for op in ["Add", "Sub", "Mul", "Div"] {
        for (opset, declare) in [(13, false), (13, true), (18, false), (11, true)] {
            let case = format!("{op} two-way broadcast, opset {opset}, declared shapes {declare}");
            let model = two_way_broadcast(op, opset, declare);
            assert_matches_finite_differences(&case, &model, &random_input(&[1, 3, 4], 19));
        }
    }
}

#[test]
fn sum_where_expand_and_pass_through() {
    let mut b = GraphBuilder::new(17);
    let x = b.input("x", &dims(&[1, 2, 3]));
    let t = b.op("Tanh", &[&x], vec![]);
    let row = b.floats(&[3], vec![1.0, 2.0, 3.0]);
    let total = b.op("Sum", &[&x, &t, &row], vec![]);
    let condition_param = b.scalar(0.0);
    let condition = b.op("Greater", &[&x, &condition_param], vec![]);
    let chosen = b.op("Where", &[&condition, &total, &t], vec![]);
    let dropped = b.op("Dropout", &[&chosen], vec![]);
    let same = b.op("Identity", &[&dropped], vec![]);
    let cast = b.op("Cast", &[&same], vec![int("to", 1)]);
    let axes = b.ints(&[1]);
    let rows = b.op("ReduceSum", &[&cast, &axes], vec![int("keepdims", 1)]);
    let wide_param = b.ints(&[1, 4, 3]);
    let wide = b.op("Expand", &[&rows, &wide_param], vec![]);
    let input = array(&[1, 2, 3], Rng::new(20).away_from_zero(6, 0.05));
    assert_matches_finite_differences(
        "Sum, Where, Dropout, Identity, Cast, Expand",
        &b.build(&wide),
        &input,
    );
}

#[test]
fn softmax_and_log_softmax_both_opset_forms() {
    for op in ["Softmax", "LogSoftmax"] {
        for (opset, axis) in [
            (11, Some(1)),
            (11, None),
            (12, Some(-1)),
            (13, None),
            (13, Some(1)),
            (18, Some(-2)),
        ] {
            let mut b = GraphBuilder::new(opset);
            let x = b.input("x", &dims(&[1, 2, 3, 4]));
            let attributes = axis.map(|a| vec![int("axis", a)]).unwrap_or_default();
            let y = b.op(op, &[&x], attributes);
            // An explicit output keeps the softmax itself differentiated.
            let request = picasso_gradient::Request {
                output: Some(y.clone()),
                ..Default::default()
            };
            let case = format!("{op} opset {opset} axis {axis:?}");
            common::assert_request_matches(
                &case,
                &b.build(&y),
                &random_input(&[1, 2, 3, 4], 21),
                &request,
            );
        }
    }
}

#[test]
fn reductions_both_opset_forms() {
    let cases: [(&str, i64, Option<&[i64]>, i64); 8] = [
        ("ReduceMean", 13, Some(&[2, -1]), 1),
        ("ReduceMean", 13, Some(&[1]), 0),
        ("ReduceMean", 18, Some(&[-2]), 0),
        ("ReduceMean", 18, None, 1),
        ("ReduceSum", 11, Some(&[1, 3]), 0),
        ("ReduceSum", 12, None, 0),
        ("ReduceSum", 13, Some(&[-1]), 0),
        ("ReduceSum", 13, Some(&[1, 2]), 1),
    ];
    for (op, opset, axes, keepdims) in cases {
        let as_input = (op == "ReduceSum" && opset >= 13) || opset >= 18;
        let mut b = GraphBuilder::new(opset);
        // Reducing every axis mixes batch items, so those cases fix the batch size.
        let input_dims = if axes.is_none() {
            vec![D::N(1), D::N(2), D::N(3), D::N(4)]
        } else {
            dims(&[1, 2, 3, 4])
        };
        let x = b.input("x", &input_dims);
        let mut attributes = vec![int("keepdims", keepdims)];
        let y = match (axes, as_input) {
            (Some(axes), true) => {
                let axes = b.ints(axes);
                b.op(op, &[&x, &axes], attributes)
            }
            (Some(axes), false) => {
                attributes.push(ints("axes", axes));
                b.op(op, &[&x], attributes)
            }
            (None, _) => b.op(op, &[&x], attributes),
        };
        // Square the result so the gradient varies across elements.
        let squared = b.op("Mul", &[&y, &y], vec![]);
        let case = format!("{op} opset {opset} axes {axes:?} keepdims {keepdims}");
        assert_matches_finite_differences(
            &case,
            &b.build(&squared),
            &random_input(&[1, 2, 3, 4], 22),
        );
    }
}

#[test]
fn batch_normalization_inference() {
    let mut b = GraphBuilder::new(15);
    let x = b.input("x", &dims(&[1, 3, 4, 4]));
    let w = weights(&mut b, &[3, 3, 3, 3], 23);
    let conv = b.op("Conv", &[&x, &w], vec![ints("pads", &[1, 1, 1, 1])]);
    let scale = b.floats(&[3], vec![0.5, 1.5, -2.0]);
    let bias = b.floats(&[3], vec![0.1, 0.0, -0.1]);
    let mean = b.floats(&[3], vec![0.2, -0.3, 0.0]);
    let var = b.floats(&[3], vec![0.5, 2.0, 1.0]);
    let y = b.op(
        "BatchNormalization",
        &[&conv, &scale, &bias, &mean, &var],
        vec![float("epsilon", 1e-3)],
    );
    assert_matches_finite_differences(
        "Conv then BatchNormalization",
        &b.build(&y),
        &random_input(&[1, 3, 4, 4], 24),
    );
}

/// DenseNet's shape: BatchNormalization of a Concat, with a symbolic batch
/// and no value_info, so the rank comes from shape inference through Concat.
#[test]
fn batch_normalization_after_concat() {
    let mut b = GraphBuilder::new(17);
    let x = b.input("x", &[N, D::N(2), D::N(4), D::N(4)]);
    let w = weights(&mut b, &[1, 2, 3, 3], 25);
    let conv = b.op("Conv", &[&x, &w], vec![ints("pads", &[1, 1, 1, 1])]);
    let joined = b.op("Concat", &[&x, &conv], vec![int("axis", 1)]);
    let scale = b.floats(&[3], vec![0.5, 1.5, -2.0]);
    let bias = b.floats(&[3], vec![0.1, 0.0, -0.1]);
    let mean = b.floats(&[3], vec![0.2, -0.3, 0.0]);
    let var = b.floats(&[3], vec![0.5, 2.0, 1.0]);
    let y = b.op(
        "BatchNormalization",
        &[&joined, &scale, &bias, &mean, &var],
        vec![float("epsilon", 1e-3)],
    );
    assert_matches_finite_differences(
        "Concat then BatchNormalization",
        &b.build(&y),
        &random_input(&[1, 2, 4, 4], 26),
    );
}

/// ConvNeXt's MLP: MatMul, an exact GELU written out with Erf, MatMul, with
/// a symbolic batch and no value_info, so the second MatMul learns its
/// operand's rank from shape inference through the first.
#[test]
fn matmul_after_written_out_gelu() {
    let mut b = GraphBuilder::new(17);
    let x = b.input("x", &[N, D::N(2), D::N(4)]);
    let w1 = weights(&mut b, &[4, 5], 27);
    let w2 = weights(&mut b, &[5, 3], 28);
    let hidden = b.op("MatMul", &[&x, &w1], vec![]);
    let root_two = b.scalar(std::f32::consts::SQRT_2);
    let half = b.scalar(0.5);
    let one = b.scalar(1.0);
    let scaled = b.op("Div", &[&hidden, &root_two], vec![]);
    let erf = b.op("Erf", &[&scaled], vec![]);
    let shifted = b.op("Add", &[&erf, &one], vec![]);
    let gated = b.op("Mul", &[&hidden, &shifted], vec![]);
    let gelu = b.op("Mul", &[&gated, &half], vec![]);
    let y = b.op("MatMul", &[&gelu, &w2], vec![]);
    assert_matches_finite_differences(
        "MatMul, written-out GELU, MatMul",
        &b.build(&y),
        &random_input(&[1, 2, 4], 29),
    );
}

#[test]
fn reshaping_operators_both_opset_forms() {
    for opset in [11, 13] {
        let mut b = GraphBuilder::new(opset);
        let x = b.input("x", &dims(&[1, 2, 3, 4]));
        let flat = b.op("Flatten", &[&x], vec![int("axis", 1)]);
        let wide = if opset >= 13 {
            let axes = b.ints(&[1, -1]);
            b.op("Unsqueeze", &[&flat, &axes], vec![])
        } else {
            b.op("Unsqueeze", &[&flat], vec![ints("axes", &[1, -1])])
        };
        let narrow = if opset >= 13 {
            let axes = b.ints(&[-1]);
            b.op("Squeeze", &[&wide, &axes], vec![])
        } else {
            b.op("Squeeze", &[&wide], vec![ints("axes", &[-1])])
        };
        let shape = b.ints(&[0, 4, 6]);
        let grid = b.op("Reshape", &[&narrow, &shape], vec![]);
        let y = b.op("Transpose", &[&grid], vec![ints("perm", &[0, 2, 1])]);
        let t = b.op("Tanh", &[&y], vec![]);
        let case = format!("Flatten, Unsqueeze, Squeeze, Transpose, Reshape at opset {opset}");
        assert_matches_finite_differences(&case, &b.build(&t), &random_input(&[1, 2, 3, 4], 25));
    }
}

#[test]
fn reshape_through_shape_arithmetic() {
    // The target shape is computed from Shape, Gather and Concat, as PyTorch's
    // exporter writes `x.view(x.size(0), -1)`: a path that carries no gradient.
    let mut b = GraphBuilder::new(13);
    let x = b.input("x", &dims(&[1, 2, 3]));
    let shape = b.op("Shape", &[&x], vec![]);
    let batch_param = b.ints(&[0]);
    let batch = b.op("Gather", &[&shape, &batch_param], vec![int("axis", 0)]);
    let target_param = b.ints(&[-1]);
    let target = b.op("Concat", &[&batch, &target_param], vec![int("axis", 0)]);
    let y = b.op("Reshape", &[&x, &target], vec![]);
    let z = b.op("Sigmoid", &[&y], vec![]);
    assert_matches_finite_differences(
        "Reshape to a computed shape",
        &b.build(&z),
        &random_input(&[1, 2, 3], 26),
    );
}

#[test]
fn concat_and_split() {
    for declare in [true, false] {
        let mut b = GraphBuilder::new(13);
        let x = b.input("x", &dims(&[1, 2, 3]));
        let t = b.op("Tanh", &[&x], vec![]);
        let s_param = b.ints(&[-1]);
        let s = b.op("ReduceSum", &[&x, &s_param], vec![int("keepdims", 1)]);
        if declare {
            b.declare(&t, &dims(&[1, 2, 3]));
            b.declare(&s, &dims(&[1, 2, 1]));
        }
        let y = b.op("Concat", &[&x, &t, &s], vec![int("axis", -1)]);
        let case = format!("Concat of three along -1, declared shapes {declare}");
        assert_matches_finite_differences(&case, &b.build(&y), &random_input(&[1, 2, 3], 27));
    }

    let forms: [(i64, &str); 3] = [(11, "attribute"), (13, "input"), (18, "num_outputs")];
    for (opset, form) in forms {
        let mut b = GraphBuilder::new(opset);
        let x = b.input("x", &dims(&[1, 6, 2]));
        let parts = match form {
            "attribute" => b.op_n(
                "Split",
                &[&x],
                vec![int("axis", 1), ints("split", &[1, 2, 3])],
                3,
            ),
            "input" => {
                let sizes = b.ints(&[1, 2, 3]);
                b.op_n("Split", &[&x, &sizes], vec![int("axis", 1)], 3)
            }
            _ => b.op_n(
                "Split",
                &[&x],
                vec![int("axis", 1), int("num_outputs", 3)],
                3,
            ),
        };
        // Only two of the three parts reach the output: the third gets zeros.
        let y = b.op("Concat", &[&parts[2], &parts[0]], vec![int("axis", 1)]);
        let z = b.op("Mul", &[&y, &y], vec![]);
        let case = format!("Split with sizes as {form} (opset {opset})");
        assert_matches_finite_differences(&case, &b.build(&z), &random_input(&[1, 6, 2], 28));
    }
}

#[test]
fn slice_with_negative_and_stepped_parameters() {
    let mut b = GraphBuilder::new(13);
    let x = b.input("x", &dims(&[1, 4, 7]));
    let starts = b.ints(&[-1, 1]);
    let ends = b.ints(&[i64::MIN, 100]);
    let axes = b.ints(&[1, -1]);
    let steps = b.ints(&[-2, 2]);
    let y = b.op("Slice", &[&x, &starts, &ends, &axes, &steps], vec![]);
    let z = b.op("Mul", &[&y, &y], vec![]);
    assert_matches_finite_differences(
        "Slice with negative steps",
        &b.build(&z),
        &random_input(&[1, 4, 7], 29),
    );
}

#[test]
fn gather_on_data() {
    for (opset, indices) in [(13, [2i64, 0, 2]), (13, [3, 1, 0]), (17, [-1, 0, -1])] {
        let mut b = GraphBuilder::new(opset);
        let x = b.input("x", &dims(&[1, 4, 3]));
        let idx = b.ints(&indices);
        let y = b.op("Gather", &[&x, &idx], vec![int("axis", 1)]);
        let z = b.op("Mul", &[&y, &y], vec![]);
        let case = format!("Gather indices {indices:?} at opset {opset}");
        if opset < 16 && indices == [2, 0, 2] {
            let error = picasso_gradient::derive(&b.build(&z), &Default::default())
                .expect_err("repeated Gather indices need opset 16");
            assert!(error.to_string().contains("opset 16"), "{case}: {error}");
            continue;
        }
        assert_matches_finite_differences(&case, &b.build(&z), &random_input(&[1, 4, 3], 30));
    }
}

#[test]
fn pad_modes() {
    let cases: [(i64, &str, &[i64]); 5] = [
        (11, "constant", &[0, 0, 1, 2, 0, 1, 0, 1]),
        (13, "reflect", &[0, 0, 1, 2, 0, 0, 2, 1]),
        (18, "edge", &[0, 0, 2, 1, 0, 0, 1, 2]),
        (17, "constant", &[0, 0, -1, 1, 0, 1, 1, -1]),
        (19, "wrap", &[0, 0, 1, 1, 0, 0, 1, 0]),
    ];
    for (opset, mode, pads) in cases {
        let mut b = GraphBuilder::new(opset);
        let x = b.input("x", &dims(&[1, 2, 3, 4]));
        let pads_tensor = b.ints(pads);
        let y = b.op("Pad", &[&x, &pads_tensor], vec![string("mode", mode)]);
        let z = b.op("Mul", &[&y, &y], vec![]);
        let case = format!("Pad mode {mode} pads {pads:?} at opset {opset}");
        if opset < 16 && mode != "constant" {
            let error = picasso_gradient::derive(&b.build(&z), &Default::default())
                .expect_err("reflect padding needs opset 16");
            assert!(error.to_string().contains("opset 16"), "{case}: {error}");
            continue;
        }
        assert_matches_finite_differences(&case, &b.build(&z), &random_input(&[1, 2, 3, 4], 31));
    }

    // Opset 18 adds an `axes` input.
    let mut b = GraphBuilder::new(18);
    let x = b.input("x", &dims(&[1, 2, 3, 4]));
    let pads = b.ints(&[1, 2, 0, 1]);
    let axes = b.ints(&[-1, 1]);
    let y = b.op("Pad", &[&x, &pads, "", &axes], vec![]);
    let z = b.op("Mul", &[&y, &y], vec![]);
    assert_matches_finite_differences(
        "Pad with axes (opset 18)",
        &b.build(&z),
        &random_input(&[1, 2, 3, 4], 32),
    );
}

#[test]
fn pow_reciprocal_and_softplus() {
    // Inputs in [1, 2]: below 1 the third derivative of x^-0.5 and 1/x grows
    // fast enough that the finite difference's truncation error nears the
    // tolerance.
    let positive = array(&[1, 2, 5], Rng::new(33).values(10, 1.0, 2.0));
    for (case, exponent) in [
        ("Pow x^3", Some(3.0f32)),
        ("Pow x^-0.5", Some(-0.5)),
        ("Pow with int64 exponent", None),
    ] {
        let mut b = GraphBuilder::new(17);
        let x = b.input("x", &dims(&[1, 2, 5]));
        let e = match exponent {
            Some(v) => b.scalar(v),
            None => b.ints(&[2]),
        };
        let y = b.op("Pow", &[&x, &e], vec![]);
        assert_matches_finite_differences(case, &b.build(&y), &positive);
    }
    for op in ["Reciprocal", "Softplus"] {
        let mut b = GraphBuilder::new(17);
        let x = b.input("x", &dims(&[1, 2, 5]));
        let y = b.op(op, &[&x], vec![]);
        assert_matches_finite_differences(op, &b.build(&y), &positive);
    }
}

#[test]
fn layer_normalization_axes_and_opsets() {
    for (opset, axis) in [(17, -1), (17, 1), (18, -2), (18, 2)] {
        let mut b = GraphBuilder::new(opset);
        let x = b.input("x", &dims(&[1, 3, 4]));
        let normalized_shape: &[i64] = match axis {
            -1 | 2 => &[4],
            _ => &[3, 4],
        };
        let count = normalized_shape.iter().product::<i64>() as usize;
        let scale = b.floats(normalized_shape, Rng::new(34).values(count, 0.5, 1.5));
        let bias = b.floats(normalized_shape, Rng::new(35).values(count, -0.5, 0.5));
        let y = b.op(
            "LayerNormalization",
            &[&x, &scale, &bias],
            vec![int("axis", axis), float("epsilon", 1e-3)],
        );
        let case = format!("LayerNormalization axis {axis} at opset {opset}");
        assert_matches_finite_differences(&case, &b.build(&y), &random_input(&[1, 3, 4], 36));
    }
}
