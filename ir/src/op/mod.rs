//! Operations and their attributes.
//!
//! Every op documents its **inputs** (in order), its **typing rule** (shapes are global; see
//! [`crate::ty`]) and its **sharding rule** (which layouts it computes locally, with no
//! communication). Only collectives and `send`/`recv` communicate. The rules are implemented in
//! [`crate::infer`]; a type that breaks them is a validation error naming the node.
//!
//! In JSON an op is written in serde's external tagging: an op without attributes is its name
//! (`"op": "matmul"`), one with attributes is an object (`"op": {"router": {"k": 2, ...}}`).

mod attention;
mod families;

pub use attention::{
    AttentionAttrs, Llama3Scaling, Mask, QueryTemperature, RelativeBias, RopePairs, RopeScaling,
    YarnScaling,
};

use crate::{TensorType, F64};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How router scores are computed from logits.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Score {
    /// Softmax over all experts (Mixtral, Qwen, OLMoE, DBRX, Switch, GPT-OSS, DeepSeek-V2).
    Softmax,
    /// Independent sigmoid per expert (DeepSeek-V3, Llama-4).
    Sigmoid,
}

/// Group-limited routing (DeepSeek): experts form `groups` equal groups; a token first keeps the
/// `topk_groups` groups with the best group score, then picks its top-k experts inside them.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct Groups {
    pub groups: u64,
    pub topk_groups: u64,
    /// How a group is scored from its members' (biased) scores.
    pub group_score: GroupScore,
}

/// The score of an expert group in group-limited routing.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum GroupScore {
    /// The best member's score (DeepSeek-V2's `group_limited_greedy`).
    Max,
    /// The sum of the two best members' scores (DeepSeek-V3's `noaux_tc`).
    Top2Sum,
}

/// The activation of an expert or dense FFN.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Silu,
    Gelu,
    Relu,
    /// GPT-OSS's clamped SwiGLU: `gate * sigmoid(1.702 gate) * (up + 1)`, gate clamped above at 7,
    /// up clamped to [-7, 7]. Only meaningful with `gated`.
    OaiSwiglu,
}

/// Memory layout of the tokens an `expert_ffn` processes.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum FfnLayout {
    /// `[experts, capacity, hidden]`: each expert has its own fixed-size slot buffer (dispatch form).
    Padded,
    /// `[rows, hidden]` rows grouped by expert, with a `counts` input giving each expert's row count
    /// (index-slicing form). Rows past the sum of counts are padding and produce zeros.
    Grouped,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Router attributes.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct RouterAttrs {
    /// Routed experts.
    pub experts: u64,
    /// Experts chosen per token.
    pub k: u64,
    pub score: Score,
    /// Divide the chosen weights by their sum.
    pub normalize: bool,
    /// Multiply the (normalized) weights by this factor (DeepSeek's `routed_scaling_factor`).
    #[serde(default = "one")]
    pub scale: F64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Groups>,
    /// A selection bias `[experts]` is given as a second input: it is added to the scores to choose
    /// experts but not to the weights (DeepSeek-V3's `e_score_correction_bias`).
    #[serde(default)]
    pub select_bias: bool,
}

fn one() -> F64 {
    F64(1.0)
}

/// How many routed (token, choice) pairs each expert keeps per group of tokens.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Capacity {
    /// Every routed pair is kept.
    Dropless,
    /// Each expert keeps at most this many pairs per token group; priority goes choice-major
    /// (all first choices in token order, then all second choices, ...), later pairs are dropped.
    Slots(u64),
}

