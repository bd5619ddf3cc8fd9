//! Llama 4 (`llama4` with a `text_config`, or `llama4_text`: Scout, Maverick). Only the text
//! model is imported; the vision tower and projector (`vision_config`) are left out.
//!
//! MoE layers are `moe_layers` when given, else every `interleave_moe_layer_step`-th layer
//! (`step - 1, 2 * step - 1, ...`). An MoE layer routes each token to the top-k of
//! `num_local_experts` SwiGLU experts of `intermediate_size` by sigmoid of the chosen logits (not
//! normalized), which scales the expert's *input* (`Llama4TextMoe`: `routed_in = x * score`), beside
//! one shared expert of `intermediate_size`; dense layers use an MLP of `intermediate_size_mlp`. RoPE is skipped on NoPE layers: `no_rope_layers[i] == 0`, by default
//! every `no_rope_layer_interval`-th layer (3, 7, ...); RoPE layers use chunked attention
//! (`attention_chunk_size`), NoPE layers full causal attention (or `layer_types`).
//!
//! RoPE pairs adjacent dims (`view_as_complex`: `rope_pairs` interleaved), with `rope_scaling`
//! (`llama3` in Scout) on the RoPE layers. `use_qk_norm` (default true) is a weightless RMS norm
//! (`Llama4TextL2Norm`, eps `rms_norm_eps`) of the rotated query and key heads, on the RoPE
//! layers only; `attn_temperature_tuning` (default true; any non-zero number counts, as in
//! Python) scales the queries of the NoPE layers by `1 + attn_scale * ln(1 + floor((p + 1) /
//! floor_scale))` (defaults 0.1 and 8192). transformers: `models/llama4/`.

use super::*;
use crate::{QueryTemperature, RopePairs, F64};
use serde_json::Value;

/// The text-model keys this parser reads.
const TEXT_KEYS: &[&str] = &[
    "hidden_size",
    "num_hidden_layers",
    "num_local_experts",
    "num_experts_per_tok",
    "intermediate_size",
    "intermediate_size_mlp",
    "hidden_act",
    "moe_layers",
    "interleave_moe_layer_step",
    "no_rope_layers",
    "no_rope_layer_interval",
    "attention_chunk_size",
    "layer_types",
    "attention_bias",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rope_theta",
    "rope_parameters",
    "rope_scaling",
    "max_position_embeddings",
    "use_qk_norm",
    "attn_temperature_tuning",
    "floor_scale",
    "attn_scale",
    "vocab_size",
    "rms_norm_eps",
];

pub(super) fn parse(root: Cfg<'_>) -> Result<ModelSpec, ImportError> {
    let cfg = match root.sub("text_config", "text_config.")? {
        Some(text) => {
            // Beside a text_config, a text-model key at the top level would be ignored (as by
            // transformers); it is most likely misplaced, e.g. by a `--set` of a key the
            // text_config lacks.
            if let Some(k) = TEXT_KEYS.iter().find(|k| root.has(k)) {
                return Err(root.invalid(
                    k,
                    format!(
                        "is at the top level, where the text model does not read it; \
                         set text_config.{k} instead"
                    ),
                ));
            }
            text
        }
        None => root,
    };
    let hidden = cfg.pos("hidden_size")?;
    let n = layer_count(cfg, "num_hidden_layers")?;
    let (experts, top_k) = experts_topk(cfg, "num_local_experts", "num_experts_per_tok")?;
    let width = cfg.pos("intermediate_size")?;
    let act = activation(cfg, "hidden_act", Activation::Silu)?;

    let moe_layers = moe_layers(cfg, n)?;
    let rope = rope_layers(cfg, n)?;
    // `attention_chunk_size` defaults to 8192; an explicit null turns chunking off.
    let chunk = if cfg.is_null("attention_chunk_size") {
        None
    } else {
        Some(cfg.opt_pos("attention_chunk_size")?.unwrap_or(8192))
    };
    let masks = match layer_type_masks(cfg, n, None, chunk)? {
        Some(m) => m,
        None => rope
            .iter()
            .map(|&r| match (r, chunk) {
                (true, Some(c)) => Mask::Chunked(c),
                _ => Mask::Causal,
            })
            .collect(),
    };
    let mut layers = decoder_layers(n, |i| moe_layers.contains(&i));
    for ((l, m), r) in layers.iter_mut().zip(masks).zip(rope) {
        l.mask = m;
        l.rope = r;
    }
    let dense = dense_width(cfg, "intermediate_size_mlp", &layers, width)?;

    let bias = cfg.bool_or("attention_bias", false)?;
    let mut attention = plain_attention(
        mha(cfg, hidden, "num_attention_heads", "num_key_value_heads")?,
        rope_theta(cfg, 500_000.0)?,
    );
    attention.qkv_bias = bias;
    attention.o_bias = bias;
    attention.rope_pairs = RopePairs::Interleaved;
    attention.rope_scaling = rope::rope_scaling(cfg, rope::Yarn::Transformers)?;
    if cfg.bool_or("use_qk_norm", true)? {
        let eps = cfg.f64_or("rms_norm_eps", 1e-5)?;
        if !(eps.is_finite() && eps > 0.0) {
            return Err(cfg.invalid(
                "rms_norm_eps",
                format!("must be a positive number (the eps of use_qk_norm), is {eps}"),
            ));
        }
        attention.rope_qk_norm = Some(eps);
    }
    attention.nope_temperature = temperature(cfg)?;
    let tie = match cfg.opt_bool("tie_word_embeddings")? {
        Some(t) => t,
        None => root.bool_or("tie_word_embeddings", false)?,
    };
    decoder_only(
        cfg,
        Decoder {
            family: Family::Llama4,
            hidden,
            tie_embeddings: tie,
            norm: rms(cfg, "rms_norm_eps", 1e-5)?,
            attention,
            layers,
            dense_width: dense,
            act,
            routed: Routed {
                experts,
                top_k,
                expert_width: width,
                router: RouterSpec {
                    scale_input: true,
                    ..router(Score::Sigmoid, false)
                },
                shared: Some(SharedSpec { width, gate: false }),
            },
        },
    )
}

