//! Rewrite rules, one family per file. Every rule is named for users (the names appear in
//! `--explain`) and documents why its two sides are equal. Rules are directional and targeted;
//! a rule adds a node only after checking its type with [`crate::analysis::try_make`], so a rule
//! that does not fit a graph does nothing instead of corrupting the e-graph.
//!
//! Families: `dispatch` ([`AllGatherSlicing`], tokens split on the experts' axis), `ppmoe`
//! ([`PpmoeSlicing`], tokens replicated on it), `algebra` (collective algebra:
//! [`AllGatherOfShard`], [`ShardOfAllGather`], [`AllGatherOfReduceScatter`],
//! [`ShardOfAllReduce`], [`AllToAllOfShard`]). [`all`] lists them all.

mod algebra;
mod chain;
mod dispatch;
mod ppmoe;
#[cfg(test)]
pub(crate) mod testing;

pub use algebra::{
    AllGatherOfReduceScatter, AllGatherOfShard, AllToAllOfShard, ShardOfAllGather, ShardOfAllReduce,
};
pub use dispatch::AllGatherSlicing;
pub use ppmoe::PpmoeSlicing;

use crate::analysis::{try_make, Types};
use crate::lang::MoeLang;
use egg::{Applier, EGraph, Id, Rewrite, Searcher};

/// Every rule, in this fixed order: the dispatch rewrites first ([`AllGatherSlicing`],
/// [`PpmoeSlicing`]), then the collective algebra ([`AllGatherOfShard`], [`ShardOfAllGather`],
/// [`AllGatherOfReduceScatter`], [`ShardOfAllReduce`], [`AllToAllOfShard`]). Each rewrite's
/// name is the rule's `NAME`.
pub fn all() -> Vec<Rewrite<MoeLang, Types>> {
    [
        rewrite(AllGatherSlicing::NAME, AllGatherSlicing),
        rewrite(PpmoeSlicing::NAME, PpmoeSlicing),
        rewrite(AllGatherOfShard::NAME, AllGatherOfShard),
        rewrite(ShardOfAllGather::NAME, ShardOfAllGather),
        rewrite(AllGatherOfReduceScatter::NAME, AllGatherOfReduceScatter),
        rewrite(ShardOfAllReduce::NAME, ShardOfAllReduce),
        rewrite(AllToAllOfShard::NAME, AllToAllOfShard),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The names of [`all`]'s rules, in the same order.
pub fn names() -> Vec<&'static str> {
    vec![
        AllGatherSlicing::NAME,
        PpmoeSlicing::NAME,
        AllGatherOfShard::NAME,
        ShardOfAllGather::NAME,
        AllGatherOfReduceScatter::NAME,
        ShardOfAllReduce::NAME,
        AllToAllOfShard::NAME,
    ]
}

/// A rewrite named `name` whose searcher and applier are both `rule`. `Rewrite::new` only refuses
/// an applier using pattern variables its searcher does not bind; the rules here bind none, so
/// this is always `Some` (a test checks that [`all`] keeps every rule).
pub(crate) fn rewrite<R>(name: &'static str, rule: R) -> Option<Rewrite<MoeLang, Types>>
where
    R: Searcher<MoeLang, Types> + Applier<MoeLang, Types> + Clone + Send + Sync + 'static,
{
    Rewrite::new(name, rule.clone(), rule).ok()
}

/// The search result of a rule that matches a whole e-class (no pattern variables: the applier
/// finds the match again), or nothing when the limit is spent (without searching) or `found`
/// says no.
pub(crate) fn class_match<'a>(
    eclass: Id,
    limit: usize,
    found: impl FnOnce() -> bool,
) -> Option<egg::SearchMatches<'a, MoeLang>> {
    (limit > 0 && found()).then(|| egg::SearchMatches {
        eclass,
        substs: vec![egg::Subst::default()],
        ast: None,
    })
}

/// Adds `node` if it is well-typed. The id returned stands for exactly this node (with
/// explanations on it may not be canonical), so that a union with it explains itself by this node
/// rather than by whichever node already led its class.
pub(crate) fn add_checked(egraph: &mut EGraph<MoeLang, Types>, node: MoeLang) -> Option<Id> {
    try_make(egraph, &node).ok()?;
    Some(egraph.add_uncanonical(node))
}

/// The id of exactly the op node `op(children)`, which a rule matched and so is already in the
/// e-graph (no type check needed). Unioning from it makes the explanation start at the matched
/// term, with congruence steps proving how it was reached, instead of at the class's first node.
pub(crate) fn matched(
    egraph: &mut EGraph<MoeLang, Types>,
    op: moe_ir::Op,
    children: Vec<Id>,
) -> Id {
    egraph.add_uncanonical(MoeLang::Op {
        op,
        leaf: None,
        children,
    })
}

/// Adds an op node (not a leaf) if it is well-typed.
pub(crate) fn add_op(
    egraph: &mut EGraph<MoeLang, Types>,
    op: moe_ir::Op,
    children: Vec<Id>,
) -> Option<Id> {
    add_checked(
        egraph,
        MoeLang::Op {
            op,
            leaf: None,
            children,
        },
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::convert::load;

    #[test]
    fn all_rules_saturate_on_imported_models_and_keep_them_valid() {
        for mesh in ["ep=4", "dp=2,ep=4", "ep=8"] {
            let opts = moe_ir::hf::ImportOptions {
                mesh: Some(moe_ir::Mesh::parse(mesh, 8).unwrap()),
                seq: 16,
                ..Default::default()
            };
            let sets: Vec<String> = [
                "num_hidden_layers=2",
                "hidden_size=64",
                "intermediate_size=96",
                "num_attention_heads=4",
                "num_key_value_heads=2",
                "vocab_size=128",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let g = moe_ir::hf::import(
                include_str!("../../../examples/hf/mixtral-8x7b.json"),
                &sets,
                &opts,
            )
            .unwrap();
            let mut l = load(&g);
            let egraph = std::mem::replace(
                &mut l.egraph,
                EGraph::new(Types {
                    mesh: g.mesh.clone(),
                }),
            );
            let runner = testing::runner(&g.mesh, egraph).run(&all());
            assert!(
                matches!(runner.stop_reason, Some(egg::StopReason::Saturated)),
                "{mesh}: {:?}",
                runner.stop_reason
            );
            l.egraph = runner.egraph;
            let (_, expr) = egg::Extractor::new(&l.egraph, egg::AstSize).find_best(l.root);
            moe_ir::validate(&l.to_graph(&expr)).unwrap();
        }
    }

    #[test]
    fn all_keeps_every_rule_in_the_order_of_names() {
        let from_all: Vec<String> = all().iter().map(|r| r.name.to_string()).collect();
        assert_eq!(from_all, names());
        let mut unique = names();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names().len(), "rule names are unique");
    }
}
