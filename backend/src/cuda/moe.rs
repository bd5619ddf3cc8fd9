//! The MoE half of the CUDA compute seam: the expert FFN over routed rows (the project's grouped
//! GEMM from device offsets, or cuBLAS after one small offsets read), and PPMoE's local routing
//! on the device (`local_routes`, `index_select`, the grouped FFN from device counts, `index_add`
//! through the routing sort's inverse map). The `Compute` methods in `compute.rs` delegate here.

use super::buffer::{empty, empty_int, Cuda, Prim};
use super::compute::{CudaCompute, GROUPED_MIN_EXPERTS};
use super::grouped::GroupedArgs;
use super::ops::{Ops, MAX_EXPERTS, MAX_TOPK};
use super::ppmoe::{LocalArgs, LocalBufs};
use crate::exec::compute::Compute;
use crate::exec::moe::ExpertWeights;
use crate::exec::{LocalExperts, OpResult};
use crate::value::{Dense, DevInts, Local};
use burn::tensor::Tensor;
use burn_cubecl::FloatElement;
use moe_ir::Capacity;

/// Where each (token, choice) pair of a device `local_routes` landed: `entry_pos[t * k + j]` is
/// its row among the token ids (-1: routed to another rank). Exactly the rows whose token id is
/// `t`, so `index_add` through it is `index_add` by the ids.
#[derive(Debug)]
pub(super) struct Inverse {
    entry_pos: Prim,
    tokens: usize,
    k: usize,
}

/// Inverse maps kept (the latest; a layer's `index_add` follows its `local_routes` closely).
const INVERSES_KEPT: usize = 64;

impl<F: FloatElement> CudaCompute<F> {
    /// The expert FFN of routed rows `[n, h]` sorted by expert, expert `e` owning rows
    /// `[offsets[e], offsets[e + 1])` (device i32 `[experts + 1]`): many experts through the
    /// project's grouped GEMM kernel (offsets stay on the device), few (or sizes the kernel does
    /// not take) through cuBLAS with the offsets read to the host (the layer's one small read).
    pub(super) fn ffn_rows(
        &self,
        rows: Tensor<Cuda<F>, 2>,
        offsets: &Prim,
        experts: usize,
        w: &ExpertWeights<Cuda<F>>,
    ) -> OpResult<Tensor<Cuda<F>, 2>> {
        let [_, h, f] = w.up.dims();
        let [n, hx] = rows.dims();
        let elem = Self::elem().ok_or("the CUDA expert FFN runs in bf16 or f32")?;
        if hx != h || w.up.dims()[0] != experts {
            return Err(format!(
                "expert weights {:?} for {experts} experts and rows of {hx}",
                w.up.dims()
            ));
        }
        let device = rows.device();
        let own = Self::bf16()
            && experts > GROUPED_MIN_EXPERTS
            && own_grouped()
            && Ops::grouped_takes(experts, f, h)
            && Ops::grouped_takes(experts, h, f);
        let sizes = |cols: usize, inner: usize| GroupedArgs {
            rows: n,
            experts,
            n: cols,
            k: inner,
        };
        let table = if own {
            let table = empty_int::<F>(sizes(f, h).table_len(), &device);
            self.with(&device, |rt| {
                rt.ops
                    .grouped_tiles(&table.borrow()?, &offsets.borrow()?, sizes(f, h))
            })?;
            Some(table)
        } else {
            None
        };
        let off: Vec<usize> = if own {
            Vec::new()
        } else {
            // The one device-to-host read of the layer: cuBLAS takes group sizes on the host.
            let o = offsets.clone().into_int::<F>().into_data();
            o.iter::<i64>().map(|x| x.max(0) as usize).collect()
        };
        let gemm = |a: &Prim, b: &Tensor<Cuda<F>, 3>, cols: usize, inner: usize| {
            let Some(table) = &table else {
                return self.grouped_gemm(elem, &off, a, b.clone(), n, cols, inner);
            };
            let pb = Prim::float(b.clone());
            let pc = empty::<F, 2>([n, cols], &device);
            self.with(&device, |rt| {
                rt.ops.grouped_gemm(
                    &pc.borrow()?,
                    &a.borrow()?,
                    &pb.borrow()?,
                    &table.borrow()?,
                    sizes(cols, inner),
                )
            })?;
            Ok::<_, String>(pc.into_float::<F, 2>([n, cols]))
        };
        let x = Prim::float(rows);
        let u = gemm(&x, &w.up, f, h)?;
        let hidden = match &w.gate {
            Some(g) => {
                let g = gemm(&x, g, f, h)?;
                self.gated(w.act, Dense::of(g), Dense::of(u))?.to::<2>()
            }
            None => crate::exec::dense_act(w.act, u),
        };
        gemm(&Prim::float(hidden), &w.down, h, f)
    }

