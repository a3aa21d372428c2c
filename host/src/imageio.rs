//! Decoding of uploaded images, with limits against hostile files.
//!
//! [`decode`] turns the bytes of an upload into an 8-bit RGBA
//! [`image::RgbaImage`] with the EXIF orientation applied, or an
//! [`ImageError`] that names the file and the limit it broke. The format is
//! detected from the bytes, never from the file name, and only the formats in
//! [`SUPPORTED_FORMATS`] are accepted.
//!
//! Three limits protect the server, checked in this order. The first is the
//! file size (`uploads.max_bytes`). The second is the pixel count read from
//! the header before any pixel is decoded (`uploads.max_pixels`), the guard
//! against decompression bombs, because a few kilobytes of PNG can claim
//! gigapixels. The third is [`image::Limits::max_alloc`] for the decoder's
//! own buffers.

use std::fmt;
use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbaImage};

use crate::config::UploadConfig;

/// The formats an upload may have, by their usual names.
pub const SUPPORTED_FORMATS: &str = "PNG, JPEG, WebP, GIF, BMP, TIFF";

/// A decoded upload.
#[derive(Debug, Clone)]
pub struct DecodedImage {
    /// The pixels, orientation applied, converted to 8-bit RGBA.
    pub rgba: RgbaImage,
    /// The format detected from the bytes, in lower case: `png`, `jpeg`,
    /// `webp`, `gif`, `bmp` or `tiff`.
    pub format: &'static str,
}

/// An upload that broke a limit or could not be decoded.
///
/// The message names the file when one was given with [`ImageError::named`].
/// Without a name it reads "the file" or "the image".
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImageError {
    #[error("{} is not an image in a supported format ({SUPPORTED_FORMATS})", Subject("file", .name))]
    UnsupportedFormat { name: Option<String> },
    #[error("{} {} (uploads.max_bytes)", Subject("file", .name), SizeClause(*.bytes, *.limit))]
    TooLarge {
        name: Option<String>,
        /// The whole size, or `None` when reading stopped at the limit.
        bytes: Option<u64>,
        limit: u64,
    },
    #[error(
        "{} is {width}x{height} = {} pixels; the limit is {limit} (uploads.max_pixels)",
        Subject("image", .name), u64::from(*.width) * u64::from(*.height)
    )]
    TooManyPixels {
        name: Option<String>,
        width: u32,
        height: u32,
        limit: u64,
    },
    #[error("{} is corrupt: {message}", Subject("image", .name))]
    Corrupt {
        name: Option<String>,
        message: String,
    },
}

impl ImageError {
    /// Returns the same error with the file name the user gave.
    #[must_use]
    pub fn named(mut self, file_name: &str) -> Self {
        let slot = match &mut self {
            ImageError::UnsupportedFormat { name }
            | ImageError::TooLarge { name, .. }
            | ImageError::TooManyPixels { name, .. }
            | ImageError::Corrupt { name, .. } => name,
        };
        *slot = Some(file_name.to_owned());
        self
    }
}

/// "file `x.png`" when the name is known, "the file" otherwise.
struct Subject<'a>(&'static str, &'a Option<String>);

impl fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(name) => write!(f, "{} `{name}`", self.0),
            None => write!(f, "the {}", self.0),
        }
    }
}

/// "is 40.2 MiB; the limit is 32 MiB", or "is larger than the limit of
/// 32 MiB" when the size is unknown.
struct SizeClause(Option<u64>, u64);

impl fmt::Display for SizeClause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(bytes) => write!(f, "is {}; the limit is {}", Mib(bytes), Mib(self.1)),
            None => write!(f, "is larger than the limit of {}", Mib(self.1)),
        }
    }
}

/// Formats a byte count for people: `32 MiB`, `40.2 MiB`, or `900 bytes`.
pub fn human_size(bytes: u64) -> String {
    Mib(bytes).to_string()
}

/// A byte count in MiB, or in bytes when it is below a tenth of one.
struct Mib(u64);

impl fmt::Display for Mib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: u64 = 1024 * 1024;
        if self.0.is_multiple_of(MIB) {
            write!(f, "{} MiB", self.0 / MIB)
        } else if self.0 < MIB / 10 {
            write!(f, "{} bytes", self.0)
        } else {
            write!(f, "{:.1} MiB", self.0 as f64 / MIB as f64)
        }
    }
}

/// Checks a size in bytes against `uploads.max_bytes`.
///
/// # Errors
///
/// [`ImageError::TooLarge`] when `bytes` exceeds the limit.
pub fn check_size(bytes: u64, limits: &UploadConfig) -> Result<(), ImageError> {
    if bytes > limits.max_bytes {
        return Err(ImageError::TooLarge {
            name: None,
            bytes: Some(bytes),
            limit: limits.max_bytes,
        });
    }
    Ok(())
}

