//! Property: random small MoE models compute the same function in their imported expert-parallel
//! form and in every rewritten form ([`common::forms`]: the PPMoE rewrite, and the PPMoE rewrite
//! cut into 1 to 4 pipeline stages).
//!
//! Models are Hugging Face configs of four shapes cut small: DeepSeek-V3 (softmax or sigmoid
//! scores, optional group-limited routing scored by the best or the two best members, selection
//! bias, optional shared expert, scaled weights), Mixtral (softmax, renormalized top-k), Qwen2-MoE
//! (softmax, gated shared expert) and Switch (top-1, native expert capacity); 2 to 16 experts,
//! top-1 to top-4, capacity (slots per expert per rank, tokens dropped) or dropless, expert-parallel
//! meshes of 1 to 8 ranks dividing the experts, remapped onto tensor-parallel groups dividing them.
//!
//! Runs compute in f64 with a tolerance of 1e-9: in f32, the rounding differences between the
//! forms (partial sums added in another order) can flip the choice between two experts whose
//! scores differ by less than them, which is not a rewrite bug.

#![allow(clippy::unwrap_used)]

mod common;

use common::{check_forms, describe, forms, import_batched, with_capacity};
use moe_backend::{verify, Precision, RunOptions, VerifyOptions, Weights};
use proptest::prelude::*;

const SEQ: u64 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Template {
    DeepSeek,
    Mixtral,
    Qwen2,
    Switch,
}

/// One random model.
#[derive(Clone, Debug)]
struct Moe {
    template: Template,
    experts: u64,
    k: u64,
    shared: bool,
    sigmoid: bool,
    /// `(n_group, topk_group, top2_sum)`.
    groups: Option<(u64, u64, bool)>,
    /// Slots per expert per rank; `None`: dropless.
    slots: Option<u64>,
    ep: u64,
    tp: u64,
    /// Pipeline stages of the pipelined form (the model has at least as many layers, and 2).
    pp: u32,
}

fn divisors(n: u64, max: u64) -> Vec<u64> {
    (1..=max.min(n)).filter(|d| n % d == 0).collect()
}

/// A valid model from raw random choices.
#[allow(clippy::too_many_arguments)]
fn build(
    t: usize,
    experts: u64,
    k: u64,
    shared: bool,
    sigmoid: bool,
    (ep_i, tp_i, g_i, tg_i): (usize, usize, usize, u64),
    grouped: bool,
    top2: bool,
    slots: u64,
    pp: u32,
) -> Moe {
    let template = [
        Template::DeepSeek,
        Template::Mixtral,
        Template::Qwen2,
        Template::Switch,
    ][t];
    let k = if template == Template::Switch {
        1
    } else {
        k.min(experts)
    };
    // Mostly meshes of several ranks; one rank when the experts have no other divisor or one
    // time in eight.
    let eps: Vec<u64> = divisors(experts, 8)
        .into_iter()
        .filter(|&d| d > 1)
        .collect();
    let ep = if ep_i == 0 || eps.is_empty() {
        1
    } else {
        eps[ep_i % eps.len()]
    };
    let tps: Vec<u64> = divisors(ep, 8)
        .into_iter()
        .filter(|&d| d > 1 || ep == 1)
        .collect();
    let tp = tps[tp_i % tps.len()];
    let mut groups = None;
    if template == Template::DeepSeek && (grouped || tg_i % 2 == 0) {
        // Groups of at least 2 experts (the two-best score needs two), at least 2 groups.
        let cands: Vec<u64> = (2..=experts / 2).filter(|g| experts % g == 0).collect();
        if !cands.is_empty() {
            let g = cands[g_i % cands.len()];
            let per = experts / g;
            let tg = (1 + tg_i % g).max(k.div_ceil(per));
            groups = Some((g, tg, top2));
        }
    }
    Moe {
        template,
        experts,
        k,
        shared,
        sigmoid,
        groups,
        slots: (1..SEQ).contains(&slots).then_some(slots),
        ep,
        tp,
        pp,
    }
}

fn moe() -> impl Strategy<Value = Moe> {
    (
        0usize..4,
        2u64..=16,
        1u64..=4,
        any::<bool>(),
        any::<bool>(),
        (0usize..8, 0usize..8, 0usize..8, 0u64..8),
        any::<bool>(),
        any::<bool>(),
        (0u64..12, 1u32..=4),
    )
        .prop_map(|(t, e, k, sh, sg, ix, gr, t2, (sl, pp))| {
            build(t, e, k, sh, sg, ix, gr, t2, sl, pp)
        })
}

impl Moe {
    /// Decoder layers (encoder and decoder layers each for Switch): enough for the stages.
    fn layers(&self) -> u32 {
        match self.template {
            Template::Switch => self.pp.div_ceil(2),
            _ => self.pp.max(2),
        }
    }

