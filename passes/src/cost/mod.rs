//! The cost model: what a program costs on a cluster.
//!
//! [`Cluster`] describes the machine (GPU speed, NVLink inside a node, network across nodes);
//! [`collective`] prices collectives by algorithm over the level of the mesh axis they run on;
//! [`model`] prices every op ([`CostModel`], implemented by the [`Roofline`] model) and says how full
//! data-dependent buffers are expected to be.
//! All times are in seconds, as `f64`.

mod cluster;
pub mod collective;
pub mod model;
pub mod profile;

pub use cluster::{Cluster, ClusterError, Gpu};
pub use model::{output_fill, output_fill_skewed, CostModel, OpCost, Roofline};
pub use profile::{Profile, ProfileError, Rate, Rates};
