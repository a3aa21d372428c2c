//! Partial occlusion on the cat photo: the server's whole job path against
//! the same occluded images sent straight to ONNX Runtime.
//!
//! Both sides use the same session options (full graph optimization, ONNX
//! Runtime's default thread count), batches of 16 and the same windows. The
//! runs alternate, so drift on the machine affects both alike. Run with
//! `cargo bench -p picasso-tests --bench occlusion`; it needs the release
//! server (`cargo build --release -p picasso`) and prints a Markdown table
//! for BENCHMARKS.md.

use std::time::{Duration, Instant};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use picasso_tests::{Server, ServerOptions, data, job, repo_root};
use serde_json::json;

const WINDOW: usize = 32;
const STRIDE: usize = 8;
const BATCH: usize = 16;
const RUNS: usize = 9;

fn main() {
    let release = repo_root().join("target/release/picasso");
    assert!(
        release.is_file(),
        "build the release server first: cargo build --release -p picasso"
    );
    let server = Server::start_with(ServerOptions {
        binary: Some(release),
        ..ServerOptions::default()
    });
    let client = server.client();
    let image = client.upload(&data("photos/chelsea.png")).expect("upload");
    let spec = job(
        &[&image],
        &["efficientnet-lite0"],
        "occlusion",
        json!({"window": WINDOW, "stride": STRIDE}),
    );

    // A first job warms the plugin cache and the session, and gives the frame.
    let warm = client.run_job(&spec).expect("warm-up job");
    let id = warm["id"].as_str().expect("id");
    let manifest = client.manifest(id).expect("manifest");
    let frame_path = manifest["images"][0]["models"][0]["frame"]
        .as_str()
        .expect("frame");
    let frame = image::load_from_memory(&client.job_file(id, frame_path).expect("frame png"))
        .expect("decode frame")
        .to_rgb8();
    let mut session = direct_session();
    let batches = occluded_batches(&frame);
    run_direct(&mut session, &batches);

    let mut server_times = Vec::new();
    let mut direct_times = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let record = client.run_job(&spec).expect("job");
        assert_eq!(record["state"], "completed", "{record}");
        server_times.push(started.elapsed());

        let started = Instant::now();
        run_direct(&mut session, &batches);
        direct_times.push(started.elapsed());
    }

    let images: usize = batches.iter().map(|b| b.0).sum();
    let server_median = median(&mut server_times);
    let direct_median = median(&mut direct_times);
    println!("| path | occluded images | median of {RUNS} (ms) |");
    println!("| --- | --- | --- |");
    println!(
        "| server job (upload excluded, polled every 20 ms) | {images} | {:.0} |",
        ms(server_median)
    );
    println!(
        "| direct ONNX Runtime | {images} | {:.0} |",
        ms(direct_median)
    );
    println!();
    println!(
        "ratio server / direct: {:.3}",
        ms(server_median) / ms(direct_median)
    );
}

fn direct_session() -> Session {
    let library = std::env::var("ORT_DYLIB_PATH").unwrap_or_else(|_| {
        repo_root()
            .join(".cache/onnxruntime/libonnxruntime.so.1.31.1")
            .display()
            .to_string()
    });
    let environment = ort::init_from(&library)
        .expect("load ONNX Runtime")
        .build()
        .expect("environment");
    Session::builder(&environment)
        .expect("builder")
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .expect("optimization level")
        .commit_from_file(repo_root().join("models/efficientnet-lite0.onnx"))
        .expect("load the model")
}

fn starts(size: usize) -> Vec<usize> {
    let mut starts: Vec<usize> = (0..=size - WINDOW).step_by(STRIDE).collect();
    if starts.last() != Some(&(size - WINDOW)) {
        starts.push(size - WINDOW);
    }
    starts
}

/// The occluded, normalized batches, built once: the comparison is about the
/// model work and everything the server adds around it.
fn occluded_batches(frame: &image::RgbImage) -> Vec<(usize, Vec<f32>)> {
    let (width, height) = (frame.width() as usize, frame.height() as usize);
    let plane = width * height;
    let mut windows = Vec::new();
    for &y in &starts(height) {
        for &x in &starts(width) {
            windows.push((x, y));
        }
    }
    windows
        .chunks(BATCH)
        .map(|batch| {
            let mut input = vec![0.0f32; batch.len() * 3 * plane];
            for (n, &(wx, wy)) in batch.iter().enumerate() {
                for y in 0..height {
                    for x in 0..width {
                        let covered =
                            (wx..wx + WINDOW).contains(&x) && (wy..wy + WINDOW).contains(&y);
                        let pixel = if covered {
                            [128, 128, 128]
                        } else {
                            frame.get_pixel(x as u32, y as u32).0
                        };
                        for c in 0..3 {
                            input[n * 3 * plane + c * plane + y * width + x] =
                                (pixel[c] as f32 - 127.0) / 128.0;
                        }
                    }
                }
            }
            (batch.len(), input)
        })
        .collect()
}

fn run_direct(session: &mut Session, batches: &[(usize, Vec<f32>)]) {
    for (count, input) in batches {
        let tensor =
            TensorRef::from_array_view(([*count, 3, 224, 224], &input[..])).expect("tensor");
        let outputs = session.run(ort::inputs!["input" => tensor]).expect("run");
        let (_, logits) = outputs["logits"]
            .try_extract_tensor::<f32>()
            .expect("logits");
        assert_eq!(logits.len(), count * 1000);
    }
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
