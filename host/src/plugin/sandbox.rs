//! One render of one plugin, isolated and limited.
//!
//! Every call into a plugin gets a fresh [`wasmtime::Store`] and instance:
//! a trap poisons a whole store, and a new one costs tens of microseconds.
//! The store carries the limits of [`SandboxLimits`]:
//!
//! - linear memory and tables through a [`ResourceLimiter`];
//! - wall-clock time inside the plugin through epoch interruption, with a
//!   callback every [`CHECK_INTERVAL`] that also stops a cancelled job;
//! - wall-clock time inside host calls through a check at every call, plus
//!   an ONNX Runtime terminate flag that a watchdog sets at the deadline;
//! - model work: images sent through the model, counted at each call;
//! - the size of the output (panels, pixels, bytes), checked before the host
//!   uses it;
//! - the wasm stack, through the engine configuration.
//!
//! Every limit comes from `[sandbox]` in the configuration, and the error of
//! a render that passes one names the limit, its value and its key.
//!
//! A plugin gets no capability beyond its WIT imports: the WASI interfaces
//! that a Rust standard-library guest imports are linked with an empty
//! context (no directories, environment, arguments, clocks or sockets), and
//! the registry rejects components that import anything else.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use image::RgbaImage;
use ort::session::RunOptions;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{self, Descriptor, LogLevel, ModelError, Panel, Tensor, Visualization};
use super::registry::LoadedPlugin;
use crate::config::SandboxConfig;
use crate::model::{self, Model};
use crate::text::truncate;

/// The limits of one render.
#[derive(Debug, Clone)]
pub struct SandboxLimits {
    /// Linear memory per instance, in bytes.
    pub memory_bytes: usize,
    /// Elements per table.
    pub table_elements: usize,
    /// Wall-clock time per render, model work included.
    pub deadline: Duration,
    /// Wall-clock time per `describe` call.
    pub describe_deadline: Duration,
    /// Images sent through the model per render.
    pub model_images: u64,
    /// Images in one model call.
    pub max_batch: usize,
    /// Panels per render.
    pub max_panels: usize,
    /// Width times height of one heatmap or image panel.
    pub max_panel_pixels: u64,
    /// Bytes of all panels of one render: values, pixels and texts.
    pub max_output_bytes: u64,
    /// The wasm stack of one call, in bytes.
    pub max_wasm_stack: usize,
    /// Log messages per render; the rest are counted and dropped.
    pub max_log_messages: u32,
}

impl SandboxLimits {
    /// The limits set by the configuration, with a fixed log limit.
    pub fn from_config(config: &SandboxConfig) -> SandboxLimits {
        SandboxLimits {
            memory_bytes: mib(config.memory_mib),
            table_elements: usize::try_from(config.table_elements).unwrap_or(usize::MAX),
            deadline: Duration::from_secs(config.deadline_seconds),
            describe_deadline: Duration::from_secs(config.describe_deadline_seconds),
            model_images: config.model_images,
            max_batch: usize::try_from(config.max_batch).unwrap_or(usize::MAX),
            max_panels: usize::try_from(config.max_panels).unwrap_or(usize::MAX),
            max_panel_pixels: config.max_panel_pixels,
            max_output_bytes: config.max_output_mib.saturating_mul(1 << 20),
            max_wasm_stack: usize::try_from(config.max_wasm_stack_kib.saturating_mul(1024))
                .unwrap_or(usize::MAX),
            // Enough for a message per step of a long render; a plugin that
            // logs more is flooding the server's log.
            max_log_messages: 200,
        }
    }

    /// Returns the native stack a thread needs to call into plugins: the
    /// wasm stack plus room for wasmtime, the host functions and ONNX
    /// Runtime, which run on the same thread during a model call.
    pub fn thread_stack_size(&self) -> usize {
        self.max_wasm_stack.saturating_add(HOST_STACK)
    }
}

