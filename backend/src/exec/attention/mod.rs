//! Scaled dot-product attention on one rank's heads: GQA, MLA's shared key part, RoPE, masks
//! (full, causal, sliding window, chunked) and per-head sinks.
//!
//! Conventions (documented in docs/BACKEND.md): scores are `q.k / sqrt(head_dim)`; RoPE turns
//! pairs of dims, `(a, b) -> (a cos - b sin, b cos + a sin)`, paired as `rope_pairs` says
//! (`halves`: dim `i` with `i + rope_dim/2`, transformers' "rotate half"; `interleaved`: `2i` with
//! `2i + 1`, the complex form of Llama 4 and DeepSeek), with frequencies `theta^(-2i/rope_dim)`
//! at positions `0..seq` of each sequence, applied to the last `rope_dim` dims of each query and
//! key head (with a shared key, the key head is its per-head part followed by the shared part);
//! then `qk_norm_eps` RMS-normalizes every query and key head (no weight) and
//! `query_temperature` multiplies each query by its position's factor; sinks add one logit per
//! head to the softmax's denominator only; `clip_qkv` clamps q, k and v first; `softmax_scale`
//! replaces `1/sqrt(head_dim)`; T5's `position_bias` adds a learned bias per head and relative
//! position bucket to the scores. `rope_scaling` changes the frequencies, scales cos and
//! sin, and (DeepSeek's YaRN) the softmax scale: see [`rope`].

pub(crate) mod rope;

use super::moe::Bmm;
use super::OpResult;
use crate::value::{Dense, Ints};
use burn::tensor::activation;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};
use moe_ir::{AttentionAttrs, Mask, QueryTemperature, RelativeBias};
use rope::Rope;

/// Which heads this rank holds: its query heads are `first_head..first_head + local heads`; its
/// kv-head block starts at `first_kv_head` (0 when keys and values are replicated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Heads {
    pub first_head: usize,
    pub first_kv_head: usize,
}

/// Logit of a masked key: finite, so that a fully masked row cannot make NaNs.
const MASKED: f32 = -1.0e30;

/// Whether the query at position `i` sees the key at position `j`.
fn visible(mask: Mask, i: usize, j: usize) -> bool {
    match mask {
        Mask::Full => true,
        Mask::Causal => j <= i,
        Mask::Sliding(w) => j <= i && i - j < w as usize,
        Mask::Chunked(c) => j <= i && i / c as usize == j / c as usize,
    }
}

/// The additive mask `[1, 1, seq, kv_seq]`: 0 where the query sees the key, [`MASKED`] (or a
/// multiple of it) elsewhere; `None` for a full mask. Causal and sliding masks are made on the
/// device from triangles; chunked masks on the host.
fn mask_bias<B: Backend>(
    mask: Mask,
    seq: usize,
    kv_seq: usize,
    device: &B::Device,
) -> Option<Tensor<B, 4>> {
    let above = || Tensor::<B, 2, Bool>::tril_mask([seq, kv_seq], 0, device).float();
    let bias = match mask {
        Mask::Full => return None,
        Mask::Causal => above() * MASKED,
        // Also masked: keys `w` or more positions back (`i - j >= w`).
        Mask::Sliding(w) => {
            let back = 1 - (w.min(i64::MAX as u64) as i64);
            let far = Tensor::<B, 2, Bool>::triu_mask([seq, kv_seq], back, device).float();
            (above() + far) * MASKED
        }
        Mask::Chunked(_) => {
            let mut bias = Vec::with_capacity(seq * kv_seq);
            for i in 0..seq {
                for j in 0..kv_seq {
                    bias.push(if visible(mask, i, j) { 0.0 } else { MASKED });
                }
            }
            return Some(Dense::<B>::from_f32(bias, &[1, 1, seq, kv_seq], device).t);
        }
    };
    Some(bias.reshape([1, 1, seq, kv_seq]))
}