/// An operation. See the module docs for the JSON spelling.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    // ----- leaves -----
    /// A graph input. No inputs. Output: the declared type.
    Input(TensorType),
    /// A parameter. No inputs. Output: the declared type; its global shape is the full weight.
    Weight(TensorType),
    /// A tensor of zeros. No inputs. Output: the declared type. Zeros may be declared `partial` on
    /// any axis (a sum of zeros is zero), which is how scatter buffers start.
    Zeros(TensorType),

    // ----- dense math -----
    /// `embedding(ids, table)`: ids `i32[N]`, table `[V, H]` -> `[N, H]` (table's dtype).
    /// Sharding: ids' dim 0 split carries to the output's dim 0; a table split on dim 0 (vocab-parallel)
    /// gives an output partial on those axes; a table split on dim 1 carries to output dim 1.
    Embedding,
    /// `matmul(a, b)`: a `[..., M, K]`, b `[K, N]` -> `[..., M, N]`, same float dtype.
    /// Sharding: a's leading dims carry; b's dim 1 split carries to the last dim; a's last dim and
    /// b's dim 0 must be split on the same axes, which then become partial; partial inputs stay
    /// partial (a partial on an axis b is replicated on, or the reverse; not both).
    Matmul,
    /// `transpose(x)`: `[..., M, N]` -> `[..., N, M]`, the last two dims' splits swapped; partial
    /// axes kept (transposition is linear). Used for tied LM heads (`x @ embedding^T`).
    Transpose,
    /// `scale(x)`: `x * factor` -> x's type; partial axes kept (scaling is linear). T5's
    /// `d_model^-0.5` before its tied LM head.
    Scale { factor: F64 },
    /// `batch_matmul(a, b)`: a `[B, M, K]`, b `[B, K, N]` -> `[B, M, N]`. Sharding: the batch dims
    /// must be split alike and stay split; M and N carry; K splits become partial.
    BatchMatmul,
    /// `add(a, b)`: same dtype; shapes aligned at the right, each dim equal, or 1 or missing in one
    /// operand (broadcast) -> the broadcast shape. Sharding: a dim that is not broadcast must be split alike in both; the
    /// partial axes must be equal (a sum of partials is partial).
    Add,
    /// `mul(a, b)`: shapes as `add`; b may be of another float dtype (f32 router weights scaling
    /// bf16 tokens), the output has a's. Sharding as `add`, except at most one operand may be partial
    /// (multiplying by a replicated factor keeps a partial sum a partial sum).
    Mul,
    /// `gelu(x)` -> same type; x not partial.
    Gelu,
    /// `silu(x)` -> same type; x not partial.
    Silu,
    /// `relu(x)` -> same type; x not partial.
    Relu,
    /// `sigmoid(x)` -> same type; x not partial.
    Sigmoid,
    /// `swiglu(gate, up)` = `silu(gate) * up`: same types -> that type; not partial.
    Swiglu,
    /// `softmax(x)` over the last dim -> same type; the last dim unsplit, not partial.
    Softmax,
    /// `rms_norm(x, w)`: x `[..., H]`, w `[G]` with `G` dividing `H` -> x's type: each consecutive
    /// group of `G` elements of the last dim is normalized (`G = H`: the whole vector; `G` = head
    /// width: per-head q/k norms). Sharding: a split of the last dim must keep groups whole; x not
    /// partial; w replicated.
    RmsNorm { eps: F64 },
    /// `layer_norm(x, w[, b])`: as `rms_norm`, with an optional bias `[H]`.
    LayerNorm { eps: F64, bias: bool },
    /// `attention(q, k, v[, k_shared][, sinks])`: q `[B*seq, heads*head_dim]`,
    /// k `[B*kv_seq, kv_heads*(head_dim - shared_k_dim)]`, v `[B*kv_seq, kv_heads*v_head_dim]`,
    /// k_shared `[B*kv_seq, shared_k_dim]`, sinks `[heads]` -> `[B*seq, heads*v_head_dim]`.
    /// RoPE (base `rope_theta`, scaled by `rope_scaling` when given, dims paired as
    /// `rope_pairs` says) rotates the last `rope_dim` dims of each query and key head (of the
    /// shared key when there is one); then `qk_norm_eps` normalizes each query and key head and
    /// `query_temperature` scales each query by its position; `mask` says which keys a query
    /// sees.
    /// Sharding: token dims split alike, each rank holding whole sequences; the head dims of q, k, v
    /// split alike (head parallelism; heads and kv_heads divisible by the split), or q's split and
    /// k, v replicated (heads divisible by the split; each rank reads the kv heads its query heads
    /// use: GQA with fewer kv heads than ranks); k_shared replicated on the head split; sinks split
    /// like the heads; nothing partial.
    /// (Boxed: the attributes are the largest of any op, and every e-node of the passes holds an
    /// op.)
    Attention(Box<AttentionAttrs>),

    // ----- routing -----
    /// `router(logits[, select_bias])`: logits `[T, E]` float, select_bias `[E]` ->
    /// (indices `i32[T, k]`, weights `f32[T, k]`). Scores are softmax or sigmoid of the logits;
    /// experts are chosen on score + bias (inside the best groups when grouped), ties broken by the
    /// lower expert index; weights are the chosen scores, normalized and scaled as configured.
    /// Sharding: the token dim carries; the expert dim must be unsplit; nothing partial.
    Router(RouterAttrs),
    /// `dispatch(x, indices)`: x `[T, H]`, indices `i32[T, k]` -> `[E, C * n, H]` where `n` is the
    /// product of the axes splitting the tokens: every rank fills `C` slots per expert from its own
    /// tokens in capacity priority order (see [`Capacity`]); empty slots are zero. Sharding: the
    /// token split becomes the split of dim 1; H carries; nothing partial.
    Dispatch { experts: u64, capacity: u64 },
    /// `combine(y, indices, weights)`: y `[E, C * n, H]`, indices `i32[T, k]`, weights `[T, k]` ->
    /// `[T, H]`: every token sums its kept slots' rows times its weights (dropped pairs add nothing).
    /// Inverse layout of `dispatch` with the same attributes. Sharding: dim 1 of y must be split as the tokens.
    Combine { experts: u64, capacity: u64 },
    /// `local_routes(indices, weights)` over the experts split on `axis`: indices `i32[T, k]`,
    /// weights `[T, k]`, both replicated on `axis` -> (token ids `i32[n * R]`, weights `f32[n * R]`,
    /// counts `i32[E]`), each split on `axis` in dim 0, `n` the axis size. Rank `r` lists the
    /// (token, choice) pairs routed to its experts `r*E/n .. (r+1)*E/n`, grouped by expert, tokens
    /// ascending; `counts` gives each local expert's number of kept pairs. `R` is the row bound
    /// `T * min(k, E/n)` (dropless) or `min(that, E/n * slots * token_groups)`; unused rows hold
    /// token id `T` and weight 0. With `Slots(c)`, each of `token_groups` equal consecutive groups of
    /// tokens keeps at most `c` pairs per expert, in the same priority as `dispatch`.
    LocalRoutes {
        experts: u64,
        axis: String,
        capacity: Capacity,
        token_groups: u64,
    },
    /// `index_select(x, ids)`: x `[T, H]`, ids `i32[N]` -> `[N, H]`; ids `>= T` give zero rows.
    /// Sharding: x's dim 0 unsplit; ids' split carries to dim 0; x's dim 1 split carries; x not partial.
    IndexSelect,
    /// `index_add(buf, ids, src[, scale])`: buf `[T, H]`, ids `i32[N]`, src `[N, H]`, scale `[N]` ->
    /// `[T, H]`: `buf[ids[i]] += scale[i] * src[i]`, ids `>= T` skipped. Sharding: ids, src and
    /// scale split alike on dim 0; buf's dim 0 unsplit and partial on every axis splitting ids (so
    /// the ranks' sum counts each row once); the output has buf's type.
    IndexAdd { scaled: bool },
    /// `expert_ffn(x[, counts], w_up[, w_gate], w_down[, b_up[, b_gate], b_down])`: experts' FFN
    /// `down(act(x W_gate) * (x W_up))` (gated) or `down(act(x W_up))`; with `bias` each
    /// projection adds its expert's bias (`x W_up + b_up`, ..., `h W_down + b_down`: GPT-OSS).
    /// Padded: x `[E, C, H]`. Grouped: x `[N, H]`, counts `i32[E]`. w_up, w_gate `[E, H, F]`,
    /// w_down `[E, F, H]`, b_up, b_gate `[E, F]`, b_down `[E, H]` -> x's shape. Empty slots
    /// (padded) and padding rows (grouped) are never read downstream; with biases their values
    /// are unspecified. Sharding: the expert dims of x (padded), counts (grouped) and all weights
    /// and biases split alike, the biases' F dim like the weights'; in the grouped form x's rows
    /// split on the same axes; the hidden dim unsplit; nothing partial.
    ExpertFfn {
        layout: FfnLayout,
        act: Activation,
        gated: bool,
        /// Biases follow the weights (default false, not written).
        #[serde(default, skip_serializing_if = "is_false")]
        bias: bool,
    },

    // ----- collectives (over one mesh axis; logical value and global shape unchanged) -----
    /// `all_to_all(x)`: dim `concat_dim` split on `axis` (minor-most) -> that split moves to
    /// `split_dim` (as its minor-most axis). Each rank sends chunk `i` of its `split_dim` to rank `i`
    /// and concatenates what it receives along `concat_dim`.
    AllToAll {
        axis: String,
        split_dim: usize,
        concat_dim: usize,
    },
    /// `all_reduce(x)`: partial on `axis` -> replicated on `axis` (sum).
    AllReduce { axis: String },
    /// `all_gather(x)`: dim `dim` split on `axis` (minor-most) -> unsplit on `axis`.
    AllGather { axis: String, dim: usize },
    /// `reduce_scatter(x)`: partial on `axis`, `dim` not split on it -> `dim` split on `axis`
    /// (minor-most), not partial on it.
    ReduceScatter { axis: String, dim: usize },

    // ----- local layout change (no communication) -----
    /// `shard(x)`: x replicated on `axis` (no dim split on it, not partial on it) -> dim `dim` split
    /// on `axis` (minor-most). Each rank keeps its own block of `dim`; nothing is sent. The inverse
    /// of `all_gather` with the same attributes.
    Shard { axis: String, dim: usize },

    // ----- pipeline -----
    /// `send(x)`: sends x to the stage holding the `recv` of the same channel. No output.
    Send { channel: u32 },
    /// `recv()`: receives the value of the `send` of the same channel; declares its type.
    Recv { channel: u32, ty: TensorType },
}

