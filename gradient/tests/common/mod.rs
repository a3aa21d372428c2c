//! Shared test support: ONNX Runtime sessions, a graph builder and the
//! finite-difference check.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::sync::OnceLock;

use anyhow::{Context, Result};
use ndarray::{ArrayD, IxDyn};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::tensor_shape_proto::{Dimension, dimension};
use onnx_protobuf::type_proto::{Tensor as TypeTensor, Value as TypeValue};
use onnx_protobuf::{
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;
use picasso_gradient::{GradientModel, Request, derive};

/// The ONNX Runtime environment, loaded from `ORT_DYLIB_PATH`.
pub fn environment() -> &'static Environment {
    static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
    ENVIRONMENT.get_or_init(|| {
        let path = std::env::var("ORT_DYLIB_PATH").unwrap_or_else(|_| {
            panic!(
                "ORT_DYLIB_PATH is not set; point it at libonnxruntime.so.1.31.1, for example \
                 ORT_DYLIB_PATH=$PWD/.cache/onnxruntime/libonnxruntime.so.1.31.1 cargo test"
            )
        });
        let builder = ort::init_from(&path)
            .unwrap_or_else(|e| panic!("failed to load ONNX Runtime from `{path}`: {e}"));
        builder
            .build()
            .unwrap_or_else(|e| panic!("failed to create the ONNX Runtime environment: {e}"))
    })
}

/// A session with all graph optimizations (ORT_ENABLE_ALL), as the host runs models.
pub fn session(model: &ModelProto) -> Result<Session> {
    session_with_threads(model, 1)
}

pub fn session_with_threads(model: &ModelProto, threads: usize) -> Result<Session> {
    let bytes = model.write_to_bytes()?;
    let session = Session::builder(environment())?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_intra_threads(threads)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .commit_from_memory(&bytes)
        .context("ONNX Runtime rejected the model")?;
    Ok(session)
}

/// Runs `session` on named float inputs and returns the named outputs.
pub fn run(
    session: &mut Session,
    inputs: &[(&str, &ArrayD<f32>)],
    outputs: &[&str],
) -> Result<Vec<ArrayD<f32>>> {
    let mut values = Vec::new();
    for (name, array) in inputs {
        let tensor = Tensor::from_array((*array).clone())?;
        values.push((name.to_string(), tensor));
    }
    let feed: Vec<(String, ort::session::SessionInputValue<'_>)> =
        values.into_iter().map(|(n, t)| (n, t.into())).collect();
    let result = session.run(feed)?;
    outputs
        .iter()
        .map(|name| {
            let value = result
                .get(name)
                .with_context(|| format!("output `{name}` missing"))?;
            Ok(value.try_extract_array::<f32>()?.to_owned())
        })
        .collect()
}

/// A deterministic SplitMix64 generator, so tests need no random-number crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [low, high).
    pub fn uniform(&mut self, low: f32, high: f32) -> f32 {
        let unit = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        low + (high - low) * unit
    }

    pub fn values(&mut self, count: usize, low: f32, high: f32) -> Vec<f32> {
        (0..count).map(|_| self.uniform(low, high)).collect()
    }

    /// Values of magnitude in [margin, 1) with random signs: at least `margin`
    /// away from the kink of Relu-like functions at 0.
    pub fn away_from_zero(&mut self, count: usize, margin: f32) -> Vec<f32> {
        (0..count)
            .map(|_| {
                let magnitude = self.uniform(margin, 1.0);
                if self.next_u64() & 1 == 0 {
                    magnitude
                } else {
                    -magnitude
                }
            })
            .collect()
    }

    /// A random permutation of `count` values spaced `spacing` apart and centred
    /// on zero: no two elements are closer than `spacing`, so no maximum changes
    /// under a finite-difference step smaller than `spacing / 2`.
    pub fn distinct(&mut self, count: usize, spacing: f32) -> Vec<f32> {
        let mut values: Vec<f32> = (0..count)
            .map(|i| (i as f32 - count as f32 / 2.0) * spacing)
            .collect();
        for i in (1..count).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            values.swap(i, j);
        }
        values
    }
}

pub fn array(shape: &[usize], data: Vec<f32>) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(shape), data).unwrap_or_else(|e| panic!("bad test array: {e}"))
}

