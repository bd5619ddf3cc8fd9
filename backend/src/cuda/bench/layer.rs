//! The layer benchmark: one MoE layer in three forms on the same inputs and weights.
//!
//! Every buffer is a burn-cuda buffer; every step is the CUDA path only (cuBLASLt, the NVRTC
//! kernels, NCCL), stream-ordered on one stream per GPU, driven by one host thread.
//! - dense: `y = all_reduce(gelu(x W1[:, F/W shard]) W2[F/W shard, :])`;
//! - PPMoE: every rank routes all N tokens (gate GEMM, top-k, stable counting sort), reads the
//!   per-expert counts back (one small copy and the step's only host wait), gathers its experts'
//!   tokens by index, runs one up and one down GEMM per local expert, combines into [N, H]
//!   (weighted, no atomics) and all-reduces;
//! - all-to-all: every rank routes its N/W tokens, fills a capacity-padded [E, C, H] dispatch
//!   buffer by gather, exchanges it (grouped send/recv), runs its experts on [W*C, H] each,
//!   exchanges back and combines. No host wait.
//!
//! With one GPU the collectives are identities and are skipped (NCCL itself is exercised by the
//! micro checks); with W GPUs they run through [`Collectives`].

use super::super::device::{Buf, Elem, Gpu, PinnedI32};
use super::super::error::{driver, CudaError, Result};
use super::super::gemm::{Epilogue, GemmShape};
use super::super::kernels::{sort_chunks, SortBuffers};
use super::super::libs;
use super::super::nccl::{CapacityLayout, Collectives};
use super::config::LayerConfig;
use super::rank::Rank;
use super::report::{Agreement, Form, FormResult, LayerReport};
use super::timing::time_steps;

/// Routing buffers of one set of tokens on one rank.
#[derive(Debug)]
struct Routing {
    tokens: usize,
    logits: Buf,
    expert: Buf,
    weight: Buf,
    counts: Buf,
    offsets: Buf,
    expert_off: Buf,
    sorted_token: Buf,
    entry_pos: Buf,
    slot: Buf,
}

impl Routing {
    fn new(r: &Rank, tokens: usize, cfg: &LayerConfig) -> Result<Self> {
        let entries = tokens * cfg.top_k;
        let counts = cfg.experts * sort_chunks(entries);
        Ok(Self {
            tokens,
            logits: r.alloc(Elem::Bf16, tokens * cfg.experts)?,
            expert: r.alloc(Elem::I32, entries)?,
            weight: r.alloc(Elem::F32, entries)?,
            counts: r.alloc(Elem::I32, counts)?,
            offsets: r.alloc(Elem::I32, counts + 1)?,
            expert_off: r.alloc(Elem::I32, cfg.experts + 1)?,
            sorted_token: r.alloc(Elem::I32, entries)?,
            entry_pos: r.alloc(Elem::I32, entries)?,
            slot: r.alloc(Elem::I32, entries)?,
        })
    }

    fn sort(&self) -> SortBuffers {
        SortBuffers {
            expert: self.expert.addr(),
            counts: self.counts.addr(),
            offsets: self.offsets.addr(),
            expert_off: self.expert_off.addr(),
            sorted_token: self.sorted_token.addr(),
            entry_pos: self.entry_pos.addr(),
        }
    }

    /// Gate GEMM, router, routing sort of the `tokens` rows at `x`.
    fn run(&self, r: &mut Rank, cfg: &LayerConfig, x: u64, gate: u64) -> Result<()> {
        let s = GemmShape::new(self.tokens, cfg.experts, cfg.hidden);
        r.gemm
            .matmul(s, Epilogue::None, x, gate, self.logits.addr())?;
        let k = cfg.top_k;
        r.k.route_topk(
            self.logits.addr(),
            self.tokens,
            cfg.experts,
            k,
            k > 1,
            self.expert.addr(),
            self.weight.addr(),
        )?;
        r.k.route_sort(&self.sort(), self.tokens * k, cfg.experts, k)
    }
}