fn mib(value: u64) -> usize {
    usize::try_from(value.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
}

/// How often the epoch advances. A render overruns its deadline by at most
/// about [`CHECK_INTERVAL`] while it runs wasm code.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The interval, in epoch ticks, at which running wasm code checks its
/// deadline and the job's cancel flag. At 50 ms, a cancelled render stops
/// within about a twentieth of a second.
const CHECK_INTERVAL: u64 = 5;

/// Bytes of a plugin's stderr kept for the error of a trap: enough for a
/// Rust panic message with its location. Writes past it fail in the guest,
/// which Rust's panic handler ignores.
const STDERR_CAPTURE: usize = 4096;

/// Native stack for the host's own frames under a plugin call. The default
/// 2 MiB of a Rust thread ran renders with a 1 MiB wasm stack, so 1 MiB is
/// what the host part was shown to fit in.
const HOST_STACK: usize = 1 << 20;

/// Why a render failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RenderError {
    /// The plugin returned an error for the user.
    #[error("plugin `{plugin}`: {message}")]
    Plugin { plugin: String, message: String },
    /// The plugin passed a limit and was stopped.
    #[error("plugin `{plugin}` was stopped: {message}")]
    Limit { plugin: String, message: String },
    /// The plugin trapped: a panic, `unreachable`, or a bad host call.
    #[error("plugin `{plugin}` crashed: {message}")]
    Trap { plugin: String, message: String },
    /// The plugin returned panels the host cannot use.
    #[error("plugin `{plugin}` returned an invalid result: {message}")]
    InvalidOutput { plugin: String, message: String },
    /// The job was cancelled while the render ran.
    #[error("cancelled")]
    Cancelled,
}

/// A limit a plugin passed (or a cancellation), raised as a trap from
/// inside the store.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct LimitExceeded(String);

