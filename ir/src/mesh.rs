//! The device mesh: named axes with sizes and the physical level each axis lives on.
//!
//! Axes are listed outermost first; the last axis varies fastest over rank numbers (rank =
//! row-major index of the rank's coordinates). This matches Megatron's convention of putting the
//! tensor-parallel axis innermost so that it stays inside a node.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where the links of a mesh axis run. Collectives over an axis are priced with the bandwidth
/// and latency of its level.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// All ranks of one group of this axis share a node (NVLink).
    IntraNode,
    /// Groups of this axis span nodes (network).
    InterNode,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::IntraNode => "intra_node",
            Level::InterNode => "inter_node",
        }
    }
}

/// One named axis of the mesh.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MeshAxis {
    /// Identifier such as `dp`, `ep`, `tp`, `pp`.
    pub name: String,
    /// Number of ranks along the axis (at least 1).
    pub size: u32,
    /// Physical level of the axis' links.
    pub level: Level,
}

/// The device mesh every rank program of a graph runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Mesh {
    /// Axes, outermost first.
    pub axes: Vec<MeshAxis>,
}

/// A malformed mesh, or a mesh specification that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MeshError {
    #[error("mesh axis name `{0}` is not an identifier (letters, digits, `_`; not starting with a digit)")]
    BadName(String),
    #[error("mesh axis `{0}` appears twice")]
    Duplicate(String),
    #[error("mesh axis `{name}` has size {size}; sizes must be at least 1")]
    ZeroSize { name: String, size: u32 },
    #[error(transparent)]
    TooLarge(#[from] crate::limits::TooLarge),
    #[error("cannot parse mesh spec `{spec}`: {why} (expected `axis=size[:intra|:inter],...`, e.g. `dp=2,ep=8`)")]
    Spec { spec: String, why: String },
}

/// Ranks per node assumed when a mesh spec does not say where an axis lives.
pub const DEFAULT_GPUS_PER_NODE: u64 = 8;

impl Mesh {
    /// A mesh of one rank (no axes).
    pub fn single() -> Mesh {
        Mesh { axes: Vec::new() }
    }

    /// Looks an axis up by name.
    pub fn axis(&self, name: &str) -> Option<&MeshAxis> {
        self.axes.iter().find(|a| a.name == name)
    }

    /// Position of an axis in `axes`.
    pub fn axis_index(&self, name: &str) -> Option<usize> {
        self.axes.iter().position(|a| a.name == name)
    }

    /// Size of an axis, 1 for an axis the mesh does not have.
    pub fn size_of(&self, name: &str) -> u64 {
        self.axis(name).map_or(1, |a| u64::from(a.size))
    }

    /// Product of the sizes of `axes` (1 for none).
    pub fn product<S: AsRef<str>>(&self, axes: &[S]) -> u64 {
        axes.iter().map(|a| self.size_of(a.as_ref())).product()
    }

    /// Total number of ranks.
    pub fn ranks(&self) -> u64 {
        self.axes.iter().map(|a| u64::from(a.size)).product()
    }

    /// Coordinates of `rank`, one per axis.
    pub fn coords(&self, rank: u64) -> Vec<u32> {
        let mut rest = rank;
        let mut out = vec![0; self.axes.len()];
        for (i, a) in self.axes.iter().enumerate().rev() {
            out[i] = (rest % u64::from(a.size)) as u32;
            rest /= u64::from(a.size);
        }
        out
    }

    /// The rank at `coords`.
    pub fn rank_of(&self, coords: &[u32]) -> u64 {
        self.axes
            .iter()
            .zip(coords)
            .fold(0, |acc, (a, &c)| acc * u64::from(a.size) + u64::from(c))
    }

    /// The ranks of `rank`'s group along `axis`, in axis order (all coordinates but that axis fixed).
    pub fn group(&self, rank: u64, axis: &str) -> Vec<u64> {
        let Some(i) = self.axis_index(axis) else {
            return vec![rank];
        };
        let mut c = self.coords(rank);
        (0..self.axes[i].size)
            .map(|k| {
                c[i] = k;
                self.rank_of(&c)
            })
            .collect()
    }

