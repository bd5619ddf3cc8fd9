//! Deterministic seeded values: element `i` of a tensor is a hash of (seed, tensor name, global
//! shape, `i`), so a weight's full tensor never depends on the mesh (a rank's shard is a slice of
//! it), on the graph it sits in, or on the order tensors are made. Integer arithmetic only, so the
//! numbers are the same on every platform.
//!
//! Distribution: uniform with unit variance (`[-sqrt 3, sqrt 3)`), times a scale chosen from the
//! name and shape so that activations stay of order 1 through many layers (see [`Init::for_weight`]).

use moe_ir::TensorType;

/// SplitMix64's finalizer: a bijective 64-bit mix.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The key of a tensor: its seed, name and global shape.
fn key(seed: u64, name: &str, shape: &[u64]) -> u64 {
    // FNV-1a over the name, then the shape, mixed with the seed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes().chain([0xff]) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    for &d in shape {
        h = mix(h ^ d);
    }
    mix(h ^ mix(seed.wrapping_add(GOLDEN)))
}

/// 64 random bits for element `i` of the tensor keyed `k`.
fn bits(k: u64, i: u64) -> u64 {
    mix(k ^ mix(i.wrapping_mul(GOLDEN).wrapping_add(1)))
}

/// How a tensor is initialized.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Init {
    /// Every element 1 (norm weights).
    Ones,
    /// Uniform with standard deviation `std`, mean 0.
    Uniform { std: f64 },
    /// Integers uniform in `0..bound` (token ids).
    Ids { bound: u64 },
}

impl Init {
    /// The initialization of a weight from its name and global shape:
    /// - rank 1 named `*norm*` (`input_layernorm.weight`, `q_norm.weight`, `norm.weight`): ones;
    /// - biases (`*bias*`), attention sinks (`*sinks*`) and other rank-1 tensors: std 0.05;
    /// - token embeddings (`*embed*`): std 1;
    /// - matrices and stacked experts `[..., fan_in, fan_out]`: std `1/sqrt(fan_in)`.
    pub fn for_weight(name: &str, ty: &TensorType) -> Init {
        let lower = name.to_ascii_lowercase();
        let shape = &ty.shape;
        if shape.len() == 1 && lower.contains("norm") && !lower.contains("bias") {
            return Init::Ones;
        }
        if shape.len() < 2 || lower.contains("bias") || lower.contains("sinks") {
            return Init::Uniform { std: 0.05 };
        }
        if lower.contains("embed") {
            return Init::Uniform { std: 1.0 };
        }
        let fan_in = shape[shape.len() - 2].max(1) as f64;
        Init::Uniform {
            std: 1.0 / fan_in.sqrt(),
        }
    }
}

/// The values of the tensor `name` of global `shape`, row-major, rounded to f32 (so that every
/// precision computes on the same numbers).
pub(crate) fn values(seed: u64, name: &str, shape: &[u64], init: Init) -> Vec<f64> {
    let n: u64 = shape.iter().product();
    let k = key(seed, name, shape);
    let sqrt3 = 3f64.sqrt();
    (0..n)
        .map(|i| match init {
            Init::Ones => 1.0,
            Init::Uniform { std } => {
                // 53 random bits -> [0, 1) -> [-sqrt 3, sqrt 3).
                let u = (bits(k, i) >> 11) as f64 / (1u64 << 53) as f64;
                f64::from(((2.0 * u - 1.0) * sqrt3 * std) as f32)
            }
            Init::Ids { bound } => (bits(k, i) % bound.max(1)) as f64,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use moe_ir::DType;

    #[test]
    fn values_depend_on_seed_name_and_shape_only() {
        let u = Init::Uniform { std: 1.0 };
        let a = values(1, "w", &[4, 4], u);
        assert_eq!(a, values(1, "w", &[4, 4], u));
        assert_ne!(a, values(2, "w", &[4, 4], u));
        assert_ne!(a, values(1, "v", &[4, 4], u));
        assert_ne!(a, values(1, "w", &[2, 8], u));
        // Every value lies inside the distribution's support.
        assert!(a.iter().all(|v| v.abs() < 3f64.sqrt()));
    }

    #[test]
    fn uniform_values_have_the_asked_spread() {
        let v = values(7, "big", &[20_000], Init::Uniform { std: 0.5 });
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.02, "{mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.02, "{}", var.sqrt());
        let ids = values(7, "ids", &[1000], Init::Ids { bound: 10 });
        assert!(ids.iter().all(|&i| (0.0..10.0).contains(&i) && i.fract() == 0.0));
        assert!((0..10).all(|k| ids.contains(&f64::from(k))));
    }

    #[test]
    fn inits_follow_names_and_shapes() {
        let t = |s: &[u64]| TensorType::new(DType::Bf16, s.to_vec());
        assert_eq!(
            Init::for_weight("l0.input_layernorm.weight", &t(&[64])),
            Init::Ones
        );
        assert_eq!(
            Init::for_weight("l0.moe.e_score_correction_bias", &t(&[8])),
            Init::Uniform { std: 0.05 }
        );
        assert_eq!(
            Init::for_weight("embed_tokens.weight", &t(&[100, 64])),
            Init::Uniform { std: 1.0 }
        );
        assert_eq!(
            Init::for_weight("l0.moe.experts.down_proj", &t(&[8, 16, 64])),
            Init::Uniform { std: 0.25 }
        );
    }
}
