//! From a photo to the model's input tensor: framing (resize and crop) and
//! normalization.
//!
//! Framing and normalization are separate steps because plugins work in the
//! frame: they receive the framed image, edit its pixels (occlusion, noise,
//! baselines) and send frames back for normalization.

use image::RgbaImage;
use image::imageops::{self, FilterType};

use super::declaration::{ColorOrder, Layout, ModelDeclaration, ResizeMode};
use crate::job::spec::CropRect;

/// Cuts and scales a photo to the model's input frame. Returns the frame and
/// the region of the photo it shows.
///
/// The crop happens before the resize, so the photo is resampled once, with
/// a triangle (bilinear) filter.
pub fn frame(declaration: &ModelDeclaration, photo: &RgbaImage) -> (RgbaImage, CropRect) {
    let (width, height) = (declaration.input.width, declaration.input.height);
    let crop = crop_rect(declaration, photo.width(), photo.height());

    let x = crop.x.round() as u32;
    let y = crop.y.round() as u32;
    let crop_width = (crop.width.round() as u32).clamp(1, photo.width() - x.min(photo.width() - 1));
    let crop_height =
        (crop.height.round() as u32).clamp(1, photo.height() - y.min(photo.height() - 1));
    let view = imageops::crop_imm(photo, x, y, crop_width, crop_height);

    let framed = if crop_width == width && crop_height == height {
        view.to_image()
    } else {
        imageops::resize(&*view, width, height, FilterType::Triangle)
    };
    let used = CropRect {
        x: x as f32,
        y: y as f32,
        width: crop_width as f32,
        height: crop_height as f32,
    };
    (framed, used)
}

/// The region of a `photo_width` x `photo_height` photo that the model sees.
pub fn crop_rect(declaration: &ModelDeclaration, photo_width: u32, photo_height: u32) -> CropRect {
    let input = &declaration.input;
    let (pw, ph) = (photo_width as f32, photo_height as f32);
    match input.resize {
        ResizeMode::Stretch => CropRect {
            x: 0.0,
            y: 0.0,
            width: pw,
            height: ph,
        },
        ResizeMode::CenterCrop => {
            let shorter = input
                .resize_shorter
                .unwrap_or(input.width.min(input.height)) as f32;
            let scale = shorter / pw.min(ph);
            let width = (input.width as f32 / scale).min(pw);
            let height = (input.height as f32 / scale).min(ph);
            CropRect {
                x: (pw - width) / 2.0,
                y: (ph - height) / 2.0,
                width,
                height,
            }
        }
    }
}

/// Normalizes frames that are already at the model's input size into one
/// batch tensor, returned with its shape. Alpha is ignored.
///
/// # Panics
///
/// Never for frames of the input size; callers check sizes first.
pub fn normalize(declaration: &ModelDeclaration, frames: &[&RgbaImage]) -> (Vec<usize>, Vec<f32>) {
    let input = &declaration.input;
    let (width, height) = (input.width as usize, input.height as usize);
    let channels = declaration.channels() as usize;
    let (mean, std) = declaration.normalization();
    let [low, high] = input.range;
    let step = (high - low) / 255.0;

    // Precomputing the 256 possible values per channel makes the inner loop
    // a table lookup.
    let tables: Vec<[f32; 256]> = (0..channels)
        .map(|c| std::array::from_fn(|p| ((low + p as f32 * step) - mean[c]) / std[c]))
        .collect();

    let plane = width * height;
    let mut data = vec![0.0f32; frames.len() * channels * plane];
    for (frame, item) in frames.iter().zip(data.chunks_exact_mut(channels * plane)) {
        let pixels = frame.as_raw().chunks_exact(4);
        // One pass per layout and color order keeps the branches out of the
        // per-pixel loop, which runs for every image a plugin sends.
        match (input.layout, input.color) {
            // One channel is laid out the same in both layouts.
            (_, ColorOrder::Gray) => {
                for (out, px) in item.iter_mut().zip(pixels) {
                    *out = tables[0][luma(px[0], px[1], px[2]) as usize];
                }
            }
            (Layout::Nchw, color) => {
                for (c, out_plane) in item.chunks_exact_mut(plane).enumerate() {
                    let source = source_channel(color, c);
                    for (out, px) in out_plane.iter_mut().zip(pixels.clone()) {
                        *out = tables[c][px[source] as usize];
                    }
                }
            }
            (Layout::Nhwc, color) => {
                for (out, px) in item.chunks_exact_mut(channels).zip(pixels) {
                    for (c, value) in out.iter_mut().enumerate() {
                        *value = tables[c][px[source_channel(color, c)] as usize];
                    }
                }
            }
        }
    }

    let shape = match input.layout {
        Layout::Nchw => vec![frames.len(), channels, height, width],
        Layout::Nhwc => vec![frames.len(), height, width, channels],
    };
    (shape, data)
}

