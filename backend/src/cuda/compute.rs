//! The compute seam on burn-cuda: cuBLAS GEMMs and the executor's NVRTC kernels (`ops.cu`) on
//! burn-cuda's own buffers and stream (see [`super::buffer`]).
//!
//! What runs where:
//! - `matmul`, `bmm` (batch matmul, attention's two products, padded experts): cuBLAS, bf16
//!   with fp32 accumulation or f32 on TF32;
//! - bf16 only: `router` (one kernel: scores, bias, group limit, top-k, renormalisation; the
//!   choices stay on the device as [`Local::DevInt`]); `dispatch` of a sparse capacity buffer
//!   (the dropless form: `experts x cap` far above `tokens x k`) as a stable routing sort on the
//!   device and one row gather into a [`Ragged`] buffer of the routed rows only; `expert_ffn`
//!   on a ragged buffer as grouped GEMMs over its rows (one small device-to-host read of the
//!   per-expert offsets per layer: cuBLAS takes its sizes on the host); `combine` of a ragged
//!   buffer by the choices that made it as one weighted-gather kernel (no atomics); seeded
//!   weights generated on the device, bit for bit the host's values.
//! - everything else: the burn defaults of [`Compute`].

use super::attention;
use super::blas::{Blas, Elem, Shape};
use super::buffer::{empty, empty_int, Cuda, Prim};
use super::error::{driver, CudaError};
use super::moe::Inverse;
use super::ops::Ops;
use super::routing_ops::RouterArgs;
use crate::exec::attention::Heads;
use crate::exec::compute::{plain_float, Compute, SeededBlock, Stamp};
use crate::exec::moe::ExpertWeights;
use crate::exec::LocalExperts;
use crate::exec::OpResult;
use crate::value::{pad4, Dense, DevInts, Local, Ragged};
use burn::tensor::{DType, Int, Tensor, TensorData};
use burn_cubecl::FloatElement;
use burn_cuda::CudaDevice;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaContext, CudaEvent};
use moe_ir::{Activation, AttentionAttrs, RouterAttrs, Score};
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock};

/// cuBLAS and the kernels of one device.
#[derive(Debug)]
pub(super) struct Runtime {
    ctx: Arc<CudaContext>,
    pub blas: Blas,
    pub ops: Ops,
    /// A one-element buffer whose borrow names the calling thread's stream (for stamps).
    marker: OnceLock<Prim>,
}

/// A CUDA event recorded on burn's stream (a profile [`Stamp`]).
struct EventStamp(CudaEvent);

