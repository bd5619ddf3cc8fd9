//! Attention against hand-computed cases: masks, scaling, GQA and sinks, RoPE pairings and
//! scalings, query/key norms, temperatures, clipping.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::testing::{assert_close, dense, max_abs_diff, Cpu};
use moe_ir::{RopePairs, F64};

fn attrs(heads: u64, kv_heads: u64, d: u64, seq: u64, mask: Mask) -> AttentionAttrs {
    AttentionAttrs {
        heads,
        kv_heads,
        head_dim: d,
        v_head_dim: d,
        rope_dim: 0,
        shared_k_dim: 0,
        rope_theta: F64(10_000.0),
        rope_pairs: RopePairs::Halves,
        rope_scaling: None,
        qk_norm_eps: None,
        query_temperature: None,
        clip_qkv: None,
        softmax_scale: None,
        position_bias: None,
        seq,
        kv_seq: seq,
        mask,
        sinks: false,
    }
}

/// [`super::attention`] with burn's batched matmul.
fn attention(
    a: &AttentionAttrs,
    q: Dense<Cpu>,
    k: Dense<Cpu>,
    v: Dense<Cpu>,
    ks: Option<Dense<Cpu>>,
    sinks: Option<Dense<Cpu>>,
    heads: Heads,
) -> OpResult<Dense<Cpu>> {
    super::attention(a, q, k, v, ks, sinks, heads, &|x, y| Ok(x.matmul(y)))
}

const ALL: Heads = Heads {
    first_head: 0,
    first_kv_head: 0,
};

#[test]
fn causal_attention_averages_visible_values() {
    // One head of width 1, q = k = 0: uniform weights over visible keys.
    let a = attrs(1, 1, 1, 3, Mask::Causal);
    let z = dense(&[0., 0., 0.], &[3, 1]);
    let v = dense(&[3., 6., 9.], &[3, 1]);
    let y = attention(&a, z.clone(), z.clone(), v.clone(), None, None, ALL).unwrap();
    assert_close(&y.to_host(), &[3., 4.5, 6.], 1e-6);
    let a = attrs(1, 1, 1, 3, Mask::Sliding(2));
    let y = attention(&a, z.clone(), z.clone(), v.clone(), None, None, ALL).unwrap();
    assert_close(&y.to_host(), &[3., 4.5, 7.5], 1e-6);
    let a = attrs(1, 1, 1, 3, Mask::Chunked(2));
    let y = attention(&a, z.clone(), z.clone(), v.clone(), None, None, ALL).unwrap();
    assert_close(&y.to_host(), &[3., 4.5, 9.], 1e-6);
    let a = attrs(1, 1, 1, 3, Mask::Full);
    let y = attention(&a, z.clone(), z, v, None, None, ALL).unwrap();
    assert_close(&y.to_host(), &[6., 6., 6.], 1e-6);
}

#[test]
fn clip_qkv_clamps_the_inputs() {
    // Full mask, zero scores: the output is the mean of the clamped values.
    let a = AttentionAttrs {
        clip_qkv: Some(F64(4.0)),
        softmax_scale: None,
        position_bias: None,
        ..attrs(1, 1, 1, 3, Mask::Full)
    };
    let z = dense(&[0., 0., 0.], &[3, 1]);
    let v = dense(&[3., 6., -9.], &[3, 1]);
    let y = attention(&a, z.clone(), z, v, None, None, ALL).unwrap();
    assert_close(&y.to_host(), &[1.; 3], 1e-6);
}

#[test]
fn scores_are_scaled_dot_products() {
    // Full mask, 2 keys, head_dim 1: q=2, k=(0, ln 3 * 1 / 2) -> weights 1:3 after scaling by 1.
    let a = attrs(1, 1, 1, 2, Mask::Full);
    let l3 = 3f64.ln();
    let q = dense(&[1., 1.], &[2, 1]);
    let k = dense(&[0., l3], &[2, 1]);
    let v = dense(&[0., 4.], &[2, 1]);
    let y = attention(&a, q, k, v, None, None, ALL).unwrap();
    assert_close(&y.to_host(), &[3., 3.], 1e-6);
}

