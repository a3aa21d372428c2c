//! Server configuration: `picasso.toml` plus `PICASSO_*` environment overrides.
//!
//! Every key has a default, so a missing file is not an error. A key is
//! overridden from the environment by its path in upper case, with `__`
//! between the levels: `PICASSO_SERVER__PORT=9000` sets `server.port`.
//! [`Config::load`] reports an invalid value with its key and the fix.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole configuration, as read from `picasso.toml` and the environment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub paths: PathsConfig,
    pub results: ResultsConfig,
    pub uploads: UploadConfig,
    pub jobs: JobsConfig,
    pub sandbox: SandboxConfig,
    pub runtime: RuntimeConfig,
}

/// Where the HTTP server listens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The address to bind. Loopback by default, because the server has no
    /// authentication of its own.
    pub bind: String,
    pub port: u16,
}

/// Directories the server reads and writes. Relative paths are resolved
/// against the directory of the configuration file, or the working
/// directory when there is no file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PathsConfig {
    /// Uploads, results, the metadata database and compiled-plugin caches.
    pub data_dir: PathBuf,
    /// The folder scanned for `*.wasm` visualization plugins.
    pub plugins_dir: PathBuf,
    /// The folder scanned for `*.toml` model declarations.
    pub models_dir: PathBuf,
}

/// How long finished results are kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResultsConfig {
    /// Jobs older than this many hours are deleted with their files; 0 keeps
    /// them forever.
    pub retention_hours: u64,
}

/// Limits on uploaded images.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadConfig {
    /// The largest accepted file, in bytes.
    pub max_bytes: u64,
    /// The largest accepted width times height, a guard against
    /// decompression bombs that are small on disk.
    pub max_pixels: u64,
    /// The most files in one upload request.
    pub max_files: usize,
}

/// The render queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Render worker threads; 0 picks one per core.
    pub workers: usize,
    /// Jobs that may wait for a worker before new ones get `503`.
    pub queue_capacity: usize,
    /// The most images, models and visualizations one job may combine
    /// (their product).
    pub max_renders_per_job: usize,
}

/// Per-render limits of the plugin sandbox. Passing one fails that render
/// with an error naming the limit and its key; other renders are unaffected.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// Linear memory a plugin instance may grow to, in MiB.
    pub memory_mib: u64,
    /// Elements each table of a plugin instance may grow to.
    pub table_elements: u64,
    /// Wall-clock time one render may take, in seconds, including model work.
    pub deadline_seconds: u64,
    /// Wall-clock time `describe` may take when a plugin loads, in seconds.
    pub describe_deadline_seconds: u64,
    /// Images a render may send through the model, forward or gradient.
    pub model_images: u64,
    /// Images in one model or preprocessing call.
    pub max_batch: u64,
    /// Panels one render may return.
    pub max_panels: u64,
    /// Width times height of one heatmap or image panel.
    pub max_panel_pixels: u64,
    /// Bytes of all panels of one render together, in MiB: heatmap values,
    /// image pixels and texts.
    pub max_output_mib: u64,
    /// The WebAssembly stack of one call into a plugin, in KiB.
    pub max_wasm_stack_kib: u64,
}

/// ONNX Runtime.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// The ONNX Runtime shared library. When unset, `ORT_DYLIB_PATH` is
    /// used, then the project's cache `.cache/onnxruntime/`.
    pub onnxruntime: Option<PathBuf>,
    /// Threads each model run may use; 0 lets ONNX Runtime pick.
    pub intra_op_threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1".to_owned(),
            port: 8080,
        }
    }
}

impl Default for PathsConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            plugins_dir: PathBuf::from("plugins"),
            models_dir: PathBuf::from("models"),
        }
    }
}

