//! OLMoE (`olmoe`: OLMoE-1B-7B): every layer MoE, softmax top-k over `num_experts` SwiGLU experts
//! of `intermediate_size` (renormalized only with `norm_topk_prob`), RMSNorm over the whole query
//! and key projections (`q_norm` of `heads * head_dim`, `k_norm` of `kv_heads * head_dim`), and
//! `attention_bias` on all four projections. `clip_qkv` clamps the normed q, k and the v
//! projections to `[-clip_qkv, clip_qkv]` (an attention attribute; null: no clamp).
//! transformers: `models/olmoe/`.

use super::*;

/// The expert count, under its name and the one transformers v5 writes.
const EXPERTS: &[&str] = &["num_experts", "num_local_experts"];

pub(super) fn parse(cfg: Cfg<'_>) -> Result<ModelSpec, ImportError> {
    let hidden = cfg.pos("hidden_size")?;
    let n = layer_count(cfg, "num_hidden_layers")?;
    let (experts, top_k) = experts_topk(cfg, alias(cfg, EXPERTS)?, "num_experts_per_tok")?;
    let width = cfg.pos("intermediate_size")?;
    let act = activation(cfg, "hidden_act", Activation::Silu)?;
    let bias = cfg.bool_or("attention_bias", false)?;
    let mut attention = plain_attention(
        mha(cfg, hidden, "num_attention_heads", "num_key_value_heads")?,
        rope_theta(cfg, 10_000.0)?,
    );
    attention.rope_scaling = rope::rope_scaling(cfg, rope::Yarn::Transformers)?;
    attention.qk_norm = QkNorm::Full;
    attention.qkv_bias = bias;
    attention.o_bias = bias;
    attention.clip_qkv = clip_qkv(cfg, "clip_qkv")?;
    decoder_only(
        cfg,
        Decoder {
            family: Family::Olmoe,
            hidden,
            tie_embeddings: cfg.bool_or("tie_word_embeddings", false)?,
            norm: rms(cfg, "rms_norm_eps", 1e-5)?,
            attention,
            layers: decoder_layers(n, |_| true),
            dense_width: width,
            act,
            routed: Routed {
                experts,
                top_k,
                expert_width: width,
                router: router(Score::Softmax, cfg.bool_or("norm_topk_prob", false)?),
                shared: None,
            },
        },
    )
}
