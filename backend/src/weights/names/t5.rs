//! T5 checkpoint names, as Switch Transformers use them (transformers
//! `models/switch_transformers/`): `shared.weight` (the token embedding, also under
//! `encoder.embed_tokens` / `decoder.embed_tokens`), `{encoder|decoder}.block.{i}.layer.{j}.…`,
//! `{encoder|decoder}.final_layer_norm.weight`, `lm_head.weight`.
//!
//! Sublayer `j` of a block: 0 is self-attention (`SelfAttention.{q,k,v,o}`, `layer_norm`); in the
//! decoder 1 is cross-attention (`EncDecAttention.…`, `layer_norm`); the last (1 in the encoder,
//! 2 in the decoder) is the FFN (`layer_norm`, and `mlp.{wi,wo}` dense or
//! `mlp.router.classifier` plus `mlp.experts.expert_{e}.{wi,wo}` sparse). The graph numbers its
//! layers across both stacks: layer `i` is encoder block `i` below the checkpoint's encoder block
//! count, else decoder block `i - count`. Each stack's relative position bias table is
//! `{encoder|decoder}.block.0.layer.0.SelfAttention.relative_attention_bias.weight`.

use super::{layer_of, linear_or_direct, Source};

/// Appends the T5 sources of graph weight `name`; the checkpoint has `encoder_blocks` encoder
/// blocks.
pub(super) fn sources(out: &mut Vec<Source>, name: &str, shape: &[u64], encoder_blocks: u64) {
    match name {
        "embed_tokens.weight" => {
            for k in [
                "shared.weight",
                "encoder.embed_tokens.weight",
                "decoder.embed_tokens.weight",
            ] {
                out.push(Source::Direct(k.into()));
            }
        }
        "norm.weight" => out.push(Source::Direct("decoder.final_layer_norm.weight".into())),
        // The relative position bias table each stack keeps in its first block.
        "encoder.relative_attention_bias" | "decoder.relative_attention_bias" => {
            let stack = &name[..name.len() - ".relative_attention_bias".len()];
            out.push(Source::Direct(format!(
                "{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
            )));
        }
        "lm_head.weight" => out.push(Source::Transposed("lm_head.weight".into())),
        _ => {}
    }
    let Some((layer, rest)) = layer_of(name) else {
        return;
    };
    let (block, ffn) = if layer < encoder_blocks {
        (format!("encoder.block.{layer}.layer."), 1)
    } else {
        (
            format!("decoder.block.{}.layer.", layer - encoder_blocks),
            2,
        )
    };
    let attention = |module: &str, tail: &str| -> Option<String> {
        let proj = tail.strip_suffix("_proj.weight")?;
        ["q", "k", "v", "o"]
            .contains(&proj)
            .then(|| format!("{module}.{proj}.weight"))
    };
    let tail = match rest.split_once('.') {
        Some(("input_layernorm", "weight")) => Some("0.layer_norm.weight".to_string()),
        Some(("cross_layernorm", "weight")) => Some("1.layer_norm.weight".to_string()),
        Some(("post_attention_layernorm", "weight")) => Some(format!("{ffn}.layer_norm.weight")),
        Some(("self_attn", t)) => attention("0.SelfAttention", t),
        Some(("cross_attn", t)) => attention("1.EncDecAttention", t),
        Some(("mlp", "up_proj.weight")) => Some(format!("{ffn}.mlp.wi.weight")),
        Some(("mlp", "down_proj.weight")) => Some(format!("{ffn}.mlp.wo.weight")),
        Some(("moe", "gate.weight")) => Some(format!("{ffn}.mlp.router.classifier.weight")),
        Some(("moe", "gate.bias")) => Some(format!("{ffn}.mlp.router.classifier.bias")),
        Some(("moe", t)) => {
            let w = match t {
                "experts.up_proj" => "wi",
                "experts.down_proj" => "wo",
                _ => return,
            };
            let n = shape.first().copied().unwrap_or(0);
            let keys = (0..n)
                .map(|e| format!("{block}{ffn}.mlp.experts.expert_{e}.{w}.weight"))
                .collect();
            out.push(Source::Experts(keys));
            None
        }
        _ => None,
    };
    if let Some(t) = tail {
        out.push(linear_or_direct(format!("{block}{t}"), name, shape));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(names: &[(&str, &[u64])], encoder_blocks: u64) -> Vec<Source> {
        let mut s = Vec::new();
        for (n, shape) in names {
            sources(&mut s, n, shape, encoder_blocks);
        }
        s
    }

    #[test]
    fn encoder_and_decoder_blocks() {
        let s = all(
            &[
                ("l1.self_attn.q_proj.weight", &[8, 8]),
                ("l1.post_attention_layernorm.weight", &[8]),
                ("l2.self_attn.o_proj.weight", &[8, 8]),
                ("l3.cross_attn.k_proj.weight", &[8, 8]),
                ("l3.cross_layernorm.weight", &[8]),
                ("l3.post_attention_layernorm.weight", &[8]),
                ("l3.mlp.down_proj.weight", &[16, 8]),
                ("l1.moe.gate.bias", &[4]),
            ],
            2,
        );
        assert_eq!(
            s,
            [
                Source::Transposed("encoder.block.1.layer.0.SelfAttention.q.weight".into()),
                Source::Direct("encoder.block.1.layer.1.layer_norm.weight".into()),
                Source::Transposed("decoder.block.0.layer.0.SelfAttention.o.weight".into()),
                Source::Transposed("decoder.block.1.layer.1.EncDecAttention.k.weight".into()),
                Source::Direct("decoder.block.1.layer.1.layer_norm.weight".into()),
                Source::Direct("decoder.block.1.layer.2.layer_norm.weight".into()),
                Source::Transposed("decoder.block.1.layer.2.mlp.wo.weight".into()),
                Source::Direct("encoder.block.1.layer.1.mlp.router.classifier.bias".into()),
            ]
        );
        let s = all(&[("l3.moe.experts.up_proj", &[2, 8, 16])], 2);
        assert_eq!(
            s,
            [Source::Experts(vec![
                "decoder.block.1.layer.2.mlp.experts.expert_0.wi.weight".into(),
                "decoder.block.1.layer.2.mlp.experts.expert_1.wi.weight".into(),
            ])]
        );
        assert_eq!(
            all(&[("embed_tokens.weight", &[10, 8])], 2)[0],
            Source::Direct("shared.weight".into())
        );
        assert!(all(&[("l0.self_attn.sinks", &[2])], 2).is_empty());
    }
}
