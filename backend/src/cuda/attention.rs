//! Attention on the CUDA seam (bf16): RoPE as one kernel per operand, then, for heads of 64 or 128
//! (q, k and v alike), one fused flash-style kernel (`attention.cu`: scores never leave the chip).
//! Other head shapes take the materialised path: the two products as
//! strided batched cuBLAS GEMMs that read the heads in place (no transposes: a head is a column
//! block of `[tokens, heads * d]`; one GEMM per head, batched over the sequences), the scores in
//! fp32, and one masked-softmax kernel (mask from indices, sinks in the denominator) writing
//! bf16 probabilities. The output lands in `[tokens, heads * v_dim]` directly.
//!
//! Computes what `exec::attention::attention` computes, with one rounding per step instead of
//! one per burn op. Shapes it does not take (MLA's shared key part, per-head q/k norms, query
//! temperature, clip_qkv, T5's position bias) are left to that default.

use super::attn_ops::{FlashArgs, SoftmaxArgs};
use super::blas::{Elem, Operand};
use super::buffer::{empty, empty_int, Cuda, Prim};
use super::compute::Runtime;
use super::error::CudaError;
use super::ops::Ops;
use crate::exec::attention::{rope, Heads};
use crate::exec::OpResult;
use crate::value::Dense;
use burn::tensor::{Int, Tensor, TensorData};
use burn_cubecl::FloatElement;
use moe_ir::{AttentionAttrs, Mask};

/// Whether the CUDA path takes `a` (else the default runs).
pub(super) fn takes(a: &AttentionAttrs, k_shared: bool) -> bool {
    !k_shared
        && a.qk_norm_eps.is_none()
        && a.query_temperature.is_none()
        && a.clip_qkv.is_none()
        && a.position_bias.is_none()
        && a.rope_dim % 2 == 0
}

