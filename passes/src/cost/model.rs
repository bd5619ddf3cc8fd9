//! Per-op cost: what one op costs one rank per forward step, and how full its outputs are.
//!
//! [`CostModel`] is the interface extraction uses (other compilers may implement their own);
//! [`Roofline`] is moe-opt's model. It prices every op on the **local** shapes one rank holds
//! ([`TensorType::local_shape`]):
//! - compute ops take `max(flops / peak, hbm_bytes / hbm_bandwidth)` (a roofline): `matmul`,
//!   `batch_matmul`, `attention` and `expert_ffn` count FLOPs; every other local op is memory-bound
//!   (bytes read plus bytes written);
//! - collectives are priced by [`collective::time`] on the links of their axis's level
//!   ([`moe_ir::Level`]), with `bytes` = the local input one rank holds;
//! - leaves (`input`, `weight`) are free; `zeros` writes its local bytes; `shard` copies its local
//!   output (no communication);
//! - `send` and `recv` are point-to-point transfers of the value's local bytes ([`Kind::SendRecv`])
//!   over the level of the mesh's outermost axis (the pipeline axis `pp` of a partitioned graph;
//!   inter-node when the mesh has no axis). Each side is charged the transfer, as each rank is busy
//!   for it.
//!
//! ## Fill: expected occupancy of data-dependent buffers
//! `local_routes` returns buffers of a static row bound `R` (see [`moe_ir::local_route_rows`]), but
//! only the pairs routed to the rank's experts are valid: with balanced routing a rank expects
//! `T * k * E_local / E` of them (capped by `c * E_local * token_groups` with `{slots: c}`), so its
//! `fill` is that over `R`. Fill flows to `index_select(x, ids)` (the fill of `ids`) and to a grouped
//! `expert_ffn` (the fill of its `x`); every other output has fill 1. A grouped `expert_ffn` reads
//! its `counts` and computes only valid rows, `index_select` / `index_add` move only valid rows: those
//! are priced at their fill. Padded ops (`dispatch`, `combine`, padded `expert_ffn`) and collectives
//! (`all_to_all` included) are priced on the **full** buffer: their shapes are fixed, so a padded
//! expert computes every slot and the IR's `all_to_all` moves the whole buffer, empty slots too.

use super::collective::{self, Kind};
use super::Cluster;
use moe_ir::{Capacity, FfnLayout, Level, Mask, Mesh, Op, TensorType};

/// The cost of one op on one rank, with the figures behind it (for explanations).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpCost {
    /// Floating-point operations one rank performs.
    pub flops: f64,
    /// Bytes one rank reads and writes in its memory (HBM).
    pub hbm_bytes: f64,
    /// Bytes one rank hands to a collective or a send/recv (its local input).
    pub comm_bytes: f64,
    /// Seconds per forward step on one rank.
    pub seconds: f64,
}

/// A model of what ops cost. Extraction ([`crate::extract::DagExtractor`]) sums
/// [`CostModel::op_time`] over the e-classes a program uses.
///
/// Arguments are the op, its input types (global types; use [`TensorType::local_shape`] for what a
/// rank holds), the expected fill of each input (`0..=1`, see the [module docs](self)), its output
/// types, and the mesh. Implementations must return a finite, non-negative number for well-typed
/// ops and must not panic.
pub trait CostModel {
    /// Seconds one rank spends on `op` per forward step.
    fn op_time(
        &self,
        op: &Op,
        inputs: &[&TensorType],
        input_fill: &[f64],
        outputs: &[TensorType],
        mesh: &Mesh,
    ) -> f64;

    /// The cost with its figures. The default knows only the time.
    fn op_cost(
        &self,
        op: &Op,
        inputs: &[&TensorType],
        input_fill: &[f64],
        outputs: &[TensorType],
        mesh: &Mesh,
    ) -> OpCost {
        OpCost {
            seconds: self.op_time(op, inputs, input_fill, outputs, mesh),
            ..OpCost::default()
        }
    }

    /// The expected fill of each output of `op` (one entry per output). The default is
    /// [`output_fill`].
    fn output_fill(
        &self,
        op: &Op,
        inputs: &[&TensorType],
        input_fill: &[f64],
        outputs: &[TensorType],
        mesh: &Mesh,
    ) -> Vec<f64> {
        output_fill(op, inputs, input_fill, outputs, mesh)
    }
}

