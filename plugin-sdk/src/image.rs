//! Pixel-level editing of RGBA images: filling, cropping and pasting
//! rectangles.

use crate::{Error, Image};

/// An axis-aligned rectangle of pixels: columns `x..x + width`, rows
/// `y..y + height`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rect {
    /// The leftmost column.
    pub x: u32,
    /// The top row.
    pub y: u32,
    /// The number of columns.
    pub width: u32,
    /// The number of rows.
    pub height: u32,
}

impl Rect {
    /// Creates a rectangle from its top-left corner and size.
    pub fn new(x: u32, y: u32, width: u32, height: u32) -> Self {
        Self {
            x,
            y,
            width,
            height,
        }
    }

    /// Returns the part of the rectangle inside a `width` x `height` frame,
    /// possibly empty.
    pub fn clip(self, width: u32, height: u32) -> Self {
        let x = self.x.min(width);
        let y = self.y.min(height);
        Self {
            x,
            y,
            width: self.x.saturating_add(self.width).min(width) - x,
            height: self.y.saturating_add(self.height).min(height) - y,
        }
    }

    /// Returns whether the rectangle contains no pixel.
    pub fn is_empty(self) -> bool {
        self.width == 0 || self.height == 0
    }

    /// Returns whether the pixel at column `x`, row `y` lies inside.
    pub fn contains(self, x: u32, y: u32) -> bool {
        x >= self.x
            && y >= self.y
            && u64::from(x) < u64::from(self.x) + u64::from(self.width)
            && u64::from(y) < u64::from(self.y) + u64::from(self.height)
    }
}

impl Image {
    /// Creates a `width` x `height` image with every pixel set to `rgba`.
    pub fn filled(width: u32, height: u32, rgba: [u8; 4]) -> Self {
        let pixels = rgba.repeat(width as usize * height as usize);
        Self {
            width,
            height,
            pixels,
        }
    }

    /// Checks that the pixel buffer contains `width * height * 4` bytes. The
    /// helpers below assume it does; `what` names the image in the message.
    ///
    /// # Errors
    ///
    /// Fails if the buffer has another length.
    pub fn check(&self, what: &str) -> Result<(), Error> {
        let expected = u64::from(self.width) * u64::from(self.height) * 4;
        if self.pixels.len() as u64 == expected {
            Ok(())
        } else {
            Err(Error::msg(format!(
                "{what} image is {} x {} but contains {} bytes of pixels, expected {expected}",
                self.width,
                self.height,
                self.pixels.len()
            )))
        }
    }

    /// Returns the whole image as a rectangle.
    pub fn bounds(&self) -> Rect {
        Rect::new(0, 0, self.width, self.height)
    }

    /// Returns the RGBA value of the pixel at column `x`, row `y`, or `None`
    /// outside the image.
    pub fn pixel(&self, x: u32, y: u32) -> Option<[u8; 4]> {
        if !self.bounds().contains(x, y) {
            return None;
        }
        let start = self.offset(x, y);
        let bytes = self.pixels.get(start..start + 4)?;
        bytes.try_into().ok()
    }

    /// Sets the red, green and blue of every pixel in `rect` to `rgb`,
    /// keeping each pixel's alpha. The part of `rect` outside the image is
    /// ignored.
    ///
    /// # Panics
    ///
    /// If the pixel buffer is shorter than [`Image::check`] requires.
    pub fn fill_rect(&mut self, rect: Rect, rgb: [u8; 3]) {
        let rect = rect.clip(self.width, self.height);
        for y in rect.y..rect.y + rect.height {
            let start = self.offset(rect.x, y);
            let row = &mut self.pixels[start..start + rect.width as usize * 4];
            for pixel in row.chunks_exact_mut(4) {
                pixel[..3].copy_from_slice(&rgb);
            }
        }
    }

    /// Returns a copy with `rect` filled as [`Image::fill_rect`] does.
    pub fn with_rect_filled(&self, rect: Rect, rgb: [u8; 3]) -> Self {
        let mut copy = self.clone();
        copy.fill_rect(rect, rgb);
        copy
    }