/// Builds the error for an upload whose reading stopped once it passed
/// `uploads.max_bytes`, so its whole size is unknown.
pub fn larger_than_limit(limits: &UploadConfig) -> ImageError {
    ImageError::TooLarge {
        name: None,
        bytes: None,
        limit: limits.max_bytes,
    }
}

/// Decodes an upload, checking the limits in `limits` before the pixels.
///
/// # Errors
///
/// [`ImageError::TooLarge`], [`ImageError::UnsupportedFormat`],
/// [`ImageError::TooManyPixels`] or [`ImageError::Corrupt`], without a file
/// name: add it with [`ImageError::named`].
pub fn decode(bytes: &[u8], limits: &UploadConfig) -> Result<DecodedImage, ImageError> {
    check_size(bytes.len() as u64, limits)?;

    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|error| corrupt(error.to_string()))?;
    let (format, format_name) = match reader.format().and_then(supported) {
        Some(found) => found,
        None => return Err(ImageError::UnsupportedFormat { name: None }),
    };
    reader.set_format(format);
    reader.limits(decoder_limits(limits));

    let mut decoder = reader.into_decoder().map_err(decoding_error)?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(ImageError::TooManyPixels {
            name: None,
            width,
            height,
            limit: limits.max_pixels,
        });
    }

    // A broken EXIF block should not cost the user an image whose pixels
    // are fine, so the pixels are kept as stored and a warning is logged.
    let orientation = decoder.orientation().unwrap_or_else(|error| {
        tracing::warn!(%error, "ignoring unreadable EXIF orientation");
        image::metadata::Orientation::NoTransforms
    });
    let mut image = DynamicImage::from_decoder(decoder).map_err(decoding_error)?;
    image.apply_orientation(orientation);

    Ok(DecodedImage {
        rgba: image.into_rgba8(),
        format: format_name,
    })
}

fn supported(format: ImageFormat) -> Option<(ImageFormat, &'static str)> {
    let name = match format {
        ImageFormat::Png => "png",
        ImageFormat::Jpeg => "jpeg",
        ImageFormat::WebP => "webp",
        ImageFormat::Gif => "gif",
        ImageFormat::Bmp => "bmp",
        ImageFormat::Tiff => "tiff",
        _ => return None,
    };
    Some((format, name))
}

/// Limits for the decoder's own allocations. The pixel limit is checked
/// separately from the header, so this only has to leave room for the
/// largest accepted image at 16 bits per channel (8 bytes per RGBA pixel)
/// plus the codec's working buffers.
fn decoder_limits(limits: &UploadConfig) -> Limits {
    const WORKING_BUFFERS: u64 = 64 * 1024 * 1024;
    let mut decoder_limits = Limits::default();
    decoder_limits.max_alloc = Some(
        limits
            .max_pixels
            .saturating_mul(8)
            .saturating_add(WORKING_BUFFERS),
    );
    decoder_limits
}

fn decoding_error(error: image::ImageError) -> ImageError {
    match error {
        image::ImageError::Unsupported(_) => ImageError::UnsupportedFormat { name: None },
        other => corrupt(other.to_string()),
    }
}

