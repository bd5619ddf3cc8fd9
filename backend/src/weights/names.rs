//! Where a graph weight comes from in a checkpoint: the graph's own name, or the Hugging Face
//! key(s) the importer's name stands for, in the checkpoint's [`Scheme`].
//!
//! The importer names weights `l{i}.{block}.{weight}` with matrices laid out `[in, out]` (the
//! graph computes `x @ W`) and routed experts stacked `[experts, in, out]`. HF checkpoints use
//! `torch.nn.Linear` weights `[out, in]`, one tensor per expert or fused tensors, and their own
//! module names:
//! - decoder-only families (this file): `model.layers.{i}.…` (Mixtral, Qwen2/Qwen3-MoE, OLMoE,
//!   DeepSeek, GPT-OSS, Llama 4 also under its multimodal prefix), with GPT-OSS's interleaved and
//!   Llama 4's concatenated `experts.gate_up_proj` and DeepSeek's fused MLA projections
//!   ([`super::mla`]);
//! - DBRX ([`dbrx`]): `transformer.blocks.{i}.…`, fused `Wqkv` and expert tensors;
//! - Switch Transformers ([`t5`]): T5's `encoder.block.{i}.layer.{j}.…` and `decoder.block.…`.

mod dbrx;
mod t5;

use super::fused::Cut;
use super::mla::{MlaLayer, MlaPart};
use super::scheme::Scheme;

/// How a graph weight is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// One tensor, used as is.
    Direct(String),
    /// One `[out, in]` linear weight, transposed to `[in, out]`.
    Transposed(String),
    /// One `[out, in]` tensor per expert, each transposed and stacked to `[experts, in, out]`.
    Experts(Vec<String>),
    /// A part of a fused tensor whose own shape says where the part lies.
    Fused { key: String, cut: Cut },
    /// A part of one of DeepSeek's fused MLA projections, located with the layer's other shapes.
    Mla {
        key: String,
        part: MlaPart,
        layer: MlaLayer,
    },
}

impl Source {
    /// The first checkpoint key the source reads (its presence selects the source).
    pub fn first_key(&self) -> &str {
        match self {
            Source::Direct(k) | Source::Transposed(k) => k,
            Source::Fused { key, .. } | Source::Mla { key, .. } => key,
            Source::Experts(keys) => keys.first().map_or("", String::as_str),
        }
    }

    /// The keys read, for messages (`first .. last` for per-expert tensors).
    pub fn describe(&self) -> String {
        match self {
            Source::Experts(k) if k.len() > 1 => format!("{} .. {}", k[0], k[k.len() - 1]),
            s => s.first_key().to_string(),
        }
    }
}

/// `l{i}.{rest}` -> `(i, rest)`.
fn layer_of(name: &str) -> Option<(u64, &str)> {
    let (layer, rest) = name.strip_prefix('l')?.split_once('.')?;
    if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((layer.parse().ok()?, rest))
}

/// Graph weight `name` read from `key`: a matrix (`[in, out]` in the graph) from an `[out, in]`
/// linear weight, transposed; other tensors (norms, biases, sinks) as they are. Decided on the
/// graph's name: HF keys may say `norm` in a linear weight's module path (DBRX's
/// `norm_attn_norm.attn.out_proj`).
fn linear_or_direct(key: String, name: &str, shape: &[u64]) -> Source {
    if shape.len() == 2 && name.ends_with(".weight") && !name.contains("norm") {
        Source::Transposed(key)
    } else {
        Source::Direct(key)
    }
}

/// Checkpoint sources to try for graph weight `name` of global `shape`, in order: the graph name,
/// then the keys of `scheme`.
pub(crate) fn sources(name: &str, shape: &[u64], scheme: &Scheme) -> Vec<Source> {
    let mut out = vec![Source::Direct(name.to_string())];
    match scheme {
        Scheme::Decoder {
            root,
            head,
            interleaved,
        } => decoder(&mut out, name, shape, root, head, *interleaved),
        Scheme::Dbrx => dbrx::sources(&mut out, name, shape),
        Scheme::T5 { encoder_blocks } => t5::sources(&mut out, name, shape, *encoder_blocks),
    }
    out
}

