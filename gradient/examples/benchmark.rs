//! Times a model's forward pass against its derived gradient pass on ONNX
//! Runtime, and with `--profile` breaks the gradient pass down by operator type.
//!
//! ```text
//! ORT_DYLIB_PATH=.cache/onnxruntime/libonnxruntime.so.1.31.1 \
//!     cargo run --release -p picasso-gradient --example benchmark -- \
//!     models/efficientnet-lite0.onnx --batch 16 --threads 2 --runs 7 [--profile] [--save OUT.onnx]
//! ```
//!
//! `--save OUT.onnx --derive-only` writes the gradient model and skips the
//! timing; `scripts/bench-gradients` times the saved model from Python.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use ndarray::{ArrayD, IxDyn};
use onnx_protobuf::{Message, ModelProto};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;
use picasso_gradient::{Request, derive};

struct Options {
    model: String,
    batch: usize,
    threads: usize,
    runs: usize,
    profile: bool,
    save: Option<String>,
    derive_only: bool,
}

fn parse_options() -> Result<Options> {
    let mut args = std::env::args().skip(1);
    let mut options = Options {
        model: String::new(),
        batch: 16,
        threads: 2,
        runs: 7,
        profile: false,
        save: None,
        derive_only: false,
    };
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<usize> {
            let value = args
                .next()
                .with_context(|| format!("{name} needs a value"))?;
            value
                .parse()
                .with_context(|| format!("{name} takes a whole number, got `{value}`"))
        };
        match arg.as_str() {
            "--batch" => options.batch = number("--batch")?,
            "--threads" => options.threads = number("--threads")?,
            "--runs" => options.runs = number("--runs")?,
            "--profile" => options.profile = true,
            "--save" => options.save = Some(args.next().context("--save needs a path")?),
            "--derive-only" => options.derive_only = true,
            _ if arg.starts_with("--") => bail!("unknown option `{arg}`"),
            _ => options.model = arg,
        }
    }
    if options.model.is_empty() {
        bail!(
            "usage: benchmark MODEL.onnx [--batch N] [--threads N] [--runs N] [--profile] \
             [--save OUT.onnx [--derive-only]]"
        );
    }
    if options.derive_only && options.save.is_none() {
        bail!("--derive-only needs --save OUT.onnx, or nothing would come of the run");
    }
    Ok(options)
}