/// Builds small ONNX models for tests.
pub struct GraphBuilder {
    opset: i64,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    value_info: Vec<ValueInfoProto>,
    counter: usize,
}

/// A dimension of a declared shape: fixed, or symbolic with a name.
#[derive(Clone, Copy, Debug)]
pub enum D {
    N(i64),
    S(&'static str),
}

impl GraphBuilder {
    pub fn new(opset: i64) -> Self {
        GraphBuilder {
            opset,
            nodes: Vec::new(),
            initializers: Vec::new(),
            inputs: Vec::new(),
            value_info: Vec::new(),
            counter: 0,
        }
    }

    pub fn input(&mut self, name: &str, dims: &[D]) -> String {
        self.inputs.push(float_info(name, Some(dims)));
        name.to_owned()
    }

    /// Records a tensor's shape as value_info, as exporters do.
    pub fn declare(&mut self, name: &str, dims: &[D]) {
        self.value_info.push(float_info(name, Some(dims)));
    }

    pub fn floats(&mut self, dims: &[i64], values: Vec<f32>) -> String {
        let name = self.fresh("w");
        let tensor = TensorProto {
            name: name.clone(),
            dims: dims.to_vec(),
            data_type: 1,
            float_data: values,
            ..Default::default()
        };
        self.initializers.push(tensor);
        name
    }

    pub fn ints(&mut self, values: &[i64]) -> String {
        let name = self.fresh("i");
        let tensor = TensorProto {
            name: name.clone(),
            dims: vec![values.len() as i64],
            data_type: 7,
            int64_data: values.to_vec(),
            ..Default::default()
        };
        self.initializers.push(tensor);
        name
    }

    /// A scalar float initializer.
    pub fn scalar(&mut self, value: f32) -> String {
        self.floats(&[], vec![value])
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}{}", self.counter)
    }

    /// Appends a node with one output and returns the output's name.
    pub fn op(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> String {
        self.op_n(op_type, inputs, attributes, 1).remove(0)
    }

    pub fn op_n(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
        outputs: usize,
    ) -> Vec<String> {
        let names: Vec<String> = (0..outputs)
            .map(|_| self.fresh(&op_type.to_lowercase()))
            .collect();
        let name = self.fresh("node");
        self.nodes.push(NodeProto {
            name,
            op_type: op_type.to_owned(),
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: names.clone(),
            attribute: attributes,
            ..Default::default()
        });
        names
    }

    /// Finishes the model with `output` as its only output, of unknown shape.
    pub fn build(self, output: &str) -> ModelProto {
        let graph = GraphProto {
            name: "test".into(),
            node: self.nodes,
            initializer: self.initializers,
            input: self.inputs,
            output: vec![float_info(output, None)],
            value_info: self.value_info,
            ..Default::default()
        };
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: self.opset,
                ..Default::default()
            }],
            producer_name: "picasso-gradient tests".into(),
            graph: Some(graph).into(),
            ..Default::default()
        }
    }
}