impl Stamp for EventStamp {
    fn since(&self, earlier: &dyn Stamp) -> OpResult<f64> {
        let e = earlier
            .as_any()
            .downcast_ref::<EventStamp>()
            .ok_or_else(|| "a CUDA stamp compared with another backend's".to_string())?;
        let ms =
            e.0.elapsed_ms(&self.0)
                .map_err(driver("cuEventElapsedTime"))
                .map_err(err)?;
        Ok(f64::from(ms) / 1e3)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The CUDA compute seam for floats `F` (see the module docs).
#[derive(Debug)]
pub(crate) struct CudaCompute<F> {
    devices: Mutex<BTreeMap<usize, Runtime>>,
    /// Per token-id value made by a device `local_routes` (by its id): the inverse map that
    /// `index_add` sums through.
    pub(super) inverse: Mutex<BTreeMap<u64, Inverse>>,
    _f: PhantomData<F>,
}

impl<F> Default for CudaCompute<F> {
    fn default() -> Self {
        CudaCompute {
            devices: Mutex::new(BTreeMap::new()),
            inverse: Mutex::new(BTreeMap::new()),
            _f: PhantomData,
        }
    }
}

/// Expert counts up to which the experts' GEMMs run one cuBLAS call per expert (few large
/// experts: FACTS.md measured the loop at or above cuBLAS's grouped GEMM there).
pub(super) const GROUPED_MIN_EXPERTS: usize = 16;

fn err(e: CudaError) -> String {
    e.to_string()
}

impl<F: FloatElement> CudaCompute<F> {
    /// The GEMM element type of `F`, or `None` when cuBLAS is not used for it.
    pub(super) fn elem() -> Option<Elem> {
        match F::dtype() {
            DType::BF16 => Some(Elem::Bf16),
            DType::F32 => Some(Elem::F32),
            _ => None,
        }
    }

    pub(super) fn bf16() -> bool {
        F::dtype() == DType::BF16
    }

    /// The lock over the devices' runtimes.
    pub(super) fn lock(&self) -> OpResult<std::sync::MutexGuard<'_, BTreeMap<usize, Runtime>>> {
        self.devices
            .lock()
            .map_err(|_| "the CUDA compute seam's lock was poisoned by a failed op".to_string())
    }

    /// `device`'s runtime (made on first use), its context current on this thread.
    pub(super) fn runtime<'m>(
        &self,
        map: &'m mut BTreeMap<usize, Runtime>,
        device: &CudaDevice,
    ) -> OpResult<&'m Runtime> {
        if !map.contains_key(&device.index) {
            let ctx = CudaContext::new(device.index)
                .map_err(driver("cuDevicePrimaryCtxRetain"))
                .map_err(err)?;
            ctx.bind_to_thread()
                .map_err(driver("cuCtxSetCurrent"))
                .map_err(err)?;
            let rt = Runtime {
                blas: Blas::new().map_err(err)?,
                ops: Ops::load(&ctx).map_err(err)?,
                marker: OnceLock::new(),
                ctx,
            };
            map.insert(device.index, rt);
        }
        let rt = map
            .get(&device.index)
            .ok_or_else(|| "CUDA runtime missing".to_string())?;
        rt.ctx
            .bind_to_thread()
            .map_err(driver("cuCtxSetCurrent"))
            .map_err(err)?;
        Ok(rt)
    }

    /// Runs `f` with `device`'s runtime.
    pub(super) fn with<T>(
        &self,
        device: &CudaDevice,
        f: impl FnOnce(&Runtime) -> Result<T, CudaError>,
    ) -> OpResult<T> {
        let mut map = self.lock()?;
        let rt = self.runtime(&mut map, device)?;
        f(rt).map_err(err)
    }

    /// `[n, m, k] @ [n, k, n2]` through cuBLAS.
    fn gemm3(
        &self,
        elem: Elem,
        a: Tensor<Cuda<F>, 3>,
        b: Tensor<Cuda<F>, 3>,
    ) -> OpResult<Tensor<Cuda<F>, 3>> {
        let ([n, m, k], [nb, kb, n2]) = (a.dims(), b.dims());
        if n != nb || k != kb {
            return Err(format!(
                "batched matmul of [{n}, {m}, {k}] and [{nb}, {kb}, {n2}]"
            ));
        }
        let device = a.device();
        let (pa, pb) = (Prim::float(a), Prim::float(b));
        let pc = empty::<F, 3>([n, m, n2], &device);
        self.with(&device, |rt| {
            let s = Shape {
                batch: n,
                m,
                n: n2,
                k,
            };
            rt.blas
                .gemm(elem, s, &pa.borrow()?, &pb.borrow()?, &pc.borrow()?)
        })?;
        Ok(pc.into_float([n, m, n2]))
    }

    /// Expert GEMMs over row groups (`off`, host): rows `[n, inner]` of `a` times the group's
    /// matrix of `b` (`[groups, inner, cols]`). Many small groups go to cuBLAS's grouped GEMM in
    /// one launch (its pointer arrays uploaded); few large ones to one GEMM each.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn grouped_gemm(
        &self,
        elem: Elem,
        off: &[usize],
        a: &Prim,
        b: Tensor<Cuda<F>, 3>,
        n: usize,
        cols: usize,
        inner: usize,
    ) -> OpResult<Tensor<Cuda<F>, 2>> {
        let device = b.device();
        let pb = Prim::float(b);
        let pc = empty::<F, 2>([n, cols], &device);
        let groups = off.len().saturating_sub(1);
        if groups <= GROUPED_MIN_EXPERTS {
            self.with(&device, |rt| {
                rt.blas.grouped(
                    elem,
                    off,
                    cols,
                    inner,
                    &a.borrow()?,
                    &pb.borrow()?,
                    &pc.borrow()?,
                )
            })?;
            return Ok(pc.into_float::<F, 2>([n, cols]));
        }
        let (ab, bb, cb) = (
            a.borrow().map_err(err)?,
            pb.borrow().map_err(err)?,
            pc.borrow().map_err(err)?,
        );
        let plan = Blas::grouped_plan(elem, off, cols, inner, &ab, &bb, &cb).map_err(err)?;
        // u64 addresses as i32 pairs (little-endian), uploaded in stream order.
        let words: Vec<i32> = plan
            .pointers()
            .iter()
            .flat_map(|&p| [p as u32 as i32, (p >> 32) as u32 as i32])
            .collect();
        if words.is_empty() {
            return Ok(pc.into_float::<F, 2>([n, cols]));
        }
        let len = words.len();
        let ptrs = Prim::int(Tensor::<Cuda<F>, 1, Int>::from_data(
            TensorData::new(words, [len]),
            &device,
        ));
        self.with(&device, |rt| {
            let pb = ptrs.borrow()?;
            // SAFETY: `ptrs` holds exactly the plan's pointers (uploaded just above, before
            // this call on the same stream); the plan's buffers are borrowed from live tensors.
            unsafe { rt.blas.grouped_run(elem, &plan, &pb) }
        })?;
        Ok(pc.into_float::<F, 2>([n, cols]))
    }

    /// Integers of `v` on the device as i32 (uploaded when on the host), with the id of the
    /// router value they came from (`None`: uploaded here).
    pub(super) fn device_ints(
        &self,
        v: Local<Cuda<F>>,
        device: &CudaDevice,
    ) -> OpResult<(Prim, Option<u64>)> {
        match v {
            Local::DevInt(d) => Ok((Prim::int(d.t), Some(d.id))),
            other => {
                let ints = crate::exec::compute::host_ints(other)?;
                let data: Vec<i32> = ints
                    .data
                    .iter()
                    .map(|&x| i32::try_from(x).unwrap_or(-1))
                    .collect();
                let n = data.len();
                let t = Tensor::<Cuda<F>, 1, Int>::from_data(TensorData::new(data, [n]), device);
                Ok((Prim::int(t), None))
            }
        }
    }
}

