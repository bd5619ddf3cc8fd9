//! Rewrite rules, one family per file, listed once in [`RULES`]. Every rule is named for users
//! (the names appear in `--explain`) and documents why its two sides are equal. Rules are
//! directional and targeted; a rule adds a node only after checking its type with
//! [`crate::analysis::try_make`], so a rule that does not fit a graph does nothing instead of
//! corrupting the e-graph.
//!
//! Rules are data where they can be: the collective algebra (`algebra.rs`) is five
//! [`Equation`]s, egg patterns over the ops' text spelling. The two dispatch rules
//! ([`AllGatherSlicing`] in `dispatch.rs`, [`PpmoeSlicing`] in `ppmoe.rs`) are a custom
//! searcher and applier each, sharing `chain.rs`: their left side has a variable number of
//! expert weights and their right side computes what no pattern can (the capacity and token
//! groups of `local_routes` from the matched `dispatch` and the tokens' local rows, and a
//! zeros buffer of the tokens' type made partial on the axis).

mod algebra;
mod chain;
mod dispatch;
mod equation;
mod ppmoe;
#[cfg(test)]
pub(crate) mod testing;

pub use algebra::{
    ALL_GATHER_OF_REDUCE_SCATTER, ALL_GATHER_OF_SHARD, ALL_TO_ALL_OF_SHARD, SHARD_OF_ALL_GATHER,
    SHARD_OF_ALL_REDUCE,
};
pub use dispatch::AllGatherSlicing;
pub use equation::{Equation, EquationError, Instances};
pub use ppmoe::PpmoeSlicing;

use crate::analysis::{try_make, Types};
use crate::lang::MoeLang;
use egg::{Applier, EGraph, Id, Rewrite, Searcher};
use moe_ir::Mesh;

/// How a rule of [`RULES`] is written.
#[derive(Debug, Clone, Copy)]
pub enum Rule {
    /// Its equation, as patterns.
    Equation(Equation),
    /// A custom searcher and applier (the reason is on the type), with its name.
    Custom {
        name: &'static str,
        build: fn() -> Option<Rewrite<MoeLang, Types>>,
    },
}

/// Rules are equal when their names are (names are unique; a test checks).
impl PartialEq for Rule {
    fn eq(&self, other: &Rule) -> bool {
        self.name() == other.name()
    }
}

impl Rule {
    pub fn name(&self) -> &'static str {
        match self {
            Rule::Equation(e) => e.name,
            Rule::Custom { name, .. } => name,
        }
    }

    /// The egg rewrite of this rule on `mesh`, for values of rank at most `rank`.
    ///
    /// # Panics
    /// If the rule's own definition is broken (an equation that does not parse): rules are
    /// constants, and a test builds every one.
    pub fn rewrite(&self, mesh: &Mesh, rank: usize) -> Rewrite<MoeLang, Types> {
        match self {
            Rule::Equation(e) => e
                .rewrite(mesh, rank)
                .unwrap_or_else(|err| panic!("a rule is broken: {err}")),
            Rule::Custom { name, build } => {
                build().unwrap_or_else(|| panic!("rule `{name}` binds no variables"))
            }
        }
    }
}

/// Every rule, in this fixed order: the dispatch rewrites first, then the collective algebra.
pub const RULES: [Rule; 7] = [
    Rule::Custom {
        name: AllGatherSlicing::NAME,
        build: || rewrite(AllGatherSlicing::NAME, AllGatherSlicing),
    },
    Rule::Custom {
        name: PpmoeSlicing::NAME,
        build: || rewrite(PpmoeSlicing::NAME, PpmoeSlicing),
    },
    Rule::Equation(ALL_GATHER_OF_SHARD),
    Rule::Equation(SHARD_OF_ALL_GATHER),
    Rule::Equation(ALL_GATHER_OF_REDUCE_SCATTER),
    Rule::Equation(SHARD_OF_ALL_REDUCE),
    Rule::Equation(ALL_TO_ALL_OF_SHARD),
];

/// The rewrites of every rule of [`RULES`] on `mesh`, for values of rank at most `rank`.
pub fn all(mesh: &Mesh, rank: usize) -> Vec<Rewrite<MoeLang, Types>> {
    RULES.iter().map(|r| r.rewrite(mesh, rank)).collect()
}

/// The names of [`RULES`], in order.
pub fn names() -> Vec<&'static str> {
    RULES.iter().map(Rule::name).collect()
}

/// The rule named `name`.
pub fn named(name: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.name() == name)
}

/// The highest rank of any value of `g` (what [`all`] instantiates dims up to).
pub fn max_rank(g: &moe_ir::Graph) -> usize {
    g.nodes()
        .flat_map(|(_, n)| n.outputs.iter().map(moe_ir::TensorType::rank))
        .max()
        .unwrap_or(0)
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
            let runner = testing::runner(&g.mesh, egraph).run(&all(&g.mesh, max_rank(&g)));
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
        let mesh = testing::mesh("dp=2,tp=4");
        let from_all: Vec<String> = all(&mesh, 3).iter().map(|r| r.name.to_string()).collect();
        assert_eq!(from_all, names());
        for r in &RULES {
            assert_eq!(named(r.name()).map(Rule::name), Some(r.name()));
            if let Rule::Equation(e) = r {
                assert!(!e.instantiate(&mesh, 3).unwrap().is_empty(), "{}", e.name);
            }
        }
        let mut unique = names();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names().len(), "rule names are unique");
    }
}
