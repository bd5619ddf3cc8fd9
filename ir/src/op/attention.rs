//! The attributes of `attention`: heads and widths, RoPE (pairing, scaling), query/key norms,
//! temperatures, clipping, the softmax scale, T5's relative position bias, masks.

use crate::F64;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Scaled dot-product attention attributes.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct AttentionAttrs {
    /// Query heads.
    pub heads: u64,
    /// Key/value heads (`heads` for MHA, fewer for GQA; a divisor of `heads`).
    pub kv_heads: u64,
    /// Per-head query/key width (for MLA: nope + rope dims).
    pub head_dim: u64,
    /// Per-head value width.
    pub v_head_dim: u64,
    /// Rotary embedding is applied to the last `rope_dim` dims of each query/key head (0: none).
    #[serde(default)]
    pub rope_dim: u64,
    /// Width of a key part shared by all heads (MLA's decoupled RoPE key), given as an extra input;
    /// the per-head key input then has width `head_dim - shared_k_dim`. 0: none.
    #[serde(default)]
    pub shared_k_dim: u64,
    /// RoPE base frequency.
    #[serde(default = "rope_theta")]
    pub rope_theta: F64,
    /// Which dims of the rotated part RoPE turns together (see [`RopePairs`]); `halves` (the
    /// default, not written) or `interleaved`. Typing: `interleaved` only with `rope_dim > 0`.
    #[serde(default, skip_serializing_if = "RopePairs::is_halves")]
    pub rope_pairs: RopePairs,
    /// RoPE frequency scaling for long contexts (see [`RopeScaling`]); `None` (the default, not
    /// written): plain RoPE. Typing: only with `rope_dim > 0`, and the [`RopeScaling`] ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// After RoPE, every query and key head (all `head_dim` dims; with a shared key part, the
    /// whole key head) is divided by `sqrt(mean(x^2) + eps)`, with no weight: Llama 4's
    /// `use_qk_norm` (`Llama4TextL2Norm`). The value is `eps`; `None` (the default, not
    /// written): no normalization. Typing: `eps` finite and positive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qk_norm_eps: Option<F64>,
    /// A per-position factor on the queries (after RoPE and `qk_norm_eps`), see
    /// [`QueryTemperature`]: Llama 4's attention temperature tuning of its NoPE layers. `None`
    /// (the default, not written): none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_temperature: Option<QueryTemperature>,
    /// Before anything else, every value of q, k and v (and k_shared) is clamped to
    /// `[-clip, clip]`: OLMoE's `clip_qkv` and DBRX's `attn_config.clip_qkv`. `None` (the default,
    /// not written): no clamp. Typing: finite and positive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_qkv: Option<F64>,
    /// The factor on `q.k` before the softmax, replacing `1 / sqrt(head_dim)` (T5: 1, it folds
    /// the scale into its weights). `None` (the default, not written): `1 / sqrt(head_dim)`
    /// (times YaRN's factor). Typing: finite and positive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub softmax_scale: Option<F64>,
    /// T5's relative position bias, see [`RelativeBias`]: a table `[buckets, heads]` given as
    /// the last input (replicated) adds `table[bucket(j - i), h]` to head `h`'s score of query
    /// `i` and key `j`. `None` (the default, not written): none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_bias: Option<RelativeBias>,
    /// Tokens per query sequence: token rows are `batch x seq`, sequence-major.
    pub seq: u64,
    /// Tokens per key/value sequence; equals `seq` for self-attention.
    pub kv_seq: u64,
    /// Which keys a query sees.
    pub mask: Mask,
    /// Learned per-head attention sinks (GPT-OSS), given as the last input `[heads]`.
    #[serde(default)]
    pub sinks: bool,
}

fn rope_theta() -> F64 {
    F64(10_000.0)
}