impl<F: FloatElement> Compute<Cuda<F>> for CudaCompute<F> {
    fn matmul(&self, a: Dense<Cuda<F>>, b: Dense<Cuda<F>>) -> OpResult<Dense<Cuda<F>>> {
        let Some(elem) = Self::elem() else {
            return Ok(crate::exec::dense_matmul(a, b));
        };
        let mut shape = a.shape();
        let a = a.to::<2>().unsqueeze_dim::<3>(0);
        let b = b.to::<2>().unsqueeze_dim::<3>(0);
        let y = self.gemm3(elem, a, b)?;
        let [_, m, n] = y.dims();
        if let Some(last) = shape.last_mut() {
            *last = n;
        }
        Ok(Dense::of(y.reshape([m, n])).reshape(&shape))
    }

    fn bmm(&self, a: Tensor<Cuda<F>, 3>, b: Tensor<Cuda<F>, 3>) -> OpResult<Tensor<Cuda<F>, 3>> {
        match Self::elem() {
            Some(elem) => self.gemm3(elem, a, b),
            None => Ok(a.matmul(b)),
        }
    }

    fn norm(
        &self,
        x: Dense<Cuda<F>>,
        w: Dense<Cuda<F>>,
        b: Option<Dense<Cuda<F>>>,
        eps: f64,
        center: bool,
    ) -> OpResult<Dense<Cuda<F>>> {
        let shape = x.shape();
        let g = w.shape().iter().product::<usize>();
        let n: usize = shape.iter().product();
        let h = shape.last().copied().unwrap_or(1);
        if !Self::bf16() || g == 0 || h % g != 0 {
            return Ok(crate::exec::dense_norm(x, w, b, eps, center));
        }
        let device = x.t.device();
        let (px, pw) = (Prim::float(x.t), Prim::float(w.to::<1>()));
        let pb = b.map(|b| Prim::float(b.to::<1>()));
        let y = empty::<F, 1>([n], &device);
        self.with(&device, |rt| {
            let bb = pb.as_ref().map(Prim::borrow).transpose()?;
            rt.ops.norm_rows(
                &y.borrow()?,
                &px.borrow()?,
                &pw.borrow()?,
                bb.as_ref(),
                n / g,
                g,
                eps as f32,
                center,
            )
        })?;
        Ok(Dense::of(y.into_float::<F, 1>([n])).reshape(&shape))
    }

