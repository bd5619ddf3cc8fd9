//! Helpers for the unit tests: the CPU backend and small tensors.

#![allow(clippy::unwrap_used)]

use crate::value::Dense;

/// The CPU backend the unit tests run on (f64, so hand-computed values compare tightly).
pub(crate) type Cpu = burn_ndarray::NdArray<f64>;

/// A float tensor of `shape` from `values`.
pub(crate) fn dense(values: &[f64], shape: &[usize]) -> Dense<Cpu> {
    Dense::from_host(values.to_vec(), shape, &Default::default())
}

/// The largest elementwise `|a - b|` (over the shorter length).
pub(crate) fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Asserts `got` and `want` agree elementwise within `tol` (absolute).
pub(crate) fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "element {i}: {g} vs {w} ({got:?} vs {want:?})"
        );
    }
}
