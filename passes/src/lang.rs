//! The e-graph language: IR ops as e-nodes, with their attributes inside the node (not as child
//! e-classes, not as strings), a projection for multi-output ops, and a multi-output root.

use egg::{Id, Language};
use moe_ir::Op;

/// One e-node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MoeLang {
    /// An IR op applied to child values. Leaves (`input`, `weight`, `zeros`, `recv`) carry their
    /// node name, so that two weights of the same type stay two e-classes.
    Op {
        op: Op,
        leaf: Option<String>,
        children: Vec<Id>,
    },
    /// Output `index` of a multi-output op (`router`, `local_routes`).
    Get { index: u32, child: [Id; 1] },
    /// The program's results: the graph outputs in order, then its effects (`send`s).
    Root(Vec<Id>),
}

/// What must agree for two e-nodes to match (everything but the children's ids).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Discriminant {
    Op(Op, Option<String>, usize),
    Get(u32),
    Root(usize),
}

impl Language for MoeLang {
    type Discriminant = Discriminant;

    fn discriminant(&self) -> Discriminant {
        match self {
            MoeLang::Op { op, leaf, children } => {
                Discriminant::Op(op.clone(), leaf.clone(), children.len())
            }
            MoeLang::Get { index, .. } => Discriminant::Get(*index),
            MoeLang::Root(c) => Discriminant::Root(c.len()),
        }
    }

    fn matches(&self, other: &Self) -> bool {
        self.discriminant() == other.discriminant()
    }

    fn children(&self) -> &[Id] {
        match self {
            MoeLang::Op { children, .. } | MoeLang::Root(children) => children,
            MoeLang::Get { child, .. } => child,
        }
    }

    fn children_mut(&mut self) -> &mut [Id] {
        match self {
            MoeLang::Op { children, .. } | MoeLang::Root(children) => children,
            MoeLang::Get { child, .. } => child,
        }
    }
}

impl std::fmt::Display for MoeLang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MoeLang::Op {
                op,
                leaf: Some(name),
                ..
            } => write!(f, "{}:{name}", op.name()),
            MoeLang::Op { op, .. } => f.write_str(&moe_ir::print::op_label(op)),
            MoeLang::Get { index, .. } => write!(f, "get{index}"),
            MoeLang::Root(_) => f.write_str("root"),
        }
    }
}
