//! Sliding windows over the input frame and per-pixel means over the
//! windows that cover each pixel, the arithmetic of occlusion-style
//! methods.
//!
//! [`SlidingWindows`] lists the window rectangles, and [`CoverageMean`]
//! turns one score per window into a map: each pixel gets the mean score of
//! the windows that cover it.

use crate::{Error, Rect};

/// Returns the start positions of a `window`-pixel window sliding with step
/// `stride` along an axis of `extent` pixels.
///
/// The positions are `0, stride, 2 * stride, ...` while
/// `position + window <= extent`, plus `extent - window` when the last of
/// those does not reach the far edge. Every pixel is covered when
/// `stride <= window`; a larger stride leaves gaps between windows. When
/// `window >= extent`, the only position is 0 (the window is clipped to the
/// frame). A `window` or `stride` of 0 gives no positions.
pub fn window_positions(extent: u32, window: u32, stride: u32) -> Vec<u32> {
    if window == 0 || stride == 0 {
        return Vec::new();
    }
    if window >= extent {
        return vec![0];
    }

    let last = extent - window;
    let mut positions: Vec<u32> = (0..=last).step_by(stride as usize).collect();
    if positions.last() != Some(&last) {
        positions.push(last);
    }
    positions
}

/// The windows of one size sliding over a frame, row by row: all positions
/// along x for the first row position along y, then the next row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlidingWindows {
    xs: Vec<u32>,
    ys: Vec<u32>,
    width: u32,
    height: u32,
}

impl SlidingWindows {
    /// Lays out `window` x `window` squares over a `width` x `height` frame,
    /// with positions along each axis as [`window_positions`] gives them and
    /// each square clipped to the frame.
    ///
    /// # Errors
    ///
    /// Fails if the frame is empty or `window` or `stride` is 0.
    pub fn new(width: u32, height: u32, window: u32, stride: u32) -> Result<Self, Error> {
        if width == 0 || height == 0 {
            return Err(Error::msg(format!(
                "cannot slide windows over an empty {width} x {height} frame"
            )));
        }
        if window == 0 || stride == 0 {
            return Err(Error::msg(format!(
                "window size {window} and stride {stride} must both be at least 1"
            )));
        }
        Ok(Self {
            xs: window_positions(width, window, stride),
            ys: window_positions(height, window, stride),
            width: window.min(width),
            height: window.min(height),
        })
    }

    /// Returns the number of windows.
    pub fn len(&self) -> usize {
        self.xs.len() * self.ys.len()
    }

    /// Returns whether there are no windows; never true for a value built
    /// by [`SlidingWindows::new`].
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns the window at `index` in row-by-row order, or `None` past the
    /// end.
    pub fn get(&self, index: usize) -> Option<Rect> {
        (index < self.len()).then(|| self.rect(index))
    }

    /// Returns the windows in row-by-row order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Rect> + '_ {
        (0..self.len()).map(|index| self.rect(index))
    }

    /// Returns the window at `index`, which must be below `len()`; `new`
    /// guarantees at least one position along each axis.
    fn rect(&self, index: usize) -> Rect {
        let columns = self.xs.len();
        Rect::new(
            self.xs[index % columns],
            self.ys[index / columns],
            self.width,
            self.height,
        )
    }
}

/// Accumulates scores over rectangles and returns, for each pixel, the mean
/// score of the rectangles that cover it, in one or more layers that share
/// the rectangles (one layer per explained class, say).
///
/// Each [`CoverageMean::add`] costs O(layers) whatever the rectangle's
/// size: sums and counts go into 2-D difference arrays (in `f64`), which
/// [`CoverageMean::finish`] turns into per-pixel totals with prefix sums.
#[derive(Debug, Clone)]
pub struct CoverageMean {
    width: usize,
    height: usize,
    /// One `(width + 1) x (height + 1)` difference array per layer.
    sums: Vec<Vec<f64>>,
    counts: Vec<i64>,
}