/// Rotates the last `rd = 2 * r.inv_freq.len()` dims of `x` `[b, h, s, d]` by RoPE at positions
/// `0..s`: rotated dim `j` becomes `x[j] cos + sign * x[partner] sin` (see [`rope::Slot`]).
fn rope<B: Backend>(x: Tensor<B, 4>, r: &Rope) -> Tensor<B, 4> {
    let [b, h, s, d] = x.dims();
    let rd = 2 * r.inv_freq.len();
    if rd == 0 {
        return x;
    }
    let device = x.device();
    let slots = r.slots();
    let mut cos = Vec::with_capacity(s * rd);
    let mut sin = Vec::with_capacity(s * rd);
    for p in 0..s {
        for slot in &slots {
            let angle = p as f64 * r.inv_freq[slot.freq];
            cos.push(angle.cos() * r.cos_sin_scale);
            sin.push(slot.sign * angle.sin() * r.cos_sin_scale);
        }
    }
    let cos = Dense::<B>::from_host(cos, &[1, 1, s, rd], &device).t;
    let sin = Dense::<B>::from_host(sin, &[1, 1, s, rd], &device).t;
    let partner = slots.iter().map(|slot| slot.partner as i64).collect();
    let partner = Ints::new(vec![rd], partner).to_tensor::<B>(&device);
    let keep = (d > rd).then(|| x.clone().narrow(3, 0, d - rd));
    let r = x.narrow(3, d - rd, rd);
    let out = r.clone() * cos + r.select(3, partner) * sin;
    match keep {
        Some(keep) => Tensor::cat(vec![keep, out], 3).reshape([b, h, s, d]),
        None => out,
    }
}

/// Every head of `x` `[b, h, s, d]` divided by `sqrt(mean(x^2) + eps)` over its `d` dims (no
/// weight: Llama 4's `Llama4TextL2Norm`).
fn rms_heads<B: Backend>(x: Tensor<B, 4>, eps: f64) -> Tensor<B, 4> {
    let ms = x.clone().square().mean_dim(3);
    x / (ms + eps).sqrt()
}

/// `q` `[b, h, s, d]` with the query at position `p` multiplied by `t.factor(p)`.
fn temperature<B: Backend>(q: Tensor<B, 4>, t: &QueryTemperature) -> Tensor<B, 4> {
    let s = q.dims()[2];
    let factors = (0..s as u64).map(|p| t.factor(p)).collect();
    let factors = Dense::<B>::from_host(factors, &[1, 1, s, 1], &q.device()).t;
    q * factors
}

/// `[b * s, heads * d]` -> `[b, heads, s, d]`.
fn split_heads<B: Backend>(x: Dense<B>, s: usize, heads: usize) -> Tensor<B, 4> {
    let [rows, width] = x.shape()[..] else {
        unreachable!("attention inputs are rank 2 (typing rule)")
    };
    x.t.reshape([rows / s, s, heads, width / heads])
        .swap_dims(1, 2)
}

/// `attention(q, k, v[, k_shared][, sinks])` on this rank's heads; products through `bmm`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention<B: Backend>(
    a: &AttentionAttrs,
    q: Dense<B>,
    k: Dense<B>,
    v: Dense<B>,
    k_shared: Option<Dense<B>>,
    sinks: Option<Dense<B>>,
    heads: Heads,
    bmm: Bmm<'_, B>,
) -> OpResult<Dense<B>> {
    attention_with(a, q, k, v, k_shared, sinks, None, heads, bmm)
}

/// The bias `[1, local heads, seq, kv_seq]` of T5's relative positions: `table[bucket(j - i),
/// h]` for this rank's heads `first..first + local`.
fn position_bias<B: Backend>(
    b: &RelativeBias,
    table: Dense<B>,
    seq: usize,
    kv_seq: usize,
    first: usize,
    local: usize,
) -> Tensor<B, 4> {
    let device = table.t.device();
    let mut idx = Vec::with_capacity(seq * kv_seq);
    for i in 0..seq {
        for j in 0..kv_seq {
            idx.push(b.bucket(j as i64 - i as i64) as i64);
        }
    }
    let idx = Ints::new(vec![seq * kv_seq], idx).to_tensor::<B>(&device);
    let rows = table.to::<2>().select(0, idx).narrow(1, first, local);
    rows.reshape([seq, kv_seq, local])
        .permute([2, 0, 1])
        .reshape([1, local, seq, kv_seq])
}

