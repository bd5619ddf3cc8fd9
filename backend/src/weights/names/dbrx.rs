//! DBRX's checkpoint names (transformers `models/dbrx/`): `transformer.wte`, per block
//! `norm_attn_norm.{norm_1, attn.Wqkv, attn.out_proj, norm_2}` and
//! `ffn.{router.layer, experts.mlp.{w1, v1, w2}}`, `transformer.norm_f`, `lm_head`.
//!
//! Fused tensors: `Wqkv` is `[hidden + 2 * kv_heads * head_dim, hidden]` (query, key, value
//! rows); `w1` and `v1` (gate, up) are `[experts * ffn, hidden]`, expert `e`'s `[ffn, hidden]`
//! rows used as `x @ w.T`; `w2` (down) is `[experts * ffn, hidden]` used as `x @ w2[e]`, already
//! the graph's `[experts, ffn, hidden]`.

use super::{layer_of, linear_or_direct, Source};
use crate::weights::fused::Cut;

/// Graph tail -> DBRX tail within `transformer.blocks.{i}.`.
const BLOCK: &[(&str, &str)] = &[
    ("input_layernorm.weight", "norm_attn_norm.norm_1.weight"),
    (
        "post_attention_layernorm.weight",
        "norm_attn_norm.norm_2.weight",
    ),
    (
        "self_attn.o_proj.weight",
        "norm_attn_norm.attn.out_proj.weight",
    ),
    ("moe.gate.weight", "ffn.router.layer.weight"),
];

/// Graph tail -> (DBRX tail, cut) of the fused tensors.
const FUSED: &[(&str, &str, Cut)] = &[
    (
        "self_attn.q_proj.weight",
        "norm_attn_norm.attn.Wqkv.weight",
        Cut::Qkv(0),
    ),
    (
        "self_attn.k_proj.weight",
        "norm_attn_norm.attn.Wqkv.weight",
        Cut::Qkv(1),
    ),
    (
        "self_attn.v_proj.weight",
        "norm_attn_norm.attn.Wqkv.weight",
        Cut::Qkv(2),
    ),
    (
        "moe.experts.gate_proj",
        "ffn.experts.mlp.w1",
        Cut::ExpertRowsT,
    ),
    (
        "moe.experts.up_proj",
        "ffn.experts.mlp.v1",
        Cut::ExpertRowsT,
    ),
    (
        "moe.experts.down_proj",
        "ffn.experts.mlp.w2",
        Cut::ExpertRows,
    ),
];

/// Appends the DBRX sources of graph weight `name`.
pub(super) fn sources(out: &mut Vec<Source>, name: &str, shape: &[u64]) {
    match name {
        "embed_tokens.weight" => out.push(Source::Direct("transformer.wte.weight".into())),
        "norm.weight" => out.push(Source::Direct("transformer.norm_f.weight".into())),
        "lm_head.weight" => out.push(Source::Transposed("lm_head.weight".into())),
        _ => {}
    }
    let Some((layer, rest)) = layer_of(name) else {
        return;
    };
    let block = format!("transformer.blocks.{layer}.");
    if let Some((_, tail)) = BLOCK.iter().find(|(g, _)| *g == rest) {
        out.push(linear_or_direct(format!("{block}{tail}"), name, shape));
    }
    if let Some((_, tail, cut)) = FUSED.iter().find(|(g, _, _)| *g == rest) {
        out.push(Source::Fused {
            key: format!("{block}{tail}"),
            cut: cut.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dbrx_names() {
        let mut s = Vec::new();
        sources(&mut s, "l2.self_attn.k_proj.weight", &[64, 16]);
        assert_eq!(
            s,
            [Source::Fused {
                key: "transformer.blocks.2.norm_attn_norm.attn.Wqkv.weight".into(),
                cut: Cut::Qkv(1)
            }]
        );
        let mut s = Vec::new();
        sources(&mut s, "l0.input_layernorm.weight", &[64]);
        sources(&mut s, "l0.moe.gate.weight", &[64, 4]);
        sources(&mut s, "embed_tokens.weight", &[100, 64]);
        // A linear weight although its module path says `norm`.
        sources(&mut s, "l0.self_attn.o_proj.weight", &[64, 64]);
        assert_eq!(
            s,
            [
                Source::Direct("transformer.blocks.0.norm_attn_norm.norm_1.weight".into()),
                Source::Transposed("transformer.blocks.0.ffn.router.layer.weight".into()),
                Source::Direct("transformer.wte.weight".into()),
                Source::Transposed(
                    "transformer.blocks.0.norm_attn_norm.attn.out_proj.weight".into()
                ),
            ]
        );
    }
}
