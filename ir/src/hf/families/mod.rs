//! One parser per family: config keys -> [`ModelSpec`]. Shared readers live here; `rope.rs`
//! reads `rope_scaling` for every family with RoPE but DBRX (which has none). RoPE pairs halves
//! (transformers' `rotate_half`) except in DeepSeek and Llama 4, which pair adjacent dims.

mod dbrx;
mod deepseek;
mod gpt_oss;
mod llama4;
mod mixtral;
mod olmoe;
mod qwen2_moe;
mod qwen3_moe;
mod rope;
mod switch;

use super::spec::*;
use super::{Cfg, ImportError};
use crate::{Activation, Mask, RopePairs, Score};

/// Parses `cfg` as `family`.
pub(super) fn parse(family: Family, cfg: Cfg<'_>) -> Result<ModelSpec, ImportError> {
    match family {
        Family::Mixtral => mixtral::parse(cfg),
        Family::Qwen2Moe => qwen2_moe::parse(cfg),
        Family::Qwen3Moe => qwen3_moe::parse(cfg),
        Family::DeepseekV2 => deepseek::parse(cfg, deepseek::Version::V2),
        Family::DeepseekV3 => deepseek::parse(cfg, deepseek::Version::V3),
        Family::Olmoe => olmoe::parse(cfg),
        Family::Dbrx => dbrx::parse(cfg),
        Family::GptOss => gpt_oss::parse(cfg),
        Family::SwitchTransformers => switch::parse(cfg),
        Family::Llama4 => llama4::parse(cfg),
    }
}

/// Checks that hold for every family (the parsers check key-specific facts with key names).
pub(super) fn check(spec: &ModelSpec) -> Result<(), ImportError> {
    if spec.layers.is_empty() {
        return Err(ImportError::Key {
            key: "num_hidden_layers".into(),
            why: "must be positive, is 0".into(),
        });
    }
    if spec.layers.iter().any(|l| l.moe) && spec.moe.is_none() {
        return Err(ImportError::Internal(
            "MoE layers without an MoE spec".into(),
        ));
    }
    Ok(())
}

/// `heads`, `kv_heads`, `head_dim` from the usual keys (`head_dim` defaults to hidden / heads).
pub(super) fn mha(
    cfg: Cfg<'_>,
    hidden: u64,
    heads_key: &str,
    kv_key: &str,
) -> Result<AttnKind, ImportError> {
    let heads = cfg.pos(heads_key)?;
    let kv_heads = cfg.opt_pos(kv_key)?.unwrap_or(heads);
    if heads % kv_heads != 0 {
        return Err(cfg.invalid(
            kv_key,
            format!("= {kv_heads} must divide {heads_key} = {heads}"),
        ));
    }
    let head_dim = match cfg.opt_pos("head_dim")? {
        Some(d) => d,
        None => {
            if hidden % heads != 0 {
                return Err(cfg.invalid(
                    heads_key,
                    format!(
                        "= {heads} must divide the hidden size {hidden} when head_dim is not given"
                    ),
                ));
            }
            hidden / heads
        }
    };
    Ok(AttnKind::Mha {
        heads,
        kv_heads,
        head_dim,
    })
}

/// Reads the expert count and top-k, checking 1 <= k <= experts.
pub(super) fn experts_topk(
    cfg: Cfg<'_>,
    experts_key: &str,
    k_key: &str,
) -> Result<(u64, u64), ImportError> {
    let e = cfg.pos(experts_key)?;
    let k = cfg.pos(k_key)?;
    if k > e {
        return Err(cfg.invalid(
            k_key,
            format!(
                "= {k} exceeds {} = {e}: a token cannot pick more experts than exist",
                cfg.path(experts_key)
            ),
        ));
    }
    Ok((e, k))
}

