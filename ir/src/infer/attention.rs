//! The typing rule of `attention` (see [`crate::Op::Attention`]) and the ranges of its
//! position attributes.

use super::*;
use crate::op::{AttentionAttrs, RopeScaling};

pub(super) fn attention(
    a: &AttentionAttrs,
    inputs: &[&TensorType],
    mesh: &Mesh,
) -> Result<TensorType> {
    let shared = a.shared_k_dim > 0;
    let table = a.position_bias.is_some();
    let n = 3 + usize::from(shared) + usize::from(a.sinks) + usize::from(table);
    arity(inputs, n)?;
    let sinks_at = (a.sinks).then_some(n - 1 - usize::from(table));
    for i in 0..n {
        rank(inputs, i, if sinks_at == Some(i) { 1 } else { 2 })?;
        float(inputs, i)?;
        same_dtype(inputs, 0, i)?;
        not_partial(inputs, i)?;
    }
    if a.heads == 0 || a.kv_heads == 0 || a.heads % a.kv_heads != 0 {
        return Err(TypeError::Attr(format!(
            "heads ({}) must be a positive multiple of kv_heads ({})",
            a.heads, a.kv_heads
        )));
    }
    let window = match a.mask {
        crate::op::Mask::Sliding(w) | crate::op::Mask::Chunked(w) => w,
        _ => 1,
    };
    if a.shared_k_dim >= a.head_dim
        || a.rope_dim > a.head_dim
        || a.seq == 0
        || a.kv_seq == 0
        || window == 0
    {
        return Err(TypeError::Attr(format!(
            "need shared_k_dim < head_dim, rope_dim <= head_dim and positive seq lengths \
             and a positive window (head_dim {}, shared_k_dim {}, rope_dim {}, seq {}, kv_seq {})",
            a.head_dim, a.shared_k_dim, a.rope_dim, a.seq, a.kv_seq
        )));
    }
    rope_scaling(a)?;
    position_attrs(a)?;
    let (q, k) = (inputs[0], inputs[1]);
    expect_dim(
        inputs,
        0,
        1,
        limits::dim_product("heads*head_dim", a.heads, a.head_dim)?,
        "query width heads*head_dim",
    )?;
    expect_dim(
        inputs,
        1,
        1,
        limits::dim_product("kv_heads*head_dim", a.kv_heads, a.head_dim - a.shared_k_dim)?,
        "key width",
    )?;
    expect_dim(
        inputs,
        2,
        1,
        limits::dim_product("kv_heads*v_head_dim", a.kv_heads, a.v_head_dim)?,
        "value width kv_heads*v_head_dim",
    )?;
    if q.shape[0] % a.seq != 0
        || k.shape[0] % a.kv_seq != 0
        || q.shape[0] / a.seq != k.shape[0] / a.kv_seq
    {
        return Err(TypeError::Shape(format!(
            "query rows {} and key rows {} must be the same number of sequences of {} and {} tokens",
            q.shape[0], k.shape[0], a.seq, a.kv_seq
        )));
    }
    same_dim(inputs, (1, 0), (2, 0), "key/value rows")?;
    let tokens = same_split(inputs, (0, 0), (1, 0), "token dim")?;
    same_split(inputs, (0, 0), (2, 0), "token dim")?;
    let factor = mesh.product(&tokens);
    if (q.shape[0] / a.seq) % factor != 0 {
        return Err(TypeError::Sharding(format!(
            "{} sequences split over {factor} ranks ([{}]) leave a rank with a partial sequence",
            q.shape[0] / a.seq,
            tokens.join(",")
        )));
    }
    // Keys and values are split like the query heads, or replicated: then each rank reads the
    // kv heads its query heads use (GQA with fewer kv heads than ranks).
    let heads = inputs[0].split_of(1).to_vec();
    let kv_replicated = inputs[1].split_of(1).is_empty() && inputs[2].split_of(1).is_empty();
    if !kv_replicated {
        same_split(inputs, (0, 1), (1, 1), "head dim")?;
        same_split(inputs, (0, 1), (2, 1), "head dim")?;
    }
    let hf = mesh.product(&heads);
    if a.heads % hf != 0 || (!kv_replicated && a.kv_heads % hf != 0) {
        return Err(TypeError::Sharding(format!(
            "heads ({}) and split kv_heads ({}) must be divisible by the head split ({hf} ranks)",
            a.heads, a.kv_heads
        )));
    }
    let mut next = 3;
    if shared {
        expect_dim(inputs, 3, 1, a.shared_k_dim, "shared key width")?;
        same_dim(inputs, (1, 0), (3, 0), "shared key rows")?;
        same_split(inputs, (1, 0), (3, 0), "token dim")?;
        unsplit(inputs, 3, 1, "the shared key")?;
        next += 1;
    }
    if a.sinks {
        expect_dim(inputs, next, 0, a.heads, "sinks")?;
        if inputs[next].split_of(0) != heads.as_slice() {
            return Err(TypeError::Sharding(
                "sinks must be split like the heads".into(),
            ));
        }
        next += 1;
    }
    if let Some(b) = a.position_bias {
        expect_dim(inputs, next, 0, b.buckets, "position bias buckets")?;
        expect_dim(inputs, next, 1, a.heads, "position bias heads")?;
        unsplit(inputs, next, 0, "the position bias table")?;
        unsplit(inputs, next, 1, "the position bias table")?;
        if b.buckets < 2 || b.max_distance == 0 || (b.bidirectional && b.buckets < 4) {
            return Err(TypeError::Attr(format!(
                "position_bias needs at least 2 buckets (4 bidirectional) and a positive \
                 max_distance, has {} and {}",
                b.buckets, b.max_distance
            )));
        }
    }
    Ok(make(
        q.dtype,
        vec![
            q.shape[0],
            limits::dim_product("heads*v_head_dim", a.heads, a.v_head_dim)?,
        ],
        vec![tokens, heads],
        vec![],
    ))
}

