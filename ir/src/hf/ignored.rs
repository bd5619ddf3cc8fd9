//! The config keys an import did not read. Parsers read every key that changes what the model
//! computes; a key they did not read either cannot change it (training settings, token ids,
//! bookkeeping: [`INERT`]) or is one the importer does not know, which may (an `unknown` key:
//! the CLI warns about it, and `inspect` lists every ignored key).

use serde_json::Value;
use std::collections::BTreeSet;

/// A config key the import did not read.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ignored {
    /// Its dotted path (`attn_config.attn_pdrop`).
    pub key: String,
    /// Not a key known not to change the function: it may.
    pub unknown: bool,
}

/// Keys (last path segment) that do not change a forward pass in f32: training-only settings,
/// generation and tokenizer ids, caching, initialisation, labels, bookkeeping, and sizes that
/// only bound what a forward may be given.
const INERT: &[&str] = &[
    "_attn_implementation_autoset",
    "_name_or_path",
    "add_cross_attention",
    "add_router_probs",
    "architectures",
    "attention_dropout",
    "attn_pdrop",
    "auto_map",
    "aux_loss_alpha",
    "bos_token_id",
    "boi_token_index",
    "chunk_size_feed_forward",
    "decoder_start_token_id",
    "dropout_rate",
    "dtype",
    "emb_pdrop",
    "eoi_token_index",
    "eos_token_id",
    "ep_size",
    "for_llm_compressor",
    "id2label",
    "image_token_index",
    "initial_context_length",
    "initializer_factor",
    "initializer_range",
    "is_decoder",
    "is_encoder_decoder",
    "is_gated_act",
    "label2id",
    "max_position_embeddings",
    "max_seq_len",
    "max_window_layers",
    "model_type",
    "moe_jitter_eps",
    "moe_loss_weight",
    "num_nextn_predict_layers",
    "output_attentions",
    "output_hidden_states",
    "output_router_logits",
    "pad_token_id",
    "pretraining_tp",
    "problem_type",
    "resid_pdrop",
    "return_dict",
    "router_aux_loss_coef",
    "router_dtype",
    "router_ignore_padding_tokens",
    "router_jitter_noise",
    "router_z_loss_coef",
    "seq_aux",
    "torch_dtype",
    "transformers_version",
    "use_cache",
    "vision_config",
];

/// The keys of `config` not in `seen` (paths of keys read), nested objects the import read into
/// listed key by key.
pub fn ignored(config: &Value, seen: &BTreeSet<String>) -> Vec<Ignored> {
    let mut out = Vec::new();
    walk(config, "", seen, &mut out);
    out
}

fn walk(v: &Value, prefix: &str, seen: &BTreeSet<String>, out: &mut Vec<Ignored>) {
    let Value::Object(m) = v else { return };
    for (k, x) in m {
        let path = format!("{prefix}{k}");
        let nested = format!("{path}.");
        let entered = seen
            .range(nested.clone()..)
            .next()
            .is_some_and(|s| s.starts_with(&nested));
        if entered && x.is_object() {
            walk(x, &nested, seen, out);
        } else if !seen.contains(&path) {
            out.push(Ignored {
                unknown: !INERT.contains(&k.as_str()) && !x.is_null(),
                key: path,
            });
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unread_keys_are_listed_and_unknown_ones_told_apart() {
        let v = json!({"a": 1, "use_cache": true, "sub": {"b": 2, "c": 3}, "other": {"d": 1},
                       "nothing": null});
        let seen: BTreeSet<String> = ["a", "sub.b"].iter().map(|s| s.to_string()).collect();
        let got = ignored(&v, &seen);
        let keys: Vec<(&str, bool)> = got.iter().map(|i| (i.key.as_str(), i.unknown)).collect();
        assert_eq!(
            keys,
            [
                ("use_cache", false),
                ("sub.c", true),
                ("other", true),
                ("nothing", false)
            ]
        );
    }
}
