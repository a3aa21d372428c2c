//! The plugins folder: loading, checking and caching components.
//!
//! Every `*.wasm` file in the folder is loaded in file-name order. A file
//! that fails (not a component, a forbidden import, an incompatible WIT
//! version, a trap or invalid schema in `describe`) is listed with its error
//! and skipped; it never stops the others from loading. When two files
//! declare the same plugin id, the first in file-name order wins and the
//! other is listed as failed.
//!
//! Compiling a component takes tens to hundreds of milliseconds, so
//! compiled code is cached under `<data_dir>/plugin-cache/`, keyed by the
//! file's SHA-256 and by wasmtime's compatibility hash of the engine
//! configuration. Each entry is stored with the SHA-256 of its own bytes and
//! is only deserialized when that matches; a corrupt or stale entry is
//! recompiled.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::bindings::{Descriptor, VisualizationPre};
use super::sandbox::{Sandbox, State};
use super::settings::{self, DescriptorJson};
use super::watcher::{self, FolderWatch, WatchError};

/// The WIT package this host implements.
pub const WIT_PACKAGE: &str = "picasso:plugin";
/// The version of [`WIT_PACKAGE`] this host implements.
pub const WIT_VERSION: (u64, u64, u64) = (0, 1, 0);

/// Import prefixes a plugin may have: the host's own interfaces and the WASI
/// interfaces a Rust standard-library guest imports for streams and process
/// basics. Files, sockets, clocks and random numbers are absent on purpose.
const ALLOWED_IMPORTS: &[&str] = &[
    "picasso:plugin/",
    "wasi:io/error@",
    "wasi:io/streams@",
    "wasi:io/poll@",
    "wasi:cli/environment@",
    "wasi:cli/exit@",
    "wasi:cli/stdin@",
    "wasi:cli/stdout@",
    "wasi:cli/stderr@",
    "wasi:cli/terminal-input@",
    "wasi:cli/terminal-output@",
    "wasi:cli/terminal-stdin@",
    "wasi:cli/terminal-stdout@",
    "wasi:cli/terminal-stderr@",
];

/// A plugin ready to render.
pub struct LoadedPlugin {
    pub file: PathBuf,
    /// SHA-256 of the `.wasm` file.
    pub content_hash: String,
    pub descriptor: Descriptor,
    pub json: DescriptorJson,
    pub(crate) pre: VisualizationPre<State>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("file", &self.file)
            .field("id", &self.descriptor.id)
            .field("version", &self.descriptor.version)
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    /// The plugin's id.
    pub fn id(&self) -> &str {
        &self.descriptor.id
    }

    /// The id and version, as errors name a plugin.
    pub fn display_name(&self) -> String {
        format!("{} {}", self.descriptor.id, self.descriptor.version)
    }
}

/// A file of the plugins folder and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct PluginListing {
    /// The file name, without the folder: the API does not reveal the
    /// server's paths.
    pub file: String,
    pub content_hash: String,
    /// `loaded` or `failed`.
    pub status: &'static str,
    pub error: Option<String>,
    pub descriptor: Option<DescriptorJson>,
}

#[derive(Default)]
struct Loaded {
    plugins: Vec<Arc<LoadedPlugin>>,
    listings: Vec<PluginListing>,
}

/// Every plugin of the plugins folder.
pub struct PluginRegistry {
    sandbox: Arc<Sandbox>,
    dir: PathBuf,
    cache_dir: Option<PathBuf>,
    loaded: RwLock<Loaded>,
    /// The folder subscription of [`PluginRegistry::watch`], if started.
    watch: Mutex<Option<FolderWatch>>,
}