/// The ranges of `rope_pairs`, `qk_norm_eps`, `query_temperature` and `clip_qkv`.
fn position_attrs(a: &AttentionAttrs) -> Result<()> {
    if let Some(s) = a.softmax_scale {
        if !(s.0.is_finite() && s.0 > 0.0) {
            return Err(TypeError::Attr(format!(
                "softmax_scale must be a positive number, is {s}"
            )));
        }
    }
    if let Some(c) = a.clip_qkv {
        if !(c.0.is_finite() && c.0 > 0.0) {
            return Err(TypeError::Attr(format!(
                "clip_qkv must be a positive number, is {c}"
            )));
        }
    }
    if !a.rope_pairs.is_halves() && a.rope_dim == 0 {
        return Err(TypeError::Attr(
            "rope_pairs: interleaved needs rope_dim > 0 (there is no RoPE to pair)".into(),
        ));
    }
    if let Some(eps) = a.qk_norm_eps {
        if !(eps.0.is_finite() && eps.0 > 0.0) {
            return Err(TypeError::Attr(format!(
                "qk_norm_eps must be a positive number, is {eps}"
            )));
        }
    }
    if let Some(t) = a.query_temperature {
        if !(t.floor_scale.0.is_finite() && t.floor_scale.0 > 0.0 && t.attn_scale.0.is_finite()) {
            return Err(TypeError::Attr(format!(
                "query_temperature needs a positive floor_scale and a finite attn_scale, \
                 has floor_scale {} and attn_scale {}",
                t.floor_scale, t.attn_scale
            )));
        }
    }
    Ok(())
}

/// The ranges of `rope_scaling` (see [`RopeScaling`]).
fn rope_scaling(a: &AttentionAttrs) -> Result<()> {
    let Some(s) = a.rope_scaling else {
        return Ok(());
    };
    let bad = |why: String| Err(TypeError::Attr(format!("rope_scaling: {why}")));
    if a.rope_dim == 0 {
        return bad("needs rope_dim > 0 (there is no RoPE to scale)".into());
    }
    let positive = |name: &str, v: f64| {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            bad(format!("{name} must be a positive number, is {v}"))
        }
    };
    match s {
        RopeScaling::Linear { factor } => positive("factor", factor.0),
        RopeScaling::Yarn(y) => {
            positive("factor", y.factor.0)?;
            positive("beta_fast", y.beta_fast.0)?;
            positive("beta_slow", y.beta_slow.0)?;
            if y.original_max_position_embeddings == 0 {
                return bad("original_max_position_embeddings must be positive".into());
            }
            for (name, v) in [
                ("mscale", y.mscale.0),
                ("mscale_all_dim", y.mscale_all_dim.0),
            ] {
                if !v.is_finite() {
                    return bad(format!("{name} must be a finite number, is {v}"));
                }
            }
            if !(a.rope_theta.0.is_finite() && a.rope_theta.0 > 1.0) {
                return bad(format!(
                    "yarn needs rope_theta > 1 (its logarithm divides), is {}",
                    a.rope_theta
                ));
            }
            Ok(())
        }
        RopeScaling::Llama3(l) => {
            positive("factor", l.factor.0)?;
            positive("low_freq_factor", l.low_freq_factor.0)?;
            if !(l.high_freq_factor.0.is_finite() && l.high_freq_factor.0 > l.low_freq_factor.0) {
                return bad(format!(
                    "llama3 needs high_freq_factor > low_freq_factor, has {} and {}",
                    l.high_freq_factor, l.low_freq_factor
                ));
            }
            if l.original_max_position_embeddings == 0 {
                return bad("original_max_position_embeddings must be positive".into());
            }
            Ok(())
        }
    }
}
