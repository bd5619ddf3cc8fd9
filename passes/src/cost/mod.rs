//! The cost model: what a program costs on a cluster.
//!
//! [`Cluster`] describes the machine (GPU speed, NVLink inside a node, network across nodes);
//! [`collective`] prices collectives by algorithm over the level of the mesh axis they run on.
//! All times are in seconds, as `f64`.

mod cluster;
pub mod collective;

pub use cluster::{Cluster, ClusterError, Gpu};
