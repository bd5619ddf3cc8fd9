//! Mixtral: per-layer `model.layers.{i}.…` keys, `[out, in]` linear weights, one tensor per expert
//! (`block_sparse_moe.experts.{e}.w1|w3|w2`).

use super::*;
use moe_backend::{verify, VerifyOptions};

fn graph() -> Graph {
    small(
        "mixtral-8x7b",
        &[
            "num_hidden_layers=2",
            "hidden_size=32",
            "intermediate_size=48",
            "num_attention_heads=4",
            "num_key_value_heads=2",
            "vocab_size=64",
            "num_local_experts=4",
        ],
        "ep=2",
    )
}

fn hf(g: &Graph) -> Vec<Tensor> {
    let mut w = Hf::new(g);
    w.decoder_common("model.", "lm_head.weight", 2);
    for i in 0..2 {
        let p = format!("model.layers.{i}.");
        for n in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            let name = format!("l{i}.self_attn.{n}.weight");
            w.linear(&name, format!("{p}self_attn.{n}.weight"));
        }
        w.linear(
            &format!("l{i}.moe.gate.weight"),
            format!("{p}block_sparse_moe.gate.weight"),
        );
        for (proj, hf) in [("gate_proj", "w1"), ("up_proj", "w3"), ("down_proj", "w2")] {
            w.per_expert(&format!("l{i}.moe.experts.{proj}"), |e| {
                format!("{p}block_sparse_moe.experts.{e}.{hf}.weight")
            });
        }
    }
    w.finish()
}

#[test]
fn mixtral_hf_names_give_the_graph_run() {
    let g = graph();
    same_run(&g, &hf(&g));
}

#[test]
fn checkpoint_weights_shard_like_seeded_ones() {
    let g = graph();
    let w = checkpoint(&hf(&g));
    let v = verify(&g, &common::ppmoe(&g, 2), &w, &VerifyOptions::default()).unwrap();
    assert!(v.passed, "{v:?}");
}

#[test]
fn a_missing_or_misshapen_tensor_is_named() {
    let g = graph();
    let mut t = hf(&g);
    t.retain(|(n, _, _)| n != "model.layers.0.self_attn.k_proj.weight");
    let e = run(&g, &checkpoint(&t), &RunOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("weight `l0.self_attn.k_proj.weight`")
            && msg.contains("model.layers.0.self_attn.k_proj.weight"),
        "{msg}"
    );
    // A matrix stored flat.
    let mut t = under_graph_names(&g);
    let i = t.iter().position(|x| x.1.len() == 2).unwrap();
    t[i].1 = vec![t[i].2.len()];
    let e = run(&g, &checkpoint(&t), &RunOptions::default()).unwrap_err();
    assert!(
        e.to_string().contains(&format!("weight `{}`", t[i].0)),
        "{e}"
    );
    // One expert's tensor of the wrong shape.
    let key = "model.layers.1.block_sparse_moe.experts.3.w2.weight";
    let t = reshaped(&hf(&g), key, drop_row);
    refused(&g, &t, "l1.moe.experts.down_proj", key);
}
