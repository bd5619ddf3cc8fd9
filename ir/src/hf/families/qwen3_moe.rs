//! Qwen3-MoE (`qwen3_moe`: Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen2-MoE's layer placement
//! (`decoder_sparse_step`, `mlp_only_layers`) and softmax top-k router (`norm_topk_prob`), but no
//! shared expert, per-head RMSNorm on queries and keys (`q_norm`/`k_norm` of `head_dim`), and
//! `attention_bias` on all four projections. With `use_sliding_window` every layer uses the
//! window. transformers: `models/qwen3_moe/`.

use super::*;

/// The expert count, under its name and the one transformers v5 writes.
const EXPERTS: &[&str] = &["num_experts", "num_local_experts"];

pub(super) fn parse(cfg: Cfg<'_>) -> Result<ModelSpec, ImportError> {
    let hidden = cfg.pos("hidden_size")?;
    let n = layer_count(cfg, "num_hidden_layers")?;
    let (experts, top_k) = experts_topk(cfg, alias(cfg, EXPERTS)?, "num_experts_per_tok")?;
    let expert_width = cfg.pos("moe_intermediate_size")?;
    let act = activation(cfg, "hidden_act", Activation::Silu)?;
    let moe = qwen_moe_layers(cfg, n)?;
    let mut layers = decoder_layers(n, |i| moe[i as usize]);
    if cfg.bool_or("use_sliding_window", false)? {
        let w = cfg.opt_pos("sliding_window")?.ok_or_else(|| {
            cfg.invalid(
                "sliding_window",
                "is missing, but use_sliding_window is true",
            )
        })?;
        for l in &mut layers {
            l.mask = Mask::Sliding(w);
        }
    } else {
        cfg.ack(&["sliding_window"]);
    }
    let dense = dense_width(cfg, "intermediate_size", &layers, expert_width)?;
    let bias = cfg.bool_or("attention_bias", false)?;
    let mut attention = plain_attention(
        mha(cfg, hidden, "num_attention_heads", "num_key_value_heads")?,
        rope_theta(cfg, 10_000.0)?,
    );
    attention.rope_scaling = rope::rope_scaling(cfg, rope::Yarn::Transformers)?;
    attention.qk_norm = QkNorm::PerHead;
    attention.qkv_bias = bias;
    attention.o_bias = bias;
    decoder_only(
        cfg,
        Decoder {
            family: Family::Qwen3Moe,
            hidden,
            tie_embeddings: cfg.bool_or("tie_word_embeddings", false)?,
            norm: rms(cfg, "rms_norm_eps", 1e-6)?,
            attention,
            layers,
            dense_width: dense,
            act,
            routed: Routed {
                experts,
                top_k,
                expert_width,
                router: router(Score::Softmax, cfg.bool_or("norm_topk_prob", false)?),
                shared: None,
            },
        },
    )
}
