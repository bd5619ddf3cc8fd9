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
        #[source]
        why: SplitError,
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

/// Why a fused checkpoint tensor does not split into a graph weight.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SplitError {
    /// The graph weight has a rank the cut does not make.
    #[error("cannot hold the {rank}-d graph weight")]
    GraphRank { rank: usize },
    /// The fused tensor's shape is not the layout the cut reads (`needs` says which).
    #[error("has shape {found:?}; {needs}")]
    Layout { found: Vec<usize>, needs: String },
    /// A size the cut needs is read from one of `keys`, and none is in the checkpoint.
    #[error("cannot be split: {what} comes from {}, none of which is in the checkpoint", keys.join(" or "))]
    NoSource {
        what: &'static str,
        keys: Vec<String>,
    },
    /// DeepSeek's `kv_a_proj_with_mqa` must hold the latent and the RoPE key rows.
    #[error("needs the RoPE key width: `{key}` has {rows} rows, not more than the latent width {latent}")]
    RopeWidth {
        key: String,
        rows: usize,
        latent: usize,
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
