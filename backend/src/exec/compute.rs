//! The compute seam: where the executor's hot ops meet the kernels that run them.
//!
//! [`Compute`] is to computation what [`crate::collective::Collectives`] is to communication:
//! the executor's op files call it and never a kernel directly, so a faster kernel goes in one
//! place, behind one method, and every graph `run` executes takes it. Each method has a default
//! body in burn tensor ops (burn's documented backend-extension pattern), so every burn backend
//! runs every op: [`Burn`] is that default, used on the CPU. The CUDA implementation
//! (`crate::cuda::compute`) overrides the hot methods with cuBLAS(Lt) and NVRTC kernels on
//! burn-cuda's own buffers and stream, and may return values in device forms
//! ([`Local::DevInt`], [`Local::Ragged`]) that only it produces; every default body accepts them
//! (it reads them into plain form first), so the two kinds of methods mix freely.
//!
//! Typing rules are the IR ops' (`moe_ir::Op`); each method computes exactly what its op's rule
//! says on one rank's local blocks, and must give the same numbers as the default up to the
//! rounding of its precision.

use super::attention::{self, Heads};
use super::moe::{self, ExpertWeights};
use super::routing::LocalExperts;
use super::{dense, routing, OpResult};
use crate::value::{Dense, Ints, Local};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use moe_ir::{Activation, AttentionAttrs, RouterAttrs};

/// Integers of `v` on the host (device integers are read back).
pub(crate) fn host_ints<B: Backend>(v: Local<B>) -> OpResult<Ints> {
    match v.plain() {
        Local::Int(i) => Ok(i),
        _ => Err("expected an integer input, got floats".into()),
    }
}

/// Floats of `v` (a ragged expert buffer made padded).
pub(crate) fn plain_float<B: Backend>(v: Local<B>) -> OpResult<Dense<B>> {
    match v.plain() {
        Local::Float(d) => Ok(d),
        _ => Err("expected a float input, got integers".into()),
    }
}

/// A seeded weight block to make on the device (see `crate::weights::seeded::block_values`):
/// element `i` of the block is the seeded value of its global flat index under `key`.
#[derive(Clone, Debug)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // read by the CUDA seam only
pub(crate) struct SeededBlock<'a> {
    /// The tensor's key (seed, name and global shape mixed).
    pub key: u64,
    /// `sqrt(3) * std`: values are uniform in `[-scale, scale)`.
    pub scale: f64,
    pub global: &'a [u64],
    pub offsets: &'a [usize],
    pub block: &'a [usize],
}

/// A point on one device's timeline: the end of the work enqueued on it before the stamp was
/// taken (a CUDA event). The executor's `--profile` takes one after every node and charges each
/// node the device time since the previous stamp, so per-op times add up to the compute time
/// without synchronising between ops.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // implemented by the CUDA seam only
pub(crate) trait Stamp: Send + Sync {
    /// Seconds from `earlier` to this stamp (both of one device), waiting until this one is
    /// reached.
    fn since(&self, earlier: &dyn Stamp) -> OpResult<f64>;
    fn as_any(&self) -> &dyn std::any::Any;
}

/// The hot ops of the executor (see the module docs). Every method has a default in burn ops.
pub(crate) trait Compute<B: Backend>: Sync {
    /// A [`Stamp`] after the work enqueued so far on `device`; `None` (the default) where the
    /// backend has no device timer: the profiler then synchronises after every node and reads
    /// the host clock.
    fn stamp(&self, _device: &B::Device) -> OpResult<Option<Box<dyn Stamp>>> {
        Ok(None)
    }

    /// `matmul(a, b)`: `[..., M, K] @ [K, N]`.
    fn matmul(&self, a: Dense<B>, b: Dense<B>) -> OpResult<Dense<B>> {
        Ok(dense::matmul(a, b))
    }

    /// Batched `[n, M, K] @ [n, K, N]` (the `batch_matmul` op, attention's two products, padded
    /// experts).
    fn bmm(&self, a: Tensor<B, 3>, b: Tensor<B, 3>) -> OpResult<Tensor<B, 3>> {
        Ok(a.matmul(b))
    }

    /// `rms_norm` (`bias` None, `center` false) or `layer_norm`, see [`dense::norm`].
    fn norm(
        &self,
        x: Dense<B>,
        w: Dense<B>,
        b: Option<Dense<B>>,
        eps: f64,
        center: bool,
    ) -> OpResult<Dense<B>> {
        Ok(dense::norm(x, w, b, eps, center))
    }

    /// `act(x)` elementwise (the `gelu`, `silu` and `relu` ops).
    fn activation(&self, act: Activation, x: Dense<B>) -> OpResult<Dense<B>> {
        Ok(dense::unary(x, Some(act)))
    }

