//! The behavior of `derive` beyond single operators: requests, errors, batches,
//! intermediates and tie-breaking.

mod common;

use common::{D, GraphBuilder, Rng, array, float, int, ints, run, session};
use onnx_protobuf::{Message, ModelProto};
use picasso_gradient::{GradientError, Request, derive, inspectable_tensors, supported_ops};

const N: D = D::S("N");

/// x [N, 4] -> Gemm -> logits [N, 3] -> Softmax -> probabilities.
fn softmax_classifier() -> (ModelProto, String) {
    let mut b = GraphBuilder::new(17);
    let x = b.input("x", &[N, D::N(4)]);
    let w = b.floats(&[4, 3], Rng::new(1).values(12, -1.0, 1.0));
    let logits = b.op("Gemm", &[&x, &w], vec![]);
    let probabilities = b.op("Softmax", &[&logits], vec![int("axis", 1)]);
    (b.build(&probabilities), logits)
}

fn bundled(name: &str) -> ModelProto {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(name);
    let bytes =
        std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    ModelProto::parse_from_bytes(&bytes).expect("bundled model parses")
}

#[test]
fn softmax_output_differentiates_its_input() {
    let (model, logits) = softmax_classifier();
    let gradient = derive(&model, &Request::default()).expect("derive succeeds");
    assert_eq!(
        gradient.logits, logits,
        "the differentiated tensor is Softmax's input"
    );

    let mut session = session(&gradient.model).expect("gradient model loads");
    let x = array(&[1, 4], vec![0.5, -1.0, 2.0, 0.25]);
    let seed = array(&[1, 3], vec![0.0, 1.0, 0.0]);
    let out = run(
        &mut session,
        &[("x", &x), ("seed", &seed)],
        &[&gradient.logits, &gradient.input_gradient],
    )
    .expect("gradient model runs");
    // d(logits[1])/dx is column 1 of the Gemm weights, whatever the softmax does.
    let w = Rng::new(1).values(12, -1.0, 1.0);
    for i in 0..4 {
        let expected = w[i * 3 + 1];
        let found = out[1][[0, i]];
        assert!(
            (found - expected).abs() < 1e-6,
            "input gradient {i}: expected {expected}, found {found}"
        );
    }
}

#[test]
fn batch_items_use_their_own_seeds() {
    let (model, _) = softmax_classifier();
    let gradient = derive(&model, &Request::default()).expect("derive succeeds");
    let mut session = session(&gradient.model).expect("gradient model loads");
    let x = array(&[2, 4], Rng::new(2).values(8, -1.0, 1.0));
    let seed = array(&[2, 3], vec![1.0, 0.0, 0.0, 0.0, 0.0, 2.0]);
    let out = run(
        &mut session,
        &[("x", &x), ("seed", &seed)],
        &[&gradient.input_gradient],
    )
    .expect("runs");
    let w = Rng::new(1).values(12, -1.0, 1.0);
    for i in 0..4 {
        assert!(
            (out[0][[0, i]] - w[i * 3]).abs() < 1e-6,
            "item 0, input {i} follows seed 0"
        );
        assert!(
            (out[0][[1, i]] - 2.0 * w[i * 3 + 2]).abs() < 1e-6,
            "item 1, input {i} follows seed 1"
        );
    }
}

#[test]
fn intermediates_report_activation_and_gradient() {
    let mut b = GraphBuilder::new(17);
    let x = b.input("x", &[N, D::N(3)]);
    let hidden = b.op("Tanh", &[&x], vec![]);
    let doubled = b.op("Add", &[&hidden, &hidden], vec![]);
    let unused = b.op("Sigmoid", &[&x], vec![]);
    let output = b.op("Mul", &[&doubled, &x], vec![]);
    let model = b.build(&output);
    let request = Request {
        intermediates: vec![hidden.clone(), unused.clone()],
        ..Request::default()
    };
    let gradient = derive(&model, &request).expect("derive succeeds");
    assert_eq!(
        gradient.intermediates.len(),
        2,
        "one entry per requested tensor"
    );

    let mut session = session(&gradient.model).expect("gradient model loads");
    let values = vec![0.3f32, -0.7, 1.1];
    let xs = array(&[1, 3], values.clone());
    let seed = array(&[1, 3], vec![1.0, 1.0, 1.0]);
    let names = [
        gradient.intermediates[0].activation.as_str(),
        gradient.intermediates[0].gradient.as_str(),
        gradient.intermediates[1].gradient.as_str(),
    ];
    let out = run(&mut session, &[("x", &xs), ("seed", &seed)], &names).expect("runs");
    for (i, v) in values.iter().enumerate() {
        assert!(
            (out[0][[0, i]] - v.tanh()).abs() < 1e-6,
            "activation of `{hidden}` at {i}"
        );
        // output = 2 tanh(x) * x, so d/d tanh(x) = 2x, gathered from both Add operands.
        assert!(
            (out[1][[0, i]] - 2.0 * v).abs() < 1e-6,
            "gradient of `{hidden}` at {i}"
        );
        assert_eq!(
            out[2][[0, i]],
            0.0,
            "`{unused}` does not reach the output, so its gradient is zero"
        );
    }
}

