//! Sizes no real model reaches, refused on input so that every size product of a graph fits `u64`.
//!
//! The largest published MoE tensors are a few billion elements (DeepSeek-V3's stacked experts of
//! one layer: 256 x 2048 x 7168 = 3.8e9) and whole models a few TB of weights (Kimi K2: about 2 TB
//! in bf16). The limits sit orders of magnitude above that, and low enough that a tensor's bytes
//! (elements x 8 at most), a whole model's weight bytes and a mesh's ranks are exact in `u64`:
//! once a graph has passed [`crate::check_type`] and [`crate::validate`], summing and multiplying
//! its sizes cannot overflow.

use std::fmt;
use thiserror::Error;

/// Largest size of one dimension (2^40, about 1.1e12).
pub const MAX_DIM: u64 = 1 << 40;
/// Most elements of one tensor (2^48, about 2.8e14).
pub const MAX_ELEMENTS: u64 = 1 << 48;
/// Most bytes of one tensor (2^50: 1 PiB).
pub const MAX_TENSOR_BYTES: u64 = 1 << 50;
/// Most bytes of all weights of a graph together (2^54: 16 PiB).
pub const MAX_MODEL_BYTES: u64 = 1 << 54;
/// Most ranks of a mesh (2^24, about 16.8 million).
pub const MAX_RANKS: u64 = 1 << 24;
/// Largest transformer layer index of a scope (2^20; models have a few hundred layers).
pub const MAX_LAYER: u64 = 1 << 20;
/// Most steps (forward and backward, every device, every micro-batch) of a pipeline schedule
/// (2^24): the schedule is built and replayed step by step.
pub const MAX_SCHEDULE_STEPS: u64 = 1 << 24;

/// What a [`TooLarge`] is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Quantity {
    /// Dimension `d` of a tensor type.
    Dim(usize),
    /// The element count of a tensor type.
    Elements,
    /// The bytes of a tensor type.
    Bytes,
    /// A size computed from an op's attributes and inputs, e.g. `heads*head_dim`.
    Derived(&'static str),
    /// A size-like key of the graph's `meta`.
    Meta(String),
    /// The bytes of all weights of a graph.
    ModelBytes,
    /// The ranks of a mesh.
    Ranks,
    /// A transformer layer index.
    Layer,
    /// The steps of a pipeline schedule.
    ScheduleSteps,
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quantity::Dim(d) => write!(f, "dim {d}"),
            Quantity::Elements => f.write_str("the element count"),
            Quantity::Bytes => f.write_str("the size in bytes"),
            Quantity::Derived(what) => write!(f, "{what}"),
            Quantity::Meta(key) => write!(f, "meta.{key}"),
            Quantity::ModelBytes => f.write_str("the bytes of all weights"),
            Quantity::Ranks => f.write_str("the number of ranks"),
            Quantity::Layer => f.write_str("the layer index"),
            Quantity::ScheduleSteps => {
                f.write_str("the schedule's steps (2 x stages x chunks x micro-batches)")
            }
        }
    }
}

/// A size above its limit. `value` is exact up to `u128::MAX` (saturated beyond).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{quantity} is {}, above the limit of {limit} (2^{}); no real model is that large: check the number", Approx(*value), limit.trailing_zeros())]
pub struct TooLarge {
    pub quantity: Quantity,
    pub value: u128,
    pub limit: u64,
}

/// Prints a `u128` exactly when it fits `u64`, else in scientific notation.
struct Approx(u128);

impl fmt::Display for Approx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match u64::try_from(self.0) {
            Ok(v) => write!(f, "{v}"),
            Err(_) if self.0 == u128::MAX => f.write_str("more than 3.4e38"),
            // Precision loss is fine: the number is only shown.
            #[allow(clippy::cast_precision_loss)]
            Err(_) => write!(f, "{:.3e}", self.0 as f64),
        }
    }
}

/// `value` if it is at most `limit`, else a [`TooLarge`] about `quantity`.
pub fn at_most(quantity: Quantity, value: u128, limit: u64) -> Result<u64, TooLarge> {
    match u64::try_from(value) {
        Ok(v) if v <= limit => Ok(v),
        _ => Err(TooLarge {
            quantity,
            value,
            limit,
        }),
    }
}

/// Checks every dimension, the element count and the bytes (`elem_bytes` per element) of a shape.
pub fn check_shape(shape: &[u64], elem_bytes: u64) -> Result<(), TooLarge> {
    let mut numel: u128 = 1;
    for (d, &n) in shape.iter().enumerate() {
        at_most(Quantity::Dim(d), n.into(), MAX_DIM)?;
        numel = numel.saturating_mul(n.into());
    }
    at_most(Quantity::Elements, numel, MAX_ELEMENTS)?;
    at_most(
        Quantity::Bytes,
        numel.saturating_mul(elem_bytes.into()),
        MAX_TENSOR_BYTES,
    )?;
    Ok(())
}

/// `a * b` for a size derived from attributes, refused above [`MAX_DIM`] (`what` names it).
pub fn dim_product(what: &'static str, a: u64, b: u64) -> Result<u64, TooLarge> {
    at_most(
        Quantity::Derived(what),
        u128::from(a) * u128::from(b),
        MAX_DIM,
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn shapes_at_the_limits_pass_and_beyond_fail() {
        assert!(check_shape(&[MAX_DIM, 1], 4).is_ok());
        assert!(check_shape(&[1 << 24, 1 << 24], 4).is_ok());
        let e = check_shape(&[8, 32, 10u64.pow(19)], 4).unwrap_err();
        assert_eq!(e.quantity, Quantity::Dim(2));
        assert!(
            e.to_string().starts_with(
                "dim 2 is 10000000000000000000, above the limit of 1099511627776 (2^40)"
            ),
            "{e}"
        );
        // Each dim fits, their product does not: the true product is shown.
        let e = check_shape(&[1 << 40, 1 << 40, 1 << 40], 4).unwrap_err();
        assert_eq!(e.quantity, Quantity::Elements);
        assert_eq!(e.value, 1u128 << 120);
        assert!(e.to_string().contains("1.329e36"), "{e}");
        // Elements fit, bytes of f64 do not.
        let e = check_shape(&[1 << 24, 1 << 24], 8).unwrap_err();
        assert_eq!(e.quantity, Quantity::Bytes);
        assert_eq!(e.value, 1u128 << 51);
    }

    #[test]
    fn products_saturate_instead_of_wrapping() {
        let e = check_shape(&[u64::MAX, u64::MAX, u64::MAX], 8).unwrap_err();
        assert_eq!(e.quantity, Quantity::Dim(0));
        assert_eq!(
            dim_product("heads*head_dim", 1 << 20, 1 << 20).unwrap(),
            1 << 40
        );
        let e = dim_product("heads*head_dim", u64::MAX, u64::MAX).unwrap_err();
        assert!(
            e.to_string().starts_with("heads*head_dim is 3.403e38"),
            "{e}"
        );
    }
}