fn corrupt(message: String) -> ImageError {
    ImageError::Corrupt {
        name: None,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageEncoder, Luma, LumaA, Rgb, Rgba};

    fn limits() -> UploadConfig {
        UploadConfig::default()
    }

    fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Cursor::new(Vec::new());
        image
            .write_to(&mut bytes, format)
            .expect("encode test image");
        bytes.into_inner()
    }

    /// Builds a 16x8 image with a red left half and a blue right half.
    fn red_blue() -> RgbaImage {
        RgbaImage::from_fn(16, 8, |x, _| {
            if x < 8 {
                Rgba([255, 0, 0, 255])
            } else {
                Rgba([0, 0, 255, 255])
            }
        })
    }

    fn is_reddish(pixel: &Rgba<u8>) -> bool {
        pixel[0] > 200 && pixel[2] < 60
    }

    fn is_bluish(pixel: &Rgba<u8>) -> bool {
        pixel[2] > 200 && pixel[0] < 60
    }

    #[test]
    fn rgba_png_round_trips() {
        let original = red_blue();
        let bytes = encode(
            &DynamicImage::ImageRgba8(original.clone()),
            ImageFormat::Png,
        );
        let decoded = decode(&bytes, &limits()).expect("RGBA PNG decodes");
        assert_eq!(decoded.format, "png");
        assert_eq!(decoded.rgba, original, "PNG is lossless");
    }

    #[test]
    fn grayscale_png_becomes_opaque_rgba() {
        let gray = image::GrayImage::from_fn(5, 3, |x, y| Luma([(x * 40 + y) as u8]));
        let bytes = encode(&DynamicImage::ImageLuma8(gray), ImageFormat::Png);
        let decoded = decode(&bytes, &limits()).expect("gray PNG decodes");
        assert_eq!(decoded.rgba.dimensions(), (5, 3));
        assert_eq!(decoded.rgba.get_pixel(2, 1), &Rgba([81, 81, 81, 255]));
    }

    #[test]
    fn gray_alpha_png_keeps_alpha() {
        let image = image::GrayAlphaImage::from_fn(4, 4, |x, _| LumaA([200, (x * 60) as u8]));
        let bytes = encode(&DynamicImage::ImageLumaA8(image), ImageFormat::Png);
        let decoded = decode(&bytes, &limits()).expect("gray+alpha PNG decodes");
        assert_eq!(decoded.rgba.get_pixel(3, 0), &Rgba([200, 200, 200, 180]));
    }

    #[test]
    fn sixteen_bit_png_scales_to_eight_bits() {
        let image = image::ImageBuffer::<Rgb<u16>, Vec<u16>>::from_fn(3, 2, |x, _| {
            Rgb([65535, (x * 32896) as u16, 0])
        });
        let bytes = encode(&DynamicImage::ImageRgb16(image), ImageFormat::Png);
        let decoded = decode(&bytes, &limits()).expect("16-bit PNG decodes");
        assert_eq!(decoded.format, "png");
        assert_eq!(decoded.rgba.get_pixel(0, 0), &Rgba([255, 0, 0, 255]));
        assert_eq!(decoded.rgba.get_pixel(1, 0), &Rgba([255, 128, 0, 255]));
    }

    #[test]
    fn webp_decodes() {
        let original = red_blue();
        let mut bytes = Vec::new();
        image::codecs::webp::WebPEncoder::new_lossless(&mut bytes)
            .write_image(original.as_raw(), 16, 8, image::ExtendedColorType::Rgba8)
            .expect("encode WebP");
        let decoded = decode(&bytes, &limits()).expect("WebP decodes");
        assert_eq!(decoded.format, "webp");
        assert_eq!(decoded.rgba, original, "lossless WebP is exact");
    }

    #[test]
    fn gif_bmp_and_tiff_decode() {
        let image = DynamicImage::ImageRgba8(red_blue());
        for (format, name) in [
            (ImageFormat::Gif, "gif"),
            (ImageFormat::Bmp, "bmp"),
            (ImageFormat::Tiff, "tiff"),
        ] {
            let bytes = encode(&image, format);
            let decoded = decode(&bytes, &limits()).expect(name);
            assert_eq!(decoded.format, name);
            assert_eq!(decoded.rgba.dimensions(), (16, 8), "{name} keeps its size");
        }
    }

    /// Inserts an EXIF APP1 segment holding only an orientation tag right
    /// after a JPEG's start-of-image marker.
    fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut tiff = Vec::new();
        tiff.extend_from_slice(b"MM\0\x2a"); // big-endian TIFF header
        tiff.extend_from_slice(&8u32.to_be_bytes()); // offset of IFD0
        tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
        tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
        tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_be_bytes()); // one value
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0]); // pad the value to 4 bytes
        tiff.extend_from_slice(&0u32.to_be_bytes()); // no IFD1

        let mut payload = b"Exif\0\0".to_vec();
        payload.extend_from_slice(&tiff);
        let length = u16::try_from(payload.len() + 2).expect("small segment");

        let mut out = jpeg[..2].to_vec(); // SOI
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(&payload);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    #[test]
    fn exif_rotated_jpeg_is_turned_upright() {
        let rgb = DynamicImage::ImageRgba8(red_blue()).into_rgb8();
        let jpeg = encode(&DynamicImage::ImageRgb8(rgb), ImageFormat::Jpeg);
        // EXIF orientation 6: the stored pixels must be turned 90 degrees
        // clockwise for display, so the left (red) half ends up on top.
        let rotated = with_exif_orientation(&jpeg, 6);
        let decoded = decode(&rotated, &limits()).expect("EXIF JPEG decodes");
        assert_eq!(decoded.format, "jpeg");
        assert_eq!(decoded.rgba.dimensions(), (8, 16), "width and height swap");
        assert!(
            is_reddish(decoded.rgba.get_pixel(4, 2)),
            "top is red: {:?}",
            decoded.rgba.get_pixel(4, 2)
        );
        assert!(
            is_bluish(decoded.rgba.get_pixel(4, 13)),
            "bottom is blue: {:?}",
            decoded.rgba.get_pixel(4, 13)
        );

        let plain = decode(&jpeg, &limits()).expect("plain JPEG decodes");
        assert_eq!(plain.rgba.dimensions(), (16, 8), "no EXIF, no rotation");
    }

    #[test]
    fn text_file_is_not_an_image() {
        let error = decode(b"hello, this is text", &limits())
            .expect_err("text is rejected")
            .named("x.txt");
        assert_eq!(
            error.to_string(),
            "file `x.txt` is not an image in a supported format \
             (PNG, JPEG, WebP, GIF, BMP, TIFF)"
        );
    }

    #[test]
    fn unsupported_image_format_is_rejected() {
        // A Windows icon header: an image, but not a supported format.
        let ico = [0u8, 0, 1, 0, 1, 0, 16, 16, 0, 0, 1, 0, 32, 0];
        let error = decode(&ico, &limits()).expect_err("ICO is rejected");
        assert!(
            matches!(error, ImageError::UnsupportedFormat { .. }),
            "{error}"
        );
    }

    #[test]
    fn truncated_png_is_corrupt() {
        let noise = RgbaImage::from_fn(64, 64, |x, y| {
            Rgba([(x * 7 + y * 13) as u8, (x * y) as u8, (x ^ y) as u8, 255])
        });
        let bytes = encode(&DynamicImage::ImageRgba8(noise), ImageFormat::Png);
        let truncated = &bytes[..bytes.len() / 2];
        let error = decode(truncated, &limits())
            .expect_err("half a PNG is rejected")
            .named("z.png");
        assert!(matches!(error, ImageError::Corrupt { .. }), "{error}");
        assert!(
            error.to_string().starts_with("image `z.png` is corrupt: "),
            "{error}"
        );
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                let mask = (crc & 1).wrapping_neg();
                crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
            }
        }
        !crc
    }

    fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut chunk = u32::try_from(data.len())
            .expect("small chunk")
            .to_be_bytes()
            .to_vec();
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        chunk.extend_from_slice(&body);
        chunk.extend_from_slice(&crc32(&body).to_be_bytes());
        chunk
    }

    /// Builds a PNG of a few dozen bytes whose header claims 20000x20000
    /// pixels.
    fn bomb_header() -> Vec<u8> {
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&20_000u32.to_be_bytes());
        ihdr.extend_from_slice(&20_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 6, 0, 0, 0]); // 8-bit RGBA, no interlace
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend(png_chunk(b"IHDR", &ihdr));
        png.extend(png_chunk(
            b"IDAT",
            &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        ));
        png.extend(png_chunk(b"IEND", &[]));
        png
    }

    #[test]
    fn bomb_header_is_rejected_before_decoding() {
        let error = decode(&bomb_header(), &limits())
            .expect_err("20000x20000 exceeds the default limit")
            .named("x.png");
        assert_eq!(
            error.to_string(),
            "image `x.png` is 20000x20000 = 400000000 pixels; \
             the limit is 50000000 (uploads.max_pixels)"
        );
    }

    #[test]
    fn pixel_limit_applies_to_real_images() {
        let bytes = encode(&DynamicImage::ImageRgba8(red_blue()), ImageFormat::Png);
        let tight = UploadConfig {
            max_pixels: 127,
            ..limits()
        };
        let error = decode(&bytes, &tight).expect_err("128 pixels exceed 127");
        assert!(
            matches!(
                error,
                ImageError::TooManyPixels {
                    width: 16,
                    height: 8,
                    ..
                }
            ),
            "{error}"
        );
        let exact = UploadConfig {
            max_pixels: 128,
            ..limits()
        };
        decode(&bytes, &exact).expect("128 pixels fit a limit of 128");
    }

    #[test]
    fn size_limit_names_file_and_sizes() {
        let tight = UploadConfig {
            max_bytes: 32 * 1024 * 1024,
            ..limits()
        };
        let error = check_size(42_152_346, &tight)
            .expect_err("40.2 MiB exceed 32 MiB")
            .named("y.jpg");
        assert_eq!(
            error.to_string(),
            "file `y.jpg` is 40.2 MiB; the limit is 32 MiB (uploads.max_bytes)"
        );
        let partial = larger_than_limit(&tight).named("y.jpg");
        assert_eq!(
            partial.to_string(),
            "file `y.jpg` is larger than the limit of 32 MiB (uploads.max_bytes)"
        );

        let small = UploadConfig {
            max_bytes: 10,
            ..limits()
        };
        let bytes = encode(&DynamicImage::ImageRgba8(red_blue()), ImageFormat::Png);
        let error = decode(&bytes, &small).expect_err("PNG larger than 10 bytes");
        assert!(matches!(error, ImageError::TooLarge { .. }), "{error}");
    }

    #[test]
    fn empty_upload_is_not_an_image() {
        let error = decode(&[], &limits()).expect_err("empty file");
        assert!(
            matches!(error, ImageError::UnsupportedFormat { name: None }),
            "{error}"
        );
        assert!(error.to_string().starts_with("the file is not an image"));
    }
}