#[test]
fn max_pool_ties_go_to_first_maximum() {
    // A constant image: every window is one big tie. PyTorch and ONNX Runtime
    // both keep the first maximum in row-major order, so each window's gradient
    // lands on its top-left valid element.
    for (kernel, stride, pads) in [(2, 2, 0), (3, 2, 0), (3, 2, 1), (3, 1, 1)] {
        let mut b = GraphBuilder::new(17);
        let x = b.input("x", &[N, D::N(1), D::N(7), D::N(7)]);
        let attributes = vec![
            ints("kernel_shape", &[kernel, kernel]),
            ints("strides", &[stride, stride]),
            ints("pads", &[pads; 4]),
        ];
        let y = b.op("MaxPool", &[&x], attributes);
        let gradient = derive(&b.build(&y), &Request::default()).expect("derive succeeds");
        let mut session = session(&gradient.model).expect("gradient model loads");
        let out_size = ((7 + 2 * pads - kernel) / stride + 1) as usize;
        let xs = array(&[1, 1, 7, 7], vec![0.5; 49]);
        let seed = array(&[1, 1, out_size, out_size], vec![1.0; out_size * out_size]);
        let result = run(
            &mut session,
            &[("x", &xs), ("seed", &seed)],
            &[&gradient.input_gradient],
        )
        .expect("runs");

        let mut expected = vec![0.0f32; 49];
        for oy in 0..out_size as i64 {
            for ox in 0..out_size as i64 {
                let first = |o: i64| (o * stride - pads).max(0) as usize;
                expected[first(oy) * 7 + first(ox)] += 1.0;
            }
        }
        let found: Vec<f32> = result[0].iter().copied().collect();
        assert_eq!(
            found, expected,
            "kernel {kernel}, stride {stride}, pads {pads}"
        );
    }
}

#[test]
fn dynamic_batch_runs_at_several_sizes() {
    let model = bundled("mnist-cnn.onnx");
    let gradient = derive(&model, &Request::default()).expect("derive succeeds");
    let mut session = session(&gradient.model).expect("gradient model loads");
    for batch in [1usize, 5] {
        let xs = array(
            &[batch, 1, 28, 28],
            Rng::new(3).values(batch * 784, -0.4, 2.8),
        );
        let seed = array(&[batch, 10], vec![0.1; batch * 10]);
        let out = run(
            &mut session,
            &[(&gradient.input, &xs), (&gradient.seed, &seed)],
            &[&gradient.logits, &gradient.input_gradient],
        )
        .unwrap_or_else(|e| panic!("batch {batch}: {e:#}"));
        assert_eq!(
            out[0].shape(),
            &[batch, 10],
            "logits shape at batch {batch}"
        );
        assert_eq!(
            out[1].shape(),
            &[batch, 1, 28, 28],
            "input gradient shape at batch {batch}"
        );
    }
}

#[test]
fn unsupported_operator_is_named_with_its_node() {
    let mut b = GraphBuilder::new(17);
    let x = b.input("x", &[N, D::N(3)]);
    let y = b.op("LpNormalization", &[&x], vec![]);
    let error = derive(&b.build(&y), &Request::default()).expect_err("LpNormalization has no rule");
    assert!(
        matches!(error, GradientError::UnsupportedOp { .. }),
        "error kind: {error:?}"
    );
    let message = error.to_string();
    assert!(
        message.contains("`LpNormalization`"),
        "message names the op: {message}"
    );
    assert!(
        message.contains("node2"),
        "message names the node: {message}"
    );
}

#[test]
fn operators_off_the_path_need_no_rule() {
    // LpNormalization feeds only a second output, which is not differentiated.
    let mut b = GraphBuilder::new(17);
    let x = b.input("x", &[N, D::N(3)]);
    let y = b.op("Tanh", &[&x], vec![]);
    let _side = b.op("LpNormalization", &[&x], vec![]);
    let model = b.build(&y);
    assert!(
        derive(&model, &Request::default()).is_ok(),
        "ops off the path are ignored"
    );
}

