//! Type inference: each op's typing and sharding rules as plain functions.
//!
//! [`infer`] computes an op's output types from its input types; the validator and the rewrite
//! passes share it, so a rewrite can never produce a type the validator would refuse.
//! Rules are grouped by op family: [`dense`], [`routing`], [`collective`].

mod attention;
mod collective;
mod dense;
pub(crate) mod routing;

use crate::limits::{self, TooLarge};
use crate::{DType, Mesh, Op, TensorType};
pub use routing::local_route_rows;
use thiserror::Error;

/// Why an op cannot be typed. Messages name the input by position (0-based).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TypeError {
    #[error("expects {expected} inputs, got {got}")]
    Arity { expected: String, got: usize },
    #[error("input {input} must have rank {expected}, has rank {got} ({ty})")]
    Rank {
        input: usize,
        expected: String,
        got: usize,
        ty: String,
    },
    #[error("input {input} must be {expected}, is {got}")]
    DType {
        input: usize,
        expected: String,
        got: DType,
    },
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("sharding: {0}")]
    Sharding(String),
    #[error("attribute: {0}")]
    Attr(String),
    #[error("mesh axis `{axis}` is not in the mesh ({mesh})")]
    UnknownAxis { axis: String, mesh: String },
    #[error("mesh axis `{axis}` appears twice in type {ty}")]
    AxisTwice { axis: String, ty: String },
    #[error(
        "dim {dim} of size {size} is split over {axes} of {factor} ranks, which does not divide it"
    )]
    NotDivisible {
        dim: usize,
        size: u64,
        axes: String,
        factor: u64,
    },
    #[error("dim {dim} has size 0")]
    ZeroDim { dim: usize },
    #[error("split lists {got} dims but the shape has rank {rank}")]
    SplitRank { got: usize, rank: usize },
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
}

pub(crate) type Result<T> = std::result::Result<T, TypeError>;

/// Output types of `op` applied to values of types `inputs`, on `mesh`.
///
/// Returns one type per output (none for `send`), each canonical (see [`TensorType::canonical`])
/// and checked for well-formedness on `mesh`.
pub fn infer(op: &Op, inputs: &[&TensorType], mesh: &Mesh) -> Result<Vec<TensorType>> {
    for t in inputs {
        check_type(t, mesh)?;
    }
    let outs = match op {
        Op::Input(t) | Op::Weight(t) | Op::Zeros(t) => {
            arity(inputs, 0)?;
            vec![t.clone()]
        }
        Op::Recv { ty, .. } => {
            arity(inputs, 0)?;
            vec![ty.clone()]
        }
        Op::Send { .. } => {
            arity(inputs, 1)?;
            vec![]
        }
        Op::Embedding => vec![dense::embedding(inputs)?],
        Op::Matmul => vec![dense::matmul(inputs)?],
        Op::Transpose => vec![dense::transpose(inputs)?],
        Op::Scale { factor } => {
            arity(inputs, 1)?;
            float(inputs, 0)?;
            if !factor.0.is_finite() {
                return Err(TypeError::Attr(format!(
                    "scale: factor {factor} must be finite"
                )));
            }
            vec![inputs[0].clone()]
        }
        Op::BatchMatmul => vec![dense::batch_matmul(inputs)?],
        Op::Add => vec![dense::elementwise(inputs, false)?],
        Op::Mul => vec![dense::elementwise(inputs, true)?],
        Op::Gelu | Op::Silu | Op::Relu | Op::Sigmoid => vec![dense::unary(inputs)?],
        Op::Swiglu => vec![dense::swiglu(inputs)?],
        Op::Softmax => vec![dense::softmax(inputs)?],
        Op::RmsNorm { eps } => vec![dense::norm(inputs, false, eps.0, mesh)?],
        Op::LayerNorm { eps, bias } => vec![dense::norm(inputs, *bias, eps.0, mesh)?],
        Op::Attention(a) => vec![attention::attention(a, inputs, mesh)?],
        Op::Router(a) => routing::router(a, inputs)?,
        Op::Dispatch { experts, capacity } => {
            vec![routing::dispatch(*experts, *capacity, inputs, mesh)?]
        }
        Op::Combine { experts, capacity } => {
            vec![routing::combine(*experts, *capacity, inputs, mesh)?]
        }
        Op::LocalRoutes {
            experts,
            axis,
            capacity,
            token_groups,
        } => routing::local_routes(*experts, axis, *capacity, *token_groups, inputs, mesh)?,
        Op::IndexSelect => vec![routing::index_select(inputs)?],
        Op::IndexAdd { scaled } => vec![routing::index_add(*scaled, inputs)?],
        Op::ExpertFfn {
            layout,
            act,
            gated,
            bias,
        } => vec![routing::expert_ffn(*layout, *act, *gated, *bias, inputs)?],
        Op::AllToAll {
            axis,
            split_dim,
            concat_dim,
        } => {
            vec![collective::all_to_all(
                axis,
                *split_dim,
                *concat_dim,
                inputs,
                mesh,
            )?]
        }
        Op::AllReduce { axis } => vec![collective::all_reduce(axis, inputs, mesh)?],
        Op::AllGather { axis, dim } => vec![collective::all_gather(axis, *dim, inputs, mesh)?],
        Op::ReduceScatter { axis, dim } => {
            vec![collective::reduce_scatter(axis, *dim, inputs, mesh)?]
        }
        Op::Shard { axis, dim } => vec![collective::shard(axis, *dim, inputs, mesh)?],
    };
    outs.into_iter()
        .map(|t| {
            let t = t.canonical(mesh);
            check_type(&t, mesh)?;
            Ok(t)
        })
        .collect()
}

