//! The useful floating-point operations of a graph: the work a perfect implementation could not
//! skip, counted the way the peers' `flops.py` counts it, so that a run's time can be quoted as a
//! share of the GPU's peak.
//!
//! Counted: every `matmul` and `batch_matmul` (2 m n k on global shapes: a product split over
//! ranks is counted once), attention's two products over the (query, key) pairs its mask keeps,
//! and the expert FFNs over the routed (token, choice) pairs only (a capacity buffer's padding is
//! not useful work). Elementwise ops, norms, softmax, routing and data movement count nothing.

use moe_ir::{AttentionAttrs, Graph, Mask, Op, Scope};
use std::collections::BTreeMap;

/// Useful FLOPs of one forward pass (one micro-batch) of `g`.
pub fn useful_flops(g: &Graph) -> f64 {
    useful_flops_by_op(g).values().sum()
}

/// Useful FLOPs of one forward pass (one micro-batch) of `g` per op kind ([`Op::name`]), for
/// ops that do any: what a profile divides by each op's time for its achieved rate.
pub fn useful_flops_by_op(g: &Graph) -> BTreeMap<&'static str, f64> {
    // Routed (token, choice) pairs per scope: T * k of every router.
    let mut pairs: BTreeMap<Scope, f64> = BTreeMap::new();
    for (_, n) in g.nodes() {
        if let Op::Router(a) = &n.op {
            let t = n.outputs.first().map_or(0.0, |t| t.shape[0] as f64);
            *pairs.entry(n.scope).or_default() += t * a.k as f64;
        }
    }
    let dims = |n: &moe_ir::Node, i: usize| -> Vec<f64> {
        n.inputs
            .get(i)
            .and_then(|&v| g.value_type(v))
            .map(|t| t.shape.iter().map(|&d| d as f64).collect())
            .unwrap_or_default()
    };
    let mut by_op: BTreeMap<&'static str, f64> = BTreeMap::new();
    for (_, n) in g.nodes() {
        let flops = match &n.op {
            Op::Matmul | Op::BatchMatmul => {
                let out: f64 = n
                    .outputs
                    .first()
                    .map_or(0.0, |t| t.shape.iter().map(|&d| d as f64).product());
                let k = dims(n, 0).last().copied().unwrap_or(0.0);
                2.0 * out * k
            }
            Op::Attention(a) => {
                let rows = dims(n, 0).first().copied().unwrap_or(0.0);
                attention_flops(a, rows)
            }
            Op::ExpertFfn { gated, .. } => {
                // Weights: up [E, H, F] (input 1 or 2 in the grouped layout).
                let up = n
                    .inputs
                    .iter()
                    .skip(1)
                    .filter_map(|&v| g.value_type(v))
                    .find(|t| t.rank() == 3)
                    .map(|t| (t.shape[1] as f64, t.shape[2] as f64));
                let (h, f) = up.unwrap_or((0.0, 0.0));
                let rows = pairs.get(&n.scope).copied().unwrap_or(0.0);
                let mats = if *gated { 3.0 } else { 2.0 };
                2.0 * rows * h * f * mats
            }
            Op::Input(_)
            | Op::Weight(_)
            | Op::Zeros(_)
            | Op::Embedding
            | Op::Transpose
            | Op::Scale { .. }
            | Op::Add
            | Op::Mul
            | Op::Gelu
            | Op::Silu
            | Op::Relu
            | Op::Sigmoid
            | Op::Swiglu
            | Op::Softmax
            | Op::RmsNorm { .. }
            | Op::LayerNorm { .. }
            | Op::Router(_)
            | Op::Dispatch { .. }
            | Op::Combine { .. }
            | Op::LocalRoutes { .. }
            | Op::IndexSelect
            | Op::IndexAdd { .. }
            | Op::AllToAll { .. }
            | Op::AllReduce { .. }
            | Op::AllGather { .. }
            | Op::ReduceScatter { .. }
            | Op::Shard { .. }
            | Op::Send { .. }
            | Op::Recv { .. } => 0.0,
        };
        if flops > 0.0 {
            *by_op.entry(n.op.name()).or_default() += flops;
        }
    }
    by_op
}

/// The (query, key) pairs one sequence's head sees under `a`'s mask.
fn visible_pairs(a: &AttentionAttrs) -> f64 {
    let (s, kv) = (a.seq, a.kv_seq);
    (0..s)
        .map(|i| match a.mask {
            Mask::Full => kv,
            Mask::Causal => (i + 1).min(kv),
            Mask::Sliding(w) => (i + 1).min(w).min(kv),
            Mask::Chunked(c) => (i % c.max(1) + 1).min(kv),
        })
        .sum::<u64>() as f64
}

/// QK^T and PV over the visible pairs, every head of the `rows / seq` sequences.
fn attention_flops(a: &AttentionAttrs, rows: f64) -> f64 {
    let seqs = rows / a.seq.max(1) as f64;
    let per_pair = (a.head_dim + a.v_head_dim) as f64;
    2.0 * seqs * a.heads as f64 * visible_pairs(a) * per_pair
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn causal_pairs_are_the_lower_triangle_and_windows_cut_them() {
        let mut a: AttentionAttrs = serde_json::from_str(
            r#"{"heads": 2, "kv_heads": 2, "head_dim": 4, "v_head_dim": 4, "seq": 4, "kv_seq": 4, "mask": "causal"}"#,
        )
        .unwrap();
        assert_eq!(visible_pairs(&a), 10.0);
        a.mask = Mask::Full;
        assert_eq!(visible_pairs(&a), 16.0);
        a.mask = Mask::Sliding(2);
        assert_eq!(visible_pairs(&a), 7.0);
        a.mask = Mask::Chunked(2);
        assert_eq!(visible_pairs(&a), 6.0);
        // Two sequences of 4, 2 heads, q/k and v dims 4 + 4: 2 * 2 * 2 * 6 * 8.
        assert_eq!(attention_flops(&a, 8.0), 2.0 * 2.0 * 2.0 * 6.0 * 8.0);
    }

    #[test]
    fn a_moe_layer_counts_routed_rows_not_capacity() {
        // examples/moe-layer.json: x [64, 32], gate [32, 8], top-2 of 8 experts with capacity
        // 16 per rank (a padded buffer of 8 x 64 slots), ungated experts 32 -> 64 -> 32.
        let g = moe_ir::json::from_json(include_str!("../../examples/moe-layer.json")).unwrap();
        let gate = 2.0 * 64.0 * 32.0 * 8.0;
        let experts = 2.0 * (64.0 * 2.0) * 32.0 * 64.0 * 2.0;
        assert_eq!(useful_flops(&g), gate + experts);
        let by_op = useful_flops_by_op(&g);
        assert_eq!(by_op.get("matmul"), Some(&gate));
        assert_eq!(by_op.get("expert_ffn"), Some(&experts));
        assert_eq!(by_op.len(), 2, "{by_op:?}");
    }
}