#[test]
fn request_errors_name_the_tensor() {
    let (model, _) = softmax_classifier();
    for (request, name) in [
        (
            Request {
                output: Some("missing_logits".into()),
                ..Request::default()
            },
            "missing_logits",
        ),
        (
            Request {
                input: Some("missing_input".into()),
                ..Request::default()
            },
            "missing_input",
        ),
        (
            Request {
                intermediates: vec!["missing_layer".into()],
                ..Request::default()
            },
            "missing_layer",
        ),
    ] {
        let error = derive(&model, &request).expect_err("unknown names are rejected");
        assert!(
            matches!(error, GradientError::UnknownTensor { .. }),
            "error kind for `{name}`: {error:?}"
        );
        assert!(
            error.to_string().contains(name),
            "message names `{name}`: {error}"
        );
    }
}

#[test]
fn several_outputs_need_an_explicit_request() {
    let (mut model, logits) = softmax_classifier();
    let extra = model.graph.output[0].clone();
    let mut second = extra.clone();
    second.name = logits.clone();
    model.graph.as_mut().expect("graph").output.push(second);
    let error = derive(&model, &Request::default()).expect_err("two outputs are ambiguous");
    assert!(
        matches!(error, GradientError::Ambiguous { .. }),
        "error kind: {error:?}"
    );

    let request = Request {
        output: Some(logits),
        ..Request::default()
    };
    assert!(
        derive(&model, &request).is_ok(),
        "naming the output resolves it"
    );
}

#[test]
fn old_opsets_are_rejected() {
    let mut b = GraphBuilder::new(10);
    let x = b.input("x", &[N, D::N(3)]);
    let y = b.op("Relu", &[&x], vec![float("unused", 0.0)]);
    let error = derive(&b.build(&y), &Request::default()).expect_err("opset 10 is too old");
    assert!(
        matches!(error, GradientError::UnsupportedOpset { version: 10 }),
        "error kind: {error:?}"
    );
}

#[test]
fn inspectable_tensors_of_mnist() {
    let tensors = inspectable_tensors(&bundled("mnist-cnn.onnx"));
    let first = tensors.first().expect("mnist has inspectable tensors");
    assert_eq!(
        first.op_type, "Conv",
        "the first tensor is the first convolution's output"
    );
    assert_eq!(
        first.shape,
        vec![1, 16, 28, 28],
        "shapes are reported for batch 1"
    );
    assert!(
        tensors.iter().any(|t| t.op_type == "MaxPool"),
        "pooling outputs are listed: {tensors:?}"
    );
    assert!(
        tensors.iter().all(|t| t.op_type != "Shape"),
        "shape arithmetic is not listed"
    );
    let gradient = derive(
        &bundled("mnist-cnn.onnx"),
        &Request {
            intermediates: tensors.iter().map(|t| t.name.clone()).collect(),
            ..Request::default()
        },
    );
    assert!(
        gradient.is_ok(),
        "every listed tensor can be requested: {:?}",
        gradient.err()
    );
}

#[test]
fn supported_ops_cover_the_bundled_models() {
    let ops = supported_ops();
    let mut sorted = ops.to_vec();
    sorted.sort_unstable();
    assert_eq!(ops, sorted.as_slice(), "the list is sorted");
    for model in ["mnist-cnn.onnx", "efficientnet-lite0.onnx"] {
        let graph = bundled(model).graph.unwrap_or_default();
        for node in &graph.node {
            let shape_only = matches!(node.op_type.as_str(), "Constant" | "Shape");
            assert!(
                shape_only || ops.contains(&node.op_type.as_str()),
                "{model}: `{}` is supported",
                node.op_type
            );
        }
    }
}

#[test]
fn derived_model_round_trips_through_bytes() {
    let model = bundled("mnist-cnn.onnx");
    let gradient = derive(&model, &Request::default()).expect("derive succeeds");
    let parsed =
        ModelProto::parse_from_bytes(&gradient.to_bytes()).expect("serialized model parses");
    assert_eq!(
        parsed.graph.node.len(),
        gradient.model.graph.node.len(),
        "node count survives"
    );
}