/// One rank's buffers.
#[derive(Debug)]
struct State {
    x: Buf,
    gate: Buf,
    w1_dense: Buf,
    w2_dense: Buf,
    h_dense: Buf,
    y_dense: Buf,
    w1: Buf,
    w2: Buf,
    pp: Routing,
    xs: Buf,
    h: Buf,
    o: Buf,
    y: Buf,
    a2a: Routing,
    idx: Buf,
    dispatch: Buf,
    recv: Option<Buf>,
    out: Buf,
    back: Option<Buf>,
    y_a2a: Buf,
    host: PinnedI32,
    routed: cudarc::driver::CudaEvent,
}

/// Seeds of the random tensors, one per tensor kind.
fn seed(base: u64, tag: u64) -> u64 {
    base.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(tag)
}

impl State {
    fn new(r: &Rank, rank: usize, cfg: &LayerConfig) -> Result<Self> {
        let (n, h, f, e) = (cfg.tokens, cfg.hidden, cfg.ffn, cfg.experts);
        let (el, fl, k) = (cfg.local_experts(), cfg.local_ffn(), cfg.top_k);
        let slots = e * cfg.capacity();
        let (sh, sf) = (1.0 / (h as f32).sqrt(), 1.0 / (f as f32).sqrt());
        let s = cfg.seed;
        Ok(Self {
            x: r.random(n * h, seed(s, 1), 0, 1.0)?,
            gate: r.random(h * e, seed(s, 2), 0, sh)?,
            w1_dense: r.random(h * fl, seed(s, 3), rank * h * fl, sh)?,
            w2_dense: r.random(fl * h, seed(s, 4), rank * fl * h, sf)?,
            h_dense: r.alloc(Elem::Bf16, n * fl)?,
            y_dense: r.alloc(Elem::Bf16, n * h)?,
            // Expert e's weights get the same values whichever rank holds them.
            w1: r.random(el * h * f, seed(s, 5), rank * el * h * f, sh)?,
            w2: r.random(el * f * h, seed(s, 6), rank * el * f * h, sf)?,
            pp: Routing::new(r, n, cfg)?,
            xs: r.alloc(Elem::Bf16, n * k * h)?,
            h: r.alloc(Elem::Bf16, cfg.activation_rows() * f)?,
            o: r.alloc(Elem::Bf16, n * k * h)?,
            y: r.alloc(Elem::Bf16, n * h)?,
            a2a: Routing::new(r, cfg.tokens_per_rank(), cfg)?,
            idx: r.alloc(Elem::I32, slots)?,
            dispatch: r.alloc(Elem::Bf16, slots * h)?,
            recv: (cfg.gpus > 1)
                .then(|| r.alloc(Elem::Bf16, slots * h))
                .transpose()?,
            out: r.alloc(Elem::Bf16, slots * h)?,
            back: (cfg.gpus > 1)
                .then(|| r.alloc(Elem::Bf16, slots * h))
                .transpose()?,
            y_a2a: r.alloc(Elem::Bf16, cfg.tokens_per_rank() * h)?,
            host: PinnedI32::new(&r.gpu, e + 1)?,
            routed: r.gpu.marker()?,
        })
    }

    /// Where the all-to-all form's experts read their rows (the dispatch buffer itself on one GPU).
    fn expert_input(&self) -> u64 {
        self.recv.as_ref().unwrap_or(&self.dispatch).addr()
    }

    /// Where the all-to-all form's combine reads expert outputs.
    fn expert_output(&self) -> u64 {
        self.back.as_ref().unwrap_or(&self.out).addr()
    }
}

/// Checks the per-expert offsets read back from the GPU before they size GEMMs.
pub fn check_offsets(off: &[i32], total: usize) -> Result<()> {
    let ok = off.first() == Some(&0)
        && off.last().map(|&t| t as usize) == Some(total)
        && off.windows(2).all(|w| w[0] <= w[1]);
    if ok {
        Ok(())
    } else {
        Err(CudaError::Check(format!(
            "routing offsets {off:?} are not a partition of {total} entries"
        )))
    }
}

/// The benchmark's GPUs, buffers and communicators.
#[derive(Debug)]
pub struct LayerBench {
    cfg: LayerConfig,
    ranks: Vec<Rank>,
    st: Vec<State>,
    coll: Option<Collectives>,
    /// ms of the dense up-projection with GELU fused, and as GEMM + kernel (last rank).
    gelu: (f64, f64),
}

fn gpus(b: &LayerBench) -> Vec<&Gpu> {
    b.ranks.iter().map(|r| &r.gpu).collect()
}

