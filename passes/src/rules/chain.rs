//! The expert-parallel MoE chain both dispatch rules match:
//! `combine(all_to_all[ax,1,0](expert_ffn(padded)(all_to_all[ax,0,1](dispatch(x, idx)), W...)), idx, w)`.
//! Shared by [`super::AllGatherSlicing`] (tokens split on `ax`) and [`super::PpmoeSlicing`]
//! (tokens replicated on `ax`, seen through `shard`).

use super::{add_checked, add_op, matched};
use crate::analysis::Types;
use crate::lang::MoeLang;
use egg::{EGraph, Id};
use moe_ir::{Activation, Capacity, FfnLayout, Op, TensorType};

/// A matched expert-parallel layer: the class ids of its inputs and the attributes that must be
/// carried to a rewritten form.
#[derive(Debug, Clone)]
pub(super) struct Chain {
    /// The axis both all-to-alls communicate over (the axis the experts are split on).
    pub axis: String,
    pub experts: u64,
    /// Slots per expert per token shard (`dispatch`'s `capacity`).
    pub capacity: u64,
    pub act: Activation,
    pub gated: bool,
    /// The experts carry biases (after their weights, in `weights`).
    pub bias: bool,
    /// `dispatch`'s tokens.
    pub x: Id,
    /// The routing indices (the same class for `dispatch` and `combine`).
    pub idx: Id,
    /// `combine`'s routing weights.
    pub w: Id,
    /// The expert weights, in `expert_ffn`'s order.
    pub weights: Vec<Id>,
}

/// The op e-nodes (not leaves) of `class`, with their children.
pub(super) fn op_nodes(
    egraph: &EGraph<MoeLang, Types>,
    class: Id,
) -> impl Iterator<Item = (&Op, &[Id])> {
    egraph[class].nodes.iter().filter_map(|n| match n {
        MoeLang::Op {
            op,
            children,
            leaf: None,
        } => Some((op, children.as_slice())),
        _ => None,
    })
}

/// Every `combine(all_to_all(expert_ffn(all_to_all(dispatch(x, idx)))), idx, w)` rooted in
/// `class`, in e-node order.
pub(super) fn find_chains(egraph: &EGraph<MoeLang, Types>, class: Id) -> Vec<Chain> {
    let mut found = Vec::new();
    for (op, ch) in op_nodes(egraph, class) {
        let Op::Combine { experts, capacity } = op else {
            continue;
        };
        let [b, idx, w] = ch else { continue };
        for (op, ch) in op_nodes(egraph, *b) {
            let Op::AllToAll {
                axis,
                split_dim: 1,
                concat_dim: 0,
            } = op
            else {
                continue;
            };
            let [h] = ch else { continue };
            for (op, ch) in op_nodes(egraph, *h) {
                let Op::ExpertFfn {
                    layout: FfnLayout::Padded,
                    act,
                    gated,
                    bias,
                } = op
                else {
                    continue;
                };
                let Some((a, weights)) = ch.split_first() else {
                    continue;
                };
                for (op, ch) in op_nodes(egraph, *a) {
                    let Op::AllToAll {
                        axis: ax2,
                        split_dim: 0,
                        concat_dim: 1,
                    } = op
                    else {
                        continue;
                    };
                    if ax2 != axis {
                        continue;
                    }
                    let [d] = ch else { continue };
                    for (op, ch) in op_nodes(egraph, *d) {
                        let Op::Dispatch {
                            experts: e2,
                            capacity: c2,
                        } = op
                        else {
                            continue;
                        };
                        let [x, idx2] = ch else { continue };
                        if e2 != experts
                            || c2 != capacity
                            || egraph.find(*idx2) != egraph.find(*idx)
                        {
                            continue;
                        }
                        found.push(Chain {
                            axis: axis.clone(),
                            experts: *experts,
                            capacity: *capacity,
                            act: *act,
                            gated: *gated,
                            bias: *bias,
                            x: *x,
                            idx: *idx,
                            w: *w,
                            weights: weights.to_vec(),
                        });
                    }
                }
            }
        }
    }
    found
}

