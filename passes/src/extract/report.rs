//! Costs of the chosen program for reports: the exact DAG cost of a term, the own cost of a class or
//! of any e-node, and the cost of one alternative above the classes it shares with others (what the
//! per-layer report of [`crate::rewrite`] prices each form with), split into compute and
//! communication.

use super::{words_for, CostSplit, DagExtractor, NONE};
use crate::lang::MoeLang;
use egg::{Id, Language};

impl<'a> DagExtractor<'a> {
    /// The classes the chosen sub-DAG of `ci` uses (bitset), or `None` if one has no choice.
    pub(super) fn reach_into(&self, ci: usize, set: &mut [u64]) -> Option<()> {
        let mut stack = vec![ci];
        while let Some(c) = stack.pop() {
            let (w, b) = (c / 64, c % 64);
            if set[w] & (1u64 << b) != 0 {
                continue;
            }
            set[w] |= 1u64 << b;
            let i = self.choice[c]?;
            for &ch in &self.nodes[i].children {
                if ch == NONE {
                    return None;
                }
                stack.push(ch as usize);
            }
        }
        Some(())
    }

    pub(super) fn sum_chosen(&self, set: &[u64], skip: &[u64]) -> f64 {
        let mut sum = 0.0;
        for (w, (&s, &k)) in set.iter().zip(skip).enumerate() {
            let mut bits = s & !k;
            while bits != 0 {
                let c = w * 64 + bits.trailing_zeros() as usize;
                sum += self.choice[c].map_or(f64::INFINITY, |i| self.nodes[i].own);
                bits &= bits - 1;
            }
        }
        sum
    }

    /// The exact DAG cost (seconds) of the program [`DagExtractor::best_expr`] returns for `root`:
    /// the own costs of the classes it uses, each once. Infinite if there is none.
    pub fn dag_cost(&self, root: Id) -> f64 {
        let Some(ci) = self.class_index(root) else {
            return f64::INFINITY;
        };
        let words = words_for(self.classes.len());
        let mut set = vec![0u64; words];
        if self.reach_into(ci, &mut set).is_none() {
            return f64::INFINITY;
        }
        self.sum_chosen(&set, &vec![0u64; words])
    }

    /// Own cost (seconds) of the chosen node of `class` (infinite if none).
    pub fn own_cost(&self, class: Id) -> f64 {
        self.class_index(class)
            .and_then(|c| self.choice[c])
            .map_or(f64::INFINITY, |i| self.nodes[i].own)
    }

    /// Own cost (seconds) of any e-node of the e-graph, children read through `find` (infinite
    /// if it cannot be priced).
    pub fn node_own_cost(&self, node: &MoeLang) -> f64 {
        self.node_split(node).total()
    }

    /// [`DagExtractor::node_own_cost`] as a [`CostSplit`].
    pub fn node_split(&self, node: &MoeLang) -> CostSplit {
        let MoeLang::Op { op, children, .. } = node else {
            return CostSplit::default();
        };
        let idx: Option<Vec<u32>> = children
            .iter()
            .map(|&c| self.class_index(c).map(|i| i as u32))
            .collect();
        let Some((tys, fills)) = idx.and_then(|idx| self.inputs(&idx)) else {
            return CostSplit::unpriceable();
        };
        let mesh = &self.egraph.analysis.mesh;
        let inferred;
        let out = match self.egraph.lookup(node.clone()) {
            Some(c) => &self.egraph[c].data,
            None => match moe_ir::infer(op, &tys, mesh) {
                Ok(o) => {
                    inferred = o;
                    &inferred
                }
                Err(_) => return CostSplit::unpriceable(),
            },
        };
        let seconds = self.model.op_time(op, &tys, &fills, out, mesh);
        if seconds.is_nan() {
            return CostSplit::unpriceable();
        }
        let seconds = seconds.max(0.0);
        if op.communicates() {
            let bytes = self.model.op_cost(op, &tys, &fills, out, mesh).comm_bytes;
            CostSplit {
                compute: 0.0,
                comm: seconds,
                comm_bytes: bytes,
            }
        } else {
            CostSplit {
                compute: seconds,
                comm: 0.0,
                comm_bytes: 0.0,
            }
        }
    }

    /// DAG cost (seconds) of `node` (an e-node of `class`) and the chosen sub-DAGs below it,
    /// counting only classes outside the chosen sub-DAGs of the `stop` classes: alternatives of one
    /// layer priced without the upstream they share. `node`'s own cost always counts. Infinite if a
    /// child has no term.
    pub fn cost_of_node_above(&self, class: Id, node: &MoeLang, stop: &[Id]) -> f64 {
        match self.above(class, node, stop) {
            Some((set, skip)) => self.node_own_cost(node) + self.sum_chosen(&set, &skip),
            None => f64::INFINITY,
        }
    }

    /// [`DagExtractor::cost_of_node_above`] split into computation and communication.
    pub fn split_of_node_above(&self, class: Id, node: &MoeLang, stop: &[Id]) -> CostSplit {
        let Some((set, skip)) = self.above(class, node, stop) else {
            return CostSplit::unpriceable();
        };
        let mut split = self.node_split(node);
        for (w, (&s, &k)) in set.iter().zip(&skip).enumerate() {
            let mut bits = s & !k;
            while bits != 0 {
                let c = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                match self.choice[c] {
                    Some(i) => split += self.node_split(self.enode(i)),
                    None => return CostSplit::unpriceable(),
                }
            }
        }
        split
    }

    /// The classes below `node` (without `class` itself) and those the `stop` classes reach.
    pub(super) fn above(
        &self,
        class: Id,
        node: &MoeLang,
        stop: &[Id],
    ) -> Option<(Vec<u64>, Vec<u64>)> {
        let words = words_for(self.classes.len());
        let mut set = vec![0u64; words];
        for &c in node.children() {
            let ci = self.class_index(c)?;
            self.reach_into(ci, &mut set)?;
        }
        let mut skip = vec![0u64; words];
        for &s in stop {
            if let Some(si) = self.class_index(s) {
                // A stop class without a term skips what it reaches.
                let _ = self.reach_into(si, &mut skip);
            }
        }
        if let Some(ci) = self.class_index(class) {
            // The node itself is priced by the caller, not as its class's chosen node.
            set[ci / 64] &= !(1u64 << (ci % 64));
        }
        Some((set, skip))
    }
}
