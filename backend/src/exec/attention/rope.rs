//! RoPE frequencies and scales: plain, linear scaling and DeepSeek's YaRN, as
//! [`moe_ir::RopeScaling`] defines them (DeepSeek's `DeepseekV3YarnRotaryEmbedding` and
//! attention). Computed in f64 on the host.

use moe_ir::{AttentionAttrs, RopeScaling, YarnScaling};
use std::f64::consts::PI;

/// The rotation of one attention op: `angle(p, i) = p * inv_freq[i]` for position `p` and
/// frequency `i < rope_dim / 2`; cos and sin are multiplied by `cos_sin_scale`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Rope {
    pub inv_freq: Vec<f64>,
    pub cos_sin_scale: f64,
}

impl Rope {
    /// The rotation of `a` (`rope_dim` even and positive).
    pub fn of(a: &AttentionAttrs) -> Rope {
        let d = a.rope_dim as usize;
        let base = a.rope_theta.0;
        let plain: Vec<f64> = (0..d / 2)
            .map(|i| base.powf(-2.0 * i as f64 / d as f64))
            .collect();
        match a.rope_scaling {
            None => Rope {
                inv_freq: plain,
                cos_sin_scale: 1.0,
            },
            Some(RopeScaling::Linear { factor }) => Rope {
                inv_freq: plain.iter().map(|f| f / factor.0).collect(),
                cos_sin_scale: 1.0,
            },
            Some(RopeScaling::Yarn(y)) => {
                let (low, high) = correction_range(&y, d, base);
                let inv_freq = plain
                    .iter()
                    .enumerate()
                    .map(|(i, &f)| {
                        let r = ramp(low, high, i);
                        f / y.factor.0 * r + f * (1.0 - r)
                    })
                    .collect();
                Rope {
                    inv_freq,
                    cos_sin_scale: mscale(y.factor.0, y.mscale.0)
                        / mscale(y.factor.0, y.mscale_all_dim.0),
                }
            }
        }
    }
}

/// What the softmax scale `1 / sqrt(head_dim)` of `a` is multiplied by: `m(mscale_all_dim)^2`
/// under YaRN, else 1.
pub(crate) fn softmax_scale(a: &AttentionAttrs) -> f64 {
    match a.rope_scaling {
        Some(RopeScaling::Yarn(y)) => mscale(y.factor.0, y.mscale_all_dim.0).powi(2),
        _ => 1.0,
    }
}

/// YaRN's attention scale `m(s)`: 1 when `factor <= 1`, else `0.1 s ln(factor) + 1`.
fn mscale(factor: f64, s: f64) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        0.1 * s * factor.ln() + 1.0
    }
}

/// The dimension (of `d`) whose frequency turns `rotations` times over the original context.
fn correction_dim(rotations: f64, d: usize, base: f64, original: u64) -> f64 {
    d as f64 * (original as f64 / (rotations * 2.0 * PI)).ln() / (2.0 * base.ln())
}

/// `(low, high)`: frequencies below `low` keep their value, from `high` on they are interpolated.
fn correction_range(y: &YarnScaling, d: usize, base: f64) -> (f64, f64) {
    let o = y.original_max_position_embeddings;
    let low = correction_dim(y.beta_fast.0, d, base, o).floor().max(0.0);
    let high = correction_dim(y.beta_slow.0, d, base, o)
        .ceil()
        .min(d as f64 - 1.0);
    (low, high)
}