    /// `act(gate) * up` (the `swiglu` op with SiLU; the gated expert FFNs with theirs).
    fn gated(&self, act: Activation, gate: Dense<B>, up: Dense<B>) -> OpResult<Dense<B>> {
        let rank = gate.rank.max(up.rank);
        Ok(Dense {
            t: dense::gated(act, gate.t, up.t),
            rank,
        })
    }

    /// `attention(q, k, v[, k_shared][, sinks])` on this rank's heads.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        a: &AttentionAttrs,
        q: Dense<B>,
        k: Dense<B>,
        v: Dense<B>,
        k_shared: Option<Dense<B>>,
        sinks: Option<Dense<B>>,
        heads: Heads,
    ) -> OpResult<Dense<B>> {
        attention::attention(a, q, k, v, k_shared, sinks, heads, &|x, y| self.bmm(x, y))
    }

    /// `router(logits[, select_bias])`: the chosen experts `[T, k]` and their weights.
    fn router(
        &self,
        a: &RouterAttrs,
        logits: Dense<B>,
        bias: Option<Dense<B>>,
    ) -> OpResult<(Local<B>, Dense<B>)> {
        let (idx, w) = routing::router(a, logits, bias)?;
        Ok((Local::Int(idx), w))
    }

    /// `dispatch(x, idx)`: `[T, H]` -> the padded `[experts, cap, H]`.
    fn dispatch(
        &self,
        x: Dense<B>,
        idx: Local<B>,
        experts: usize,
        cap: usize,
    ) -> OpResult<Local<B>> {
        let idx = host_ints(idx)?;
        Ok(Local::Float(routing::dispatch(x, &idx, experts, cap)?))
    }

    /// `combine(y, idx, w)`: the padded `[experts, cap, H]` -> `[T, H]`.
    fn combine(
        &self,
        y: Local<B>,
        idx: Local<B>,
        w: Dense<B>,
        experts: usize,
        cap: usize,
    ) -> OpResult<Dense<B>> {
        let idx = host_ints(idx)?;
        routing::combine(plain_float(y)?, &idx, w, experts, cap)
    }

    /// `expert_ffn` in the padded layout `[E, C, H]`.
    fn expert_ffn_padded(&self, x: Local<B>, w: &ExpertWeights<B>) -> OpResult<Local<B>> {
        let bmm = |x: Tensor<B, 3>, y: Tensor<B, 3>| self.bmm(x, y);
        Ok(Local::Float(moe::expert_ffn_padded(
            plain_float(x)?,
            w,
            &bmm,
        )?))
    }

    /// `local_routes(indices, weights)` of this rank's experts `le` (see
    /// `routing::local_routes`): token ids `[rows]`, weights `[rows]`, counts `[count]`.
    fn local_routes(
        &self,
        idx: Local<B>,
        w: Dense<B>,
        le: LocalExperts,
    ) -> OpResult<[Local<B>; 3]> {
        let device = w.t.device();
        let (ids, ws, counts) = routing::local_routes(&host_ints(idx)?, &w.to_host(), le)?;
        Ok([
            Local::Int(Ints::new(vec![le.rows], ids)),
            Local::Float(Dense::from_host(ws, &[le.rows], &device)),
            Local::Int(Ints::new(vec![le.count], counts)),
        ])
    }

    /// `expert_ffn` in the grouped layout: rows `[N, H]` in runs of `counts`.
    fn expert_ffn_grouped(
        &self,
        x: Dense<B>,
        counts: Local<B>,
        w: &ExpertWeights<B>,
    ) -> OpResult<Dense<B>> {
        let bmm = |x: Tensor<B, 3>, y: Tensor<B, 3>| self.bmm(x, y);
        moe::expert_ffn_grouped(x, &host_ints(counts)?, w, &bmm)
    }

    /// `index_select(x, ids)`.
    fn index_select(&self, x: Dense<B>, ids: Local<B>) -> OpResult<Dense<B>> {
        moe::index_select(x, &host_ints(ids)?)
    }

    /// `index_add(buf, ids, src[, scale])`.
    fn index_add(
        &self,
        buf: Dense<B>,
        ids: Local<B>,
        src: Dense<B>,
        scale: Option<Dense<B>>,
    ) -> OpResult<Dense<B>> {
        moe::index_add(buf, &host_ints(ids)?, src, scale)
    }

    /// A seeded weight block made on `device`, or `None` to have the host make it (the
    /// default). An implementation must give bit for bit the host's values rounded to `B`'s
    /// float type.
    fn seeded(&self, _block: &SeededBlock<'_>, _device: &B::Device) -> OpResult<Option<Dense<B>>> {
        Ok(None)
    }
}

/// Every op in burn tensor ops: the defaults of [`Compute`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Burn;

impl<B: Backend> Compute<B> for Burn {}