impl Default for ResultsConfig {
    fn default() -> Self {
        // A week: long enough to come back to a result, short enough that
        // a public demo does not fill its disk.
        Self {
            retention_hours: 24 * 7,
        }
    }
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            // Phone photos are 3 to 12 MB; 32 MiB leaves room for PNG
            // exports of them.
            max_bytes: 32 * 1024 * 1024,
            // 50 megapixels decode to 200 MB of RGBA, the most a render
            // worker should hold for one image.
            max_pixels: 50_000_000,
            max_files: 32,
        }
    }
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            workers: 0,
            queue_capacity: 64,
            max_renders_per_job: 256,
        }
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            // Occlusion keeps a batch of 16 frames and their tensors, about
            // 20 MB at 224x224; 256 MiB leaves room for larger models.
            memory_mib: 256,
            // Rust guests use one table for indirect calls with a few
            // hundred entries; 100,000 is far above that and still a small
            // allocation.
            table_elements: 100_000,
            // Long enough for occlusion at a fine stride on a large model,
            // and short enough to stop a runaway render before its user
            // gives up waiting.
            deadline_seconds: 120,
            // describe only builds a small record.
            describe_deadline_seconds: 5,
            // Occlusion at stride 4 on a 224 frame needs about 3,000 images.
            model_images: 10_000,
            // 256 frames of 3x224x224 floats are 150 MB on the host side.
            max_batch: 256,
            // More panels than anyone can compare on one page.
            max_panels: 64,
            // A 4096 x 4096 grid: larger than any model input frame.
            max_panel_pixels: 4096 * 4096,
            // Four full-size 2048 x 2048 heatmaps of f32; results are
            // written to disk as PNG and .npy, so this also bounds the disk
            // one render can fill.
            max_output_mib: 64,
            // Rust guests need a few hundred KiB at most; deep recursion
            // past this traps instead of exhausting the host's stack.
            max_wasm_stack_kib: 1024,
        }
    }
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file `{path}` not found; create it or leave out `--config`")]
    MissingFile { path: PathBuf },
    #[error("invalid configuration: {0}")]
    Parse(#[from] config::ConfigError),
    #[error("invalid configuration: `{key}` is {value}; {fix}")]
    Invalid {
        key: &'static str,
        value: String,
        fix: &'static str,
    },
}

impl Config {
    /// Reads the configuration from `file` (or `picasso.toml` in the working
    /// directory when it exists) and the environment, then resolves relative
    /// paths and checks the values.
    ///
    /// # Errors
    ///
    /// A named file that does not exist, a value of the wrong type, an
    /// unknown key, or a value out of range.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let (file, base) = match file {
            Some(path) if !path.is_file() => {
                return Err(ConfigError::MissingFile {
                    path: path.to_owned(),
                });
            }
            Some(path) => (Some(path.to_owned()), parent_dir(path)),
            None => {
                let default = PathBuf::from("picasso.toml");
                let file = default.is_file().then_some(default);
                (file, PathBuf::from("."))
            }
        };

        let mut builder = config::Config::builder();
        if let Some(file) = &file {
            builder = builder.add_source(config::File::from(file.as_path()));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("PICASSO")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(config_variables(std::env::vars()))),
        );
        let mut config: Config = builder.build()?.try_deserialize()?;
        config.resolve_paths(&base);
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let paths = &mut self.paths;
        for path in [
            &mut paths.data_dir,
            &mut paths.plugins_dir,
            &mut paths.models_dir,
        ] {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        if let Some(lib) = &mut self.runtime.onnxruntime
            && lib.is_relative()
        {
            *lib = base.join(&*lib);
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.server.bind.parse::<std::net::IpAddr>().is_err() {
            return Err(ConfigError::Invalid {
                key: "server.bind",
                value: format!("`{}`", self.server.bind),
                fix: "set an IP address such as `127.0.0.1` or `0.0.0.0`",
            });
        }
        let checks: [(&'static str, u64, &'static str); 13] = [
            (
                "uploads.max_bytes",
                self.uploads.max_bytes,
                "set a positive size in bytes",
            ),
            (
                "uploads.max_pixels",
                self.uploads.max_pixels,
                "set a positive pixel count",
            ),
            (
                "jobs.queue_capacity",
                self.jobs.queue_capacity as u64,
                "set at least 1",
            ),
            (
                "sandbox.memory_mib",
                self.sandbox.memory_mib,
                "set at least 16 (MiB)",
            ),
            (
                "sandbox.deadline_seconds",
                self.sandbox.deadline_seconds,
                "set at least 1 (seconds)",
            ),
            (
                "sandbox.describe_deadline_seconds",
                self.sandbox.describe_deadline_seconds,
                "set at least 1 (seconds)",
            ),
            (
                "sandbox.table_elements",
                self.sandbox.table_elements,
                "set at least 1000",
            ),
            (
                "sandbox.model_images",
                self.sandbox.model_images,
                "set at least 1 (images)",
            ),
            (
                "sandbox.max_batch",
                self.sandbox.max_batch,
                "set at least 1 (images)",
            ),
            (
                "sandbox.max_panels",
                self.sandbox.max_panels,
                "set at least 1",
            ),
            (
                "sandbox.max_panel_pixels",
                self.sandbox.max_panel_pixels,
                "set at least 1 (pixels)",
            ),
            (
                "sandbox.max_output_mib",
                self.sandbox.max_output_mib,
                "set at least 1 (MiB)",
            ),
            (
                "sandbox.max_wasm_stack_kib",
                self.sandbox.max_wasm_stack_kib,
                "set at least 64 (KiB)",
            ),
        ];
        for (key, value, fix) in checks {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    value: "0".to_owned(),
                    fix,
                });
            }
        }
        if self.sandbox.memory_mib < 16 || self.sandbox.memory_mib > 4096 {
            return Err(ConfigError::Invalid {
                key: "sandbox.memory_mib",
                value: self.sandbox.memory_mib.to_string(),
                fix: "set a value from 16 to 4096 (MiB)",
            });
        }
        // Rust guests need about 64 KiB before their entry point runs. The
        // upper bound keeps the render threads, whose native stack is this
        // plus headroom for the host, at a modest size.
        if self.sandbox.max_wasm_stack_kib < 64 || self.sandbox.max_wasm_stack_kib > 8192 {
            return Err(ConfigError::Invalid {
                key: "sandbox.max_wasm_stack_kib",
                value: self.sandbox.max_wasm_stack_kib.to_string(),
                fix: "set a value from 64 to 8192 (KiB)",
            });
        }
        if self.sandbox.table_elements < 1000 {
            return Err(ConfigError::Invalid {
                key: "sandbox.table_elements",
                value: self.sandbox.table_elements.to_string(),
                fix: "set at least 1000; Rust guests need a few hundred entries",
            });
        }
        Ok(())
    }

    /// The number of render workers, resolving 0 to the number of cores.
    pub fn worker_count(&self) -> usize {
        match self.jobs.workers {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }

    /// The result retention, or `None` when results are kept forever.
    pub fn retention(&self) -> Option<Duration> {
        match self.results.retention_hours {
            0 => None,
            hours => Some(Duration::from_secs(hours * 3600)),
        }
    }
}

