//! Runs one job: every image through every model and visualization, then
//! writes the colored results and the manifest.
//!
//! The same runner serves the server's workers and `picasso explain`; only
//! where images come from and where progress goes differ.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use image::RgbaImage;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::spec::{
    ClassScore, HeatmapRecord, ImageResult, Manifest, ModelResult, ModelStamp, OwnScale,
    PanelRecord, PluginStamp, RenderResult, VisualizationRequest,
};
use crate::model::{Model, ModelCatalog};
use crate::plugin::bindings::{HeatmapScale, PanelContent, SettingValue};
use crate::plugin::registry::WIT_PACKAGE;
use crate::plugin::{LoadedPlugin, PluginRegistry, RenderRequest, Sandbox, settings};
use crate::render::{self, ColorRange, Scale};

/// The classes listed per model and image, besides what plugins show.
const TOP_CLASSES: usize = 5;

/// A job with its models, plugins and settings resolved and validated.
#[derive(Debug, Clone)]
pub struct Plan {
    pub job: String,
    pub seed: u64,
    pub models: Vec<Arc<Model>>,
    pub visualizations: Vec<PlannedVisualization>,
}

/// One visualization of a plan.
#[derive(Debug, Clone)]
pub struct PlannedVisualization {
    pub plugin: Arc<LoadedPlugin>,
    pub settings: Vec<(String, SettingValue)>,
    pub settings_json: BTreeMap<String, Value>,
}

/// Resolves ids against the loaded models and plugins and validates the
/// settings, before anything runs.
///
/// # Errors
///
/// A message for the user naming the unknown id or the invalid setting.
pub fn plan(
    job: String,
    model_ids: &[String],
    requests: &[VisualizationRequest],
    seed: Option<u64>,
    models: &ModelCatalog,
    plugins: &PluginRegistry,
) -> Result<Plan, String> {
    if model_ids.is_empty() {
        return Err("choose at least one model".to_owned());
    }
    if requests.is_empty() {
        return Err("choose at least one visualization".to_owned());
    }
    let mut chosen = Vec::new();
    for id in model_ids {
        let model = models.get(id).ok_or_else(|| {
            let known: Vec<&str> = models.models().iter().map(|m| m.id()).collect();
            format!(
                "unknown model `{id}`; available models: {}",
                known.join(", ")
            )
        })?;
        chosen.push(model.clone());
    }
    let refs: Vec<&Model> = chosen.iter().map(Arc::as_ref).collect();
    let visualizations = requests
        .iter()
        .map(|request| {
            let plugin = plugins.get(&request.plugin).ok_or_else(|| {
                let known: Vec<String> = plugins
                    .plugins()
                    .iter()
                    .map(|p| p.id().to_owned())
                    .collect();
                format!(
                    "unknown visualization `{}`; available visualizations: {}",
                    request.plugin,
                    known.join(", ")
                )
            })?;
            plan_visualization(plugin, request, &refs)
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Plan {
        job,
        seed: seed.unwrap_or_else(rand::random),
        models: chosen,
        visualizations,
    })
}

/// Resolves one visualization against the models it will run with.
///
/// # Errors
///
/// Gradients the models cannot provide, or invalid settings.
pub fn plan_visualization(
    plugin: Arc<LoadedPlugin>,
    request: &VisualizationRequest,
    models: &[&Model],
) -> Result<PlannedVisualization, String> {
    if plugin.descriptor.needs_gradients {
        for model in models {
            if let Some(reason) = model.summary().gradients_unavailable {
                return Err(format!(
                    "visualization `{}` needs gradients, which model `{}` cannot provide: {reason}",
                    plugin.id(),
                    model.id()
                ));
            }
        }
    }
    let (settings, settings_json) = settings::resolve(
        plugin.id(),
        &plugin.descriptor.settings,
        &request.settings,
        models,
    )?;
    Ok(PlannedVisualization {
        plugin,
        settings,
        settings_json,
    })
}

/// An image of a job and how to get its pixels.
pub struct JobImage {
    pub id: String,
    pub name: String,
    /// Decodes the image, or returns why it cannot be used.
    pub load: Box<dyn FnOnce() -> Result<RgbaImage, String> + Send>,
}

impl std::fmt::Debug for JobImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobImage")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a job stopped as a whole.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cancelled")]
    Cancelled,
    #[error("cannot write `{path}`: {message}")]
    Write { path: PathBuf, message: String },
}

/// Where a job reports its progress, in renders done out of renders total.
pub type Progress = Arc<dyn Fn(f64, u64) + Send + Sync>;

