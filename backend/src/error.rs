//! Errors of execution, naming the node (or weight) they are about.

use thiserror::Error;

/// Why a weight cannot be provided.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WeightError {
    #[error("weight `{weight}`: no tensor in the checkpoint (tried {})", tried.join(", "))]
    Missing { weight: String, tried: Vec<String> },
    #[error("weight `{weight}`: checkpoint tensor `{key}` has shape {found:?}, the graph needs {expected:?} (tried {})", tried.join(", "))]
    Shape {
        weight: String,
        key: String,
        expected: Vec<u64>,
        found: Vec<usize>,
        /// Every checkpoint key the weight may be read from.
        tried: Vec<String>,
    },
    /// A fused checkpoint tensor (several graph weights in one, e.g. DBRX's `Wqkv`) whose shape
    /// does not split into the graph weight's.
    #[error("weight `{weight}`: fused checkpoint tensor `{key}` {why} (tried {})", tried.join(", "))]
    Split {
        weight: String,
        key: String,
        why: String,
        /// Every checkpoint key the weight may be read from.
        tried: Vec<String>,
    },
    #[error("weight `{weight}`: checkpoint tensor `{key}` has dtype {dtype}, which is not a float type (f64, f32, bf16, f16)")]
    DType {
        weight: String,
        key: String,
        dtype: String,
    },
    #[error("checkpoint file {file}: {why}")]
    File { file: String, why: String },
    #[error("checkpoint: tensor `{key}` is in both {first} and {second}")]
    Duplicate {
        key: String,
        first: String,
        second: String,
    },
}

/// Why a graph cannot be executed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ExecError {
    #[error("the graph is not valid: {0}")]
    Invalid(String),
    #[error("node `{node}` ({op}): {why}")]
    Node {
        node: String,
        op: &'static str,
        why: String,
    },
    #[error("node `{node}` ({op}): {rank}-dimensional values are not supported (at most 4 dims)")]
    Rank {
        node: String,
        op: &'static str,
        rank: usize,
    },
    #[error("node `{node}`: recv on channel {channel} (micro-batch {micro}) waits for a send that never runs on rank {rank} (deadlock)")]
    Deadlock {
        node: String,
        channel: u32,
        micro: u32,
        rank: u64,
    },
    #[error("node `{node}`: {why}")]
    Pipeline { node: String, why: String },
    #[error(transparent)]
    Weight(#[from] WeightError),
    #[error("{device} cannot compute in {precision}: {why}")]
    Precision {
        device: &'static str,
        precision: &'static str,
        why: &'static str,
    },
    #[error("{gpus} GPUs for a mesh of {ranks} ranks: use 1 GPU (every rank on GPU 0) or {ranks} (rank r on GPU r)")]
    Placement { gpus: usize, ranks: u64 },
    #[error("CUDA: {0}")]
    Cuda(String),
}
