//! DeepSeek-V2 (`deepseek_v2`: V2, V2-Lite) and DeepSeek-V3 (`deepseek_v3`).
//!
//! Both: multi-head latent attention (`kv_lora_rank`, `q_lora_rank` — null for a full query
//! projection as in V2-Lite —, `qk_nope_head_dim`, `qk_rope_head_dim`, `v_head_dim`), routed
//! SwiGLU experts of `moe_intermediate_size`, and `n_shared_experts` shared experts run as one MLP
//! of `n_shared_experts * moe_intermediate_size`. Layer `i` is MoE when `n_routed_experts` is set,
//! `i >= first_k_dense_replace` and `i % moe_layer_freq == 0` (DeepSeek's `modeling_deepseek.py`;
//! transformers' port checks the first two only, the same for every published config); the
//! other layers use a dense MLP of `intermediate_size`.
//!
//! Routing: scores are `scoring_func` (V2: softmax, V3: sigmoid) of the logits. `topk_method`
//! `greedy` takes the top-k, `group_limited_greedy` (V2) first keeps the `topk_group` best of
//! `n_group` groups, `noaux_tc` (V3) does the same on scores plus `e_score_correction_bias`. V3
//! renormalizes with `norm_topk_prob` and always scales by `routed_scaling_factor`; V2 either
//! renormalizes (`norm_topk_prob` with k > 1) or scales, as DeepSeek's own `modeling_deepseek.py`
//! does. transformers 5's V2 port never renormalizes and always scales: the two agree on every
//! published V2 config (`norm_topk_prob` false), and this importer follows DeepSeek's code.
//!
//! RoPE: `rope_scaling` (`yarn` as DeepSeek defines it, `linear` or `llama3`; others are refused)
//! becomes the attention op's `rope_scaling`. The rotated dims are paired adjacently (`2i, 2i+1`:
//! DeepSeek's `q_pe.view(..., d/2, 2).transpose` and transformers' `apply_rotary_emb` (V2) /
//! `apply_rotary_pos_emb_interleave` (V3)); V3 honours `rope_interleave` (default true: false
//! pairs halves as Llama does), V2's modeling code has no such switch and refuses it false.
//! transformers: `models/deepseek_v2/`, `models/deepseek_v3/`.

use super::*;
use crate::{GroupScore, Groups, RopePairs};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Version {
    V2,
    V3,
}

/// Defaults that differ between the versions (transformers' config classes).
struct Defaults {
    first_k_dense: u64,
    shared: u64,
    scale: f64,
    normalize: bool,
    score: &'static str,
    topk_method: &'static str,
    family: Family,
}

impl Version {
    fn defaults(self) -> Defaults {
        match self {
            Version::V2 => Defaults {
                first_k_dense: 0,
                shared: 2,
                scale: 1.0,
                normalize: false,
                score: "softmax",
                topk_method: "greedy",
                family: Family::DeepseekV2,
            },
            Version::V3 => Defaults {
                first_k_dense: 3,
                shared: 1,
                scale: 2.5,
                normalize: true,
                score: "sigmoid",
                topk_method: "noaux_tc",
                family: Family::DeepseekV3,
            },
        }
    }
}

/// The expert count, under its name and the one transformers v5 writes.
const EXPERTS: &[&str] = &["n_routed_experts", "num_local_experts"];

