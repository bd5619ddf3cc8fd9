//! The normalized description of a model that every family parser produces and the lowering
//! consumes. Families differ in key names and nesting; once parsed, they differ only in these fields.

use crate::{Activation, Groups, Mask, QueryTemperature, RopePairs, RopeScaling, Score};

/// The supported families, by `model_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Mixtral,
    Qwen2Moe,
    Qwen3Moe,
    DeepseekV2,
    DeepseekV3,
    Olmoe,
    Dbrx,
    GptOss,
    SwitchTransformers,
    Llama4,
}

impl Family {
    /// Every family with the `model_type` values that select it.
    pub const ALL: &'static [(Family, &'static [&'static str])] = &[
        (Family::Mixtral, &["mixtral"]),
        (Family::Qwen2Moe, &["qwen2_moe"]),
        (Family::Qwen3Moe, &["qwen3_moe"]),
        (Family::DeepseekV2, &["deepseek_v2"]),
        (Family::DeepseekV3, &["deepseek_v3"]),
        (Family::Olmoe, &["olmoe"]),
        (Family::Dbrx, &["dbrx"]),
        (Family::GptOss, &["gpt_oss"]),
        (Family::SwitchTransformers, &["switch_transformers"]),
        (Family::Llama4, &["llama4", "llama4_text"]),
    ];

    /// The family of a `model_type`.
    pub fn from_model_type(t: &str) -> Option<Family> {
        Family::ALL
            .iter()
            .find(|(_, names)| names.contains(&t))
            .map(|(f, _)| *f)
    }

    /// The canonical `model_type`.
    pub fn name(self) -> &'static str {
        Family::ALL
            .iter()
            .find(|(f, _)| *f == self)
            .map_or("?", |(_, n)| n[0])
    }

    /// All accepted `model_type` values, for error messages.
    pub fn supported() -> String {
        Family::ALL
            .iter()
            .flat_map(|(_, n)| n.iter().copied())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Normalization layers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormSpec {
    /// LayerNorm (mean-centred) instead of RMSNorm.
    pub layer_norm: bool,
    /// LayerNorm with a bias.
    pub bias: bool,
    pub eps: f64,
}

/// Per-head normalization of queries and keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkNorm {
    None,
    /// RMSNorm over each head (`[head_dim]` weights; Qwen3).
    PerHead,
    /// RMSNorm over the whole projection (`[heads * head_dim]` weights; OLMoE).
    Full,
}

/// The attention projections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnKind {
    /// Multi-head / grouped-query attention.
    Mha {
        heads: u64,
        kv_heads: u64,
        head_dim: u64,
    },
    /// DeepSeek's multi-head latent attention.
    Mla {
        heads: u64,
        /// Low-rank query compression (None: a full query projection, as in DeepSeek-V2-Lite).
        q_lora_rank: Option<u64>,
        kv_lora_rank: u64,
        qk_nope_dim: u64,
        qk_rope_dim: u64,
        v_head_dim: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionSpec {
    pub kind: AttnKind,
    pub rope_theta: f64,
    /// How RoPE pairs the rotated dims, on the layers that apply RoPE.
    pub rope_pairs: RopePairs,
    /// RoPE frequency scaling (the config's `rope_scaling`), on the layers that apply RoPE.
    pub rope_scaling: Option<RopeScaling>,
    /// The `eps` of a weightless RMS norm of every rotated query and key head (Llama 4's
    /// `use_qk_norm`), on the layers that apply RoPE.
    pub rope_qk_norm: Option<f64>,
    /// A per-position query factor on the self-attention layers that skip RoPE (Llama 4's
    /// attention temperature tuning).
    pub nope_temperature: Option<QueryTemperature>,
    pub qk_norm: QkNorm,
    /// Biases on q, k, v projections.
    pub qkv_bias: bool,
    /// Bias on the output projection.
    pub o_bias: bool,
    /// Learned attention sinks per head (GPT-OSS).
    pub sinks: bool,
    /// q, k and v clamped to `[-clip, clip]` (OLMoE's `clip_qkv`, DBRX's `attn_config.clip_qkv`).
    pub clip_qkv: Option<f64>,
    /// The factor on `q.k` instead of `1 / sqrt(head_dim)` (T5: 1).
    pub softmax_scale: Option<f64>,
    /// T5's relative position bias on self-attention: (buckets, max distance); one table per
    /// stack, bidirectional in the encoder.
    pub relative_bias: Option<(u64, u64)>,
}

/// One transformer layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerSpec {
    /// Routed experts (else the dense MLP).
    pub moe: bool,
    /// Self-attention mask.
    pub mask: Mask,
    /// Whether RoPE is applied (Llama-4's NoPE layers: false).
    pub rope: bool,
    /// A cross-attention sublayer over the encoder output (decoder layers of encoder-decoder models).
    pub cross_attention: bool,
}

/// A dense feed-forward block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlpSpec {
    pub width: u64,
    pub gated: bool,
    pub act: Activation,
}

/// How the router scores and picks experts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RouterSpec {
    pub score: Score,
    pub normalize: bool,
    pub scale: f64,
    pub groups: Option<Groups>,
    /// DeepSeek-V3's selection-only bias.
    pub select_bias: bool,
    /// A bias on the router's linear layer (GPT-OSS).
    pub bias: bool,
    /// The routed expert's *input* is multiplied by the token's router weight, and its output
    /// added unweighted (Llama 4: `routed_in = x * sigmoid(score)`); else the output is weighted.
    pub scale_input: bool,
}

/// Shared experts, run on every token beside the routed ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedSpec {
    /// Total width of the shared experts, as one MLP.
    pub width: u64,
    /// A sigmoid gate `[hidden, 1]` scales the shared output (Qwen2-MoE).
    pub gate: bool,
}

/// Expert capacity as configured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CapacitySpec {
    Dropless,
    /// Slots per expert = ceil(factor * tokens * k / experts).
    Factor(f64),
    /// Slots per expert, fixed (Switch's `expert_capacity`).
    Slots(u64),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MoeSpec {
    pub experts: u64,
    pub top_k: u64,
    /// Width of one routed expert.
    pub expert_width: u64,
    pub gated: bool,
    pub act: Activation,
    pub router: RouterSpec,
    pub shared: Option<SharedSpec>,
    pub capacity: CapacitySpec,
    /// Per-expert biases on the up, gate and down projections (GPT-OSS's `gate_up_proj_bias`,
    /// `down_proj_bias`).
    pub expert_bias: bool,
}

/// A model, normalized.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    pub family: Family,
    /// Model name (from `_name_or_path` when present, else the family).
    pub name: String,
    pub vocab: u64,
    pub hidden: u64,
    pub tie_embeddings: bool,
    pub norm: NormSpec,
    pub attention: AttentionSpec,
    /// Every layer; in encoder-decoder models the first `encoder_layers` are the encoder.
    pub layers: Vec<LayerSpec>,
    pub encoder_layers: u64,
    /// The MLP of dense layers.
    pub dense_mlp: MlpSpec,
    pub moe: Option<MoeSpec>,
    /// A factor on the final hidden states before the LM head (T5 with tied embeddings:
    /// `d_model^-0.5`).
    pub head_scale: Option<f64>,
}