/// The expected fill of each output of `op`: `local_routes` outputs 0 and 1 get the expected share
/// of valid rows, `index_select` passes on the fill of its ids, a grouped `expert_ffn` the fill of
/// its rows; everything else is full (1).
pub fn output_fill(
    op: &Op,
    inputs: &[&TensorType],
    input_fill: &[f64],
    outputs: &[TensorType],
    mesh: &Mesh,
) -> Vec<f64> {
    output_fill_skewed(op, inputs, input_fill, outputs, mesh, 1.0)
}

/// [`output_fill`] under imbalanced routing: one of a rank's experts (the hottest) gets `skew`
/// times its balanced share of the routed pairs (at most every token), the others their share;
/// the rank holding it sets the step's time, so `local_routes` is priced for that rank. `skew`
/// below 1 counts as 1 (balanced).
pub fn output_fill_skewed(
    op: &Op,
    inputs: &[&TensorType],
    input_fill: &[f64],
    outputs: &[TensorType],
    mesh: &Mesh,
    skew: f64,
) -> Vec<f64> {
    let mut out = vec![1.0; outputs.len()];
    let fill_of = |i: usize| input_fill.get(i).copied().unwrap_or(1.0).clamp(0.0, 1.0);
    match op {
        Op::LocalRoutes {
            experts,
            axis,
            capacity,
            token_groups,
        } => {
            let (Some(idx), Some(ids)) = (inputs.first(), outputs.first()) else {
                return out;
            };
            let local = idx.local_shape(mesh);
            let (t, k) = (
                local.first().copied().unwrap_or(0),
                local.get(1).copied().unwrap_or(0),
            );
            let n = mesh.size_of(axis).max(1);
            let e_local = experts / n;
            let share = t as f64 * k as f64 / (*experts).max(1) as f64;
            let hot = (share * skew.max(1.0)).min(t as f64);
            let mut expected = if e_local == 0 {
                0.0
            } else {
                hot + share * (e_local - 1) as f64
            };
            if let Capacity::Slots(c) = capacity {
                expected = expected.min(*c as f64 * e_local as f64 * *token_groups as f64);
            }
            let rows = ids.local_shape(mesh).first().copied().unwrap_or(0);
            let f = if rows == 0 {
                1.0
            } else {
                (expected / rows as f64).clamp(0.0, 1.0)
            };
            for o in out.iter_mut().take(2) {
                *o = f;
            }
        }
        Op::IndexSelect => {
            if let Some(o) = out.first_mut() {
                *o = fill_of(1);
            }
        }
        Op::ExpertFfn {
            layout: FfnLayout::Grouped,
            ..
        } => {
            if let Some(o) = out.first_mut() {
                *o = fill_of(0);
            }
        }
        // Fixed-shape results: every row is valid. Listed so that a new op must say which it is.
        Op::ExpertFfn {
            layout: FfnLayout::Padded,
            ..
        }
        | moe_ir::leaf_ops!()
        | moe_ir::pointwise_ops!()
        | moe_ir::collective_ops!()
        | moe_ir::transfer_ops!()
        | Op::Embedding
        | Op::Matmul
        | Op::Transpose
        | Op::BatchMatmul
        | Op::Softmax
        | Op::RmsNorm { .. }
        | Op::LayerNorm { .. }
        | Op::Attention(_)
        | Op::Router(_)
        | Op::Dispatch { .. }
        | Op::Combine { .. }
        | Op::IndexAdd { .. }
        | Op::Shard { .. } => {}
    }
    out
}

/// The roofline model on a [`Cluster`] (see the [module docs](self)).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Roofline {
    pub cluster: Cluster,
}

impl Roofline {
    /// The model on `cluster`.
    pub fn new(cluster: Cluster) -> Roofline {
        Roofline { cluster }
    }

    /// `cost` re-timed with the cluster's cost profile's rate for the op's class, if it has one.
    fn profiled(&self, op: &Op, cost: OpCost) -> OpCost {
        let seconds = self
            .cluster
            .profile
            .as_ref()
            .zip(super::profile::class_of(op))
            .and_then(|(p, class)| p.seconds(class, cost.flops, cost.hbm_bytes));
        match seconds {
            Some(seconds) => OpCost { seconds, ..cost },
            None => cost,
        }
    }

