//! The choices: the greedy DAG-cost fixpoint over a children-first worklist, the check that the
//! chosen nodes close no cycle, and the tree-cost fallback when they do.

use super::{has, words_for, DagExtractor, Node, NONE};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Range;

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
    /// The greedy DAG fixpoint.
    pub(super) fn greedy(&mut self) {
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
    pub(super) fn has_cycle(&self) -> bool {
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
    pub(super) fn tree_fallback(&mut self) {
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
}
