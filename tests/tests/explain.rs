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