    /// Checks names and sizes, and that the ranks are at most [`crate::limits::MAX_RANKS`] (so
    /// every product of axis sizes is exact).
    pub fn check(&self) -> Result<(), MeshError> {
        let ranks = self
            .axes
            .iter()
            .fold(1u128, |acc, a| acc.saturating_mul(a.size.into()));
        crate::limits::at_most(
            crate::limits::Quantity::Ranks,
            ranks,
            crate::limits::MAX_RANKS,
        )?;
        for (i, a) in self.axes.iter().enumerate() {
            if !is_identifier(&a.name) {
                return Err(MeshError::BadName(a.name.clone()));
            }
            if a.size == 0 {
                return Err(MeshError::ZeroSize {
                    name: a.name.clone(),
                    size: a.size,
                });
            }
            if self.axes[..i].iter().any(|b| b.name == a.name) {
                return Err(MeshError::Duplicate(a.name.clone()));
            }
        }
        Ok(())
    }

    /// Parses `axis=size[:intra|:inter],...` (outermost axis first). Axes without an explicit level
    /// are placed by packing from the innermost axis: an axis stays inside a node while the product
    /// of its size and the sizes of the axes inside it is at most `gpus_per_node`.
    pub fn parse(spec: &str, gpus_per_node: u64) -> Result<Mesh, MeshError> {
        let err = |why: String| MeshError::Spec {
            spec: spec.to_string(),
            why,
        };
        let mut parsed: Vec<(String, u32, Option<Level>)> = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, rest) = part
                .split_once('=')
                .ok_or_else(|| err(format!("`{part}` has no `=`")))?;
            let (size, level) = match rest.split_once(':') {
                Some((s, "intra")) => (s, Some(Level::IntraNode)),
                Some((s, "inter")) => (s, Some(Level::InterNode)),
                Some((_, l)) => return Err(err(format!("unknown level `{l}`"))),
                None => (rest, None),
            };
            let size: u32 = size.trim().parse().map_err(|_| {
                err(format!(
                    "size `{size}` of axis `{name}` is not a positive integer"
                ))
            })?;
            parsed.push((name.trim().to_string(), size, level));
        }
        let mut inner: u64 = 1;
        let mut axes = Vec::with_capacity(parsed.len());
        for (name, size, level) in parsed.into_iter().rev() {
            inner = inner.saturating_mul(u64::from(size));
            let level = level.unwrap_or(if inner <= gpus_per_node {
                Level::IntraNode
            } else {
                Level::InterNode
            });
            axes.push(MeshAxis { name, size, level });
        }
        axes.reverse();
        let mesh = Mesh { axes };
        mesh.check()?;
        Ok(mesh)
    }
}

impl std::fmt::Display for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.axes.is_empty() {
            return f.write_str("single");
        }
        for (i, a) in self.axes.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            let lvl = match a.level {
                Level::IntraNode => "intra",
                Level::InterNode => "inter",
            };
            write!(f, "{}={}:{}", a.name, a.size, lvl)?;
        }
        Ok(())
    }
}

/// Whether `s` is a non-empty identifier of ASCII letters, digits and `_` not starting with a digit.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_packs_inner_axes_into_a_node() {
        let m = Mesh::parse("dp=4,ep=8", 8).unwrap();
        assert_eq!(m.axes[0].level, Level::InterNode);
        assert_eq!(m.axes[1].level, Level::IntraNode);
        let m = Mesh::parse("ep=16", 8).unwrap();
        assert_eq!(m.axes[0].level, Level::InterNode);
        let m = Mesh::parse("ep=16:intra", 8).unwrap();
        assert_eq!(m.axes[0].level, Level::IntraNode);
    }

    #[test]
    fn parse_errors() {
        assert!(Mesh::parse("ep", 8).is_err());
        assert!(Mesh::parse("ep=x", 8).is_err());
        assert!(Mesh::parse("ep=0", 8).is_err());
        assert!(Mesh::parse("ep=2,ep=2", 8).is_err());
        assert!(Mesh::parse("9p=2", 8).is_err());
        assert!(Mesh::parse("ep=2:far", 8).is_err());
    }

    #[test]
    fn coords_and_groups() {
        let m = Mesh::parse("dp=2,tp=4", 8).unwrap();
        assert_eq!(m.ranks(), 8);
        assert_eq!(m.coords(6), vec![1, 2]);
        assert_eq!(m.rank_of(&[1, 2]), 6);
        assert_eq!(m.group(6, "tp"), vec![4, 5, 6, 7]);
        assert_eq!(m.group(6, "dp"), vec![2, 6]);
        assert_eq!(m.group(6, "pp"), vec![6]);
    }
}