/// The query temperature of the NoPE layers: `attn_temperature_tuning` (default true; a number
/// counts when non-zero and an explicit null is off, as Python's truthiness has it) with
/// `floor_scale` (default 8192) and `attn_scale` (default 0.1).
fn temperature(cfg: Cfg<'_>) -> Result<Option<QueryTemperature>, ImportError> {
    const KEY: &str = "attn_temperature_tuning";
    let on = match cfg.get(KEY) {
        None => !cfg.is_null(KEY),
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(v) => return Err(cfg.invalid(KEY, format!("must be true, false or a number, is {v}"))),
    };
    if !on {
        return Ok(None);
    }
    let floor_scale = cfg.f64_or("floor_scale", 8192.0)?;
    if !(floor_scale.is_finite() && floor_scale > 0.0) {
        return Err(cfg.invalid(
            "floor_scale",
            format!("must be a positive number, is {floor_scale}"),
        ));
    }
    let attn_scale = cfg.f64_or("attn_scale", 0.1)?;
    if !attn_scale.is_finite() {
        return Err(cfg.invalid(
            "attn_scale",
            format!("must be a finite number, is {attn_scale}"),
        ));
    }
    Ok(Some(QueryTemperature {
        floor_scale: F64(floor_scale),
        attn_scale: F64(attn_scale),
    }))
}

/// The MoE layer indices. `moe_layers` wins over `interleave_moe_layer_step` in transformers;
/// given both, they must agree (else a `--set` of the step would be silently ignored).
fn moe_layers(cfg: Cfg<'_>, n: u64) -> Result<Vec<u64>, ImportError> {
    let step = cfg.opt_pos("interleave_moe_layer_step")?;
    let from_step = |s: u64| (s - 1..n).step_by(s as usize).collect::<Vec<u64>>();
    match (layer_indices(cfg, "moe_layers", n)?, step) {
        (Some(list), Some(s)) => {
            let mut sorted = list.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted != from_step(s) {
                return Err(cfg.invalid(
                    "moe_layers",
                    format!(
                        "lists {} MoE layers, which contradicts interleave_moe_layer_step = {s} \
                         (every {s}th layer); drop or fix one of them",
                        sorted.len()
                    ),
                ));
            }
            Ok(list)
        }
        (Some(list), None) => Ok(list),
        (None, s) => Ok(from_step(s.unwrap_or(1))),
    }
}

