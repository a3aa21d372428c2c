//! The `models/<id>.toml` files that declare a model and its preprocessing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A model as declared in its TOML file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelDeclaration {
    /// The identifier used in the API and on the command line.
    pub id: String,
    /// The human-readable name.
    pub name: String,
    /// The ONNX file, relative to the declaration.
    pub onnx: PathBuf,
    /// The labels file, one label per line in output order, relative to the
    /// declaration.
    pub labels: PathBuf,
    pub input: InputDeclaration,
    pub output: OutputDeclaration,
}

/// How an image becomes the model's input tensor.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct InputDeclaration {
    /// The ONNX input tensor.
    pub name: String,
    pub layout: Layout,
    pub width: u32,
    pub height: u32,
    pub color: ColorOrder,
    /// The range that pixel values 0..=255 are mapped onto linearly before
    /// `mean` and `std` apply.
    pub range: [f32; 2],
    /// Subtracted per channel after the range mapping.
    pub mean: Vec<f32>,
    /// Divides per channel after `mean`.
    pub std: Vec<f32>,
    pub resize: ResizeMode,
    /// With `center-crop`, the length the shorter side is scaled to before
    /// the crop; the crop's own shorter side when absent.
    #[serde(default)]
    pub resize_shorter: Option<u32>,
}

/// The memory order of a 4-D image tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    #[serde(rename = "NCHW")]
    Nchw,
    #[serde(rename = "NHWC")]
    Nhwc,
}

/// The channels the model expects, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ColorOrder {
    #[serde(rename = "RGB")]
    Rgb,
    #[serde(rename = "BGR")]
    Bgr,
    /// One channel: the luma of the RGB pixel (ITU-R BT.709 weights).
    #[serde(rename = "GRAY")]
    Gray,
}

/// How a photo of any size becomes the model's input frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeMode {
    /// Scale each axis to the input size, ignoring the aspect ratio.
    Stretch,
    /// Scale the shorter side, then cut the input size out of the center.
    CenterCrop,
}

/// The tensor the model's scores are read from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputDeclaration {
    /// The ONNX output tensor.
    pub name: String,
    pub kind: OutputKind,
}

/// What the model's output contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    Logits,
    Probabilities,
}

