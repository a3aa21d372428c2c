//! Heatmaps to pictures: colormaps, overlays on the photo, color bars and
//! raw arrays.
//!
//! Plugins return heatmaps in the model's input frame. The host maps them
//! back onto the photo by undoing the frame's crop and resize, so an overlay
//! lines up with what the user uploaded, and dims the parts of the photo the
//! model never saw.

use image::imageops::{self, FilterType};
use image::{Rgba, RgbaImage};

use crate::job::spec::CropRect;

/// The longest side of photos and overlays written with results. Larger
/// photos are scaled down: the overlays are for looking at, and the raw
/// arrays keep full precision.
pub const MAX_DISPLAY_SIDE: u32 = 1024;

/// How values map onto colors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// Low to high with a perceptually uniform map (viridis).
    Sequential,
    /// Negative to positive around zero, white at zero (red-blue).
    Diverging,
}

impl Scale {
    /// The name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Scale::Sequential => "sequential",
            Scale::Diverging => "diverging",
        }
    }
}

/// A value range for coloring.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ColorRange {
    pub min: f32,
    pub max: f32,
}

/// The share of values, at each end, that a color range may leave out.
/// Gradient maps are sparse: a handful of pixels can be a hundred times
/// larger than the rest, and a range spanning them paints everything else
/// in the lowest color. Values beyond the range take the end colors.
const OUTLIER_FRACTION: f64 = 0.005;

impl ColorRange {
    /// The exact extent of `values`.
    pub fn extent(values: &[f32]) -> ColorRange {
        let (min, max) = values
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        if min.is_finite() {
            ColorRange { min, max }
        } else {
            ColorRange { min: 0.0, max: 1.0 }
        }
    }

    /// The range for coloring `values` on this scale: from the 0.5th to the
    /// 99.5th percentile for a sequential scale, and symmetric around zero
    /// up to the 99.5th percentile of the magnitudes for a diverging one.
    pub fn of(scale: Scale, values: &[f32]) -> ColorRange {
        if values.is_empty() {
            return ColorRange { min: 0.0, max: 1.0 };
        }
        match scale {
            Scale::Sequential => {
                let mut sorted = values.to_vec();
                sorted.sort_by(f32::total_cmp);
                ColorRange {
                    min: percentile(&sorted, OUTLIER_FRACTION),
                    max: percentile(&sorted, 1.0 - OUTLIER_FRACTION),
                }
            }
            Scale::Diverging => {
                let mut magnitudes: Vec<f32> = values.iter().map(|v| v.abs()).collect();
                magnitudes.sort_by(f32::total_cmp);
                let extent = percentile(&magnitudes, 1.0 - OUTLIER_FRACTION);
                ColorRange {
                    min: -extent,
                    max: extent,
                }
            }
        }
    }

    /// The smallest range containing both.
    pub fn union(self, other: ColorRange) -> ColorRange {
        ColorRange {
            min: self.min.min(other.min),
            max: self.max.max(other.max),
        }
    }

    fn position(self, value: f32) -> f64 {
        if self.max > self.min {
            (((value - self.min) / (self.max - self.min)) as f64).clamp(0.0, 1.0)
        } else {
            0.5
        }
    }
}