impl LayerBench {
    /// Opens W GPUs, allocates and fills every buffer, creates the communicators (W > 1).
    pub fn new(cfg: &LayerConfig) -> Result<Self> {
        cfg.validate()?;
        libs::probe()?;
        let mut ranks = Rank::open_all(cfg.gpus)?;
        let need = cfg.bytes_per_rank();
        for r in &ranks {
            let (free, _) = r.gpu.memory()?;
            if need as f64 > free as f64 * 0.95 {
                return Err(CudaError::Invalid(format!(
                    "the layer needs about {:.1} GiB per GPU; GPU {} has {:.1} GiB free",
                    need as f64 / (1u64 << 30) as f64,
                    r.gpu.ordinal(),
                    free as f64 / (1u64 << 30) as f64
                )));
            }
        }
        let st = ranks
            .iter()
            .enumerate()
            .map(|(i, r)| State::new(r, i, cfg))
            .collect::<Result<Vec<_>>>()?;
        let mut gelu = (f64::NAN, f64::NAN);
        for (r, s) in ranks.iter_mut().zip(&st) {
            r.gpu.after_burn()?;
            let (x, w, h) = (s.x.addr(), s.w1_dense.addr(), s.h_dense.addr());
            gelu = r.choose_gelu(x, w, h, cfg.tokens, cfg.local_ffn(), cfg.hidden)?;
            r.gpu.sync()?;
        }
        let coll = if cfg.gpus > 1 {
            let g: Vec<&Gpu> = ranks.iter().map(|r| &r.gpu).collect();
            Some(Collectives::new(&g)?)
        } else {
            None
        };
        Ok(Self {
            cfg: cfg.clone(),
            ranks,
            st,
            coll,
            gelu,
        })
    }

    /// One step of the dense tensor-parallel MLP.
    pub fn dense_step(&mut self) -> Result<()> {
        let c = &self.cfg;
        let (n, h, fl) = (c.tokens, c.hidden, c.local_ffn());
        for (r, s) in self.ranks.iter_mut().zip(&self.st) {
            r.gpu.bind()?;
            r.up_gelu(
                &[n],
                fl,
                h,
                s.x.addr(),
                s.w1_dense.addr(),
                0,
                s.h_dense.addr(),
            )?;
            let down = GemmShape::new(n, h, fl);
            r.gemm.matmul(
                down,
                Epilogue::None,
                s.h_dense.addr(),
                s.w2_dense.addr(),
                s.y_dense.addr(),
            )?;
        }
        if let Some(coll) = &self.coll {
            let y: Vec<u64> = self.st.iter().map(|s| s.y_dense.addr()).collect();
            coll.all_reduce(&y, &y, n * h, Elem::Bf16)?;
        }
        Ok(())
    }

    /// One PPMoE step.
    pub fn ppmoe_step(&mut self) -> Result<()> {
        let c = self.cfg.clone();
        let (n, h, f, e, k, el) = (
            c.tokens,
            c.hidden,
            c.ffn,
            c.experts,
            c.top_k,
            c.local_experts(),
        );
        for (r, s) in self.ranks.iter_mut().zip(self.st.iter_mut()) {
            r.gpu.bind()?;
            s.pp.run(r, &c, s.x.addr(), s.gate.addr())?;
            s.host.fetch(&r.gpu, s.pp.expert_off.addr(), e + 1)?;
            r.gpu.record(&s.routed)?;
        }
        for (i, (r, s)) in self.ranks.iter_mut().zip(&self.st).enumerate() {
            s.routed
                .synchronize()
                .map_err(driver("cuEventSynchronize"))?;
            let off = s.host.values(e + 1);
            check_offsets(off, n * k)?;
            let (e0, e1) = (i * el, (i + 1) * el);
            let rows: Vec<usize> = (e0..e1).map(|x| (off[x + 1] - off[x]) as usize).collect();
            let (lo, mine) = (off[e0] as usize, rows.iter().sum::<usize>());
            r.gpu.bind()?;
            let pp = &s.pp;
            r.k.slots_range(
                pp.entry_pos.addr(),
                n * k,
                pp.expert_off.addr(),
                e0,
                e1,
                pp.slot.addr(),
            )?;
            let tokens = pp.sorted_token.at(Elem::I32, lo)?;
            r.k.gather_rows(s.xs.addr(), s.x.addr(), tokens, mine, h)?;
            let (w1_stride, w2_stride) = ((h * f * 2) as u64, (f * h * 2) as u64);
            r.up_gelu(&rows, f, h, s.xs.addr(), s.w1.addr(), w1_stride, s.h.addr())?;
            r.gemm.grouped(
                &rows,
                h,
                f,
                Epilogue::None,
                s.h.addr(),
                s.w2.addr(),
                w2_stride,
                s.o.addr(),
            )?;
            r.k.combine_rows(
                s.y.addr(),
                s.o.addr(),
                pp.slot.addr(),
                pp.weight.addr(),
                n,
                k,
                h,
            )?;
        }
        if let Some(coll) = &self.coll {
            let y: Vec<u64> = self.st.iter().map(|s| s.y.addr()).collect();
            coll.all_reduce(&y, &y, n * h, Elem::Bf16)?;
        }
        Ok(())
    }

