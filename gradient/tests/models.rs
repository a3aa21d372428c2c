//! Whole-model gradients against PyTorch autograd references.
//!
//! `gradient/reference/make_fixtures.py` computed the references with PyTorch
//! and stored them under `tests/fixtures/<model>/`; these tests read them without
//! PyTorch. Each fixture has three inputs and three seeds per input (the top-1
//! class, a class outside the top 5, a weight vector over classes), plus the
//! gradient of one intermediate tensor. All three inputs run as one batch.

mod common;

use std::path::{Path, PathBuf};

use common::{agreement, array, run, session};
use ndarray::{ArrayD, Axis, concatenate};
use onnx_protobuf::{Message, ModelProto};
use picasso_gradient::{Request, derive};
use serde_json::Value;

/// Cosine similarity that a gradient must reach against PyTorch. The references
/// are float64. ONNX Runtime's float32 rounding leaves a relative L2 error near
/// 2e-7 on the small models. Storing EfficientNet-Lite0's references as float16
/// adds about 2e-4, and up to 1.2e-3 where ReLU6 inputs lie within float32
/// rounding of a kink. The worst cosine measured is 0.9999993.
const MIN_COSINE: f64 = 0.9999;
/// Largest relative L2 error accepted against PyTorch (worst measured: 1.2e-3).
const MAX_RELATIVE_L2: f64 = 1e-2;

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Reads one stored array: raw little-endian float32 or float16 scaled by `scale`.
fn read_array(dir: &Path, entry: &Value) -> ArrayD<f32> {
    let file = entry["file"].as_str().expect("array entry has a file");
    let bytes = std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("cannot read {file}: {e}"));
    let scale = entry["scale"].as_f64().unwrap_or(1.0) as f32;
    let values: Vec<f32> = match entry["dtype"].as_str() {
        Some("f16") => bytes
            .chunks_exact(2)
            .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])) * scale)
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * scale)
            .collect(),
    };
    let shape: Vec<usize> = entry["shape"]
        .as_array()
        .expect("array entry has a shape")
        .iter()
        .map(|d| d.as_u64().expect("dims are whole numbers") as usize)
        .collect();
    array(&shape, values)
}

/// IEEE 754 binary16 to binary32.
fn f16_to_f32(bits: u16) -> f32 {
    let sign = if bits >> 15 == 1 { -1.0 } else { 1.0 };
    let exponent = i32::from((bits >> 10) & 0x1f);
    let mantissa = f32::from(bits & 0x3ff);
    match exponent {
        0 => sign * mantissa * 2f32.powi(-24),
        31 if mantissa == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        _ => sign * (1.0 + mantissa / 1024.0) * 2f32.powi(exponent - 15),
    }
}

fn check_model(name: &str) {
    let dir = fixture_dir(name);
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("manifest.json")).expect("fixture manifest is readable"),
    )
    .expect("fixture manifest is JSON");
    let model_path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(manifest["model"].as_str().expect("model path"));
    let bytes = std::fs::read(&model_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", model_path.display()));
    let model = ModelProto::parse_from_bytes(&bytes).expect("model parses");
    let intermediate = manifest["intermediate"]
        .as_str()
        .expect("intermediate name")
        .to_owned();
    let classes = manifest["classes"].as_u64().expect("class count") as usize;

    let request = Request {
        intermediates: vec![intermediate.clone()],
        ..Request::default()
    };
    let gradient =
        derive(&model, &request).unwrap_or_else(|e| panic!("{name}: derive failed: {e}"));
    if std::env::var("GRADIENT_DEBUG").is_ok() {
        std::fs::write(format!("/tmp/{name}.grad.onnx"), gradient.to_bytes()).ok();
    }
    let mut session = session(&gradient.model)
        .unwrap_or_else(|e| panic!("{name}: gradient model rejected: {e:#}"));
    let outputs = &gradient.intermediates[0];

    let cases = manifest["cases"].as_array().expect("cases");
    for kind in ["top-1", "outside-top-5", "weights"] {
        let group: Vec<&Value> = cases.iter().filter(|c| c["seed_kind"] == kind).collect();
        assert_eq!(group.len(), 3, "{name}: expected 3 inputs with seed {kind}");
        let inputs: Vec<ArrayD<f32>> = group
            .iter()
            .map(|c| read_array(&dir, &c["input"]))
            .collect();
        let seeds: Vec<ArrayD<f32>> = group
            .iter()
            .map(|c| match c["class"].as_u64() {
                Some(class) => {
                    let mut seed = vec![0.0; classes];
                    seed[class as usize] = 1.0;
                    array(&[1, classes], seed)
                }
                None => read_array(&dir, &c["seed"]),
            })
            .collect();
        let batch = stack(&inputs);
        let seed = stack(&seeds);
        let result = run(
            &mut session,
            &[(&gradient.input, &batch), (&gradient.seed, &seed)],
            &[&gradient.input_gradient, &outputs.gradient],
        )
        .unwrap_or_else(|e| panic!("{name}: gradient run failed: {e:#}"));

        for (item, case) in group.iter().enumerate() {
            let label = format!("{name}, input {item}, seed {kind}");
            let input_grad = result[0].index_axis(Axis(0), item);
            let reference = read_array(&dir, &case["gradient"]);
            assert_close(
                &format!("{label}: input gradient"),
                &input_grad.iter().copied().collect::<Vec<_>>(),
                &reference,
            );
            let inner = result[1].index_axis(Axis(0), item);
            let reference = read_array(&dir, &case["intermediate_gradient"]);
            assert_close(
                &format!("{label}: gradient of `{intermediate}`"),
                &inner.iter().copied().collect::<Vec<_>>(),
                &reference,
            );
        }
    }
}

fn stack(items: &[ArrayD<f32>]) -> ArrayD<f32> {
    let views: Vec<_> = items.iter().map(|a| a.view()).collect();
    concatenate(Axis(0), &views).expect("items share a shape")
}

fn assert_close(label: &str, derived: &[f32], reference: &ArrayD<f32>) {
    let reference: Vec<f32> = reference.iter().copied().collect();
    let a = agreement(derived, &reference);
    eprintln!(
        "{label}: cosine {:.7}, relative L2 {:.2e}",
        a.cosine, a.relative_l2
    );
    if std::env::var("GRADIENT_DEBUG").is_ok() {
        return;
    }
    assert!(
        a.cosine >= MIN_COSINE,
        "{label}: cosine {:.7} against PyTorch is below {MIN_COSINE}",
        a.cosine
    );
    assert!(
        a.relative_l2 <= MAX_RELATIVE_L2,
        "{label}: relative L2 error {:.2e} against PyTorch exceeds {MAX_RELATIVE_L2:e}",
        a.relative_l2
    );
}

#[test]
fn resnet_mini_matches_pytorch() {
    check_model("resnet-mini");
}

#[test]
fn mobilenet_mini_matches_pytorch() {
    check_model("mobilenet-mini");
}

#[test]
fn nhwc_softmax_matches_pytorch() {
    check_model("nhwc-softmax");
}

#[test]
fn mnist_cnn_matches_pytorch() {
    check_model("mnist-cnn");
}

#[test]
fn efficientnet_lite0_matches_pytorch() {
    check_model("efficientnet-lite0");
}
