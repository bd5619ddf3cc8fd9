//! A run's peak host memory on the CPU, estimated from the graph before anything is allocated
//! (what `run` and `verify` check against the memory available).
//!
//! The executor holds, on the CPU: every weight once (ranks holding the same block share one
//! tensor, so a replicated weight is held once and a split one once in all), plus one global copy
//! of the largest weight while a checkpoint is cut into blocks; per micro-batch, every rank's local
//! value of each node from the node until its last use (graph outputs to the end of the run, for
//! every micro-batch); and inside the largest op its temporaries (attention's score matrices, an
//! expert FFN's hidden activations). Values are `f32` or `f64` as computed, whatever the declared
//! dtype; integers are `i64` on the host. A pipelined graph may have one micro-batch in flight per
//! stage. The estimate leaves out the allocator's slack and the program itself.

use crate::rank::local_shape;
use crate::run::Precision;
use moe_ir::{FfnLayout, Graph, Op};

/// Peak host memory of a run, in bytes, by part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Weights and zeros, held for the whole run.
    pub weights: u64,
    /// The largest weight's global copy while a checkpoint is read.
    pub load: u64,
    /// Values of the nodes live at once (all ranks, micro-batches in flight, graph outputs).
    pub values: u64,
    /// The largest op's temporaries (all ranks).
    pub workspace: u64,
}

impl MemoryEstimate {
    /// The peak, all parts together.
    pub fn total(&self) -> u64 {
        self.weights
            .saturating_add(self.load)
            .saturating_add(self.values)
            .saturating_add(self.workspace)
    }
}

/// Bytes of `n` elements of a float (`float`) or integer value computed in `p`.
fn bytes(n: u64, float: bool, p: Precision) -> u64 {
    let size = match (float, p) {
        (false, _) | (true, Precision::F64) => 8,
        (true, Precision::F32 | Precision::Bf16) => 4,
    };
    n.saturating_mul(size)
}

fn product(shape: &[usize]) -> u64 {
    shape.iter().fold(1u64, |a, &d| a.saturating_mul(d as u64))
}

/// The estimate for a run of `g` of `micro_batches` micro-batches in precision `p` on the CPU.
pub fn estimate(g: &Graph, p: Precision, micro_batches: u32) -> MemoryEstimate {
    let mesh = &g.mesh;
    let ranks = mesh.ranks();
    let stages = g
        .pipeline
        .as_ref()
        .and_then(|s| mesh.axis(&s.axis))
        .map_or(1, |a| u64::from(a.size));
    let in_flight = u64::from(micro_batches).clamp(1, stages);
    let mut est = MemoryEstimate::default();
    // Uses left of each value of one micro-batch; bytes of each value (all ranks).
    let mut uses = vec![Vec::new(); g.len()];
    let mut size = vec![Vec::new(); g.len()];
    for (id, n) in g.nodes() {
        uses[id.index()] = vec![0usize; n.outputs.len()];
        size[id.index()] = n
            .outputs
            .iter()
            .map(|t| {
                let local = bytes(product(&local_shape(t, mesh)), t.dtype.is_float(), p);
                local.saturating_mul(ranks)
            })
            .collect();
    }
    for (_, n) in g.nodes() {
        for v in &n.inputs {
            uses[v.node.index()][v.output as usize] += 1;
        }
    }
    let outputs: u64 = g
        .outputs
        .iter()
        .map(|o| size[o.value.node.index()][o.value.output as usize])
        .fold(0, u64::saturating_add);
    let (mut live, mut peak) = (0u64, 0u64);
    for (id, n) in g.nodes() {
        if matches!(n.op, Op::Weight(_) | Op::Zeros(_)) {
            let t = &n.outputs[0];
            let global = bytes(t.numel(), t.dtype.is_float(), p);
            est.weights = est.weights.saturating_add(global);
            est.load = est.load.max(global);
            continue;
        }
        live = live.saturating_add(size[id.index()].iter().fold(0, |a, &b| a.saturating_add(b)));
        peak = peak.max(live);
        est.workspace = est.workspace.max(workspace(g, id, p).saturating_mul(ranks));
        for v in &n.inputs {
            let (i, k) = (v.node.index(), v.output as usize);
            uses[i][k] -= 1;
            let leaf = matches!(g.node(v.node).op, Op::Weight(_) | Op::Zeros(_));
            if uses[i][k] == 0 && !leaf {
                live = live.saturating_sub(size[i][k]);
            }
        }
    }
    est.values = peak
        .saturating_mul(in_flight)
        .saturating_add(outputs.saturating_mul(u64::from(micro_batches)));
    est
}