/// The matched chain itself, as the term `combine(all_to_all(expert_ffn(all_to_all(dispatch(x,
/// idx)), W...)), idx, w)` over the given ids for `x`, `idx` and `w` (each in the class the chain
/// matched there): the node a rule unions its result with.
pub(super) fn instantiate(
    egraph: &mut EGraph<MoeLang, Types>,
    c: &Chain,
    x: Id,
    idx: Id,
    w: Id,
) -> Id {
    let a2a = |split_dim, concat_dim| Op::AllToAll {
        axis: c.axis.clone(),
        split_dim,
        concat_dim,
    };
    let (experts, capacity) = (c.experts, c.capacity);
    let d = matched(egraph, Op::Dispatch { experts, capacity }, vec![x, idx]);
    let a = matched(egraph, a2a(0, 1), vec![d]);
    let mut ffn_in = vec![a];
    ffn_in.extend(&c.weights);
    let ffn = Op::ExpertFfn {
        layout: FfnLayout::Padded,
        act: c.act,
        gated: c.gated,
        bias: c.bias,
    };
    let h = matched(egraph, ffn, ffn_in);
    let b = matched(egraph, a2a(1, 0), vec![h]);
    matched(egraph, Op::Combine { experts, capacity }, vec![b, idx, w])
}

/// The first chain rooted in `class`.
pub(super) fn find_chain(egraph: &EGraph<MoeLang, Types>, class: Id) -> Option<Chain> {
    find_chains(egraph, class).into_iter().next()
}

/// The index-slicing body shared by both dispatch rules, over tokens `xr`, indices `ir` and weights
/// `wr` that every rank of `c.axis` holds alike (replicated on the axis):
/// `index_add{scaled}(zeros(partial ax), t, expert_ffn(grouped)(index_select(xr, t), counts, W...), s)`
/// with `(t, s, counts) = local_routes(ir, wr)`. `shard_rows` is the number of tokens each rank
/// dispatched in the expert-parallel form: a capacity that holds them all is dropless, a smaller one
/// keeps `capacity` slots per expert in each of the axis-size token groups (one per source rank).
/// Returns the partial sum (partial on the axis), or `None` when a node would be ill-typed.
pub(super) fn index_slicing(
    egraph: &mut EGraph<MoeLang, Types>,
    c: &Chain,
    xr: Id,
    ir: Id,
    wr: Id,
    shard_rows: u64,
) -> Option<Id> {
    let ax = &c.axis;
    let n = egraph.analysis.mesh.size_of(ax);
    // Dropless when a rank's buffer holds every one of its tokens for every expert.
    let (capacity, token_groups) = if c.capacity >= shard_rows {
        (Capacity::Dropless, 1)
    } else {
        (Capacity::Slots(c.capacity), n)
    };
    let lr = add_op(
        egraph,
        Op::LocalRoutes {
            experts: c.experts,
            axis: ax.clone(),
            capacity,
            token_groups,
        },
        vec![ir, wr],
    )?;
    let get = |egraph: &mut EGraph<MoeLang, Types>, index| {
        add_checked(egraph, MoeLang::Get { index, child: [lr] })
    };
    let (t, s, counts) = (get(egraph, 0)?, get(egraph, 1)?, get(egraph, 2)?);
    let xs = add_op(egraph, Op::IndexSelect, vec![xr, t])?;
    let mut ffn_in = vec![xs, counts];
    ffn_in.extend(&c.weights);
    let hs = add_op(
        egraph,
        Op::ExpertFfn {
            layout: FfnLayout::Grouped,
            act: c.act,
            gated: c.gated,
            bias: c.bias,
        },
        ffn_in,
    )?;
    let zeros = add_zeros_partial(egraph, xr, ax)?;
    add_op(egraph, Op::IndexAdd { scaled: true }, vec![zeros, t, hs, s])
}

/// A zeros leaf of `like`'s type made partial on `axis`, named `zeros.<type>` so that every rule
/// asking for the same buffer gets the same e-class.
pub(super) fn add_zeros_partial(
    egraph: &mut EGraph<MoeLang, Types>,
    like: Id,
    axis: &str,
) -> Option<Id> {
    let mut ty: TensorType = egraph[like].data.first()?.clone();
    ty.partial.push(axis.to_string());
    let ty = ty.canonical(&egraph.analysis.mesh);
    add_checked(egraph, zeros_leaf(ty))
}

/// The zeros leaf e-node of type `ty` (already canonical).
pub(crate) fn zeros_leaf(ty: TensorType) -> MoeLang {
    let name = format!("zeros.{}", ty.to_string().replace(' ', ""));
    MoeLang::Op {
        op: Op::Zeros(ty),
        leaf: Some(name),
        children: vec![],
    }
}