fn float_info(name: &str, dims: Option<&[D]>) -> ValueInfoProto {
    let shape = dims.map(|dims| TensorShapeProto {
        dim: dims
            .iter()
            .map(|d| Dimension {
                value: Some(match d {
                    D::N(v) => dimension::Value::DimValue(*v),
                    D::S(s) => dimension::Value::DimParam((*s).to_owned()),
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    });
    ValueInfoProto {
        name: name.to_owned(),
        type_: Some(TypeProto {
            value: Some(TypeValue::TensorType(TypeTensor {
                elem_type: 1,
                shape: shape.into(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

pub fn int(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::INT.into(),
        i: value,
        ..Default::default()
    }
}

pub fn ints(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::INTS.into(),
        ints: values.to_vec(),
        ..Default::default()
    }
}

pub fn float(name: &str, value: f32) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::FLOAT.into(),
        f: value,
        ..Default::default()
    }
}

pub fn string(name: &str, value: &str) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::STRING.into(),
        s: value.as_bytes().to_vec(),
        ..Default::default()
    }
}

pub fn graph(name: &str, value: GraphProto) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::GRAPH.into(),
        g: Some(value).into(),
        ..Default::default()
    }
}

/// Returns a scalar bool tensor attribute, as a Constant node's `value`.
pub fn bool_tensor(name: &str, value: bool) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        type_: AttributeType::TENSOR.into(),
        t: Some(TensorProto {
            data_type: 9,
            int32_data: vec![i32::from(value)],
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// How far a derived gradient is from a reference.
#[derive(Debug, Clone, Copy)]
pub struct Agreement {
    /// ||derived - reference|| / ||reference||.
    pub relative_l2: f64,
    /// cos(derived, reference).
    pub cosine: f64,
    /// max |derived - reference| / max |reference|.
    pub relative_max: f64,
}

pub fn agreement(derived: &[f32], reference: &[f32]) -> Agreement {
    assert_eq!(derived.len(), reference.len(), "gradient sizes differ");
    let (mut dot, mut dd, mut rr, mut diff, mut max_diff, mut max_ref) =
        (0f64, 0f64, 0f64, 0f64, 0f64, 0f64);
    for (&a, &b) in derived.iter().zip(reference) {
        let (a, b) = (f64::from(a), f64::from(b));
        dot += a * b;
        dd += a * a;
        rr += b * b;
        diff += (a - b) * (a - b);
        max_diff = max_diff.max((a - b).abs());
        max_ref = max_ref.max(b.abs());
    }
    Agreement {
        relative_l2: diff.sqrt() / rr.sqrt().max(1e-30),
        cosine: dot / (dd.sqrt() * rr.sqrt()).max(1e-30),
        relative_max: max_diff / max_ref.max(1e-30),
    }
}

/// The result of one finite-difference check.
pub struct FiniteDifference {
    pub derived: Vec<f32>,
    pub numeric: Vec<f32>,
    pub agreement: Agreement,
    pub gradient_model: GradientModel,
}

/// The finite-difference step. Test inputs are O(1); with float32 rounding
/// (relative 6e-8) the rounding error of a central difference is about
/// 6e-8 * |f| / h = 6e-6 * |f|, and the truncation error h² / 6 * |f'''| is about
/// 2e-5 for the smooth operators tested, so h = 1e-2 balances the two.
pub const STEP: f32 = 1e-2;

/// The largest relative L2 error accepted against central differences. Both
/// error terms above are near 1e-5 relative, and the worst case measured over
/// these tests is 5e-5 (Log). A wrong rule, even one that misroutes a single
/// border element of a pooling window, shows up as an error above 1e-2.
pub const FD_TOLERANCE: f64 = 5e-4;

/// Checks the gradient that `derive` produces for `model` (whose only output is the
/// differentiated tensor) against central differences run through ONNX Runtime.
///
/// `input` has batch size 1. When the model's first input dimension is symbolic
/// the perturbed copies run as one batch; when it is fixed (graphs that mix batch
/// items, such as a Gemm of the input with itself) they run one at a time.
pub fn finite_difference(
    model: &ModelProto,
    input: &ArrayD<f32>,
    request: &Request,
    seed_value: u64,
) -> FiniteDifference {
    let gradient_model = derive(model, request).unwrap_or_else(|e| panic!("derive failed: {e}"));
    let input_name = gradient_model.input.clone();
    let output_name = model.graph.output[0].name.clone();

    let mut forward = session(model).unwrap_or_else(|e| panic!("forward model rejected: {e:#}"));
    let logits = run(&mut forward, &[(&input_name, input)], &[&output_name])
        .unwrap_or_else(|e| panic!("forward run failed: {e:#}"))
        .remove(0);

    let mut rng = Rng::new(seed_value);
    let seed = array(logits.shape(), rng.values(logits.len(), -1.0, 1.0));

    let mut backward =
        session(&gradient_model.model).unwrap_or_else(|e| panic!("gradient model rejected: {e:#}"));
    let outputs = run(
        &mut backward,
        &[(&input_name, input), (&gradient_model.seed, &seed)],
        &[&gradient_model.logits, &gradient_model.input_gradient],
    )
    .unwrap_or_else(|e| panic!("gradient run failed: {e:#}"));
    let logits_agreement = agreement(
        outputs[0].as_slice().unwrap_or(&[]),
        logits.as_slice().unwrap_or(&[]),
    );
    assert!(
        logits_agreement.relative_max < 1e-5,
        "the gradient model's logits differ from the forward model's: {logits_agreement:?}"
    );
    assert_eq!(outputs[1].shape(), input.shape(), "input gradient shape");
    let derived: Vec<f32> = outputs[1].iter().copied().collect();

    let batched = model.graph.input[0]
        .type_
        .tensor_type()
        .shape
        .dim
        .first()
        .is_some_and(|d| d.has_dim_param());
    let numeric = if batched {
        central_differences(&mut forward, &input_name, &output_name, input, &seed)
    } else {
        central_differences_one_by_one(&mut forward, &input_name, &output_name, input, &seed)
    };
    let agreement = agreement(&derived, &numeric);
    FiniteDifference {
        derived,
        numeric,
        agreement,
        gradient_model,
    }
}

fn central_differences(
    forward: &mut Session,
    input_name: &str,
    output_name: &str,
    input: &ArrayD<f32>,
    seed: &ArrayD<f32>,
) -> Vec<f32> {
    let count = input.len();
    let item: Vec<f32> = input.iter().copied().collect();
    let mut batch = Vec::with_capacity(2 * count * count);
    for i in 0..count {
        for sign in [1.0f32, -1.0] {
            let mut copy = item.clone();
            copy[i] += sign * STEP;
            batch.extend(copy);
        }
    }
    let mut shape = input.shape().to_vec();
    shape[0] = 2 * count;
    let batch = array(&shape, batch);
    let out = run(forward, &[(input_name, &batch)], &[output_name])
        .unwrap_or_else(|e| panic!("finite-difference run failed: {e:#}"))
        .remove(0);
    let per_item = seed.len();
    let flat: Vec<f32> = out.iter().copied().collect();
    let seed: Vec<f32> = seed.iter().copied().collect();
    let score = |k: usize| -> f64 {
        flat[k * per_item..(k + 1) * per_item]
            .iter()
            .zip(&seed)
            .map(|(&y, &s)| f64::from(y) * f64::from(s))
            .sum()
    };
    (0..count)
        .map(|i| ((score(2 * i) - score(2 * i + 1)) / (2.0 * f64::from(STEP))) as f32)
        .collect()
}

fn central_differences_one_by_one(
    forward: &mut Session,
    input_name: &str,
    output_name: &str,
    input: &ArrayD<f32>,
    seed: &ArrayD<f32>,
) -> Vec<f32> {
    let mut score = |values: ArrayD<f32>| -> f64 {
        let out = run(forward, &[(input_name, &values)], &[output_name])
            .unwrap_or_else(|e| panic!("finite-difference run failed: {e:#}"))
            .remove(0);
        out.iter()
            .zip(seed.iter())
            .map(|(&y, &s)| f64::from(y) * f64::from(s))
            .sum()
    };
    (0..input.len())
        .map(|i| {
            let mut up = input.clone();
            let mut down = input.clone();
            up.as_slice_mut().expect("standard layout")[i] += STEP;
            down.as_slice_mut().expect("standard layout")[i] -= STEP;
            ((score(up) - score(down)) / (2.0 * f64::from(STEP))) as f32
        })
        .collect()
}

/// Runs the finite-difference check and asserts agreement, naming `case`.
pub fn assert_matches_finite_differences(case: &str, model: &ModelProto, input: &ArrayD<f32>) {
    assert_request_matches(case, model, input, &Request::default());
}

pub fn assert_request_matches(
    case: &str,
    model: &ModelProto,
    input: &ArrayD<f32>,
    request: &Request,
) {
    let check = finite_difference(model, input, request, 7);
    let a = check.agreement;
    eprintln!(
        "{case}: relative L2 {:.2e}, cosine {:.8}, relative max {:.2e}",
        a.relative_l2, a.cosine, a.relative_max
    );
    assert!(
        a.relative_l2 <= FD_TOLERANCE,
        "{case}: relative L2 error {:.2e} against central differences exceeds {FD_TOLERANCE:e} \
         (cosine {:.6}, relative max error {:.2e})\nderived: {:?}\nnumeric: {:?}",
        a.relative_l2,
        a.cosine,
        a.relative_max,
        &check.derived[..check.derived.len().min(12)],
        &check.numeric[..check.numeric.len().min(12)],
    );
    let norm: f64 = check
        .numeric
        .iter()
        .map(|&v| f64::from(v).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(
        norm > 1e-3,
        "{case}: the reference gradient is nearly zero ({norm:e}), so the check proves nothing"
    );
}
