//! Llama 4 (`llama4` with a `text_config`, or `llama4_text`: Scout, Maverick). Only the text
//! model is imported; the vision tower and projector (`vision_config`) are left out.
//!
//! MoE layers are `moe_layers` when given, else every `interleave_moe_layer_step`-th layer
//! (`step - 1, 2 * step - 1, ...`). An MoE layer routes each token to the top-k of
//! `num_local_experts` SwiGLU experts of `intermediate_size` by sigmoid of the chosen logits (not
//! normalized), beside one shared expert of `intermediate_size`; dense layers use an MLP of
//! `intermediate_size_mlp`. RoPE is skipped on NoPE layers: `no_rope_layers[i] == 0`, by default
//! every `no_rope_layer_interval`-th layer (3, 7, ...); RoPE layers use chunked attention
//! (`attention_chunk_size`), NoPE layers full causal attention (or `layer_types`). `use_qk_norm` is
//! a weightless L2 norm. transformers: `models/llama4/`.

use super::*;

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
                router: router(Score::Sigmoid, false),
                shared: Some(SharedSpec { width, gate: false }),
            },
        },
    )
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