    /// The config file and its `--set`s.
    fn config(&self) -> (&'static str, Vec<String>) {
        let (e, k) = (self.experts, self.k);
        let layers = self.layers();
        let mut s: Vec<String> = Vec::new();
        let file = match self.template {
            Template::DeepSeek => {
                s.extend([
                    format!("num_hidden_layers={layers}"),
                    "first_k_dense_replace=0".into(),
                    "hidden_size=32".into(),
                    "intermediate_size=32".into(),
                    "moe_intermediate_size=16".into(),
                    "num_attention_heads=8".into(),
                    "num_key_value_heads=8".into(),
                    "q_lora_rank=16".into(),
                    "kv_lora_rank=16".into(),
                    "qk_rope_head_dim=4".into(),
                    "qk_nope_head_dim=4".into(),
                    "v_head_dim=4".into(),
                    "vocab_size=64".into(),
                    format!("n_routed_experts={e}"),
                    format!("num_experts_per_tok={k}"),
                    format!("n_shared_experts={}", u8::from(self.shared)),
                    format!(
                        "scoring_func={}",
                        if self.sigmoid { "sigmoid" } else { "softmax" }
                    ),
                ]);
                match self.groups {
                    Some((g, tg, top2)) => s.extend([
                        format!(
                            "topk_method={}",
                            if top2 {
                                "noaux_tc"
                            } else {
                                "group_limited_greedy"
                            }
                        ),
                        format!("n_group={g}"),
                        format!("topk_group={tg}"),
                    ]),
                    None => s.push("topk_method=greedy".into()),
                }
                include_str!("../../examples/hf/deepseek-v3.json")
            }
            Template::Mixtral => {
                s.extend([
                    format!("num_hidden_layers={layers}"),
                    "hidden_size=32".into(),
                    "intermediate_size=16".into(),
                    "num_attention_heads=8".into(),
                    "num_key_value_heads=2".into(),
                    "vocab_size=64".into(),
                    format!("num_local_experts={e}"),
                    format!("num_experts_per_tok={k}"),
                ]);
                include_str!("../../examples/hf/mixtral-8x7b.json")
            }
            Template::Qwen2 => {
                s.extend([
                    format!("num_hidden_layers={layers}"),
                    "hidden_size=32".into(),
                    "intermediate_size=32".into(),
                    "moe_intermediate_size=16".into(),
                    "shared_expert_intermediate_size=32".into(),
                    "num_attention_heads=8".into(),
                    "num_key_value_heads=2".into(),
                    "vocab_size=64".into(),
                    format!("num_experts={e}"),
                    format!("num_experts_per_tok={k}"),
                ]);
                include_str!("../../examples/hf/qwen2-57b-a14b.json")
            }
            Template::Switch => {
                s.extend([
                    format!("num_layers={layers}"),
                    format!("num_decoder_layers={layers}"),
                    format!("num_sparse_encoder_layers={layers}"),
                    format!("num_sparse_decoder_layers={layers}"),
                    "encoder_sparse_step=1".into(),
                    "decoder_sparse_step=1".into(),
                    "d_model=32".into(),
                    "d_ff=16".into(),
                    "num_heads=8".into(),
                    "d_kv=4".into(),
                    "vocab_size=64".into(),
                    format!("num_experts={e}"),
                    format!("expert_capacity={}", self.slots.unwrap_or(SEQ)),
                ]);
                include_str!("../../examples/hf/switch-base-8.json")
            }
        };
        (file, s)
    }

    /// The imported expert-parallel graph (one sequence per rank), with its capacity.
    fn graph(&self) -> moe_ir::Graph {
        self.graph_batched(1)
    }

    /// The graph with `micro_batch` sequences per rank.
    fn graph_batched(&self, micro_batch: u64) -> moe_ir::Graph {
        let (text, sets) = self.config();
        let g = import_batched(text, &sets, &format!("ep={}", self.ep), SEQ, micro_batch);
        match (self.template, self.slots) {
            (Template::Switch, _) | (_, None) => g,
            (_, Some(s)) => with_capacity(&g, s),
        }
    }
}

fn exact() -> VerifyOptions {
    VerifyOptions {
        run: RunOptions {
            precision: Precision::F64,
            ..Default::default()
        },
        rtol: 1e-9,
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 48,
        max_shrink_iters: 16,
        ..ProptestConfig::default()
    })]

    #[test]
    fn rewritten_forms_compute_the_original_function(m in moe()) {
        let g = m.graph();
        let forms = forms(&g, m.tp, (m.tp, m.pp));
        for (form, v) in check_forms(&g, &forms, &exact()) {
            prop_assert!(v.passed, "{m:?} vs {form}: {}", describe(&v));
        }
    }
}

#[test]
fn seeded_models_do_not_depend_on_the_mesh() {
    let m = build(0, 8, 2, true, true, (0, 0, 0, 1), true, true, 0, 1);
    // 64 tokens in all, whatever the mesh.
    let on = |ep: u64| Moe { ep, ..m.clone() }.graph_batched(8 / ep);
    let one = on(1);
    for ep in [2, 4, 8] {
        let v = verify(&one, &on(ep), &Weights::Seeded, &exact()).unwrap();
        assert!(v.passed, "ep={ep}: {}", describe(&v));
    }
}

#[test]
fn dropping_changes_the_function() {
    // The capacity cases are not vacuous: with few slots, tokens are dropped.
    let m = build(1, 4, 2, false, false, (2, 0, 0, 0), false, false, 0, 1);
    let dropless = m.graph();
    let capped = Moe {
        slots: Some(1),
        ..m
    }
    .graph();
    let v = verify(&dropless, &capped, &Weights::Seeded, &exact()).unwrap();
    assert!(!v.passed, "{}", describe(&v));
}
