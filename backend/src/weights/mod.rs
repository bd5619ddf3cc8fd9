//! Weights and inputs: seeded initialisation, or tensors from a safetensors checkpoint mapped to
//! the graph's weight names (under those names, or under the Hugging Face keys they stand for:
//! transposed, stacked per expert, or cut out of fused tensors; see `names`). Both give a
//! weight's **full** (global) tensor; the executor slices each rank's shard out of it, so the
//! numbers never depend on the mesh.

mod checkpoint;
mod fused;
mod mla;
mod names;
mod scheme;
pub(crate) mod seeded;

pub use checkpoint::Checkpoint;

use crate::error::{SplitError, WeightError};
use moe_ir::TensorType;
use names::Source;
use seeded::Init;

/// Where a run's weights come from.
#[derive(Debug)]
pub enum Weights {
    /// Seeded initialisation (the run's seed; see docs/BACKEND.md for the distributions).
    Seeded,
    /// Tensors of a safetensors checkpoint, by the graph's weight names or their Hugging Face
    /// checkpoint keys (docs/BACKEND.md, "Weights and inputs", lists the mappings).
    Checkpoint(Checkpoint),
}

/// A global tensor's values, row-major. Weights are held as f32 (checkpoint tensors of other
/// float types are converted), token ids as integers.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Global {
    Float(Vec<f32>),
    Int(Vec<i64>),
}

/// The global values (row-major) of weight `name` of type `ty`.
pub(crate) fn weight(
    w: &Weights,
    seed: u64,
    name: &str,
    ty: &TensorType,
) -> Result<Vec<f32>, WeightError> {
    match w {
        Weights::Seeded => Ok(seeded::values(
            seed,
            name,
            &ty.shape,
            Init::for_weight(name, ty),
        )),
        Weights::Checkpoint(c) => from_checkpoint(c, name, &ty.shape),
    }
}

