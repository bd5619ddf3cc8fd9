//! The expected fill of every class (see [`crate::cost::model`]), iterated to a fixpoint, and the
//! own cost of every e-node under the cost model given those fills.

use super::{DagExtractor, NONE};
use crate::lang::MoeLang;
use moe_ir::TensorType;

impl<'a> DagExtractor<'a> {
    /// Input types and fills of an op whose children are the class indices `children`, or `None`
    /// if a child does not have exactly one output.
    pub(super) fn inputs(&self, children: &[u32]) -> Option<(Vec<&'a TensorType>, Vec<f64>)> {
        let mut tys = Vec::with_capacity(children.len());
        let mut fills = Vec::with_capacity(children.len());
        for &c in children {
            if c == NONE {
                return None;
            }
            match self.egraph[self.classes[c as usize]].data.as_slice() {
                [t] => tys.push(t),
                _ => return None,
            }
            fills.push(self.fills[c as usize].first().copied().unwrap_or(1.0));
        }
        Some((tys, fills))
    }

    /// The fill of each output that node `i` gives.
    pub(super) fn node_fill(&self, i: usize) -> Option<Vec<f64>> {
        let n = &self.nodes[i];
        match self.enode(i) {
            MoeLang::Op { op, .. } => {
                let (tys, fills) = self.inputs(&n.children)?;
                let out = &self.egraph[self.classes[n.class as usize]].data;
                Some(
                    self.model
                        .output_fill(op, &tys, &fills, out, &self.egraph.analysis.mesh),
                )
            }
            MoeLang::Get { index, .. } => {
                let c = *n.children.first()?;
                let f = self.fills.get(c as usize)?.get(*index as usize).copied()?;
                Some(vec![f])
            }
            MoeLang::Root(_) => None,
        }
    }

    pub(super) fn compute_fills(&mut self) {
        for _ in 0..64 {
            let mut changed = false;
            for ci in 0..self.classes.len() {
                let mut f = vec![1.0; self.fills[ci].len()];
                for i in self.class_nodes[ci].clone() {
                    if let Some(nf) = self.node_fill(i) {
                        for (a, b) in f.iter_mut().zip(nf) {
                            if b.is_finite() {
                                *a = f64::min(*a, b.clamp(0.0, 1.0));
                            }
                        }
                    }
                }
                if f != self.fills[ci] {
                    self.fills[ci] = f;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }

    /// Own cost of node `i` (infinite when it cannot be priced).
    pub(super) fn price(&self, i: usize) -> f64 {
        let n = &self.nodes[i];
        match self.enode(i) {
            MoeLang::Op { op, .. } => {
                let Some((tys, fills)) = self.inputs(&n.children) else {
                    return f64::INFINITY;
                };
                let out = &self.egraph[self.classes[n.class as usize]].data;
                let t = self
                    .model
                    .op_time(op, &tys, &fills, out, &self.egraph.analysis.mesh);
                if t.is_nan() {
                    f64::INFINITY
                } else {
                    t.max(0.0)
                }
            }
            MoeLang::Get { .. } | MoeLang::Root(_) => 0.0,
        }
    }
}