impl Op {
    /// The JSON / text name of the op.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input(_) => "input",
            Op::Weight(_) => "weight",
            Op::Zeros(_) => "zeros",
            Op::Embedding => "embedding",
            Op::Matmul => "matmul",
            Op::Transpose => "transpose",
            Op::Scale { .. } => "scale",
            Op::BatchMatmul => "batch_matmul",
            Op::Add => "add",
            Op::Mul => "mul",
            Op::Gelu => "gelu",
            Op::Silu => "silu",
            Op::Relu => "relu",
            Op::Sigmoid => "sigmoid",
            Op::Swiglu => "swiglu",
            Op::Softmax => "softmax",
            Op::RmsNorm { .. } => "rms_norm",
            Op::LayerNorm { .. } => "layer_norm",
            Op::Attention(_) => "attention",
            Op::Router(_) => "router",
            Op::Dispatch { .. } => "dispatch",
            Op::Combine { .. } => "combine",
            Op::LocalRoutes { .. } => "local_routes",
            Op::IndexSelect => "index_select",
            Op::IndexAdd { .. } => "index_add",
            Op::ExpertFfn { .. } => "expert_ffn",
            Op::AllToAll { .. } => "all_to_all",
            Op::AllReduce { .. } => "all_reduce",
            Op::AllGather { .. } => "all_gather",
            Op::ReduceScatter { .. } => "reduce_scatter",
            Op::Shard { .. } => "shard",
            Op::Send { .. } => "send",
            Op::Recv { .. } => "recv",
        }
    }

    /// Every op name, in declaration order (for error messages and docs).
    pub const NAMES: &'static [&'static str] = &[
        "input",
        "weight",
        "zeros",
        "embedding",
        "matmul",
        "transpose",
        "scale",
        "batch_matmul",
        "add",
        "mul",
        "gelu",
        "silu",
        "relu",
        "sigmoid",
        "swiglu",
        "softmax",
        "rms_norm",
        "layer_norm",
        "attention",
        "router",
        "dispatch",
        "combine",
        "local_routes",
        "index_select",
        "index_add",
        "expert_ffn",
        "all_to_all",
        "all_reduce",
        "all_gather",
        "reduce_scatter",
        "shard",
        "send",
        "recv",
    ];

    /// The mesh axis a collective communicates over.
    pub fn collective_axis(&self) -> Option<&str> {
        match self {
            Op::AllToAll { axis, .. }
            | Op::AllReduce { axis }
            | Op::AllGather { axis, .. }
            | Op::ReduceScatter { axis, .. } => Some(axis),
            _ => None,
        }
    }

    /// Whether the op communicates between ranks (collectives, send, recv).
    pub fn communicates(&self) -> bool {
        self.collective_axis().is_some() || matches!(self, Op::Send { .. } | Op::Recv { .. })
    }

    /// Whether the op is a leaf that declares its own type.
    pub fn declared_type(&self) -> Option<&TensorType> {
        match self {
            Op::Input(t) | Op::Weight(t) | Op::Zeros(t) | Op::Recv { ty: t, .. } => Some(t),
            _ => None,
        }
    }

    /// Mutable access to a leaf's declared type.
    pub fn declared_type_mut(&mut self) -> Option<&mut TensorType> {
        match self {
            Op::Input(t) | Op::Weight(t) | Op::Zeros(t) | Op::Recv { ty: t, .. } => Some(t),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_list_matches_name() {
        // Every NAMES entry must parse back as an op of that name (unit ops) or be a known op.
        for n in Op::NAMES {
            if let Ok(op) = serde_json::from_value::<Op>(serde_json::json!(n)) {
                assert_eq!(op.name(), *n);
            }
        }
        let op: Op = serde_json::from_str(r#"{"all_reduce": {"axis": "tp"}}"#).unwrap();
        assert_eq!(op.name(), "all_reduce");
    }
}
