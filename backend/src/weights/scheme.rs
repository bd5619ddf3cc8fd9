//! Which naming scheme a checkpoint's keys follow, told from the keys themselves: the
//! decoder-only `model.layers.{i}.…` of most Hugging Face families (under a multimodal wrapper's
//! prefix for Llama 4), DBRX's `transformer.blocks.{i}.…`, or T5's `encoder.block.{i}.…` /
//! `decoder.block.{i}.…` (Switch Transformers).

use super::Checkpoint;

/// The key scheme of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// `{root}layers.{i}.…`, `{root}embed_tokens.weight`, `{root}norm.weight`; the LM head is
    /// `head`. `mlp.experts.gate_up_proj` is GPT-OSS's `[E, H, 2F]` (gate and up interleaved)
    /// when `interleaved` (told by its `gate_up_proj_bias`, which only GPT-OSS has), else
    /// transformers 5's `[E, 2F, H]` (gate rows, then up rows) with `down_proj` `[E, H, F]`.
    Decoder {
        root: String,
        head: String,
        interleaved: bool,
    },
    /// DBRX: `transformer.blocks.{i}.…`, `transformer.wte.weight`, `transformer.norm_f.weight`.
    Dbrx,
    /// T5 (Switch Transformers): graph layers `0..encoder_blocks` are `encoder.block.{i}`, the
    /// next ones `decoder.block.{i - encoder_blocks}`; the token embedding is `shared.weight`.
    T5 { encoder_blocks: u64 },
}

/// Prefixes of the decoder-only layers: plain, and Llama 4's multimodal checkpoints (as saved by
/// transformers 4.x and by 5.x).
const DECODER_ROOTS: &[(&str, &str)] = &[
    ("model.", "lm_head.weight"),
    ("language_model.model.", "language_model.lm_head.weight"),
    ("model.language_model.", "lm_head.weight"),
];

impl Scheme {
    /// The scheme of `c`'s keys (the plain decoder one when no key tells: a checkpoint written
    /// under the graph's own names).
    pub fn of(c: &Checkpoint) -> Scheme {
        if c.has_prefix("transformer.blocks.") || c.contains("transformer.wte.weight") {
            return Scheme::Dbrx;
        }
        if c.has_prefix("encoder.block.") || c.contains("shared.weight") {
            let encoder_blocks = c
                .keys_with_prefix("encoder.block.")
                .filter_map(|k| k["encoder.block.".len()..].split('.').next()?.parse().ok())
                .map(|i: u64| i + 1)
                .max()
                .unwrap_or(0);
            return Scheme::T5 { encoder_blocks };
        }
        let (root, head) = DECODER_ROOTS
            .iter()
            .find(|(root, _)| {
                c.has_prefix(&format!("{root}layers."))
                    || c.contains(&format!("{root}embed_tokens.weight"))
            })
            .unwrap_or(&DECODER_ROOTS[0]);
        let interleaved = c
            .keys_with_prefix(root)
            .any(|k| k.ends_with(".experts.gate_up_proj_bias"));
        Scheme::Decoder {
            root: root.to_string(),
            head: head.to_string(),
            interleaved,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::checkpoint::tests::file;
    use super::*;

    fn scheme(keys: &[&str]) -> Scheme {
        let t: Vec<(&str, Vec<usize>, Vec<f32>)> =
            keys.iter().map(|k| (*k, vec![1], vec![0.0])).collect();
        let mut c = Checkpoint::new();
        c.add_file("f", file(&t)).unwrap();
        Scheme::of(&c)
    }

    #[test]
    fn schemes_are_told_from_the_keys() {
        let plain = Scheme::Decoder {
            root: "model.".into(),
            head: "lm_head.weight".into(),
            interleaved: false,
        };
        assert_eq!(scheme(&["model.layers.0.mlp.gate.weight"]), plain);
        assert_eq!(scheme(&["l0.self_attn.q_proj.weight"]), plain);
        assert_eq!(
            scheme(&["language_model.model.layers.3.feed_forward.router.weight"]),
            Scheme::Decoder {
                root: "language_model.model.".into(),
                head: "language_model.lm_head.weight".into(),
                interleaved: false,
            }
        );
        assert_eq!(
            scheme(&["transformer.blocks.0.ffn.experts.mlp.w1"]),
            Scheme::Dbrx
        );
        let t5 = scheme(&[
            "shared.weight",
            "encoder.block.0.layer.0.layer_norm.weight",
            "encoder.block.11.layer.0.layer_norm.weight",
            "encoder.block.2.layer.0.layer_norm.weight",
            "decoder.block.0.layer.0.layer_norm.weight",
            "encoder.final_layer_norm.weight",
        ]);
        assert_eq!(t5, Scheme::T5 { encoder_blocks: 12 });
    }
}