/// [`attention`] with T5's position bias `table` (`[buckets, heads]`, when `a.position_bias`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_with<B: Backend>(
    a: &AttentionAttrs,
    q: Dense<B>,
    k: Dense<B>,
    v: Dense<B>,
    k_shared: Option<Dense<B>>,
    sinks: Option<Dense<B>>,
    table: Option<Dense<B>>,
    heads: Heads,
    bmm: Bmm<'_, B>,
) -> OpResult<Dense<B>> {
    let (seq, kv_seq) = (a.seq as usize, a.kv_seq as usize);
    let hd = a.head_dim as usize;
    let vd = a.v_head_dim as usize;
    let rd = a.rope_dim as usize;
    if rd % 2 != 0 {
        return Err(format!("rope_dim {rd} must be even"));
    }
    let hl = q.shape()[1] / hd;
    let kvl = v.shape()[1] / vd;
    let group = (a.heads / a.kv_heads) as usize;
    let device = q.t.device();
    let clip = |x: Dense<B>| match a.clip_qkv {
        Some(c) => Dense {
            t: x.t.clamp(-c.0, c.0),
            rank: x.rank,
        },
        None => x,
    };
    let (q, k, v, k_shared) = (clip(q), clip(k), clip(v), k_shared.map(clip));
    let rot = Rope::of(a);
    let mut q = rope(split_heads(q, seq, hl), &rot);
    let mut k = split_heads(k, kv_seq, kvl);
    if let Some(ks) = k_shared {
        let [b, _, s, _] = k.dims();
        let ks = split_heads(ks, kv_seq, 1);
        let sd = ks.dims()[3];
        k = Tensor::cat(vec![k, ks.expand([b, kvl, s, sd])], 3);
    }
    let mut k = rope(k, &rot);
    if let Some(eps) = a.qk_norm_eps {
        q = rms_heads(q, eps.0);
        k = rms_heads(k, eps.0);
    }
    if let Some(t) = &a.query_temperature {
        q = temperature(q, t);
    }
    let v = split_heads(v, kv_seq, kvl);
    // The kv head of each local query head.
    let mut kv_of = Vec::with_capacity(hl);
    for h in 0..hl {
        let kv = (heads.first_head + h) / group;
        let local = kv
            .checked_sub(heads.first_kv_head)
            .filter(|&l| l < kvl)
            .ok_or_else(|| {
                format!(
                    "query head {} needs kv head {kv}, which this rank does not hold",
                    heads.first_head + h
                )
            })?;
        kv_of.push(local as i64);
    }
    let kv_of = Ints::new(vec![hl], kv_of).to_tensor::<B>(&device);
    let k = k.select(1, kv_of.clone());
    let v = v.select(1, kv_of);
    let b = q.dims()[0];
    let scale = match a.softmax_scale {
        Some(s) => s.0,
        None => rope::softmax_scale(a) / (hd as f64).sqrt(),
    };
    let flat = |t: Tensor<B, 4>| {
        let [b, h, s, d] = t.dims();
        t.reshape([b * h, s, d])
    };
    let scores = bmm(flat(q), flat(k.swap_dims(2, 3)))?;
    let mut scores: Tensor<B, 4> = scores.reshape([b, hl, seq, kv_seq]) * scale;
    if let (Some(b), Some(t)) = (&a.position_bias, table) {
        scores = scores + position_bias(b, t, seq, kv_seq, heads.first_head, hl);
    }
    if let Some(bias) = mask_bias::<B>(a.mask, seq, kv_seq, &device) {
        scores = scores + bias;
    }
    let p = match sinks {
        None => activation::softmax(scores, 3),
        Some(s) => {
            let sink = s.t.reshape([1, hl, 1, 1]).expand([b, hl, seq, 1]);
            activation::softmax(Tensor::cat(vec![scores, sink], 3), 3).narrow(3, 0, kv_seq)
        }
    };
    let out = bmm(flat(p), flat(v))?.reshape([b, hl, seq, vd]);
    let out = out.swap_dims(1, 2).reshape([b * seq, hl * vd]);
    Ok(Dense::of(out))
}

#[cfg(test)]
mod tests;