/// The RGBA byte that feeds model channel `c`.
fn source_channel(color: ColorOrder, c: usize) -> usize {
    match color {
        ColorOrder::Bgr => 2 - c,
        ColorOrder::Rgb | ColorOrder::Gray => c,
    }
}

/// ITU-R BT.709 luma, the weights `image`'s `to_luma8` uses and the model
/// scripts in `models/` train with.
fn luma(r: u8, g: u8, b: u8) -> u8 {
    let value = (r as u32 * 2126 + g as u32 * 7152 + b as u32 * 722 + 5000) / 10000;
    value.min(255) as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::declaration::{InputDeclaration, OutputDeclaration, OutputKind};

    fn declaration(resize: ResizeMode, shorter: Option<u32>) -> ModelDeclaration {
        ModelDeclaration {
            id: "m".into(),
            name: "m".into(),
            onnx: "m.onnx".into(),
            labels: "l.txt".into(),
            input: InputDeclaration {
                name: "input".into(),
                layout: Layout::Nchw,
                width: 4,
                height: 4,
                color: ColorOrder::Rgb,
                range: [0.0, 255.0],
                mean: vec![127.0],
                std: vec![128.0],
                resize,
                resize_shorter: shorter,
            },
            output: OutputDeclaration {
                name: "logits".into(),
                kind: OutputKind::Logits,
            },
        }
    }

    #[test]
    fn center_crop_keeps_aspect_ratio() {
        let d = declaration(ResizeMode::CenterCrop, Some(8));
        let crop = crop_rect(&d, 40, 20);
        assert_eq!(crop.height, 10.0, "4 of 8 rows of the scaled photo");
        assert_eq!(crop.width, 10.0);
        assert_eq!(crop.x, 15.0);
        assert_eq!(crop.y, 5.0);
    }

    #[test]
    fn stretch_uses_whole_photo() {
        let d = declaration(ResizeMode::Stretch, None);
        let crop = crop_rect(&d, 30, 10);
        assert_eq!(
            (crop.x, crop.y, crop.width, crop.height),
            (0.0, 0.0, 30.0, 10.0)
        );
    }

    #[test]
    fn frame_of_input_size_is_unchanged() {
        let d = declaration(ResizeMode::CenterCrop, None);
        let photo = RgbaImage::from_fn(4, 4, |x, y| image::Rgba([x as u8, y as u8, 7, 255]));
        let (framed, crop) = frame(&d, &photo);
        assert_eq!(framed, photo);
        assert_eq!(crop.width, 4.0);
    }

    #[test]
    fn normalize_orders_channels_by_layout() {
        let mut d = declaration(ResizeMode::Stretch, None);
        let photo = RgbaImage::from_fn(4, 4, |_, _| image::Rgba([255, 127, 0, 255]));
        let (shape, data) = normalize(&d, &[&photo]);
        assert_eq!(shape, vec![1, 3, 4, 4]);
        assert_eq!(data[0], 1.0, "red plane first");
        assert_eq!(data[16], 0.0, "green plane second");
        assert_eq!(data[32], -127.0 / 128.0);

        d.input.layout = Layout::Nhwc;
        let (shape, data) = normalize(&d, &[&photo]);
        assert_eq!(shape, vec![1, 4, 4, 3]);
        assert_eq!(&data[..3], &[1.0, 0.0, -127.0 / 128.0]);
    }

    #[test]
    fn gray_uses_luma() {
        let mut d = declaration(ResizeMode::Stretch, None);
        d.input.color = ColorOrder::Gray;
        d.input.range = [0.0, 1.0];
        d.input.mean = vec![0.0];
        d.input.std = vec![1.0];
        let photo = RgbaImage::from_fn(4, 4, |_, _| image::Rgba([255, 255, 255, 255]));
        let (shape, data) = normalize(&d, &[&photo]);
        assert_eq!(shape, vec![1, 1, 4, 4]);
        assert!((data[0] - 1.0).abs() < 1e-6);
    }
}