/// One rank's temporaries inside node `id`, beyond its inputs and outputs.
fn workspace(g: &Graph, id: moe_ir::NodeId, p: Precision) -> u64 {
    let n = g.node(id);
    let local = |i: usize| {
        n.inputs
            .get(i)
            .and_then(|&v| g.value_type(v))
            .map_or(Vec::new(), |t| local_shape(t, &g.mesh))
    };
    match &n.op {
        Op::Attention(a) => {
            // Scores, probabilities and the mask, [batch, local heads, seq, kv_seq]; q, k, v
            // split into heads and rotated.
            let q = local(0);
            let heads = q.get(1).map_or(0, |w| *w as u64 / a.head_dim.max(1));
            let rows = q.first().map_or(0, |r| *r as u64);
            let batch = rows / a.seq.max(1);
            let scores = batch
                .saturating_mul(heads)
                .saturating_mul(a.seq)
                .saturating_mul(a.kv_seq);
            let qkv = product(&q)
                .saturating_mul(2)
                .saturating_add(product(&local(1)) * 3);
            bytes(scores.saturating_mul(3).saturating_add(qkv), true, p)
        }
        Op::ExpertFfn { layout, gated, .. } => {
            // The hidden activations [rows, F] (up, gate, their product).
            let x = local(0);
            let rows: u64 = match layout {
                FfnLayout::Padded => product(&x[..x.len().saturating_sub(1)]),
                FfnLayout::Grouped => x.first().map_or(0, |r| *r as u64),
            };
            let up = local(if *layout == FfnLayout::Grouped { 2 } else { 1 });
            let f = up.last().map_or(0, |f| *f as u64);
            let parts = if *gated { 3 } else { 2 };
            bytes(rows.saturating_mul(f).saturating_mul(parts), true, p)
        }
        _ => 0,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{run, RunOptions, Weights};

    fn mixtral(sets: &[&str]) -> Graph {
        let cfg = include_str!("../../examples/hf/mixtral-8x7b.json");
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let opts = moe_ir::hf::ImportOptions {
            mesh: Some(moe_ir::Mesh::parse("ep=2", 8).unwrap()),
            seq: 16,
            micro_batch: 1,
            dtype: moe_ir::DType::Bf16,
            gpus_per_node: 8,
        };
        moe_ir::hf::import(cfg, &sets, &opts).unwrap()
    }

    #[test]
    fn full_size_weights_are_counted_in_f32() {
        let g = mixtral(&[]);
        let e = estimate(&g, Precision::F32, 1);
        // 46.7B parameters, 4 bytes each computed in f32 (bf16 declared).
        assert!(
            (e.weights as f64 - 4.0 * 46.70e9).abs() < 0.01 * 4.0 * 46.7e9,
            "{e:?}"
        );
        assert!(e.total() > e.weights);
        assert_eq!(estimate(&g, Precision::F64, 1).weights, 2 * e.weights);
    }

    #[test]
    fn small_models_are_small_and_run() {
        let g = mixtral(&[
            "num_hidden_layers=2",
            "hidden_size=64",
            "intermediate_size=64",
            "num_attention_heads=4",
            "num_key_value_heads=2",
            "vocab_size=128",
        ]);
        let e = estimate(&g, Precision::F32, 2);
        assert!(e.total() < 4 << 20, "{e:?}");
        assert!(e.values > 0 && e.workspace > 0, "{e:?}");
        assert!(run(&g, &Weights::Seeded, &RunOptions::default()).is_ok());
    }
}