impl std::fmt::Debug for PluginRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRegistry")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl PluginRegistry {
    /// Creates a registry for `dir` and loads it. `cache_dir` contains compiled
    /// components; `None` compiles every time.
    pub fn new(sandbox: Arc<Sandbox>, dir: PathBuf, cache_dir: Option<PathBuf>) -> PluginRegistry {
        let registry = PluginRegistry {
            sandbox,
            dir,
            cache_dir,
            loaded: RwLock::new(Loaded::default()),
            watch: Mutex::new(None),
        };
        registry.reload();
        registry
    }

    /// The sandbox the plugins run in.
    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    /// Reloads the folder whenever a `.wasm` file in it is added, changed or
    /// removed, until the registry is dropped. Calling it again changes
    /// nothing.
    ///
    /// # Errors
    ///
    /// The folder cannot be watched (it does not exist, or the system's
    /// limit of watches is reached), or the reload thread cannot start.
    pub fn watch(self: &Arc<Self>) -> Result<(), WatchError> {
        let mut watch = match self.watch.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if watch.is_none() {
            *watch = Some(watcher::start(self)?);
        }
        Ok(())
    }

    /// The folder the registry scans.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Scans the folder again. Plugins whose file is unchanged are kept as
    /// they are; renders already running keep the version they started with.
    pub fn reload(&self) {
        let started = Instant::now();
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|path| path.extension().is_some_and(|e| e == "wasm") && path.is_file())
                .collect(),
            Err(error) => {
                tracing::warn!(dir = %self.dir.display(), %error, "cannot list the plugins folder");
                Vec::new()
            }
        };
        files.sort();

        let previous: Vec<Arc<LoadedPlugin>> = self.plugins();
        let mut next = Loaded::default();
        for file in files {
            let bytes = match std::fs::read(&file) {
                Ok(bytes) => bytes,
                Err(error) => {
                    next.listings.push(failed(
                        &file,
                        String::new(),
                        format!("cannot read: {error}"),
                    ));
                    continue;
                }
            };
            let hash = hex::encode(Sha256::digest(&bytes));
            let reused = previous
                .iter()
                .find(|p| p.file == file && p.content_hash == hash)
                .cloned();
            let result = match reused {
                Some(plugin) => Ok(plugin),
                None => self.load_bytes(&file, &bytes, hash.clone()).map(Arc::new),
            };
            match result {
                Ok(plugin) => {
                    if let Some(first) = next.plugins.iter().find(|p| p.id() == plugin.id()) {
                        let error = format!(
                            "duplicate plugin id `{}`: `{}` already provides it (the first file \
                             in name order wins); rename one of the ids",
                            plugin.id(),
                            first.file.display()
                        );
                        tracing::warn!(file = %file.display(), "{error}");
                        next.listings.push(failed(&file, hash, error));
                        continue;
                    }
                    next.listings.push(PluginListing {
                        file: file_name(&file),
                        content_hash: hash,
                        status: "loaded",
                        error: None,
                        descriptor: Some(plugin.json.clone()),
                    });
                    next.plugins.push(plugin);
                }
                Err(error) => {
                    tracing::warn!(file = %file.display(), %error, "failed to load plugin");
                    next.listings.push(failed(&file, hash, error));
                }
            }
        }
        tracing::info!(
            loaded = next.plugins.len(),
            failed = next.listings.len() - next.plugins.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            dir = %self.dir.display(),
            "loaded plugins"
        );
        match self.loaded.write() {
            Ok(mut loaded) => *loaded = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }

    /// Loads one file outside the folder, such as a plugin under development.
    ///
    /// # Errors
    ///
    /// Why the file cannot be used, as for a file in the folder.
    pub fn load_file(&self, file: &Path) -> Result<LoadedPlugin, String> {
        let bytes = std::fs::read(file)
            .map_err(|error| format!("cannot read `{}`: {error}", file.display()))?;
        let hash = hex::encode(Sha256::digest(&bytes));
        self.load_bytes(file, &bytes, hash)
    }

    fn load_bytes(&self, file: &Path, bytes: &[u8], hash: String) -> Result<LoadedPlugin, String> {
        let component = self.compile(bytes, &hash)?;
        check_imports(&component, self.sandbox.engine())?;
        let instance_pre = self
            .sandbox
            .linker()
            .instantiate_pre(&component)
            .map_err(|error| format!("cannot link: {error:#}"))?;
        let pre = VisualizationPre::new(instance_pre)
            .map_err(|error| format!("does not export the `visualization` world: {error:#}"))?;

        let name = file.file_name().map_or_else(
            || file.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let descriptor = self
            .sandbox
            .describe(&name, &pre)
            .map_err(|error| format!("describe failed: {error}"))?;
        settings::check_descriptor(&descriptor)
            .map_err(|error| format!("invalid descriptor: {error}"))?;
        let json = DescriptorJson::from_descriptor(&descriptor);
        Ok(LoadedPlugin {
            file: file.to_owned(),
            content_hash: hash,
            descriptor,
            json,
            pre,
        })
    }

    fn compile(&self, bytes: &[u8], hash: &str) -> Result<Component, String> {
        let engine = self.sandbox.engine();
        if !wasmparser::Parser::is_component(bytes) {
            return Err(if wasmparser::Parser::is_core_wasm(bytes) {
                "a core WebAssembly module, not a component; build for the `wasm32-wasip2` target"
                    .to_owned()
            } else {
                "not a WebAssembly component".to_owned()
            });
        }
        let cache_file = self.cache_dir.as_ref().map(|dir| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut hasher);
            dir.join(format!("{hash}-{:016x}.cwasm", hasher.finish()))
        });
        if let Some(path) = &cache_file
            && let Some(component) = load_cached(engine, path)
        {
            return Ok(component);
        }

        let component =
            Component::new(engine, bytes).map_err(|error| format!("cannot compile: {error:#}"))?;
        if let Some(path) = &cache_file {
            store_cached(&component, path);
        }
        Ok(component)
    }

    /// The plugin with this id.
    pub fn get(&self, id: &str) -> Option<Arc<LoadedPlugin>> {
        self.plugins().into_iter().find(|p| p.id() == id)
    }

    /// Every loaded plugin, in file-name order.
    pub fn plugins(&self) -> Vec<Arc<LoadedPlugin>> {
        match self.loaded.read() {
            Ok(loaded) => loaded.plugins.clone(),
            Err(poisoned) => poisoned.into_inner().plugins.clone(),
        }
    }

    /// Every file of the folder with its status.
    pub fn list(&self) -> Vec<PluginListing> {
        match self.loaded.read() {
            Ok(loaded) => loaded.listings.clone(),
            Err(poisoned) => poisoned.into_inner().listings.clone(),
        }
    }
}

