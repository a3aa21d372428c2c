//! The application: everything a running server shares, built once.

use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::job::JobQueue;
use crate::model::{ModelCatalog, SessionOptions};
use crate::plugin::{PluginRegistry, Sandbox, SandboxLimits};
use crate::store::Store;

/// The server's shared state.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub models: Arc<ModelCatalog>,
    pub plugins: Arc<PluginRegistry>,
    pub store: Store,
    pub jobs: JobQueue,
}

impl App {
    /// Loads models and plugins, opens the store and starts the workers.
    ///
    /// # Errors
    ///
    /// A models folder that cannot be listed, a data folder that cannot be
    /// written, or a sandbox that cannot start. Single models and plugins
    /// that fail are logged and listed, not fatal.
    pub fn start(config: Config) -> anyhow::Result<App> {
        let models = Arc::new(load_models(&config)?);
        let plugins = Arc::new(load_plugins(&config)?);
        if let Err(error) = plugins.watch() {
            tracing::warn!(%error, "plugins will not reload while the server runs");
        }
        let store = Store::open(&config.paths.data_dir).with_context(|| {
            format!(
                "cannot open the data folder `{}`",
                config.paths.data_dir.display()
            )
        })?;
        let jobs = JobQueue::start(
            store.clone(),
            models.clone(),
            plugins.clone(),
            config.worker_count(),
            config.jobs.queue_capacity,
            config.jobs.max_renders_per_job,
        );
        Ok(App {
            config,
            models,
            plugins,
            store,
            jobs,
        })
    }
}

/// Loads the models folder of `config`.
///
/// # Errors
///
/// A folder that cannot be listed.
pub fn load_models(config: &Config) -> anyhow::Result<ModelCatalog> {
    let options = SessionOptions {
        library: config.runtime.onnxruntime.clone(),
        intra_op_threads: config.runtime.intra_op_threads,
    };
    let dir = &config.paths.models_dir;
    ModelCatalog::load_dir(dir, &options)
        .with_context(|| format!("cannot list the models folder `{}`", dir.display()))
}

/// Creates the sandbox and loads the plugins folder of `config`.
///
/// # Errors
///
/// A sandbox that cannot start.
pub fn load_plugins(config: &Config) -> anyhow::Result<PluginRegistry> {
    let sandbox = Sandbox::new(SandboxLimits::from_config(&config.sandbox))
        .map_err(|error| anyhow::anyhow!("cannot start the plugin sandbox: {error:#}"))?;
    let cache = config.paths.data_dir.join("plugin-cache");
    Ok(PluginRegistry::new(
        Arc::new(sandbox),
        config.paths.plugins_dir.clone(),
        Some(cache),
    ))
}