    fn compute(&self, flops: f64, hbm_bytes: f64) -> OpCost {
        let peak = self.cluster.gpu.bf16_tflops * 1e12;
        let bw = self.cluster.gpu.hbm_gbps * 1e9;
        OpCost {
            flops,
            hbm_bytes,
            comm_bytes: 0.0,
            seconds: (flops / peak).max(hbm_bytes / bw),
        }
    }

    fn collective(&self, kind: Kind, axis: &str, bytes: f64, mesh: &Mesh) -> OpCost {
        let (n, level) = match mesh.axis(axis) {
            Some(a) => (u64::from(a.size), a.level),
            None => (1, Level::IntraNode),
        };
        OpCost {
            comm_bytes: bytes,
            seconds: collective::time(&self.cluster, kind, n, level, bytes as u64),
            ..OpCost::default()
        }
    }

    /// A point-to-point transfer between pipeline stages, over the level of the mesh's outermost
    /// axis (the pipeline axis of a partitioned graph).
    fn send_recv(&self, bytes: f64, mesh: &Mesh) -> OpCost {
        let level = mesh.axes.first().map_or(Level::InterNode, |a| a.level);
        OpCost {
            comm_bytes: bytes,
            seconds: collective::time(&self.cluster, Kind::SendRecv, 2, level, bytes as u64),
            ..OpCost::default()
        }
    }
}

/// Local bytes of a type, as `f64`.
fn bytes(t: &TensorType, mesh: &Mesh) -> f64 {
    t.local_bytes(mesh) as f64
}

fn dim(shape: &[u64], d: usize) -> f64 {
    shape.get(d).copied().unwrap_or(0) as f64
}

/// Mean number of keys a query sees, for `seq` queries aligned to the end of `kv_seq` keys.
pub fn mean_keys(mask: Mask, seq: u64, kv_seq: u64) -> f64 {
    if seq == 0 {
        return 0.0;
    }
    let off = kv_seq.saturating_sub(seq);
    // Query i (0-based) sees keys up to position off + i: `off + i + 1` keys causally.
    let (a, b) = (off + 1, off + seq); // the causal counts, a ..= b
    let tri = |lo: u64, hi: u64| -> f64 {
        // sum of lo..=hi
        if hi < lo {
            0.0
        } else {
            (lo + hi) as f64 * (hi - lo + 1) as f64 / 2.0
        }
    };
    let sum = match mask {
        Mask::Full => return kv_seq as f64,
        Mask::Causal => tri(a, b),
        Mask::Sliding(w) => {
            if w >= b {
                tri(a, b)
            } else if w < a {
                seq as f64 * w as f64
            } else {
                tri(a, w) + (b - w) as f64 * w as f64
            }
        }
        Mask::Chunked(c) => {
            let c = c.max(1);
            // Position p sees (p mod c) + 1 keys; S(n) = sum over p < n.
            let s = |n: u64| -> f64 {
                let (q, r) = (n / c, n % c);
                q as f64 * tri(1, c) + tri(1, r)
            };
            s(off + seq) - s(off)
        }
    };
    sum / seq as f64
}

impl CostModel for Roofline {
    /// [`output_fill_skewed`] with the cluster's `skew` (`--skew`).
    fn output_fill(
        &self,
        op: &Op,
        inputs: &[&TensorType],
        input_fill: &[f64],
        outputs: &[TensorType],
        mesh: &Mesh,
    ) -> Vec<f64> {
        output_fill_skewed(op, inputs, input_fill, outputs, mesh, self.cluster.skew)
    }

    fn op_time(
        &self,
        op: &Op,
        inputs: &[&TensorType],
        input_fill: &[f64],
        outputs: &[TensorType],
        mesh: &Mesh,
    ) -> f64 {
        self.op_cost(op, inputs, input_fill, outputs, mesh).seconds
    }