    /// Keeps `inv` for the token ids `id` (a bounded number of the latest).
    fn remember_inverse(&self, id: u64, inv: Inverse) -> OpResult<()> {
        let mut m = self
            .inverse
            .lock()
            .map_err(|_| "the CUDA compute seam's lock was poisoned by a failed op".to_string())?;
        m.insert(id, inv);
        while m.len() > INVERSES_KEPT {
            m.pop_first();
        }
        Ok(())
    }

    /// The inverse map of token ids `id` made by a device `local_routes`, if kept.
    fn inverse_of(&self, id: u64) -> OpResult<Option<(Prim, usize, usize)>> {
        let m = self
            .inverse
            .lock()
            .map_err(|_| "the CUDA compute seam's lock was poisoned by a failed op".to_string())?;
        Ok(m.get(&id).map(|i| (i.entry_pos.clone(), i.tokens, i.k)))
    }

    pub(super) fn ffn_grouped(
        &self,
        x: Dense<Cuda<F>>,
        counts: Local<Cuda<F>>,
        w: &ExpertWeights<Cuda<F>>,
    ) -> OpResult<Dense<Cuda<F>>> {
        let [e, h, _] = w.up.dims();
        let device = x.t.device();
        let take = Self::elem().is_some()
            && matches!(&counts, Local::DevInt(_))
            && x.shape().len() == 2
            && x.shape()[1] == h
            && counts.shape() == [e]
            && e <= MAX_EXPERTS;
        if !take {
            return crate::exec::compute::Burn.expert_ffn_grouped(x, counts, w);
        }
        let (pc, _) = self.device_ints(counts, &device)?;
        let off = empty_int::<F>(e + 1, &device);
        self.with(&device, |rt| {
            rt.ops.count_offsets(&pc.borrow()?, e, &off.borrow()?)
        })?;
        let off = Prim::int(off.into_int::<F>().narrow(0, 0, e + 1));
        Ok(Dense::of(self.ffn_rows(x.to::<2>(), &off, e, w)?))
    }

    pub(super) fn routes_local(
        &self,
        idx: Local<Cuda<F>>,
        w: Dense<Cuda<F>>,
        le: LocalExperts,
    ) -> OpResult<[Local<Cuda<F>>; 3]> {
        let shape = idx.shape();
        let take = Self::bf16()
            && matches!(le.capacity, Capacity::Dropless)
            && shape.len() == 2
            && w.shape() == shape
            && (1..=MAX_TOPK).contains(&shape[1])
            && shape[0] > 0
            && (1..=MAX_EXPERTS).contains(&le.count)
            && le.rows > 0;
        if !take {
            return crate::exec::compute::Burn.local_routes(idx, w, le);
        }
        let (t, k) = (shape[0], shape[1]);
        let total = t * k;
        let device = w.t.device();
        let (pi, _) = self.device_ints(idx, &device)?;
        let pw = Prim::float(w.to::<2>());
        let entries = empty_int::<F>(total, &device);
        let scratch = empty_int::<F>(Ops::sort_scratch(total, le.count), &device);
        let off = empty_int::<F>(le.count + 1, &device);
        let sorted = empty_int::<F>(total, &device);
        let entry_pos = empty_int::<F>(total, &device);
        let ids = empty_int::<F>(le.rows, &device);
        let w_out = empty::<F, 1>([le.rows], &device);
        let counts = empty_int::<F>(le.count, &device);
        self.with(&device, |rt| {
            let (ib, wb, eb, sb, ob) = (
                pi.borrow()?,
                pw.borrow()?,
                entries.borrow()?,
                scratch.borrow()?,
                off.borrow()?,
            );
            let (srt, ep, idb, wob, cb) = (
                sorted.borrow()?,
                entry_pos.borrow()?,
                ids.borrow()?,
                w_out.borrow()?,
                counts.borrow()?,
            );
            let a = LocalArgs {
                tokens: t,
                k,
                first: le.first,
                count: le.count,
                rows: le.rows,
            };
            let b = LocalBufs {
                idx: &ib,
                w: &wb,
                entries: &eb,
                scratch: &sb,
                off: &ob,
                sorted: &srt,
                entry_pos: &ep,
                ids: &idb,
                w_out: &wob,
                counts: &cb,
            };
            rt.ops.local_routes(a, &b)
        })?;
        let ids = DevInts::new(vec![le.rows], ids.into_int::<F>().narrow(0, 0, le.rows));
        self.remember_inverse(
            ids.id,
            Inverse {
                entry_pos,
                tokens: t,
                k,
            },
        )?;
        let counts = DevInts::new(
            vec![le.count],
            counts.into_int::<F>().narrow(0, 0, le.count),
        );
        Ok([
            Local::DevInt(ids),
            Local::Float(Dense::of(w_out.into_float::<F, 1>([le.rows]))),
            Local::DevInt(counts),
        ])
    }