/// Alternative spellings of the importer's block names in decoder-only checkpoints.
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
                // Qwen2-MoE's single shared expert; DeepSeek's router bias sits on the gate;
                // GPT-OSS's and Llama 4's router is `router`.
                if let Some(t) = tail.strip_prefix("shared_experts.") {
                    tails.push(format!("shared_expert.{t}"));
                }
                if tail == "e_score_correction_bias" {
                    tails.push("gate.e_score_correction_bias".into());
                }
                if let Some(t) = tail.strip_prefix("gate.") {
                    tails.push(format!("router.{t}"));
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

/// DeepSeek's MLA weights the graph splits out of fused tensors: graph tail -> (HF tail, part).
const MLA: &[(&str, &str, MlaPart)] = &[
    (
        "self_attn.kv_a_proj.weight",
        "self_attn.kv_a_proj_with_mqa.weight",
        MlaPart::Latent,
    ),
    (
        "self_attn.k_rope_proj.weight",
        "self_attn.kv_a_proj_with_mqa.weight",
        MlaPart::RopeKey,
    ),
    (
        "self_attn.k_b_proj.weight",
        "self_attn.kv_b_proj.weight",
        MlaPart::Key,
    ),
    (
        "self_attn.v_b_proj.weight",
        "self_attn.kv_b_proj.weight",
        MlaPart::Value,
    ),
];

/// The decoder-only scheme: `{root}layers.{i}.…`.
fn decoder(
    out: &mut Vec<Source>,
    name: &str,
    shape: &[u64],
    root: &str,
    head: &str,
    interleaved: bool,
) {
    match name {
        "embed_tokens.weight" => out.push(Source::Direct(format!("{root}embed_tokens.weight"))),
        "norm.weight" => out.push(Source::Direct(format!("{root}norm.weight"))),
        "lm_head.weight" => out.push(Source::Transposed(head.to_string())),
        _ => {}
    }
    let Some((layer, rest)) = layer_of(name) else {
        return;
    };
    let prefix = format!("{root}layers.{layer}.");
    if let Some((_, hf, part)) = MLA.iter().find(|(g, _, _)| *g == rest) {
        out.push(Source::Mla {
            key: format!("{prefix}{hf}"),
            part: *part,
            layer: MlaLayer {
                hf: prefix.clone(),
                graph: format!("l{layer}."),
            },
        });
    }
    for key in layer_keys(rest) {
        // GPT-OSS's expert biases: `gate_up_proj_bias` [E, 2F] (interleaved), `down_proj_bias`.
        if let (Some((block, b)), 2) = (key.rsplit_once(".experts."), shape.len()) {
            let fused = format!("{prefix}{block}.experts.gate_up_proj_bias");
            match b {
                "gate_bias" => out.push(Source::Fused {
                    key: fused,
                    cut: Cut::Interleaved(0),
                }),
                "up_bias" => out.push(Source::Fused {
                    key: fused,
                    cut: Cut::Interleaved(1),
                }),
                "down_bias" => out.push(Source::Direct(format!(
                    "{prefix}{block}.experts.down_proj_bias"
                ))),
                _ => {}
            }
            continue;
        }
        // Stacked routed experts: `….experts.{proj}` of shape [E, in, out].
        if let (Some((block, proj)), 3) = (key.rsplit_once(".experts."), shape.len()) {
            experts(
                out,
                &format!("{prefix}{block}"),
                proj,
                shape[0],
                interleaved,
            );
            continue;
        }
        out.push(linear_or_direct(format!("{prefix}{key}"), name, shape));
    }
}

/// The sources of stacked experts `{block}.experts.{proj}` (`block` with its key prefix):
/// per-expert tensors, or fused ones: Llama 4's (`feed_forward.`) `[E, H, 2F]` `gate_up_proj`
/// (gate then up) and `[E, F, H]` `down_proj`; GPT-OSS's (`interleaved`) `[E, H, 2F]` (gate and
/// up interleaved) and `[E, F, H]`; else transformers 5's `[E, 2F, H]` (gate rows then up rows)
/// and `[E, H, F]`.
fn experts(out: &mut Vec<Source>, block: &str, proj: &str, n: u64, interleaved: bool) {
    let Some((_, hf)) = EXPERT_PROJ.iter().find(|(p, _)| *p == proj) else {
        return;
    };
    for h in *hf {
        let keys = (0..n)
            .map(|e| format!("{block}.experts.{e}.{h}.weight"))
            .collect();
        out.push(Source::Experts(keys));
    }
    let llama4 = block.ends_with("feed_forward");
    let part = match proj {
        "gate_proj" => 0,
        "up_proj" => 1,
        _ => {
            let key = format!("{block}.experts.down_proj");
            out.push(if llama4 || interleaved {
                Source::Direct(key)
            } else {
                Source::Fused {
                    key,
                    cut: Cut::ExpertsT,
                }
            });
            return;
        }
    };
    let cut = if llama4 {
        Cut::Half(part)
    } else if interleaved {
        Cut::Interleaved(part)
    } else {
        Cut::HalfRowsT(part)
    };
    out.push(Source::Fused {
        key: format!("{block}.experts.gate_up_proj"),
        cut,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain() -> Scheme {
        Scheme::Decoder {
            root: "model.".into(),
            head: "lm_head.weight".into(),
            interleaved: false,
        }
    }

    fn gpt_oss() -> Scheme {
        Scheme::Decoder {
            root: "model.".into(),
            head: "lm_head.weight".into(),
            interleaved: true,
        }
    }

    #[test]
    fn graph_names_map_to_hf_keys() {
        let s = sources("l3.self_attn.q_proj.weight", &[64, 128], &plain());
        assert_eq!(s[0], Source::Direct("l3.self_attn.q_proj.weight".into()));
        assert!(s.contains(&Source::Transposed(
            "model.layers.3.self_attn.q_proj.weight".into()
        )));
        let s = sources("l0.input_layernorm.weight", &[64], &plain());
        assert!(s.contains(&Source::Direct(
            "model.layers.0.input_layernorm.weight".into()
        )));
        let s = sources("l1.moe.gate.weight", &[64, 8], &plain());
        for k in [
            "model.layers.1.mlp.gate.weight",
            "model.layers.1.block_sparse_moe.gate.weight",
            "model.layers.1.mlp.router.weight",
            "model.layers.1.feed_forward.router.weight",
        ] {
            assert!(s.contains(&Source::Transposed(k.into())), "{k}");
        }
        let s = sources("l1.moe.gate.bias", &[8], &plain());
        assert!(s.contains(&Source::Direct("model.layers.1.mlp.router.bias".into())));
        let s = sources("l1.moe.shared_experts.up_proj.weight", &[64, 32], &plain());
        assert!(s.contains(&Source::Transposed(
            "model.layers.1.mlp.shared_expert.up_proj.weight".into()
        )));
        let s = sources("l2.moe.e_score_correction_bias", &[8], &plain());
        assert!(s.contains(&Source::Direct(
            "model.layers.2.mlp.gate.e_score_correction_bias".into()
        )));
        let s = sources("lm_head.weight", &[64, 100], &plain());
        assert_eq!(s[1], Source::Transposed("lm_head.weight".into()));
        let wrapped = Scheme::Decoder {
            root: "language_model.model.".into(),
            head: "language_model.lm_head.weight".into(),
            interleaved: false,
        };
        let s = sources("lm_head.weight", &[64, 100], &wrapped);
        assert_eq!(
            s[1],
            Source::Transposed("language_model.lm_head.weight".into())
        );
        let s = sources("embed_tokens.weight", &[100, 64], &wrapped);
        assert_eq!(
            s[1],
            Source::Direct("language_model.model.embed_tokens.weight".into())
        );
    }

    #[test]
    fn stacked_experts_map_to_per_expert_and_fused_keys() {
        let s = sources("l0.moe.experts.gate_proj", &[2, 64, 32], &plain());
        assert!(s.contains(&Source::Experts(vec![
            "model.layers.0.mlp.experts.0.gate_proj.weight".into(),
            "model.layers.0.mlp.experts.1.gate_proj.weight".into(),
        ])));
        assert!(s.contains(&Source::Experts(vec![
            "model.layers.0.block_sparse_moe.experts.0.w1.weight".into(),
            "model.layers.0.block_sparse_moe.experts.1.w1.weight".into(),
        ])));
        // transformers 5: gate in the first rows; Llama 4: in the first half of the columns;
        // GPT-OSS: in the even columns.
        assert!(s.contains(&Source::Fused {
            key: "model.layers.0.mlp.experts.gate_up_proj".into(),
            cut: Cut::HalfRowsT(0),
        }));
        let g = sources("l0.moe.experts.gate_proj", &[2, 64, 32], &gpt_oss());
        assert!(g.contains(&Source::Fused {
            key: "model.layers.0.mlp.experts.gate_up_proj".into(),
            cut: Cut::Interleaved(0),
        }));
        assert!(s.contains(&Source::Fused {
            key: "model.layers.0.feed_forward.experts.gate_up_proj".into(),
            cut: Cut::Half(0),
        }));
        let s = sources("l0.moe.experts.up_proj", &[2, 64, 32], &plain());
        assert!(s.contains(&Source::Fused {
            key: "model.layers.0.feed_forward.experts.gate_up_proj".into(),
            cut: Cut::Half(1),
        }));
        let s = sources("l0.moe.experts.down_proj", &[2, 32, 64], &plain());
        assert!(s.contains(&Source::Fused {
            key: "model.layers.0.mlp.experts.down_proj".into(),
            cut: Cut::ExpertsT,
        }));
        let s = sources("l0.moe.experts.up_bias", &[2, 32], &gpt_oss());
        assert!(s.contains(&Source::Fused {
            key: "model.layers.0.mlp.experts.gate_up_proj_bias".into(),
            cut: Cut::Interleaved(1),
        }));
        let s = sources("l0.moe.experts.down_bias", &[2, 64], &gpt_oss());
        assert!(s.contains(&Source::Direct(
            "model.layers.0.mlp.experts.down_proj_bias".into()
        )));
        let s = sources("l0.moe.experts.down_proj", &[2, 32, 64], &gpt_oss());
        assert!(s.contains(&Source::Direct(
            "model.layers.0.mlp.experts.down_proj".into()
        )));
        assert!(s.contains(&Source::Direct(
            "model.layers.0.feed_forward.experts.down_proj".into()
        )));
    }

    #[test]
    fn mla_weights_come_from_fused_projections() {
        let s = sources("l4.self_attn.v_b_proj.weight", &[512, 2048], &plain());
        assert_eq!(
            s[1],
            Source::Mla {
                key: "model.layers.4.self_attn.kv_b_proj.weight".into(),
                part: MlaPart::Value,
                layer: MlaLayer {
                    hf: "model.layers.4.".into(),
                    graph: "l4.".into()
                },
            }
        );
        let s = sources("l4.self_attn.k_rope_proj.weight", &[2048, 64], &plain());
        assert!(matches!(
            &s[1],
            Source::Mla { key, part: MlaPart::RopeKey, .. }
                if key == "model.layers.4.self_attn.kv_a_proj_with_mqa.weight"
        ));
    }
}