/// How RoPE pairs the `rope_dim` rotated dims of a head: each pair `(a, b)` with frequency index
/// `i < rope_dim / 2` turns by the angle `p * f[i]` at position `p` (`f` as in [`RopeScaling`]):
/// `a' = a cos - b sin`, `b' = b cos + a sin`.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RopePairs {
    /// Dim `i` with dim `i + rope_dim / 2` ("rotate half"; transformers' `rotate_half`: Llama,
    /// Mixtral, Qwen2/3-MoE, OLMoE, DBRX, GPT-OSS).
    #[default]
    Halves,
    /// Dim `2i` with dim `2i + 1` (the complex-number form: Llama 4's `view_as_complex`,
    /// DeepSeek-V2/V3 with `rope_interleave`).
    Interleaved,
}

impl RopePairs {
    /// Whether this is the default pairing (which model.json leaves out).
    pub fn is_halves(&self) -> bool {
        *self == RopePairs::Halves
    }
}

/// T5's relative position buckets (transformers' `_relative_position_bucket`): with `n =
/// buckets` (halved when `bidirectional`, the upper half then holding keys after the query) and
/// distance `d = |j - i|` (`max(i - j, 0)` when not bidirectional: later keys share bucket 0),
/// distances below `n / 2` have a bucket each, longer ones share `n / 2 + floor(ln(d / (n/2)) /
/// ln(max_distance / (n/2)) * (n - n/2))` (in f32), at most `n - 1`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct RelativeBias {
    pub buckets: u64,
    pub max_distance: u64,
    /// Encoders: keys before and after the query have their own buckets.
    pub bidirectional: bool,
}

impl RelativeBias {
    /// The bucket of a key at `j - i = rel` positions from the query.
    pub fn bucket(&self, rel: i64) -> u64 {
        let mut n = self.buckets as i64;
        let mut out = 0;
        let d = if self.bidirectional {
            n /= 2;
            if rel > 0 {
                out += n;
            }
            rel.abs()
        } else {
            (-rel).max(0)
        };
        let exact = n / 2;
        if d < exact {
            return (out + d) as u64;
        }
        let log_ratio = ((self.max_distance as f64) / (exact as f64)).ln() as f32;
        let large = (d as f32 / exact as f32).ln() / log_ratio * (n - exact) as f32;
        (out + (exact + large as i64).min(n - 1)) as u64
    }
}

/// Llama 4's attention temperature tuning: the query at position `p` (0-based within its
/// sequence) is multiplied by `1 + attn_scale * ln(1 + floor((p + 1) / floor_scale))`
/// (transformers' `Llama4TextAttention`, applied on its NoPE layers). The factor is 1 below
/// position `floor_scale - 1`. Typing: `floor_scale` finite and positive, `attn_scale` finite.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct QueryTemperature {
    /// Positions per step of the factor (Llama 4: 8192).
    pub floor_scale: F64,
    /// The factor's growth per step on a log scale (Llama 4: 0.1).
    pub attn_scale: F64,
}

impl QueryTemperature {
    /// The factor on the query at position `p`.
    pub fn factor(&self, p: u64) -> f64 {
        1.0 + self.attn_scale.0 * ((p as f64 + 1.0) / self.floor_scale.0).floor().ln_1p()
    }
}

/// RoPE frequency scaling: a Hugging Face config's `rope_scaling`, as an attribute of
/// `attention`. With `d = rope_dim`, `base = rope_theta` and the plain inverse frequencies
/// `f[i] = base^(-2i/d)` (`i < d/2`):
/// - `linear`: positions are divided by `factor` (every frequency is `f[i] / factor`).
/// - `yarn`: YaRN as DeepSeek-V2/V3 and transformers' `_compute_yarn_parameters` define it, see
///   [`YarnScaling`].
/// - `llama3`: Llama 3.1's (and Llama 4's) band-wise interpolation, see [`Llama3Scaling`].
///
/// Typing: `factor` finite and positive; for `yarn` also `beta_fast`, `beta_slow` and
/// `original_max_position_embeddings` positive, `mscale` and `mscale_all_dim` finite, and
/// `rope_theta > 1` (its logarithm divides); for `llama3` also `low_freq_factor` positive,
/// `high_freq_factor` greater than it (finite), `original_max_position_embeddings` positive.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RopeScaling {
    /// Position interpolation: positions divided by `factor`.
    Linear { factor: F64 },
    /// YaRN, as DeepSeek-V2/V3 (and transformers' generic YaRN) define it.
    Yarn(YarnScaling),
    /// Llama 3.1's frequency-band interpolation (transformers' `_compute_llama3_parameters`).
    Llama3(Llama3Scaling),
}

