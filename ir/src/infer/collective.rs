//! Typing rules of collectives: each changes the layout over one mesh axis, never the global
//! shape or the logical value.

use super::*;

fn one_input(axis: &str, inputs: &[&TensorType], mesh: &Mesh) -> Result<TensorType> {
    arity(inputs, 1)?;
    axis_exists(axis, mesh)?;
    let mut t = inputs[0].clone();
    t.normalize();
    Ok(t)
}

fn dim_in_range(t: &TensorType, dim: usize, what: &str) -> Result<()> {
    if dim >= t.rank() {
        return Err(TypeError::Attr(format!(
            "{what} = {dim} is out of range for {t}"
        )));
    }
    Ok(())
}

/// Removes `axis` from the minor end of dim `dim`'s split, or explains why it is not there.
fn take_minor(t: &mut TensorType, dim: usize, axis: &str) -> Result<()> {
    if t.split[dim].last().map(String::as_str) != Some(axis) {
        return Err(TypeError::Sharding(format!(
            "dim {dim} of {t} must be split on `{axis}` as its minor-most axis"
        )));
    }
    t.split[dim].pop();
    Ok(())
}

fn take_partial(t: &mut TensorType, axis: &str) -> Result<()> {
    let Some(i) = t.partial.iter().position(|a| a == axis) else {
        return Err(TypeError::Sharding(format!(
            "{t} is not partial on `{axis}`: nothing to reduce"
        )));
    };
    t.partial.remove(i);
    Ok(())
}

pub(super) fn all_to_all(
    axis: &str,
    split_dim: usize,
    concat_dim: usize,
    inputs: &[&TensorType],
    mesh: &Mesh,
) -> Result<TensorType> {
    let mut t = one_input(axis, inputs, mesh)?;
    dim_in_range(&t, split_dim, "split_dim")?;
    dim_in_range(&t, concat_dim, "concat_dim")?;
    if split_dim == concat_dim {
        return Err(TypeError::Attr(
            "split_dim and concat_dim must differ".into(),
        ));
    }
    if t.is_partial_on(axis) {
        return Err(TypeError::Sharding(format!("{t} is partial on `{axis}`")));
    }
    take_minor(&mut t, concat_dim, axis)?;
    t.split[split_dim].push(axis.to_string());
    Ok(t)
}

pub(super) fn all_reduce(axis: &str, inputs: &[&TensorType], mesh: &Mesh) -> Result<TensorType> {
    let mut t = one_input(axis, inputs, mesh)?;
    take_partial(&mut t, axis)?;
    Ok(t)
}

pub(super) fn all_gather(
    axis: &str,
    dim: usize,
    inputs: &[&TensorType],
    mesh: &Mesh,
) -> Result<TensorType> {
    let mut t = one_input(axis, inputs, mesh)?;
    dim_in_range(&t, dim, "dim")?;
    take_minor(&mut t, dim, axis)?;
    Ok(t)
}

pub(super) fn reduce_scatter(
    axis: &str,
    dim: usize,
    inputs: &[&TensorType],
    mesh: &Mesh,
) -> Result<TensorType> {
    let mut t = one_input(axis, inputs, mesh)?;
    dim_in_range(&t, dim, "dim")?;
    take_partial(&mut t, axis)?;
    t.split[dim].push(axis.to_string());
    Ok(t)
}

/// `shard`: the local inverse of `all_gather` (no communication).
pub(super) fn shard(
    axis: &str,
    dim: usize,
    inputs: &[&TensorType],
    mesh: &Mesh,
) -> Result<TensorType> {
    let mut t = one_input(axis, inputs, mesh)?;
    dim_in_range(&t, dim, "dim")?;
    if !t.is_replicated_on(axis) {
        return Err(TypeError::Sharding(format!(
            "{t} is not replicated on `{axis}`: only a replicated value can be sharded locally"
        )));
    }
    t.split[dim].push(axis.to_string());
    Ok(t)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::{infer, DType, Mesh, Op, TensorType};

    #[test]
    fn all_to_all_moves_the_split() {
        let mesh = Mesh::parse("ep=4", 8).unwrap();
        let d = TensorType::new(DType::Bf16, [8, 64, 16]).with_split(1, &["ep"]);
        let op = Op::AllToAll {
            axis: "ep".into(),
            split_dim: 0,
            concat_dim: 1,
        };
        let out = infer(&op, &[&d], &mesh).unwrap();
        assert_eq!(out[0].to_string(), "bf16[8@ep, 64, 16]");
        assert_eq!(out[0].local_shape(&mesh), vec![2, 64, 16]);
        // Not split on the concat dim: refused.
        let bad = TensorType::new(DType::Bf16, [8, 64, 16]);
        assert!(infer(&op, &[&bad], &mesh).is_err());
    }

    #[test]
    fn reduce_scatter_then_all_gather_is_all_reduce_typed() {
        let mesh = Mesh::parse("tp=2", 8).unwrap();
        let p = TensorType::new(DType::Bf16, [8, 4]).with_partial(&["tp"]);
        let rs = infer(
            &Op::ReduceScatter {
                axis: "tp".into(),
                dim: 0,
            },
            &[&p],
            &mesh,
        )
        .unwrap();
        let ag = infer(
            &Op::AllGather {
                axis: "tp".into(),
                dim: 0,
            },
            &[&rs[0]],
            &mesh,
        )
        .unwrap();
        let ar = infer(&Op::AllReduce { axis: "tp".into() }, &[&p], &mesh).unwrap();
        assert_eq!(ag, ar);
    }

    #[test]
    fn shard_is_the_local_inverse_of_all_gather() {
        let mesh = Mesh::parse("dp=2,tp=4", 8).unwrap();
        let x = TensorType::new(DType::Bf16, [16, 8]).with_split(0, &["dp"]);
        let sh = Op::Shard {
            axis: "tp".into(),
            dim: 0,
        };
        let s = infer(&sh, &[&x], &mesh).unwrap();
        assert_eq!(s[0].to_string(), "bf16[16@dp.tp, 8]");
        let ag = Op::AllGather {
            axis: "tp".into(),
            dim: 0,
        };
        assert_eq!(infer(&ag, &[&s[0]], &mesh).unwrap()[0], x);
        // Already split on tp, or partial on it: refused.
        assert!(infer(&sh, &[&s[0]], &mesh).is_err());
        let p = x.clone().with_partial(&["tp"]);
        assert!(infer(&sh, &[&p], &mesh).is_err());
    }
}
