//! Collective algebra: targeted, directional rewrites of one collective (or `shard`) applied to
//! another, each an equation over a two-node chain `outer(inner(x))`. No commutativity or
//! associativity: every rule either removes communication or replaces two ops by one.
//! `$ax` is any mesh axis, `$d`/`$s`/`$c` any dim (see [`super::equation`]); a right side that
//! does not type-check on a match is not added.

use super::equation::Equation;

/// `all_gather[ax,d](shard[ax,d](x))` => `x`.
///
/// Why equal: `shard` keeps each rank's block `r` of dim `d` of a value every rank holds alike;
/// `all_gather` concatenates the blocks of the group in rank order along `d`, which rebuilds
/// the value. (This unions a class with a class below it: a cycle, which egg allows.)
pub const ALL_GATHER_OF_SHARD: Equation = Equation {
    name: "all-gather-of-shard",
    lhs: "(all_gather{axis=$ax,dim=$d} (shard{axis=$ax,dim=$d} ?x))",
    rhs: "?x",
};

/// `shard[ax,d](all_gather[ax,d](x))` => `x`.
///
/// Why equal: `all_gather` gives every rank the concatenation of the group's blocks of dim `d`
/// in rank order; `shard` keeps block `r` of it on rank `r`, which is the block `x` held there.
pub const SHARD_OF_ALL_GATHER: Equation = Equation {
    name: "shard-of-all-gather",
    lhs: "(shard{axis=$ax,dim=$d} (all_gather{axis=$ax,dim=$d} ?x))",
    rhs: "?x",
};

/// `all_gather[ax,d](reduce_scatter[ax,d](p))` => `all_reduce[ax](p)`.
///
/// Why equal: `reduce_scatter` leaves rank `r` with block `r` of dim `d` of the sum over the
/// group; gathering the blocks along `d` gives every rank the whole sum, which is what
/// `all_reduce` computes (its usual ring implementation is exactly these two steps).
pub const ALL_GATHER_OF_REDUCE_SCATTER: Equation = Equation {
    name: "all-gather-of-reduce-scatter",
    lhs: "(all_gather{axis=$ax,dim=$d} (reduce_scatter{axis=$ax,dim=$d} ?p))",
    rhs: "(all_reduce{axis=$ax} ?p)",
};

/// `shard[ax,d](all_reduce[ax](p))` => `reduce_scatter[ax,d](p)`.
///
/// Why equal: after the `all_reduce` every rank holds the whole sum and `shard` keeps block `r`
/// of dim `d` of it; `reduce_scatter` hands rank `r` exactly block `r` of dim `d` of the sum.
pub const SHARD_OF_ALL_REDUCE: Equation = Equation {
    name: "shard-of-all-reduce",
    lhs: "(shard{axis=$ax,dim=$d} (all_reduce{axis=$ax} ?p))",
    rhs: "(reduce_scatter{axis=$ax,dim=$d} ?p)",
};

