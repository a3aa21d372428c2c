//! Softmax, argmax and top-k over one row of class scores.
//!
//! These functions are pure, so they also work on logits a plugin has
//! already fetched, without another model call.

use crate::ClassScore;

/// Returns the softmax of `logits`: probabilities that sum to one.
///
/// It subtracts the largest logit before exponentiating, so large logits do
/// not overflow, and sums in `f64`. Logits of `-inf` get probability 0. If
/// no logit is finite, or one is NaN, every probability is NaN.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() || logits.iter().any(|value| value.is_nan()) {
        return vec![f32::NAN; logits.len()];
    }

    let exps: Vec<f64> = logits
        .iter()
        .map(|&logit| f64::from(logit - max).exp())
        .collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|&exp| (exp / sum) as f32).collect()
}

/// Returns the index of the largest value, the first one on ties, or `None`
/// if `values` is empty or all NaN.
pub fn argmax(values: &[f32]) -> Option<usize> {
    top_k(values, 1).first().copied()
}

/// Returns the indices of the `k` largest values, largest first. Ties keep
/// the lower index first, NaN values are never chosen, and fewer than `k`
/// indices come back when `values` has fewer non-NaN entries.
pub fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut indices: Vec<usize> = (0..values.len())
        .filter(|&index| !values[index].is_nan())
        .collect();
    // A stable sort on the value alone keeps equal values in index order.
    indices.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    indices.truncate(k);
    indices
}

/// Returns the `k` most likely classes of one row of logits, most likely
/// first, with labels, logits and softmax probabilities.
///
/// A class without a label in `labels` is named `class <index>`.
pub fn class_scores(logits: &[f32], labels: &[String], k: usize) -> Vec<ClassScore> {
    let probabilities = softmax(logits);
    top_k(logits, k)
        .into_iter()
        .map(|index| ClassScore {
            index: index as u32,
            label: labels
                .get(index)
                .cloned()
                .unwrap_or_else(|| format!("class {index}")),
            logit: logits[index],
            probability: probabilities[index],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::assert_close;

    #[test]
    fn softmax_matches_closed_form() {
        // exp(0), exp(1), exp(2) over their sum 1 + e + e^2.
        let e = std::f32::consts::E;
        let sum = 1.0 + e + e * e;

        assert_close(
            &softmax(&[0.0, 1.0, 2.0]),
            &[1.0 / sum, e / sum, e * e / sum],
        );
    }

    #[test]
    fn softmax_is_shift_invariant_and_does_not_overflow() {
        let shifted = softmax(&[1000.0, 1001.0, 1002.0]);

        assert_close(&shifted, &softmax(&[0.0, 1.0, 2.0]));
        assert!((shifted.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn softmax_of_log_probabilities_returns_them() {
        let probabilities = [0.7f32, 0.2, 0.1, 0.0];
        let logs: Vec<f32> = probabilities.iter().map(|p| p.ln()).collect();

        assert_close(&softmax(&logs), &probabilities);
    }

    #[test]
    fn softmax_of_degenerate_rows() {
        assert!(softmax(&[]).is_empty());
        assert!(softmax(&[f32::NEG_INFINITY; 2]).iter().all(|p| p.is_nan()));
        assert!(softmax(&[0.0, f32::NAN]).iter().all(|p| p.is_nan()));
    }

    #[test]
    fn top_k_orders_and_breaks_ties_by_index() {
        let values = [0.1, 0.5, f32::NAN, 0.5, 0.9, -1.0];

        assert_eq!(top_k(&values, 3), [4, 1, 3]);
        assert_eq!(top_k(&values, 10), [4, 1, 3, 0, 5]);
        assert_eq!(top_k(&values, 0), Vec::<usize>::new());
    }

    #[test]
    fn argmax_skips_nan() {
        assert_eq!(argmax(&[f32::NAN, 2.0, 3.0, 3.0]), Some(2));
        assert_eq!(argmax(&[f32::NAN]), None);
        assert_eq!(argmax(&[]), None);
    }

    #[test]
    fn class_scores_carry_labels_and_probabilities() {
        let labels = vec!["cat".to_owned(), "dog".to_owned()];

        let scores = class_scores(&[1.0, 3.0, 2.0], &labels, 2);

        assert_eq!(scores.len(), 2);
        assert_eq!((scores[0].index, scores[0].label.as_str()), (1, "dog"));
        assert_eq!((scores[1].index, scores[1].label.as_str()), (2, "class 2"));
        assert_eq!(scores[0].logit, 3.0);
        assert_close(
            &[scores[0].probability, scores[1].probability],
            &softmax(&[1.0, 3.0, 2.0])[1..],
        );
    }
}