#[test]
fn activation_masks_are_exact_at_kinks() {
    // Values on, just inside and just outside the kinks of Relu and ReLU6. The
    // derived masks must match PyTorch: gradient 0 at the kinks themselves, 1
    // strictly inside, 0 outside.
    let below_six = f32::from_bits(6f32.to_bits() - 1);
    let above_zero = 1e-20f32;
    let values = vec![0.0, above_zero, -above_zero, 3.0, below_six, 6.0, 7.0, -1.0];
    let inside = [false, true, false, true, true, false, false, false];
    let relu_inside = [false, true, false, true, true, true, true, false];
    let count = values.len();

    for (op, expected) in [("Clip", inside), ("Relu", relu_inside)] {
        for constant_bounds in [true, false] {
            let mut b = GraphBuilder::new(13);
            let x = b.input("x", &[N, D::N(count as i64)]);
            let y = if op == "Relu" {
                b.op("Relu", &[&x], vec![])
            } else if constant_bounds {
                let low = b.scalar(0.0);
                let high = b.scalar(6.0);
                b.op("Clip", &[&x, &low, &high], vec![])
            } else {
                // Bounds computed in the graph are not constants, so the rule
                // falls back to comparisons.
                let zero = b.scalar(0.0);
                let six = b.scalar(6.0);
                let low = b.op("Identity", &[&zero], vec![]);
                let high = b.op("Identity", &[&six], vec![]);
                b.op("Clip", &[&x, &low, &high], vec![])
            };
            let gradient = derive(&b.build(&y), &Request::default()).expect("derive succeeds");
            let mut session = session(&gradient.model).expect("gradient model loads");
            let xs = array(&[1, count], values.clone());
            let seed = array(&[1, count], vec![1.0; count]);
            let out = run(
                &mut session,
                &[("x", &xs), ("seed", &seed)],
                &[&gradient.input_gradient],
            )
            .expect("gradient model runs");
            for (i, &inside) in expected.iter().enumerate() {
                let wanted = if inside { 1.0 } else { 0.0 };
                assert_eq!(
                    out[0][[0, i]],
                    wanted,
                    "{op} (constant bounds: {constant_bounds}) at x = {:e}",
                    values[i]
                );
            }
        }
    }
}

#[test]
fn malformed_graphs_are_errors() {
    // Strides with the wrong number of entries.
    let mut b = GraphBuilder::new(17);
    let x = b.input("x", &[N, D::N(1), D::N(5), D::N(5)]);
    let w = b.floats(&[1, 1, 3, 3], vec![0.1; 9]);
    let y = b.op("Conv", &[&x, &w], vec![ints("strides", &[2])]);
    let error = derive(&b.build(&y), &Request::default()).expect_err("bad strides are rejected");
    assert!(
        error.to_string().contains("strides"),
        "message names the attribute: {error}"
    );

    // A node that reads a tensor before it is produced.
    let (mut model, _) = softmax_classifier();
    model.graph.as_mut().expect("graph").node.reverse();
    let error = derive(&model, &Request::default()).expect_err("unordered nodes are rejected");
    assert!(
        matches!(error, GradientError::Malformed(_)),
        "error kind: {error:?}"
    );

    // No graph at all.
    let error = derive(&ModelProto::default(), &Request::default()).expect_err("no graph");
    assert!(
        matches!(error, GradientError::Malformed(_)),
        "error kind: {error:?}"
    );
}

/// Builds x [1, 6] -> Cast(to) -> Cast(float) -> y, for a floating `to` other
/// than float32.
fn cast_round_trip(to: i64) -> ModelProto {
    let mut b = GraphBuilder::new(17);
    let x = b.input("x", &[D::N(1), D::N(6)]);
    let narrow = b.op("Cast", &[&x], vec![int("to", to)]);
    let y = b.op("Cast", &[&narrow], vec![int("to", 1)]);
    b.build(&y)
}

#[test]
fn other_float_widths_are_rejected() {
    for (to, name) in [(10, "float16"), (11, "float64")] {
        let error = derive(&cast_round_trip(to), &Request::default())
            .expect_err("a float16 or float64 stretch of the path is rejected");
        let message = error.to_string();
        assert!(
            matches!(error, GradientError::UnsupportedType { elem_type, .. } if elem_type == to as i32),
            "Cast to {name}: {message}"
        );
        assert!(message.contains(name), "Cast to {name}: {message}");
    }
}