fn main() -> Result<()> {
    let options = parse_options()?;
    if options.runs == 0 {
        bail!("--runs must be at least 1");
    }

    let bytes =
        std::fs::read(&options.model).with_context(|| format!("cannot read {}", options.model))?;
    let model = ModelProto::parse_from_bytes(&bytes)?;
    let started = Instant::now();
    let gradient = derive(&model, &Request::default())?;
    let derive_ms = started.elapsed().as_secs_f64() * 1e3;
    let nodes = gradient.model.graph.as_ref().map_or(0, |g| g.node.len());
    println!("derived in {derive_ms:.1} ms: {nodes} nodes");
    if let Some(path) = &options.save {
        std::fs::write(path, gradient.to_bytes())
            .with_context(|| format!("cannot write {path}"))?;
    }
    if options.derive_only {
        return Ok(());
    }
    let path =
        std::env::var("ORT_DYLIB_PATH").context("set ORT_DYLIB_PATH to libonnxruntime.so")?;
    let environment = ort::init_from(&path)?.build()?;

    let input_dims = input_shape(&model, options.batch)?;
    // Deterministic pixels spread over [-1, 1), as normalized images are.
    let count: usize = input_dims.iter().product();
    let pixels = (0..count)
        .map(|i| ((i * 7919) % 255) as f32 / 128.0 - 1.0)
        .collect();
    let input = ArrayD::from_shape_vec(IxDyn(&input_dims), pixels)?;

    let build = |bytes: &[u8], profile: Option<&str>| -> Result<Session> {
        let mut builder = Session::builder(&environment)?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .with_intra_threads(options.threads)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(prefix) = profile {
            builder = builder
                .with_profiling(prefix)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(builder.commit_from_memory(bytes)?)
    };

    let mut forward = build(&bytes, None)?;
    let input_name = gradient.input.clone();
    let logits = {
        let tensor = Tensor::from_array(input.clone())?;
        let outputs = forward.run(ort::inputs![input_name.as_str() => tensor])?;
        outputs[0].try_extract_array::<f32>()?.to_owned()
    };
    let seed = logits.mapv(|_| 0.0f32);
    let gradient_bytes = gradient.to_bytes();
    let profile = options.profile.then_some("gradient-profile");
    let mut backward = build(&gradient_bytes, profile)?;

    // Each pass runs in its own block, after one warm-up run, so that each finds
    // its own weights and activations in cache as it would when run repeatedly.
    // The minimum is the best estimate for an idle machine; other processes
    // only ever add time.
    let forward_ms = time(options.runs, || {
        let tensor = Tensor::from_array(input.clone())?;
        forward.run(ort::inputs![input_name.as_str() => tensor])?;
        Ok(())
    })?;
    let gradient_ms = time(options.runs, || {
        let x = Tensor::from_array(input.clone())?;
        let s = Tensor::from_array(seed.clone())?;
        backward.run(ort::inputs![input_name.as_str() => x, gradient.seed.as_str() => s])?;
        Ok(())
    })?;
    let (forward_min, forward_median) = forward_ms;
    let (gradient_min, gradient_median) = gradient_ms;
    println!(
        "batch {}, {} threads, {} runs: forward min {forward_min:.1} ms (median {forward_median:.1}), \
         gradient min {gradient_min:.1} ms (median {gradient_median:.1}), ratio of minima {:.2}",
        options.batch,
        options.threads,
        options.runs,
        gradient_min / forward_min
    );
    if options.profile {
        let file = backward.end_profiling()?;
        print_profile(&file)?;
    }
    Ok(())
}

fn input_shape(model: &ModelProto, batch: usize) -> Result<Vec<usize>> {
    let graph = model.graph.as_ref().context("model has no graph")?;
    let initializers: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let input = graph
        .input
        .iter()
        .find(|i| !initializers.contains(&i.name.as_str()))
        .context("model has no input")?;
    let dims = &input.type_.tensor_type().shape.dim;
    dims.iter()
        .enumerate()
        .map(|(i, d)| match (i, d.has_dim_value()) {
            (0, _) => Ok(batch),
            (_, true) => Ok(d.dim_value() as usize),
            _ => bail!("input dimension {i} is symbolic; only the batch may be"),
        })
        .collect()
}

/// Runs `call` once to warm up, then `runs` times, and returns the minimum and
/// median wall time in milliseconds.
fn time(runs: usize, mut call: impl FnMut() -> Result<()>) -> Result<(f64, f64)> {
    call()?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        call()?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[0], times[times.len() / 2]))
}

/// Sums kernel time per operator type from an ONNX Runtime profile.
fn print_profile(file: &str) -> Result<()> {
    let text = std::fs::read_to_string(file)?;
    let events: serde_json::Value = serde_json::from_str(&text)?;
    let mut per_op: HashMap<String, (f64, usize)> = HashMap::new();
    let mut per_node: HashMap<String, f64> = HashMap::new();
    for event in events.as_array().context("profile is a JSON array")? {
        if event["cat"] != "Node"
            || !event["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("_kernel_time"))
        {
            continue;
        }
        let op = event["args"]["op_name"].as_str().unwrap_or("?").to_owned();
        let micros = event["dur"].as_f64().unwrap_or(0.0);
        let node = event["name"]
            .as_str()
            .unwrap_or("?")
            .trim_end_matches("_kernel_time");
        *per_node.entry(format!("{op} {node}")).or_default() += micros;
        let entry = per_op.entry(op).or_default();
        entry.0 += micros;
        entry.1 += 1;
    }
    let total: f64 = per_op.values().map(|v| v.0).sum();
    let mut rows: Vec<_> = per_op.into_iter().collect();
    rows.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    println!("kernel time by operator type over all profiled runs ({file}):");
    for (op, (micros, calls)) in rows {
        println!(
            "  {op:<22} {:>9.1} ms {:>5.1}% {calls:>6} calls",
            micros / 1e3,
            100.0 * micros / total
        );
    }
    let mut nodes: Vec<_> = per_node.into_iter().collect();
    nodes.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("slowest nodes:");
    for (node, micros) in nodes.iter().take(25) {
        println!("  {:>8.1} ms  {node}", micros / 1e3);
    }
    std::fs::remove_file(file).ok();
    Ok(())
}