/// Checks that a type is well-formed on `mesh`: `split` has at most one entry per dim, every axis
/// exists and appears once, no dim is 0, every split dim is divisible by its ranks, and no size is
/// above [`crate::limits`] (so the type's element and byte counts are exact in `u64`).
pub fn check_type(t: &TensorType, mesh: &Mesh) -> Result<()> {
    limits::check_shape(&t.shape, t.dtype.size_bytes())?;
    if t.split.len() > t.rank() {
        return Err(TypeError::SplitRank {
            got: t.split.len(),
            rank: t.rank(),
        });
    }
    let mut seen: Vec<&str> = Vec::new();
    for a in t.axes() {
        if mesh.axis(a).is_none() {
            return Err(TypeError::UnknownAxis {
                axis: a.to_string(),
                mesh: mesh.to_string(),
            });
        }
        if seen.contains(&a) {
            return Err(TypeError::AxisTwice {
                axis: a.to_string(),
                ty: t.to_string(),
            });
        }
        seen.push(a);
    }
    for (d, &n) in t.shape.iter().enumerate() {
        if n == 0 {
            return Err(TypeError::ZeroDim { dim: d });
        }
        let axes = t.split_of(d);
        let factor = mesh.product(axes);
        if n % factor != 0 {
            return Err(TypeError::NotDivisible {
                dim: d,
                size: n,
                axes: axes.join("."),
                factor,
            });
        }
    }
    Ok(())
}

// ----- helpers shared by the rule files -----

pub(crate) fn arity(inputs: &[&TensorType], n: usize) -> Result<()> {
    if inputs.len() != n {
        return Err(TypeError::Arity {
            expected: n.to_string(),
            got: inputs.len(),
        });
    }
    Ok(())
}

pub(crate) fn rank(inputs: &[&TensorType], i: usize, r: usize) -> Result<()> {
    let t = inputs[i];
    if t.rank() != r {
        return Err(TypeError::Rank {
            input: i,
            expected: r.to_string(),
            got: t.rank(),
            ty: t.to_string(),
        });
    }
    Ok(())
}

pub(crate) fn float(inputs: &[&TensorType], i: usize) -> Result<()> {
    if !inputs[i].dtype.is_float() {
        return Err(TypeError::DType {
            input: i,
            expected: "a float type".into(),
            got: inputs[i].dtype,
        });
    }
    Ok(())
}

