//! The memory order of one model input and per-pixel reductions over its
//! color channels, which turn an input gradient into a W x H map.
//!
//! [`InputShape`] describes one batch item of the model's input: its
//! channels, height, width and [`Layout`]. A tensor of that shape, such as
//! one item of [`crate::model::gradients`]'s input gradient, reduces to one
//! value per pixel with [`InputShape::max_abs_over_channels`] or
//! [`InputShape::sum_over_channels`], in row-major pixel order.

use crate::Error;
use crate::model::{self, Layout};

/// The shape of one item of the model's input batch: channels, height and
/// width, and the order in which they are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputShape {
    /// The memory order: channels first (NCHW) or last (NHWC).
    pub layout: Layout,
    /// The number of color channels.
    pub channels: usize,
    /// The input width in pixels.
    pub width: usize,
    /// The input height in pixels.
    pub height: usize,
}

impl InputShape {
    /// Creates the shape of one input of `channels` x `height` x `width`
    /// values stored in `layout` order.
    pub fn new(layout: Layout, channels: usize, width: usize, height: usize) -> Self {
        Self {
            layout,
            channels,
            width,
            height,
        }
    }

    /// Returns the shape of one input of the model being explained, from
    /// [`model::info`].
    pub fn of_model() -> Self {
        let info = model::info();
        Self::new(
            info.layout,
            info.channels as usize,
            info.width as usize,
            info.height as usize,
        )
    }

    /// Returns the number of values of one input item.
    pub fn len(&self) -> usize {
        self.channels * self.pixels()
    }

    /// Returns whether an item contains no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns the number of pixels, `width * height`.
    pub fn pixels(&self) -> usize {
        self.width * self.height
    }

    /// Returns the input frame's `(width, height)`, the size of a heatmap
    /// with one value per pixel.
    pub fn frame(&self) -> (u32, u32) {
        (self.width as u32, self.height as u32)
    }

    /// Returns the item's dimensions in memory order, without the batch
    /// dimension: `[channels, height, width]` or `[height, width, channels]`.
    pub fn dims(&self) -> Vec<u32> {
        let [c, h, w] = [self.channels, self.height, self.width].map(|dim| dim as u32);
        match self.layout {
            Layout::Nchw => vec![c, h, w],
            Layout::Nhwc => vec![h, w, c],
        }
    }

    /// Returns the position of channel `channel` of pixel `pixel` (row-major,
    /// `y * width + x`) in an item's values.
    pub fn index(&self, channel: usize, pixel: usize) -> usize {
        match self.layout {
            Layout::Nchw => channel * self.pixels() + pixel,
            Layout::Nhwc => pixel * self.channels + channel,
        }
    }

    /// Returns, for each pixel, the largest absolute value over its channels.
    ///
    /// # Errors
    ///
    /// Fails if `values` does not hold one item's [`InputShape::len`] values.
    pub fn max_abs_over_channels(&self, values: &[f32]) -> Result<Vec<f32>, Error> {
        self.reduce(values, 0.0, |max, value| max.max(value.abs()))
    }

    /// Returns, for each pixel, the sum of its channels' values.
    ///
    /// # Errors
    ///
    /// Fails if `values` does not hold one item's [`InputShape::len`] values.
    pub fn sum_over_channels(&self, values: &[f32]) -> Result<Vec<f32>, Error> {
        self.reduce(values, 0.0, |sum, value| sum + value)
    }

    fn reduce(
        &self,
        values: &[f32],
        initial: f32,
        combine: impl Fn(f32, f32) -> f32,
    ) -> Result<Vec<f32>, Error> {
        if values.len() != self.len() {
            return Err(Error::Shape {
                what: format!("an input item of {} values", values.len()),
                found: self.dims(),
                expected: format!("{} values", self.len()),
            });
        }
        let mut reduced = vec![initial; self.pixels()];
        for channel in 0..self.channels {
            for (pixel, value) in reduced.iter_mut().enumerate() {
                *value = combine(*value, values[self.index(channel, pixel)]);
            }
        }
        Ok(reduced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::assert_close;

    /// A 2 x 1 RGB input whose values are `10 * channel + pixel`, stored in
    /// `layout` order.
    fn numbered(layout: Layout) -> (InputShape, Vec<f32>) {
        let shape = InputShape::new(layout, 3, 2, 1);
        let mut values = vec![0.0; shape.len()];
        for channel in 0..3 {
            for pixel in 0..2 {
                values[shape.index(channel, pixel)] = (10 * channel + pixel) as f32;
            }
        }
        (shape, values)
    }

    #[test]
    fn index_follows_the_layout() {
        let (nchw, planar) = numbered(Layout::Nchw);
        let (nhwc, interleaved) = numbered(Layout::Nhwc);

        assert_eq!(planar, [0.0, 1.0, 10.0, 11.0, 20.0, 21.0]);
        assert_eq!(interleaved, [0.0, 10.0, 20.0, 1.0, 11.0, 21.0]);
        assert_eq!(nchw.dims(), [3, 1, 2]);
        assert_eq!(nhwc.dims(), [1, 2, 3]);
    }

    #[test]
    fn reductions_agree_across_layouts() {
        for layout in [Layout::Nchw, Layout::Nhwc] {
            let (shape, mut values) = numbered(layout);
            values[shape.index(1, 0)] = -40.0;

            let max_abs = shape.max_abs_over_channels(&values).expect("6 values");
            let sum = shape.sum_over_channels(&values).expect("6 values");

            assert_close(&max_abs, &[40.0, 21.0]);
            assert_close(&sum, &[-20.0, 33.0]);
        }
    }

    #[test]
    fn wrong_length_is_rejected() {
        let shape = InputShape::new(Layout::Nchw, 3, 2, 2);

        let error = shape.sum_over_channels(&[0.0; 11]).expect_err("11 of 12");

        assert!(error.to_string().contains("12 values"), "{error}");
    }
}