/// Keeps the environment variables that name a configuration key. Every key
/// is in a section, so its variable has `__` after the prefix. Other
/// variables, such as a script's own `PICASSO_BIN`, are ignored instead of
/// failing as unknown keys.
fn config_variables(
    variables: impl Iterator<Item = (String, String)>,
) -> config::Map<String, String> {
    variables
        .filter(|(name, _)| {
            name.strip_prefix("PICASSO_")
                .is_some_and(|key| key.contains("__"))
        })
        .collect()
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("picasso.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    #[test]
    fn relative_paths_resolve_against_config_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "[paths]\ndata_dir = \"d\"\n");
        let config = Config::load(Some(&path)).expect("valid config");
        assert_eq!(config.paths.data_dir, dir.path().join("d"));
        assert_eq!(config.server.bind, "127.0.0.1");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "[server]\nport = \"eighty\"\n");
        let error = Config::load(Some(&path)).expect_err("port must be a number");
        assert!(error.to_string().contains("port"), "{error}");
    }

    #[test]
    fn unknown_key_is_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "[server]\nprot = 80\n");
        let error = Config::load(Some(&path)).expect_err("typo must be rejected");
        assert!(error.to_string().contains("prot"), "{error}");
    }

    #[test]
    fn invalid_bind_names_key_and_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write(dir.path(), "[server]\nbind = \"localhost:80\"\n");
        let error = Config::load(Some(&path)).expect_err("bind must be an address");
        let text = error.to_string();
        assert!(text.contains("server.bind"), "{text}");
        assert!(text.contains("127.0.0.1"), "{text}");
    }

    #[test]
    fn sandbox_limits_out_of_range_name_their_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (line, key) in [
            ("max_wasm_stack_kib = 16", "sandbox.max_wasm_stack_kib"),
            ("max_wasm_stack_kib = 100000", "sandbox.max_wasm_stack_kib"),
            ("table_elements = 10", "sandbox.table_elements"),
            ("max_output_mib = 0", "sandbox.max_output_mib"),
            (
                "describe_deadline_seconds = 0",
                "sandbox.describe_deadline_seconds",
            ),
        ] {
            let path = write(dir.path(), &format!("[sandbox]\n{line}\n"));
            let error = Config::load(Some(&path)).expect_err(line);
            assert!(error.to_string().contains(key), "{line}: {error}");
        }
    }

    #[test]
    fn only_sectioned_variables_are_config_keys() {
        let variables = [
            ("PICASSO_SERVER__PORT", "9000"),
            ("PICASSO_BIN", "/usr/bin/picasso"),
            ("HOME", "/root"),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned()));
        let kept = config_variables(variables.into_iter());
        assert_eq!(kept.len(), 1, "{kept:?}");
        assert!(kept.contains_key("PICASSO_SERVER__PORT"));
    }

    #[test]
    fn missing_named_file_is_an_error() {
        let error =
            Config::load(Some(Path::new("/nonexistent/picasso.toml"))).expect_err("missing file");
        assert!(matches!(error, ConfigError::MissingFile { .. }));
    }
}
