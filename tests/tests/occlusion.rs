//! The first slice end to end: upload the cat photo, run class probabilities
//! and occlusion on EfficientNet-Lite0 through the job API, and check the
//! result against an occlusion map computed here with direct ONNX Runtime
//! calls, sharing no code with the plugin.

use std::path::{Path, PathBuf};

use ndarray::Array2;
use ndarray_npy::ReadNpyExt;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use picasso_tests::{
    Server, ServerOptions, data, heatmap_panel, model_result, render_of, repo_root,
};
use serde_json::json;

/// ImageNet's domestic cat classes: tabby, tiger cat, Persian, Siamese,
/// Egyptian Mau.
const CAT_CLASSES: std::ops::RangeInclusive<u64> = 281..=285;

const WINDOW: usize = 32;
const STRIDE: usize = 16;

/// A models folder with the bundled EfficientNet declaration and a variant
/// that stretches the whole photo into the frame. The bundled center crop
/// shows only the cat's head; the stretched frame keeps the background at
/// the photo's right edge, so occlusion there can be compared with
/// occlusion of the face.
fn models_dir(dir: &Path) -> PathBuf {
    let models = repo_root().join("models");
    let bundled = std::fs::read_to_string(models.join("efficientnet-lite0.toml"))
        .expect("read the bundled declaration");
    let absolute = bundled
        .replace(
            "onnx = \"efficientnet-lite0.onnx\"",
            &format!(
                "onnx = {:?}",
                models.join("efficientnet-lite0.onnx").display().to_string()
            ),
        )
        .replace(
            "labels = \"imagenet-labels.txt\"",
            &format!(
                "labels = {:?}",
                models.join("imagenet-labels.txt").display().to_string()
            ),
        );
    let stretched = absolute
        .replace(
            "id = \"efficientnet-lite0\"",
            "id = \"efficientnet-lite0-stretch\"",
        )
        .replace("resize = \"center-crop\"", "resize = \"stretch\"")
        .replace("resize-shorter = 256", "");
    std::fs::write(dir.join("efficientnet-lite0.toml"), absolute).expect("write declaration");
    std::fs::write(dir.join("efficientnet-lite0-stretch.toml"), stretched).expect("write variant");
    dir.to_owned()
}

#[test]
fn cat_photo_occlusion_end_to_end() {
    let models = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(ServerOptions {
        models_dir: models_dir(models.path()),
        ..ServerOptions::default()
    });
    let client = server.client();
    let image = client
        .upload(&data("photos/chelsea.png"))
        .expect("upload chelsea.png");

    let spec = json!({
        "images": [image],
        "models": ["efficientnet-lite0", "efficientnet-lite0-stretch"],
        "visualizations": [
            {"plugin": "class-probabilities", "settings": {"k": 5}},
            {"plugin": "occlusion", "settings": {"window": WINDOW, "stride": STRIDE}},
            // EfficientNet-Lite0 reads cat fur all over the frame, so small
            // grey patches move its probabilities by a few percent anywhere.
            // A black window of 64 pixels hides a whole facial feature.
            {"plugin": "occlusion", "settings": {"window": 64, "stride": 16, "fill": "black"}},
        ],
    });
    let (id, manifest) = server.completed_job(&client, &spec);
    let id = id.as_str();

    let image_result = &manifest["images"][0];
    let bundled = model_result(image_result, "efficientnet-lite0");
    let stretched = model_result(image_result, "efficientnet-lite0-stretch");

    // Top-1 from the class-probabilities plugin is a cat class.
    let scores = &render_of(bundled, 0)["panels"][0]["scores"];
    let top = scores[0]["index"].as_u64().expect("top-1 index");
    assert!(
        CAT_CLASSES.contains(&top),
        "chelsea.png on efficientnet-lite0: top-1 is {} ({}), not a cat class",
        top,
        scores[0]["label"]
    );
    assert_eq!(
        bundled["top_classes"][0]["index"].as_u64(),
        Some(top),
        "the host's own classification agrees with the plugin"
    );

    // The plugin's occlusion map equals an independent computation.
    let occlusion = render_of(bundled, 1);
    assert!(
        occlusion["error"].is_null(),
        "occlusion failed: {}",
        occlusion["error"]
    );
    let heatmap = heatmap_panel(occlusion);
    let class = heatmap["class_index"].as_u64().expect("class index") as usize;
    assert_eq!(class as u64, top, "the default target is the top-1 class");
    let plugin_map = read_npy(
        &client
            .job_file(id, heatmap["npy"].as_str().expect("npy path"))
            .expect("npy"),
    );
    let frame_png = client
        .job_file(id, bundled["frame"].as_str().expect("frame path"))
        .expect("frame png");
    let frame = image::load_from_memory(&frame_png)
        .expect("decode frame")
        .to_rgb8();
    let expected = independent_occlusion(&frame, class);
    assert_eq!(plugin_map.dim(), expected.dim(), "map size");
    let max_difference = plugin_map
        .iter()
        .zip(expected.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        max_difference <= 1e-5,
        "chelsea.png, efficientnet-lite0, occlusion: plugin map differs from the independent \
         computation by {max_difference}"
    );

    // Occluding the face hurts more than occluding the background, which
    // only the stretched frame contains.
    let stretched_occlusion = render_of(stretched, 2);
    let map = read_npy(
        &client
            .job_file(
                id,
                heatmap_panel(stretched_occlusion)["npy"]
                    .as_str()
                    .expect("npy"),
            )
            .expect("stretched npy"),
    );
    // Boxes of tests/data/photos/README.md mapped from the 451x300 photo
    // into the 224x224 stretched frame.
    let (sx, sy) = (224.0 / 451.0, 224.0 / 300.0);
    let face = mean_in(&map, (130.0 * sx, 80.0 * sy, 350.0 * sx, 272.0 * sy));
    let background = mean_in(&map, (400.0 * sx, 0.0, 224.0, 224.0));
    assert!(
        face < background,
        "chelsea.png, efficientnet-lite0-stretch, occlusion: mean probability with the face \
         occluded ({face}) is not below that with the background occluded ({background})"
    );

    // Every heatmap has its rendered files.
    for path in ["overlay", "colored", "colorbar"] {
        let file = heatmap[path].as_str().expect("file path");
        let bytes = client.job_file(id, file).expect("rendered file");
        assert!(bytes.starts_with(b"\x89PNG"), "{path} is a PNG");
    }
}