/// The global values of graph input `name` of type `ty`: token ids uniform in `0..bound` for
/// integer inputs, unit-variance values for float inputs.
/// The seed of micro-batch `micro`'s inputs in a run seeded `seed`: `seed` itself for the first
/// micro-batch (a one-micro-batch run is the run of the graph), a SplitMix64 mix of both after.
pub(crate) fn micro_batch_seed(seed: u64, micro: u32) -> u64 {
    if micro == 0 {
        return seed;
    }
    let mut z = seed ^ u64::from(micro).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub(crate) fn input(seed: u64, name: &str, ty: &TensorType, bound: u64) -> Global {
    if ty.dtype.is_float() {
        Global::Float(seeded::values(
            seed,
            name,
            &ty.shape,
            Init::Uniform { std: 1.0 },
        ))
    } else {
        Global::Int(seeded::ids(seed, name, &ty.shape, bound))
    }
}

fn misshapen(name: &str, key: &str, shape: &[u64], found: &[usize]) -> WeightError {
    WeightError::Shape {
        weight: name.to_string(),
        key: key.to_string(),
        expected: shape.to_vec(),
        found: found.to_vec(),
        tried: Vec::new(),
    }
}

fn unsplit(name: &str, key: &str, why: SplitError) -> WeightError {
    WeightError::Split {
        weight: name.to_string(),
        key: key.to_string(),
        why,
        tried: Vec::new(),
    }
}

fn same(shape: &[u64], found: &[usize]) -> bool {
    shape.len() == found.len() && shape.iter().zip(found).all(|(&a, &b)| a as usize == b)
}

fn from_checkpoint(c: &Checkpoint, name: &str, shape: &[u64]) -> Result<Vec<f32>, WeightError> {
    let sources = names::sources(name, shape, c.scheme());
    let tried: Vec<String> = sources.iter().map(Source::describe).collect();
    // The first source present with the right shape wins; a present one of the wrong shape is
    // reported when no other fits (`lm_head.weight` is both the graph's name and HF's key of the
    // transposed matrix).
    let mut misfit = None;
    for src in sources.iter().filter(|s| c.contains(s.first_key())) {
        match read_source(c, name, shape, src) {
            Err(e @ (WeightError::Shape { .. } | WeightError::Split { .. })) => {
                misfit.get_or_insert(e);
            }
            r => return r,
        }
    }
    Err(match misfit {
        Some(WeightError::Shape {
            weight,
            key,
            expected,
            found,
            ..
        }) => WeightError::Shape {
            weight,
            key,
            expected,
            found,
            tried,
        },
        Some(WeightError::Split {
            weight, key, why, ..
        }) => WeightError::Split {
            weight,
            key,
            why,
            tried,
        },
        _ => WeightError::Missing {
            weight: name.to_string(),
            tried,
        },
    })
}

/// Reads weight `name` of `shape` from `src`.
fn read_source(
    c: &Checkpoint,
    name: &str,
    shape: &[u64],
    src: &Source,
) -> Result<Vec<f32>, WeightError> {
    let read = |key: &str| -> Result<checkpoint::Stored, WeightError> {
        c.read(key, name)?.ok_or_else(|| WeightError::Missing {
            weight: name.to_string(),
            tried: vec![key.to_string()],
        })
    };
    match src {
        Source::Direct(key) => {
            let t = read(key)?;
            if !same(shape, &t.shape) {
                return Err(misshapen(name, key, shape, &t.shape));
            }
            Ok(t.data)
        }
        Source::Transposed(key) => {
            let t = read(key)?;
            let &[rows, cols] = shape else {
                return Err(misshapen(name, key, shape, &t.shape));
            };
            let want = [cols, rows];
            if !same(&want, &t.shape) {
                return Err(misshapen(name, key, &want, &t.shape));
            }
            Ok(fused::transpose(&t.data, t.shape[0], t.shape[1]))
        }
        Source::Experts(keys) => {
            let &[_, rows, cols] = shape else {
                return Err(misshapen(name, src.first_key(), shape, &[]));
            };
            let want = [cols, rows];
            let mut out = Vec::with_capacity(shape.iter().product::<u64>() as usize);
            for key in keys {
                let t = read(key)?;
                if !same(&want, &t.shape) {
                    return Err(misshapen(name, key, &want, &t.shape));
                }
                out.extend(fused::transpose(&t.data, t.shape[0], t.shape[1]));
            }
            Ok(out)
        }
        Source::Fused { key, cut } => {
            let t = read(key)?;
            fused::apply(cut, &t, shape).map_err(|why| unsplit(name, key, why))
        }
        Source::Mla { key, part, layer } => {
            let fused_shape = c.shape(key).unwrap_or_default().to_vec();
            let cut = mla::cut(c, layer, *part, &fused_shape, shape)
                .map_err(|why| unsplit(name, key, why))?;
            let t = read(key)?;
            fused::apply(&cut, &t, shape).map_err(|why| unsplit(name, key, why))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::checkpoint::tests::file;
    use super::*;
    use moe_ir::DType;

    fn ckpt(tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> Weights {
        let mut c = Checkpoint::new();
        c.add_file("model.safetensors", file(tensors)).unwrap();
        Weights::Checkpoint(c)
    }

    #[test]
    fn hf_linear_weights_are_transposed_and_experts_stacked() {
        let w = ckpt(&[
            (
                "model.layers.0.self_attn.q_proj.weight",
                vec![3, 2],
                vec![1., 2., 3., 4., 5., 6.],
            ),
            (
                "model.layers.0.mlp.experts.0.up_proj.weight",
                vec![1, 2],
                vec![1., 2.],
            ),
            (
                "model.layers.0.mlp.experts.1.up_proj.weight",
                vec![1, 2],
                vec![3., 4.],
            ),
            ("l0.direct", vec![2], vec![7., 8.]),
        ]);
        let ty = TensorType::new(DType::F32, [2, 3]);
        let q = weight(&w, 0, "l0.self_attn.q_proj.weight", &ty).unwrap();
        assert_eq!(q, vec![1., 3., 5., 2., 4., 6.]);
        let ty = TensorType::new(DType::F32, [2, 2, 1]);
        let up = weight(&w, 0, "l0.moe.experts.up_proj", &ty).unwrap();
        assert_eq!(up, vec![1., 2., 3., 4.]);
        let ty = TensorType::new(DType::F32, [2]);
        assert_eq!(weight(&w, 0, "l0.direct", &ty).unwrap(), vec![7., 8.]);
    }

    #[test]
    fn missing_and_misshapen_weights_are_named() {
        let w = ckpt(&[("l0.x", vec![3], vec![1., 2., 3.])]);
        let e = weight(&w, 0, "l0.x", &TensorType::new(DType::F32, [2])).unwrap_err();
        assert!(
            e.to_string().contains("weight `l0.x`") && e.to_string().contains("[3]"),
            "{e}"
        );
        let e = weight(&w, 0, "l0.y.weight", &TensorType::new(DType::F32, [2, 2])).unwrap_err();
        assert!(e.to_string().contains("model.layers.0.y.weight"), "{e}");
        // Three experts needed, two present.
        let w = ckpt(&[
            (
                "model.layers.0.mlp.experts.0.up_proj.weight",
                vec![1, 2],
                vec![1., 2.],
            ),
            (
                "model.layers.0.mlp.experts.1.up_proj.weight",
                vec![1, 2],
                vec![3., 4.],
            ),
        ]);
        let ty = TensorType::new(DType::F32, [3, 2, 1]);
        let e = weight(&w, 0, "l0.moe.experts.up_proj", &ty).unwrap_err();
        assert!(e.to_string().contains("experts.2.up_proj"), "{e}");
    }

    #[test]
    fn seeded_weights_ignore_the_sharding() {
        let a = TensorType::new(DType::Bf16, [4, 6]);
        let b = a.clone().with_split(1, &["tp"]);
        assert_eq!(
            weight(&Weights::Seeded, 3, "w", &a).unwrap(),
            weight(&Weights::Seeded, 3, "w", &b).unwrap()
        );
    }
}
