//! The plugin SDK's README is a working tutorial: its `Cargo.toml` and
//! `src/lib.rs` blocks build as a crate outside this workspace, and the
//! component runs through `picasso explain`.

use std::path::Path;
use std::process::Command;

use picasso_tests::{data, picasso_bin, repo_root};

/// The first fenced block of `language` whose first line is `marker`.
fn block(readme: &str, language: &str, marker: &str) -> String {
    let fence = format!("```{language}\n");
    let mut rest = readme;
    while let Some(start) = rest.find(&fence) {
        let body = &rest[start + fence.len()..];
        let end = body.find("\n```").expect("an unterminated code block");
        let code = &body[..end];
        if code.lines().next() == Some(marker) {
            return format!("{code}\n");
        }
        rest = &body[end..];
    }
    panic!("plugin-sdk/README.md has no ```{language} block starting with `{marker}`");
}

#[test]
fn readme_plugin_builds_and_runs() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("plugin-sdk/README.md")).expect("read README");
    let manifest = block(&readme, "toml", "# Cargo.toml");
    let source = block(&readme, "rust", "// src/lib.rs");

    // The README points at a checkout next to the author's crate; here the
    // SDK is wherever this repository is.
    let sdk = root.join("plugin-sdk").display().to_string();
    assert!(
        manifest.contains("path = \"../picasso/plugin-sdk\""),
        "the README's Cargo.toml depends on the SDK by path"
    );
    let manifest = manifest.replace("../picasso/plugin-sdk", &sdk);

    let dir = tempfile::tempdir().expect("tempdir");
    let crate_dir = dir.path().join("readme-plugin");
    std::fs::create_dir_all(crate_dir.join("src")).expect("create the crate");
    std::fs::write(crate_dir.join("Cargo.toml"), manifest).expect("write Cargo.toml");
    std::fs::write(crate_dir.join("src/lib.rs"), source).expect("write src/lib.rs");
    // The bundled plugins' lock file pins the same wit-bindgen, so the
    // shared target directory already holds it compiled.
    std::fs::copy(
        root.join("plugins/Cargo.lock"),
        crate_dir.join("Cargo.lock"),
    )
    .expect("copy Cargo.lock");

    let target_dir = root.join("target/plugins");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2"])
        .current_dir(&crate_dir)
        .env("CARGO_TARGET_DIR", &target_dir)
        .status()
        .expect("run cargo");
    assert!(status.success(), "the README's plugin does not build");
    let package = package_name(&crate_dir.join("Cargo.toml"));
    let wasm = target_dir.join(format!(
        "wasm32-wasip2/release/{}.wasm",
        package.replace('-', "_")
    ));
    assert!(wasm.is_file(), "{} was not built", wasm.display());

    let out = dir.path().join("out");
    let output = Command::new(picasso_bin())
        .arg("explain")
        .args(["--model", "efficientnet-lite0", "--visualization"])
        .arg(&wasm)
        .arg("--out")
        .arg(&out)
        .arg(data("photos/chelsea.png"))
        .current_dir(&root)
        .output()
        .expect("run picasso explain");
    assert!(
        output.status.success(),
        "picasso explain with the README's plugin failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest"))
            .expect("json");
    let render = &manifest["images"][0]["models"][0]["renders"][0];
    assert!(
        render["error"].is_null(),
        "render error: {}",
        render["error"]
    );
    let panels = render["panels"].as_array().expect("panels");
    assert!(
        panels.iter().any(|p| p["kind"] == "heatmap"),
        "the README's plugin returns a heatmap: {render}"
    );
}

fn package_name(manifest: &Path) -> String {
    let text = std::fs::read_to_string(manifest).expect("read Cargo.toml");
    text.lines()
        .find_map(|line| {
            line.strip_prefix("name = \"")?
                .strip_suffix('"')
                .map(str::to_owned)
        })
        .expect("a package name")
}