pub(crate) fn int(inputs: &[&TensorType], i: usize) -> Result<()> {
    if inputs[i].dtype != DType::I32 {
        return Err(TypeError::DType {
            input: i,
            expected: "i32".into(),
            got: inputs[i].dtype,
        });
    }
    Ok(())
}

pub(crate) fn same_dtype(inputs: &[&TensorType], a: usize, b: usize) -> Result<()> {
    if inputs[a].dtype != inputs[b].dtype {
        return Err(TypeError::DType {
            input: b,
            expected: format!("{} like input {a}", inputs[a].dtype),
            got: inputs[b].dtype,
        });
    }
    Ok(())
}

pub(crate) fn not_partial(inputs: &[&TensorType], i: usize) -> Result<()> {
    let t = inputs[i];
    if !t.partial.is_empty() {
        return Err(TypeError::Sharding(format!(
            "input {i} ({t}) holds partial sums; reduce it (all_reduce) first"
        )));
    }
    Ok(())
}

pub(crate) fn unsplit(inputs: &[&TensorType], i: usize, d: usize, what: &str) -> Result<()> {
    let t = inputs[i];
    if !t.split_of(d).is_empty() {
        return Err(TypeError::Sharding(format!(
            "input {i} ({t}): {what} (dim {d}) must not be split, is split on {}",
            t.split_of(d).join(".")
        )));
    }
    Ok(())
}

pub(crate) fn replicated(inputs: &[&TensorType], i: usize, what: &str) -> Result<()> {
    let t = inputs[i];
    if !t.is_replicated() {
        return Err(TypeError::Sharding(format!(
            "input {i} ({t}), {what}, must be replicated"
        )));
    }
    Ok(())
}

pub(crate) fn same_split(
    inputs: &[&TensorType],
    (a, da): (usize, usize),
    (b, db): (usize, usize),
    what: &str,
) -> Result<Vec<String>> {
    let (sa, sb) = (inputs[a].split_of(da), inputs[b].split_of(db));
    if sa != sb {
        return Err(TypeError::Sharding(format!(
            "{what}: dim {da} of input {a} is split on [{}] but dim {db} of input {b} on [{}]",
            sa.join(","),
            sb.join(",")
        )));
    }
    Ok(sa.to_vec())
}

pub(crate) fn same_dim(
    inputs: &[&TensorType],
    (a, da): (usize, usize),
    (b, db): (usize, usize),
    what: &str,
) -> Result<u64> {
    let (x, y) = (inputs[a].shape[da], inputs[b].shape[db]);
    if x != y {
        return Err(TypeError::Shape(format!(
            "{what}: dim {da} of input {a} is {x} but dim {db} of input {b} is {y} ({} vs {})",
            inputs[a], inputs[b]
        )));
    }
    Ok(x)
}

pub(crate) fn expect_dim(
    inputs: &[&TensorType],
    i: usize,
    d: usize,
    n: u64,
    what: &str,
) -> Result<()> {
    let got = inputs[i].shape[d];
    if got != n {
        return Err(TypeError::Shape(format!(
            "{what}: dim {d} of input {i} ({}) must be {n}, is {got}",
            inputs[i]
        )));
    }
    Ok(())
}

pub(crate) fn axis_exists(axis: &str, mesh: &Mesh) -> Result<u64> {
    mesh.axis(axis)
        .map(|a| u64::from(a.size))
        .ok_or_else(|| TypeError::UnknownAxis {
            axis: axis.to_string(),
            mesh: mesh.to_string(),
        })
}

/// Builds a type from parts (partial axes deduplicated in first-seen order).
pub(crate) fn make(
    dtype: DType,
    shape: Vec<u64>,
    split: Vec<Vec<String>>,
    partial: Vec<String>,
) -> TensorType {
    let mut p: Vec<String> = Vec::new();
    for a in partial {
        if !p.contains(&a) {
            p.push(a);
        }
    }
    TensorType {
        dtype,
        shape,
        split,
        partial: p,
    }
}
