//! Picasso: a server that shows why an image classifier decides what it
//! decides.
//!
//! A job explains images with models through visualization plugins. The
//! pieces, in the order a request meets them:
//!
//! - [`web`] serves the REST API and the pages, and never blocks.
//! - [`job`] queues jobs and runs them on a fixed pool of render workers.
//! - [`plugin`] loads WebAssembly components and runs each render in a
//!   fresh, limited sandbox.
//! - [`model`] holds the ONNX models, their preprocessing, and the gradient
//!   models derived from them.
//! - [`render`] turns heatmaps into colored overlays on the photo.
//! - [`store`] keeps uploads, jobs and results across restarts.
//!
//! [`App`] ties them together; the `picasso` binary builds one.

pub mod app;
pub mod config;
pub mod fsutil;
pub mod imageio;
pub mod job;
pub mod model;
pub mod plugin;
pub mod render;
pub mod store;
pub mod text;
pub mod web;

pub use app::App;

/// The version of this host, recorded in every result manifest.
pub const HOST_VERSION: &str = env!("CARGO_PKG_VERSION");