#[test]
fn gqa_shares_kv_heads_and_sinks_take_mass() {
    // 2 query heads on 1 kv head; zero scores.
    let a = AttentionAttrs {
        sinks: true,
        ..attrs(2, 1, 1, 2, Mask::Full)
    };
    let q = dense(&[0.; 4], &[2, 2]);
    let k = dense(&[0., 0.], &[2, 1]);
    let v = dense(&[2., 4.], &[2, 1]);
    // Head 0 sink logit 0 (weights 1/3 each), head 1 sink -inf-ish (weights 1/2).
    let s = dense(&[0., -100.], &[2]);
    let y = attention(&a, q, k, v, None, Some(s), ALL).unwrap();
    assert_close(&y.to_host(), &[2., 3., 2., 3.], 1e-6);
}

#[test]
fn rope_rotates_by_position() {
    // head_dim 2 rotated with theta: position 1 rotates (1, 0) by 1 radian.
    let x = dense(&[1., 0., 1., 0.], &[1, 1, 2, 2]).t;
    let a = AttentionAttrs {
        rope_dim: 2,
        ..attrs(1, 1, 2, 2, Mask::Full)
    };
    let y = Dense::of(rope(x, &Rope::of(&a))).to_host();
    assert_close(&y, &[1., 0., 1f64.cos(), 1f64.sin()], 1e-6);
}

/// Rotate-half RoPE of one `d`-vector at position `p` by hand.
fn rotate(x: &[f64], p: f64, inv_freq: &[f64], scale: f64) -> Vec<f64> {
    let h = x.len() / 2;
    (0..x.len())
        .map(|i| {
            let (c, s) = ((p * inv_freq[i % h]).cos(), (p * inv_freq[i % h]).sin());
            let other = if i < h { -x[i + h] } else { x[i - h] };
            (x[i] * c + other * s) * scale
        })
        .collect()
}

#[test]
fn yarn_scales_frequencies_cos_sin_and_softmax() {
    use moe_ir::{RopeScaling, YarnScaling};
    // One head of width 8, all of it rotated, 3 positions, full mask.
    let yarn = YarnScaling {
        factor: F64(4.0),
        original_max_position_embeddings: 4096,
        beta_fast: F64(32.0),
        beta_slow: F64(1.0),
        mscale: F64(2.0),
        mscale_all_dim: F64(1.0),
        truncate: true,
    };
    let a = AttentionAttrs {
        rope_dim: 8,
        rope_scaling: Some(RopeScaling::Yarn(yarn)),
        ..attrs(1, 1, 8, 3, Mask::Full)
    };
    let q: Vec<f64> = (0..24).map(|i| (0.7 * i as f64).sin()).collect();
    let k: Vec<f64> = (0..24).map(|i| (1.3 * i as f64 + 0.5).cos()).collect();
    let v: Vec<f64> = (0..24).map(|i| 0.1 * i as f64 - 1.0).collect();
    let y = attention(
        &a,
        dense(&q, &[3, 8]),
        dense(&k, &[3, 8]),
        dense(&v, &[3, 8]),
        None,
        None,
        ALL,
    )
    .unwrap();
    // By hand (see rope.rs): frequencies 1, 0.1, 0.01 * (1/8 + 1/2), 0.001 / 4; m(s) =
    // 0.1 s ln 4 + 1; cos and sin times m(2) / m(1); softmax scale times m(1)^2.
    let m = |s: f64| 0.1 * s * 4f64.ln() + 1.0;
    let inv = [1.0, 0.1, 0.006_25, 0.000_25];
    let rq: Vec<Vec<f64>> = (0..3)
        .map(|p| rotate(&q[p * 8..p * 8 + 8], p as f64, &inv, m(2.0) / m(1.0)))
        .collect();
    let rk: Vec<Vec<f64>> = (0..3)
        .map(|p| rotate(&k[p * 8..p * 8 + 8], p as f64, &inv, m(2.0) / m(1.0)))
        .collect();
    let scale = m(1.0).powi(2) / 8f64.sqrt();
    let mut want = Vec::new();
    for qi in &rq {
        let logits: Vec<f64> = rk
            .iter()
            .map(|kj| qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() * scale)
            .collect();
        let z: f64 = logits.iter().map(|l| l.exp()).sum();
        for c in 0..8 {
            want.push((0..3).map(|j| logits[j].exp() / z * v[j * 8 + c]).sum());
        }
    }
    assert_close(&y.to_host(), &want, 1e-5);
    // Without the scaling the result differs.
    let plain = AttentionAttrs {
        rope_scaling: None,
        ..a
    };
    let y0 = attention(
        &plain,
        dense(&q, &[3, 8]),
        dense(&k, &[3, 8]),
        dense(&v, &[3, 8]),
        None,
        None,
        ALL,
    )
    .unwrap();
    let diff = max_abs_diff(&y0.to_host(), &want);
    assert!(diff > 1e-3, "{diff}");
}