/// The value at fraction `q` of a sorted slice, by nearest rank.
fn percentile(sorted: &[f32], q: f64) -> f32 {
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn color(scale: Scale, t: f64) -> Rgba<u8> {
    let c = match scale {
        Scale::Sequential => colorous::VIRIDIS.eval_continuous(t),
        // RdBu runs red to blue; negative values are blue.
        Scale::Diverging => colorous::RED_BLUE.eval_continuous(1.0 - t),
    };
    Rgba([c.r, c.g, c.b, 255])
}

/// Colors a `width` x `height` grid of `values`.
pub fn colorize(
    values: &[f32],
    width: u32,
    height: u32,
    scale: Scale,
    range: ColorRange,
) -> RgbaImage {
    RgbaImage::from_fn(width, height, |x, y| {
        let value = values[(y * width + x) as usize];
        color(scale, range.position(value))
    })
}

/// A horizontal strip of the colormap, low values on the left.
pub fn colorbar(scale: Scale) -> RgbaImage {
    let (width, height) = (256, 16);
    RgbaImage::from_fn(width, height, |x, _| {
        color(scale, x as f64 / (width - 1) as f64)
    })
}

/// The photo scaled to fit [`MAX_DISPLAY_SIDE`], with the factor applied.
pub fn display_photo(photo: &RgbaImage) -> (RgbaImage, f32) {
    let longest = photo.width().max(photo.height());
    if longest <= MAX_DISPLAY_SIDE {
        return (photo.clone(), 1.0);
    }
    let factor = MAX_DISPLAY_SIDE as f32 / longest as f32;
    let width = ((photo.width() as f32 * factor).round() as u32).max(1);
    let height = ((photo.height() as f32 * factor).round() as u32).max(1);
    (
        imageops::resize(photo, width, height, FilterType::Triangle),
        factor,
    )
}

/// Blends a colored heatmap over the region of the display photo that the
/// model saw, and dims the rest of the photo.
///
/// `crop` is in original photo pixels; `factor` scales it to the display
/// photo.
pub fn overlay(display: &RgbaImage, factor: f32, crop: CropRect, colored: &RgbaImage) -> RgbaImage {
    let mut out = display.clone();
    for pixel in out.pixels_mut() {
        // Outside the crop: the model did not see this; show it at 40%.
        for channel in &mut pixel.0[..3] {
            *channel = (*channel as f32 * 0.4) as u8;
        }
    }

    let x0 = (crop.x * factor).round().max(0.0) as u32;
    let y0 = (crop.y * factor).round().max(0.0) as u32;
    let width =
        ((crop.width * factor).round() as u32).clamp(1, display.width().saturating_sub(x0).max(1));
    let height = ((crop.height * factor).round() as u32)
        .clamp(1, display.height().saturating_sub(y0).max(1));
    let heat = imageops::resize(colored, width, height, FilterType::Triangle);

    // Half-transparent heat keeps the photo's structure visible under it.
    const ALPHA: f32 = 0.55;
    for (x, y, heat_pixel) in heat.enumerate_pixels() {
        let (px, py) = (x0 + x, y0 + y);
        if px >= out.width() || py >= out.height() {
            continue;
        }
        let photo_pixel = display.get_pixel(px, py);
        let mut blended = [255u8; 4];
        for ((out, photo), heat) in blended
            .iter_mut()
            .zip(photo_pixel.0)
            .zip(heat_pixel.0)
            .take(3)
        {
            let value = photo as f32 * (1.0 - ALPHA) + heat as f32 * ALPHA;
            *out = value.round().clamp(0.0, 255.0) as u8;
        }
        out.put_pixel(px, py, Rgba(blended));
    }
    out
}

/// Encodes an image as PNG.
///
/// # Errors
///
/// Only if the encoder fails, which for an in-memory RGBA buffer means a
/// bug.
pub fn png(image: &RgbaImage) -> Result<Vec<u8>, image::ImageError> {
    use image::ImageEncoder;
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};

    // A job writes several PNGs per heatmap. The fast deflate setting keeps
    // that a small part of a render's time, at the cost of somewhat larger
    // files than the default setting makes.
    let mut bytes = Vec::new();
    PngEncoder::new_with_quality(&mut bytes, CompressionType::Fast, FilterType::Adaptive)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgba8,
        )?;
    Ok(bytes)
}

/// Encodes a grid as a `float32` NumPy array of shape `[height, width]`.
///
/// # Errors
///
/// A grid whose length is not `width * height`.
pub fn npy(values: &[f32], width: u32, height: u32) -> Result<Vec<u8>, String> {
    use ndarray_npy::WriteNpyExt;
    let array = ndarray::Array2::from_shape_vec((height as usize, width as usize), values.to_vec())
        .map_err(|error| error.to_string())?;
    let mut bytes = Vec::new();
    array
        .write_npy(&mut bytes)
        .map_err(|error| error.to_string())?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diverging_range_is_symmetric() {
        let range = ColorRange::of(Scale::Diverging, &[-1.0, 3.0]);
        assert_eq!(
            range,
            ColorRange {
                min: -3.0,
                max: 3.0
            }
        );
    }

    #[test]
    fn sequential_range_leaves_out_rare_outliers() {
        let mut values = vec![1.0f32; 1000];
        values[0] = 500.0;
        let range = ColorRange::of(Scale::Sequential, &values);
        assert_eq!(
            range.max, 1.0,
            "one extreme pixel in 1000 does not set the scale"
        );
        assert_eq!(ColorRange::extent(&values).max, 500.0);
    }

    #[test]
    fn colorize_maps_extremes_to_ends_of_colormap() {
        let range = ColorRange { min: 0.0, max: 1.0 };
        let image = colorize(&[0.0, 1.0], 2, 1, Scale::Sequential, range);
        let low = colorous::VIRIDIS.eval_continuous(0.0);
        let high = colorous::VIRIDIS.eval_continuous(1.0);
        assert_eq!(image.get_pixel(0, 0).0[..3], [low.r, low.g, low.b]);
        assert_eq!(image.get_pixel(1, 0).0[..3], [high.r, high.g, high.b]);
    }

    #[test]
    fn overlay_dims_outside_crop_only() {
        let display = RgbaImage::from_pixel(10, 10, Rgba([200, 200, 200, 255]));
        let colored = RgbaImage::from_pixel(2, 2, Rgba([0, 0, 0, 255]));
        let crop = CropRect {
            x: 5.0,
            y: 0.0,
            width: 5.0,
            height: 10.0,
        };
        let out = overlay(&display, 1.0, crop, &colored);
        assert_eq!(
            out.get_pixel(0, 0).0[0],
            80,
            "outside the crop: 40% brightness"
        );
        assert_eq!(
            out.get_pixel(7, 5).0[0],
            90,
            "inside: blended with black heat"
        );
    }

    #[test]
    fn npy_has_header_and_data() {
        let bytes = npy(&[1.0, 2.0], 2, 1).expect("valid grid");
        assert!(bytes.starts_with(b"\x93NUMPY"));
        assert_eq!(&bytes[bytes.len() - 4..], &2.0f32.to_le_bytes());
    }

    #[test]
    fn display_photo_caps_longest_side() {
        let photo = RgbaImage::new(2048, 1024);
        let (display, factor) = display_photo(&photo);
        assert_eq!(display.dimensions(), (1024, 512));
        assert_eq!(factor, 0.5);
    }
}