    fn gated(
        &self,
        act: Activation,
        gate: Dense<Cuda<F>>,
        up: Dense<Cuda<F>>,
    ) -> OpResult<Dense<Cuda<F>>> {
        let gelu = match act {
            Activation::Silu => false,
            Activation::Gelu => true,
            _ => return crate::exec::compute::Burn.gated(act, gate, up),
        };
        if !Self::bf16() || gate.shape() != up.shape() {
            return crate::exec::compute::Burn.gated(act, gate, up);
        }
        let shape = gate.shape();
        let n: usize = shape.iter().product();
        let device = gate.t.device();
        let (pg, pu) = (Prim::float(gate.t), Prim::float(up.t));
        let y = empty::<F, 1>([n], &device);
        self.with(&device, |rt| {
            rt.ops
                .gated_act(&y.borrow()?, &pg.borrow()?, Some(&pu.borrow()?), n, gelu)
        })?;
        Ok(Dense::of(y.into_float::<F, 1>([n])).reshape(&shape))
    }

    fn activation(&self, act: Activation, x: Dense<Cuda<F>>) -> OpResult<Dense<Cuda<F>>> {
        let gelu = match act {
            Activation::Silu => false,
            Activation::Gelu => true,
            _ => return crate::exec::compute::Burn.activation(act, x),
        };
        if !Self::bf16() {
            return crate::exec::compute::Burn.activation(act, x);
        }
        let (shape, rank) = (x.shape(), x.rank);
        let n: usize = shape.iter().product();
        let device = x.t.device();
        let px = Prim::float(x.t);
        let y = empty::<F, 1>([n], &device);
        self.with(&device, |rt| {
            rt.ops.gated_act(&y.borrow()?, &px.borrow()?, None, n, gelu)
        })?;
        let mut out = Dense::of(y.into_float::<F, 1>([n])).reshape(&shape);
        out.rank = rank;
        Ok(out)
    }

    fn stamp(&self, device: &CudaDevice) -> OpResult<Option<Box<dyn Stamp>>> {
        let mut map = self.lock()?;
        let rt = self.runtime(&mut map, device)?;
        let marker = rt.marker.get_or_init(|| empty_int::<F>(1, device));
        let b = marker.borrow().map_err(err)?;
        let ev = rt
            .ctx
            .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(driver("cuEventCreate"))
            .map_err(err)?;
        // SAFETY: the event was made in this device's primary context, current on this thread
        // (`runtime` bound it), and the stream is burn's stream of this thread in that context,
        // alive for the process; recording reads neither buffer.
        unsafe { cudarc::driver::result::event::record(ev.cu_event(), b.stream()) }
            .map_err(driver("cuEventRecord"))
            .map_err(err)?;
        Ok(Some(Box::new(EventStamp(ev))))
    }

    fn attention(
        &self,
        a: &AttentionAttrs,
        q: Dense<Cuda<F>>,
        k: Dense<Cuda<F>>,
        v: Dense<Cuda<F>>,
        k_shared: Option<Dense<Cuda<F>>>,
        sinks: Option<Dense<Cuda<F>>>,
        heads: Heads,
    ) -> OpResult<Dense<Cuda<F>>> {
        if !Self::bf16() || !attention::takes(a, k_shared.is_some()) {
            let bmm = |x: Tensor<Cuda<F>, 3>, y: Tensor<Cuda<F>, 3>| self.bmm(x, y);
            return crate::exec::attention::attention(a, q, k, v, k_shared, sinks, heads, &bmm);
        }
        let device = q.t.device();
        let mut map = self.lock()?;
        let rt = self.runtime(&mut map, &device)?;
        attention::attention(rt, a, q, k, v, sinks, heads)
    }

