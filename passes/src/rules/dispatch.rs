//! Dispatch rules: the all-to-all pair around the experts becomes index slicing.
//!
//! `all_gather` form (Megatron-Core's "allgather" dispatcher), for tokens split on the axis `ax`
//! the experts are split on:
//! ```text
//! combine(all_to_all[ax,1,0](expert_ffn(all_to_all[ax,0,1](dispatch(x, idx)), W)), idx, w)
//!   == reduce_scatter[ax,0](index_add(zeros partial(ax), t, expert_ffn_grouped(index_select(xg, t), counts, W), s))
//!      where xg = all_gather[ax,0](x), (t, s, counts) = local_routes[ax](all_gather(idx), all_gather(w))
//! ```
//! Why equal: after the gathers every rank of an `ax` group holds the group's tokens and routes.
//! `local_routes` lists the (token, choice) pairs routed to the rank's own experts, keeping per
//! source rank (token group) the same pairs `dispatch` kept (same capacity, same choice-major
//! priority), so each rank computes exactly the expert rows it computed before, on the same weights.
//! Scaling each row by its routing weight and adding it at its token gives that rank's share of
//! `combine`; the shares of the group sum to `combine`'s output, and `reduce_scatter` hands each
//! rank the sum for its own tokens, which is the layout `combine` produced.

use super::add_op;
use super::chain::{find_chain, index_slicing, instantiate};
use crate::analysis::Types;
use crate::lang::MoeLang;
use egg::{Applier, EGraph, Id, PatternAst, SearchMatches, Searcher, Subst, Symbol, Var};
use moe_ir::Op;

/// The all-gather / index-slicing / reduce-scatter form of an expert-parallel MoE layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllGatherSlicing;

impl AllGatherSlicing {
    /// The rule's name, as users read it in explanations.
    pub const NAME: &'static str = "dispatch-a2a-to-allgather-slicing";
}

impl Searcher<MoeLang, Types> for AllGatherSlicing {
    fn search_eclass_with_limit(
        &self,
        egraph: &EGraph<MoeLang, Types>,
        eclass: Id,
        limit: usize,
    ) -> Option<SearchMatches<'_, MoeLang>> {
        super::class_match(eclass, limit, || find_chain(egraph, eclass).is_some())
    }

    fn vars(&self) -> Vec<Var> {
        Vec::new()
    }
}

impl Applier<MoeLang, Types> for AllGatherSlicing {
    fn apply_one(
        &self,
        egraph: &mut EGraph<MoeLang, Types>,
        eclass: Id,
        _subst: &Subst,
        _ast: Option<&PatternAst<MoeLang>>,
        rule_name: Symbol,
    ) -> Vec<Id> {
        let Some(c) = find_chain(egraph, eclass) else {
            return Vec::new();
        };
        let Some(out) = build(egraph, &c) else {
            return Vec::new();
        };
        if egraph[out].data != egraph[eclass].data {
            return Vec::new();
        }
        let from = instantiate(egraph, &c, c.x, c.idx, c.w);
        if egraph.union_trusted(from, out, rule_name) {
            vec![eclass]
        } else {
            Vec::new()
        }
    }
}

fn build(egraph: &mut EGraph<MoeLang, Types>, c: &super::chain::Chain) -> Option<Id> {
    let ax = &c.axis;
    let x_ty = egraph[c.x].data.first()?.clone();
    if x_ty.split_of(0).last() != Some(ax) {
        return None;
    }
    let local_tokens = *x_ty.local_shape(&egraph.analysis.mesh).first()?;
    let gather = |egraph: &mut EGraph<MoeLang, Types>, v: Id| {
        add_op(
            egraph,
            Op::AllGather {
                axis: ax.clone(),
                dim: 0,
            },
            vec![v],
        )
    };
    let xg = gather(egraph, c.x)?;
    let ig = gather(egraph, c.idx)?;
    let wg = gather(egraph, c.w)?;
    let y = index_slicing(egraph, c, xg, ig, wg, local_tokens)?;
    add_op(
        egraph,
        Op::ReduceScatter {
            axis: ax.clone(),
            dim: 0,
        },
        vec![y],
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::convert::load;
    use crate::rules::testing::small;
    use egg::{CostFunction, Extractor, Language, Rewrite, Runner};

    /// Prices all-to-alls out, so extraction shows the rewritten form.
    struct NoAllToAll;
    impl CostFunction<MoeLang> for NoAllToAll {
        type Cost = u64;
        fn cost<C: FnMut(Id) -> u64>(&mut self, enode: &MoeLang, mut costs: C) -> u64 {
            let own = match enode {
                MoeLang::Op {
                    op: Op::AllToAll { .. },
                    ..
                } => 1_000_000,
                _ => 1,
            };
            enode.fold(own, |sum, id| sum.saturating_add(costs(id)))
        }
    }

    fn rewrite(g: &moe_ir::Graph) -> moe_ir::Graph {
        let mut l = load(g);
        let rules: Vec<Rewrite<MoeLang, Types>> =
            vec![Rewrite::new(AllGatherSlicing::NAME, AllGatherSlicing, AllGatherSlicing).unwrap()];
        let runner: Runner<MoeLang, Types, ()> = Runner::new(Types {
            mesh: g.mesh.clone(),
        })
        .with_egraph(std::mem::replace(
            &mut l.egraph,
            egg::EGraph::new(Types {
                mesh: g.mesh.clone(),
            }),
        ))
        .run(&rules);
        let (_, expr) = Extractor::new(&runner.egraph, NoAllToAll).find_best(l.root);
        l.egraph = runner.egraph;
        l.to_graph(&expr)
    }

    #[test]
    fn every_moe_layer_loses_its_all_to_alls() {
        for (mesh, extra) in [
            ("ep=4", vec![]),
            ("dp=2,ep=4", vec![]),
            ("ep=8", vec!["num_local_experts=16"]),
        ] {
            let g = small(mesh, &extra);
            let out = rewrite(&g);
            moe_ir::validate(&out).unwrap();
            let s = moe_ir::Summary::of(&out);
            assert_eq!(s.collectives.all_to_all, 0, "{mesh}");
            assert_eq!(s.collectives.reduce_scatter, 2, "{mesh}");
            assert_eq!(s.ops.get("local_routes"), Some(&2), "{mesh}");
            assert_eq!(s.params, moe_ir::Summary::of(&g).params, "the same weights");
        }
    }

    #[test]
    fn capacity_becomes_per_source_rank_slots() {
        // 16 tokens per rank, top-2 of 8 experts, factor-free slots of 3: dispatch keeps 3 per expert per rank.
        let g = small("ep=4", &[]);
        let mut doc: serde_json::Value = serde_json::from_str(&moe_ir::json::to_json(&g)).unwrap();
        for n in doc["nodes"].as_array_mut().unwrap() {
            n.as_object_mut().unwrap().remove("out"); // re-inferred on load
            for op in ["dispatch", "combine"] {
                if let Some(c) = n["op"].get_mut(op) {
                    c["capacity"] = 3.into();
                }
            }
        }
        let g = moe_ir::json::from_json(&doc.to_string()).unwrap();
        let out = moe_ir::print::to_text(&rewrite(&g));
        assert!(out.contains("capacity={slots=3}, token_groups=4"), "{out}");
        let dropless = moe_ir::print::to_text(&rewrite(&small("ep=4", &[])));
        if std::env::var_os("MOE_SHOW").is_some() {
            println!("{dropless}");
        }
        assert!(
            dropless.contains("capacity=dropless, token_groups=1"),
            "{dropless}"
        );
    }
}
