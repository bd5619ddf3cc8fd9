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
use moe_ir::TensorType;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Range;

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

const NONE: u32 = u32::MAX;

/// Words of a bitset over `n` classes.
fn words_for(n: usize) -> usize {
    n.div_ceil(64)
}

fn has(set: &[u64], i: u32) -> bool {
    set[(i / 64) as usize] & (1u64 << (i % 64)) != 0
}

/// Post-order position of every class in a depth-first search over children (all nodes, in
/// order), starting from classes in index order: children get lower ranks than their parents,
/// except along edges that close a cycle.
fn topo_rank(parents: &[Vec<u32>], nodes: &[Node], class_nodes: &[Range<usize>]) -> Vec<u32> {
    let n = parents.len();
    let kids: Vec<Vec<u32>> = class_nodes
        .iter()
        .map(|r| {
            let mut k: Vec<u32> = nodes[r.clone()]
                .iter()
                .flat_map(|node| node.children.iter().copied())
                .filter(|&c| c != NONE)
                .collect();
            k.sort_unstable();
            k.dedup();
            k
        })
        .collect();
    let mut rank = vec![NONE; n];
    let mut open = vec![false; n];
    let mut next = 0u32;
    for start in 0..n {
        if rank[start] != NONE || open[start] {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        open[start] = true;
        while let Some(top) = stack.len().checked_sub(1) {
            let (c, k) = stack[top];
            if let Some(&ch) = kids[c].get(k) {
                stack[top].1 += 1;
                let ch = ch as usize;
                if rank[ch] == NONE && !open[ch] {
                    open[ch] = true;
                    stack.push((ch, 0));
                }
            } else {
                open[c] = false;
                rank[c] = next;
                next += 1;
                stack.pop();
            }
        }
    }
    rank
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

    /// Input types and fills of an op whose children are the class indices `children`, or `None`
    /// if a child does not have exactly one output.
    fn inputs(&self, children: &[u32]) -> Option<(Vec<&'a TensorType>, Vec<f64>)> {
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
    fn node_fill(&self, i: usize) -> Option<Vec<f64>> {
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

    fn compute_fills(&mut self) {
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
    fn price(&self, i: usize) -> f64 {
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

    /// The greedy DAG fixpoint.
    fn greedy(&mut self) {
        let n = self.classes.len();
        let words = words_for(n);
        let mut parents: Vec<Vec<u32>> = vec![Vec::new(); n];
        for node in &self.nodes {
            for &c in &node.children {
                if c != NONE {
                    let p = &mut parents[c as usize];
                    if p.last() != Some(&node.class) {
                        p.push(node.class);
                    }
                }
            }
        }
        for p in &mut parents {
            p.sort_unstable();
            p.dedup();
        }
        let mut sets = vec![0u64; n * words];
        let mut total = vec![f64::INFINITY; n];
        let mut chosen_own = vec![0.0; n];
        // Children first: classes are popped in a topological order of the e-graph (cycles broken
        // where the depth-first search closes them), so on a DAG every class is evaluated once,
        // after its children settled.
        let rank = topo_rank(&parents, &self.nodes, &self.class_nodes);
        let mut queue: BinaryHeap<Reverse<(u32, u32)>> = (0..n as u32)
            .map(|c| Reverse((rank[c as usize], c)))
            .collect();
        let mut queued = vec![true; n];
        let mut scratch = vec![0u64; words];
        let mut best_set = vec![0u64; words];
        let mut budget = 64 * n + 1024;
        while let Some(Reverse((_, ci))) = queue.pop() {
            queued[ci as usize] = false;
            if budget == 0 {
                self.converged = false;
                break;
            }
            budget -= 1;
            let mut best: Option<(f64, usize)> = None;
            let mut best_size = u32::MAX;
            'nodes: for i in self.class_nodes[ci as usize].clone() {
                let node = &self.nodes[i];
                if !node.own.is_finite() {
                    continue;
                }
                // Base: the child with the largest total; the others add what it lacks.
                let mut base: Option<u32> = None;
                for &c in &node.children {
                    if c == NONE || c == ci || self.choice[c as usize].is_none() {
                        continue 'nodes;
                    }
                    if base.is_none_or(|b| total[c as usize] > total[b as usize]) {
                        base = Some(c);
                    }
                }
                let mut cost = node.own;
                match base {
                    Some(b) => {
                        let b = b as usize;
                        scratch.copy_from_slice(&sets[b * words..(b + 1) * words]);
                        cost += total[b];
                    }
                    None => scratch.fill(0),
                }
                if has(&scratch, ci) {
                    continue;
                }
                for &c in &node.children {
                    if Some(c) == base {
                        continue;
                    }
                    let cs = &sets[c as usize * words..(c as usize + 1) * words];
                    for (w, (s, &x)) in scratch.iter_mut().zip(cs).enumerate() {
                        let mut extra = x & !*s;
                        *s |= extra;
                        while extra != 0 {
                            let b = extra.trailing_zeros() as usize;
                            cost += chosen_own[w * 64 + b];
                            extra &= extra - 1;
                        }
                    }
                }
                if has(&scratch, ci) {
                    continue;
                }
                scratch[(ci / 64) as usize] |= 1u64 << (ci % 64);
                // Strictly cheaper wins; within rounding (all_reduce vs reduce_scatter +
                // all_gather), the smaller sub-DAG wins; otherwise the earlier node.
                let size: u32 = scratch.iter().map(|w| w.count_ones()).sum();
                let wins = match best {
                    None => true,
                    Some((bc, _)) => {
                        let tol = 1e-9 * bc.abs();
                        cost < bc - tol || (cost <= bc + tol && size < best_size)
                    }
                };
                if wins {
                    best = Some((cost, i));
                    best_size = size;
                    best_set.copy_from_slice(&scratch);
                }
            }
            let c = ci as usize;
            let changed = match best {
                Some((cost, i)) => {
                    let set = &mut sets[c * words..(c + 1) * words];
                    let changed = self.choice[c] != Some(i)
                        || *set != best_set[..]
                        || (cost - total[c]).abs() > 1e-12 * cost.abs().max(1e-300);
                    if changed {
                        set.copy_from_slice(&best_set);
                        total[c] = cost;
                        chosen_own[c] = self.nodes[i].own;
                        self.choice[c] = Some(i);
                    }
                    changed
                }
                None => {
                    let changed = self.choice[c].is_some();
                    if changed {
                        sets[c * words..(c + 1) * words].fill(0);
                        total[c] = f64::INFINITY;
                        chosen_own[c] = 0.0;
                        self.choice[c] = None;
                    }
                    changed
                }
            };
            if changed {
                for &p in &parents[c] {
                    if !queued[p as usize] {
                        queued[p as usize] = true;
                        queue.push(Reverse((rank[p as usize], p)));
                    }
                }
            }
        }
    }

    /// Whether the chosen nodes form a cycle anywhere.
    fn has_cycle(&self) -> bool {
        // 0: unseen, 1: on the stack, 2: done.
        let mut state = vec![0u8; self.classes.len()];
        for start in 0..self.classes.len() {
            if state[start] != 0 {
                continue;
            }
            let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
            state[start] = 1;
            while let Some(top) = stack.len().checked_sub(1) {
                let (c, k) = stack[top];
                let children: &[u32] = match self.choice[c] {
                    Some(i) => &self.nodes[i].children,
                    None => &[],
                };
                if let Some(&ch) = children.get(k) {
                    stack[top].1 += 1;
                    let ch = ch as usize;
                    match state.get(ch) {
                        Some(0) => {
                            state[ch] = 1;
                            stack.push((ch, 0));
                        }
                        Some(1) => return true,
                        _ => {}
                    }
                } else {
                    state[c] = 2;
                    stack.pop();
                }
            }
        }
        false
    }

    /// Tree-cost choices (egg's fixpoint): acyclic by construction.
    fn tree_fallback(&mut self) {
        let n = self.classes.len();
        let mut cost = vec![f64::INFINITY; n];
        self.choice = vec![None; n];
        let mut changed = true;
        let mut rounds = 0;
        while changed && rounds < 4 * n + 16 {
            changed = false;
            rounds += 1;
            for ci in 0..n {
                for i in self.class_nodes[ci].clone() {
                    let node = &self.nodes[i];
                    let c = node
                        .children
                        .iter()
                        .try_fold(node.own, |acc, &ch| cost.get(ch as usize).map(|&x| acc + x));
                    if let Some(c) = c {
                        if c < cost[ci] {
                            cost[ci] = c;
                            self.choice[ci] = Some(i);
                            changed = true;
                        }
                    }
                }
            }
        }
    }

    fn class_index(&self, id: Id) -> Option<usize> {
        let c = self.index.get(usize::from(self.egraph.find(id)))?;
        (*c != NONE).then_some(*c as usize)
    }

    /// The classes the chosen sub-DAG of `ci` uses (bitset), or `None` if one has no choice.
    fn reach_into(&self, ci: usize, set: &mut [u64]) -> Option<()> {
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

    fn sum_chosen(&self, set: &[u64], skip: &[u64]) -> f64 {
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
    fn above(&self, class: Id, node: &MoeLang, stop: &[Id]) -> Option<(Vec<u64>, Vec<u64>)> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cost::{Cluster, Roofline};
    use crate::rules::testing::small;
    use crate::rules::AllGatherSlicing;
    use crate::{load, Loaded};
    use egg::{CostFunction, Extractor, Rewrite, Runner};
    use moe_ir::{DType, Mesh, Op};

    /// Loads `g` and saturates with the dispatch rule; returns the e-graph and whether it grew.
    fn saturate(g: &moe_ir::Graph) -> (Loaded, bool) {
        let mut l = load(g);
        let before = l.egraph.total_number_of_nodes();
        let rules: Vec<Rewrite<MoeLang, Types>> =
            vec![Rewrite::new(AllGatherSlicing::NAME, AllGatherSlicing, AllGatherSlicing).unwrap()];
        let empty = EGraph::new(Types {
            mesh: g.mesh.clone(),
        });
        let runner: Runner<MoeLang, Types, ()> = Runner::new(Types {
            mesh: g.mesh.clone(),
        })
        .with_node_limit(1_000_000)
        .with_egraph(std::mem::replace(&mut l.egraph, empty))
        .run(&rules);
        l.egraph = runner.egraph;
        let grew = l.egraph.total_number_of_nodes() > before;
        (l, grew)
    }

    #[test]
    fn a_rewritten_small_model_extracts_to_a_valid_graph() {
        let model = Roofline::new(Cluster::default());
        let g = small("ep=4", &[]);
        let (l, grew) = saturate(&g);
        assert!(grew, "the rule fired");
        let x = DagExtractor::new(&l.egraph, &model);
        assert!(!x.used_fallback() && x.converged());
        let out = l.to_graph(&x.best_expr(l.root).unwrap());
        moe_ir::validate(&out).unwrap();
        let cost = x.dag_cost(l.root);
        assert!(cost.is_finite() && cost > 0.0);
        let s = moe_ir::Summary::of(&out);
        // Each of the 2 MoE layers in one of its two forms: 2 all-to-alls, or 1 reduce-scatter.
        assert_eq!(
            s.collectives.all_to_all + 2 * s.collectives.reduce_scatter,
            4
        );
        // Never worse than the original program.
        let orig = load(&g);
        let before = DagExtractor::new(&orig.egraph, &model).dag_cost(orig.root);
        assert!(cost <= before * (1.0 + 1e-12), "{cost} > {before}");
        if std::env::var_os("MOE_SHOW").is_some() {
            println!(
                "{} ms -> {} ms, all_to_all {}, reduce_scatter {}",
                before * 1e3,
                cost * 1e3,
                s.collectives.all_to_all,
                s.collectives.reduce_scatter
            );
        }
        // Extracting again gives the same program (determinism).
        let again = l.to_graph(
            &DagExtractor::new(&l.egraph, &model)
                .best_expr(l.root)
                .unwrap(),
        );
        assert_eq!(moe_ir::print::to_text(&again), moe_ir::print::to_text(&out));
    }

    #[test]
    fn without_a_rewrite_the_graph_comes_back_identical() {
        let model = Roofline::default();
        let layer = moe_ir::json::from_json(include_str!("../../examples/moe-layer.json")).unwrap();
        for g in [small("ep=4", &[]), small("dp=2,ep=4", &[]), layer] {
            let l = load(&g);
            let x = DagExtractor::new(&l.egraph, &model);
            let out = l.to_graph(&x.best_expr(l.root).unwrap());
            moe_ir::validate(&out).unwrap();
            assert_eq!(moe_ir::print::to_text(&out), moe_ir::print::to_text(&g));
        }
    }

    #[test]
    fn long_sequences_take_the_all_gather_form() {
        // Mixtral's widths, 4096 tokens per rank: the dropless padded buffer holds 4 x 8 x 4096 rows per rank, the
        // grouped form the 2/8 of 16384 x 2 routed rows a rank expects.
        let model = Roofline::default();
        let opts = moe_ir::hf::ImportOptions {
            mesh: Some(Mesh::parse("ep=4", 8).unwrap()),
            seq: 4096,
            ..Default::default()
        };
        let sets: Vec<String> = ["num_hidden_layers=2", "vocab_size=128"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let g = moe_ir::hf::import(
            include_str!("../../examples/hf/mixtral-8x7b.json"),
            &sets,
            &opts,
        )
        .unwrap();
        let (l, grew) = saturate(&g);
        assert!(grew);
        let x = DagExtractor::new(&l.egraph, &model);
        let out = l.to_graph(&x.best_expr(l.root).unwrap());
        moe_ir::validate(&out).unwrap();
        let s = moe_ir::Summary::of(&out);
        assert_eq!(
            (s.collectives.all_to_all, s.collectives.reduce_scatter),
            (0, 2)
        );
        let orig = load(&g);
        let before = DagExtractor::new(&orig.egraph, &model).dag_cost(orig.root);
        assert!(x.dag_cost(l.root) < before);
    }

    #[test]
    fn grouped_experts_see_the_fill_of_their_routes() {
        let model = Roofline::default();
        let (l, _) = saturate(&small("ep=4", &[]));
        let x = DagExtractor::new(&l.egraph, &model);
        let mut seen = 0;
        for c in l.egraph.classes() {
            for n in &c.nodes {
                if let MoeLang::Op {
                    op: Op::LocalRoutes { .. },
                    ..
                } = n
                {
                    // 8 experts over 4 ranks, top-2: each rank gets 1/4 of the pairs, bound k * T.
                    assert_eq!(x.fills(c.id), &[0.25, 0.25, 1.0]);
                    seen += 1;
                }
                if let MoeLang::Op {
                    op:
                        Op::ExpertFfn {
                            layout: moe_ir::FfnLayout::Grouped,
                            ..
                        },
                    ..
                } = n
                {
                    assert_eq!(x.fill(c.id), 0.25);
                }
            }
        }
        assert_eq!(seen, 2);
    }

    fn leaf(eg: &mut EGraph<MoeLang, Types>, name: &str, ty: TensorType) -> Id {
        eg.add(MoeLang::Op {
            op: Op::Input(ty),
            leaf: Some(name.into()),
            children: vec![],
        })
    }

    fn op(eg: &mut EGraph<MoeLang, Types>, op: Op, children: Vec<Id>) -> Id {
        eg.add(MoeLang::Op {
            op,
            leaf: None,
            children,
        })
    }

    /// Tree cost with the extractor's own costs (what a tree extractor would minimise).
    struct Tree<'x, 'a>(&'x DagExtractor<'a>);
    impl CostFunction<MoeLang> for Tree<'_, '_> {
        type Cost = f64;
        fn cost<C: FnMut(Id) -> f64>(&mut self, enode: &MoeLang, mut costs: C) -> f64 {
            let own = self.0.node_own_cost(enode);
            enode.fold(own, |s, c| s + costs(c))
        }
    }

    #[test]
    fn a_shared_subterm_is_paid_once() {
        // Memory-bound ops on [1024, 1024] bf16: unary ops move 2 units, binary ops 3.
        let mesh = Mesh::single();
        let mut eg = EGraph::new(Types { mesh });
        let t = TensorType::new(DType::Bf16, [1024, 1024]);
        let x = leaf(&mut eg, "x", t);
        // a = mul(gelu(s), relu(s)), s = add(x, x): tree 3 + (2+3) + (2+3) = 13, DAG 3+2+2+3 = 10.
        let s = op(&mut eg, Op::Add, vec![x, x]);
        let p = op(&mut eg, Op::Gelu, vec![s]);
        let q = op(&mut eg, Op::Relu, vec![s]);
        let a = op(&mut eg, Op::Mul, vec![p, q]);
        // b = mul(sigmoid^4(x), x): 4 * 2 + 3 = 11 either way.
        let mut y = x;
        for _ in 0..4 {
            y = op(&mut eg, Op::Sigmoid, vec![y]);
        }
        let b = op(&mut eg, Op::Mul, vec![y, x]);
        eg.union(a, b);
        let root = eg.add(MoeLang::Root(vec![a]));
        eg.rebuild();
        let model = Roofline::default();
        let x_ = DagExtractor::new(&eg, &model);
        let unit = (1024.0 * 1024.0 * 2.0) / 4300e9;
        let dag = x_.dag_cost(root);
        assert!(
            (dag - 10.0 * unit).abs() < 1e-9 * unit,
            "{dag} vs {}",
            10.0 * unit
        );
        let expr = x_.best_expr(root).unwrap();
        let text = expr.to_string();
        assert!(text.contains("gelu") && !text.contains("sigmoid"), "{text}");
        // A tree extractor on the same costs picks the other form.
        let (tree_cost, tree) = Extractor::new(&eg, Tree(&x_)).find_best(root);
        assert!(tree.to_string().contains("sigmoid"), "{tree}");
        assert!((tree_cost - 11.0 * unit).abs() < 1e-9 * unit);
        // The DAG price of each alternative above x (x is free anyway).
        let ca = x_.cost_of_node_above(a, x_.chosen(a).unwrap(), &[x]);
        assert!((ca - 10.0 * unit).abs() < 1e-9 * unit);
        let alt = eg[a]
            .nodes
            .iter()
            .find(|n| Some(*n) != x_.chosen(a))
            .unwrap();
        let cb = x_.cost_of_node_above(a, alt, &[x]);
        assert!((cb - 11.0 * unit).abs() < 1e-9 * unit);
        // Stopping at s leaves the mul and the two unary ops.
        let cs = x_.cost_of_node_above(a, x_.chosen(a).unwrap(), &[s]);
        assert!((cs - 7.0 * unit).abs() < 1e-9 * unit);
    }

    #[test]
    fn a_cycle_terminates_and_extracts_the_leaf() {
        let mesh = Mesh::parse("tp=4", 8).unwrap();
        let mut eg = EGraph::new(Types { mesh });
        let x = leaf(&mut eg, "x", TensorType::new(DType::Bf16, [16, 8]));
        let sh = op(
            &mut eg,
            Op::Shard {
                axis: "tp".into(),
                dim: 0,
            },
            vec![x],
        );
        let ag = op(
            &mut eg,
            Op::AllGather {
                axis: "tp".into(),
                dim: 0,
            },
            vec![sh],
        );
        eg.union(x, ag);
        let y = op(&mut eg, Op::Gelu, vec![x]);
        let root = eg.add(MoeLang::Root(vec![y]));
        eg.rebuild();
        let model = Roofline::default();
        let ex = DagExtractor::new(&eg, &model);
        assert!(!ex.used_fallback());
        let expr = ex.best_expr(root).unwrap();
        assert_eq!(expr.to_string(), "(root (gelu input:x))");
        let gelu = 2.0 * 16.0 * 8.0 * 2.0 / 4300e9;
        assert!((ex.dag_cost(root) - gelu).abs() < 1e-20);
    }
}