/// Whether each layer applies RoPE: `no_rope_layers` (1: RoPE, 0: NoPE; an empty list means the
/// default), else all but every `no_rope_layer_interval`-th layer.
fn rope_layers(cfg: Cfg<'_>, n: u64) -> Result<Vec<bool>, ImportError> {
    let interval = cfg.opt_pos("no_rope_layer_interval")?;
    let default = |k: u64| (0..n).map(|i| (i + 1) % k != 0).collect::<Vec<bool>>();
    let list = cfg
        .opt_u64_list("no_rope_layers")?
        .filter(|l| !l.is_empty());
    let Some(list) = list else {
        return Ok(default(interval.unwrap_or(4)));
    };
    if (list.len() as u64) < n {
        return Err(cfg.invalid(
            "no_rope_layers",
            format!("has {} entries but the model has {n} layers", list.len()),
        ));
    }
    let rope = list[..n as usize]
        .iter()
        .enumerate()
        .map(|(i, &v)| match v {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(cfg.invalid(
                &format!("no_rope_layers[{i}]"),
                format!("must be 1 (RoPE) or 0 (NoPE), is {v}"),
            )),
        })
        .collect::<Result<Vec<bool>, _>>()?;
    if let Some(k) = interval {
        if rope != default(k) {
            return Err(cfg.invalid(
                "no_rope_layers",
                format!(
                    "contradicts no_rope_layer_interval = {k} (a NoPE layer every {k}th layer); \
                     drop or fix one of them"
                ),
            ));
        }
    }
    Ok(rope)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn default_placements() {
        let v = json!({"interleave_moe_layer_step": 2});
        assert_eq!(moe_layers(Cfg::root(&v).unwrap(), 6).unwrap(), [1, 3, 5]);
        let v = json!({});
        assert_eq!(moe_layers(Cfg::root(&v).unwrap(), 3).unwrap(), [0, 1, 2]);
        let r = rope_layers(Cfg::root(&v).unwrap(), 8).unwrap();
        assert_eq!(r, [true, true, true, false, true, true, true, false]);
        let v = json!({"no_rope_layers": []});
        assert_eq!(
            rope_layers(Cfg::root(&v).unwrap(), 4).unwrap(),
            [true, true, true, false]
        );
    }

    #[test]
    fn temperature_follows_pythons_truthiness() {
        let read = |v: Value| temperature(Cfg::root(&v).unwrap());
        let default = Some(QueryTemperature {
            floor_scale: F64(8192.0),
            attn_scale: F64(0.1),
        });
        assert_eq!(read(json!({})).unwrap(), default);
        assert_eq!(
            read(json!({"attn_temperature_tuning": true})).unwrap(),
            default
        );
        // Scout's config says 4.
        assert_eq!(
            read(json!({"attn_temperature_tuning": 4})).unwrap(),
            default
        );
        assert_eq!(read(json!({"attn_temperature_tuning": 0})).unwrap(), None);
        assert_eq!(
            read(json!({"attn_temperature_tuning": false})).unwrap(),
            None
        );
        assert_eq!(
            read(json!({"attn_temperature_tuning": null})).unwrap(),
            None
        );
        let v = json!({"floor_scale": 16, "attn_scale": 0.5});
        assert_eq!(
            read(v).unwrap(),
            Some(QueryTemperature {
                floor_scale: F64(16.0),
                attn_scale: F64(0.5)
            })
        );
        for (v, key) in [
            (
                json!({"attn_temperature_tuning": "yes"}),
                "attn_temperature_tuning",
            ),
            (json!({"floor_scale": 0}), "floor_scale"),
            (json!({"attn_scale": "big"}), "attn_scale"),
        ] {
            let e = read(v).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{e}");
        }
    }

    #[test]
    fn contradictions_name_the_key() {
        let v = json!({"interleave_moe_layer_step": 2, "moe_layers": [0, 1, 2, 3]});
        let e = moe_layers(Cfg::root(&v).unwrap(), 4).unwrap_err();
        assert!(e.to_string().contains("moe_layers"), "{e}");
        let v = json!({"no_rope_layers": [1, 0, 1, 0], "no_rope_layer_interval": 4});
        let e = rope_layers(Cfg::root(&v).unwrap(), 4).unwrap_err();
        assert!(e.to_string().contains("no_rope_layers"), "{e}");
        let v = json!({"no_rope_layers": [1, 2]});
        let e = rope_layers(Cfg::root(&v).unwrap(), 2).unwrap_err();
        assert!(e.to_string().contains("no_rope_layers[1]"), "{e}");
    }
}
