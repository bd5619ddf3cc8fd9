//! Typing rules of dense math: embedding, matmuls, elementwise ops, norms, attention.

use super::*;

pub(super) fn embedding(inputs: &[&TensorType]) -> Result<TensorType> {
    arity(inputs, 2)?;
    rank(inputs, 0, 1)?;
    rank(inputs, 1, 2)?;
    int(inputs, 0)?;
    float(inputs, 1)?;
    not_partial(inputs, 0)?;
    not_partial(inputs, 1)?;
    let (ids, table) = (inputs[0], inputs[1]);
    Ok(make(
        table.dtype,
        vec![ids.shape[0], table.shape[1]],
        vec![ids.split_of(0).to_vec(), table.split_of(1).to_vec()],
        table.split_of(0).to_vec(),
    ))
}

/// Partial axes of a product: each side's partial axes must be replicated on the other side.
fn product_partial(a: &TensorType, b: &TensorType) -> Result<Vec<String>> {
    for (x, y, i) in [(a, b, 1), (b, a, 0)] {
        if let Some(ax) = x.partial.iter().find(|ax| !y.is_replicated_on(ax)) {
            return Err(TypeError::Sharding(format!(
                "one factor is partial on `{ax}` but input {i} ({y}) is not replicated on it"
            )));
        }
    }
    Ok(a.partial.iter().chain(&b.partial).cloned().collect())
}

pub(super) fn matmul(inputs: &[&TensorType]) -> Result<TensorType> {
    arity(inputs, 2)?;
    let (a, b) = (inputs[0], inputs[1]);
    if a.rank() < 2 {
        return Err(TypeError::Rank {
            input: 0,
            expected: "at least 2".into(),
            got: a.rank(),
            ty: a.to_string(),
        });
    }
    rank(inputs, 1, 2)?;
    float(inputs, 0)?;
    same_dtype(inputs, 0, 1)?;
    let r = a.rank();
    same_dim(inputs, (0, r - 1), (1, 0), "contracted dim")?;
    let k = same_split(inputs, (0, r - 1), (1, 0), "contracted dim")?;
    let mut shape = a.shape[..r - 1].to_vec();
    shape.push(b.shape[1]);
    let mut split: Vec<Vec<String>> = (0..r - 1).map(|d| a.split_of(d).to_vec()).collect();
    split.push(b.split_of(1).to_vec());
    let mut partial = product_partial(a, b)?;
    partial.extend(k);
    Ok(make(a.dtype, shape, split, partial))
}

pub(super) fn transpose(inputs: &[&TensorType]) -> Result<TensorType> {
    arity(inputs, 1)?;
    let x = inputs[0];
    if x.rank() < 2 {
        return Err(TypeError::Rank {
            input: 0,
            expected: "at least 2".into(),
            got: x.rank(),
            ty: x.to_string(),
        });
    }
    let mut t = x.clone();
    t.normalize();
    let r = t.rank();
    t.shape.swap(r - 2, r - 1);
    t.split.swap(r - 2, r - 1);
    Ok(t)
}

pub(super) fn batch_matmul(inputs: &[&TensorType]) -> Result<TensorType> {
    arity(inputs, 2)?;
    rank(inputs, 0, 3)?;
    rank(inputs, 1, 3)?;
    float(inputs, 0)?;
    same_dtype(inputs, 0, 1)?;
    let (a, b) = (inputs[0], inputs[1]);
    same_dim(inputs, (0, 0), (1, 0), "batch dim")?;
    let batch = same_split(inputs, (0, 0), (1, 0), "batch dim")?;
    same_dim(inputs, (0, 2), (1, 1), "contracted dim")?;
    let k = same_split(inputs, (0, 2), (1, 1), "contracted dim")?;
    let mut partial = product_partial(a, b)?;
    partial.extend(k);
    Ok(make(
        a.dtype,
        vec![a.shape[0], a.shape[1], b.shape[2]],
        vec![batch, a.split_of(1).to_vec(), b.split_of(2).to_vec()],
        partial,
    ))
}