    fn router(
        &self,
        a: &RouterAttrs,
        logits: Dense<Cuda<F>>,
        bias: Option<Dense<Cuda<F>>>,
    ) -> OpResult<(Local<Cuda<F>>, Dense<Cuda<F>>)> {
        let shape = logits.shape();
        let (t, e, k) = (shape[0], shape[1], a.k as usize);
        let fits = Self::bf16()
            && e <= super::ops::MAX_EXPERTS
            && (1..=super::ops::MAX_TOPK).contains(&k)
            && a.groups
                .is_none_or(|g| g.groups as usize <= super::ops::MAX_GROUPS);
        if !fits {
            let (idx, w) = crate::exec::routing_router(a, logits, bias)?;
            return Ok((Local::Int(idx), w));
        }
        let device = logits.t.device();
        let pl = Prim::float(logits.to::<2>());
        let pb = bias.map(|b| Prim::float(b.to::<1>()));
        let pe = empty_int::<F>(t * k, &device);
        let pw = empty::<F, 2>([t, k], &device);
        let args = RouterArgs {
            tokens: t,
            experts: e,
            k,
            score: match a.score {
                Score::Softmax => 0,
                Score::Sigmoid => 1,
            },
            groups: a.groups.map_or(0, |g| g.groups as usize),
            topk_groups: a.groups.map_or(0, |g| g.topk_groups as usize),
            group_score: match a.groups.map(|g| g.group_score) {
                Some(moe_ir::GroupScore::Top2Sum) => 1,
                _ => 0,
            },
            normalize: a.normalize,
            scale: a.scale.0 as f32,
        };
        self.with(&device, |rt| {
            let b = pb.as_ref().map(Prim::borrow).transpose()?;
            rt.ops.router(
                args,
                &pl.borrow()?,
                b.as_ref(),
                &pe.borrow()?,
                &pw.borrow()?,
            )
        })?;
        let idx = DevInts::new(vec![t, k], pe.into_int::<F>().narrow(0, 0, t * k));
        Ok((Local::DevInt(idx), Dense::of(pw.into_float::<F, 2>([t, k]))))
    }

    fn dispatch(
        &self,
        x: Dense<Cuda<F>>,
        idx: Local<Cuda<F>>,
        experts: usize,
        cap: usize,
    ) -> OpResult<Local<Cuda<F>>> {
        let [t, h] = x.shape()[..] else {
            return Err("tokens must have rank 2".into());
        };
        let k = idx.shape().get(1).copied().unwrap_or(1);
        // Ragged pays off when the capacity buffer is mostly padding (dropless routing).
        let sparse = experts * cap > 2 * t * k;
        if !Self::bf16() || h % 8 != 0 || !sparse || t * k == 0 {
            let idx = crate::exec::compute::host_ints(idx)?;
            return Ok(Local::Float(crate::exec::routing_dispatch(
                x, &idx, experts, cap,
            )?));
        }
        let device = x.t.device();
        let (pi, routing) = self.device_ints(idx, &device)?;
        let n = t * k;
        let px = Prim::float(x.to::<2>());
        let cm = empty_int::<F>(n, &device);
        let scratch = empty_int::<F>(Ops::sort_scratch(n, experts), &device);
        let off = empty_int::<F>(experts + 1, &device);
        let sorted = empty_int::<F>(n, &device);
        let pos = empty_int::<F>(n, &device);
        let row = empty_int::<F>(n, &device);
        let rows = empty::<F, 2>([n, h], &device);
        self.with(&device, |rt| {
            let (cmb, offb, posb) = (cm.borrow()?, off.borrow()?, pos.borrow()?);
            let sortedb = sorted.borrow()?;
            rt.ops.route_sort(
                &pi.borrow()?,
                t,
                k,
                experts,
                &cmb,
                &scratch.borrow()?,
                &offb,
                &sortedb,
                &posb,
            )?;
            rt.ops
                .entry_rows(&posb, &cmb, &offb, t, k, cap, &row.borrow()?)?;
            rt.ops
                .gather_rows(&rows.borrow()?, &px.borrow()?, &sortedb, n, h)
        })?;
        Ok(Local::Ragged(Ragged {
            rows: rows.into_float([n, h]),
            offsets: off.into_int::<F>().narrow(0, 0, experts + 1),
            entry_row: row.into_int::<F>().narrow(0, 0, n),
            routing: routing.unwrap_or(0),
            experts,
            cap,
        }))
    }