fn file_name(file: &Path) -> String {
    file.file_name().map_or_else(
        || file.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn failed(file: &Path, content_hash: String, error: String) -> PluginListing {
    PluginListing {
        file: file_name(file),
        content_hash,
        status: "failed",
        error: Some(error),
        descriptor: None,
    }
}

/// Rejects components that import anything beyond the allowed interfaces,
/// naming every such import, or the host's package at an incompatible
/// version.
fn check_imports(component: &Component, engine: &wasmtime::Engine) -> Result<(), String> {
    let component_type = component.component_type();
    let mut forbidden = Vec::new();
    for (name, _) in component_type.imports(engine) {
        if !ALLOWED_IMPORTS
            .iter()
            .any(|prefix| name.starts_with(prefix))
        {
            forbidden.push(format!("`{name}`"));
            continue;
        }
        if let Some(rest) = name.strip_prefix(&format!("{WIT_PACKAGE}/")) {
            check_version(name, rest)?;
        }
    }
    if forbidden.is_empty() {
        return Ok(());
    }
    Err(format!(
        "imports {}, which plugins may not use; plugins get only the `{WIT_PACKAGE}` \
         interfaces and WASI streams and cli basics, with no files, sockets, clocks or \
         random numbers",
        forbidden.join(", ")
    ))
}

fn check_version(name: &str, rest: &str) -> Result<(), String> {
    let (host_major, host_minor, host_patch) = WIT_VERSION;
    let supported = format!(
        "this host supports {WIT_PACKAGE}@{host_major}.{host_minor}.0 to \
         {host_major}.{host_minor}.{host_patch}"
    );
    let Some((_, version)) = rest.split_once('@') else {
        return Err(format!("imports `{name}` without a version; {supported}"));
    };
    let parts: Vec<u64> = version
        .split(['.', '-', '+'])
        .take(3)
        .map_while(|p| p.parse().ok())
        .collect();
    let compatible = match parts.as_slice() {
        // For 0.x, a minor version is a breaking change.
        [0, minor, patch] => host_major == 0 && *minor == host_minor && *patch <= host_patch,
        [major, minor, _] => *major == host_major && *minor <= host_minor,
        _ => false,
    };
    if compatible {
        Ok(())
    } else {
        Err(format!(
            "built for {WIT_PACKAGE}@{version} (import `{name}`); {supported}; rebuild it \
             with a matching picasso-plugin-sdk"
        ))
    }
}

fn load_cached(engine: &wasmtime::Engine, path: &Path) -> Option<Component> {
    let bytes = std::fs::read(path).ok()?;
    let expected = std::fs::read_to_string(path.with_extension("cwasm.sha256")).ok()?;
    if hex::encode(Sha256::digest(&bytes)) != expected.trim() {
        tracing::warn!(path = %path.display(), "corrupt compiled-plugin cache entry; recompiling");
        return None;
    }
    // SAFETY: the bytes were written by `Component::serialize` of an engine
    // with the same compatibility hash (part of the file name), and their
    // SHA-256 matches the one recorded beside them, so they are exactly what
    // wasmtime produced. Wasmtime also checks the version and configuration
    // in the header.
    #[allow(unsafe_code)]
    let component = unsafe { Component::deserialize(engine, &bytes) };
    match component {
        Ok(component) => Some(component),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "stale compiled-plugin cache entry; recompiling");
            None
        }
    }
}

fn store_cached(component: &Component, path: &Path) {
    let result = component
        .serialize()
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            let digest = hex::encode(Sha256::digest(&bytes));
            crate::fsutil::write_atomic(path, &bytes).map_err(|e| e.to_string())?;
            crate::fsutil::write_atomic(&path.with_extension("cwasm.sha256"), digest.as_bytes())
                .map_err(|e| e.to_string())
        });
    if let Err(error) = result {
        tracing::warn!(path = %path.display(), %error, "cannot write compiled-plugin cache entry");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_minor_older_patch_is_compatible() {
        assert!(check_version("picasso:plugin/model@0.1.0", "model@0.1.0").is_ok());
    }

    #[test]
    fn other_minor_is_rejected_with_range() {
        let error = check_version("picasso:plugin/model@0.2.0", "model@0.2.0")
            .expect_err("0.2 is incompatible with 0.1");
        assert!(error.contains("0.2.0"), "{error}");
        assert!(error.contains("0.1.0"), "{error}");
    }

    #[test]
    fn newer_patch_is_rejected() {
        assert!(check_version("picasso:plugin/model@0.1.7", "model@0.1.7").is_err());
    }
}
