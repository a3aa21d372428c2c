//! Services of the host unrelated to the model: logging, progress and
//! seeded random numbers.
//!
//! Every function here calls into the host, so it works only inside a
//! render on wasm32 and panics in native builds.

use crate::__bindings::picasso::plugin::host as imports;

/// The severity of a log message.
pub use imports::LogLevel;

/// Writes `message` to the host's log, which tags it with the plugin and
/// the job. The host may drop messages past a per-render limit.
pub fn log(level: LogLevel, message: &str) {
    imports::log(level, message);
}

/// Logs `message` at debug level.
pub fn debug(message: &str) {
    log(LogLevel::Debug, message);
}

/// Logs `message` at info level.
pub fn info(message: &str) {
    log(LogLevel::Info, message);
}

/// Logs `message` at warn level.
pub fn warn(message: &str) {
    log(LogLevel::Warn, message);
}

/// Reports that `done` of `total` units of work are finished; the host
/// shows it as the render's progress. Counts above `u32::MAX` are capped.
pub fn progress(done: usize, total: usize) {
    let cap = |count: usize| u32::try_from(count).unwrap_or(u32::MAX);
    imports::progress(cap(done), cap(total));
}

/// Returns `count` numbers drawn uniformly from [0, 1).
///
/// The stream is seeded by the job's seed, so a render repeated with the
/// same seed draws the same numbers. Prefer it to any other randomness.
pub fn random_uniform(count: u32) -> Vec<f32> {
    imports::random_uniform(count)
}

/// Returns `count` numbers drawn from the standard normal distribution,
/// from the same seeded stream as [`random_uniform`].
pub fn random_normal(count: u32) -> Vec<f32> {
    imports::random_normal(count)
}