    fn expert_ffn_padded(
        &self,
        x: Local<Cuda<F>>,
        w: &ExpertWeights<Cuda<F>>,
    ) -> OpResult<Local<Cuda<F>>> {
        let (Local::Ragged(r), Some(_)) = (&x, Self::elem()) else {
            let bmm = |a: Tensor<Cuda<F>, 3>, b: Tensor<Cuda<F>, 3>| self.bmm(a, b);
            return Ok(Local::Float(crate::exec::moe_expert_ffn_padded(
                plain_float(x)?,
                w,
                &bmm,
            )?));
        };
        let y = self.ffn_rows(r.rows.clone(), &Prim::int(r.offsets.clone()), r.experts, w)?;
        Ok(Local::Ragged(r.with_rows(y)))
    }

    fn expert_ffn_grouped(
        &self,
        x: Dense<Cuda<F>>,
        counts: Local<Cuda<F>>,
        w: &ExpertWeights<Cuda<F>>,
    ) -> OpResult<Dense<Cuda<F>>> {
        self.ffn_grouped(x, counts, w)
    }

    fn local_routes(
        &self,
        idx: Local<Cuda<F>>,
        w: Dense<Cuda<F>>,
        le: LocalExperts,
    ) -> OpResult<[Local<Cuda<F>>; 3]> {
        self.routes_local(idx, w, le)
    }

    fn index_select(&self, x: Dense<Cuda<F>>, ids: Local<Cuda<F>>) -> OpResult<Dense<Cuda<F>>> {
        self.select_rows(x, ids)
    }

    fn index_add(
        &self,
        buf: Dense<Cuda<F>>,
        ids: Local<Cuda<F>>,
        src: Dense<Cuda<F>>,
        scale: Option<Dense<Cuda<F>>>,
    ) -> OpResult<Dense<Cuda<F>>> {
        self.add_rows(buf, ids, src, scale)
    }

    fn combine(
        &self,
        y: Local<Cuda<F>>,
        idx: Local<Cuda<F>>,
        w: Dense<Cuda<F>>,
        experts: usize,
        cap: usize,
    ) -> OpResult<Dense<Cuda<F>>> {
        let fast = match (&y, &idx) {
            (Local::Ragged(r), Local::DevInt(i)) => r.routing == i.id && r.routing != 0,
            _ => false,
        };
        let (Local::Ragged(r), true) = (&y, fast) else {
            let idx = crate::exec::compute::host_ints(idx)?;
            return crate::exec::routing_combine(plain_float(y)?, &idx, w, experts, cap);
        };
        let [t, k] = idx.shape()[..] else {
            return Err("indices must have rank 2".into());
        };
        let h = r.rows.dims()[1];
        let device = r.rows.device();
        let (src, row) = (Prim::float(r.rows.clone()), Prim::int(r.entry_row.clone()));
        let pw = Prim::float(w.to::<2>());
        let out = empty::<F, 2>([t, h], &device);
        self.with(&device, |rt| {
            rt.ops.combine_rows(
                &out.borrow()?,
                &src.borrow()?,
                &row.borrow()?,
                &pw.borrow()?,
                t,
                k,
                h,
            )
        })?;
        Ok(Dense::of(out.into_float::<F, 2>([t, h])))
    }

    fn seeded(&self, b: &SeededBlock<'_>, device: &CudaDevice) -> OpResult<Option<Dense<Cuda<F>>>> {
        let bf16 = match F::dtype() {
            DType::BF16 => true,
            DType::F32 => false,
            _ => return Ok(None),
        };
        let n: usize = b.block.iter().product();
        let p = empty::<F, 1>([n.max(1)], device);
        self.with(device, |rt| {
            rt.ops.seeded_fill(
                &p.borrow()?,
                bf16,
                b.key,
                b.scale,
                b.global,
                b.offsets,
                b.block,
            )
        })?;
        let t = p.into_float::<F, 1>([n.max(1)]).narrow(0, 0, n);
        Ok(Some(Dense {
            t: t.reshape(pad4(b.block)),
            rank: b.block.len(),
        }))
    }
}