/// `add` (`is_mul == false`) and `mul`: broadcasting elementwise binary ops. Shapes align at the
/// right (numpy rules): a missing leading dim or a dim of 1 broadcasts.
pub(super) fn elementwise(inputs: &[&TensorType], is_mul: bool) -> Result<TensorType> {
    arity(inputs, 2)?;
    let (a, b) = (inputs[0], inputs[1]);
    float(inputs, 0)?;
    if is_mul {
        // A factor of another float type (f32 router weights scaling bf16 tokens).
        float(inputs, 1)?;
    } else {
        same_dtype(inputs, 0, 1)?;
    }
    let r = a.rank().max(b.rank());
    // (size, split) of dim d of the broadcast result for operand t, None when t lacks that dim.
    let dim = |t: &TensorType, d: usize| -> Option<(u64, Vec<String>)> {
        let off = r - t.rank();
        (d >= off).then(|| (t.shape[d - off], t.split_of(d - off).to_vec()))
    };
    let mut shape = Vec::with_capacity(r);
    let mut split = Vec::with_capacity(r);
    for d in 0..r {
        let (n, s) = match (dim(a, d), dim(b, d)) {
            (Some(x), None) | (None, Some(x)) => x,
            (Some((x, sx)), Some((y, sy))) => {
                if x == y {
                    if sx != sy {
                        return Err(TypeError::Sharding(format!(
                            "dim {d} is split on [{}] in input 0 but on [{}] in input 1",
                            sx.join(","),
                            sy.join(",")
                        )));
                    }
                    (x, sx)
                } else if x == 1 && sx.is_empty() {
                    (y, sy)
                } else if y == 1 && sy.is_empty() {
                    (x, sx)
                } else {
                    return Err(TypeError::Shape(format!(
                        "dim {d}: {x} and {y} neither match nor broadcast ({a} vs {b})"
                    )));
                }
            }
            (None, None) => unreachable!("d < max rank"),
        };
        shape.push(n);
        split.push(s);
    }
    let partial = if is_mul {
        product_partial(a, b)?
    } else {
        let mut pa = a.partial.clone();
        let mut pb = b.partial.clone();
        pa.sort();
        pb.sort();
        if pa != pb {
            return Err(TypeError::Sharding(format!(
                "adding a value partial on [{}] to one partial on [{}] counts one of them more than once",
                a.partial.join(","),
                b.partial.join(",")
            )));
        }
        a.partial.clone()
    };
    Ok(make(a.dtype, shape, split, partial))
}

pub(super) fn unary(inputs: &[&TensorType]) -> Result<TensorType> {
    arity(inputs, 1)?;
    float(inputs, 0)?;
    not_partial(inputs, 0)?;
    Ok(inputs[0].clone())
}

pub(super) fn swiglu(inputs: &[&TensorType]) -> Result<TensorType> {
    arity(inputs, 2)?;
    float(inputs, 0)?;
    not_partial(inputs, 0)?;
    not_partial(inputs, 1)?;
    let (g, u) = (inputs[0], inputs[1]);
    let mut gn = g.clone();
    let mut un = u.clone();
    gn.normalize();
    un.normalize();
    if gn != un {
        return Err(TypeError::Shape(format!(
            "gate {g} and up {u} must have the same type"
        )));
    }
    Ok(g.clone())
}

pub(super) fn softmax(inputs: &[&TensorType]) -> Result<TensorType> {
    arity(inputs, 1)?;
    float(inputs, 0)?;
    not_partial(inputs, 0)?;
    let r = inputs[0].rank();
    if r == 0 {
        return Err(TypeError::Rank {
            input: 0,
            expected: "at least 1".into(),
            got: 0,
            ty: inputs[0].to_string(),
        });
    }
    unsplit(inputs, 0, r - 1, "the softmax dim")?;
    Ok(inputs[0].clone())
}

