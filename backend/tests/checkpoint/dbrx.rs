//! DBRX: `transformer.blocks.{i}.…`, the fused `Wqkv` (query, key, value rows) and the fused
//! expert tensors `w1`, `v1` (`[experts * ffn, hidden]`, used as `x @ w[e].T`) and `w2` (the same
//! shape, used as `x @ w2[e]`).

use super::*;

const LAYERS: usize = 2;

fn graph() -> Graph {
    small(
        "dbrx",
        &[
            "n_layers=2",
            "d_model=32",
            "n_heads=4",
            "vocab_size=64",
            "attn_config.kv_n_heads=2",
            "ffn_config.ffn_hidden_size=24",
            "ffn_config.moe_num_experts=4",
            "ffn_config.moe_top_k=2",
        ],
        "ep=2",
    )
}

/// Expert weights `[E, in, out]` as DBRX's `[E * out, in]` (each expert's `[out, in]` rows).
fn rows_t(s: &[usize], v: &[f32]) -> (Vec<usize>, Vec<f32>) {
    let (e, i, o) = (s[0], s[1], s[2]);
    let data = (0..e)
        .flat_map(|x| transpose(&v[x * i * o..(x + 1) * i * o], i, o))
        .collect();
    (vec![e * o, i], data)
}

fn hf(g: &Graph) -> Vec<Tensor> {
    let mut w = Hf::new(g);
    w.direct("embed_tokens.weight", "transformer.wte.weight");
    w.direct("norm.weight", "transformer.norm_f.weight");
    w.linear("lm_head.weight", "lm_head.weight");
    for i in 0..LAYERS {
        let b = format!("transformer.blocks.{i}.");
        w.direct(
            &format!("l{i}.input_layernorm.weight"),
            format!("{b}norm_attn_norm.norm_1.weight"),
        );
        w.direct(
            &format!("l{i}.post_attention_layernorm.weight"),
            format!("{b}norm_attn_norm.norm_2.weight"),
        );
        w.linear(
            &format!("l{i}.self_attn.o_proj.weight"),
            format!("{b}norm_attn_norm.attn.out_proj.weight"),
        );
        w.linear(
            &format!("l{i}.moe.gate.weight"),
            format!("{b}ffn.router.layer.weight"),
        );
        // Wqkv: the query, key and value `[out, in]` rows one after the other.
        let (mut rows, mut data, mut cols) = (0, Vec::new(), 0);
        for p in ["q_proj", "k_proj", "v_proj"] {
            let (s, v) = w.take(&format!("l{i}.self_attn.{p}.weight"));
            data.extend(transpose(&v, s[0], s[1]));
            rows += s[1];
            cols = s[0];
        }
        w.push(
            format!("{b}norm_attn_norm.attn.Wqkv.weight"),
            vec![rows, cols],
            data,
        );
        for (proj, key) in [("gate_proj", "w1"), ("up_proj", "v1")] {
            let (s, v) = w.take(&format!("l{i}.moe.experts.{proj}"));
            let (s, v) = rows_t(&s, &v);
            w.push(format!("{b}ffn.experts.mlp.{key}"), s, v);
        }
        // w2 is the graph's [E, ffn, hidden] as it is, viewed [E * ffn, hidden].
        let (s, v) = w.take(&format!("l{i}.moe.experts.down_proj"));
        w.push(format!("{b}ffn.experts.mlp.w2"), vec![s[0] * s[1], s[2]], v);
    }
    w.finish()
}

#[test]
fn dbrx_fused_tensors_split_into_the_graph_weights() {
    let g = graph();
    let t = hf(&g);
    // The query is as wide as the model (32), key and value 2 heads of 8.
    assert!(t.iter().any(
        |(k, s, _)| k == "transformer.blocks.1.norm_attn_norm.attn.Wqkv.weight" && s == &[64, 32]
    ));
    same_run(&g, &t);
}

#[test]
fn misshapen_fused_dbrx_tensors_are_refused() {
    let g = graph();
    let key = "transformer.blocks.0.norm_attn_norm.attn.Wqkv.weight";
    let msg = refused(&g, &reshaped(&hf(&g), key, drop_row), "l0.self_attn.", key);
    assert!(msg.contains("even number of rows"), "{msg}");
    let key = "transformer.blocks.1.ffn.experts.mlp.w1";
    let msg = refused(
        &g,
        &reshaped(&hf(&g), key, drop_row),
        "l1.moe.experts.gate_proj",
        key,
    );
    assert!(
        msg.contains("[95, 32]") && msg.contains("[96, 32]"),
        "{msg}"
    );
}
