//! DeepSeek-V3 (query LoRA) and DeepSeek-V2-Lite (full query projection): the fused MLA
//! projections `kv_a_proj_with_mqa` (`[r + R, hidden]`: latent rows, then the shared RoPE key's)
//! and `kv_b_proj` (`[heads * (nope + v), r]`: per head, `nope` key rows then `v` value rows),
//! split into the graph's `kv_a_proj`, `k_rope_proj`, `k_b_proj`, `v_b_proj`; per-expert routed
//! experts, shared experts, the selection bias.

use super::*;

/// 3 heads, kv_lora_rank 8, rope 4, nope 6, v 5, hidden 24.
const HEADS: usize = 3;
const NOPE: usize = 6;
const V: usize = 5;

fn graph(config: &str, extra: &[&str]) -> Graph {
    let mut sets = vec![
        "num_hidden_layers=2",
        "first_k_dense_replace=1",
        "hidden_size=24",
        "vocab_size=64",
        "intermediate_size=40",
        "moe_intermediate_size=8",
        "num_attention_heads=3",
        "num_key_value_heads=3",
        "kv_lora_rank=8",
        "qk_rope_head_dim=4",
        "qk_nope_head_dim=6",
        "v_head_dim=5",
        "n_routed_experts=4",
        "num_experts_per_tok=2",
    ];
    sets.extend_from_slice(extra);
    small(config, &sets, "ep=2")
}

fn v3() -> Graph {
    graph(
        "deepseek-v3",
        &[
            "q_lora_rank=12",
            "n_group=2",
            "topk_group=1",
            "n_shared_experts=1",
        ],
    )
}

fn v2_lite() -> Graph {
    graph("deepseek-v2-lite", &["n_shared_experts=2"])
}

fn hf(g: &Graph) -> Vec<Tensor> {
    let mut w = Hf::new(g);
    w.decoder_common("model.", "lm_head.weight", 2);
    for i in 0..2 {
        let p = format!("model.layers.{i}.");
        let a = format!("l{i}.self_attn.");
        for n in ["self_attn.kv_a_layernorm", "self_attn.q_a_layernorm"] {
            let name = format!("l{i}.{n}.weight");
            if w.has(&name) {
                w.direct(&name, format!("{p}{n}.weight"));
            }
        }
        for n in ["q_proj", "q_a_proj", "q_b_proj", "o_proj"] {
            if w.has(&format!("{a}{n}.weight")) {
                w.linear(
                    &format!("{a}{n}.weight"),
                    format!("{p}self_attn.{n}.weight"),
                );
            }
        }
        // kv_a_proj_with_mqa: [kv_a_proj^T; k_rope_proj^T].
        let (s1, latent) = w.take(&format!("{a}kv_a_proj.weight"));
        let (s2, rope) = w.take(&format!("{a}k_rope_proj.weight"));
        let mut data = transpose(&latent, s1[0], s1[1]);
        data.extend(transpose(&rope, s2[0], s2[1]));
        w.push(
            format!("{p}self_attn.kv_a_proj_with_mqa.weight"),
            vec![s1[1] + s2[1], s1[0]],
            data,
        );
        // kv_b_proj: head h's NOPE key rows (k_b_proj^T rows h*NOPE..) then V value rows.
        let (sk, k) = w.take(&format!("{a}k_b_proj.weight"));
        let (_, v) = w.take(&format!("{a}v_b_proj.weight"));
        let r = sk[0];
        let (kt, vt) = (transpose(&k, r, HEADS * NOPE), transpose(&v, r, HEADS * V));
        let mut data = Vec::new();
        for h in 0..HEADS {
            data.extend_from_slice(&kt[h * NOPE * r..(h + 1) * NOPE * r]);
            data.extend_from_slice(&vt[h * V * r..(h + 1) * V * r]);
        }
        w.push(
            format!("{p}self_attn.kv_b_proj.weight"),
            vec![HEADS * (NOPE + V), r],
            data,
        );
        let dense = format!("l{i}.mlp.");
        let block = if w.has(&format!("{dense}up_proj.weight")) {
            dense
        } else {
            let m = format!("l{i}.moe.");
            w.linear(&format!("{m}gate.weight"), format!("{p}mlp.gate.weight"));
            let bias = format!("{m}e_score_correction_bias");
            if w.has(&bias) {
                w.direct(&bias, format!("{p}mlp.gate.e_score_correction_bias"));
            }
            for n in ["gate_proj", "up_proj", "down_proj"] {
                w.per_expert(&format!("{m}experts.{n}"), |e| {
                    format!("{p}mlp.experts.{e}.{n}.weight")
                });
            }
            format!("{m}shared_experts.")
        };
        let hf_block = if block.contains("shared") {
            "mlp.shared_experts."
        } else {
            "mlp."
        };
        for n in ["gate_proj", "up_proj", "down_proj"] {
            w.linear(
                &format!("{block}{n}.weight"),
                format!("{p}{hf_block}{n}.weight"),
            );
        }
    }
    w.finish()
}

#[test]
fn deepseek_v3_mla_projections_split_per_head() {
    let g = v3();
    let t = hf(&g);
    assert!(t
        .iter()
        .any(|(k, s, _)| k == "model.layers.1.self_attn.kv_b_proj.weight" && s == &[33, 8]));
    assert!(t.iter().any(
        |(k, s, _)| k == "model.layers.1.self_attn.kv_a_proj_with_mqa.weight" && s == &[12, 24]
    ));
    same_run(&g, &t);
}

#[test]
fn deepseek_v2_lite_without_query_lora() {
    let g = v2_lite();
    let t = hf(&g);
    assert!(t
        .iter()
        .any(|(k, _, _)| k == "model.layers.0.self_attn.q_proj.weight"));
    same_run(&g, &t);
}

#[test]
fn misshapen_mla_projections_are_refused() {
    let g = v3();
    let key = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight";
    refused(&g, &reshaped(&hf(&g), key, drop_row), "l0.self_attn.", key);
    let key = "model.layers.1.self_attn.kv_b_proj.weight";
    let msg = refused(&g, &reshaped(&hf(&g), key, drop_row), "l1.self_attn.", key);
    assert!(msg.contains("[32, 8]"), "{msg}");
}
