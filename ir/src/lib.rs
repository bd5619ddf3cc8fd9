//! # moe-ir: the moe-opt dataflow IR
//!
//! An SPMD program over a named device [`Mesh`]: one [`Graph`] of [`Op`]s that every rank runs.
//! Values carry a [`TensorType`]: dtype, **global** shape and sharding (which mesh axes split each
//! dimension, which hold partial sums). Ops compute locally; only collectives communicate, and they
//! change a value's layout, not its meaning. [`infer`] holds each op's typing rule, [`validate`]
//! checks a graph, [`json`] reads and writes `model.json`, [`hf`] imports Hugging Face configs,
//! [`print`] renders text and Graphviz DOT, [`text`] reads the text form back, and [`Summary`]
//! answers `inspect`.
//!
//! This crate knows nothing of e-graphs, tensors libraries or command lines.
//!
//! ```
//! use moe_ir::{DType, Graph, Mesh, Op, Scope, TensorType};
//! let mesh = Mesh::parse("tp=2", 8).unwrap();
//! let mut g = Graph::new("tiny", mesh);
//! let x = g.add("x", Op::Input(TensorType::new(DType::F32, [4, 8])), &[], Scope::Embed).unwrap();
//! let w = g.add("w", Op::Weight(TensorType::new(DType::F32, [8, 6]).with_split(0, &["tp"])), &[], Scope::Embed).unwrap();
//! // x is replicated, so its last dim must be split like w's rows: refused.
//! assert!(g.add("y", Op::Matmul, &[x.into(), w.into()], Scope::Embed).is_err());
//! ```

mod dtype;
mod graph;
pub mod hf;
mod infer;
pub mod json;
pub mod limits;
mod mesh;
mod op;
pub mod pipeline;
pub mod print;
mod scalar;
mod stages;
mod summary;
pub mod text;
mod ty;
pub mod units;
mod valid;

pub use dtype::DType;
pub use graph::{BuildError, Graph, GraphOutput, Node, NodeId, Scope, Value};
pub use infer::{check_type, infer, local_route_rows, TypeError};
pub use mesh::{is_identifier, Level, Mesh, MeshAxis, MeshError, DEFAULT_GPUS_PER_NODE};
pub use op::{
    Activation, AttentionAttrs, Capacity, FfnLayout, GroupScore, Groups, Llama3Scaling, Mask, Op,
    QueryTemperature, RelativeBias, RopePairs, RopeScaling, RouterAttrs, Score, YarnScaling,
};
pub use pipeline::{PipelineSpec, Schedule};
pub use scalar::F64;
pub use stages::{check_stages, stage_program, StageError};
pub use summary::{Collectives, OnlyStage, Summary};
pub use ty::TensorType;
pub use valid::{validate, ValidationError, META_SIZE_KEYS};
