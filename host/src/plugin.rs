//! Visualization plugins: WebAssembly components loaded from the plugins
//! folder and run in a sandbox.
//!
//! [`PluginRegistry`] compiles every `*.wasm` file of the folder (through a
//! cache of compiled components), checks its imports and WIT version, and
//! keeps its [`Descriptor`](settings::DescriptorJson). [`sandbox::Sandbox`]
//! runs one render in a fresh store with memory, time and model-work limits.
//! [`settings`] validates user settings against a plugin's schema before any
//! plugin code runs. [`watcher`] reloads the registry when the folder
//! changes.

pub mod bindings;
pub mod registry;
pub mod sandbox;
pub mod settings;
pub mod watcher;

pub use registry::{LoadedPlugin, PluginListing, PluginRegistry};
pub use sandbox::{RenderError, RenderOutput, RenderRequest, Sandbox, SandboxLimits};