/// The engine and linker shared by every plugin.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<State>,
    limits: SandboxLimits,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Creates the engine, links the host interfaces and starts the epoch
    /// ticker thread, which ends when the engine is dropped.
    ///
    /// # Errors
    ///
    /// Wasmtime rejecting the configuration or the links.
    pub fn new(limits: SandboxLimits) -> wasmtime::Result<Sandbox> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.max_wasm_stack(limits.max_wasm_stack);
        // The innermost frames locate a crash; more, such as the identical
        // frames of a deep recursion, only lengthen the job's error.
        config.wasm_backtrace_max_frames(std::num::NonZeroUsize::new(8));
        // Wasmtime rejects a wasm stack larger than its async stack size,
        // even with async support off.
        config.async_stack_size(limits.max_wasm_stack.max(2 << 20));
        let engine = Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        Visualization::add_to_linker::<State, HasSelf<State>>(&mut linker, |state| state)?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("picasso-epoch".to_owned())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(wasmtime::Error::new)?;

        Ok(Sandbox {
            engine,
            linker,
            limits,
        })
    }

    /// The engine, for compiling components.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker, for pre-instantiating components.
    pub fn linker(&self) -> &Linker<State> {
        &self.linker
    }

    /// The limits applied to every render.
    pub fn limits(&self) -> &SandboxLimits {
        &self.limits
    }

    fn store(&self, render: Option<RenderContext>, time: TimeLimit) -> Store<State> {
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE);
        let state = State {
            wasi: WasiCtx::builder().stderr(stderr.clone()).build(),
            stderr,
            table: ResourceTable::new(),
            limiter: Limiter {
                memory_bytes: self.limits.memory_bytes,
                table_elements: self.limits.table_elements,
            },
            time,
            render,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limiter);
        // Wasmtime counts the bytes it copies out of the plugin in one call
        // (arguments of a host call, or the result of `render`) against
        // this fuel. Without a limit, a result that lists the same memory
        // many times over would make the host allocate that many copies.
        store.set_hostcall_fuel(self.limits.memory_bytes);
        store.set_epoch_deadline(CHECK_INTERVAL);
        store.epoch_deadline_callback(|store| {
            store.data().time.check()?;
            Ok(UpdateDeadline::Continue(CHECK_INTERVAL))
        });
        store
    }

    /// Calls `describe` of a freshly instantiated component.
    ///
    /// # Errors
    ///
    /// A trap, a passed limit, or a failed instantiation.
    pub fn describe(
        &self,
        plugin_name: &str,
        pre: &bindings::VisualizationPre<State>,
    ) -> Result<Descriptor, RenderError> {
        let time = TimeLimit {
            deadline: Instant::now() + self.limits.describe_deadline,
            length: self.limits.describe_deadline,
            key: "sandbox.describe_deadline_seconds",
            cancel: None,
        };
        let mut store = self.store(None, time);
        let result = pre
            .instantiate(&mut store)
            .and_then(|instance| instance.call_describe(&mut store));
        result.map_err(|error| {
            let stderr = store.data().stderr.contents();
            classify_trap(plugin_name, &self.limits, error, &stderr)
        })
    }

    /// Runs one render of `request.plugin` on `request.frame`.
    ///
    /// # Errors
    ///
    /// The plugin's own error, a trap, a passed limit, an invalid result or
    /// cancellation. The server and later renders are unaffected by any of
    /// them.
    pub fn render(&self, request: RenderRequest<'_>) -> Result<RenderOutput, RenderError> {
        let plugin = request.plugin;
        let name = plugin.display_name();
        let run_options = Arc::new(RunOptions::new().map_err(|error| RenderError::Trap {
            plugin: name.clone(),
            message: format!("cannot create run options: {error}"),
        })?);
        let deadline = Instant::now() + self.limits.deadline;
        let time = TimeLimit {
            deadline,
            length: self.limits.deadline,
            key: "sandbox.deadline_seconds",
            cancel: request.cancel.clone(),
        };
        let context = RenderContext {
            plugin: name.clone(),
            model: request.model.clone(),
            limits: self.limits.clone(),
            time: time.clone(),
            images_used: 0,
            progress: request.progress,
            last_progress: (0, 0),
            rng: ChaCha8Rng::seed_from_u64(request.seed),
            run_options: run_options.clone(),
            log_messages: 0,
        };
        let mut store = self.store(Some(context), time);

        let input = bindings::Image {
            width: request.frame.width(),
            height: request.frame.height(),
            pixels: request.frame.into_raw(),
        };
        let settings: Vec<bindings::Setting> = request
            .settings
            .into_iter()
            .map(|(name, value)| bindings::Setting { name, value })
            .collect();

        let watchdog = Watchdog::start(deadline, run_options, request.cancel.clone());
        let result = plugin
            .pre
            .instantiate(&mut store)
            .and_then(|instance| instance.call_render(&mut store, &input, &settings));
        drop(watchdog);

        let images_used = store.data().render.as_ref().map_or(0, |r| r.images_used);
        if request
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            return Err(RenderError::Cancelled);
        }
        let panels = match result {
            Ok(Ok(panels)) => panels,
            Ok(Err(message)) => {
                return Err(RenderError::Plugin {
                    plugin: name,
                    message: truncate(&message, 2000),
                });
            }
            Err(error) => {
                let stderr = store.data().stderr.contents();
                return Err(classify_trap(&name, &self.limits, error, &stderr));
            }
        };
        check_panels(&self.limits, &request.model, &panels).map_err(|message| {
            RenderError::InvalidOutput {
                plugin: name.clone(),
                message,
            }
        })?;
        Ok(RenderOutput {
            panels,
            images_used,
        })
    }
}

/// Turns a wasmtime error into a render error that names the limit, when a
/// limit caused it. A crash also shows what the plugin wrote to stderr,
/// where a Rust guest writes its panic message.
fn classify_trap(
    plugin: &str,
    limits: &SandboxLimits,
    error: wasmtime::Error,
    stderr: &[u8],
) -> RenderError {
    let plugin = plugin.to_owned();
    if let Some(limit) = error.downcast_ref::<LimitExceeded>() {
        return RenderError::Limit {
            plugin,
            message: limit.0.clone(),
        };
    }
    // Wasmtime's error type for spent hostcall fuel is private, so its
    // message is the only way to recognize it.
    if format!("{error:#}").contains("fuel allocated for hostcalls has been exhausted") {
        return RenderError::Limit {
            plugin,
            message: format!(
                "the plugin passed more than {} MiB to the host in one call, the size of its \
                 memory limit (sandbox.memory_mib); the same data listed many times over \
                 counts each time",
                limits.memory_bytes >> 20
            ),
        };
    }
    let stderr = stderr_text(stderr);
    match error.downcast_ref::<Trap>() {
        Some(Trap::StackOverflow) => RenderError::Limit {
            plugin,
            message: format!(
                "wasm stack limit of {} KiB exceeded (sandbox.max_wasm_stack_kib), usually by \
                 deep recursion",
                limits.max_wasm_stack >> 10
            ),
        },
        Some(trap) => RenderError::Trap {
            plugin,
            message: format!("{trap}: {}{stderr}", root_message(&error)),
        },
        None => RenderError::Trap {
            plugin,
            message: format!("{}{stderr}", root_message(&error)),
        },
    }
}

