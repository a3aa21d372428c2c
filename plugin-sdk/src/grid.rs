//! Float grids: bilinear resizing, for example of a coarse attribution map
//! to the input frame.

use crate::Error;

/// Resizes a `width` x `height` grid of row-major `values` to
/// `new_width` x `new_height` by bilinear interpolation.
///
/// Pixel centers are aligned, as in OpenCV's `INTER_LINEAR` and PyTorch's
/// `align_corners=False`: output pixel `i` samples the input at
/// `(i + 0.5) * width / new_width - 0.5`, and samples beyond the outermost
/// centers take the edge value. Resizing to the same size returns the
/// values unchanged.
///
/// # Errors
///
/// Fails if `values` does not hold `width * height` values, or if the input
/// is empty and the output is not.
pub fn resize_bilinear(
    values: &[f32],
    width: u32,
    height: u32,
    new_width: u32,
    new_height: u32,
) -> Result<Vec<f32>, Error> {
    if values.len() as u64 != u64::from(width) * u64::from(height) {
        return Err(Error::msg(format!(
            "a {width} x {height} grid holds {} values, expected {}",
            values.len(),
            u64::from(width) * u64::from(height)
        )));
    }
    if new_width == 0 || new_height == 0 {
        return Ok(Vec::new());
    }
    if width == 0 || height == 0 {
        return Err(Error::msg(format!(
            "cannot resize an empty {width} x {height} grid to {new_width} x {new_height}"
        )));
    }

    let columns = sample_points(width, new_width);
    let rows = sample_points(height, new_height);
    let width = width as usize;
    let mut resized = Vec::with_capacity(columns.len() * rows.len());
    for row in &rows {
        let top = &values[row.low * width..][..width];
        let bottom = &values[row.high * width..][..width];
        for column in &columns {
            let upper = lerp(top[column.low], top[column.high], column.weight);
            let lower = lerp(bottom[column.low], bottom[column.high], column.weight);
            resized.push(lerp(upper, lower, row.weight));
        }
    }
    Ok(resized)
}

/// Where one output coordinate samples the input: between `low` and
/// `high`, `weight` of the way to `high`.
struct Sample {
    low: usize,
    high: usize,
    weight: f32,
}

fn sample_points(size: u32, new_size: u32) -> Vec<Sample> {
    let scale = f64::from(size) / f64::from(new_size);
    let last = size as usize - 1;
    (0..new_size)
        .map(|index| {
            let position = ((f64::from(index) + 0.5) * scale - 0.5).clamp(0.0, last as f64);
            let low = position.floor() as usize;
            Sample {
                low,
                high: (low + 1).min(last),
                weight: (position - low as f64) as f32,
            }
        })
        .collect()
}

fn lerp(a: f32, b: f32, t: f32) -> f32 {
    a + (b - a) * t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::assert_close;

    #[test]
    fn same_size_is_identity() {
        let values: Vec<f32> = (0..12).map(|v| v as f32 * 0.5).collect();

        let resized = resize_bilinear(&values, 4, 3, 4, 3).expect("4 x 3 grid");

        assert_eq!(resized, values);
    }

    #[test]
    fn upsampling_aligns_pixel_centers() {
        // Output centers at 0.25, 0.75, 1.25, 1.75 in input pixels map to
        // input coordinates -0.25, 0.25, 0.75, 1.25, clamped to 0..=1.
        let resized = resize_bilinear(&[0.0, 1.0], 2, 1, 4, 1).expect("2 x 1 grid");

        assert_close(&resized, &[0.0, 0.25, 0.75, 1.0]);
    }

    #[test]
    fn downsampling_by_two_averages_pairs() {
        let values = [0.0, 2.0, 4.0, 6.0, 10.0, 12.0, 14.0, 16.0];

        let resized = resize_bilinear(&values, 4, 2, 2, 1).expect("4 x 2 grid");

        // Each output samples the middle of a 2 x 2 block.
        assert_close(&resized, &[6.0, 10.0]);
    }

    #[test]
    fn constant_grid_stays_constant() {
        let resized = resize_bilinear(&[3.5; 6], 3, 2, 7, 5).expect("3 x 2 grid");

        assert_close(&resized, &[3.5; 35]);
    }

    #[test]
    fn single_value_fills_the_output() {
        let resized = resize_bilinear(&[2.0], 1, 1, 3, 2).expect("1 x 1 grid");

        assert_close(&resized, &[2.0; 6]);
    }

    #[test]
    fn bilinear_in_both_axes() {
        // f(x, y) = x + 10 y is bilinear, so upsampling reproduces it
        // exactly at interior sample points.
        let values = [0.0, 1.0, 10.0, 11.0];

        let resized = resize_bilinear(&values, 2, 2, 4, 4).expect("2 x 2 grid");

        let axis = [0.0, 0.25, 0.75, 1.0];
        let expected: Vec<f32> = axis
            .iter()
            .flat_map(|y| axis.iter().map(move |x| x + 10.0 * y))
            .collect();
        assert_close(&resized, &expected);
    }

    #[test]
    fn wrong_length_or_empty_input_is_rejected() {
        assert!(resize_bilinear(&[0.0; 5], 3, 2, 4, 4).is_err());
        assert!(resize_bilinear(&[], 0, 0, 4, 4).is_err());
        assert_eq!(resize_bilinear(&[1.0], 1, 1, 0, 3).ok(), Some(Vec::new()));
    }
}
