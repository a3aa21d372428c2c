//! A blur of RGBA images, for example to build a baseline that keeps an
//! image's colors but none of its detail.

use crate::Image;

/// The number of box passes of [`Image::blurred`]. By the central limit
/// theorem three passes are already close to a Gaussian.
const PASSES: usize = 3;

impl Image {
    /// Returns a blurred copy of the image: three passes of a box filter of
    /// `2 * radius + 1` pixels, along rows and then columns, which
    /// approximates a Gaussian blur with a standard deviation of
    /// `sqrt(radius * (radius + 1))` pixels. Pixels beyond the edges repeat
    /// the edge pixel. Red, green and blue are blurred, alpha is kept, and a
    /// radius of 0 returns the image unchanged.
    ///
    /// The image must be well formed ([`Image::check`]); the SDK checks the
    /// input of `render` before calling the plugin.
    pub fn blurred(&self, radius: u32) -> Image {
        let (width, height) = (self.width as usize, self.height as usize);
        if radius == 0 || width == 0 || height == 0 {
            return self.clone();
        }

        let mut blurred = self.clone();
        for channel in 0..3 {
            let mut plane: Vec<f32> = self
                .pixels
                .chunks_exact(4)
                .map(|pixel| f32::from(pixel[channel]))
                .collect();
            for _ in 0..PASSES {
                plane = box_rows(&plane, width, height, radius as usize);
                plane = transpose(
                    &box_rows(
                        &transpose(&plane, width, height),
                        height,
                        width,
                        radius as usize,
                    ),
                    height,
                    width,
                );
            }
            for (pixel, value) in blurred.pixels.chunks_exact_mut(4).zip(&plane) {
                pixel[channel] = value.round().clamp(0.0, 255.0) as u8;
            }
        }
        blurred
    }
}

/// Replaces each value of a `width` x `height` grid by the mean of the
/// `2 * radius + 1` values around it in its row, repeating the edge values.
fn box_rows(values: &[f32], width: usize, height: usize, radius: usize) -> Vec<f32> {
    let span = (2 * radius + 1) as f32;
    let mut out = Vec::with_capacity(values.len());
    for row in values.chunks_exact(width).take(height) {
        let at = |x: isize| row[x.clamp(0, width as isize - 1) as usize];
        let radius = radius as isize;
        let mut sum: f32 = (-radius..=radius).map(at).sum();
        for x in 0..width as isize {
            out.push(sum / span);
            sum += at(x + radius + 1) - at(x - radius);
        }
    }
    out
}

fn transpose(values: &[f32], width: usize, height: usize) -> Vec<f32> {
    let mut transposed = vec![0.0; values.len()];
    for y in 0..height {
        for x in 0..width {
            transposed[x * height + y] = values[y * width + x];
        }
    }
    transposed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_image_stays_uniform() {
        let image = Image::filled(9, 5, [30, 60, 90, 200]);

        assert_eq!(image.blurred(3), image);
    }

    #[test]
    fn zero_radius_is_identity() {
        let mut image = Image::filled(4, 4, [0, 0, 0, 255]);
        image.pixels[20] = 255;

        assert_eq!(image.blurred(0), image);
    }

    #[test]
    fn blur_spreads_a_point_and_keeps_its_mass() {
        // A single white red value in the middle of a black 21 x 21 image.
        let mut image = Image::filled(21, 21, [0, 0, 0, 255]);
        let center = (10 * 21 + 10) * 4;
        image.pixels[center] = 255;

        let blurred = image.blurred(1);

        let red: Vec<f32> = blurred
            .pixels
            .chunks_exact(4)
            .map(|p| f32::from(p[0]))
            .collect();
        // Three passes of [1, 1, 1] / 3 give [1, 3, 6, 7, 6, 3, 1] / 27 per
        // axis, so the center keeps 255 * (7 / 27)^2, about 17.1.
        assert_eq!(red[10 * 21 + 10], 17.0);
        assert!(red[10 * 21 + 13] > 0.0, "spreads 3 pixels");
        assert_eq!(red[10 * 21 + 14], 0.0, "not 4 pixels");
        let mass: f32 = red.iter().sum();
        assert!((mass - 255.0).abs() < 12.0, "mass {mass}, rounding only");
        assert!(blurred.pixels.chunks_exact(4).all(|p| p[3] == 255));
        assert!(blurred.pixels.chunks_exact(4).all(|p| p[1] == 0));
    }

    #[test]
    fn edges_repeat_the_edge_pixel() {
        // A left half black and a right half white: blurring with clamped
        // edges keeps the outermost columns at their own value.
        let mut image = Image::filled(8, 2, [0, 0, 0, 255]);
        image.fill_rect(crate::Rect::new(4, 0, 4, 2), [255, 255, 255]);

        let blurred = image.blurred(1);

        assert_eq!(blurred.pixel(0, 0), Some([0, 0, 0, 255]));
        assert_eq!(blurred.pixel(7, 1), Some([255, 255, 255, 255]));
        let middle = blurred.pixel(4, 0).expect("inside");
        assert!(middle[0] > 127, "{middle:?}");
        assert!(middle[0] < 255, "{middle:?}");
    }
}