pub(super) fn parse(cfg: Cfg<'_>, version: Version) -> Result<ModelSpec, ImportError> {
    let d = version.defaults();
    let hidden = cfg.pos("hidden_size")?;
    let n = layer_count(cfg, "num_hidden_layers")?;
    let (experts, top_k) = experts_topk(cfg, alias(cfg, EXPERTS)?, "num_experts_per_tok")?;
    let expert_width = cfg.pos("moe_intermediate_size")?;
    let act = activation(cfg, "hidden_act", Activation::Silu)?;

    let first_dense = cfg
        .opt_u64("first_k_dense_replace")?
        .unwrap_or(d.first_k_dense);
    let freq = cfg.opt_pos("moe_layer_freq")?.unwrap_or(1);
    let layers = decoder_layers(n, |i| i >= first_dense && i % freq == 0);
    let dense = dense_width(cfg, "intermediate_size", &layers, expert_width)?;

    let shared = match cfg.opt_u64("n_shared_experts")? {
        // null (or 0) shared experts: none.
        None if cfg.is_null("n_shared_experts") => None,
        None => Some(d.shared),
        Some(0) => None,
        Some(s) => Some(s),
    }
    .map(|s| SharedSpec {
        width: s * expert_width,
        gate: false,
    });

    let score = match cfg.opt_str("scoring_func")?.unwrap_or(d.score) {
        "softmax" => Score::Softmax,
        "sigmoid" => Score::Sigmoid,
        other => {
            return Err(cfg.invalid(
                "scoring_func",
                format!("`{other}` is not supported (softmax, sigmoid)"),
            ))
        }
    };
    let (grouped, select_bias) = match cfg.opt_str("topk_method")?.unwrap_or(d.topk_method) {
        "greedy" => (false, false),
        "group_limited_greedy" => (true, false),
        "noaux_tc" => (true, true),
        other => {
            return Err(cfg.invalid(
                "topk_method",
                format!("`{other}` is not supported (greedy, group_limited_greedy, noaux_tc)"),
            ))
        }
    };
    let groups = if grouped {
        groups(cfg, version, experts, top_k)?
    } else {
        // Groups only matter to the grouped methods.
        cfg.ack(&["n_group", "topk_group"]);
        None
    };
    // MLA: the key/value heads are the query heads; transformers 5 writes the derived widths.
    cfg.ack(&["num_key_value_heads", "head_dim", "qk_head_dim"]);
    if cfg.bool_or("mlp_bias", false)? {
        return Err(cfg.invalid("mlp_bias", "is true: MLP biases are not modelled"));
    }
    let factor = cfg.f64_or("routed_scaling_factor", d.scale)?;
    if !factor.is_finite() || factor <= 0.0 {
        return Err(cfg.invalid(
            "routed_scaling_factor",
            format!("must be a positive number, is {factor}"),
        ));
    }
    let norm_topk = cfg.bool_or("norm_topk_prob", d.normalize)?;
    let (normalize, scale) = match version {
        Version::V3 => (norm_topk, factor),
        Version::V2 if norm_topk && top_k > 1 => (true, 1.0),
        Version::V2 => (false, factor),
    };

    // MLA. `attention_bias` also puts biases on q_a_proj and kv_a_proj_with_mqa, which the
    // lowering does not model (hidden + q_lora_rank + kv_lora_rank + rope dim per layer, under
    // 0.01% of any published model); the output bias is modeled.
    let q_lora_rank = if cfg.is_null("q_lora_rank") {
        None
    } else if cfg.has("q_lora_rank") {
        Some(cfg.pos("q_lora_rank")?)
    } else {
        return Err(cfg.invalid(
            "q_lora_rank",
            "is missing (null means a full query projection, as in DeepSeek-V2-Lite)",
        ));
    };
    let kind = AttnKind::Mla {
        heads: cfg.pos("num_attention_heads")?,
        q_lora_rank,
        kv_lora_rank: cfg.pos("kv_lora_rank")?,
        qk_nope_dim: cfg.pos("qk_nope_head_dim")?,
        qk_rope_dim: cfg.pos("qk_rope_head_dim")?,
        v_head_dim: cfg.pos("v_head_dim")?,
    };
    let mut attention = plain_attention(kind, rope_theta(cfg, 10_000.0)?);
    attention.rope_scaling = rope::rope_scaling(cfg, rope::Yarn::DeepSeek)?;
    attention.rope_pairs = rope_pairs(cfg, version)?;
    let bias = cfg.bool_or("attention_bias", false)?;
    attention.qkv_bias = bias;
    attention.o_bias = bias;

    decoder_only(
        cfg,
        Decoder {
            family: d.family,
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
                router: RouterSpec {
                    score,
                    normalize,
                    scale,
                    groups,
                    select_bias,
                    bias: false,
                    scale_input: false,
                },
                shared,
            },
        },
    )
}

