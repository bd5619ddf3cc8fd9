//! Rewrite rules, one family per file. Every rule is named for users (the names appear in
//! `--explain`) and documents why its two sides are equal. Rules are directional and targeted;
//! a rule adds a node only after checking its type with [`crate::analysis::try_make`], so a rule
//! that does not fit a graph does nothing instead of corrupting the e-graph.

mod dispatch;

pub use dispatch::AllGatherSlicing;

use crate::analysis::{try_make, Types};
use crate::lang::MoeLang;
use egg::{EGraph, Id};

/// Adds `node` if it is well-typed.
pub(crate) fn add_checked(egraph: &mut EGraph<MoeLang, Types>, node: MoeLang) -> Option<Id> {
    try_make(egraph, &node).ok()?;
    Some(egraph.add(node))
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
