//! Extraction: the cheapest program in an e-graph under a [`CostModel`], by **DAG cost** (every
//! e-class a program uses is paid once, however many nodes read it).
//!
//! [`DagExtractor`] is a deterministic greedy DAG extractor (the "greedy-dag" idea of
//! extraction-gym): every e-class keeps its best e-node and the **set** of e-classes that node's
//! sub-DAG uses (a bitset over class indices); a node's cost is the sum of the own costs of the
//! classes in the union of its children's sets plus its own. A worklist, ordered children first (a
//! depth-first post-order of the e-graph; cycles are broken where the search closes them),
//! re-evaluates the parents of every class whose choice changes until nothing changes: on an
//! acyclic e-graph every class is evaluated once, after its children settled, so the sums are
//! exact (a FIFO order let stale sums ripple down 61 layers and never settle). A node whose
//! children's sets contain its own class would close a cycle (the e-graph may hold
//! `all_gather(shard(x)) == x`) and is skipped.
//! Ties go to the earlier e-node in the class's (sorted, stable) node order, never to hash order.
//!
//! Greedy choices are made per class: sharing between a node's children is seen, sharing with
//! siblings higher up is not (that would need a global search). Should the greedy choices ever
//! close a cycle, the extractor falls back to tree-cost choices (egg's rule: a class takes a node
//! only if it is strictly cheaper, which cannot close a cycle since costs are non-negative) and
//! [`DagExtractor::used_fallback`] says so. [`DagExtractor::dag_cost`] is always the exact DAG cost
//! of the term [`DagExtractor::best_expr`] returns.
//!
//! Own costs: an op e-node costs [`CostModel::op_time`] of its inputs (each child class's single
//! output type and fill) and its class's output types; `Get` and `Root` cost 0. The expected
//! **fill** of each class (see [`crate::cost::model`]) is computed first, from its nodes: the
//! smallest fill any of its nodes gives (the best-informed node), iterated to a fixpoint.

use crate::analysis::Types;
use crate::cost::CostModel;
use crate::lang::MoeLang;
use egg::{EGraph, Id, Language, RecExpr};
use std::ops::Range;

mod fill;
mod greedy;
mod report;
#[cfg(test)]
mod tests;

/// Why no program could be extracted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    /// The class has no acyclic term of finite cost (an ill-typed or unpriceable e-graph).
    #[error("e-class {0} has no acyclic term of finite cost")]
    NoTerm(Id),
}

/// A cost split into the seconds spent computing and the seconds spent communicating
/// (collectives, send, recv), with the bytes one rank hands to communication.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CostSplit {
    /// Seconds of local ops.
    pub compute: f64,
    /// Seconds of ops that communicate.
    pub comm: f64,
    /// Bytes one rank hands to collectives and sends (as the cost model reports them).
    pub comm_bytes: f64,
}

impl CostSplit {
    /// Seconds in all.
    pub fn total(&self) -> f64 {
        self.compute + self.comm
    }

    fn unpriceable() -> CostSplit {
        CostSplit {
            compute: f64::INFINITY,
            comm: 0.0,
            comm_bytes: 0.0,
        }
    }
}

impl std::ops::AddAssign for CostSplit {
    fn add_assign(&mut self, o: CostSplit) {
        self.compute += o.compute;
        self.comm += o.comm;
        self.comm_bytes += o.comm_bytes;
    }
}

/// One e-node, flattened.
#[derive(Debug, Clone)]
struct Node {
    class: u32,
    /// Child class indices, in the node's order (duplicates kept).
    children: Vec<u32>,
    own: f64,
}

/// A greedy DAG extractor over a typed e-graph (see the [module docs](self)).
pub struct DagExtractor<'a> {
    egraph: &'a EGraph<MoeLang, Types>,
    model: &'a dyn CostModel,
    /// Canonical class ids, ascending.
    classes: Vec<Id>,
    /// `usize::from(canonical id)` -> class index.
    index: Vec<u32>,
    nodes: Vec<Node>,
    /// Per class, its nodes' range in `nodes` (the class's node order).
    class_nodes: Vec<Range<usize>>,
    fills: Vec<Vec<f64>>,
    /// Per class, the chosen node (index into `nodes`).
    choice: Vec<Option<usize>>,
    fell_back: bool,
    converged: bool,
}

impl std::fmt::Debug for DagExtractor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DagExtractor")
            .field("classes", &self.classes.len())
            .field("nodes", &self.nodes.len())
            .field("used_fallback", &self.fell_back)
            .finish()
    }
}

/// No class: a child outside the e-graph, or an unranked class.
const NONE: u32 = u32::MAX;

/// Words of a bitset over `n` classes.
fn words_for(n: usize) -> usize {
    n.div_ceil(64)
}

fn has(set: &[u64], i: u32) -> bool {
    set[(i / 64) as usize] & (1u64 << (i % 64)) != 0
}

