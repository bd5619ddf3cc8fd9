//! GPT-OSS (`gpt_oss`: gpt-oss-20b, gpt-oss-120b): every layer MoE; the router is a linear layer
//! with a bias, softmax over the top-k logits (= softmax top-k renormalized) over
//! `num_local_experts` experts of `intermediate_size` with the clamped SwiGLU
//! ([`Activation::OaiSwiglu`], fixed `swiglu_alpha` 1.702 and `swiglu_limit` 7). Attention: GQA
//! with explicit `head_dim`, `attention_bias` on all four projections, a learned sink per head, and
//! sliding-window / full layers from `layer_types` (default: even layers use `sliding_window`).
//! RoPE pairs halves (`_apply_rotary_emb`'s `chunk(2)`); `rope_scaling` is YaRN as transformers
//! computes it (`truncate` false in the published configs: an unrounded correction range; cos and
//! sin times `0.1 ln(factor) + 1`).
//!
//! The experts' biases (`gate_up_proj_bias` `[E, 2F]`, gate and up interleaved like the weights;
//! `down_proj_bias` `[E, H]`) are `expert_ffn` biases. transformers: `models/gpt_oss/`.

use super::*;

pub(super) fn parse(cfg: Cfg<'_>) -> Result<ModelSpec, ImportError> {
    let hidden = cfg.pos("hidden_size")?;
    let n = layer_count(cfg, "num_hidden_layers")?;
    let (experts, top_k) = experts_topk(
        cfg,
        "num_local_experts",
        alias(cfg, &["num_experts_per_tok", "experts_per_token"])?,
    )?;
    // The experts' activation is the clamped SwiGLU whatever `hidden_act` says.
    cfg.ack(&["hidden_act"]);
    let width = cfg.pos("intermediate_size")?;
    // The IR's activation fixes the constants the modeling code hard-codes.
    for (key, fixed) in [("swiglu_limit", 7.0), ("swiglu_alpha", 1.702)] {
        let v = cfg.f64_or(key, fixed)?;
        if v != fixed {
            return Err(cfg.invalid(
                key,
                format!("= {v}: the clamped SwiGLU (oai_swiglu) is defined with {fixed}"),
            ));
        }
    }
    let window = cfg.opt_pos("sliding_window")?;
    let masks = match layer_type_masks(cfg, n, window, None)? {
        Some(m) => m,
        // `GptOssConfig.__post_init__`: even layers slide.
        None => {
            let w = window.ok_or_else(|| {
                cfg.invalid(
                    "sliding_window",
                    "is missing or null, and without layer_types even layers use it",
                )
            })?;
            (0..n)
                .map(|i| {
                    if i % 2 == 0 {
                        Mask::Sliding(w)
                    } else {
                        Mask::Causal
                    }
                })
                .collect()
        }
    };
    let mut layers = decoder_layers(n, |_| true);
    for (l, m) in layers.iter_mut().zip(masks) {
        l.mask = m;
    }
    let bias = cfg.bool_or("attention_bias", true)?;
    let mut attention = plain_attention(
        mha(cfg, hidden, "num_attention_heads", "num_key_value_heads")?,
        rope_theta(cfg, 150_000.0)?,
    );
    attention.qkv_bias = bias;
    attention.o_bias = bias;
    attention.sinks = true;
    attention.rope_scaling = rope::rope_scaling(cfg, rope::Yarn::Transformers)?;
    let mut r = router(Score::Softmax, true);
    r.bias = true;
    let mut spec = decoder_only(
        cfg,
        Decoder {
            family: Family::GptOss,
            hidden,
            tie_embeddings: cfg.bool_or("tie_word_embeddings", false)?,
            norm: rms(cfg, "rms_norm_eps", 1e-5)?,
            attention,
            layers,
            dense_width: width,
            act: Activation::OaiSwiglu,
            routed: Routed {
                experts,
                top_k,
                expert_width: width,
                router: r,
                shared: None,
            },
        },
    )?;
    if let Some(m) = spec.moe.as_mut() {
        m.expert_bias = true;
    }
    Ok(spec)
}