/// Llama 4's `apply_rotary_emb` for one head at position `p`: `view_as_complex` of
/// `x.reshape(..., -1, 2)` (dims `2i, 2i + 1` are the real and imaginary part of number `i`)
/// times `freqs_cis[i] = polar(1, p * inv_freq[i])`, then `view_as_real(...).flatten`.
fn complex_rotate(x: &[f64], p: f64, inv_freq: &[f64]) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for (i, f) in inv_freq.iter().enumerate() {
        let (re, im) = (x[2 * i], x[2 * i + 1]);
        let (c, s) = ((p * f).cos(), (p * f).sin());
        out.push(re * c - im * s);
        out.push(re * s + im * c);
    }
    out
}

#[test]
fn interleaved_rope_turns_neighbours_not_halves() {
    // One head of width 4, all rotated, base 1e4: frequencies 1 and 0.01. Position 1 of
    // x = (1, 2, 3, 4).
    let x = dense(&[0., 0., 0., 0., 1., 2., 3., 4.], &[1, 1, 2, 4]).t;
    let a = AttentionAttrs {
        rope_dim: 4,
        ..attrs(1, 1, 4, 2, Mask::Full)
    };
    let (c1, s1, c2, s2) = (1f64.cos(), 1f64.sin(), 0.01f64.cos(), 0.01f64.sin());
    // Interleaved: (1, 2) turned by 1 radian, (3, 4) by 0.01.
    let inter = AttentionAttrs {
        rope_pairs: RopePairs::Interleaved,
        ..a
    };
    let y = Dense::of(rope(x.clone(), &Rope::of(&inter))).to_host();
    let want = [
        1. * c1 - 2. * s1,
        2. * c1 + 1. * s1,
        3. * c2 - 4. * s2,
        4. * c2 + 3. * s2,
    ];
    assert_close(&y[4..], &want, 1e-12);
    assert_close(
        &y[4..],
        &complex_rotate(&[1., 2., 3., 4.], 1.0, &[1.0, 0.01]),
        1e-12,
    );
    // Position 0 is not turned.
    assert_close(&y[..4], &[0.; 4], 0.0);
    // Halves: (1, 3) turned by 1 radian, (2, 4) by 0.01: another result.
    let y = Dense::of(rope(x, &Rope::of(&a))).to_host();
    let halves = [
        1. * c1 - 3. * s1,
        2. * c2 - 4. * s2,
        3. * c1 + 1. * s1,
        4. * c2 + 2. * s2,
    ];
    assert_close(&y[4..], &halves, 1e-12);
    let diff = max_abs_diff(&want, &halves);
    assert!(diff > 0.5, "{diff}");
}