/// How RoPE pairs the rotated dims: interleaved, unless V3's `rope_interleave` is false.
fn rope_pairs(cfg: Cfg<'_>, version: Version) -> Result<RopePairs, ImportError> {
    match (version, cfg.opt_bool("rope_interleave")?) {
        (_, None | Some(true)) => Ok(RopePairs::Interleaved),
        (Version::V3, Some(false)) => Ok(RopePairs::Halves),
        (Version::V2, Some(false)) => Err(cfg.invalid(
            "rope_interleave",
            "= false is not supported for DeepSeek-V2: its modeling code always pairs adjacent \
             dims (only DeepSeek-V3 reads rope_interleave)",
        )),
    }
}

/// `n_group` / `topk_group` of group-limited routing; one group is no grouping.
fn groups(
    cfg: Cfg<'_>,
    version: Version,
    experts: u64,
    k: u64,
) -> Result<Option<Groups>, ImportError> {
    // V3's config defaults to 8 groups keeping 4; V2's has no default.
    let (g, tg) = match version {
        Version::V3 => (
            cfg.opt_pos("n_group")?.unwrap_or(8),
            cfg.opt_pos("topk_group")?.unwrap_or(4),
        ),
        Version::V2 => (cfg.pos("n_group")?, cfg.pos("topk_group")?),
    };
    if experts % g != 0 {
        return Err(cfg.invalid(
            "n_group",
            format!("= {g} must divide n_routed_experts = {experts}"),
        ));
    }
    if tg > g {
        return Err(cfg.invalid("topk_group", format!("= {tg} exceeds n_group = {g}")));
    }
    if k > tg * (experts / g) {
        return Err(cfg.invalid(
            "num_experts_per_tok",
            format!(
                "= {k} exceeds the {} experts of the topk_group = {tg} kept groups",
                tg * (experts / g)
            ),
        ));
    }
    let group_score = match version {
        Version::V2 => GroupScore::Max,
        Version::V3 => GroupScore::Top2Sum,
    };
    Ok((g > 1).then_some(Groups {
        groups: g,
        topk_groups: tg,
        group_score,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rope_pairs_follow_rope_interleave() {
        let read = |v: serde_json::Value, version| rope_pairs(Cfg::root(&v).unwrap(), version);
        for version in [Version::V2, Version::V3] {
            assert_eq!(read(json!({}), version).unwrap(), RopePairs::Interleaved);
            let v = json!({"rope_interleave": true});
            assert_eq!(read(v, version).unwrap(), RopePairs::Interleaved);
        }
        let off = json!({"rope_interleave": false});
        assert_eq!(read(off.clone(), Version::V3).unwrap(), RopePairs::Halves);
        let e = read(off, Version::V2).unwrap_err().to_string();
        assert!(e.contains("`rope_interleave`"), "{e}");
        let e = read(json!({"rope_interleave": 1}), Version::V3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`rope_interleave`"), "{e}");
    }

    #[test]
    fn group_checks() {
        let v = json!({"n_group": 8, "topk_group": 3});
        let c = Cfg::root(&v).unwrap();
        let g = groups(c, Version::V2, 160, 6).unwrap();
        assert_eq!(
            g,
            Some(Groups {
                groups: 8,
                topk_groups: 3,
                group_score: GroupScore::Max
            })
        );
        assert!(groups(c, Version::V2, 160, 61)
            .unwrap_err()
            .to_string()
            .contains("num_experts_per_tok"));
        assert!(groups(c, Version::V2, 100, 6)
            .unwrap_err()
            .to_string()
            .contains("n_group"));
        // V3 defaults: 8 groups keeping 4; one group is no grouping.
        let v = json!({});
        let g = groups(Cfg::root(&v).unwrap(), Version::V3, 256, 8).unwrap();
        assert_eq!(
            g,
            Some(Groups {
                groups: 8,
                topk_groups: 4,
                group_score: GroupScore::Top2Sum
            })
        );
        let e = groups(Cfg::root(&v).unwrap(), Version::V2, 64, 6).unwrap_err();
        assert!(e.to_string().contains("n_group"), "{e}");
        let v = json!({"n_group": 1, "topk_group": 1});
        assert_eq!(
            groups(Cfg::root(&v).unwrap(), Version::V2, 64, 6).unwrap(),
            None
        );
    }
}