/// Formats captured stderr for an error message, with control characters
/// other than line breaks escaped, or nothing when it is empty.
fn stderr_text(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let escaped: String = text
        .chars()
        .map(|c| match c {
            c if c.is_control() && c != '\n' => c.escape_default().to_string(),
            c => c.to_string(),
        })
        .collect();
    format!("; the plugin's stderr: {}", truncate(&escaped, 1000))
}

fn root_message(error: &wasmtime::Error) -> String {
    truncate(&format!("{error:#}"), 2000)
}

/// Checks the shapes and sizes of a render's panels.
fn check_panels(limits: &SandboxLimits, model: &Model, panels: &[Panel]) -> Result<(), String> {
    if panels.len() > limits.max_panels {
        return Err(format!(
            "{} panels; the limit is {} (sandbox.max_panels)",
            panels.len(),
            limits.max_panels
        ));
    }
    let bytes: u64 = panels.iter().map(panel_bytes).sum();
    if bytes > limits.max_output_bytes {
        return Err(format!(
            "the panels hold {:.1} MiB; the limit is {} MiB (sandbox.max_output_mib)",
            bytes as f64 / f64::from(1 << 20),
            limits.max_output_bytes >> 20
        ));
    }
    for (index, panel) in panels.iter().enumerate() {
        let at = |message: String| {
            format!(
                "panel {index} (`{}`): {message}",
                panel.title.escape_debug()
            )
        };
        check_text("title", &panel.title).map_err(at)?;
        match &panel.content {
            bindings::PanelContent::Heatmap(map) => {
                check_text("meaning", &map.meaning).map_err(at)?;
                let pixels = map.width as u64 * map.height as u64;
                if pixels == 0 || pixels > limits.max_panel_pixels {
                    return Err(at(format!(
                        "heatmap is {}x{}; sizes from 1x1 up to {} pixels are accepted \
                         (sandbox.max_panel_pixels)",
                        map.width, map.height, limits.max_panel_pixels
                    )));
                }
                if map.values.len() as u64 != pixels {
                    return Err(at(format!(
                        "heatmap has {} values for {}x{}",
                        map.values.len(),
                        map.width,
                        map.height
                    )));
                }
                if map.values.iter().any(|v| !v.is_finite()) {
                    return Err(at("heatmap contains NaN or infinite values".to_owned()));
                }
                if let Some(class) = map.class_index
                    && class as usize >= model.classes()
                {
                    return Err(at(format!(
                        "class index {class} is out of range for {} classes",
                        model.classes()
                    )));
                }
            }
            bindings::PanelContent::Image(image) => {
                let pixels = image.width as u64 * image.height as u64;
                if pixels == 0 || pixels > limits.max_panel_pixels {
                    return Err(at(format!(
                        "image is {}x{}; sizes from 1x1 up to {} pixels are accepted \
                         (sandbox.max_panel_pixels)",
                        image.width, image.height, limits.max_panel_pixels
                    )));
                }
                if image.pixels.len() as u64 != pixels * 4 {
                    return Err(at(format!(
                        "image has {} bytes for {}x{} RGBA",
                        image.pixels.len(),
                        image.width,
                        image.height
                    )));
                }
            }
            bindings::PanelContent::Scores(scores) => {
                for score in scores {
                    check_text("score label", &score.label).map_err(at)?;
                }
                if scores.len() > model.classes() {
                    return Err(at(format!(
                        "{} scores for a model with {} classes",
                        scores.len(),
                        model.classes()
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Checks a text of a panel, which the pages show and the manifest keeps:
/// 200 characters fit any title, and control characters would spoof or
/// break logs and terminals that show the manifest.
fn check_text(field: &str, text: &str) -> Result<(), String> {
    if text.chars().count() > 200 {
        return Err(format!("{field} longer than 200 characters"));
    }
    if text.chars().any(char::is_control) {
        return Err(format!(
            "{field} `{}` contains control characters",
            text.escape_debug()
        ));
    }
    Ok(())
}

/// Counts the bytes of a panel's values, pixels and texts.
fn panel_bytes(panel: &Panel) -> u64 {
    let content = match &panel.content {
        bindings::PanelContent::Heatmap(map) => map.values.len() * 4 + map.meaning.len(),
        bindings::PanelContent::Image(image) => image.pixels.len(),
        bindings::PanelContent::Scores(scores) => scores.iter().map(|s| 16 + s.label.len()).sum(),
    };
    (panel.title.len() + content) as u64
}

/// What one render needs.
pub struct RenderRequest<'a> {
    pub plugin: &'a LoadedPlugin,
    pub model: Arc<Model>,
    /// The photo in the model's input frame.
    pub frame: RgbaImage,
    /// Validated settings in schema order.
    pub settings: Vec<(String, bindings::SettingValue)>,
    /// Seeds the render's random stream.
    pub seed: u64,
    /// Receives (done, total) as the plugin reports progress.
    pub progress: Box<dyn FnMut(u32, u32) + Send>,
    /// Set to stop the render early.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl std::fmt::Debug for RenderRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenderRequest")
            .field("plugin", &self.plugin.display_name())
            .field("model", &self.model.id())
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

/// What a successful render produced.
#[derive(Debug)]
pub struct RenderOutput {
    pub panels: Vec<Panel>,
    /// Images the render sent through the model.
    pub images_used: u64,
}

/// Sets the ONNX Runtime terminate flag when the deadline passes or the job
/// is cancelled, because epoch interruption does not fire while the plugin
/// waits inside a host call.
struct Watchdog {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(
        deadline: Instant,
        options: Arc<RunOptions>,
        cancel: Option<Arc<AtomicBool>>,
    ) -> Watchdog {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("picasso-watchdog".to_owned())
            .spawn(move || {
                // Polling at 50 ms keeps cancellation responsive without a
                // second channel.
                loop {
                    let now = Instant::now();
                    let cancelled = cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed));
                    if now >= deadline || cancelled {
                        if let Err(error) = options.terminate() {
                            tracing::warn!(%error, "failed to terminate a model run");
                        }
                        return;
                    }
                    let wait = (deadline - now).min(Duration::from_millis(50));
                    match stopped.recv_timeout(wait) {
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                        _ => return,
                    }
                }
            })
            .ok();
        Watchdog {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The data of one store.
pub struct State {
    wasi: WasiCtx,
    /// What the plugin wrote to stderr, up to [`STDERR_CAPTURE`] bytes.
    stderr: MemoryOutputPipe,
    table: ResourceTable,
    limiter: Limiter,
    time: TimeLimit,
    /// `None` while `describe` runs: the model is off limits then.
    render: Option<RenderContext>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

struct Limiter {
    memory_bytes: usize,
    table_elements: usize,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            // An error here traps, so the render fails with a message that
            // names the limit instead of the guest's allocation failure.
            return Err(wasmtime::Error::new(LimitExceeded(format!(
                "memory limit of {} MiB exceeded (sandbox.memory_mib): the plugin asked for {} MiB",
                self.memory_bytes >> 20,
                desired >> 20
            ))));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            return Err(wasmtime::Error::new(LimitExceeded(format!(
                "table limit of {} elements exceeded (sandbox.table_elements)",
                self.table_elements
            ))));
        }
        Ok(true)
    }
}

/// The deadline of one call into a plugin and the flag that cancels it.
#[derive(Clone)]
struct TimeLimit {
    deadline: Instant,
    /// The configured length, for the error message.
    length: Duration,
    /// The configuration key that sets `length`.
    key: &'static str,
    cancel: Option<Arc<AtomicBool>>,
}

impl TimeLimit {
    /// Stops the call if it is past its deadline or cancelled. Called by
    /// the epoch callback while wasm runs and at every host call.
    fn check(&self) -> wasmtime::Result<()> {
        if self
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
        {
            return Err(wasmtime::Error::new(LimitExceeded(
                "the job was cancelled".to_owned(),
            )));
        }
        if Instant::now() >= self.deadline {
            return Err(wasmtime::Error::new(LimitExceeded(format!(
                "deadline of {} s exceeded ({})",
                self.length.as_secs_f32(),
                self.key
            ))));
        }
        Ok(())
    }
}

struct RenderContext {
    plugin: String,
    model: Arc<Model>,
    limits: SandboxLimits,
    time: TimeLimit,
    images_used: u64,
    progress: Box<dyn FnMut(u32, u32) + Send>,
    last_progress: (u32, u32),
    rng: ChaCha8Rng,
    run_options: Arc<RunOptions>,
    log_messages: u32,
}

impl RenderContext {
    /// Stops the render if it is past its deadline or cancelled.
    fn check_time(&self) -> wasmtime::Result<()> {
        self.time.check()
    }

    /// Counts `images` against the budget, stopping the render past it.
    fn spend(&mut self, images: usize) -> wasmtime::Result<()> {
        self.images_used += images as u64;
        if self.images_used > self.limits.model_images {
            return Err(wasmtime::Error::new(LimitExceeded(format!(
                "model budget of {} images exceeded (sandbox.model_images)",
                self.limits.model_images
            ))));
        }
        Ok(())
    }

    /// Checks images from the plugin against the batch and size limits and
    /// turns them into host images.
    fn decode_images(&self, images: Vec<bindings::Image>) -> Result<Vec<RgbaImage>, ModelError> {
        if images.len() > self.limits.max_batch {
            return Err(ModelError::LimitExceeded(format!(
                "{} images; at most {} per call (sandbox.max_batch)",
                images.len(),
                self.limits.max_batch
            )));
        }
        let mut decoded = Vec::with_capacity(images.len());
        for (index, image) in images.into_iter().enumerate() {
            let pixels = image.width as u64 * image.height as u64;
            if pixels == 0 || pixels > self.limits.max_panel_pixels {
                return Err(ModelError::InvalidArgument(format!(
                    "image {index} is {}x{}",
                    image.width, image.height
                )));
            }
            let (width, height) = (image.width, image.height);
            let rgba = RgbaImage::from_raw(width, height, image.pixels).ok_or_else(|| {
                ModelError::InvalidArgument(format!(
                    "image {index} has the wrong number of bytes for {width}x{height} RGBA"
                ))
            })?;
            decoded.push(rgba);
        }
        Ok(decoded)
    }

    /// Checks a batch tensor from the plugin and returns its batch size.
    fn check_batch(&self, batch: &Tensor) -> Result<usize, ModelError> {
        let shape: Vec<usize> = batch.shape.iter().map(|&d| d as usize).collect();
        let items = shape.first().copied().unwrap_or(0);
        if items > self.limits.max_batch {
            return Err(ModelError::LimitExceeded(format!(
                "batch of {items} images; at most {} per call (sandbox.max_batch)",
                self.limits.max_batch
            )));
        }
        self.model
            .check_input(&shape, &batch.data)
            .map_err(model_error)
    }
}

/// Shapes a model run's logits as the `[batch, classes]` tensor of the WIT.
fn logits_tensor(
    items: usize,
    result: Result<Vec<f32>, model::ModelError>,
) -> Result<Tensor, ModelError> {
    result
        .map(|logits| Tensor {
            shape: vec![items as u32, (logits.len() / items.max(1)) as u32],
            data: logits,
        })
        .map_err(model_error)
}

fn model_error(error: model::ModelError) -> ModelError {
    match error {
        model::ModelError::InvalidArgument(m) => ModelError::InvalidArgument(m),
        model::ModelError::Unsupported(m) => ModelError::Unsupported(m),
        model::ModelError::LimitExceeded(m) => ModelError::LimitExceeded(m),
        model::ModelError::Failed(m) => ModelError::Failed(m),
    }
}

impl State {
    fn render_context(&mut self) -> wasmtime::Result<&mut RenderContext> {
        let context = self.render.as_mut().ok_or_else(|| {
            wasmtime::Error::msg("the model is only available during render, not describe")
        })?;
        context.check_time()?;
        Ok(context)
    }
}

impl bindings::picasso::plugin::types::Host for State {}

impl bindings::picasso::plugin::model::Host for State {
    fn info(&mut self) -> wasmtime::Result<bindings::ModelInfo> {
        let context = self.render_context()?;
        Ok(model_info(&context.model))
    }

    fn preprocess(
        &mut self,
        images: Vec<bindings::Image>,
    ) -> wasmtime::Result<Result<Tensor, ModelError>> {
        let context = self.render_context()?;
        let decoded = match context.decode_images(images) {
            Ok(decoded) => decoded,
            Err(error) => return Ok(Err(error)),
        };
        let (shape, data) = context.model.preprocess(&decoded);
        Ok(Ok(Tensor {
            shape: shape.iter().map(|&d| d as u32).collect(),
            data,
        }))
    }

    fn logits_of_images(
        &mut self,
        images: Vec<bindings::Image>,
    ) -> wasmtime::Result<Result<Tensor, ModelError>> {
        let context = self.render_context()?;
        let decoded = match context.decode_images(images) {
            Ok(decoded) => decoded,
            Err(error) => return Ok(Err(error)),
        };
        let items = decoded.len();
        if items == 0 {
            return Ok(Err(ModelError::InvalidArgument(
                "no images; send at least one".to_owned(),
            )));
        }
        context.spend(items)?;
        let span = tracing::debug_span!("model_run", model = context.model.id(), items);
        let result = span.in_scope(|| {
            context
                .model
                .logits_of_images(&decoded, Some(&context.run_options))
        });
        context.check_time()?;
        Ok(logits_tensor(items, result))
    }

    fn logits(&mut self, batch: Tensor) -> wasmtime::Result<Result<Tensor, ModelError>> {
        let context = self.render_context()?;
        let items = match context.check_batch(&batch) {
            Ok(items) => items,
            Err(error) => return Ok(Err(error)),
        };
        context.spend(items)?;
        let shape: Vec<usize> = batch.shape.iter().map(|&d| d as usize).collect();
        let span = tracing::debug_span!("model_run", model = context.model.id(), items);
        let result = span.in_scope(|| {
            context
                .model
                .logits(&shape, &batch.data, Some(&context.run_options))
        });
        // A run stopped by the watchdog fails; report the reason instead of
        // ONNX Runtime's message.
        context.check_time()?;
        Ok(logits_tensor(items, result))
    }

    fn gradients(
        &mut self,
        batch: Tensor,
        seeds: Vec<bindings::Seed>,
        tensor: Option<String>,
    ) -> wasmtime::Result<Result<bindings::GradientResult, ModelError>> {
        let context = self.render_context()?;
        let items = match context.check_batch(&batch) {
            Ok(items) => items,
            Err(error) => return Ok(Err(error)),
        };
        if seeds.len() != items {
            return Ok(Err(ModelError::InvalidArgument(format!(
                "{} seeds for a batch of {items}; give one seed per item",
                seeds.len()
            ))));
        }
        context.spend(items)?;
        let shape: Vec<usize> = batch.shape.iter().map(|&d| d as usize).collect();
        let seeds: Vec<model::gradient::Seed> = seeds
            .into_iter()
            .map(|seed| match seed {
                bindings::Seed::Class(class) => model::gradient::Seed::Class(class),
                bindings::Seed::Weights(weights) => model::gradient::Seed::Weights(weights),
            })
            .collect();
        let span = tracing::debug_span!("gradient_run", model = context.model.id(), items);
        let result = span.in_scope(|| {
            context.model.gradients(
                &shape,
                &batch.data,
                &seeds,
                tensor.as_deref(),
                Some(&context.run_options),
            )
        });
        context.check_time()?;
        let output = match result {
            Ok(output) => output,
            Err(error) => return Ok(Err(model_error(error))),
        };
        let classes = (output.logits.len() / items.max(1)) as u32;
        let to_tensor = |shape: &[usize], data: Vec<f32>| Tensor {
            shape: shape.iter().map(|&d| d as u32).collect(),
            data,
        };
        let (activations, activation_gradient) = match output.intermediate {
            Some((shape, activation, gradient)) => (
                Some(to_tensor(&shape, activation)),
                Some(to_tensor(&shape, gradient)),
            ),
            None => (None, None),
        };
        Ok(Ok(bindings::GradientResult {
            logits: Tensor {
                shape: vec![items as u32, classes],
                data: output.logits,
            },
            input_gradient: to_tensor(&shape, output.input_gradient),
            activations,
            activation_gradient,
        }))
    }
}

impl bindings::picasso::plugin::host::Host for State {
    fn log(&mut self, level: LogLevel, message: String) -> wasmtime::Result<()> {
        let Some(context) = self.render.as_mut() else {
            return Ok(());
        };
        context.log_messages += 1;
        if context.log_messages > context.limits.max_log_messages {
            if context.log_messages == context.limits.max_log_messages + 1 {
                tracing::warn!(plugin = %context.plugin, "plugin log limit reached; dropping further messages");
            }
            return Ok(());
        }
        let message = truncate(&message, 1000);
        let plugin = context.plugin.as_str();
        match level {
            LogLevel::Trace => tracing::trace!(plugin, "{}", message.escape_debug()),
            LogLevel::Debug => tracing::debug!(plugin, "{}", message.escape_debug()),
            LogLevel::Info => tracing::info!(plugin, "{}", message.escape_debug()),
            LogLevel::Warn => tracing::warn!(plugin, "{}", message.escape_debug()),
            LogLevel::Error => tracing::error!(plugin, "{}", message.escape_debug()),
        }
        Ok(())
    }

    fn progress(&mut self, done: u32, total: u32) -> wasmtime::Result<()> {
        let context = self.render_context()?;
        let (last_done, last_total) = context.last_progress;
        if total == 0 || done > total || (total == last_total && done < last_done) {
            return Err(wasmtime::Error::new(LimitExceeded(format!(
                "invalid progress report {done}/{total} after {last_done}/{last_total}: \
                 progress must not exceed its total or go backwards"
            ))));
        }
        context.last_progress = (done, total);
        (context.progress)(done, total);
        Ok(())
    }

    fn random_uniform(&mut self, count: u32) -> wasmtime::Result<Vec<f32>> {
        let context = self.render_context()?;
        check_random_count(count, context)?;
        Ok((0..count).map(|_| context.rng.random::<f32>()).collect())
    }

    fn random_normal(&mut self, count: u32) -> wasmtime::Result<Vec<f32>> {
        let context = self.render_context()?;
        check_random_count(count, context)?;
        Ok((0..count)
            .map(|_| context.rng.sample::<f32, _>(StandardNormal))
            .collect())
    }
}

fn check_random_count(count: u32, context: &RenderContext) -> wasmtime::Result<()> {
    // Four bytes per number must fit in the plugin's memory.
    if count as usize > context.limits.memory_bytes / 4 {
        return Err(wasmtime::Error::new(LimitExceeded(format!(
            "{count} random numbers requested in one call; at most {} fit in the memory limit",
            context.limits.memory_bytes / 4
        ))));
    }
    Ok(())
}

/// The WIT description of a model.
pub fn model_info(model: &Model) -> bindings::ModelInfo {
    let declaration = &model.declaration;
    bindings::ModelInfo {
        id: declaration.id.clone(),
        name: declaration.name.clone(),
        content_hash: model.content_hash.clone(),
        layout: match declaration.input.layout {
            model::Layout::Nchw => bindings::Layout::Nchw,
            model::Layout::Nhwc => bindings::Layout::Nhwc,
        },
        channels: declaration.channels(),
        width: declaration.input.width,
        height: declaration.input.height,
        mean_pixel: declaration.mean_pixel(),
        output_kind: match declaration.output.kind {
            model::OutputKind::Logits => bindings::OutputKind::Logits,
            model::OutputKind::Probabilities => bindings::OutputKind::Probabilities,
        },
        labels: model.labels.clone(),
        tensors: model
            .tensors
            .iter()
            .map(|t| bindings::TensorInfo {
                name: t.name.clone(),
                shape: t.shape.clone(),
                op_type: t.op_type.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_text_escapes_control_characters() {
        let text = stderr_text(b"panicked at src/lib.rs:3:5:\n\x1b[2Jboom\x07\n");
        assert_eq!(
            text,
            "; the plugin's stderr: panicked at src/lib.rs:3:5:\n\\u{1b}[2Jboom\\u{7}"
        );
    }

    #[test]
    fn stderr_text_is_empty_without_output() {
        assert_eq!(stderr_text(b" \n"), "");
    }
}