/// The linear ramp from 0 at `low` to 1 at `high`, clamped (`high` raised by 0.001 when equal).
fn ramp(low: f64, high: f64, i: usize) -> f64 {
    let high = if low == high { high + 0.001 } else { high };
    ((i as f64 - low) / (high - low)).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use moe_ir::{Mask, F64};

    fn attrs(rope_dim: u64, scaling: Option<RopeScaling>) -> AttentionAttrs {
        AttentionAttrs {
            heads: 1,
            kv_heads: 1,
            head_dim: rope_dim,
            v_head_dim: rope_dim,
            rope_dim,
            shared_k_dim: 0,
            rope_theta: F64(10_000.0),
            rope_scaling: scaling,
            seq: 1,
            kv_seq: 1,
            mask: Mask::Full,
            sinks: false,
        }
    }

    fn yarn(factor: f64, mscale: f64, mscale_all_dim: f64) -> YarnScaling {
        YarnScaling {
            factor: F64(factor),
            original_max_position_embeddings: 4096,
            beta_fast: F64(32.0),
            beta_slow: F64(1.0),
            mscale: F64(mscale),
            mscale_all_dim: F64(mscale_all_dim),
        }
    }

    fn close(a: &[f64], b: &[f64]) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x - y).abs() <= 1e-12 * y.abs().max(1e-300),
                "{a:?} vs {b:?}"
            );
        }
    }

    #[test]
    fn yarn_frequencies_by_hand() {
        // d = 8, base 1e4: plain frequencies 1, 0.1, 0.01, 0.001. Correction dims:
        // 8 ln(4096 / 64 pi) / (2 ln 1e4) = 1.31 -> low 1; 8 ln(4096 / 2 pi) / (2 ln 1e4) = 2.81
        // -> high 3. Ramp over i = 0..4: 0, 0, 0.5, 1. Factor 4: 1, 0.1, 0.01 (1/8 + 1/2),
        // 0.001 / 4.
        let r = Rope::of(&attrs(8, Some(RopeScaling::Yarn(yarn(4.0, 1.0, 0.0)))));
        close(&r.inv_freq, &[1.0, 0.1, 0.006_25, 0.000_25]);
        // m(1) / m(0) = 0.1 ln 4 + 1; no softmax rescale without mscale_all_dim.
        close(&[r.cos_sin_scale], &[0.1 * 4f64.ln() + 1.0]);
        assert_eq!(
            softmax_scale(&attrs(8, Some(RopeScaling::Yarn(yarn(4.0, 1.0, 0.0))))),
            1.0
        );
    }

    #[test]
    fn deepseek_v3_scales() {
        // DeepSeek-V3: factor 40, mscale = mscale_all_dim = 1: cos/sin unscaled, softmax scale
        // times (0.1 ln 40 + 1)^2.
        let a = attrs(64, Some(RopeScaling::Yarn(yarn(40.0, 1.0, 1.0))));
        assert_eq!(Rope::of(&a).cos_sin_scale, 1.0);
        close(&[softmax_scale(&a)], &[(0.1 * 40f64.ln() + 1.0).powi(2)]);
        // A factor of at most 1 changes no scale.
        let a = attrs(64, Some(RopeScaling::Yarn(yarn(1.0, 1.0, 0.707))));
        assert_eq!((Rope::of(&a).cos_sin_scale, softmax_scale(&a)), (1.0, 1.0));
    }

    /// DeepSeek's Python (`yarn_find_correction_range`, `yarn_linear_ramp_mask`, the blend of
    /// `freq_inter` and `freq_extra`), transliterated step by step.
    fn reference(d: usize, base: f64, y: &YarnScaling) -> Vec<f64> {
        let dim = |rot: f64| {
            (d as f64 * (y.original_max_position_embeddings as f64 / (rot * 2.0 * PI)).ln())
                / (2.0 * base.ln())
        };
        let low = (dim(y.beta_fast.0).floor() as i64).max(0) as f64;
        let high = (dim(y.beta_slow.0).ceil() as i64).min(d as i64 - 1) as f64;
        let max = if low == high { high + 0.001 } else { high };
        (0..d / 2)
            .map(|i| {
                let extra = 1.0 / base.powf((2 * i) as f64 / d as f64);
                let inter = 1.0 / (y.factor.0 * base.powf((2 * i) as f64 / d as f64));
                let ramp = ((i as f64 - low) / (max - low)).clamp(0.0, 1.0);
                let mask = 1.0 - ramp;
                inter * (1.0 - mask) + extra * mask
            })
            .collect()
    }

    #[test]
    fn yarn_matches_deepseeks_reference() {
        for (d, y) in [
            (64, yarn(40.0, 1.0, 1.0)),
            (64, yarn(40.0, 0.707, 0.707)),
            (16, yarn(8.0, 1.0, 0.0)),
            (
                32,
                YarnScaling {
                    original_max_position_embeddings: 512,
                    beta_fast: F64(4.0),
                    beta_slow: F64(2.0),
                    ..yarn(16.0, 1.0, 0.0)
                },
            ),
        ] {
            let r = Rope::of(&attrs(d as u64, Some(RopeScaling::Yarn(y))));
            close(&r.inv_freq, &reference(d, 10_000.0, &y));
        }
    }

    #[test]
    fn linear_divides_frequencies() {
        let r = Rope::of(&attrs(4, Some(RopeScaling::Linear { factor: F64(2.0) })));
        close(&r.inv_freq, &[0.5, 0.005]);
        let plain = Rope::of(&attrs(4, None));
        close(&plain.inv_freq, &[1.0, 0.01]);
        assert_eq!(plain.cos_sin_scale, 1.0);
    }
}