    fn capacity_layout(&self) -> CapacityLayout {
        CapacityLayout {
            world: self.cfg.gpus,
            local_experts: self.cfg.local_experts(),
            capacity: self.cfg.capacity(),
            hidden: self.cfg.hidden,
            elem_bytes: 2,
        }
    }

    /// One step of all-to-all expert parallelism.
    pub fn all_to_all_step(&mut self) -> Result<()> {
        let c = self.cfg.clone();
        let (h, f, e, k, el, w) = (
            c.hidden,
            c.ffn,
            c.experts,
            c.top_k,
            c.local_experts(),
            c.gpus,
        );
        let (t, cap) = (c.tokens_per_rank(), c.capacity());
        for (i, (r, s)) in self.ranks.iter_mut().zip(&self.st).enumerate() {
            r.gpu.bind()?;
            let x = s.x.at(Elem::Bf16, i * t * h)?;
            s.a2a.run(r, &c, x, s.gate.addr())?;
            let a = &s.a2a;
            r.k.dispatch_index(
                a.sorted_token.addr(),
                a.expert_off.addr(),
                e,
                cap,
                s.idx.addr(),
            )?;
            r.k.gather_rows(s.dispatch.addr(), x, s.idx.addr(), e * cap, h)?;
            r.k.slots_capacity(
                a.expert.addr(),
                a.entry_pos.addr(),
                t * k,
                a.expert_off.addr(),
                cap,
                a.slot.addr(),
            )?;
        }
        let layout = self.capacity_layout();
        if let Some(coll) = &self.coll {
            let d: Vec<u64> = self.st.iter().map(|s| s.dispatch.addr()).collect();
            let rv: Vec<u64> = self.st.iter().map(State::expert_input).collect();
            coll.exchange(&layout.forward(&d, &rv), Elem::Bf16)?;
        }
        let rows = vec![w * cap; el];
        for (r, s) in self.ranks.iter_mut().zip(&self.st) {
            r.gpu.bind()?;
            let (w1_stride, w2_stride) = ((h * f * 2) as u64, (f * h * 2) as u64);
            r.up_gelu(
                &rows,
                f,
                h,
                s.expert_input(),
                s.w1.addr(),
                w1_stride,
                s.h.addr(),
            )?;
            r.gemm.grouped(
                &rows,
                h,
                f,
                Epilogue::None,
                s.h.addr(),
                s.w2.addr(),
                w2_stride,
                s.out.addr(),
            )?;
        }
        if let Some(coll) = &self.coll {
            let o: Vec<u64> = self.st.iter().map(|s| s.out.addr()).collect();
            let b: Vec<u64> = self.st.iter().map(State::expert_output).collect();
            coll.exchange(&layout.backward(&o, &b), Elem::Bf16)?;
        }
        for (r, s) in self.ranks.iter_mut().zip(&self.st) {
            r.gpu.bind()?;
            r.k.combine_rows(
                s.y_a2a.addr(),
                s.expert_output(),
                s.a2a.slot.addr(),
                s.a2a.weight.addr(),
                t,
                k,
                h,
            )?;
        }
        Ok(())
    }

    fn sync_all(&self) -> Result<()> {
        self.ranks.iter().try_for_each(|r| r.gpu.sync())
    }

