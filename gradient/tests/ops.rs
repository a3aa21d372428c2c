//! Per-operator gradient checks against central finite differences run through
//! ONNX Runtime. Each graph is small and generated here; inputs avoid the kinks
//! of piecewise-linear operators by more than the finite-difference step.

mod common;

use common::{
    D, GraphBuilder, Rng, array, assert_matches_finite_differences, float, int, ints, string,
};
use ndarray::ArrayD;

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
fn check_conv(case: &str, input: &[usize], weight: &[i64], attributes: Vec<onnx_protobuf::AttributeProto>, opset: i64) {
    for static_shapes in [true, false] {
        let mut b = GraphBuilder::new(opset);
        let input_dims = if static_shapes {
            dims(input)
        } else {
            let mut d = vec![N, D::N(input[1] as i64)];
            d.extend([D::S("H"), D::S("W"), D::S("Z")].iter().take(input.len() - 2));
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
    check_conv("conv 3x3 stride 1 pad 1", &[1, 3, 6, 5], &[4, 3, 3, 3], vec![ints("pads", &[1, 1, 1, 1])], 17);
}

#[test]
fn conv_stride_two_odd_size_asymmetric_pads() {
    let attributes = vec![ints("strides", &[2, 2]), ints("pads", &[1, 0, 0, 1])];
    check_conv("conv stride 2 on 7x6, pads [1,0,0,1]", &[1, 2, 7, 6], &[3, 2, 3, 3], attributes, 17);
}

#[test]
fn conv_grouped() {
    let attributes = vec![int("group", 2), ints("pads", &[1, 1, 1, 1])];
    check_conv("conv groups 2", &[1, 4, 5, 5], &[6, 2, 3, 3], attributes, 13);
}

#[test]
fn conv_depthwise_with_multiplier() {
    let attributes = vec![int("group", 3), ints("pads", &[2, 1, 0, 1])];
    check_conv("depthwise conv, multiplier 2", &[1, 3, 6, 6], &[6, 1, 3, 3], attributes, 18);
}

#[test]
fn conv_depthwise_stride_two() {
    let attributes = vec![int("group", 4), ints("strides", &[2, 2]), ints("pads", &[0, 0, 1, 1])];
    check_conv("depthwise conv stride 2", &[1, 4, 7, 7], &[4, 1, 3, 3], attributes, 18);
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
    assert_matches_finite_differences("conv SAME_UPPER stride 2", &b.build(&y), &random_input(&[1, 2, 7, 6], 5));

    let lower = vec![string("auto_pad", "SAME_LOWER"), ints("kernel_shape", &[2, 2])];
    check_conv("conv SAME_LOWER stride 1, even kernel", &[1, 2, 5, 5], &[2, 2, 2, 2], lower, 17);
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
        let attributes = if op == "LeakyRelu" { vec![float("alpha", 0.2)] } else { vec![] };
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
            let input_dims = if static_shapes { dims(&[1, 2, 7, 7]) } else { vec![N, D::N(2), D::S("H"), D::S("W")] };
            let x = b.input("x", &input_dims);
            let attributes = vec![ints("kernel_shape", &[3, 3]), ints("strides", &[2, 2]), ints("pads", &[1, 1, 1, 1])];
            let y = b.op("MaxPool", &[&x], attributes);
            let input = array(&[1, 2, 7, 7], Rng::new(8).distinct(98, 0.05));
            let case = format!("MaxPool 3x3 stride 2, opset {opset}, static shapes {static_shapes}");
            assert_matches_finite_differences(&case, &b.build(&y), &input);
        }
    }
}

#[test]
fn max_pool_non_overlapping_and_stride_one() {
    let cases = [
        ("MaxPool 2x2 stride 2", vec![ints("kernel_shape", &[2, 2]), ints("strides", &[2, 2])]),
        ("MaxPool 2x2 stride 1", vec![ints("kernel_shape", &[2, 2])]),
        ("MaxPool 3x2 dilated", vec![ints("kernel_shape", &[3, 2]), ints("dilations", &[2, 1]), ints("strides", &[1, 2])]),
    ];
    for (case, attributes) in cases {
        let mut b = GraphBuilder::new(13);
        let x = b.input("x", &dims(&[1, 2, 6, 5]));
        let y = b.op("MaxPool", &[&x], attributes);
        let input = array(&[1, 2, 6, 5], Rng::new(9).distinct(60, 0.05));
        assert_matches_finite_differences(case, &b.build(&y), &input);
    }
}

#[test]
fn average_pool_padding_modes() {
    for include in [0, 1] {
        for static_shapes in [true, false] {
            let mut b = GraphBuilder::new(17);
            let input_dims = if static_shapes { dims(&[1, 2, 7, 6]) } else { vec![N, D::N(2), D::S("H"), D::S("W")] };
            let x = b.input("x", &input_dims);
            let attributes = vec![
                ints("kernel_shape", &[3, 3]),
                ints("strides", &[2, 2]),
                ints("pads", &[1, 0, 1, 1]),
                int("count_include_pad", include),
            ];
            let y = b.op("AveragePool", &[&x], attributes);
            let case = format!("AveragePool count_include_pad={include}, static shapes {static_shapes}");
            assert_matches_finite_differences(&case, &b.build(&y), &random_input(&[1, 2, 7, 6], 10));
        }
    }
}

#[test]
fn global_average_pool() {
    for static_shapes in [true, false] {
        let mut b = GraphBuilder::new(17);
        let input_dims = if static_shapes { dims(&[1, 3, 4, 5]) } else { vec![N, D::N(3), D::S("H"), D::S("W")] };
        let x = b.input("x", &input_dims);
        let y = b.op("GlobalAveragePool", &[&x], vec![]);
        let case = format!("GlobalAveragePool, static shapes {static_shapes}");
        assert_matches_finite_differences(&case, &b.build(&y), &random_input(&[1, 3, 4, 5], 12));
    }
}
