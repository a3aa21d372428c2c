//! Reloads the plugins folder when a `.wasm` file in it is added, changed,
//! renamed or removed, so plugins come and go without a restart.
//!
//! [`PluginRegistry::watch`] subscribes to the folder through `notify`
//! (inotify on Linux) and starts a thread that waits until the folder has
//! been quiet for [`DEBOUNCE`], then calls [`PluginRegistry::reload`]. The
//! reload keeps unchanged plugins, and renders already running hold their
//! own `Arc<LoadedPlugin>`, so they finish with the version they started
//! with.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::Duration;

use notify::{Event, RecursiveMode, Watcher};

use super::registry::PluginRegistry;

/// How long the folder must be quiet before a reload. Copying a plugin
/// raises several events (create, writes, close); half a second covers a
/// copy of a few MB without making a change wait noticeably.
pub const DEBOUNCE: Duration = Duration::from_millis(500);

/// Why the plugins folder cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch the plugins folder `{dir}`: {source}; plugins change only on restart")]
    Notify { dir: PathBuf, source: notify::Error },
    #[error("cannot start the plugin watcher thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// A subscription to the plugins folder; dropping it stops the reloads.
pub struct FolderWatch {
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for FolderWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FolderWatch").finish_non_exhaustive()
    }
}

/// Subscribes to `registry`'s folder and starts the reload thread. The
/// thread holds only a weak reference, and ends when the returned watch or
/// the registry is dropped.
pub(super) fn start(registry: &Arc<PluginRegistry>) -> Result<FolderWatch, WatchError> {
    let dir = registry.dir().to_owned();
    let (sender, receiver) = std::sync::mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |result: notify::Result<Event>| {
        match result {
            Ok(event) if event.paths.iter().any(|path| is_wasm(path)) => {
                // A closed channel means the reload thread has ended with
                // the registry; there is nothing left to tell.
                let _ = sender.send(());
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "error while watching the plugins folder"),
        }
    })
    .map_err(|source| WatchError::Notify {
        dir: dir.clone(),
        source,
    })?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|source| WatchError::Notify {
            dir: dir.clone(),
            source,
        })?;

    let weak = Arc::downgrade(registry);
    std::thread::Builder::new()
        .name("picasso-plugin-watch".to_owned())
        // The reload calls `describe` of new plugins on this thread.
        .stack_size(registry.sandbox().limits().thread_stack_size())
        .spawn(move || reload_on_change(&receiver, &weak))?;
    tracing::info!(dir = %dir.display(), "watching the plugins folder for changes");
    Ok(FolderWatch { _watcher: watcher })
}

fn reload_on_change(events: &Receiver<()>, registry: &Weak<PluginRegistry>) {
    while events.recv().is_ok() {
        loop {
            match events.recv_timeout(DEBOUNCE) {
                Ok(()) => continue,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let Some(registry) = registry.upgrade() else {
            return;
        };
        tracing::info!(dir = %registry.dir().display(), "plugins folder changed; reloading");
        registry.reload();
    }
}

/// Checks whether an event path is a plugin file. Temporary names such as
/// `.occlusion.wasm.tmp`, written before an atomic rename, do not count:
/// the rename that follows names the `.wasm` file.
fn is_wasm(path: &Path) -> bool {
    path.extension()
        .is_some_and(|extension| extension == "wasm")
}
