//! GPT-OSS: `model.layers.{i}.mlp.router` (weight and bias), the fused experts
//! `mlp.experts.gate_up_proj` `[E, hidden, 2 * ffn]` with gate and up in the even and odd columns,
//! `mlp.experts.down_proj` `[E, ffn, hidden]`, their biases `gate_up_proj_bias` `[E, 2 * ffn]`
//! (interleaved alike) and `down_proj_bias` `[E, hidden]`, attention biases and sinks.

use super::*;

fn graph() -> Graph {
    small(
        "gpt-oss-20b",
        &[
            "num_hidden_layers=2",
            "hidden_size=32",
            "vocab_size=64",
            "intermediate_size=16",
            "num_attention_heads=4",
            "num_key_value_heads=2",
            "head_dim=8",
            "num_local_experts=4",
            "sliding_window=4",
            r#"layer_types=["sliding_attention","full_attention"]"#,
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
            let a = format!("l{i}.self_attn.{n}");
            w.linear(&format!("{a}.weight"), format!("{p}self_attn.{n}.weight"));
            w.direct(&format!("{a}.bias"), format!("{p}self_attn.{n}.bias"));
        }
        w.direct(
            &format!("l{i}.self_attn.sinks"),
            format!("{p}self_attn.sinks"),
        );
        w.linear(
            &format!("l{i}.moe.gate.weight"),
            format!("{p}mlp.router.weight"),
        );
        w.direct(
            &format!("l{i}.moe.gate.bias"),
            format!("{p}mlp.router.bias"),
        );
        // gate_up[e][h][2j] = gate[e][h][j], gate_up[e][h][2j + 1] = up[e][h][j].
        let (s, gate) = w.take(&format!("l{i}.moe.experts.gate_proj"));
        let (_, up) = w.take(&format!("l{i}.moe.experts.up_proj"));
        let fused = gate.iter().zip(&up).flat_map(|(g, u)| [*g, *u]).collect();
        w.push(
            format!("{p}mlp.experts.gate_up_proj"),
            vec![s[0], s[1], 2 * s[2]],
            fused,
        );
        w.direct(
            &format!("l{i}.moe.experts.down_proj"),
            format!("{p}mlp.experts.down_proj"),
        );
        // The biases: gate_up_proj_bias[e][2j] = gate_bias[e][j], [2j + 1] = up_bias[e][j].
        let (s, gate) = w.take(&format!("l{i}.moe.experts.gate_bias"));
        let (_, up) = w.take(&format!("l{i}.moe.experts.up_bias"));
        let fused = gate.iter().zip(&up).flat_map(|(g, u)| [*g, *u]).collect();
        w.push(
            format!("{p}mlp.experts.gate_up_proj_bias"),
            vec![s[0], 2 * s[1]],
            fused,
        );
        w.direct(
            &format!("l{i}.moe.experts.down_bias"),
            format!("{p}mlp.experts.down_proj_bias"),
        );
    }
    w.finish()
}

#[test]
fn gpt_oss_interleaved_gate_up_splits_into_gate_and_up() {
    let g = graph();
    let t = hf(&g);
    assert!(t
        .iter()
        .any(|(k, s, _)| k == "model.layers.0.mlp.experts.gate_up_proj" && s == &[4, 32, 32]));
    same_run(&g, &t);
}

#[test]
fn a_misshapen_gate_up_is_refused() {
    let g = graph();
    let key = "model.layers.1.mlp.experts.gate_up_proj";
    // Three experts instead of four.
    let t = reshaped(&hf(&g), key, |s, v| {
        (vec![3, s[1], s[2]], v[..3 * s[1] * s[2]].to_vec())
    });
    let msg = refused(&g, &t, "l1.moe.experts.", key);
    assert!(msg.contains("[4, 32, 32]"), "{msg}");
}