/// `rms_norm` / `layer_norm`: normalizes each consecutive group of `len(w)` elements of the last
/// dim (the whole dim, or one head at a time for per-head q/k norms).
pub(super) fn norm(
    inputs: &[&TensorType],
    bias: bool,
    eps: f64,
    mesh: &Mesh,
) -> Result<TensorType> {
    let n = if bias { 3 } else { 2 };
    arity(inputs, n)?;
    float(inputs, 0)?;
    not_partial(inputs, 0)?;
    if !(eps.is_finite() && eps > 0.0) {
        return Err(TypeError::Attr(format!(
            "eps = {eps} must be a positive finite number"
        )));
    }
    let x = inputs[0];
    if x.rank() == 0 {
        return Err(TypeError::Rank {
            input: 0,
            expected: "at least 1".into(),
            got: 0,
            ty: x.to_string(),
        });
    }
    let h = x.rank() - 1;
    for i in 1..n {
        rank(inputs, i, 1)?;
        float(inputs, i)?;
        same_dim(inputs, (1, 0), (i, 0), "norm parameters")?;
        replicated(inputs, i, "the norm's parameter")?;
    }
    let group = inputs[1].shape[0];
    let local = x.shape[h] / mesh.product(x.split_of(h));
    if x.shape[h] % group != 0 || local % group != 0 {
        return Err(TypeError::Shape(format!(
            "the norm's groups of {group} must tile the last dim of {x} on every rank ({local} elements each)"
        )));
    }
    Ok(x.clone())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::{infer, DType, Mesh, Op, TensorType};

    #[test]
    fn megatron_mlp_typing() {
        let m = Mesh::parse("tp=2", 8).unwrap();
        let x = TensorType::new(DType::Bf16, [8, 16]);
        let w1 = TensorType::new(DType::Bf16, [16, 32]).with_split(1, &["tp"]);
        let h = infer(&Op::Matmul, &[&x, &w1], &m).unwrap().remove(0);
        assert_eq!(h.to_string(), "bf16[8, 32@tp]");
        let w2 = TensorType::new(DType::Bf16, [32, 16]).with_split(0, &["tp"]);
        let y = infer(&Op::Matmul, &[&h, &w2], &m).unwrap().remove(0);
        assert_eq!(y.to_string(), "bf16[8, 16] partial(tp)");
        // A nonlinearity of a partial sum is not the sum of nonlinearities.
        assert!(infer(&Op::Gelu, &[&y], &m).is_err());
        // Adding a replicated residual to a partial sum would count it twice.
        assert!(infer(&Op::Add, &[&x, &y], &m).is_err());
    }

    #[test]
    fn broadcasting_aligns_right() {
        let m = Mesh::single();
        let x = TensorType::new(DType::F32, [8, 16]);
        let b = TensorType::new(DType::F32, [16]);
        assert_eq!(infer(&Op::Add, &[&x, &b], &m).unwrap()[0], x);
        let g = TensorType::new(DType::F32, [8, 1]);
        assert_eq!(infer(&Op::Mul, &[&x, &g], &m).unwrap()[0], x);
        let bad = TensorType::new(DType::F32, [8]);
        assert!(infer(&Op::Add, &[&x, &bad], &m).is_err());
    }

    #[test]
    fn per_head_norm_keeps_heads_whole() {
        let m = Mesh::parse("tp=4", 8).unwrap();
        let q = TensorType::new(DType::F32, [8, 8 * 16]).with_split(1, &["tp"]);
        let w = TensorType::new(DType::F32, [16]);
        assert!(infer(&Op::RmsNorm { eps: 1e-6.into() }, &[&q, &w], &m).is_ok());
        let full = TensorType::new(DType::F32, [128]);
        assert!(infer(&Op::RmsNorm { eps: 1e-6.into() }, &[&q, &full], &m).is_err());
    }

    #[test]
    fn rope_scaling_needs_rope_and_sane_numbers() {
        use crate::{
            AttentionAttrs, Llama3Scaling, Mask, RopePairs, RopeScaling, YarnScaling, F64,
        };
        let m = Mesh::single();
        let x = TensorType::new(DType::F32, [4, 8]);
        let yarn = YarnScaling {
            factor: F64(40.0),
            original_max_position_embeddings: 4096,
            beta_fast: F64(32.0),
            beta_slow: F64(1.0),
            mscale: F64(1.0),
            mscale_all_dim: F64(1.0),
            truncate: true,
        };
        let a = AttentionAttrs {
            heads: 2,
            kv_heads: 2,
            head_dim: 4,
            v_head_dim: 4,
            rope_dim: 4,
            shared_k_dim: 0,
            rope_theta: F64(10_000.0),
            rope_pairs: RopePairs::Halves,
            rope_scaling: Some(RopeScaling::Yarn(yarn)),
            qk_norm_eps: None,
            query_temperature: None,
            clip_qkv: None,
            softmax_scale: None,
            position_bias: None,
            seq: 4,
            kv_seq: 4,
            mask: Mask::Causal,
            sinks: false,
        };
        let typed = |a: AttentionAttrs| infer(&Op::Attention(Box::new(a)), &[&x, &x, &x], &m);
        assert_eq!(typed(a).unwrap()[0], x);
        let linear = Some(RopeScaling::Linear { factor: F64(2.0) });
        assert!(typed(AttentionAttrs {
            rope_scaling: linear,
            ..a
        })
        .is_ok());
        let llama3 = Llama3Scaling {
            factor: F64(8.0),
            low_freq_factor: F64(1.0),
            high_freq_factor: F64(4.0),
            original_max_position_embeddings: 8192,
        };
        assert!(typed(AttentionAttrs {
            rope_scaling: Some(RopeScaling::Llama3(llama3)),
            ..a
        })
        .is_ok());
        let bad = [
            AttentionAttrs { rope_dim: 0, ..a },
            AttentionAttrs {
                rope_scaling: Some(RopeScaling::Linear { factor: F64(0.0) }),
                ..a
            },
            AttentionAttrs {
                rope_scaling: Some(RopeScaling::Yarn(YarnScaling {
                    beta_slow: F64(f64::NAN),
                    ..yarn
                })),
                ..a
            },
            AttentionAttrs {
                rope_scaling: Some(RopeScaling::Yarn(YarnScaling {
                    original_max_position_embeddings: 0,
                    ..yarn
                })),
                ..a
            },
            AttentionAttrs {
                rope_theta: F64(1.0),
                ..a
            },
            AttentionAttrs {
                rope_scaling: Some(RopeScaling::Llama3(Llama3Scaling {
                    high_freq_factor: F64(1.0),
                    ..llama3
                })),
                ..a
            },
            AttentionAttrs {
                rope_scaling: Some(RopeScaling::Llama3(Llama3Scaling {
                    low_freq_factor: F64(0.0),
                    ..llama3
                })),
                ..a
            },
            AttentionAttrs {
                rope_scaling: Some(RopeScaling::Llama3(Llama3Scaling {
                    original_max_position_embeddings: 0,
                    ..llama3
                })),
                ..a
            },
        ];
        for b in bad {
            let e = typed(b).unwrap_err();
            assert!(e.to_string().contains("rope_scaling"), "{b:?}: {e}");
        }
    }

    #[test]
    fn pairing_norm_and_temperature_ranges() {
        use crate::{AttentionAttrs, Mask, QueryTemperature, RopePairs, F64};
        let m = Mesh::single();
        let x = TensorType::new(DType::F32, [4, 8]);
        let a = AttentionAttrs {
            heads: 2,
            kv_heads: 2,
            head_dim: 4,
            v_head_dim: 4,
            rope_dim: 4,
            shared_k_dim: 0,
            rope_theta: F64(10_000.0),
            rope_pairs: RopePairs::Interleaved,
            rope_scaling: None,
            qk_norm_eps: Some(F64(1e-5)),
            query_temperature: Some(QueryTemperature {
                floor_scale: F64(8192.0),
                attn_scale: F64(0.1),
            }),
            clip_qkv: Some(F64(8.0)),
            softmax_scale: None,
            position_bias: None,
            seq: 4,
            kv_seq: 4,
            mask: Mask::Causal,
            sinks: false,
        };
        let typed = |a: AttentionAttrs| infer(&Op::Attention(Box::new(a)), &[&x, &x, &x], &m);
        assert_eq!(typed(a).unwrap()[0], x);
        // Without RoPE, halves (the default) is fine and interleaved is refused.
        assert!(typed(AttentionAttrs {
            rope_dim: 0,
            rope_pairs: RopePairs::Halves,
            ..a
        })
        .is_ok());
        let bad = [
            (AttentionAttrs { rope_dim: 0, ..a }, "rope_pairs"),
            (
                AttentionAttrs {
                    qk_norm_eps: Some(F64(0.0)),
                    ..a
                },
                "qk_norm_eps",
            ),
            (
                AttentionAttrs {
                    clip_qkv: Some(F64(-1.0)),
                    softmax_scale: None,
                    position_bias: None,
                    ..a
                },
                "clip_qkv",
            ),
            (
                AttentionAttrs {
                    qk_norm_eps: Some(F64(f64::INFINITY)),
                    ..a
                },
                "qk_norm_eps",
            ),
            (
                AttentionAttrs {
                    query_temperature: Some(QueryTemperature {
                        floor_scale: F64(0.0),
                        attn_scale: F64(0.1),
                    }),
                    ..a
                },
                "query_temperature",
            ),
            (
                AttentionAttrs {
                    query_temperature: Some(QueryTemperature {
                        floor_scale: F64(8.0),
                        attn_scale: F64(f64::NAN),
                    }),
                    ..a
                },
                "query_temperature",
            ),
        ];
        for (b, key) in bad {
            let e = typed(b).unwrap_err();
            assert!(e.to_string().contains(key), "{b:?}: {e}");
        }
    }
}