#[test]
fn captured_input_is_unsupported() {
    let mut b = GraphBuilder::new(17);
    let x = b.input("x", &[D::N(1), D::N(6)]);
    let branch = |op: &str, output: &str| onnx_protobuf::GraphProto {
        name: format!("{op} branch"),
        node: vec![onnx_protobuf::NodeProto {
            op_type: op.into(),
            input: vec![x.clone()],
            output: vec![output.into()],
            ..Default::default()
        }],
        output: vec![onnx_protobuf::ValueInfoProto {
            name: output.into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let condition = b.op("Constant", &[], vec![common::bool_tensor("value", true)]);
    let y = b.op(
        "If",
        &[&condition],
        vec![
            common::graph("then_branch", branch("Relu", "then_out")),
            common::graph("else_branch", branch("Neg", "else_out")),
        ],
    );
    let error = derive(&b.build(&y), &Request::default())
        .expect_err("an If whose branches read the input is on the path");
    assert!(
        matches!(&error, GradientError::UnsupportedOp { op_type, .. } if op_type == "If"),
        "{error}"
    );
}

#[test]
fn non_float_targets_are_rejected() {
    let mut b = GraphBuilder::new(17);
    let x = b.input("x", &[D::N(1), D::N(6)]);
    let relu = b.op("Relu", &[&x], vec![]);
    let shape = b.op("Shape", &[&relu], vec![]);
    let classes = b.op("ArgMax", &[&relu], vec![int("axis", 1)]);
    let model = b.build(&relu);

    let request = Request {
        output: Some(classes.clone()),
        ..Request::default()
    };
    let error = derive(&model, &request).expect_err("an int64 output is rejected");
    assert!(
        matches!(&error, GradientError::UnsupportedType { tensor, .. } if *tensor == classes),
        "{error}"
    );

    let request = Request {
        output: Some(relu.clone()),
        intermediates: vec![shape.clone()],
        ..Request::default()
    };
    let error = derive(&model, &request).expect_err("an int64 intermediate is rejected");
    assert!(
        matches!(&error, GradientError::UnsupportedType { tensor, .. } if *tensor == shape),
        "{error}"
    );
}

#[test]
fn unknown_intermediate_lists_candidates() {
    let (model, logits) = softmax_classifier();
    let request = Request {
        intermediates: vec!["nope".into()],
        ..Request::default()
    };
    let message = derive(&model, &request)
        .expect_err("an unknown intermediate is rejected")
        .to_string();
    assert!(message.contains("`nope`"), "{message}");
    assert!(message.contains(&format!("`{logits}`")), "{message}");
}

#[test]
fn softmax_behind_identity_is_skipped() {
    let mut b = GraphBuilder::new(17);
    let x = b.input("x", &[N, D::N(4)]);
    let w = b.floats(&[4, 3], Rng::new(1).values(12, -1.0, 1.0));
    let logits = b.op("Gemm", &[&x, &w], vec![]);
    let probabilities = b.op("Softmax", &[&logits], vec![]);
    let y = b.op("Identity", &[&probabilities], vec![]);
    let gradient = derive(&b.build(&y), &Request::default()).expect("derive succeeds");
    assert_eq!(gradient.logits, logits, "Softmax behind an Identity");
}

#[test]
fn softmax_over_batch_is_kept() {
    let mut b = GraphBuilder::new(17);
    let x = b.input("x", &[N, D::N(4)]);
    let w = b.floats(&[4, 3], Rng::new(1).values(12, -1.0, 1.0));
    let logits = b.op("Gemm", &[&x, &w], vec![]);
    b.declare(&logits, &[N, D::N(3)]);
    let over_batch = b.op("Softmax", &[&logits], vec![int("axis", 0)]);
    let gradient = derive(&b.build(&over_batch), &Request::default()).expect("derive succeeds");
    assert_eq!(
        gradient.logits, over_batch,
        "a Softmax over the batch axis is part of the model, not the class normalization"
    );
}

#[test]
fn repeated_intermediate_is_exposed_once() {
    let (model, logits) = softmax_classifier();
    let request = Request {
        intermediates: vec![logits.clone(), logits.clone()],
        ..Request::default()
    };
    let gradient = derive(&model, &request).expect("derive succeeds");
    assert_eq!(
        gradient.intermediates.len(),
        1,
        "{:?}",
        gradient.intermediates
    );
}

#[test]
fn derived_model_has_doc_strings() {
    let (model, logits) = softmax_classifier();
    let request = Request {
        intermediates: vec![logits],
        ..Request::default()
    };
    let gradient = derive(&model, &request).expect("derive succeeds");
    assert_eq!(gradient.model.producer_name, "picasso-gradient");
    let graph = gradient.model.graph.as_ref().expect("a graph");
    for info in graph.input.iter().chain(&graph.output) {
        assert!(
            !info.doc_string.is_empty(),
            "`{}` has no doc_string",
            info.name
        );
    }
}