    pub(super) fn select_rows(
        &self,
        x: Dense<Cuda<F>>,
        ids: Local<Cuda<F>>,
    ) -> OpResult<Dense<Cuda<F>>> {
        let (shape, n) = (x.shape(), ids.shape().iter().product::<usize>());
        let take = Self::bf16()
            && matches!(&ids, Local::DevInt(_))
            && shape.len() == 2
            && shape[1] % 8 == 0
            && ids.shape().len() == 1;
        if !take {
            return crate::exec::compute::Burn.index_select(x, ids);
        }
        let h = shape[1];
        let device = x.t.device();
        let (pi, _) = self.device_ints(ids, &device)?;
        let px = Prim::float(x.to::<2>());
        let out = empty::<F, 2>([n, h], &device);
        self.with(&device, |rt| {
            rt.ops
                .gather_rows(&out.borrow()?, &px.borrow()?, &pi.borrow()?, n, h)
        })?;
        Ok(Dense::of(out.into_float::<F, 2>([n, h])))
    }

    pub(super) fn add_rows(
        &self,
        buf: Dense<Cuda<F>>,
        ids: Local<Cuda<F>>,
        src: Dense<Cuda<F>>,
        scale: Option<Dense<Cuda<F>>>,
    ) -> OpResult<Dense<Cuda<F>>> {
        let inverse = match &ids {
            Local::DevInt(d) => self.inverse_of(d.id)?,
            _ => None,
        };
        let (bs, ss) = (buf.shape(), src.shape());
        let n = ids.shape().iter().product::<usize>();
        let take = match &inverse {
            Some((_, tokens, _)) => {
                Self::bf16()
                    && bs.len() == 2
                    && bs[0] == *tokens
                    && bs[1] % 8 == 0
                    && ss == [n, bs[1]]
                    && scale.as_ref().is_none_or(|s| s.shape() == [n])
            }
            None => false,
        };
        let (Some((entry_pos, tokens, k)), true) = (inverse, take) else {
            return crate::exec::compute::Burn.index_add(buf, ids, src, scale);
        };
        let h = bs[1];
        let device = buf.t.device();
        let (pb, ps) = (Prim::float(buf.to::<2>()), Prim::float(src.to::<2>()));
        let pscale = scale.map(|s| Prim::float(s.to::<1>()));
        let out = empty::<F, 2>([tokens, h], &device);
        self.with(&device, |rt| {
            let sc = pscale.as_ref().map(Prim::borrow).transpose()?;
            rt.ops.index_add_rows(
                &out.borrow()?,
                &pb.borrow()?,
                &ps.borrow()?,
                sc.as_ref(),
                &entry_pos.borrow()?,
                tokens,
                k,
                h,
            )
        })?;
        Ok(Dense::of(out.into_float::<F, 2>([tokens, h])))
    }
}

/// Whether many-expert FFNs take the project's grouped GEMM (default) rather than cuBLAS's
/// grouped GEMM (`MOE_OPT_GROUPED_GEMM=cublas`, to compare the two on the same run).
fn own_grouped() -> bool {
    static OWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OWN.get_or_init(|| std::env::var("MOE_OPT_GROUPED_GEMM").map_or(true, |v| v != "cublas"))
}