/// Why a model declaration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DeclarationError {
    #[error("cannot read model declaration `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid model declaration `{path}`: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl ModelDeclaration {
    /// Reads and checks a declaration, resolving its file paths against the
    /// folder it is in.
    ///
    /// # Errors
    ///
    /// An unreadable file, invalid TOML, or values that contradict each
    /// other; the message names the key and the fix.
    pub fn load(path: &Path) -> Result<ModelDeclaration, DeclarationError> {
        let text = std::fs::read_to_string(path).map_err(|source| DeclarationError::Read {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |message: String| DeclarationError::Invalid {
            path: path.to_owned(),
            message,
        };
        let mut declaration: ModelDeclaration =
            toml::from_str(&text).map_err(|error| invalid(error.to_string()))?;
        declaration.check().map_err(invalid)?;

        let base = path.parent().unwrap_or(Path::new("."));
        declaration.onnx = base.join(&declaration.onnx);
        declaration.labels = base.join(&declaration.labels);
        Ok(declaration)
    }

    fn check(&self) -> Result<(), String> {
        let id_ok = !self.id.is_empty()
            && self
                .id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !id_ok {
            return Err(format!(
                "`id` is `{}`; use lowercase letters, digits and `-`",
                self.id
            ));
        }
        let input = &self.input;
        if input.width == 0 || input.height == 0 || input.width > 4096 || input.height > 4096 {
            return Err(format!(
                "`input.width` x `input.height` is {}x{}; use sizes from 1 to 4096",
                input.width, input.height
            ));
        }
        let channels = self.channels();
        for (key, values) in [("input.mean", &input.mean), ("input.std", &input.std)] {
            if values.len() != channels as usize && values.len() != 1 {
                return Err(format!(
                    "`{key}` has {} values; give 1 or {channels} (one per channel of `{:?}`)",
                    values.len(),
                    input.color
                ));
            }
        }
        if input.std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
            return Err(
                "`input.std` contains 0 or a non-finite value; every entry must be a \
                        non-zero number"
                    .to_owned(),
            );
        }
        if input.range[0] >= input.range[1] {
            return Err(format!(
                "`input.range` is {:?}; the first bound must be below the second, as in [0.0, 1.0]",
                input.range
            ));
        }
        if input.resize == ResizeMode::Stretch && input.resize_shorter.is_some() {
            return Err(
                "`input.resize-shorter` only applies to `resize = \"center-crop\"`; \
                        remove it"
                    .to_owned(),
            );
        }
        if let Some(shorter) = input.resize_shorter
            && shorter < input.width.min(input.height)
        {
            return Err(format!(
                "`input.resize-shorter` is {shorter}, smaller than the {}x{} crop; use at \
                 least {}",
                input.width,
                input.height,
                input.width.min(input.height)
            ));
        }
        Ok(())
    }

    /// The number of color channels of the input: 1 or 3.
    pub fn channels(&self) -> u32 {
        match self.input.color {
            ColorOrder::Gray => 1,
            ColorOrder::Rgb | ColorOrder::Bgr => 3,
        }
    }

    /// The per-channel mean and std, expanded to one value per channel.
    pub fn normalization(&self) -> (Vec<f32>, Vec<f32>) {
        let channels = self.channels() as usize;
        let expand = |values: &[f32]| match values {
            [single] => vec![*single; channels],
            many => many.to_vec(),
        };
        (expand(&self.input.mean), expand(&self.input.std))
    }

    /// The mean of each channel in 0..=255 pixel units: the color that
    /// normalizes to zero.
    pub fn mean_pixel(&self) -> Vec<f32> {
        let [low, high] = self.input.range;
        let (mean, _) = self.normalization();
        mean.iter()
            .map(|m| ((m - low) / (high - low) * 255.0).clamp(0.0, 255.0))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EFFICIENTNET: &str = r#"
id = "efficientnet-lite0"
name = "EfficientNet-Lite0"
onnx = "e.onnx"
labels = "l.txt"

[input]
name = "input"
layout = "NCHW"
width = 224
height = 224
color = "RGB"
range = [0.0, 255.0]
mean = [127.0, 127.0, 127.0]
std = [128.0, 128.0, 128.0]
resize = "center-crop"
resize-shorter = 256

[output]
name = "logits"
kind = "logits"
"#;

    fn load(text: &str) -> Result<ModelDeclaration, DeclarationError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.toml");
        std::fs::write(&path, text).expect("write");
        ModelDeclaration::load(&path)
    }

    #[test]
    fn declaration_loads_and_resolves_paths() {
        let declaration = load(EFFICIENTNET).expect("valid declaration");
        assert!(declaration.onnx.ends_with("e.onnx"));
        assert!(declaration.onnx.is_absolute());
        assert_eq!(declaration.input.layout, Layout::Nchw);
        assert_eq!(declaration.input.resize_shorter, Some(256));
        assert_eq!(declaration.mean_pixel(), vec![127.0; 3]);
    }

    #[test]
    fn wrong_mean_count_names_key() {
        let text = EFFICIENTNET.replace("mean = [127.0, 127.0, 127.0]", "mean = [1.0, 2.0]");
        let error = load(&text).expect_err("two means for RGB");
        assert!(error.to_string().contains("input.mean"), "{error}");
    }

    #[test]
    fn zero_std_is_rejected() {
        let text = EFFICIENTNET.replace("std = [128.0, 128.0, 128.0]", "std = [0.0]");
        let error = load(&text).expect_err("zero std");
        assert!(error.to_string().contains("input.std"), "{error}");
    }

    #[test]
    fn unknown_layout_is_rejected() {
        let text = EFFICIENTNET.replace("\"NCHW\"", "\"CHW\"");
        let error = load(&text).expect_err("bad layout");
        assert!(error.to_string().contains("CHW"), "{error}");
    }

    #[test]
    fn gray_mean_pixel_uses_range() {
        let text = EFFICIENTNET
            .replace("color = \"RGB\"", "color = \"GRAY\"")
            .replace("range = [0.0, 255.0]", "range = [0.0, 1.0]")
            .replace("mean = [127.0, 127.0, 127.0]", "mean = [0.5]")
            .replace("std = [128.0, 128.0, 128.0]", "std = [0.25]");
        let declaration = load(&text).expect("valid gray declaration");
        assert_eq!(declaration.channels(), 1);
        assert_eq!(declaration.mean_pixel(), vec![127.5]);
    }
}