#[test]
fn interleaved_rope_is_llama4_complex_rotation_on_partial_heads() {
    // head_dim 6, the last 4 rotated (the first 2 kept), 3 positions, base 100: the rotated
    // part of every position is Llama 4's complex rotation.
    let a = AttentionAttrs {
        rope_dim: 4,
        rope_theta: F64(100.0),
        rope_pairs: RopePairs::Interleaved,
        ..attrs(1, 1, 6, 3, Mask::Full)
    };
    let x: Vec<f64> = (0..18).map(|i| (0.9 * i as f64 + 0.3).sin()).collect();
    let y = Dense::of(rope(dense(&x, &[1, 1, 3, 6]).t, &Rope::of(&a))).to_host();
    for p in 0..3 {
        let row = &x[p * 6..p * 6 + 6];
        let mut want = row[..2].to_vec();
        want.extend(complex_rotate(&row[2..], p as f64, &[1.0, 0.1]));
        assert_close(&y[p * 6..p * 6 + 6], &want, 1e-12);
    }
}

/// DeepSeek-V3's `apply_rotary_pos_emb_interleave` moves the rotated dims
/// `view(..., d/2, 2).transpose(4, 3).reshape(..., d)` (evens first, then odds) and applies
/// rotate-half: the same rotation as `interleaved`, with the output dims permuted alike in
/// queries and keys, which dot products do not see.
fn deinterleave(x: &[f64], width: usize, rd: usize) -> Vec<f64> {
    x.chunks(width)
        .flat_map(|head| {
            let (keep, rot) = head.split_at(width - rd);
            let evens = rot.iter().step_by(2).copied();
            let odds = rot.iter().skip(1).step_by(2).copied();
            keep.iter()
                .copied()
                .chain(evens)
                .chain(odds)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn interleaved_attention_is_deepseeks_deinterleave_trick() {
    // MLA-like: 2 heads of width 6 = 2 per-head + 4 shared (rotated), 4 positions, causal.
    let a = AttentionAttrs {
        rope_dim: 4,
        shared_k_dim: 4,
        v_head_dim: 3,
        rope_theta: F64(50.0),
        ..attrs(2, 2, 6, 4, Mask::Causal)
    };
    let q: Vec<f64> = (0..48).map(|i| (0.37 * i as f64).sin()).collect();
    let k: Vec<f64> = (0..16).map(|i| (0.53 * i as f64 + 1.0).cos()).collect();
    let ks: Vec<f64> = (0..16).map(|i| (0.71 * i as f64 - 0.4).sin()).collect();
    let v: Vec<f64> = (0..24).map(|i| 0.2 * i as f64 - 2.0).collect();
    let run = |a: &AttentionAttrs, q: &[f64], ks: &[f64]| {
        attention(
            a,
            dense(q, &[4, 12]),
            dense(&k, &[4, 4]),
            dense(&v, &[4, 6]),
            Some(dense(ks, &[4, 4])),
            None,
            ALL,
        )
        .unwrap()
        .to_host()
    };
    let inter = AttentionAttrs {
        rope_pairs: RopePairs::Interleaved,
        ..a
    };
    let y = run(&inter, &q, &ks);
    let trick = run(&a, &deinterleave(&q, 6, 4), &deinterleave(&ks, 4, 4));
    assert_close(&y, &trick, 1e-12);
    let halves = run(&a, &q, &ks);
    let diff = max_abs_diff(&y, &halves);
    assert!(diff > 1e-3, "interleaved and halves agree: {diff}");
}

#[test]
fn qk_norm_and_temperature_by_hand() {
    // One head of width 4, all rotated (interleaved), 4 positions, causal. Queries and keys
    // are RMS-normalized after RoPE (eps 1e-5), then query p is multiplied by
    // 1 + 0.5 ln(1 + floor((p + 1) / 2)): 1, 1 + 0.5 ln 2, 1 + 0.5 ln 2, 1 + 0.5 ln 3.
    let t = QueryTemperature {
        floor_scale: F64(2.0),
        attn_scale: F64(0.5),
    };
    let a = AttentionAttrs {
        rope_dim: 4,
        rope_pairs: RopePairs::Interleaved,
        qk_norm_eps: Some(F64(1e-5)),
        query_temperature: Some(t),
        clip_qkv: None,
        softmax_scale: None,
        position_bias: None,
        ..attrs(1, 1, 4, 4, Mask::Causal)
    };
    let q: Vec<f64> = (0..16).map(|i| 2.0 * (0.7 * i as f64).sin()).collect();
    let k: Vec<f64> = (0..16)
        .map(|i| 3.0 * (1.3 * i as f64 + 0.5).cos())
        .collect();
    let v: Vec<f64> = (0..16).map(|i| 0.1 * i as f64 - 1.0).collect();
    let run = |a: &AttentionAttrs| {
        attention(
            a,
            dense(&q, &[4, 4]),
            dense(&k, &[4, 4]),
            dense(&v, &[4, 4]),
            None,
            None,
            ALL,
        )
        .unwrap()
        .to_host()
    };
    let inv = [1.0, 0.01];
    let rms = |x: Vec<f64>| {
        let ms = x.iter().map(|e| e * e).sum::<f64>() / x.len() as f64;
        x.iter()
            .map(|e| e / (ms + 1e-5).sqrt())
            .collect::<Vec<f64>>()
    };
    let factor = [
        1.0,
        1.0 + 0.5 * 2f64.ln(),
        1.0 + 0.5 * 2f64.ln(),
        1.0 + 0.5 * 3f64.ln(),
    ];
    let reference = |norm: bool, temp: bool| {
        let rq: Vec<Vec<f64>> = (0..4)
            .map(|p| {
                let r = complex_rotate(&q[p * 4..p * 4 + 4], p as f64, &inv);
                let r = if norm { rms(r) } else { r };
                let f = if temp { factor[p] } else { 1.0 };
                r.iter().map(|e| e * f).collect()
            })
            .collect();
        let rk: Vec<Vec<f64>> = (0..4)
            .map(|p| {
                let r = complex_rotate(&k[p * 4..p * 4 + 4], p as f64, &inv);
                if norm {
                    rms(r)
                } else {
                    r
                }
            })
            .collect();
        let mut out = Vec::new();
        for (i, qi) in rq.iter().enumerate() {
            let logits: Vec<f64> = rk[..=i]
                .iter()
                .map(|kj| qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() / 2.0)
                .collect();
            let z: f64 = logits.iter().map(|l| l.exp()).sum();
            for c in 0..4 {
                out.push((0..=i).map(|j| logits[j].exp() / z * v[j * 4 + c]).sum());
            }
        }
        out
    };
    assert_close(&run(&a), &reference(true, true), 1e-12);
    let no_temp = AttentionAttrs {
        query_temperature: None,
        clip_qkv: None,
        softmax_scale: None,
        position_bias: None,
        ..a
    };
    assert_close(&run(&no_temp), &reference(true, false), 1e-12);
    let no_norm = AttentionAttrs {
        qk_norm_eps: None,
        ..a
    };
    assert_close(&run(&no_norm), &reference(false, true), 1e-12);
    // Each changes the result.
    let plain = reference(false, false);
    for (got, what) in [
        (run(&a), "both"),
        (run(&no_temp), "norm"),
        (run(&no_norm), "temperature"),
    ] {
        let diff = max_abs_diff(&got, &plain);
        assert!(diff > 1e-3, "{what}: {diff}");
    }
}

#[test]
fn shared_key_is_appended_to_every_head() {
    // head_dim 2 = 1 per-head + 1 shared; 2 heads; full mask, seq 2.
    let a = AttentionAttrs {
        shared_k_dim: 1,
        v_head_dim: 1,
        ..attrs(2, 2, 2, 2, Mask::Full)
    };
    let q = dense(&[0., 1., 0., 0., 0., 1., 0., 0.], &[2, 4]);
    let k = dense(&[0., 0., 0., 0.], &[2, 2]);
    let ks = dense(&[0., 2f64.sqrt() * 3f64.ln()], &[2, 1]);
    let v = dense(&[0., 0., 4., 8.], &[2, 2]);
    let y = attention(&a, q, k, v, Some(ks), None, ALL).unwrap();
    // Head 0 scores (0, ln 3): weights 1/4, 3/4 -> 3; head 1 zero scores -> 4 (both tokens).
    assert_close(&y.to_host(), &[3., 4., 3., 4.], 1e-5);
}
