//! The e-graph analysis: every e-class knows its output types, computed by the same
//! `moe_ir::infer` the validator uses. Merging classes with different types is a bug in a rule.

use crate::lang::MoeLang;
use egg::{Analysis, DidMerge, EGraph, Id};
use moe_ir::{infer, Mesh, TensorType};

/// Type analysis over a mesh.
#[derive(Debug, Clone)]
pub struct Types {
    pub mesh: Mesh,
}

impl Analysis<MoeLang> for Types {
    /// The class's output types (one per output; none for the root and sends).
    type Data = Vec<TensorType>;

    fn make(egraph: &mut EGraph<MoeLang, Self>, enode: &MoeLang, _id: Id) -> Self::Data {
        match enode {
            MoeLang::Root(_) => Vec::new(),
            MoeLang::Get { index, child } => {
                let tys = &egraph[child[0]].data;
                vec![tys.get(*index as usize).cloned().unwrap_or_else(|| {
                    panic!(
                        "get{index} of a class with {} outputs: a rule built an ill-typed node",
                        tys.len()
                    )
                })]
            }
            MoeLang::Op { op, children, .. } => {
                let inputs: Vec<&TensorType> = children
                    .iter()
                    .map(|c| match egraph[*c].data.as_slice() {
                        [t] => t,
                        other => panic!(
                            "{} takes a value with {} outputs: a rule built an ill-typed node",
                            op.name(),
                            other.len()
                        ),
                    })
                    .collect();
                infer(op, &inputs, &egraph.analysis.mesh)
                    .unwrap_or_else(|e| panic!("a rule built an ill-typed {} node: {e}", op.name()))
            }
        }
    }

    fn merge(&mut self, a: &mut Self::Data, b: Self::Data) -> DidMerge {
        assert_eq!(
            *a, b,
            "merged two e-classes of different types: a rule is unsound"
        );
        DidMerge(false, false)
    }
}
