//! What a job asks for and what it produced: the request body of
//! `POST /api/jobs` and the result manifest written next to its files.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A job: every image explained by every model with every visualization.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Ids of uploaded images.
    pub images: Vec<String>,
    /// Ids of configured models.
    pub models: Vec<String>,
    /// Visualizations with their settings.
    pub visualizations: Vec<VisualizationRequest>,
    /// The seed of the host's random source; a random one is drawn and
    /// recorded when absent.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// One visualization of a job with the settings the user chose.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisualizationRequest {
    /// A plugin id, such as `occlusion`.
    pub plugin: String,
    /// Setting values by name; missing ones take the schema's default.
    /// Integers and floats are JSON numbers, booleans JSON booleans,
    /// choices strings, classes an index, a label or `null` for the
    /// plugin's default (usually the top classes), tensors a name or `null`
    /// for the plugin's default.
    #[serde(default)]
    pub settings: BTreeMap<String, serde_json::Value>,
}

/// The life of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    /// Every render ran; some may have failed, as the manifest records.
    Completed,
    /// The job could not run at all.
    Failed,
    Cancelled,
    /// The server stopped while the job was queued or running.
    Interrupted,
}

impl JobState {
    /// The name stored in the database and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Interrupted => "interrupted",
        }
    }

    /// Parses a name written by [`JobState::as_str`].
    pub fn parse(name: &str) -> Option<JobState> {
        Some(match name {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "completed" => JobState::Completed,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            "interrupted" => JobState::Interrupted,
            _ => return None,
        })
    }

    /// Whether the job will not change any more.
    pub fn is_final(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }
}

/// The record of a finished job, written as `manifest.json` in the job's
/// folder. Every file path in it is relative to that folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub job: String,
    /// The `picasso` version that ran the job.
    pub host_version: String,
    /// The WIT package the plugins were called through.
    pub wit_package: String,
    /// The seed of the host's random source.
    pub seed: u64,
    /// Seconds since the Unix epoch when the job started.
    pub started_unix: u64,
    pub models: Vec<ModelStamp>,
    pub plugins: Vec<PluginStamp>,
    pub images: Vec<ImageResult>,
}

impl Manifest {
    /// Counts renders that failed and images that could not be used, as a
    /// message for the job's record; `None` when everything ran.
    pub fn failure_summary(&self) -> Option<String> {
        let images_failed = self.images.iter().filter(|i| i.error.is_some()).count();
        let renders = self
            .images
            .iter()
            .flat_map(|i| &i.models)
            .flat_map(|m| &m.renders);
        let (total, failed) = renders.fold((0, 0), |(total, failed), render| {
            (total + 1, failed + usize::from(render.error.is_some()))
        });
        let mut parts = Vec::new();
        if images_failed > 0 {
            parts.push(format!(
                "{images_failed} of {} images could not be used",
                self.images.len()
            ));
        }
        if failed > 0 {
            parts.push(format!("{failed} of {total} renders failed"));
        }
        (!parts.is_empty()).then(|| format!("{}; the results list the errors", parts.join(", ")))
    }
}

/// Which model ran, exactly.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelStamp {
    pub id: String,
    pub name: String,
    /// SHA-256 of the ONNX file.
    pub content_hash: String,
}

/// Which plugin ran, exactly, with the settings after defaults were applied.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginStamp {
    pub id: String,
    pub version: String,
    pub title: String,
    /// SHA-256 of the `.wasm` file.
    pub content_hash: String,
    pub settings: BTreeMap<String, serde_json::Value>,
}

/// The results for one input image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageResult {
    pub image: String,
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// The photo as decoded (orientation applied), as PNG.
    pub photo: Option<String>,
    /// Why this image produced nothing, when it failed as a whole.
    pub error: Option<String>,
    pub models: Vec<ModelResult>,
}

/// One model's view of one image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelResult {
    pub model: String,
    /// The region of the photo that the model saw, in photo pixels.
    pub crop: CropRect,
    /// The model's input frame, as PNG.
    pub frame: Option<String>,
    /// The model's top classes for the image.
    pub top_classes: Vec<ClassScore>,
    pub error: Option<String>,
    pub renders: Vec<RenderResult>,
}

/// A rectangle in photo pixels.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CropRect {
    pub x: f32,
    pub y: f32,
    pub width: f32,
    pub height: f32,
}

/// A class with its score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScore {
    pub index: u32,
    pub label: String,
    pub logit: f32,
    pub probability: f32,
}

/// One plugin's render of one image with one model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenderResult {
    pub plugin: String,
    /// The visualization's index in the job's request, which tells apart
    /// two visualizations of the same plugin.
    pub visualization: usize,
    /// `None` when the render succeeded.
    pub error: Option<String>,
    pub duration_ms: u64,
    pub panels: Vec<PanelRecord>,
}

/// One panel of a render.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PanelRecord {
    Heatmap {
        title: String,
        #[serde(flatten)]
        heatmap: Box<HeatmapRecord>,
    },
    Image {
        title: String,
        /// The image, as PNG.
        png: String,
    },
    Scores {
        title: String,
        scores: Vec<ClassScore>,
    },
}

/// A heatmap's files and how it was colored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeatmapRecord {
    pub class_index: Option<u32>,
    pub class_label: Option<String>,
    /// What a value means, for the color bar.
    pub meaning: String,
    /// `sequential` or `diverging`.
    pub scale: String,
    /// The grid's size, in the model's input frame.
    pub width: u32,
    pub height: u32,
    /// The smallest and largest value of this map.
    pub min: f32,
    pub max: f32,
    /// The value range mapped onto the colormap, shared by the maps of the
    /// same visualization on the same image. It leaves out the most extreme
    /// 0.5% of values at each end, which take the end colors.
    pub color_min: f32,
    pub color_max: f32,
    /// The raw values as a `float32` NumPy array of shape `[height, width]`.
    pub npy: String,
    /// The heatmap blended over the photo, as PNG.
    pub overlay: String,
    /// The colored heatmap alone, in the model's input frame, as PNG.
    pub colored: String,
    /// The colormap from `color_min` (left) to `color_max` (right), as PNG.
    pub colorbar: String,
    /// The map colored on its own range instead of the shared one.
    pub own: OwnScale,
}

/// A heatmap colored on its own value range.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OwnScale {
    pub color_min: f32,
    pub color_max: f32,
    /// The heatmap blended over the photo, as PNG.
    pub overlay: String,
    /// The colored heatmap alone, in the model's input frame, as PNG.
    pub colored: String,
}
