//! RoPE frequencies, scales and pairing: plain, linear scaling, YaRN (DeepSeek's and
//! transformers' generic one, with or without `truncate`) and Llama 3's band-wise scaling, as
//! [`moe_ir::RopeScaling`] defines them; dims paired as [`moe_ir::RopePairs`] says. Computed in
//! f64 on the host.

use moe_ir::{AttentionAttrs, Llama3Scaling, RopePairs, RopeScaling, YarnScaling};
use std::f64::consts::PI;

/// The rotation of one attention op: `angle(p, i) = p * inv_freq[i]` for position `p` and
/// frequency `i < rope_dim / 2`; cos and sin are multiplied by `cos_sin_scale`; `pairs` says
/// which two dims each frequency turns.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Rope {
    pub inv_freq: Vec<f64>,
    pub cos_sin_scale: f64,
    pub pairs: RopePairs,
}

/// What one rotated dim `j` of a head becomes: `x[j] cos(p f[freq]) + sign * x[partner] sin(p
/// f[freq])`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Slot {
    pub freq: usize,
    pub partner: usize,
    pub sign: f64,
}

impl Rope {
    /// The rotation of `a` (`rope_dim` even and positive).
    pub fn of(a: &AttentionAttrs) -> Rope {
        let d = a.rope_dim as usize;
        let base = a.rope_theta.0;
        let plain: Vec<f64> = (0..d / 2)
            .map(|i| base.powf(-2.0 * i as f64 / d as f64))
            .collect();
        let (inv_freq, cos_sin_scale) = match a.rope_scaling {
            None => (plain, 1.0),
            Some(RopeScaling::Linear { factor }) => {
                (plain.iter().map(|f| f / factor.0).collect(), 1.0)
            }
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
                (
                    inv_freq,
                    mscale(y.factor.0, y.mscale.0) / mscale(y.factor.0, y.mscale_all_dim.0),
                )
            }
            Some(RopeScaling::Llama3(l)) => (plain.iter().map(|&f| llama3(&l, f)).collect(), 1.0),
        };
        Rope {
            inv_freq,
            cos_sin_scale,
            pairs: a.rope_pairs,
        }
    }

    /// The slot of every rotated dim `j < 2 * inv_freq.len()`, in order.
    pub fn slots(&self) -> Vec<Slot> {
        let half = self.inv_freq.len();
        (0..2 * half)
            .map(|j| match self.pairs {
                // (j, j + half) for j < half.
                RopePairs::Halves if j < half => Slot {
                    freq: j,
                    partner: j + half,
                    sign: -1.0,
                },
                RopePairs::Halves => Slot {
                    freq: j - half,
                    partner: j - half,
                    sign: 1.0,
                },
                // (2i, 2i + 1).
                RopePairs::Interleaved => Slot {
                    freq: j / 2,
                    partner: j ^ 1,
                    sign: if j % 2 == 0 { -1.0 } else { 1.0 },
                },
            })
            .collect()
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

/// `(low, high)`: frequencies below `low` keep their value, from `high` on they are interpolated;
/// rounded outwards to whole dims when `truncate`.
fn correction_range(y: &YarnScaling, d: usize, base: f64) -> (f64, f64) {
    let o = y.original_max_position_embeddings;
    let mut low = correction_dim(y.beta_fast.0, d, base, o);
    let mut high = correction_dim(y.beta_slow.0, d, base, o);
    if y.truncate {
        low = low.floor();
        high = high.ceil();
    }
    (low.max(0.0), high.min(d as f64 - 1.0))
}

/// The linear ramp from 0 at `low` to 1 at `high`, clamped (`high` raised by 0.001 when equal).
fn ramp(low: f64, high: f64, i: usize) -> f64 {
    let high = if low == high { high + 0.001 } else { high };
    ((i as f64 - low) / (high - low)).clamp(0.0, 1.0)
}

/// Llama 3's scaling of one plain inverse frequency `f` (see [`Llama3Scaling`]).
fn llama3(l: &Llama3Scaling, f: f64) -> f64 {
    let old = l.original_max_position_embeddings as f64;
    let (lo, hi) = (l.low_freq_factor.0, l.high_freq_factor.0);
    let wavelen = 2.0 * PI / f;
    if wavelen < old / hi {
        f
    } else if wavelen > old / lo {
        f / l.factor.0
    } else {
        let smooth = (old / wavelen - lo) / (hi - lo);
        (1.0 - smooth) * f / l.factor.0 + smooth * f
    }
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
            rope_pairs: RopePairs::Halves,
            rope_scaling: scaling,
            qk_norm_eps: None,
            query_temperature: None,
            clip_qkv: None,
            softmax_scale: None,
            position_bias: None,
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
            truncate: true,
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
    fn untruncated_yarn_frequencies_by_hand() {
        // As above without rounding (GPT-OSS's `truncate: false`): low = 1.309030, high =
        // 2.814180, ramp over i = 0..4: 0, 0, (2 - 1.309030) / 1.505150 = 0.459070, 1. The third
        // frequency is 0.01 (0.459070 / 4 + 0.540930) = 0.006556972 instead of 0.00625.
        let y = YarnScaling {
            truncate: false,
            ..yarn(4.0, 1.0, 0.0)
        };
        let r = Rope::of(&attrs(8, Some(RopeScaling::Yarn(y))));
        let want = [1.0, 0.1, 0.006_556_971_521_129_435, 0.000_25];
        for (got, want) in r.inv_freq.iter().zip(want) {
            assert!((got - want).abs() < 1e-15, "{:?}", r.inv_freq);
        }
        // transformers' get_mscale(4) = 0.1 ln 4 + 1 = 1.138629.
        assert!((r.cos_sin_scale - 1.138_629_436_111_989).abs() < 1e-15);
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

    /// transformers' `_compute_yarn_parameters` (the version with `truncate`), line by line:
    /// `(inv_freq, attention_factor)` for a config without `attention_factor`, `mscale` or
    /// `mscale_all_dim` (GPT-OSS's).
    fn hf_yarn(
        base: f64,
        dim: usize,
        factor: f64,
        beta_fast: f64,
        beta_slow: f64,
        original: f64,
        truncate: bool,
    ) -> (Vec<f64>, f64) {
        let get_mscale = |scale: f64, mscale: f64| {
            if scale <= 1.0 {
                1.0
            } else {
                0.1 * mscale * scale.ln() + 1.0
            }
        };
        let attention_factor = get_mscale(factor, 1.0);
        let find_correction_dim = |num_rotations: f64| {
            (dim as f64 * (original / (num_rotations * 2.0 * PI)).ln()) / (2.0 * base.ln())
        };
        let (mut low, mut high) = (
            find_correction_dim(beta_fast),
            find_correction_dim(beta_slow),
        );
        if truncate {
            low = low.floor();
            high = high.ceil();
        }
        let (low, mut high) = (low.max(0.0), high.min(dim as f64 - 1.0));
        // linear_ramp_factor(low, high, dim // 2)
        if low == high {
            high += 0.001;
        }
        let ramp: Vec<f64> = (0..dim / 2)
            .map(|i| ((i as f64 - low) / (high - low)).clamp(0.0, 1.0))
            .collect();
        let pos_freqs: Vec<f64> = (0..dim)
            .step_by(2)
            .map(|k| base.powf(k as f64 / dim as f64))
            .collect();
        let inv_freq = pos_freqs
            .iter()
            .zip(&ramp)
            .map(|(p, r)| {
                let extrapolation = 1.0 / p;
                let interpolation = 1.0 / (factor * p);
                let extrapolation_factor = 1.0 - r;
                interpolation * (1.0 - extrapolation_factor) + extrapolation * extrapolation_factor
            })
            .collect();
        (inv_freq, attention_factor)
    }

    #[test]
    fn yarn_matches_transformers_with_and_without_truncate() {
        // GPT-OSS: head_dim 64, rope_theta 150000, factor 32, beta 32 / 1, 4096, truncate false.
        for (d, base, truncate) in [
            (64, 150_000.0, false),
            (64, 150_000.0, true),
            (8, 1e4, false),
        ] {
            let y = YarnScaling {
                factor: F64(32.0),
                truncate,
                ..yarn(32.0, 1.0, 0.0)
            };
            let mut a = attrs(d as u64, Some(RopeScaling::Yarn(y)));
            a.rope_theta = F64(base);
            let r = Rope::of(&a);
            let (want, factor) = hf_yarn(base, d, 32.0, 32.0, 1.0, 4096.0, truncate);
            close(&r.inv_freq, &want);
            close(&[r.cos_sin_scale], &[factor]);
            assert_eq!(softmax_scale(&a), 1.0);
        }
        // truncate changes the frequencies in the ramp.
        let at = |truncate| {
            let mut a = attrs(
                64,
                Some(RopeScaling::Yarn(YarnScaling {
                    truncate,
                    ..yarn(32.0, 1.0, 0.0)
                })),
            );
            a.rope_theta = F64(150_000.0);
            Rope::of(&a).inv_freq
        };
        assert_ne!(at(true), at(false));
    }

    /// transformers' `_compute_llama3_parameters`, line by line (`torch.where` per element).
    fn hf_llama3(inv_freq: &[f64], l: &Llama3Scaling) -> Vec<f64> {
        let factor = l.factor.0;
        let low_freq_factor = l.low_freq_factor.0;
        let high_freq_factor = l.high_freq_factor.0;
        let old_context_len = l.original_max_position_embeddings as f64;
        let low_freq_wavelen = old_context_len / low_freq_factor;
        let high_freq_wavelen = old_context_len / high_freq_factor;
        inv_freq
            .iter()
            .map(|&f| {
                let wavelen = 2.0 * PI / f;
                let inv_freq_llama = if wavelen > low_freq_wavelen {
                    f / factor
                } else {
                    f
                };
                let smooth_factor = (old_context_len / wavelen - low_freq_factor)
                    / (high_freq_factor - low_freq_factor);
                let smoothed_inv_freq = (1.0 - smooth_factor) * inv_freq_llama / factor
                    + smooth_factor * inv_freq_llama;
                // `~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)`; wavelengths are
                // finite here.
                let is_medium_freq = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
                if is_medium_freq {
                    smoothed_inv_freq
                } else {
                    inv_freq_llama
                }
            })
            .collect()
    }

    #[test]
    fn llama3_frequencies_by_hand() {
        // d = 8, base 1e4: plain 1, 0.1, 0.01, 0.001, wavelengths 2 pi / f = 6.28, 62.8, 628,
        // 6283. L = 1000, low 1, high 4: wavelengths below 250 kept, above 1000 divided by 8,
        // 628 smoothed with s = (1000 / 628.3 - 1) / 3 = 0.197183: 0.01 ((1 - s) / 8 + s) =
        // 0.002975353.
        let l = Llama3Scaling {
            factor: F64(8.0),
            low_freq_factor: F64(1.0),
            high_freq_factor: F64(4.0),
            original_max_position_embeddings: 1000,
        };
        let r = Rope::of(&attrs(8, Some(RopeScaling::Llama3(l))));
        let want = [1.0, 0.1, 0.002_975_352_506_846_947, 0.000_125];
        for (got, want) in r.inv_freq.iter().zip(want) {
            assert!((got - want).abs() < 1e-15, "{:?}", r.inv_freq);
        }
        assert_eq!(
            (
                r.cos_sin_scale,
                softmax_scale(&attrs(8, Some(RopeScaling::Llama3(l))))
            ),
            (1.0, 1.0)
        );
    }

    #[test]
    fn llama3_matches_transformers() {
        // Llama 4 Scout: head_dim 128, rope_theta 5e5, factor 8, low 1, high 4, 8192.
        let scout = Llama3Scaling {
            factor: F64(8.0),
            low_freq_factor: F64(1.0),
            high_freq_factor: F64(4.0),
            original_max_position_embeddings: 8192,
        };
        let mut a = attrs(128, Some(RopeScaling::Llama3(scout)));
        a.rope_theta = F64(500_000.0);
        let plain = Rope::of(&AttentionAttrs {
            rope_scaling: None,
            ..a
        });
        let r = Rope::of(&a);
        close(&r.inv_freq, &hf_llama3(&plain.inv_freq, &scout));
        // All three bands occur: kept, smoothed and divided.
        let kept = r
            .inv_freq
            .iter()
            .zip(&plain.inv_freq)
            .filter(|(x, p)| x == p)
            .count();
        let divided = r
            .inv_freq
            .iter()
            .zip(&plain.inv_freq)
            .filter(|(x, p)| (*x - *p / 8.0).abs() <= 1e-18)
            .count();
        assert!(
            kept > 0 && divided > 0 && kept + divided < 64,
            "{kept} {divided}"
        );
    }

    #[test]
    fn linear_divides_frequencies() {
        let r = Rope::of(&attrs(4, Some(RopeScaling::Linear { factor: F64(2.0) })));
        close(&r.inv_freq, &[0.5, 0.005]);
        let plain = Rope::of(&attrs(4, None));
        close(&plain.inv_freq, &[1.0, 0.01]);
        assert_eq!(plain.cos_sin_scale, 1.0);
    }

    #[test]
    fn slots_pair_halves_or_neighbours() {
        let slots = |pairs| {
            Rope {
                pairs,
                ..Rope::of(&attrs(8, None))
            }
            .slots()
            .iter()
            .map(|s| (s.freq, s.partner, s.sign))
            .collect::<Vec<_>>()
        };
        // Halves: (0, 4), (1, 5), (2, 6), (3, 7); the first of a pair takes -sin.
        assert_eq!(
            slots(RopePairs::Halves),
            [
                (0, 4, -1.0),
                (1, 5, -1.0),
                (2, 6, -1.0),
                (3, 7, -1.0),
                (0, 0, 1.0),
                (1, 1, 1.0),
                (2, 2, 1.0),
                (3, 3, 1.0)
            ]
        );
        // Interleaved: (0, 1), (2, 3), (4, 5), (6, 7).
        assert_eq!(
            slots(RopePairs::Interleaved),
            [
                (0, 1, -1.0),
                (0, 0, 1.0),
                (1, 3, -1.0),
                (1, 2, 1.0),
                (2, 5, -1.0),
                (2, 4, 1.0),
                (3, 7, -1.0),
                (3, 6, 1.0)
            ]
        );
    }
}
