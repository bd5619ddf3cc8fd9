//! Tensor types: element type, **global** shape and sharding.
//!
//! A tensor type describes the logical (global) tensor that all ranks together hold, and how it is
//! laid out: `split[d]` lists the mesh axes that split dimension `d` (major first; empty: every
//! rank holds the whole dimension), and `partial` lists the axes over which the ranks hold partial
//! sums (the logical value is the sum of the ranks' values along those axes). Every axis appears at
//! most once in a type. A rank's local shape divides each split dimension by the product of its
//! axes; those products must divide the dimension.
//!
//! With this view collectives change only the layout, never the logical value or global shape,
//! which is what lets the rewrite passes treat them algebraically.

use crate::mesh::Mesh;
use crate::DType;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The type of one value: dtype, global shape and sharding over the mesh.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct TensorType {
    pub dtype: DType,
    /// Global shape.
    pub shape: Vec<u64>,
    /// Mesh axes splitting each dimension, major first. Empty, or one entry per dimension.
    #[serde(default, skip_serializing_if = "all_empty")]
    pub split: Vec<Vec<String>>,
    /// Mesh axes over which the ranks hold partial sums.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partial: Vec<String>,
}

fn all_empty(v: &[Vec<String>]) -> bool {
    v.iter().all(Vec::is_empty)
}

impl TensorType {
    /// A replicated tensor.
    pub fn new(dtype: DType, shape: impl Into<Vec<u64>>) -> TensorType {
        let shape = shape.into();
        TensorType {
            dtype,
            split: vec![Vec::new(); shape.len()],
            shape,
            partial: Vec::new(),
        }
    }

    /// The same tensor with dimension `dim` split over `axes` (replacing what split it before).
    pub fn with_split(mut self, dim: usize, axes: &[&str]) -> TensorType {
        self.normalize();
        self.split[dim] = axes.iter().map(|s| s.to_string()).collect();
        self
    }

    /// The same tensor held as partial sums over `axes`.
    pub fn with_partial(mut self, axes: &[&str]) -> TensorType {
        self.partial = axes.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Pads `split` to one entry per dimension (the canonical in-memory form).
    pub fn normalize(&mut self) {
        if self.split.len() < self.shape.len() {
            self.split.resize(self.shape.len(), Vec::new());
        }
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// Axes splitting dimension `d` (none if `d` is out of range).
    pub fn split_of(&self, d: usize) -> &[String] {
        self.split.get(d).map_or(&[], Vec::as_slice)
    }

    /// Whether no dimension is split and no axis is partial.
    pub fn is_replicated(&self) -> bool {
        all_empty(&self.split) && self.partial.is_empty()
    }

    /// Every axis the type mentions, split or partial.
    pub fn axes(&self) -> impl Iterator<Item = &str> {
        self.split
            .iter()
            .flatten()
            .chain(&self.partial)
            .map(String::as_str)
    }

    /// Whether some dimension is split over `axis`.
    pub fn is_split_on(&self, axis: &str) -> bool {
        self.split.iter().flatten().any(|a| a == axis)
    }

    /// Whether the type holds partial sums over `axis`.
    pub fn is_partial_on(&self, axis: &str) -> bool {
        self.partial.iter().any(|a| a == axis)
    }

    /// Whether `axis` appears nowhere in the type: every rank of an `axis` group holds the same data.
    pub fn is_replicated_on(&self, axis: &str) -> bool {
        !self.axes().any(|a| a == axis)
    }

    /// Number of elements of the global tensor. Exact for every type of a graph (see
    /// [`crate::limits`]); saturates at `u64::MAX` for a type that was never checked.
    pub fn numel(&self) -> u64 {
        self.shape.iter().fold(1u64, |a, &n| a.saturating_mul(n))
    }

    /// The shape one rank holds. Dimensions whose split factor does not divide them are rounded down
    /// (the validator reports them).
    pub fn local_shape(&self, mesh: &Mesh) -> Vec<u64> {
        self.shape
            .iter()
            .enumerate()
            .map(|(d, &n)| n / mesh.product(self.split_of(d)).max(1))
            .collect()
    }

    /// Number of elements one rank holds.
    pub fn local_numel(&self, mesh: &Mesh) -> u64 {
        self.local_shape(mesh)
            .iter()
            .fold(1u64, |a, &n| a.saturating_mul(n))
    }

    /// Bytes one rank holds (exact for checked types, like [`TensorType::numel`]).
    pub fn local_bytes(&self, mesh: &Mesh) -> u64 {
        self.local_numel(mesh)
            .saturating_mul(self.dtype.size_bytes())
    }

    /// Bytes of the global tensor (exact for checked types, like [`TensorType::numel`]).
    pub fn bytes(&self) -> u64 {
        self.numel().saturating_mul(self.dtype.size_bytes())
    }

    /// A copy with the partial axes put in mesh order (the canonical order).
    pub fn canonical(mut self, mesh: &Mesh) -> TensorType {
        self.normalize();
        self.partial
            .sort_by_key(|a| mesh.axis_index(a).unwrap_or(usize::MAX));
        self
    }
}

impl std::fmt::Display for TensorType {
    /// `bf16[4096@ep, 7168]`, `f32[16, 8@tp]+partial(tp)`: each split dimension carries its axes after `@`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}[", self.dtype)?;
        for (d, n) in self.shape.iter().enumerate() {
            if d > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{n}")?;
            let axes = self.split_of(d);
            if !axes.is_empty() {
                write!(f, "@{}", axes.join("."))?;
            }
        }
        f.write_str("]")?;
        if !self.partial.is_empty() {
            write!(f, " partial({})", self.partial.join(","))?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn local_shape_divides_split_dims() {
        let mesh = Mesh::parse("dp=2,ep=4", 8).unwrap();
        let t = TensorType::new(DType::Bf16, [64, 16]).with_split(0, &["dp", "ep"]);
        assert_eq!(t.local_shape(&mesh), vec![8, 16]);
        assert_eq!(t.to_string(), "bf16[64@dp.ep, 16]");
        let p = TensorType::new(DType::F32, [4]).with_partial(&["ep"]);
        assert_eq!(p.to_string(), "f32[4] partial(ep)");
        assert!(!p.is_replicated_on("ep"));
        assert!(p.is_replicated_on("dp"));
    }
}