/// Runs a plan over `images`, writing every file under `out_dir`, and
/// returns the manifest (also written as `manifest.json`).
///
/// A failure of one image, model or render is recorded in the manifest and
/// the rest still run.
///
/// # Errors
///
/// Cancellation, or a file that cannot be written.
pub fn run(
    plan: &Plan,
    sandbox: &Sandbox,
    images: Vec<JobImage>,
    out_dir: &Path,
    progress: Progress,
    cancel: &Arc<AtomicBool>,
) -> Result<Manifest, RunError> {
    let span = tracing::info_span!("job", job = %plan.job, images = images.len());
    let _entered = span.enter();
    let started = Instant::now();
    let total = (images.len() * plan.models.len() * plan.visualizations.len()) as u64;
    let writer = Writer { root: out_dir };

    let mut manifest = Manifest {
        job: plan.job.clone(),
        host_version: crate::HOST_VERSION.to_owned(),
        wit_package: format!(
            "{WIT_PACKAGE}@{}.{}.{}",
            crate::plugin::registry::WIT_VERSION.0,
            crate::plugin::registry::WIT_VERSION.1,
            crate::plugin::registry::WIT_VERSION.2
        ),
        seed: plan.seed,
        started_unix: unix_now(),
        models: plan
            .models
            .iter()
            .map(|m| ModelStamp {
                id: m.id().to_owned(),
                name: m.declaration.name.clone(),
                content_hash: m.content_hash.clone(),
            })
            .collect(),
        plugins: plan
            .visualizations
            .iter()
            .map(|v| PluginStamp {
                id: v.plugin.id().to_owned(),
                version: v.plugin.descriptor.version.clone(),
                title: v.plugin.descriptor.title.clone(),
                content_hash: v.plugin.content_hash.clone(),
                settings: v.settings_json.clone(),
            })
            .collect(),
        images: Vec::new(),
    };

    let mut done = 0u64;
    for (index, image) in images.into_iter().enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(RunError::Cancelled);
        }
        let context = ImageContext {
            plan,
            sandbox,
            writer: &writer,
            index,
            progress: progress.clone(),
            cancel,
            total,
        };
        let result = context.run(image, &mut done)?;
        manifest.images.push(result);
    }

    let json = serde_json::to_vec_pretty(&manifest).map_err(|error| RunError::Write {
        path: out_dir.join("manifest.json"),
        message: error.to_string(),
    })?;
    writer.write("manifest.json", &json)?;
    tracing::info!(
        renders = total,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "finished job"
    );
    Ok(manifest)
}

struct Writer<'a> {
    root: &'a Path,
}

impl Writer<'_> {
    fn write(&self, relative: &str, bytes: &[u8]) -> Result<(), RunError> {
        let path = self.root.join(relative);
        crate::fsutil::write_atomic(&path, bytes).map_err(|error| RunError::Write {
            path,
            message: error.to_string(),
        })
    }

    fn write_png(&self, relative: &str, image: &RgbaImage) -> Result<(), RunError> {
        let bytes = render::png(image).map_err(|error| RunError::Write {
            path: self.root.join(relative),
            message: error.to_string(),
        })?;
        self.write(relative, &bytes)
    }
}

struct ImageContext<'a> {
    plan: &'a Plan,
    sandbox: &'a Sandbox,
    writer: &'a Writer<'a>,
    index: usize,
    progress: Progress,
    cancel: &'a Arc<AtomicBool>,
    total: u64,
}

/// A heatmap waiting for its shared color range.
struct PendingHeatmap {
    model: usize,
    render: usize,
    panel: usize,
    /// The visualization's index in the plan; maps of one visualization
    /// share a color range.
    visualization: usize,
    scale: Scale,
    values: Vec<f32>,
    width: u32,
    height: u32,
}

