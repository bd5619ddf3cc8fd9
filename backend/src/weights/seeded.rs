//! Deterministic seeded values: element `i` of a tensor is a hash of (seed, tensor name, global
//! shape, `i`), so a weight's full tensor never depends on the mesh (a rank's shard is a slice of
//! it), on the graph it sits in, or on the order tensors are made. Integer arithmetic only, so the
//! numbers are the same on every platform.
//!
//! Distribution: uniform with unit variance (`[-sqrt 3, sqrt 3)`), times a scale chosen from the
//! name and shape, rounded to f32 so that activations stay of order 1 through many layers (see [`Init::for_weight`]).

use moe_ir::TensorType;

/// SplitMix64's finalizer: a bijective 64-bit mix.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub(crate) const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The key of a tensor: its seed, name and global shape.
pub(crate) fn key(seed: u64, name: &str, shape: &[u64]) -> u64 {
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

/// How a float tensor is initialized.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Init {
    /// Every element 1 (norm weights).
    Ones,
    /// Uniform with standard deviation `std`, mean 0.
    Uniform { std: f64 },
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

/// Fills `out[i] = f(offset + i)`, on several threads for large tensors (element `i` depends on
/// `i` alone, so the result does not depend on the split).
fn fill<T: Send>(out: &mut [T], f: impl Fn(u64) -> T + Sync) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if out.len() < 1 << 16 || threads == 1 {
        out.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = f(i as u64));
        return;
    }
    let chunk = out.len().div_ceil(threads);
    std::thread::scope(|s| {
        for (c, part) in out.chunks_mut(chunk).enumerate() {
            let f = &f;
            s.spawn(move || {
                let base = (c * chunk) as u64;
                part.iter_mut()
                    .enumerate()
                    .for_each(|(i, v)| *v = f(base + i as u64));
            });
        }
    });
}

/// The values of the float tensor `name` of global `shape`, row-major, as f32.
pub(crate) fn values(seed: u64, name: &str, shape: &[u64], init: Init) -> Vec<f32> {
    let full: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    block_values(seed, name, shape, init, &vec![0; shape.len()], &full)
}

/// The block at `offsets` of shape `block` of the tensor of [`values`], row-major: the same numbers
/// as slicing the full tensor, without making it.
pub(crate) fn block_values(
    seed: u64,
    name: &str,
    shape: &[u64],
    init: Init,
    offsets: &[usize],
    block: &[usize],
) -> Vec<f32> {
    let n: usize = block.iter().product();
    let mut out = vec![0f32; n];
    let std = match init {
        Init::Ones => {
            out.fill(1.0);
            return out;
        }
        Init::Uniform { std } => std,
    };
    let k = key(seed, name, shape);
    let scale = 3f64.sqrt() * std;
    let rank = shape.len();
    let inner = block.last().copied().unwrap_or(1).max(1);
    // Global flat index of the first element of each block row.
    let mut strides = vec![1u64; rank];
    for d in (0..rank.saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    let rows: Vec<u64> = (0..n / inner)
        .map(|row| {
            let mut rest = row;
            let mut at = offsets.last().copied().unwrap_or(0) as u64;
            for d in (0..rank.saturating_sub(1)).rev() {
                at += (offsets[d] + rest % block[d]) as u64 * strides[d];
                rest /= block[d];
            }
            at
        })
        .collect();
    fill(&mut out, |i| {
        let g = rows[i as usize / inner] + i % inner as u64;
        // 53 random bits -> [0, 1) -> [-sqrt 3, sqrt 3) * std.
        let u = (bits(k, g) >> 11) as f64 / (1u64 << 53) as f64;
        ((2.0 * u - 1.0) * scale) as f32
    });
    out
}

/// Integers uniform in `0..bound` for the tensor `name` of global `shape` (token ids).
pub(crate) fn ids(seed: u64, name: &str, shape: &[u64], bound: u64) -> Vec<i64> {
    let n: u64 = shape.iter().product();
    let k = key(seed, name, shape);
    (0..n).map(|i| (bits(k, i) % bound.max(1)) as i64).collect()
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
        assert!(a.iter().all(|v| v.abs() < 3f32.sqrt()));
        // A block is the slice of the full tensor.
        let full = values(1, "w", &[4, 6], u);
        let b = block_values(1, "w", &[4, 6], u, &[1, 2], &[2, 3]);
        assert_eq!(
            b,
            vec![full[8], full[9], full[10], full[14], full[15], full[16]]
        );
        // Large tensors are filled on several threads, with the same numbers.
        let big = values(1, "w", &[300, 400], u);
        let k = key(1, "w", &[300, 400]);
        let u7 = (bits(k, 70_001) >> 11) as f64 / (1u64 << 53) as f64;
        assert_eq!(big[70_001], ((2.0 * u7 - 1.0) * 3f64.sqrt()) as f32);
    }

    #[test]
    fn uniform_values_have_the_asked_spread() {
        let v: Vec<f64> = values(7, "big", &[20_000], Init::Uniform { std: 0.5 })
            .into_iter()
            .map(f64::from)
            .collect();
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(mean.abs() < 0.02, "{mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.02, "{}", var.sqrt());
        let ids = ids(7, "ids", &[1000], 10);
        assert!(ids.iter().all(|&i| (0..10).contains(&i)));
        assert!((0..10).all(|k| ids.contains(&k)));
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