/// Llama 3.1's RoPE scaling (transformers' `_compute_llama3_parameters`; Llama 4 uses it too).
/// With `f[i]` the plain inverse frequencies of [`RopeScaling`], the wavelength
/// `w[i] = 2 pi / f[i]` and `L = original_max_position_embeddings`:
/// - `w[i] < L / high_freq_factor` (high frequencies): `f[i]` kept;
/// - `w[i] > L / low_freq_factor` (low frequencies): `f[i] / factor`;
/// - otherwise, with `s = (L / w[i] - low_freq_factor) / (high_freq_factor - low_freq_factor)`:
///   `(1 - s) * f[i] / factor + s * f[i]`.
///
/// cos, sin and the softmax scale are unchanged.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct Llama3Scaling {
    /// Context extension factor (Llama 4 Scout: 8).
    pub factor: F64,
    /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are interpolated
    /// (Llama 4 Scout: 1).
    pub low_freq_factor: F64,
    /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept (Llama 4
    /// Scout: 4).
    pub high_freq_factor: F64,
    /// The pre-training context (Llama 4 Scout: 8192).
    pub original_max_position_embeddings: u64,
}

/// YaRN RoPE scaling as DeepSeek-V2/V3 define it (their `DeepseekV3YarnRotaryEmbedding` and
/// attention) and transformers' `_compute_yarn_parameters` computes it. With `f[i]` the plain
/// inverse frequencies of [`RopeScaling`] and `d = rope_dim`:
/// - correction range: `dim(b) = d * ln(original_max_position_embeddings / (2 pi b)) / (2 ln base)`,
///   `low = max(floor(dim(beta_fast)), 0)`, `high = min(ceil(dim(beta_slow)), d - 1)`; without
///   `truncate`, `dim(beta_fast)` and `dim(beta_slow)` are not rounded (GPT-OSS);
/// - ramp `r[i] = clamp((i - low) / (high - low), 0, 1)` for `i < d/2` (`high` raised by 0.001
///   when equal to `low`);
/// - inverse frequencies `f[i] / factor * r[i] + f[i] * (1 - r[i])`: the low frequencies are
///   interpolated, the high ones kept;
/// - with `m(s) = 1` when `factor <= 1`, else `0.1 * s * ln(factor) + 1`: cos and sin are
///   multiplied by `m(mscale) / m(mscale_all_dim)`, and the softmax scale `1 / sqrt(head_dim)` by
///   `m(mscale_all_dim)^2`. transformers' generic YaRN (no `mscale` keys) multiplies cos and sin
///   by `m(1)` and leaves the softmax scale: `mscale` 1, `mscale_all_dim` 0.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct YarnScaling {
    /// Context extension factor.
    pub factor: F64,
    /// The pre-training context the correction range is computed for.
    pub original_max_position_embeddings: u64,
    /// Rotations above which a dimension keeps its frequency (DeepSeek: 32).
    pub beta_fast: F64,
    /// Rotations below which a dimension is fully interpolated (DeepSeek: 1).
    pub beta_slow: F64,
    /// The `mscale` of the cos/sin multiplier's numerator (DeepSeek default: 1).
    pub mscale: F64,
    /// The `mscale_all_dim` of the cos/sin multiplier's denominator and of the softmax scale
    /// (DeepSeek default: 0, which makes `m` 1).
    pub mscale_all_dim: F64,
    /// Whether the correction range is rounded outwards to whole dims (transformers' `truncate`;
    /// default true, not written; GPT-OSS: false).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub truncate: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// Attention mask: which keys each query attends to (positions within a sequence).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Mask {
    /// Every key (encoders, cross-attention).
    Full,
    /// Keys at or before the query.
    Causal,
    /// Causal, and at most this many latest keys (the query's own included).
    Sliding(u64),
    /// Causal within consecutive chunks of this many tokens (Llama-4's chunked local attention).
    Chunked(u64),
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::op::Op;

    #[test]
    fn rope_scaling_is_optional_in_json() {
        let plain = r#"{"attention": {"heads": 2, "kv_heads": 2, "head_dim": 4, "v_head_dim": 4,
            "rope_dim": 4, "rope_theta": 10000.0, "seq": 4, "kv_seq": 4, "mask": "causal"}}"#;
        let op: Op = serde_json::from_str(plain).unwrap();
        let Op::Attention(a) = op else {
            panic!("not attention: {op:?}")
        };
        assert_eq!(a.rope_scaling, None);
        // Written back without the key: graphs without scaling keep their bytes.
        let text = serde_json::to_string(&Op::Attention(a)).unwrap();
        assert!(!text.contains("rope_scaling"), "{text}");
        let yarn = plain.replace(
            r#""mask""#,
            r#""rope_scaling": {"yarn": {"factor": 40.0, "original_max_position_embeddings": 4096,
                "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 1.0}}, "mask""#,
        );
        let op: Op = serde_json::from_str(&yarn).unwrap();
        let Op::Attention(y) = &op else {
            panic!("not attention: {op:?}")
        };
        let want = YarnScaling {
            factor: F64(40.0),
            original_max_position_embeddings: 4096,
            beta_fast: F64(32.0),
            beta_slow: F64(1.0),
            mscale: F64(1.0),
            mscale_all_dim: F64(1.0),
            truncate: true,
        };
        assert_eq!(y.rope_scaling, Some(RopeScaling::Yarn(want)));
        // `truncate` defaults to true and is written only when false.
        assert!(!serde_json::to_string(&op).unwrap().contains("truncate"));
        let back: Op = serde_json::from_str(&serde_json::to_string(&op).unwrap()).unwrap();
        assert_eq!(back, op);
        let linear = plain.replace(
            r#""mask""#,
            r#""rope_scaling": {"linear": {"factor": 2.0}}, "mask""#,
        );
        let op: Op = serde_json::from_str(&linear).unwrap();
        assert!(matches!(
            op,
            Op::Attention(ref a) if a.rope_scaling == Some(RopeScaling::Linear { factor: F64(2.0) })
        ));
        let llama3 = plain.replace(
            r#""mask""#,
            r#""rope_scaling": {"llama3": {"factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}, "mask""#,
        );
        let op: Op = serde_json::from_str(&llama3).unwrap();
        let want = Llama3Scaling {
            factor: F64(8.0),
            low_freq_factor: F64(1.0),
            high_freq_factor: F64(4.0),
            original_max_position_embeddings: 8192,
        };
        let Op::Attention(l) = &op else {
            panic!("not attention: {op:?}")
        };
        assert_eq!(l.rope_scaling, Some(RopeScaling::Llama3(want)));
        let back: Op = serde_json::from_str(&serde_json::to_string(&op).unwrap()).unwrap();
        assert_eq!(back, op);
        let untruncated = plain.replace(
            r#""mask""#,
            r#""rope_scaling": {"yarn": {"factor": 32.0, "original_max_position_embeddings": 4096,
                "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 0.0,
                "truncate": false}}, "mask""#,
        );
        let op: Op = serde_json::from_str(&untruncated).unwrap();
        assert!(matches!(
            op,
            Op::Attention(ref a) if matches!(
                a.rope_scaling,
                Some(RopeScaling::Yarn(YarnScaling { truncate: false, .. }))
            )
        ));
        assert!(serde_json::to_string(&op)
            .unwrap()
            .contains(r#""truncate":false"#));
        // Unknown scaling types and fields are refused.
        for bad in [
            r#""rope_scaling": {"dynamic": {"factor": 2.0}}, "mask""#,
            r#""rope_scaling": {"linear": {"factor": 2.0, "beta": 1}}, "mask""#,
        ] {
            assert!(serde_json::from_str::<Op>(&plain.replace(r#""mask""#, bad)).is_err());
        }
    }

    #[test]
    fn new_attention_attributes_default_and_round_trip() {
        let plain = r#"{"attention": {"heads": 2, "kv_heads": 2, "head_dim": 4, "v_head_dim": 4,
            "rope_dim": 4, "rope_theta": 10000.0, "seq": 4, "kv_seq": 4, "mask": "causal"}}"#;
        let Op::Attention(a) = serde_json::from_str(plain).unwrap() else {
            panic!("not attention")
        };
        assert_eq!(a.rope_pairs, RopePairs::Halves);
        assert_eq!(a.qk_norm_eps, None);
        assert_eq!(a.query_temperature, None);
        // Defaults are not written: old model.json files keep their bytes.
        let text = serde_json::to_string(&Op::Attention(a)).unwrap();
        for key in ["rope_pairs", "qk_norm_eps", "query_temperature"] {
            assert!(!text.contains(key), "{text}");
        }
        let full = plain.replace(
            r#""mask""#,
            r#""rope_pairs": "interleaved", "qk_norm_eps": 1e-5,
               "query_temperature": {"floor_scale": 8192.0, "attn_scale": 0.1}, "mask""#,
        );
        let op: Op = serde_json::from_str(&full).unwrap();
        let Op::Attention(b) = &op else {
            panic!("not attention: {op:?}")
        };
        assert_eq!(b.rope_pairs, RopePairs::Interleaved);
        assert_eq!(b.qk_norm_eps, Some(F64(1e-5)));
        assert_eq!(
            b.query_temperature,
            Some(QueryTemperature {
                floor_scale: F64(8192.0),
                attn_scale: F64(0.1)
            })
        );
        let text = serde_json::to_string(&op).unwrap();
        assert!(text.contains(r#""rope_pairs":"interleaved""#), "{text}");
        let back: Op = serde_json::from_str(&text).unwrap();
        assert_eq!(back, op);
        for bad in [
            r#""rope_pairs": "adjacent", "mask""#,
            r#""query_temperature": {"floor_scale": 8192.0}, "mask""#,
        ] {
            assert!(serde_json::from_str::<Op>(&plain.replace(r#""mask""#, bad)).is_err());
        }
    }

    #[test]
    fn t5_relative_position_buckets() {
        // transformers' `_relative_position_bucket` with 32 buckets and max distance 128.
        let enc = RelativeBias {
            buckets: 32,
            max_distance: 128,
            bidirectional: true,
        };
        let got: Vec<u64> = [0, 1, -1, 7, -8, -127, -200, 200]
            .iter()
            .map(|&r| enc.bucket(r))
            .collect();
        assert_eq!(got, [0, 17, 1, 23, 8, 15, 15, 31]);
        let dec = RelativeBias {
            bidirectional: false,
            ..enc
        };
        let got: Vec<u64> = [0, 5, -5, -15, -16, -20, -1000]
            .iter()
            .map(|&r| dec.bucket(r))
            .collect();
        assert_eq!(got, [0, 0, 5, 15, 16, 17, 31]);
    }

    #[test]
    fn query_temperature_by_hand() {
        let t = QueryTemperature {
            floor_scale: F64(4.0),
            attn_scale: F64(0.5),
        };
        // floor((p + 1) / 4): 0 for p < 3, 1 for p = 3..6, 2 for p = 7.
        let want = [0., 0., 0., 2., 2., 2., 2., 3.].map(|n: f64| 1.0 + 0.5 * n.max(1.0).ln());
        for (p, w) in want.iter().enumerate() {
            let f = t.factor(p as u64);
            assert!((f - w).abs() < 1e-15, "position {p}: {f} vs {w}");
        }
        assert_eq!(t.factor(2), 1.0);
    }
}