/// `attention(q, k, v[, sinks])` on this rank's heads (see the module docs).
#[allow(clippy::too_many_arguments)]
pub(super) fn attention<F: FloatElement>(
    rt: &Runtime,
    a: &AttentionAttrs,
    q: Dense<Cuda<F>>,
    k: Dense<Cuda<F>>,
    v: Dense<Cuda<F>>,
    sinks: Option<Dense<Cuda<F>>>,
    heads: Heads,
) -> OpResult<Dense<Cuda<F>>> {
    let (seq, kv) = (a.seq as usize, a.kv_seq as usize);
    let (hd, vd, rd) = (
        a.head_dim as usize,
        a.v_head_dim as usize,
        a.rope_dim as usize,
    );
    let ([rows, qw], [krows, kw], [_, vw]) = (dims2(&q)?, dims2(&k)?, dims2(&v)?);
    let (hl, kvl) = (qw / hd.max(1), vw / vd.max(1));
    if hl * hd != qw || kvl * hd != kw || seq == 0 || kv == 0 || rows % seq != 0 {
        return Err(format!(
            "attention shapes q [{rows}, {qw}], k [{krows}, {kw}], v [.., {vw}] for {hl} heads of {hd}"
        ));
    }
    let b = rows / seq;
    if krows != b * kv {
        return Err(format!("{krows} key rows for {b} sequences of {kv}"));
    }
    let group = (a.heads / a.kv_heads.max(1)) as usize;
    let kv_of = (0..hl)
        .map(|h| {
            let g = (heads.first_head + h) / group.max(1);
            g.checked_sub(heads.first_kv_head)
                .filter(|&l| l < kvl)
                .ok_or_else(|| {
                    format!(
                        "query head {} needs kv head {g}, which this rank does not hold",
                        heads.first_head + h
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let device = q.t.device();
    let rot = rope::Rope::of(a);
    let scale = match a.softmax_scale {
        Some(s) => s.0 as f32,
        None => (rope::softmax_scale(a) / (hd as f64).sqrt()) as f32,
    };
    // RoPE'd copies of q and k (the inputs may have other readers).
    let (pq, pk) = (Prim::float(q.to::<2>()), Prim::float(k.to::<2>()));
    let (qr, kr) = if rd > 0 {
        let bits: Vec<i32> = rot
            .inv_freq
            .iter()
            .map(|&f| (f as f32).to_bits() as i32)
            .collect();
        let n = bits.len();
        let freq = Prim::int(Tensor::<Cuda<F>, 1, Int>::from_data(
            TensorData::new(bits, [n]),
            &device,
        ));
        let qr = empty::<F, 2>([rows, qw], &device);
        let kr = empty::<F, 2>([krows, kw], &device);
        let interleaved = rot.pairs == moe_ir::RopePairs::Interleaved;
        let cs = rot.cos_sin_scale as f32;
        let fb = freq.borrow().map_err(err)?;
        rt.ops
            .rope(
                &qr.borrow().map_err(err)?,
                &pq.borrow().map_err(err)?,
                &fb,
                rows,
                hl,
                hd,
                rd,
                seq,
                interleaved,
                cs,
            )
            .map_err(err)?;
        rt.ops
            .rope(
                &kr.borrow().map_err(err)?,
                &pk.borrow().map_err(err)?,
                &fb,
                krows,
                kvl,
                hd,
                rd,
                kv,
                interleaved,
                cs,
            )
            .map_err(err)?;
        (qr, kr)
    } else {
        (pq, pk)
    };
    let pv = Prim::float(v.to::<2>());
    let (mask, w) = match a.mask {
        Mask::Full => (0, 0),
        Mask::Causal => (1, 0),
        Mask::Sliding(w) => (2, w as usize),
        Mask::Chunked(c) => (3, c as usize),
    };
    let sinks = sinks.map(|s| Prim::float(s.to::<1>()));
    if fused_enabled() && Ops::flash_takes(hd, vd) {
        let out = empty::<F, 2>([rows, hl * vd], &device);
        let sk = sinks.as_ref().map(Prim::borrow).transpose().map_err(err)?;
        rt.ops
            .flash(
                &out.borrow().map_err(err)?,
                &qr.borrow().map_err(err)?,
                &kr.borrow().map_err(err)?,
                &pv.borrow().map_err(err)?,
                sk.as_ref(),
                FlashArgs {
                    b,
                    seq,
                    kv,
                    heads: hl,
                    kv_heads: kvl,
                    d: hd,
                    first_head: heads.first_head,
                    group: group.max(1),
                    first_kv_head: heads.first_kv_head,
                    scale,
                    mask,
                    w,
                },
            )
            .map_err(err)?;
        return Ok(Dense::of(out.into_float::<F, 2>([rows, hl * vd])));
    }
    // fp32 scores in an i32-typed buffer (4-byte elements whatever burn's float type).
    let scores = empty_int::<F>(b * hl * seq * kv, &device);
    let probs = empty::<F, 1>([b * hl * seq * kv], &device);
    let out = empty::<F, 2>([rows, hl * vd], &device);
    let (qb, kb, vb) = (
        qr.borrow().map_err(err)?,
        kr.borrow().map_err(err)?,
        pv.borrow().map_err(err)?,
    );
    let (sb, pb, ob) = (
        scores.borrow().map_err(err)?,
        probs.borrow().map_err(err)?,
        out.borrow().map_err(err)?,
    );
    // One batched GEMM per local head, batched over the sequences (uniform strides).
    for (h, &g) in kv_of.iter().enumerate() {
        rt.blas
            .gemm_cm(
                Elem::Bf16,
                Elem::F32,
                (kv, seq, hd),
                b,
                scale,
                Operand {
                    buf: &kb.at(g * hd).map_err(err)?,
                    ld: kvl * hd,
                    stride: kv * kvl * hd,
                    trans: true,
                },
                Operand {
                    buf: &qb.at(h * hd).map_err(err)?,
                    ld: hl * hd,
                    stride: seq * hl * hd,
                    trans: false,
                },
                Operand {
                    buf: &sb.at(h * seq * kv).map_err(err)?,
                    ld: kv,
                    stride: hl * seq * kv,
                    trans: false,
                },
            )
            .map_err(err)?;
    }
    let sk = sinks.as_ref().map(Prim::borrow).transpose().map_err(err)?;
    rt.ops
        .softmax_rows(
            &pb,
            &sb,
            sk.as_ref(),
            SoftmaxArgs {
                rows: b * hl * seq,
                seq,
                kv,
                heads: hl,
                mask,
                w,
            },
        )
        .map_err(err)?;
    for (h, &g) in kv_of.iter().enumerate() {
        rt.blas
            .gemm_cm(
                Elem::Bf16,
                Elem::Bf16,
                (vd, seq, kv),
                b,
                1.0,
                Operand {
                    buf: &vb.at(g * vd).map_err(err)?,
                    ld: kvl * vd,
                    stride: kv * kvl * vd,
                    trans: false,
                },
                Operand {
                    buf: &pb.at(h * seq * kv).map_err(err)?,
                    ld: kv,
                    stride: hl * seq * kv,
                    trans: false,
                },
                Operand {
                    buf: &ob.at(h * vd).map_err(err)?,
                    ld: hl * vd,
                    stride: seq * hl * vd,
                    trans: false,
                },
            )
            .map_err(err)?;
    }
    Ok(Dense::of(out.into_float::<F, 2>([rows, hl * vd])))
}

fn dims2<F: FloatElement>(d: &Dense<Cuda<F>>) -> OpResult<[usize; 2]> {
    match d.shape()[..] {
        [r, c] => Ok([r, c]),
        _ => Err("attention inputs must have rank 2".into()),
    }
}

fn err(e: CudaError) -> String {
    e.to_string()
}

/// Whether attention takes the fused kernel where it can (default) rather than the unfused
/// cuBLAS + softmax-kernel path (`MOE_OPT_ATTENTION=unfused`, to compare the two on one binary).
fn fused_enabled() -> bool {
    static FUSED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FUSED.get_or_init(|| std::env::var("MOE_OPT_ATTENTION").map_or(true, |v| v != "unfused"))
}