impl CoverageMean {
    /// Creates an empty accumulator with `layers` layers over a `width` x
    /// `height` frame.
    pub fn new(width: u32, height: u32, layers: usize) -> Self {
        let cells = (width as usize + 1) * (height as usize + 1);
        Self {
            width: width as usize,
            height: height as usize,
            sums: vec![vec![0.0; cells]; layers],
            counts: vec![0; cells],
        }
    }

    /// Adds `scores[layer]` to every pixel of `rect` in each layer and
    /// counts `rect` once for each of its pixels. The part of `rect` outside
    /// the frame is ignored.
    ///
    /// # Panics
    ///
    /// If `scores` does not hold one value per layer.
    pub fn add(&mut self, rect: Rect, scores: &[f32]) {
        assert_eq!(scores.len(), self.sums.len(), "one score per layer");
        let rect = rect.clip(self.width as u32, self.height as u32);
        if rect.is_empty() {
            return;
        }

        let stride = self.width + 1;
        let (left, top) = (rect.x as usize, rect.y as usize);
        let (right, bottom) = (left + rect.width as usize, top + rect.height as usize);
        let corners = [
            (top * stride + left, 1),
            (top * stride + right, -1),
            (bottom * stride + left, -1),
            (bottom * stride + right, 1),
        ];
        for (cell, sign) in corners {
            self.counts[cell] += sign;
            for (sums, &score) in self.sums.iter_mut().zip(scores) {
                sums[cell] += sign as f64 * f64::from(score);
            }
        }
    }

    /// Returns each layer's per-pixel means, row-major `width * height`
    /// values. A pixel that no rectangle covered is NaN.
    pub fn finish(self) -> Vec<Vec<f32>> {
        let counts = prefix_sums(&self.counts, self.width, self.height);
        self.sums
            .iter()
            .map(|sums| {
                prefix_sums(sums, self.width, self.height)
                    .iter()
                    .zip(&counts)
                    .map(|(&sum, &count)| {
                        if count > 0 {
                            (sum / count as f64) as f32
                        } else {
                            f32::NAN
                        }
                    })
                    .collect()
            })
            .collect()
    }
}