    /// Runs PPMoE and all-to-all once and compares their outputs token by token; also returns
    /// the PPMoE routing's tokens per expert.
    pub fn check(&mut self) -> Result<(Agreement, Vec<usize>)> {
        self.ppmoe_step()?;
        self.all_to_all_step()?;
        self.sync_all()?;
        let c = &self.cfg;
        let (h, e, t, cap) = (c.hidden, c.experts, c.tokens_per_rank(), c.capacity());
        let mut a = Agreement {
            dropped: 0,
            compared: 0,
            max_abs_diff: 0.0,
            max_abs: 0.0,
            mismatched: 0,
        };
        let mut load = Vec::new();
        for (i, (r, s)) in self.ranks.iter().zip(&self.st).enumerate() {
            let off: Vec<i32> = r.gpu.download(s.a2a.expert_off.addr(), e + 1)?;
            check_offsets(&off, t * c.top_k)?;
            a.dropped += off
                .windows(2)
                .map(|w| ((w[1] - w[0]) as usize).saturating_sub(cap))
                .sum::<usize>();
            if i == 0 {
                let pp: Vec<i32> = r.gpu.download(s.pp.expert_off.addr(), e + 1)?;
                load = pp.windows(2).map(|w| (w[1] - w[0]) as usize).collect();
            }
            let ppmoe = to_f32(
                &r.gpu
                    .download::<u16>(s.y.at(Elem::Bf16, i * t * h)?, t * h)?,
            );
            let a2a = to_f32(&r.gpu.download::<u16>(s.y_a2a.addr(), t * h)?);
            a.add(&ppmoe, &a2a);
        }
        Ok((a, load))
    }

    /// Times `step` with the configured warm-up and iterations.
    fn time(&mut self, form: Form, step: fn(&mut Self) -> Result<()>) -> Result<FormResult> {
        let (warmup, iters) = (self.cfg.warmup, self.cfg.iters);
        let stats = time_steps(self, gpus, warmup, iters, step)?;
        let c = &self.cfg;
        let (useful, executed) = match form {
            Form::Dense => (c.dense_flops(), c.dense_flops()),
            Form::PpMoe => (c.moe_flops(), c.moe_flops()),
            Form::AllToAll => (c.moe_flops(), c.all_to_all_executed_flops()),
        };
        Ok(FormResult {
            form,
            stats,
            tokens: c.tokens,
            useful_flops: useful,
            executed_flops: executed,
        })
    }
}

/// bf16 bit patterns to f32.
pub fn to_f32(v: &[u16]) -> Vec<f32> {
    v.iter()
        .map(|&b| f32::from_bits(u32::from(b) << 16))
        .collect()
}

/// Runs the layer benchmark: the agreement check, then dense, PPMoE and all-to-all timed.
pub fn run_layer(cfg: &LayerConfig) -> Result<LayerReport> {
    let mut b = LayerBench::new(cfg)?;
    let (agreement, expert_load) = b.check()?;
    let forms = vec![
        b.time(Form::Dense, LayerBench::dense_step)?,
        b.time(Form::PpMoe, LayerBench::ppmoe_step)?,
        b.time(Form::AllToAll, LayerBench::all_to_all_step)?,
    ];
    let collectives = match &b.coll {
        Some(_) => format!(
            "NCCL {} over {} GPUs",
            Collectives::version().map_or_else(|_| "?".into(), |v| v.to_string()),
            cfg.gpus
        ),
        None => "none: on one GPU all-reduce and all-to-all are identities".into(),
    };
    Ok(LayerReport {
        device: b.ranks[0].gpu.name(),
        config: cfg.clone(),
        forms,
        expert_load,
        agreement,
        fused_gelu: b.ranks.iter().all(|r| r.fused_gelu),
        gelu_ms: b.gelu,
        collectives,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_must_partition_the_entries() {
        check_offsets(&[0, 3, 3, 8], 8).expect("partition");
        assert!(check_offsets(&[0, 3, 2, 8], 8).is_err());
        assert!(check_offsets(&[1, 3, 8], 8).is_err());
        assert!(check_offsets(&[0, 3, 7], 8).is_err());
    }

    #[test]
    fn bf16_bits_to_f32() {
        assert_eq!(to_f32(&[0x3f80, 0xc000, 0]), vec![1.0, -2.0, 0.0]);
    }
}
