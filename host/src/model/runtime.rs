//! The process-wide ONNX Runtime environment and how its library is found.
//!
//! `ort` is built with `load-dynamic`, so the binary has no link-time
//! dependency on ONNX Runtime. The shared library is looked up, in order:
//!
//! 1. `runtime.onnxruntime` in `picasso.toml`;
//! 2. the `ORT_DYLIB_PATH` environment variable;
//! 3. the project's cache, `.cache/onnxruntime/libonnxruntime.so.*`, next to
//!    the working directory or to the executable's ancestors, where
//!    `scripts/setup` puts it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

/// The ONNX Runtime version whose C API `ort` 2.0.0-rc.15 is built against.
pub const ONNXRUNTIME_VERSION: &str = "1.31.1";

/// Why ONNX Runtime could not be started.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "ONNX Runtime library not found (looked in {looked}); run `scripts/setup`, or set \
         `runtime.onnxruntime` in picasso.toml or ORT_DYLIB_PATH to libonnxruntime.so \
         {ONNXRUNTIME_VERSION} (from the PyPI wheel `onnxruntime=={ONNXRUNTIME_VERSION}`)"
    )]
    NotFound { looked: String },
    #[error("cannot load ONNX Runtime from `{path}`: {message}")]
    Load { path: PathBuf, message: String },
}

static ENVIRONMENT: OnceLock<Result<Environment, RuntimeError>> = OnceLock::new();

/// Starts ONNX Runtime once per process, from the first library found.
/// Later calls return the same environment or the same error.
///
/// # Errors
///
/// No library found, or one that fails to load (such as a wrong version).
pub fn environment(configured: Option<&Path>) -> Result<&'static Environment, RuntimeError> {
    ENVIRONMENT
        .get_or_init(|| start(configured))
        .as_ref()
        .map_err(Clone::clone)
}

fn start(configured: Option<&Path>) -> Result<Environment, RuntimeError> {
    let path = locate(configured)?;
    let load_error = |message: String| RuntimeError::Load {
        path: path.clone(),
        message,
    };
    let environment = ort::init_from(&path)
        .map_err(|error| load_error(error.to_string()))?
        .with_name("picasso")
        .build()
        .map_err(|error| load_error(error.to_string()))?;
    tracing::info!(library = %path.display(), "started ONNX Runtime");
    Ok(environment)
}

/// Finds the library in the documented order.
///
/// # Errors
///
/// [`RuntimeError::NotFound`] listing every place looked at.
pub fn locate(configured: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    let mut looked = Vec::new();
    if let Some(path) = configured {
        if path.is_file() {
            return Ok(path.to_owned());
        }
        looked.push(format!("runtime.onnxruntime = `{}`", path.display()));
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from) {
        if path.is_file() {
            return Ok(path);
        }
        looked.push(format!("ORT_DYLIB_PATH = `{}`", path.display()));
    }
    for dir in cache_dirs() {
        let candidate = dir.join(format!("libonnxruntime.so.{ONNXRUNTIME_VERSION}"));
        if candidate.is_file() {
            return Ok(candidate);
        }
        looked.push(format!("`{}`", candidate.display()));
    }
    Err(RuntimeError::NotFound {
        looked: looked.join(", "),
    })
}

fn cache_dirs() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Ok(dir) = std::env::current_dir() {
        roots.push(dir);
    }
    // The binary usually lives in `<repo>/target/<profile>/`.
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).take(4).map(Path::to_owned));
    }
    roots
        .into_iter()
        .map(|root| root.join(".cache").join("onnxruntime"))
        .collect()
}
