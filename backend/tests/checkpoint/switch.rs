//! Switch Transformers (T5 names): `shared.weight`, `encoder.block.{i}.layer.{0,1}` and
//! `decoder.block.{i}.layer.{0,1,2}` (self-attention, cross-attention, FFN), the router
//! `mlp.router.classifier` (with its bias) and experts `mlp.experts.expert_{e}.{wi,wo}`, the final
//! layer norms; each stack's relative position bias table in its first block; the LM head tied to
//! the embedding.

use super::*;

const ENCODER: usize = 2;

fn graph() -> Graph {
    small(
        "switch-base-8",
        &[
            "num_layers=2",
            "num_decoder_layers=2",
            "num_sparse_encoder_layers=1",
            "num_sparse_decoder_layers=1",
            "d_model=32",
            "d_ff=48",
            "num_heads=4",
            "d_kv=8",
            "vocab_size=64",
            "num_experts=4",
            "expert_capacity=8",
            "router_bias=true",
        ],
        "ep=2",
    )
}

fn hf(g: &Graph) -> Vec<Tensor> {
    let mut w = Hf::new(g);
    w.direct("embed_tokens.weight", "shared.weight");
    w.direct(
        "encoder.final_layer_norm.weight",
        "encoder.final_layer_norm.weight",
    );
    w.direct("norm.weight", "decoder.final_layer_norm.weight");
    for i in 0..2 * ENCODER {
        let (b, ffn) = if i < ENCODER {
            (format!("encoder.block.{i}.layer."), 1)
        } else {
            (format!("decoder.block.{}.layer.", i - ENCODER), 2)
        };
        w.direct(
            &format!("l{i}.input_layernorm.weight"),
            format!("{b}0.layer_norm.weight"),
        );
        w.direct(
            &format!("l{i}.post_attention_layernorm.weight"),
            format!("{b}{ffn}.layer_norm.weight"),
        );
        for x in ["q", "k", "v", "o"] {
            let name = format!("l{i}.self_attn.{x}_proj.weight");
            w.linear(&name, format!("{b}0.SelfAttention.{x}.weight"));
            let name = format!("l{i}.cross_attn.{x}_proj.weight");
            if w.has(&name) {
                w.linear(&name, format!("{b}1.EncDecAttention.{x}.weight"));
            }
        }
        if w.has(&format!("l{i}.cross_layernorm.weight")) {
            w.direct(
                &format!("l{i}.cross_layernorm.weight"),
                format!("{b}1.layer_norm.weight"),
            );
        }
        let m = format!("{b}{ffn}.mlp.");
        if w.has(&format!("l{i}.mlp.up_proj.weight")) {
            w.linear(&format!("l{i}.mlp.up_proj.weight"), format!("{m}wi.weight"));
            w.linear(
                &format!("l{i}.mlp.down_proj.weight"),
                format!("{m}wo.weight"),
            );
            continue;
        }
        w.linear(
            &format!("l{i}.moe.gate.weight"),
            format!("{m}router.classifier.weight"),
        );
        w.direct(
            &format!("l{i}.moe.gate.bias"),
            format!("{m}router.classifier.bias"),
        );
        for (proj, x) in [("up_proj", "wi"), ("down_proj", "wo")] {
            w.per_expert(&format!("l{i}.moe.experts.{proj}"), |e| {
                format!("{m}experts.expert_{e}.{x}.weight")
            });
        }
    }
    for stack in ["encoder", "decoder"] {
        w.direct(
            &format!("{stack}.relative_attention_bias"),
            format!("{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
        );
    }
    w.finish()
}

#[test]
fn switch_t5_names_give_the_graph_run() {
    let g = graph();
    let t = hf(&g);
    for key in [
        "decoder.block.1.layer.2.mlp.experts.expert_3.wo.weight",
        "encoder.block.1.layer.1.mlp.router.classifier.bias",
        "decoder.block.0.layer.1.EncDecAttention.q.weight",
        "decoder.block.0.layer.2.mlp.wi.weight",
    ] {
        assert!(t.iter().any(|(k, _, _)| k == key), "{key}");
    }
    same_run(&g, &t);
}

#[test]
fn a_misshapen_expert_is_refused() {
    let g = graph();
    let key = "encoder.block.1.layer.1.mlp.experts.expert_2.wi.weight";
    refused(
        &g,
        &reshaped(&hf(&g), key, drop_row),
        "l1.moe.experts.up_proj",
        key,
    );
}
