//! Switch Transformers (`switch_transformers`: switch-base-8 ... switch-c-2048): a T5
//! encoder-decoder. `num_layers` encoder layers (full mask) then `num_decoder_layers` decoder
//! layers (causal self-attention plus cross-attention over the encoder output); no RoPE but T5's
//! relative position bias on self-attention (`relative_attention_num_buckets`,
//! `relative_attention_max_distance`; one `[buckets, heads]` table per stack, from its first
//! block, bidirectional in the encoder), and no `1/sqrt(d)` on the scores. T5 RMSNorm
//! (`layer_norm_epsilon`), `num_heads` heads of `d_kv` (need not equal `d_model / num_heads`), a
//! non-gated FFN of `d_ff` with `dense_act_fn`, tied embeddings by default (then the decoder
//! output is scaled by `d_model^-0.5` before the LM head).
//!
//! MoE: top-1 softmax routing over `num_experts` experts (weight = the chosen probability, not
//! renormalized), a fixed `expert_capacity` per expert and per sequence (transformers counts
//! slots along each sequence: graphs hold one sequence per rank per micro-batch), `router_bias`
//! on the classifier. Layer `i`
//! of a stack is sparse when its sparse step `s > 0` and `i % s == 1 || s == 1`; the steps are
//! `encoder_sparse_step` / `decoder_sparse_step` when given (they win over the computed ones in
//! transformers), else `num_layers / num_sparse_encoder_layers` (0 sparse layers: none).
//! transformers: `models/switch_transformers/`.

use super::*;

pub(super) fn parse(cfg: Cfg<'_>) -> Result<ModelSpec, ImportError> {
    let hidden = cfg.pos("d_model")?;
    let heads = cfg.pos("num_heads")?;
    let enc = layer_count(cfg, "num_layers")?;
    let dec = if cfg.has("num_decoder_layers") {
        layer_count(cfg, "num_decoder_layers")?
    } else {
        enc
    };
    let experts = cfg.pos("num_experts")?;
    // transformers routes top-1 only; older configs record it.
    if let Some(k) = cfg.opt_u64("num_selected_experts")? {
        if k != 1 {
            return Err(cfg.invalid(
                "num_selected_experts",
                format!("= {k}: Switch Transformers route each token to exactly one expert"),
            ));
        }
    }
    let width = cfg.pos("d_ff")?;
    let act = activation(cfg, "dense_act_fn", Activation::Relu)?;
    let slots = cfg.opt_pos("expert_capacity")?.unwrap_or(64);
    let enc_moe = sparse_layers(cfg, "encoder_sparse_step", "num_sparse_encoder_layers", enc)?;
    let dec_moe = sparse_layers(cfg, "decoder_sparse_step", "num_sparse_decoder_layers", dec)?;
    let layers = (0..enc)
        .map(|i| LayerSpec {
            moe: enc_moe(i),
            mask: Mask::Full,
            rope: false,
            cross_attention: false,
        })
        .chain((0..dec).map(|i| LayerSpec {
            moe: dec_moe(i),
            mask: Mask::Causal,
            rope: false,
            cross_attention: true,
        }))
        .collect();
    let head_dim = cfg.opt_pos("d_kv")?.unwrap_or(64);
    let tie = cfg.bool_or("tie_word_embeddings", true)?;
    let buckets = cfg.opt_pos("relative_attention_num_buckets")?.unwrap_or(32);
    let max_distance = cfg
        .opt_pos("relative_attention_max_distance")?
        .unwrap_or(128);
    if buckets < 4 {
        return Err(cfg.invalid(
            "relative_attention_num_buckets",
            format!("= {buckets}: the encoder's bidirectional buckets need at least 4"),
        ));
    }
    let mut r = router(Score::Softmax, false);
    r.bias = cfg.bool_or("router_bias", false)?;
    Ok(ModelSpec {
        family: Family::SwitchTransformers,
        name: "switch_transformers".into(),
        vocab: cfg.pos("vocab_size")?,
        hidden,
        tie_embeddings: tie,
        norm: rms(cfg, "layer_norm_epsilon", 1e-6)?,
        attention: AttentionSpec {
            softmax_scale: Some(1.0),
            relative_bias: Some((buckets, max_distance)),
            ..plain_attention(
                AttnKind::Mha {
                    heads,
                    kv_heads: heads,
                    head_dim,
                },
                10_000.0,
            )
        },
        layers,
        encoder_layers: enc,
        dense_mlp: MlpSpec {
            width,
            gated: false,
            act,
        },
        moe: Some(MoeSpec {
            experts,
            top_k: 1,
            expert_width: width,
            gated: false,
            act,
            router: r,
            shared: None,
            capacity: CapacitySpec::Slots(slots),
            expert_bias: false,
        }),
        // `SwitchTransformersForConditionalGeneration`: the decoder output times d_model^-0.5
        // before a tied LM head.
        head_scale: tie.then(|| (hidden as f64).powf(-0.5)),
    })
}

/// Which of the `n` layers of one stack are sparse. When both the step and the sparse-layer count
/// are given they must agree.
fn sparse_layers(
    cfg: Cfg<'_>,
    step_key: &str,
    count_key: &str,
    n: u64,
) -> Result<impl Fn(u64) -> bool, ImportError> {
    let count = cfg.opt_u64(count_key)?;
    let given = cfg.opt_u64(step_key)?;
    let step = match (given, count) {
        (Some(s), _) => s,
        (None, Some(0)) => 0,
        (None, Some(c)) => n / c,
        // transformers' default: 3 sparse layers.
        (None, None) => n / 3,
    };
    let sparse = move |i: u64| step > 0 && (i % step == 1 || step == 1);
    if let (Some(_), Some(c)) = (given, count) {
        let got = (0..n).filter(|&i| sparse(i)).count() as u64;
        if got != c {
            return Err(cfg.invalid(
                step_key,
                format!("= {step} makes {got} of the {n} layers sparse, but {count_key} = {c}"),
            ));
        }
    }
    Ok(sparse)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sparse(v: &serde_json::Value, n: u64) -> Result<Vec<u64>, ImportError> {
        let f = sparse_layers(
            Cfg::root(v).unwrap(),
            "encoder_sparse_step",
            "num_sparse_encoder_layers",
            n,
        )?;
        Ok((0..n).filter(|&i| f(i)).collect())
    }

    #[test]
    fn sparse_steps() {
        // switch-base-8: every other layer from 1.
        let v = json!({"encoder_sparse_step": 2, "num_sparse_encoder_layers": 6});
        assert_eq!(sparse(&v, 12).unwrap(), [1, 3, 5, 7, 9, 11]);
        // switch-c-2048's encoder: step 1 makes every layer sparse; step 0 none.
        let v = json!({"encoder_sparse_step": 1});
        assert_eq!(sparse(&v, 3).unwrap(), [0, 1, 2]);
        let v = json!({"encoder_sparse_step": 0, "num_sparse_encoder_layers": 0});
        assert!(sparse(&v, 12).unwrap().is_empty());
        // Without a step: num_layers / count, and transformers' default count of 3.
        let v = json!({"num_sparse_encoder_layers": 4});
        assert_eq!(sparse(&v, 12).unwrap(), [1, 4, 7, 10]);
        assert_eq!(sparse(&json!({}), 12).unwrap(), [1, 5, 9]);
        let v = json!({"encoder_sparse_step": 3, "num_sparse_encoder_layers": 6});
        let e = sparse(&v, 12).unwrap_err();
        assert!(e.to_string().contains("encoder_sparse_step"), "{e}");
    }
}