fn read_npy(bytes: &[u8]) -> Array2<f32> {
    Array2::<f32>::read_npy(std::io::Cursor::new(bytes)).expect("a 2-D float32 .npy")
}

fn mean_in(map: &Array2<f32>, (x0, y0, x1, y1): (f32, f32, f32, f32)) -> f32 {
    let (height, width) = map.dim();
    let mut sum = 0.0;
    let mut count = 0;
    for y in (y0.round() as usize)..(y1.round() as usize).min(height) {
        for x in (x0.round() as usize)..(x1.round() as usize).min(width) {
            sum += map[[y, x]];
            count += 1;
        }
    }
    sum / count.max(1) as f32
}

/// Window starts along one axis: every `STRIDE` while the window fits, plus
/// one flush with the far edge when the last one falls short of it.
fn starts(size: usize) -> Vec<usize> {
    let mut starts: Vec<usize> = (0..=size - WINDOW).step_by(STRIDE).collect();
    if starts.last() != Some(&(size - WINDOW)) {
        starts.push(size - WINDOW);
    }
    starts
}

/// Occlusion computed from scratch: grey windows, EfficientNet's
/// (pixel - 127) / 128 normalization, batches of 16 through ONNX Runtime,
/// softmax, and per pixel the mean over the windows covering it.
fn independent_occlusion(frame: &image::RgbImage, class: usize) -> Array2<f32> {
    let (width, height) = (frame.width() as usize, frame.height() as usize);
    let library = std::env::var("ORT_DYLIB_PATH").unwrap_or_else(|_| {
        repo_root()
            .join(".cache/onnxruntime/libonnxruntime.so.1.31.1")
            .display()
            .to_string()
    });
    let environment = ort::init_from(&library)
        .expect("load ONNX Runtime")
        .build()
        .expect("ONNX Runtime environment");
    let mut session = Session::builder(&environment)
        .expect("session builder")
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .expect("optimization level")
        .commit_from_file(repo_root().join("models/efficientnet-lite0.onnx"))
        .expect("load the model");

    let mut windows = Vec::new();
    for &y in &starts(height) {
        for &x in &starts(width) {
            windows.push((x, y));
        }
    }
    let mut probabilities = Vec::with_capacity(windows.len());
    for batch in windows.chunks(16) {
        let plane = width * height;
        let mut input = vec![0.0f32; batch.len() * 3 * plane];
        for (n, &(wx, wy)) in batch.iter().enumerate() {
            for y in 0..height {
                for x in 0..width {
                    let covered = (wx..wx + WINDOW).contains(&x) && (wy..wy + WINDOW).contains(&y);
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
        let tensor = TensorRef::from_array_view(([batch.len(), 3, height, width], &input[..]))
            .expect("tensor");
        let outputs = session
            .run(ort::inputs!["input" => tensor])
            .expect("model run");
        let (_, logits) = outputs["logits"]
            .try_extract_tensor::<f32>()
            .expect("logits");
        for row in logits.chunks(1000) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row.iter().map(|l| (l - max).exp()).sum();
            probabilities.push((row[class] - max).exp() / sum);
        }
    }

    let mut sum = Array2::<f32>::zeros((height, width));
    let mut count = Array2::<f32>::zeros((height, width));
    for (&(wx, wy), &p) in windows.iter().zip(&probabilities) {
        for y in wy..wy + WINDOW {
            for x in wx..wx + WINDOW {
                sum[[y, x]] += p;
                count[[y, x]] += 1.0;
            }
        }
    }
    sum / count
}
