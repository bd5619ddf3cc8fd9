//! Llama 4, under the multimodal checkpoint's `language_model.` prefix: `feed_forward.router`,
//! `feed_forward.shared_expert.*`, the fused experts `feed_forward.experts.gate_up_proj`
//! `[E, hidden, 2 * ffn]` (gate in the first half, up in the second) and `down_proj`
//! `[E, ffn, hidden]`, and a dense layer's `feed_forward.{gate,up,down}_proj`.

use super::*;

fn graph() -> Graph {
    small(
        "llama4-scout",
        &[
            "num_hidden_layers=2",
            "hidden_size=32",
            "vocab_size=64",
            "intermediate_size=16",
            "intermediate_size_mlp=48",
            "num_attention_heads=4",
            "num_key_value_heads=2",
            "head_dim=8",
            "num_local_experts=4",
            "attention_chunk_size=4",
            "interleave_moe_layer_step=2",
            "moe_layers=[1]",
            "no_rope_layers=[1,0]",
        ],
        "ep=2",
    )
}

fn hf(g: &Graph) -> Vec<Tensor> {
    let mut w = Hf::new(g);
    let root = "language_model.model.";
    w.decoder_common(root, "language_model.lm_head.weight", 2);
    for i in 0..2 {
        let p = format!("{root}layers.{i}.");
        for n in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            let name = format!("l{i}.self_attn.{n}.weight");
            w.linear(&name, format!("{p}self_attn.{n}.weight"));
        }
        if w.has(&format!("l{i}.mlp.up_proj.weight")) {
            for n in ["gate_proj", "up_proj", "down_proj"] {
                let name = format!("l{i}.mlp.{n}.weight");
                w.linear(&name, format!("{p}feed_forward.{n}.weight"));
            }
            continue;
        }
        w.linear(
            &format!("l{i}.moe.gate.weight"),
            format!("{p}feed_forward.router.weight"),
        );
        for n in ["gate_proj", "up_proj", "down_proj"] {
            let name = format!("l{i}.moe.shared_experts.{n}.weight");
            w.linear(&name, format!("{p}feed_forward.shared_expert.{n}.weight"));
        }
        // gate_up[e][h] = gate[e][h] followed by up[e][h].
        let (s, gate) = w.take(&format!("l{i}.moe.experts.gate_proj"));
        let (_, up) = w.take(&format!("l{i}.moe.experts.up_proj"));
        let f = s[2];
        let fused = gate
            .chunks(f)
            .zip(up.chunks(f))
            .flat_map(|(g, u)| g.iter().chain(u).copied())
            .collect();
        w.push(
            format!("{p}feed_forward.experts.gate_up_proj"),
            vec![s[0], s[1], 2 * f],
            fused,
        );
        w.direct(
            &format!("l{i}.moe.experts.down_proj"),
            format!("{p}feed_forward.experts.down_proj"),
        );
    }
    w.finish()
}

#[test]
fn llama4_concatenated_gate_up_splits_into_gate_and_up() {
    let g = graph();
    let t = hf(&g);
    assert!(t.iter().any(|(k, s, _)| k
        == "language_model.model.layers.1.feed_forward.experts.gate_up_proj"
        && s == &[4, 32, 32]));
    assert!(t
        .iter()
        .any(|(k, _, _)| k == "language_model.model.layers.0.feed_forward.up_proj.weight"));
    same_run(&g, &t);
}

#[test]
fn a_misshapen_gate_up_is_refused() {
    let g = graph();
    let key = "language_model.model.layers.1.feed_forward.experts.gate_up_proj";
    // Only the gate half.
    let t = reshaped(&hf(&g), key, |s, v| {
        let half: Vec<f32> = v
            .chunks(s[2])
            .flat_map(|r| r[..s[2] / 2].to_vec())
            .collect();
        (vec![s[0], s[1], s[2] / 2], half)
    });
    refused(&g, &t, "l1.moe.experts.", key);
}