/// The key among `keys` (spellings of one setting, e.g. `num_experts` and the
/// `num_local_experts` that transformers v5 writes) that the config uses: the first present, else
/// the first. Two present with different values contradict each other.
pub(super) fn alias<'k>(cfg: Cfg<'_>, keys: &[&'k str]) -> Result<&'k str, ImportError> {
    let mut found: Option<&'k str> = None;
    for &k in keys {
        let Some(v) = cfg.get(k) else { continue };
        match found {
            None => found = Some(k),
            Some(f) if cfg.get(f) != Some(v) => {
                return Err(cfg.invalid(
                    k,
                    format!(
                        "= {v} contradicts {} = {}, another name of the same setting",
                        cfg.path(f),
                        cfg.get(f).map_or_else(String::new, ToString::to_string)
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    Ok(found.unwrap_or(keys[0]))
}

/// The activation named by `hidden_act` (and friends).
pub(super) fn activation(
    cfg: Cfg<'_>,
    key: &str,
    default: Activation,
) -> Result<Activation, ImportError> {
    Ok(match cfg.opt_str(key)? {
        None => default,
        Some("silu" | "swish") => Activation::Silu,
        Some("gelu" | "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast") => Activation::Gelu,
        Some("relu") => Activation::Relu,
        Some(other) => {
            return Err(cfg.invalid(
                key,
                format!("`{other}` is not a supported activation (silu, gelu, relu)"),
            ))
        }
    })
}

/// The most layers (of one stack) an imported model may have.
pub(super) const MAX_LAYERS: u64 = 10_000;

/// A layer count under `key`: positive and at most [`MAX_LAYERS`].
pub(super) fn layer_count(cfg: Cfg<'_>, key: &str) -> Result<u64, ImportError> {
    let n = cfg.pos(key)?;
    if n > MAX_LAYERS {
        return Err(cfg.invalid(
            key,
            format!("is {n}; more than {MAX_LAYERS} layers are not supported"),
        ));
    }
    Ok(n)
}

/// `n` decoder layers with causal masks and RoPE, MoE where `moe(i)`.
pub(super) fn decoder_layers(n: u64, moe: impl Fn(u64) -> bool) -> Vec<LayerSpec> {
    (0..n)
        .map(|i| LayerSpec {
            moe: moe(i),
            mask: Mask::Causal,
            rope: true,
            cross_attention: false,
        })
        .collect()
}

/// The usual RMSNorm.
pub(super) fn rms(cfg: Cfg<'_>, key: &str, default: f64) -> Result<NormSpec, ImportError> {
    Ok(NormSpec {
        layer_norm: false,
        bias: false,
        eps: cfg.f64_or(key, default)?,
    })
}

/// The RoPE base: `rope_theta`, or `rope_parameters.rope_theta` in configs written by newer
/// transformers versions, else `default`.
pub(super) fn rope_theta(cfg: Cfg<'_>, default: f64) -> Result<f64, ImportError> {
    if let Some(t) = cfg.opt_f64("rope_theta")? {
        return positive_f64(cfg, "rope_theta", t);
    }
    if let Some(rp) = cfg.sub("rope_parameters", rope::prefixes(cfg).1)? {
        if let Some(t) = rp.opt_f64("rope_theta")? {
            return positive_f64(rp, "rope_theta", t);
        }
    }
    Ok(default)
}

/// `clip_qkv` under `key`: absent or null is no clamp, else a positive number.
pub(super) fn clip_qkv(cfg: Cfg<'_>, key: &str) -> Result<Option<f64>, ImportError> {
    cfg.opt_f64(key)?
        .map(|c| positive_f64(cfg, key, c))
        .transpose()
}

fn positive_f64(cfg: Cfg<'_>, key: &str, v: f64) -> Result<f64, ImportError> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(cfg.invalid(key, format!("must be a positive number, is {v}")))
    }
}

/// Plain attention: no q/k norms, no biases, no sinks.
pub(super) fn plain_attention(kind: AttnKind, rope_theta: f64) -> AttentionSpec {
    AttentionSpec {
        kind,
        rope_theta,
        rope_pairs: RopePairs::Halves,
        rope_scaling: None,
        rope_qk_norm: None,
        nope_temperature: None,
        qk_norm: QkNorm::None,
        qkv_bias: false,
        o_bias: false,
        sinks: false,
        clip_qkv: None,
        softmax_scale: None,
        relative_bias: None,
    }
}

/// A router without groups, selection bias or linear bias.
pub(super) fn router(score: Score, normalize: bool) -> RouterSpec {
    RouterSpec {
        score,
        normalize,
        scale: 1.0,
        groups: None,
        select_bias: false,
        bias: false,
        scale_input: false,
    }
}

/// A list of layer indices under `key` (`None` when absent), each checked to be below `layers`.
pub(super) fn layer_indices(
    cfg: Cfg<'_>,
    key: &str,
    layers: u64,
) -> Result<Option<Vec<u64>>, ImportError> {
    let Some(list) = cfg.opt_u64_list(key)? else {
        return Ok(None);
    };
    for (i, &l) in list.iter().enumerate() {
        if l >= layers {
            return Err(cfg.invalid(
                &format!("{key}[{i}]"),
                format!("= {l} is not a layer index (there are {layers} layers)"),
            ));
        }
    }
    Ok(Some(list))
}

/// Qwen-MoE placement (`Qwen2MoeDecoderLayer`): layer `i` is MoE unless listed in
/// `mlp_only_layers`, when `(i + 1) % decoder_sparse_step == 0`.
pub(super) fn qwen_moe_layers(cfg: Cfg<'_>, layers: u64) -> Result<Vec<bool>, ImportError> {
    let step = cfg.opt_pos("decoder_sparse_step")?.unwrap_or(1);
    let dense = layer_indices(cfg, "mlp_only_layers", layers)?.unwrap_or_default();
    Ok((0..layers)
        .map(|i| !dense.contains(&i) && (i + 1) % step == 0)
        .collect())
}

/// Self-attention masks from an explicit `layer_types` list (`None` when absent): `full_attention`
/// is causal, `sliding_attention` uses `sliding` (from `sliding_window`), `chunked_attention` uses
/// `chunk` (from `attention_chunk_size`).
pub(super) fn layer_type_masks(
    cfg: Cfg<'_>,
    layers: u64,
    sliding: Option<u64>,
    chunk: Option<u64>,
) -> Result<Option<Vec<Mask>>, ImportError> {
    let Some(types) = cfg.opt_array("layer_types")? else {
        return Ok(None);
    };
    if types.len() as u64 != layers {
        return Err(cfg.invalid(
            "layer_types",
            format!(
                "has {} entries but the model has {layers} layers",
                types.len()
            ),
        ));
    }
    types
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let key = format!("layer_types[{i}]");
            match t.as_str() {
                Some("full_attention") => Ok(Mask::Causal),
                Some("sliding_attention") => sliding.map(Mask::Sliding).ok_or_else(|| {
                    cfg.invalid(
                        "sliding_window",
                        format!("is missing or null, but {key} is sliding_attention"),
                    )
                }),
                Some("chunked_attention") => chunk.map(Mask::Chunked).ok_or_else(|| {
                    cfg.invalid(
                        "attention_chunk_size",
                        format!("is missing or null, but {key} is chunked_attention"),
                    )
                }),
                Some(other) => Err(cfg.invalid(
                    &key,
                    format!(
                        "`{other}` is not a known layer type \
                         (full_attention, sliding_attention, chunked_attention)"
                    ),
                )),
                None => Err(cfg.invalid(&key, format!("must be a string, is {t}"))),
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The dense-MLP width: required when some layer is dense, else `fallback` (never lowered).
pub(super) fn dense_width(
    cfg: Cfg<'_>,
    key: &str,
    layers: &[LayerSpec],
    fallback: u64,
) -> Result<u64, ImportError> {
    if layers.iter().any(|l| !l.moe) {
        cfg.pos(key)
    } else {
        Ok(cfg.opt_pos(key)?.unwrap_or(fallback))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rope_theta_reads_both_spellings() {
        let v = json!({"rope_theta": 5e5});
        assert_eq!(rope_theta(Cfg::root(&v).unwrap(), 1.0).unwrap(), 5e5);
        let v = json!({"rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}});
        assert_eq!(rope_theta(Cfg::root(&v).unwrap(), 1.0).unwrap(), 1e6);
        let v = json!({});
        assert_eq!(rope_theta(Cfg::root(&v).unwrap(), 7.0).unwrap(), 7.0);
        let v = json!({"rope_theta": -1});
        let e = rope_theta(Cfg::root(&v).unwrap(), 7.0).unwrap_err();
        assert!(e.to_string().contains("rope_theta"), "{e}");
    }

    #[test]
    fn qwen_placement_follows_step_and_mlp_only_layers() {
        let v = json!({"decoder_sparse_step": 2, "mlp_only_layers": [3]});
        let m = qwen_moe_layers(Cfg::root(&v).unwrap(), 6).unwrap();
        assert_eq!(m, [false, true, false, false, false, true]);
        let v = json!({"mlp_only_layers": [6]});
        let e = qwen_moe_layers(Cfg::root(&v).unwrap(), 6).unwrap_err();
        assert!(e.to_string().contains("mlp_only_layers[0]"), "{e}");
        let v = json!({"decoder_sparse_step": 0});
        let e = qwen_moe_layers(Cfg::root(&v).unwrap(), 6).unwrap_err();
        assert!(e.to_string().contains("decoder_sparse_step"), "{e}");
    }

    #[test]
    fn aliases_pick_the_present_key_and_catch_contradictions() {
        let keys = ["num_experts", "num_local_experts"];
        let v = json!({"num_local_experts": 8});
        assert_eq!(
            alias(Cfg::root(&v).unwrap(), &keys).unwrap(),
            "num_local_experts"
        );
        let v = json!({});
        assert_eq!(alias(Cfg::root(&v).unwrap(), &keys).unwrap(), "num_experts");
        let v = json!({"num_experts": 8, "num_local_experts": 8});
        assert_eq!(alias(Cfg::root(&v).unwrap(), &keys).unwrap(), "num_experts");
        let v = json!({"num_experts": 8, "num_local_experts": 16});
        let e = alias(Cfg::root(&v).unwrap(), &keys).unwrap_err();
        assert!(e.to_string().contains("num_local_experts"), "{e}");
    }

    #[test]
    fn layer_types_map_to_masks() {
        let v =
            json!({"layer_types": ["sliding_attention", "full_attention", "chunked_attention"]});
        let c = Cfg::root(&v).unwrap();
        let m = layer_type_masks(c, 3, Some(128), Some(8192))
            .unwrap()
            .unwrap();
        assert_eq!(m, [Mask::Sliding(128), Mask::Causal, Mask::Chunked(8192)]);
        let e = layer_type_masks(c, 3, None, Some(8192)).unwrap_err();
        assert!(e.to_string().contains("sliding_window"), "{e}");
        let e = layer_type_masks(c, 4, Some(1), Some(1)).unwrap_err();
        assert!(e.to_string().contains("layer_types"), "{e}");
        let v = json!({"layer_types": ["full_attention", "linear_attention"]});
        let e = layer_type_masks(Cfg::root(&v).unwrap(), 2, None, None).unwrap_err();
        assert!(e.to_string().contains("layer_types[1]"), "{e}");
    }
}

/// The routed experts of a decoder-only family: gated experts of the model's activation, dropless.
#[derive(Debug, Clone, Copy)]
pub(super) struct Routed {
    pub experts: u64,
    pub top_k: u64,
    pub expert_width: u64,
    pub router: RouterSpec,
    pub shared: Option<SharedSpec>,
}

/// What a decoder-only family reads itself; [`decoder_only`] fills in the rest the same way for all.
#[derive(Debug, Clone)]
pub(super) struct Decoder {
    pub family: Family,
    pub hidden: u64,
    pub tie_embeddings: bool,
    pub norm: NormSpec,
    pub attention: AttentionSpec,
    pub layers: Vec<LayerSpec>,
    /// Width of the dense layers' gated MLP (unused when every layer is MoE).
    pub dense_width: u64,
    pub act: Activation,
    pub routed: Routed,
}

/// A decoder-only spec: `vocab_size` from the config, gated dense MLPs and gated dropless experts of `act`.
pub(super) fn decoder_only(cfg: Cfg<'_>, d: Decoder) -> Result<ModelSpec, ImportError> {
    let r = d.routed;
    Ok(ModelSpec {
        family: d.family,
        name: d.family.name().into(),
        vocab: cfg.pos("vocab_size")?,
        hidden: d.hidden,
        tie_embeddings: d.tie_embeddings,
        norm: d.norm,
        attention: d.attention,
        layers: d.layers,
        encoder_layers: 0,
        dense_mlp: MlpSpec {
            width: d.dense_width,
            gated: true,
            act: d.act,
        },
        moe: Some(MoeSpec {
            experts: r.experts,
            top_k: r.top_k,
            expert_width: r.expert_width,
            gated: true,
            act: d.act,
            router: r.router,
            shared: r.shared,
            // `capacity_factor` (not in the published configs; `--set capacity_factor=1.25`):
            // the capacity-padded GShard form instead of dropless routing.
            capacity: match cfg.opt_f64("capacity_factor")? {
                Some(f) if f > 0.0 => CapacitySpec::Factor(f),
                _ => CapacitySpec::Dropless,
            },
            expert_bias: false,
        }),
        head_scale: None,
    })
}
