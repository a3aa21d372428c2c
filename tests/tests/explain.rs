//! `picasso explain`, the headless mode of the job pipeline.

use std::process::Command;

use picasso_tests::{data, picasso_bin, repo_root};

#[test]
fn failed_image_is_recorded_and_others_complete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("broken.png");
    std::fs::write(&broken, b"not a picture").expect("write broken.png");
    let out = dir.path().join("out");

    let output = Command::new(picasso_bin())
        .args([
            "explain",
            "--model",
            "mnist-cnn",
            "--visualization",
            "class-probabilities",
        ])
        .arg("--out")
        .arg(&out)
        .arg(&broken)
        .arg(data("mnist/7-1.png"))
        .current_dir(repo_root())
        .output()
        .expect("run picasso explain");
    assert!(
        !output.status.success(),
        "a failed image makes explain exit with an error status"
    );

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest"))
            .expect("manifest is JSON");
    let images = manifest["images"].as_array().expect("images");
    assert_eq!(
        images.len(),
        2,
        "both images are in the manifest: {manifest}"
    );

    let error = images[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("broken.png"),
        "the failed image's reason names it: {error}"
    );
    assert!(images[0]["models"].as_array().is_some_and(|m| m.is_empty()));

    assert!(
        images[1]["error"].is_null(),
        "7-1.png has no error: {}",
        images[1]
    );
    let scores = &images[1]["models"][0]["renders"][0]["panels"][0]["scores"];
    assert_eq!(
        scores[0]["label"], "7",
        "7-1.png is classified after the failure: {scores}"
    );
    assert!(manifest["seed"].is_u64(), "the manifest records the seed");
    assert!(
        manifest["models"][0]["content_hash"]
            .as_str()
            .is_some_and(|h| h.len() == 64),
        "the manifest records the model's SHA-256"
    );
    assert!(
        manifest["plugins"][0]["version"].is_string(),
        "the manifest records the plugin's version"
    );
}

#[test]
fn non_empty_out_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).expect("create out");
    let earlier = out.join("manifest.json");
    std::fs::write(&earlier, b"{}").expect("write an earlier manifest");

    let output = Command::new(picasso_bin())
        .args(["explain", "-m", "mnist-cnn", "-v", "class-probabilities"])
        .arg("--out")
        .arg(&out)
        .arg(data("mnist/7-1.png"))
        .current_dir(repo_root())
        .output()
        .expect("run picasso explain");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "a non-empty --out is rejected");
    assert!(stderr.contains("is not empty"), "stderr: {stderr}");
    assert_eq!(
        stderr.matches("is not empty").count(),
        1,
        "the error is printed once: {stderr}"
    );
    assert_eq!(
        std::fs::read(&earlier).expect("read the earlier manifest"),
        b"{}",
        "the earlier results are left as they were"
    );
}

#[test]
fn gradient_model_lists_and_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = repo_root().join("models/mnist-cnn.onnx");

    let listing = Command::new(picasso_bin())
        .args(["gradient-model", "--list-tensors"])
        .arg(&model)
        .output()
        .expect("run picasso gradient-model --list-tensors");
    assert!(listing.status.success(), "--list-tensors succeeds");
    let stdout = String::from_utf8_lossy(&listing.stdout);
    let rows: Vec<Vec<&str>> = stdout.lines().map(|l| l.split('\t').collect()).collect();
    assert!(
        !rows.is_empty() && rows.iter().all(|row| row.len() == 3),
        "each line is name, operator and shape: {stdout}"
    );
    // The last 4-D tensor, the kind Grad-CAM reads.
    let tensor = rows
        .iter()
        .rev()
        .find(|row| row[2].matches(',').count() == 3)
        .map(|row| row[0].to_owned())
        .unwrap_or_else(|| panic!("no 4-D tensor listed: {stdout}"));

    let out = dir.path().join("mnist-cnn.gradient.onnx");
    let written = Command::new(picasso_bin())
        .args(["gradient-model", "--tensor", &tensor, "--out"])
        .arg(&out)
        .arg(&model)
        .output()
        .expect("run picasso gradient-model");
    let stdout = String::from_utf8_lossy(&written.stdout);
    assert!(written.status.success(), "stdout: {stdout}");
    assert!(
        stdout.contains(&format!("activation of {tensor}")),
        "the printout names the intermediate outputs: {stdout}"
    );
    let bytes = std::fs::read(&out).expect("read the gradient model");
    assert!(bytes.len() > 1000, "the gradient model has the weights");

    let unknown = Command::new(picasso_bin())
        .args(["gradient-model", "--tensor", "nope", "--out"])
        .arg(dir.path().join("unused.onnx"))
        .arg(&model)
        .output()
        .expect("run picasso gradient-model with an unknown tensor");
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success(), "an unknown tensor is rejected");
    assert!(
        stderr.contains("`nope`") && stderr.contains(&format!("`{tensor}`")),
        "the error names the tensor and lists the candidates: {stderr}"
    );
}
