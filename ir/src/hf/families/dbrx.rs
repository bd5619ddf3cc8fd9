//! DBRX (`dbrx`): sizes at the top level under their own names (`d_model`, `n_heads`, `n_layers`),
//! attention and FFN settings in nested `attn_config` / `ffn_config` objects. Every layer MoE:
//! softmax top-k (`moe_top_k`) over `moe_num_experts` GLU experts of `ffn_hidden_size`, weights
//! divided by their `moe_normalize_expert_weights`-norm (1: by their sum; null: not at all). GQA
//! with `kv_n_heads` (fused Wqkv, no biases; `clip_qkv` clamps the Wqkv output), LayerNorm without
//! bias, untied embeddings. RoPE base: `rope_parameters.rope_theta` in configs transformers 5
//! wrote (what it computes with), else `attn_config.rope_theta` (DBRX's own code, transformers 4).
//! transformers: `models/dbrx/`.

use super::*;

pub(super) fn parse(cfg: Cfg<'_>) -> Result<ModelSpec, ImportError> {
    let hidden = cfg.pos("d_model")?;
    let heads = cfg.pos("n_heads")?;
    let n = layer_count(cfg, "n_layers")?;
    if hidden % heads != 0 {
        return Err(cfg.invalid(
            "n_heads",
            format!("= {heads} must divide d_model = {hidden}"),
        ));
    }
    let ffn = cfg
        .sub("ffn_config", "ffn_config.")?
        .ok_or_else(|| cfg.invalid("ffn_config", "is missing"))?;
    // transformers' `DbrxAttentionConfig` defaults: one KV head, theta 10^4, no clamp.
    let attn = cfg.sub("attn_config", "attn_config.")?;
    let (kv_heads, attn_theta, clip) = match attn {
        Some(a) => (
            a.opt_pos("kv_n_heads")?.unwrap_or(1),
            rope_theta(a, 10_000.0)?,
            clip_qkv(a, "clip_qkv")?,
        ),
        None => (1, 10_000.0, None),
    };
    // transformers 5 computes RoPE from the top-level `rope_parameters` it writes (theta 10^4
    // unless set there) and no longer reads `attn_config.rope_theta`, which DBRX's own code and
    // transformers 4 use. A config that has `rope_parameters` was written by transformers 5 and
    // runs as it computes; else `attn_config.rope_theta`, as the published config means it.
    let theta = match cfg.sub("rope_parameters", "rope_parameters.")? {
        Some(rp) if rp.opt_str("rope_type")?.is_some_and(|t| t != "default") => {
            return Err(rp.invalid("rope_type", "is not `default`: DBRX's RoPE is not scaled"))
        }
        Some(rp) => match rp.opt_f64("rope_theta")? {
            Some(t) if t.is_finite() && t > 0.0 => t,
            Some(t) => {
                return Err(rp.invalid("rope_theta", format!("must be a positive number, is {t}")))
            }
            None => 10_000.0,
        },
        None => attn_theta,
    };
    // transformers 5 mirrors `attn_config.kv_n_heads` and `d_model` at other keys.
    if let Some(n) = cfg
        .opt_u64("num_key_value_heads")?
        .filter(|&n| n != kv_heads)
    {
        return Err(cfg.invalid(
            "num_key_value_heads",
            format!("= {n} contradicts attn_config.kv_n_heads = {kv_heads}"),
        ));
    }
    if heads % kv_heads != 0 {
        return Err(ImportError::Key {
            key: "attn_config.kv_n_heads".into(),
            why: format!("= {kv_heads} must divide n_heads = {heads}"),
        });
    }
    let (experts, top_k) = experts_topk(ffn, "moe_num_experts", "moe_top_k")?;
    let width = ffn.pos("ffn_hidden_size")?;
    if let Some(h) = ffn.opt_u64("hidden_size")?.filter(|&h| h != hidden) {
        return Err(ffn.invalid(
            "hidden_size",
            format!("= {h} contradicts d_model = {hidden}"),
        ));
    }
    let act = match ffn.sub("ffn_act_fn", "ffn_config.ffn_act_fn.")? {
        Some(a) => activation(a, "name", Activation::Silu)?,
        None => Activation::Silu,
    };
    let normalize = if ffn.is_null("moe_normalize_expert_weights") {
        false
    } else {
        match ffn.f64_or("moe_normalize_expert_weights", 1.0)? {
            1.0 => true,
            p => {
                return Err(ffn.invalid(
                    "moe_normalize_expert_weights",
                    format!(
                        "= {p}: only the 1-norm (divide by the sum) or null (no normalization) \
                         is supported"
                    ),
                ))
            }
        }
    };
    if cfg.bool_or("tie_word_embeddings", false)? {
        return Err(cfg.invalid(
            "tie_word_embeddings",
            "must be false: DBRX does not support tied embeddings",
        ));
    }
    Ok(ModelSpec {
        family: Family::Dbrx,
        name: "dbrx".into(),
        vocab: cfg.pos("vocab_size")?,
        hidden,
        tie_embeddings: false,
        // `nn.LayerNorm(d_model, bias=False)` with torch's default eps.
        norm: NormSpec {
            layer_norm: true,
            bias: false,
            eps: 1e-5,
        },
        attention: AttentionSpec {
            clip_qkv: clip,
            ..plain_attention(
                AttnKind::Mha {
                    heads,
                    kv_heads,
                    head_dim: hidden / heads,
                },
                theta,
            )
        },
        layers: decoder_layers(n, |_| true),
        encoder_layers: 0,
        dense_mlp: MlpSpec {
            width,
            gated: true,
            act,
        },
        moe: Some(MoeSpec {
            experts,
            top_k,
            expert_width: width,
            gated: true,
            act,
            router: router(Score::Softmax, normalize),
            shared: None,
            capacity: CapacitySpec::Dropless,
            expert_bias: false,
        }),
        head_scale: None,
    })
}