/// Turns a `(width + 1) x (height + 1)` difference array into the
/// `width x height` values it encodes.
fn prefix_sums<T>(differences: &[T], width: usize, height: usize) -> Vec<T>
where
    T: Copy + Default + std::ops::Add<Output = T> + std::ops::Sub<Output = T>,
{
    let stride = width + 1;
    let mut values = vec![T::default(); width * height];
    for y in 0..height {
        let mut row = T::default();
        for x in 0..width {
            row = row + differences[y * stride + x];
            let above = if y > 0 {
                values[(y - 1) * width + x]
            } else {
                T::default()
            };
            values[y * width + x] = above + row;
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_step_by_stride_and_reach_the_edge() {
        assert_eq!(
            window_positions(224, 32, 16),
            (0..=192).step_by(16).collect::<Vec<_>>()
        );
        assert_eq!(window_positions(10, 4, 3), [0, 3, 6]);
        assert_eq!(window_positions(10, 4, 4), [0, 4, 6]);
        assert_eq!(window_positions(10, 3, 20), [0, 7]);
        assert_eq!(window_positions(5, 1, 1), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn window_at_least_the_extent_has_one_position() {
        assert_eq!(window_positions(28, 28, 4), [0]);
        assert_eq!(window_positions(28, 32, 4), [0]);
    }

    #[test]
    fn zero_window_or_stride_has_no_positions() {
        assert!(window_positions(10, 0, 2).is_empty());
        assert!(window_positions(10, 2, 0).is_empty());
    }

    #[test]
    fn positions_cover_every_pixel_and_stay_inside() {
        for extent in 1..40 {
            for window in 1..45 {
                for stride in 1..=window.min(12) {
                    let positions = window_positions(extent, window, stride);
                    let case = format!("extent {extent}, window {window}, stride {stride}");
                    let covered = |pixel: u32| {
                        positions
                            .iter()
                            .any(|&start| pixel >= start && pixel < start + window)
                    };
                    assert!((0..extent).all(covered), "{case}: {positions:?}");
                    assert!(
                        positions
                            .iter()
                            .all(|&start| start + window.min(extent) <= extent),
                        "{case}: {positions:?}"
                    );
                    assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "{case}");
                }
            }
        }
    }

    #[test]
    fn stride_above_window_leaves_gaps() {
        assert_eq!(window_positions(10, 2, 3), [0, 3, 6, 8]);
    }

    #[test]
    fn sliding_windows_go_row_by_row() {
        let windows = SlidingWindows::new(6, 4, 4, 2).expect("6 x 4 frame");

        let rects: Vec<Rect> = windows.iter().collect();

        assert_eq!(windows.len(), 2);
        assert_eq!(rects, [Rect::new(0, 0, 4, 4), Rect::new(2, 0, 4, 4)]);
        assert_eq!(windows.get(2), None);
    }

    #[test]
    fn sliding_windows_clip_to_a_small_frame() {
        let windows = SlidingWindows::new(28, 20, 24, 8).expect("28 x 20 frame");

        let rects: Vec<Rect> = windows.iter().collect();

        assert_eq!(rects, [Rect::new(0, 0, 24, 20), Rect::new(4, 0, 24, 20)]);
    }

    #[test]
    fn sliding_windows_reject_zero_sizes() {
        assert!(SlidingWindows::new(0, 4, 2, 2).is_err());
        assert!(SlidingWindows::new(4, 4, 0, 2).is_err());
        assert!(SlidingWindows::new(4, 4, 2, 0).is_err());
    }

    /// The definition, computed the slow way: for each pixel, the mean score
    /// of the rectangles that contain it.
    fn brute_force(width: u32, height: u32, windows: &[(Rect, f32)]) -> Vec<f32> {
        let mut means = Vec::new();
        for y in 0..height {
            for x in 0..width {
                let covering: Vec<f32> = windows
                    .iter()
                    .filter(|(rect, _)| rect.clip(width, height).contains(x, y))
                    .map(|&(_, score)| score)
                    .collect();
                means.push(if covering.is_empty() {
                    f32::NAN
                } else {
                    covering.iter().sum::<f32>() / covering.len() as f32
                });
            }
        }
        means
    }

    #[test]
    fn coverage_mean_matches_brute_force() {
        for (width, height, window, stride) in [(7, 5, 3, 2), (10, 10, 4, 3), (6, 9, 6, 1)] {
            let windows = SlidingWindows::new(width, height, window, stride).expect("frame");
            let scored: Vec<(Rect, f32)> = windows
                .iter()
                .enumerate()
                .map(|(index, rect)| (rect, (index as f32 * 0.37).sin()))
                .collect();
            let mut coverage = CoverageMean::new(width, height, 2);
            for &(rect, score) in &scored {
                coverage.add(rect, &[score, 1.0 - score]);
            }

            let layers = coverage.finish();

            let expected = brute_force(width, height, &scored);
            let case = format!("{width} x {height}, window {window}, stride {stride}");
            for (pixel, (mean, want)) in layers[0].iter().zip(&expected).enumerate() {
                assert!(
                    (mean - want).abs() < 1e-5,
                    "{case}, pixel {pixel}: {mean} vs {want}"
                );
                let other = layers[1][pixel];
                assert!(
                    (other - (1.0 - want)).abs() < 1e-5,
                    "{case}, layer 1, pixel {pixel}"
                );
            }
        }
    }

    #[test]
    fn uncovered_pixels_are_nan_and_outside_parts_ignored() {
        let mut coverage = CoverageMean::new(3, 2, 1);
        coverage.add(Rect::new(1, 0, 5, 1), &[4.0]);
        coverage.add(Rect::new(2, 0, 1, 1), &[2.0]);
        coverage.add(Rect::new(9, 9, 1, 1), &[100.0]);

        let means = coverage.finish().remove(0);

        assert!(means[0].is_nan(), "{means:?}");
        assert_eq!(means[1], 4.0, "{means:?}");
        assert_eq!(means[2], 3.0, "{means:?}");
        assert!(means[3..].iter().all(|v| v.is_nan()), "{means:?}");
    }
}
