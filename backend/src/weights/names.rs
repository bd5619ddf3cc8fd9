//! Where a graph weight comes from in a checkpoint: the graph's own name, or the Hugging Face key
//! the importer's name stands for.
//!
//! The importer names weights `l{i}.{block}.{weight}` with matrices laid out `[in, out]` (the
//! graph computes `x @ W`) and routed experts stacked `[experts, in, out]`. HF checkpoints use
//! `model.layers.{i}.…` with `torch.nn.Linear` weights `[out, in]` and one tensor per expert. The
//! mapping covers the decoder-only families whose checkpoints name modules like the importer
//! (Mixtral, Qwen2/Qwen3-MoE, OLMoE, DeepSeek dense and MoE blocks, Llama-4 dense blocks); fused
//! tensors (DBRX, GPT-OSS, Llama-4 experts, DeepSeek's MLA `kv_a_proj_with_mqa`/`kv_b_proj`) and
//! T5 names (Switch) are not split apart: give those weights under their graph names.

/// How a graph weight is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// One tensor, used as is.
    Direct(String),
    /// One `[out, in]` linear weight, transposed to `[in, out]`.
    Transposed(String),
    /// One `[out, in]` tensor per expert, each transposed and stacked to `[experts, in, out]`.
    Experts(Vec<String>),
}

impl Source {
    /// The first checkpoint key the source reads (its presence selects the source).
    pub fn first_key(&self) -> &str {
        match self {
            Source::Direct(k) | Source::Transposed(k) => k,
            Source::Experts(keys) => keys.first().map_or("", String::as_str),
        }
    }
}

/// Alternative spellings of the importer's block names in HF checkpoints.
const BLOCK_ALIASES: &[(&str, &[&str])] = &[
    ("moe.", &["mlp.", "block_sparse_moe.", "feed_forward."]),
    ("mlp.", &["mlp.", "feed_forward."]),
    ("self_attn.", &["self_attn."]),
];

/// Per-expert projection names: importer name -> HF names (Mixtral's w1/w3/w2 last).
const EXPERT_PROJ: &[(&str, &[&str])] = &[
    ("up_proj", &["up_proj", "w3"]),
    ("gate_proj", &["gate_proj", "w1"]),
    ("down_proj", &["down_proj", "w2"]),
];

/// The HF spellings of the part of a layer weight's name after `l{i}.`.
fn layer_keys(rest: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (from, tos) in BLOCK_ALIASES {
        if let Some(tail) = rest.strip_prefix(from) {
            for to in *tos {
                let mut tails = vec![tail.to_string()];
                // Qwen2-MoE's single shared expert; DeepSeek's router bias sits on the gate.
                if let Some(t) = tail.strip_prefix("shared_experts.") {
                    tails.push(format!("shared_expert.{t}"));
                }
                if tail == "e_score_correction_bias" {
                    tails.push("gate.e_score_correction_bias".into());
                }
                out.extend(tails.into_iter().map(|t| format!("{to}{t}")));
            }
        }
    }
    if out.is_empty() {
        out.push(rest.to_string());
    }
    out
}

/// Checkpoint sources to try for graph weight `name` of global `shape`, in order.
pub(crate) fn sources(name: &str, shape: &[u64]) -> Vec<Source> {
    let mut out = vec![Source::Direct(name.to_string())];
    let linear = |key: String| {
        if shape.len() == 2 {
            Source::Transposed(key)
        } else {
            Source::Direct(key)
        }
    };
    match name {
        "embed_tokens.weight" => out.push(Source::Direct("model.embed_tokens.weight".into())),
        "norm.weight" => out.push(Source::Direct("model.norm.weight".into())),
        "lm_head.weight" => out.push(Source::Transposed("lm_head.weight".into())),
        _ => {}
    }
    let Some(layer_rest) = name.strip_prefix('l') else {
        return out;
    };
    let Some((layer, rest)) = layer_rest.split_once('.') else {
        return out;
    };
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return out;
    }
    let prefix = format!("model.layers.{layer}.");
    for key in layer_keys(rest) {
        // Stacked routed experts: `….experts.{proj}` of shape [E, in, out].
        if let (Some((block, proj)), 3) = (key.rsplit_once(".experts."), shape.len()) {
            if let Some((_, hf)) = EXPERT_PROJ.iter().find(|(p, _)| *p == proj) {
                for h in *hf {
                    let keys = (0..shape[0])
                        .map(|e| format!("{prefix}{block}.experts.{e}.{h}.weight"))
                        .collect();
                    out.push(Source::Experts(keys));
                }
            }
            continue;
        }
        let full = format!("{prefix}{key}");
        if key.ends_with(".weight") && !key.contains("norm") {
            out.push(linear(full));
        } else {
            out.push(Source::Direct(full));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_names_map_to_hf_keys() {
        let s = sources("l3.self_attn.q_proj.weight", &[64, 128]);
        assert_eq!(s[0], Source::Direct("l3.self_attn.q_proj.weight".into()));
        assert!(s.contains(&Source::Transposed(
            "model.layers.3.self_attn.q_proj.weight".into()
        )));
        let s = sources("l0.input_layernorm.weight", &[64]);
        assert!(s.contains(&Source::Direct(
            "model.layers.0.input_layernorm.weight".into()
        )));
        let s = sources("l1.moe.gate.weight", &[64, 8]);
        assert!(s.contains(&Source::Transposed("model.layers.1.mlp.gate.weight".into())));
        assert!(s.contains(&Source::Transposed(
            "model.layers.1.block_sparse_moe.gate.weight".into()
        )));
        let s = sources("l1.moe.shared_experts.up_proj.weight", &[64, 32]);
        assert!(s.contains(&Source::Transposed(
            "model.layers.1.mlp.shared_expert.up_proj.weight".into()
        )));
        let s = sources("l2.moe.e_score_correction_bias", &[8]);
        assert!(s.contains(&Source::Direct(
            "model.layers.2.mlp.gate.e_score_correction_bias".into()
        )));
        let s = sources("lm_head.weight", &[64, 100]);
        assert_eq!(s[1], Source::Transposed("lm_head.weight".into()));
    }

    #[test]
    fn stacked_experts_map_to_per_expert_keys() {
        let s = sources("l0.moe.experts.gate_proj", &[2, 64, 32]);
        assert!(s.contains(&Source::Experts(vec![
            "model.layers.0.mlp.experts.0.gate_proj.weight".into(),
            "model.layers.0.mlp.experts.1.gate_proj.weight".into(),
        ])));
        assert!(s.contains(&Source::Experts(vec![
            "model.layers.0.block_sparse_moe.experts.0.w1.weight".into(),
            "model.layers.0.block_sparse_moe.experts.1.w1.weight".into(),
        ])));
    }
}