    /// Returns the pixels inside `rect` as a new image. The part of `rect`
    /// outside the image is cut off, so the result may be smaller than
    /// `rect`, or empty.
    ///
    /// # Panics
    ///
    /// If the pixel buffer is shorter than [`Image::check`] requires.
    pub fn crop(&self, rect: Rect) -> Self {
        let rect = rect.clip(self.width, self.height);
        let mut pixels = Vec::with_capacity(rect.width as usize * rect.height as usize * 4);
        for y in rect.y..rect.y + rect.height {
            let start = self.offset(rect.x, y);
            pixels.extend_from_slice(&self.pixels[start..start + rect.width as usize * 4]);
        }
        Self {
            width: rect.width,
            height: rect.height,
            pixels,
        }
    }

    /// Copies `patch` into this image with its top-left corner at column
    /// `x`, row `y`, replacing all four channels. The part of `patch` that
    /// falls outside the image is ignored.
    ///
    /// # Panics
    ///
    /// If either pixel buffer is shorter than [`Image::check`] requires.
    pub fn paste(&mut self, patch: &Image, x: u32, y: u32) {
        let target = Rect::new(x, y, patch.width, patch.height).clip(self.width, self.height);
        let row_bytes = target.width as usize * 4;
        for row in 0..target.height {
            let from = patch.offset(0, row);
            let to = self.offset(target.x, target.y + row);
            self.pixels[to..to + row_bytes].copy_from_slice(&patch.pixels[from..from + row_bytes]);
        }
    }

    fn offset(&self, x: u32, y: u32) -> usize {
        (y as usize * self.width as usize + x as usize) * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4 x 3 image whose pixel (x, y) is `[x, y, 10 * x + y, 200]`.
    fn gradient() -> Image {
        let mut pixels = Vec::new();
        for y in 0..3u8 {
            for x in 0..4u8 {
                pixels.extend_from_slice(&[x, y, 10 * x + y, 200]);
            }
        }
        Image {
            width: 4,
            height: 3,
            pixels,
        }
    }

    #[test]
    fn clip_keeps_the_inside_part() {
        assert_eq!(Rect::new(2, 1, 5, 5).clip(4, 3), Rect::new(2, 1, 2, 2));
        assert_eq!(Rect::new(1, 1, 2, 1).clip(4, 3), Rect::new(1, 1, 2, 1));
        assert!(Rect::new(9, 0, 2, 2).clip(4, 3).is_empty());
        assert_eq!(
            Rect::new(u32::MAX, 0, u32::MAX, 1).clip(4, 3),
            Rect::new(4, 0, 0, 1)
        );
    }

    #[test]
    fn check_rejects_a_short_buffer() {
        let mut image = gradient();
        assert!(image.check("input").is_ok());

        image.pixels.pop();
        let error = image.check("input").expect_err("47 bytes for 4 x 3");
        assert!(error.to_string().contains("47 bytes"), "{error}");
    }

    #[test]
    fn fill_rect_sets_rgb_keeps_alpha_and_nothing_else() {
        let mut image = gradient();

        image.fill_rect(Rect::new(1, 1, 2, 5), [7, 8, 9]);

        for y in 0..3 {
            for x in 0..4 {
                let original = gradient().pixel(x, y).expect("inside");
                let expected = if (1..3).contains(&x) && y >= 1 {
                    [7, 8, 9, original[3]]
                } else {
                    original
                };
                assert_eq!(image.pixel(x, y), Some(expected), "pixel ({x}, {y})");
            }
        }
    }

    #[test]
    fn crop_copies_the_clipped_rect() {
        let crop = gradient().crop(Rect::new(2, 1, 10, 1));

        assert_eq!((crop.width, crop.height), (2, 1));
        assert_eq!(crop.pixels, [2, 1, 21, 200, 3, 1, 31, 200]);
        assert!(crop.check("crop").is_ok());
    }

    #[test]
    fn paste_then_crop_round_trips_and_clips() {
        let patch = Image::filled(3, 3, [1, 2, 3, 4]);
        let mut image = gradient();

        image.paste(&patch, 2, 1);

        assert_eq!(
            image.crop(Rect::new(2, 1, 2, 2)),
            Image::filled(2, 2, [1, 2, 3, 4])
        );
        assert_eq!(image.pixel(1, 1), gradient().pixel(1, 1));
        assert_eq!(image.pixel(3, 0), gradient().pixel(3, 0));
        assert_eq!(image.pixel(4, 0), None);
    }
}