impl ImageContext<'_> {
    fn run(&self, image: JobImage, done: &mut u64) -> Result<ImageResult, RunError> {
        let renders_per_image = (self.plan.models.len() * self.plan.visualizations.len()) as u64;
        let mut result = ImageResult {
            image: image.id.clone(),
            name: image.name.clone(),
            width: 0,
            height: 0,
            photo: None,
            error: None,
            models: Vec::new(),
        };
        let photo = match (image.load)() {
            Ok(photo) => photo,
            Err(error) => {
                tracing::warn!(image = %image.id, %error, "image failed");
                result.error = Some(error);
                *done += renders_per_image;
                (self.progress)(*done as f64, self.total);
                return Ok(result);
            }
        };
        result.width = photo.width();
        result.height = photo.height();
        let (display, factor) = render::display_photo(&photo);
        let photo_path = format!("i{}/photo.png", self.index);
        self.writer.write_png(&photo_path, &display)?;
        result.photo = Some(photo_path);

        let mut pending = Vec::new();
        for (model_index, model) in self.plan.models.iter().enumerate() {
            let model_result = self.run_model(model, model_index, &photo, done, &mut pending)?;
            result.models.push(model_result);
        }
        self.finish_heatmaps(&mut result, pending, &display, factor)?;
        Ok(result)
    }

    fn run_model(
        &self,
        model: &Arc<Model>,
        model_index: usize,
        photo: &RgbaImage,
        done: &mut u64,
        pending: &mut Vec<PendingHeatmap>,
    ) -> Result<ModelResult, RunError> {
        let (frame, crop) = model.frame(photo);
        let dir = format!("i{}/{}", self.index, model.id());
        let frame_path = format!("{dir}/frame.png");
        self.writer.write_png(&frame_path, &frame)?;
        let mut result = ModelResult {
            model: model.id().to_owned(),
            crop,
            frame: Some(frame_path),
            top_classes: Vec::new(),
            error: None,
            renders: Vec::new(),
        };
        let (shape, data) = model.preprocess(std::slice::from_ref(&frame));
        match model.logits(&shape, &data, None) {
            Ok(logits) => {
                result.top_classes = model
                    .scores(&logits)
                    .into_iter()
                    .take(TOP_CLASSES)
                    .collect();
            }
            Err(error) => {
                tracing::warn!(model = model.id(), %error, "classification failed");
                result.error = Some(error.to_string());
            }
        }

        for (render_index, visualization) in self.plan.visualizations.iter().enumerate() {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(RunError::Cancelled);
            }
            let render = self.render(model, &frame, render_index, visualization, *done)?;
            for (panel_index, panel) in render.1.into_iter().enumerate() {
                if let Some(heatmap) = panel {
                    pending.push(PendingHeatmap {
                        model: model_index,
                        render: render_index,
                        panel: panel_index,
                        visualization: render_index,
                        ..heatmap
                    });
                }
            }
            result.renders.push(render.0);
            *done += 1;
            (self.progress)(*done as f64, self.total);
        }
        Ok(result)
    }

    /// Runs one plugin and converts its panels; heatmaps come back separately
    /// because their colors wait for the shared range.
    fn render(
        &self,
        model: &Arc<Model>,
        frame: &RgbaImage,
        index: usize,
        visualization: &PlannedVisualization,
        done: u64,
    ) -> Result<(RenderResult, Vec<Option<PendingHeatmap>>), RunError> {
        let plugin = &visualization.plugin;
        let span = tracing::info_span!("render", plugin = plugin.id(), model = model.id());
        let _entered = span.enter();
        let started = Instant::now();
        let progress = self.progress.clone();
        let total = self.total;
        let request = RenderRequest {
            plugin,
            model: model.clone(),
            frame: frame.clone(),
            settings: visualization.settings.clone(),
            seed: render_seed(self.plan.seed, self.index, model.id(), plugin.id()),
            progress: Box::new(move |step, steps| {
                let fraction = step as f64 / steps.max(1) as f64;
                progress(done as f64 + fraction, total);
            }),
            cancel: Some(self.cancel.clone()),
        };
        let output = self.sandbox.render(request);
        let duration_ms = started.elapsed().as_millis() as u64;
        let mut result = RenderResult {
            plugin: plugin.id().to_owned(),
            visualization: index,
            error: None,
            duration_ms,
            panels: Vec::new(),
        };
        let output = match output {
            Ok(output) => output,
            Err(crate::plugin::RenderError::Cancelled) => return Err(RunError::Cancelled),
            Err(error) => {
                tracing::warn!(%error, duration_ms, "render failed");
                result.error = Some(error.to_string());
                return Ok((result, Vec::new()));
            }
        };
        tracing::info!(duration_ms, model_images = output.images_used, "rendered");

        // The index keeps two visualizations of the same plugin apart.
        let dir = format!("i{}/{}/v{index}-{}", self.index, model.id(), plugin.id());
        let mut heatmaps = Vec::new();
        for (index, panel) in output.panels.into_iter().enumerate() {
            let title = panel.title;
            match panel.content {
                PanelContent::Heatmap(map) => {
                    let class_label = map
                        .class_index
                        .and_then(|c| model.labels.get(c as usize).cloned());
                    let scale = match map.scale {
                        HeatmapScale::Sequential => Scale::Sequential,
                        HeatmapScale::Diverging => Scale::Diverging,
                    };
                    let record = HeatmapRecord {
                        class_index: map.class_index,
                        class_label,
                        meaning: map.meaning,
                        scale: scale.as_str().to_owned(),
                        width: map.width,
                        height: map.height,
                        min: 0.0,
                        max: 0.0,
                        color_min: 0.0,
                        color_max: 0.0,
                        npy: format!("{dir}/panel{index}.npy"),
                        overlay: format!("{dir}/panel{index}-overlay.png"),
                        colored: format!("{dir}/panel{index}-map.png"),
                        colorbar: format!("colorbar-{}.png", scale.as_str()),
                        own: OwnScale {
                            color_min: 0.0,
                            color_max: 0.0,
                            overlay: format!("{dir}/panel{index}-overlay-own.png"),
                            colored: format!("{dir}/panel{index}-map-own.png"),
                        },
                    };
                    result.panels.push(PanelRecord::Heatmap {
                        title,
                        heatmap: Box::new(record),
                    });
                    heatmaps.push(Some(PendingHeatmap {
                        model: 0,
                        render: 0,
                        panel: index,
                        visualization: 0,
                        scale,
                        values: map.values,
                        width: map.width,
                        height: map.height,
                    }));
                }
                PanelContent::Image(image) => {
                    let path = format!("{dir}/panel{index}.png");
                    if let Some(rgba) = RgbaImage::from_raw(image.width, image.height, image.pixels)
                    {
                        self.writer.write_png(&path, &rgba)?;
                    }
                    result.panels.push(PanelRecord::Image { title, png: path });
                    heatmaps.push(None);
                }
                PanelContent::Scores(scores) => {
                    let scores = scores
                        .into_iter()
                        .map(|s| ClassScore {
                            index: s.index,
                            label: s.label,
                            logit: s.logit,
                            probability: s.probability,
                        })
                        .collect();
                    result.panels.push(PanelRecord::Scores { title, scores });
                    heatmaps.push(None);
                }
            }
        }
        Ok((result, heatmaps))
    }

    /// Colors every heatmap of the image, sharing one range among the maps of
    /// the same visualization, and writes their files.
    fn finish_heatmaps(
        &self,
        result: &mut ImageResult,
        pending: Vec<PendingHeatmap>,
        display: &RgbaImage,
        factor: f32,
    ) -> Result<(), RunError> {
        let mut ranges: BTreeMap<(usize, &'static str), ColorRange> = BTreeMap::new();
        for heatmap in &pending {
            let range = ColorRange::of(heatmap.scale, &heatmap.values);
            ranges
                .entry((heatmap.visualization, heatmap.scale.as_str()))
                .and_modify(|r| *r = r.union(range))
                .or_insert(range);
        }
        for scale in [Scale::Sequential, Scale::Diverging] {
            if pending.iter().any(|h| h.scale == scale) {
                let path = format!("colorbar-{}.png", scale.as_str());
                self.writer.write_png(&path, &render::colorbar(scale))?;
            }
        }

        for heatmap in pending {
            let model_result = &mut result.models[heatmap.model];
            let crop = model_result.crop;
            let Some(PanelRecord::Heatmap {
                heatmap: record, ..
            }) = model_result.renders[heatmap.render]
                .panels
                .get_mut(heatmap.panel)
            else {
                continue;
            };
            let own = ColorRange::extent(&heatmap.values);
            let shared = ranges[&(heatmap.visualization, heatmap.scale.as_str())];
            record.min = own.min;
            record.max = own.max;
            record.color_min = shared.min;
            record.color_max = shared.max;

            let npy =
                render::npy(&heatmap.values, heatmap.width, heatmap.height).map_err(|message| {
                    RunError::Write {
                        path: PathBuf::from(&record.npy),
                        message,
                    }
                })?;
            self.writer.write(&record.npy, &npy)?;
            let colored = render::colorize(
                &heatmap.values,
                heatmap.width,
                heatmap.height,
                heatmap.scale,
                shared,
            );
            self.writer.write_png(&record.colored, &colored)?;
            let overlay = render::overlay(display, factor, crop, &colored);
            self.writer.write_png(&record.overlay, &overlay)?;

            // The same map on its own range, for when the shared one
            // flattens it (maps of models whose logits differ in scale).
            let own_range = ColorRange::of(heatmap.scale, &heatmap.values);
            record.own.color_min = own_range.min;
            record.own.color_max = own_range.max;
            let colored = render::colorize(
                &heatmap.values,
                heatmap.width,
                heatmap.height,
                heatmap.scale,
                own_range,
            );
            self.writer.write_png(&record.own.colored, &colored)?;
            let overlay = render::overlay(display, factor, crop, &colored);
            self.writer.write_png(&record.own.overlay, &overlay)?;
        }
        Ok(())
    }
}

/// A seed per render, derived from the job's seed, so a render repeated with
/// the same job seed draws the same random numbers whatever else the job
/// contains.
fn render_seed(seed: u64, image: usize, model: &str, plugin: &str) -> u64 {
    let digest = Sha256::digest(format!("{seed}/{image}/{model}/{plugin}"));
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(bytes)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