    fn op_cost(
        &self,
        op: &Op,
        inputs: &[&TensorType],
        input_fill: &[f64],
        outputs: &[TensorType],
        mesh: &Mesh,
    ) -> OpCost {
        let fill = |i: usize| input_fill.get(i).copied().unwrap_or(1.0).clamp(0.0, 1.0);
        let in_bytes = |i: usize| inputs.get(i).map_or(0.0, |t| bytes(t, mesh));
        let all_in: f64 = inputs.iter().map(|t| bytes(t, mesh)).sum();
        let all_out: f64 = outputs.iter().map(|t| bytes(t, mesh)).sum();
        let local = |i: usize| inputs.get(i).map_or_else(Vec::new, |t| t.local_shape(mesh));
        let cost = match op {
            Op::Input(_) | Op::Weight(_) => OpCost::default(),
            Op::Zeros(_) => self.compute(0.0, all_out),
            Op::Shard { .. } => self.compute(0.0, 2.0 * all_out),
            Op::Send { .. } => self.send_recv(in_bytes(0), mesh),
            Op::Recv { .. } => self.send_recv(all_out, mesh),
            Op::AllReduce { axis } => self.collective(Kind::AllReduce, axis, in_bytes(0), mesh),
            Op::AllGather { axis, .. } => self.collective(Kind::AllGather, axis, in_bytes(0), mesh),
            Op::ReduceScatter { axis, .. } => {
                self.collective(Kind::ReduceScatter, axis, in_bytes(0), mesh)
            }
            Op::AllToAll { axis, .. } => self.collective(Kind::AllToAll, axis, in_bytes(0), mesh),
            Op::Matmul => {
                let (a, b) = (local(0), local(1));
                let k = dim(&a, a.len().saturating_sub(1));
                let m: f64 = a[..a.len().saturating_sub(1)]
                    .iter()
                    .map(|&x| x as f64)
                    .product();
                let n = dim(&b, 1);
                self.compute(2.0 * m * k * n, all_in + all_out)
            }
            Op::BatchMatmul => {
                let (a, b) = (local(0), local(1));
                let flops = 2.0 * dim(&a, 0) * dim(&a, 1) * dim(&a, 2) * dim(&b, 2);
                self.compute(flops, all_in + all_out)
            }
            Op::Attention(at) => {
                let q = local(0);
                let q_global = inputs
                    .first()
                    .map_or(0, |t| t.shape.get(1).copied().unwrap_or(0));
                let heads_local = if q_global == 0 {
                    0.0
                } else {
                    at.heads as f64 * dim(&q, 1) / q_global as f64
                };
                let tokens = dim(&q, 0);
                let keys = mean_keys(at.mask, at.seq, at.kv_seq);
                let flops =
                    2.0 * tokens * keys * heads_local * (at.head_dim + at.v_head_dim) as f64;
                self.compute(flops, all_in + all_out)
            }
            Op::ExpertFfn { layout, gated, .. } => {
                let grouped = *layout == FfnLayout::Grouped;
                let up = if grouped { 2 } else { 1 };
                let w = local(up);
                let (h, f) = (dim(&w, 1), dim(&w, 2));
                let x = local(0);
                // Padded: the whole fixed buffer E_local * C; grouped: the expected valid rows.
                let (rows, share) = if grouped {
                    (dim(&x, 0) * fill(0), fill(0))
                } else {
                    (
                        x.iter()
                            .take(x.len().saturating_sub(1))
                            .map(|&v| v as f64)
                            .product(),
                        1.0,
                    )
                };
                let matmuls = if *gated { 3.0 } else { 2.0 };
                let flops = rows * h * f * 2.0 * matmuls;
                let weights: f64 = (up..inputs.len()).map(in_bytes).sum();
                let counts = if grouped { in_bytes(1) } else { 0.0 };
                let hbm = weights + counts + share * (in_bytes(0) + all_out);
                self.compute(flops, hbm)
            }
            Op::IndexSelect => {
                // Reads the ids, gathers the valid rows, writes them.
                self.compute(0.0, in_bytes(1) + 2.0 * fill(1) * all_out)
            }
            Op::IndexAdd { .. } => {
                // In place: reads ids, scale and the valid source rows, read-modify-writes their rows.
                let f = fill(1).min(fill(2));
                let scale = in_bytes(3);
                self.compute(0.0, f * (in_bytes(1) + scale + 3.0 * in_bytes(2)))
            }
            Op::Embedding => self.compute(0.0, in_bytes(0) + 2.0 * all_out),
            // Memory-bound: everything read and written. Listed one by one so that a new op is a
            // compile error here until it is priced.
            moe_ir::pointwise_ops!()
            | Op::Transpose
            | Op::Softmax
            | Op::RmsNorm { .. }
            | Op::LayerNorm { .. }
            | Op::Router(_)
            | Op::Dispatch { .. }
            | Op::Combine { .. }
            | Op::LocalRoutes { .. } => self.compute(0.0, all_in + all_out),
        };
        self.profiled(op, cost)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use moe_ir::{infer, Activation, DType};

    fn time(m: &Roofline, op: &Op, inputs: &[&TensorType], fill: &[f64], mesh: &Mesh) -> f64 {
        let out = infer(op, inputs, mesh).unwrap();
        m.op_time(op, inputs, fill, &out, mesh)
    }

    #[test]
    fn skew_prices_the_rank_with_the_hottest_expert() {
        // 8 experts on tp=4 (2 per rank), top-2 over 1024 replicated tokens.
        let mesh = Mesh::parse("tp=4", 8).unwrap();
        let idx = TensorType::new(DType::I32, [1024, 2]);
        let w = TensorType::new(DType::F32, [1024, 2]);
        let op = Op::LocalRoutes {
            experts: 8,
            axis: "tp".into(),
            capacity: Capacity::Dropless,
            token_groups: 1,
        };
        let out = infer(&op, &[&idx, &w], &mesh).unwrap();
        let rows = out[0].local_shape(&mesh)[0] as f64;
        let fill = |skew| output_fill_skewed(&op, &[&idx, &w], &[1.0, 1.0], &out, &mesh, skew)[0];
        // Balanced: 1024 * 2 * 2 / 8 = 512 pairs; the hottest at 2x its 256: 768.
        assert!((fill(1.0) * rows - 512.0).abs() < 1e-9);
        assert!((fill(2.0) * rows - 768.0).abs() < 1e-9);
        // One expert never gets more than every token: 1024 + 256.
        assert!((fill(100.0) * rows - (1024.0f64 + 256.0).min(rows)).abs() < 1e-9);
        assert_eq!(fill(0.5), fill(1.0));
        assert_eq!(
            output_fill(&op, &[&idx, &w], &[1.0, 1.0], &out, &mesh),
            vec![fill(1.0), fill(1.0), 1.0]
        );
    }

    #[test]
    fn matmul_is_2mnk_over_peak() {
        let m = Roofline::default();
        let mesh = Mesh::single();
        let a = TensorType::new(DType::Bf16, [8192, 8192]);
        let t = time(&m, &Op::Matmul, &[&a, &a], &[1.0, 1.0], &mesh);
        let want = 2.0 * 8192f64.powi(3) / 675e12;
        assert!((t - want).abs() / want < 1e-9, "{t} vs {want}");
        // Split K: each rank does its share.
        let mesh = Mesh::parse("tp=4", 8).unwrap();
        let a4 = a.clone().with_split(1, &["tp"]);
        let b4 = a.clone().with_split(0, &["tp"]);
        let t4 = time(&m, &Op::Matmul, &[&a4, &b4], &[1.0, 1.0], &mesh);
        assert!((t4 * 4.0 - want).abs() / want < 1e-9);
    }

    #[test]
    fn nvlink_all_reduce_matches_the_measurement() {
        // FACTS.md: 134 MB bf16 over 4 H200s, 0.69 ms.
        let m = Roofline::default();
        let mesh = Mesh::parse("tp=4", 8).unwrap();
        let x = TensorType::new(DType::Bf16, [16384, 4096]).with_partial(&["tp"]);
        let op = Op::AllReduce { axis: "tp".into() };
        let c = m.op_cost(
            &op,
            &[&x],
            &[1.0],
            &infer(&op, &[&x], &mesh).unwrap(),
            &mesh,
        );
        assert_eq!(c.comm_bytes, 134_217_728.0);
        assert!((0.65e-3..0.75e-3).contains(&c.seconds), "{}", c.seconds);
    }

    fn grouped_ffn(fill: f64) -> f64 {
        let m = Roofline::default();
        let mesh = Mesh::parse("tp=4", 8).unwrap();
        let x = TensorType::new(DType::Bf16, [4 * 16384, 4096]).with_split(0, &["tp"]);
        let counts = TensorType::new(DType::I32, [8]).with_split(0, &["tp"]);
        let wu = TensorType::new(DType::Bf16, [8, 4096, 16384]).with_split(0, &["tp"]);
        let wd = TensorType::new(DType::Bf16, [8, 16384, 4096]).with_split(0, &["tp"]);
        let op = Op::ExpertFfn {
            layout: FfnLayout::Grouped,
            act: Activation::Silu,
            gated: true,
            bias: false,
        };
        time(
            &m,
            &op,
            &[&x, &counts, &wu, &wu, &wd],
            &[fill, 1.0, 1.0, 1.0, 1.0],
            &mesh,
        )
    }

    #[test]
    fn grouped_experts_cost_their_fill() {
        let full = grouped_ffn(1.0);
        let quarter = grouped_ffn(0.25);
        // 16384 rows x 2 experts ... compute-bound: FLOPs scale with the valid rows.
        assert!(
            (quarter * 4.0 - full).abs() / full < 1e-9,
            "{quarter} vs {full}"
        );
        let want = 16384.0 * 4096.0 * 16384.0 * 2.0 * 3.0 / 675e12;
        assert!((full - want).abs() / want < 1e-9, "{full} vs {want}");
    }

    #[test]
    fn network_all_to_all_costs_far_more_than_nvlink() {
        let m = Roofline::default();
        let x = TensorType::new(DType::Bf16, [8, 8 * 1024, 4096]).with_split(1, &["ep"]);
        let op = Op::AllToAll {
            axis: "ep".into(),
            split_dim: 0,
            concat_dim: 1,
        };
        let intra = Mesh::parse("ep=8:intra", 8).unwrap();
        let inter = Mesh::parse("ep=8:inter", 8).unwrap();
        let a = time(&m, &op, &[&x], &[1.0], &intra);
        let b = time(&m, &op, &[&x], &[1.0], &inter);
        assert!(b >= 5.0 * a, "{b} vs {a}");
    }

    #[test]
    fn local_routes_fill_is_the_routed_share() {
        let mesh = Mesh::parse("tp=4", 8).unwrap();
        let idx = TensorType::new(DType::I32, [64, 2]);
        let w = TensorType::new(DType::F32, [64, 2]);
        let op = Op::LocalRoutes {
            experts: 8,
            axis: "tp".into(),
            capacity: Capacity::Dropless,
            token_groups: 1,
        };
        let out = infer(&op, &[&idx, &w], &mesh).unwrap();
        // R = 64 * min(2, 2) = 128 rows; expected 64 * 2 * 2/8 = 32.
        let f = output_fill(&op, &[&idx, &w], &[1.0, 1.0], &out, &mesh);
        assert_eq!(f, vec![0.25, 0.25, 1.0]);
        let op = Op::LocalRoutes {
            experts: 8,
            axis: "tp".into(),
            capacity: Capacity::Slots(2),
            token_groups: 4,
        };
        let out = infer(&op, &[&idx, &w], &mesh).unwrap();
        // R = min(128, 2 * 2 * 4) = 16; expected min(32, 16) = 16.
        let f = output_fill(&op, &[&idx, &w], &[1.0, 1.0], &out, &mesh);
        assert_eq!(f, vec![1.0, 1.0, 1.0]);
    }

    #[test]
    fn masks_limit_the_keys() {
        assert_eq!(mean_keys(Mask::Full, 4, 4), 4.0);
        assert_eq!(mean_keys(Mask::Causal, 4, 4), 2.5);
        // Sliding 2 over 4: 1, 2, 2, 2.
        assert_eq!(mean_keys(Mask::Sliding(2), 4, 4), 1.75);
        // Chunks of 2 over 5: 1, 2, 1, 2, 1.
        assert_eq!(mean_keys(Mask::Chunked(2), 5, 5), 7.0 / 5.0);
        // Sliding window wider than the sequence is causal.
        assert_eq!(mean_keys(Mask::Sliding(100), 4, 4), 2.5);
    }
}