/// `all_to_all[ax,s,c](shard[ax,c](x))` => `shard[ax,s](x)`.
///
/// Why equal: rank `i` holds block `i` of dim `c` of `x` (which every rank holds whole) and
/// sends chunk `j` of dim `s` of it to rank `j`; rank `j` concatenates the pieces along `c` in
/// rank order, which is block `j` of dim `s` of the whole `x`: what it could have cut out of
/// its own copy with no communication.
pub const ALL_TO_ALL_OF_SHARD: Equation = Equation {
    name: "all-to-all-of-shard",
    lhs: "(all_to_all{axis=$ax,split_dim=$s,concat_dim=$c} (shard{axis=$ax,dim=$c} ?x))",
    rhs: "(shard{axis=$ax,dim=$s} ?x)",
};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::rules::testing::{rule_test, Term};
    use egg::Id;
    use moe_ir::{DType, Op, TensorType};

    fn ty(shape: [u64; 2]) -> TensorType {
        TensorType::new(DType::Bf16, shape)
    }
    fn shard(axis: &str, dim: usize) -> Op {
        Op::Shard {
            axis: axis.into(),
            dim,
        }
    }
    fn gather(axis: &str, dim: usize) -> Op {
        Op::AllGather {
            axis: axis.into(),
            dim,
        }
    }
    fn rs(axis: &str, dim: usize) -> Op {
        Op::ReduceScatter {
            axis: axis.into(),
            dim,
        }
    }
    fn ar(axis: &str) -> Op {
        Op::AllReduce { axis: axis.into() }
    }
    fn a2a(axis: &str, split_dim: usize, concat_dim: usize) -> Op {
        Op::AllToAll {
            axis: axis.into(),
            split_dim,
            concat_dim,
        }
    }
    /// `x`: tokens split on dp, replicated on tp.
    fn x_dp(b: &mut Term) -> Id {
        b.input("x", ty([16, 8]).with_split(0, &["dp"]))
    }
    /// `x`: dim 0 split on tp.
    fn x_tp(b: &mut Term) -> Id {
        b.input("x", ty([16, 8]).with_split(0, &["tp"]))
    }
    /// `x`: replicated everywhere.
    fn x_rep(b: &mut Term) -> Id {
        b.input("x", ty([16, 8]))
    }
    /// `p`: partial sums on tp.
    fn p_tp(b: &mut Term) -> Id {
        b.input("p", ty([16, 8]).with_partial(&["tp"]))
    }

    rule_test! {
        all_gather_of_shard_cancels,
        rules: ["all-gather-of-shard"],
        mesh: "dp=2,tp=4",
        start: |b| {
            let x = x_dp(b);
            let s = b.op(shard("tp", 0), &[x]);
            b.op(gather("tp", 0), &[s])
        },
        goal: x_dp,
    }

    rule_test! {
        shard_of_all_gather_cancels,
        rules: ["shard-of-all-gather"],
        mesh: "dp=2,tp=4",
        start: |b| {
            let x = x_tp(b);
            let g = b.op(gather("tp", 0), &[x]);
            b.op(shard("tp", 0), &[g])
        },
        goal: x_tp,
    }

    rule_test! {
        all_gather_of_reduce_scatter_is_all_reduce,
        rules: ["all-gather-of-reduce-scatter"],
        mesh: "dp=2,tp=4",
        start: |b| {
            let p = p_tp(b);
            let r = b.op(rs("tp", 0), &[p]);
            b.op(gather("tp", 0), &[r])
        },
        goal: |b| {
            let p = p_tp(b);
            b.op(ar("tp"), &[p])
        },
    }

    rule_test! {
        shard_of_all_reduce_is_reduce_scatter,
        rules: ["shard-of-all-reduce"],
        mesh: "dp=2,tp=4",
        start: |b| {
            let p = p_tp(b);
            let r = b.op(ar("tp"), &[p]);
            b.op(shard("tp", 1), &[r])
        },
        goal: |b| {
            let p = p_tp(b);
            b.op(rs("tp", 1), &[p])
        },
    }

    rule_test! {
        all_to_all_of_shard_is_a_local_reshard,
        rules: ["all-to-all-of-shard"],
        mesh: "dp=2,tp=4",
        start: |b| {
            let x = x_rep(b);
            let s = b.op(shard("tp", 1), &[x]);
            b.op(a2a("tp", 0, 1), &[s])
        },
        goal: |b| {
            let x = x_rep(b);
            b.op(shard("tp", 0), &[x])
        },
    }

    // ----- attributes that do not fit: nothing fires, nothing is added or unioned -----

    rule_test! {
        all_gather_of_shard_on_another_axis_and_dim_is_kept,
        rules: ["all-gather-of-shard"],
        mesh: "dp=2,tp=4",
        start: |b| {
            let x = b.input("x", ty([16, 8]).with_split(1, &["tp"]));
            let s = b.op(shard("dp", 0), &[x]);
            b.op(gather("tp", 1), &[s])
        },
        unchanged,
    }

    rule_test! {
        shard_of_all_gather_on_another_dim_is_kept,
        rules: ["shard-of-all-gather"],
        mesh: "dp=2,tp=4",
        start: |b| {
            let x = x_tp(b);
            let g = b.op(gather("tp", 0), &[x]);
            b.op(shard("tp", 1), &[g])
        },
        unchanged,
    }

    rule_test! {
        all_gather_of_reduce_scatter_on_another_axis_is_kept,
        rules: ["all-gather-of-reduce-scatter"],
        mesh: "dp=2,tp=4",
        start: |b| {
            let p = b.input("p", ty([16, 8]).with_split(1, &["dp"]).with_partial(&["tp"]));
            let r = b.op(rs("tp", 0), &[p]);
            b.op(gather("dp", 1), &[r])
        },
        unchanged,
    }

    rule_test! {
        shard_of_all_reduce_on_another_axis_is_kept,
        rules: ["shard-of-all-reduce"],
        mesh: "dp=2,tp=4",
        start: |b| {
            let p = p_tp(b);
            let r = b.op(ar("tp"), &[p]);
            b.op(shard("dp", 0), &[r])
        },
        unchanged,
    }

    rule_test! {
        all_to_all_of_shard_on_another_axis_is_kept,
        rules: ["all-to-all-of-shard"],
        mesh: "dp=2,tp=4",
        start: |b| {
            let x = x_tp(b);
            let s = b.op(shard("dp", 1), &[x]);
            b.op(a2a("tp", 1, 0), &[s])
        },
        unchanged,
    }
}
