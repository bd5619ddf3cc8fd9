//! The e-graph language: IR ops as e-nodes, with their attributes inside the node (not as child
//! e-classes, not as strings), a projection for multi-output ops, and a multi-output root.
//!
//! Patterns (`egg::Pattern<MoeLang>`) spell an op as the text form does, without spaces inside
//! an atom: `(shard{axis=tp,dim=0} (all_reduce{axis=tp} ?p))`; `get0` .. `getN` project
//! outputs. Leaves cannot appear in patterns (their type is not part of the spelling): a
//! pattern variable stands for them.

use egg::{FromOp, Id, Language};
use moe_ir::Op;
use thiserror::Error;

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

/// An atom of a pattern that is not an e-node of [`MoeLang`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LangParseError {
    #[error("`{op}` in a pattern: {source}")]
    Op {
        op: String,
        #[source]
        source: moe_ir::text::TextError,
    },
    #[error("`{op}` takes {want} operand(s), the pattern gives {got}")]
    Arity {
        op: String,
        want: &'static str,
        got: usize,
    },
}

impl FromOp for MoeLang {
    type Error = LangParseError;

    fn from_op(op: &str, children: Vec<Id>) -> Result<Self, Self::Error> {
        if op == "root" {
            return Ok(MoeLang::Root(children));
        }
        if let Some(index) = op.strip_prefix("get").and_then(|i| i.parse().ok()) {
            return match <[Id; 1]>::try_from(children) {
                Ok(child) => Ok(MoeLang::Get { index, child }),
                Err(children) => Err(LangParseError::Arity {
                    op: op.to_string(),
                    want: "1",
                    got: children.len(),
                }),
            };
        }
        let parsed = moe_ir::text::parse_op(op).map_err(|source| LangParseError::Op {
            op: op.to_string(),
            source,
        })?;
        Ok(MoeLang::Op {
            op: parsed,
            leaf: None,
            children,
        })
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use egg::{Pattern, RecExpr};

    #[test]
    fn patterns_read_ops_in_their_text_spelling() {
        let p: Pattern<MoeLang> = "(shard{axis=tp,dim=0} (all_reduce{axis=tp} ?p))"
            .parse()
            .unwrap();
        // egg quotes atoms with spaces; the quoted form reads back.
        let shown = p.to_string();
        assert_eq!(
            shown,
            r#"("shard{axis=tp, dim=0}" ("all_reduce{axis=tp}" ?p))"#
        );
        assert_eq!(shown.parse::<Pattern<MoeLang>>().unwrap().ast, p.ast);
        let e: RecExpr<MoeLang> = "(get1 (local_routes{experts=8,axis=tp,capacity=dropless,token_groups=1} (index_select) (index_select)))"
            .parse()
            .unwrap();
        assert!(matches!(
            e.as_ref().last(),
            Some(MoeLang::Get { index: 1, .. })
        ));
        for bad in [
            "(shard{axis=tp} ?x)",
            "(get0 ?a ?b)",
            "(weight)",
            "(frob ?x)",
        ] {
            assert!(bad.parse::<Pattern<MoeLang>>().is_err(), "{bad}");
        }
    }
}
