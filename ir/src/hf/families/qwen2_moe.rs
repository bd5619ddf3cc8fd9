//! Qwen2-MoE (`qwen2_moe`: Qwen1.5-MoE, Qwen2-57B-A14B): softmax top-k over `num_experts`
//! SwiGLU experts of `moe_intermediate_size` (renormalized only with `norm_topk_prob`), plus one
//! shared expert of `shared_expert_intermediate_size` scaled by a sigmoid gate `[hidden, 1]`.
//! Layer `i` is MoE unless listed in `mlp_only_layers`, when `(i + 1) % decoder_sparse_step == 0`;
//! the other layers use a dense MLP of `intermediate_size`. Attention has q/k/v biases
//! (`qkv_bias`, default true) and no output bias. transformers: `models/qwen2_moe/`.

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
    // Sliding windows (`Qwen2MoeConfig.__post_init__`): only with `use_sliding_window`; then
    // `layer_types` if given, else every even layer below `max_window_layers`.
    if cfg.bool_or("use_sliding_window", false)? {
        let window = cfg.opt_pos("sliding_window")?;
        let masks = match layer_type_masks(cfg, n, window, None)? {
            Some(m) => m,
            None => {
                let w = window.ok_or_else(|| {
                    cfg.invalid(
                        "sliding_window",
                        "is missing, but use_sliding_window is true",
                    )
                })?;
                let below = cfg.opt_u64("max_window_layers")?.unwrap_or(28);
                (0..n)
                    .map(|i| {
                        if i % 2 == 0 && i < below {
                            Mask::Sliding(w)
                        } else {
                            Mask::Causal
                        }
                    })
                    .collect()
            }
        };
        for (l, m) in layers.iter_mut().zip(masks) {
            l.mask = m;
        }
    } else {
        // transformers 5 writes `layer_types` (all full attention without sliding windows, whose
        // width it sets to 0) and never reads `sliding_window` then.
        cfg.ack(&["sliding_window"]);
        if let Some(masks) = layer_type_masks(cfg, n, Some(1), None)? {
            if let Some(i) = masks.iter().position(|m| *m != Mask::Causal) {
                return Err(cfg.invalid(
                    &format!("layer_types[{i}]"),
                    "is sliding_attention, but use_sliding_window is false",
                ));
            }
        }
    }
    // A zero-width shared expert is no shared expert.
    let shared = match cfg.u64("shared_expert_intermediate_size")? {
        0 => None,
        width => Some(SharedSpec { width, gate: true }),
    };
    let dense = dense_width(cfg, "intermediate_size", &layers, expert_width)?;
    let mut attention = plain_attention(
        mha(cfg, hidden, "num_attention_heads", "num_key_value_heads")?,
        rope_theta(cfg, 10_000.0)?,
    );
    attention.rope_scaling = rope::rope_scaling(cfg, rope::Yarn::Transformers)?;
    attention.qkv_bias = cfg.bool_or("qkv_bias", true)?;
    decoder_only(
        cfg,
        Decoder {
            family: Family::Qwen2Moe,
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
                shared,
            },
        },
    )
}
