//! The e-graph analysis: every e-class knows its output types, computed by the same
//! `moe_ir::infer` the validator uses. Merging classes with different types is a bug in a rule.

use crate::lang::MoeLang;
use egg::{Analysis, DidMerge, EGraph, Id};
use moe_ir::{infer, Mesh, TensorType};

/// The output types of `enode`, or why it is ill-typed. Rules call this before adding a node.
pub fn try_make(
    egraph: &EGraph<MoeLang, Types>,
    enode: &MoeLang,
) -> Result<Vec<TensorType>, String> {
    match enode {
        MoeLang::Root(_) => Ok(Vec::new()),
        MoeLang::Get { index, child } => {
            let tys = &egraph[child[0]].data;
            tys.get(*index as usize)
                .cloned()
                .map(|t| vec![t])
                .ok_or_else(|| format!("get{index} of a class with {} outputs", tys.len()))
        }
        MoeLang::Op { op, children, .. } => {
            let mut inputs: Vec<&TensorType> = Vec::with_capacity(children.len());
            for c in children {
                match egraph[*c].data.as_slice() {
                    [t] => inputs.push(t),
                    other => {
                        return Err(format!(
                            "{} takes a value with {} outputs",
                            op.name(),
                            other.len()
                        ))
                    }
                }
            }
            infer(op, &inputs, &egraph.analysis.mesh).map_err(|e| format!("{}: {e}", op.name()))
        }
    }
}

/// Type analysis over a mesh.
#[derive(Debug, Clone)]
pub struct Types {
    pub mesh: Mesh,
}

impl Analysis<MoeLang> for Types {
    /// The class's output types (one per output; none for the root and sends).
    type Data = Vec<TensorType>;

    fn make(egraph: &mut EGraph<MoeLang, Self>, enode: &MoeLang, _id: Id) -> Self::Data {
        try_make(egraph, enode).unwrap_or_else(|e| panic!("a rule built an ill-typed node: {e}"))
    }

    fn merge(&mut self, a: &mut Self::Data, b: Self::Data) -> DidMerge {
        assert_eq!(
            *a, b,
            "merged two e-classes of different types: a rule is unsound"
        );
        DidMerge(false, false)
    }
}