impl<'a> DagExtractor<'a> {
    /// Prices every e-node with `model` and extracts (greedy DAG cost, to a fixpoint).
    pub fn new(egraph: &'a EGraph<MoeLang, Types>, model: &'a dyn CostModel) -> Self {
        let mut classes: Vec<Id> = egraph.classes().map(|c| c.id).collect();
        classes.sort_unstable();
        let max = classes.iter().map(|&c| usize::from(c)).max().unwrap_or(0);
        let mut index = vec![NONE; max + 1];
        for (i, &c) in classes.iter().enumerate() {
            index[usize::from(c)] = i as u32;
        }
        let mut nodes = Vec::new();
        let mut class_nodes = Vec::with_capacity(classes.len());
        for &c in &classes {
            let start = nodes.len();
            for n in &egraph[c].nodes {
                let children = n
                    .children()
                    .iter()
                    .map(|&ch| {
                        index
                            .get(usize::from(egraph.find(ch)))
                            .copied()
                            .unwrap_or(NONE)
                    })
                    .collect();
                nodes.push(Node {
                    class: index[usize::from(c)],
                    children,
                    own: 0.0,
                });
            }
            class_nodes.push(start..nodes.len());
        }
        let mut x = DagExtractor {
            egraph,
            model,
            index,
            fills: classes
                .iter()
                .map(|&c| vec![1.0; egraph[c].data.len()])
                .collect(),
            choice: vec![None; classes.len()],
            classes,
            nodes,
            class_nodes,
            fell_back: false,
            converged: true,
        };
        x.compute_fills();
        for i in 0..x.nodes.len() {
            let own = x.price(i);
            x.nodes[i].own = own;
        }
        x.greedy();
        if x.has_cycle() {
            x.tree_fallback();
            x.fell_back = true;
        }
        x
    }

    /// The e-node `i` as stored in its class.
    fn enode(&self, i: usize) -> &'a MoeLang {
        let ci = self.nodes[i].class as usize;
        let pos = i - self.class_nodes[ci].start;
        &self.egraph[self.classes[ci]].nodes[pos]
    }

    fn class_index(&self, id: Id) -> Option<usize> {
        let c = self.index.get(usize::from(self.egraph.find(id)))?;
        (*c != NONE).then_some(*c as usize)
    }

    /// Whether the greedy fixpoint settled within its budget of evaluations (64 per class; on an
    /// acyclic e-graph it needs one per class). When it did not, the choices are still an acyclic
    /// program, possibly not the greedy optimum.
    pub fn converged(&self) -> bool {
        self.converged
    }

    /// Whether the extractor fell back to tree-cost choices (see the [module docs](self)).
    pub fn used_fallback(&self) -> bool {
        self.fell_back
    }

    /// The chosen e-node of `class`, if it has a term of finite cost.
    pub fn chosen(&self, class: Id) -> Option<&'a MoeLang> {
        let i = self.choice[self.class_index(class)?]?;
        Some(self.enode(i))
    }

    /// Expected fill (`0..=1`) of the first output of `class` (1 for a class without outputs).
    pub fn fill(&self, class: Id) -> f64 {
        self.fills(class).first().copied().unwrap_or(1.0)
    }

    /// Expected fill of each output of `class`.
    pub fn fills(&self, class: Id) -> &[f64] {
        self.class_index(class)
            .map_or(&[][..], |c| self.fills[c].as_slice())
    }

    /// The chosen term for `root`: children before parents, each e-class once (what
    /// [`crate::Loaded::to_graph`] takes).
    pub fn best_expr(&self, root: Id) -> Result<RecExpr<MoeLang>, ExtractError> {
        let ci = self.class_index(root).ok_or(ExtractError::NoTerm(root))?;
        let mut expr = RecExpr::default();
        let mut at: Vec<Option<Id>> = vec![None; self.classes.len()];
        let mut stack: Vec<(usize, bool)> = vec![(ci, false)];
        while let Some((c, expanded)) = stack.pop() {
            if at[c].is_some() {
                continue;
            }
            let i = self.choice[c].ok_or(ExtractError::NoTerm(self.classes[c]))?;
            let children = &self.nodes[i].children;
            if expanded {
                if children.iter().any(|&ch| at[ch as usize].is_none()) {
                    // A child still open: the choices close a cycle (never after the checks in `new`).
                    return Err(ExtractError::NoTerm(self.classes[c]));
                }
                let mut k = 0;
                let node = self.enode(i).clone().map_children(|_| {
                    let ch = children[k] as usize;
                    k += 1;
                    at[ch].unwrap_or(Id::from(0usize))
                });
                at[c] = Some(expr.add(node));
            } else {
                stack.push((c, true));
                // Reverse, so the first child is emitted first.
                for &ch in children.iter().rev() {
                    if ch == NONE {
                        return Err(ExtractError::NoTerm(self.classes[c]));
                    }
                    if at[ch as usize].is_none() {
                        stack.push((ch as usize, false));
                    }
                }
            }
        }
        Ok(expr)
    }
}
