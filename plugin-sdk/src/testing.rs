//! Assertions shared by the unit tests.

/// Asserts that two float slices have the same length and agree within
/// 1e-6 at every index.
pub(crate) fn assert_close(actual: &[f32], expected: &[f32]) {
    assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
    for (index, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!((a - e).abs() < 1e-6, "index {index}: {a} vs {e}");
    }
}
