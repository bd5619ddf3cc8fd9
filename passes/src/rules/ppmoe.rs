//! The PPMoE dispatch rule: over tokens **replicated** on the axis the experts are split on, the
//! all-to-all pair around the experts becomes index slicing and one all-reduce.
//!
//! After the mesh remap a MoE layer whose tokens every rank of `ax` holds alike reads
//! ```text
//! all_gather[ax,0](combine(all_to_all[ax,1,0](expert_ffn(padded)(
//!     all_to_all[ax,0,1](dispatch(shard[ax,0](x), shard[ax,0](idx))), W...)),
//!   shard[ax,0](idx), shard[ax,0](w)))
//!   == all_reduce[ax](index_add{scaled}(zeros partial(ax), t,
//!        expert_ffn(grouped)(index_select(x, t), counts, W...), s))
//!      where (t, s, counts) = local_routes[ax](idx, w)
//! ```
//! Why equal: every rank holds all the tokens of its `ax` group and the same routes (the router ran
//! on every rank). `local_routes` lists the (token, choice) pairs routed to the rank's own experts,
//! keeping per token block (the block each rank dispatched) the pairs `dispatch` kept: same
//! capacity, same choice-major priority. So each rank runs its experts on the same rows as before,
//! with the same weights; scaling each row by its routing weight and adding it at its token into a
//! zero buffer gives the rank's share of `combine`'s output over **all** the tokens, and the
//! `all_reduce` sums the shares: `combine`'s output, gathered on every rank.

use super::add_op;
use super::chain::{find_chains, index_slicing, op_nodes, Chain};
use crate::analysis::Types;
use crate::lang::MoeLang;
use egg::{Applier, EGraph, Id, PatternAst, SearchMatches, Searcher, Subst, Symbol, Var};
use moe_ir::Op;

/// A matched replicated-token layer: the chain under the `all_gather`, and the replicated values
/// its `shard`s cut.
#[derive(Debug, Clone)]
struct Match {
    chain: Chain,
    x: Id,
    idx: Id,
    w: Id,
}

/// The `x` of a `shard[axis,0](x)` in `class`.
fn unshard(egraph: &EGraph<MoeLang, Types>, class: Id, axis: &str) -> Option<Id> {
    op_nodes(egraph, class).find_map(|(op, ch)| match (op, ch) {
        (Op::Shard { axis: a, dim: 0 }, [x]) if a == axis => Some(*x),
        _ => None,
    })
}

/// Every `all_gather[ax,0](chain)` in `class` whose tokens, indices and weights are `shard[ax,0]`
/// of replicated values.
fn find_matches(egraph: &EGraph<MoeLang, Types>, class: Id) -> Vec<Match> {
    let mut found = Vec::new();
    for (op, ch) in op_nodes(egraph, class) {
        let (Op::AllGather { axis, dim: 0 }, [inner]) = (op, ch) else {
            continue;
        };
        for chain in find_chains(egraph, *inner) {
            if &chain.axis != axis {
                continue;
            }
            let x = unshard(egraph, chain.x, axis);
            let idx = unshard(egraph, chain.idx, axis);
            let w = unshard(egraph, chain.w, axis);
            if let (Some(x), Some(idx), Some(w)) = (x, idx, w) {
                found.push(Match { chain, x, idx, w });
            }
        }
    }
    found
}

/// The PPMoE form (index slicing + one all-reduce) of a MoE layer over replicated tokens.
#[derive(Debug, Clone, Copy, Default)]
pub struct PpmoeSlicing;

impl PpmoeSlicing {
    /// The rule's name, as users read it in explanations.
    pub const NAME: &'static str = "dispatch-a2a-to-ppmoe-slicing";
}

impl Searcher<MoeLang, Types> for PpmoeSlicing {
    fn search_eclass_with_limit(
        &self,
        egraph: &EGraph<MoeLang, Types>,
        eclass: Id,
        limit: usize,
    ) -> Option<SearchMatches<'_, MoeLang>> {
        (limit > 0 && !find_matches(egraph, eclass).is_empty()).then(|| SearchMatches {
            eclass,
            substs: vec![Subst::default()],
            ast: None,
        })
    }

    fn vars(&self) -> Vec<Var> {
        Vec::new()
    }
}

impl Applier<MoeLang, Types> for PpmoeSlicing {
    fn apply_one(
        &self,
        egraph: &mut EGraph<MoeLang, Types>,
        eclass: Id,
        _subst: &Subst,
        _ast: Option<&PatternAst<MoeLang>>,
        rule_name: Symbol,
    ) -> Vec<Id> {
        let mut changed = Vec::new();
        for m in find_matches(egraph, eclass) {
            let Some(out) = build(egraph, &m) else {
                continue;
            };
            if egraph[out].data != egraph[eclass].data {
                continue;
            }
            if egraph.union_trusted(eclass, out, rule_name) {
                changed.push(egraph.find(eclass));
            }
        }
        changed
    }
}

fn build(egraph: &mut EGraph<MoeLang, Types>, m: &Match) -> Option<Id> {
    let c = &m.chain;
    // The tokens each rank dispatched: the local rows of `shard(x)`.
    let x_ty = egraph[c.x].data.first()?.clone();
    let shard_rows = *x_ty.local_shape(&egraph.analysis.mesh).first()?;
    let y = index_slicing(egraph, c, m.x, m.idx, m.w, shard_rows)?;
    add_op(
        egraph,
        Op::AllReduce {
            axis: c.axis.clone(),
        },
        vec![y],
    )
}
