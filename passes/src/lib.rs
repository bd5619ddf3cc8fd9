//! # moe-passes: transformations of moe-opt graphs
//!
//! Passes take a validated [`moe_ir::Graph`] and return one that validates too; the [`Pipeline`]
//! checks that after every pass and records [`PassStats`]; [`registry`] reads pass lists such as
//! `remap(tp=8),dispatch,partition(pp=4),schedule(1f1b)` into one. This crate does no I/O.
//!
//! ```
//! use moe_passes::{DeadCode, Pipeline};
//! let g = moe_ir::json::from_json(include_str!("../../examples/moe-layer.json")).unwrap();
//! let (out, stats) = Pipeline::new().with(DeadCode).run(g).unwrap();
//! assert_eq!(stats[0].pass, "dead-code");
//! assert!(moe_ir::validate(&out).is_ok());
//! ```

mod analysis;
mod convert;
pub mod cost;
pub mod extract;
mod lang;
mod pass;
pub mod pipeline;
pub mod plan;
pub mod registry;
pub mod remap;
pub mod rewrite;
pub mod rules;

pub use analysis::{try_make, Types};
pub use convert::{load, Loaded, NodeInfo};
pub use cost::{Cluster, CostModel, OpCost, Roofline};
pub use extract::{CostSplit, DagExtractor, ExtractError};
pub use lang::{Discriminant, MoeLang};
pub use pass::{DeadCode, EGraphStats, Pass, PassError, PassOutput, PassStats, Pipeline};
pub use registry::{PassContext, PassListError, PassStep};
pub use remap::{RemapError, TensorParallel};
