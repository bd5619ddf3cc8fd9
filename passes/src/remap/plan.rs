//! Which projections become column- or row-parallel, decided on the original graph before any
//! node is emitted (weights come before their users, and their layout depends on the user).
//!
//! A matmul `x @ W` with `W` a weight used only there becomes:
//! - **row-parallel** when `x` arrives with its last dim split on `tp` (W split on its input
//!   features; the output is partial and followed by `all_reduce(tp)`);
//! - **column-parallel** when `x` is replicated and every user of the output can keep working on
//!   a feature split: attention inputs whose head counts `tp` divides, activations, gated
//!   products and bias adds (whose results are again such values), per-head norms, row-parallel
//!   projections, or a graph output (vocab-parallel logits);
//! - replicated otherwise (the router's gate, low-rank MLA down-projections followed by a full
//!   norm, ...).

use moe_ir::{Graph, NodeId, Op};
use std::collections::BTreeSet;

/// The ops whose values never have their feature dim split on `tp` (the remap keeps them whole).
/// A pattern macro so that both walks of [`Plan::new`] list every op: a new op is a compile error
/// in each until it is placed.
macro_rules! whole_feature_ops {
    () => {
        moe_ir::collective_ops!()
            | moe_ir::transfer_ops!()
            | Op::Input(_)
            | Op::Zeros(_)
            | Op::Embedding
            | Op::Transpose
            | Op::Scale { .. }
            | Op::BatchMatmul
            | Op::Softmax
            | Op::Router(_)
            | Op::Dispatch { .. }
            | Op::Combine { .. }
            | Op::LocalRoutes { .. }
            | Op::IndexSelect
            | Op::IndexAdd { .. }
            | Op::ExpertFfn { .. }
            | Op::Shard { .. }
    };
}

/// How a projection is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Replicated,
    Column,
    Row,
}

/// How a weight leaf is laid out on the new mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WeightLayout {
    /// Every dim unsplit on `tp`.
    Replicated,
    /// The dims that were split on an expert axis are split on `tp`.
    Experts,
    /// The last dim split on `tp` (column-parallel projection).
    Last,
    /// Dim 0 split on `tp` (row-parallel projection, a bias or attention sinks of split features).
    First,
}

/// The decisions for one graph.
#[derive(Debug)]
pub(super) struct Plan {
    pub role: Vec<Role>,
    pub weight: Vec<WeightLayout>,
    /// The old mesh axes the experts were split on (collectives over them move to `tp`).
    pub expert_axes: BTreeSet<String>,
}

impl Plan {
    pub fn new(g: &Graph, tp: u64) -> Plan {
        let n = g.len();
        let uses = g.use_counts();
        let mut consumers: Vec<Vec<(NodeId, usize)>> = vec![Vec::new(); n];
        for (id, node) in g.nodes() {
            for (pos, v) in node.inputs.iter().enumerate() {
                if v.output == 0 {
                    consumers[v.node.index()].push((id, pos));
                }
            }
        }
        let mut is_output = vec![false; n];
        for o in &g.outputs {
            is_output[o.value.node.index()] = true;
        }
        let ty = |id: NodeId| g.node(id).outputs.first();
        let last = |id: NodeId| ty(id).and_then(|t| t.shape.last().copied()).unwrap_or(0);
        // A weight leaf used once.
        let lone_weight = |v: moe_ir::Value| -> Option<&moe_ir::TensorType> {
            match &g.node(v.node).op {
                Op::Weight(t) if uses[v.node.index()] == 1 => Some(t),
                _ => None,
            }
        };
        let row_able = |m: NodeId| -> bool {
            let node = g.node(m);
            matches!(node.op, Op::Matmul)
                && lone_weight(node.inputs[1])
                    .is_some_and(|w| w.rank() == 2 && w.shape[0] % tp == 0)
        };
        let bias_able = |v: moe_ir::Value| -> bool {
            lone_weight(v).is_some_and(|w| w.rank() == 1 && w.shape[0] % tp == 0)
        };
        let per_group = |node: &moe_ir::Node| -> bool {
            let width = g
                .value_type(node.inputs[1])
                .and_then(|w| w.shape.first().copied())
                .unwrap_or(0);
            let x = last(node.inputs[0].node);
            width > 0 && width < x && (x / width) % tp == 0
        };

        // Backward: can the value of node i live with its last dim split on tp?
        let mut friendly = vec![false; n];
        for i in (0..n).rev() {
            let id = NodeId::from_index(i);
            if g.node(id).outputs.len() != 1 || last(id) % tp != 0 || last(id) == 0 {
                continue;
            }
            if consumers[i].is_empty() && !is_output[i] {
                continue;
            }
            let shape = ty(id).map(|t| t.shape.clone()).unwrap_or_default();
            let ok = consumers[i].iter().all(|&(c, pos)| {
                let cn = g.node(c);
                let other_matches = || {
                    cn.inputs
                        .iter()
                        .enumerate()
                        .filter(|(p, _)| *p != pos)
                        .all(|(_, v)| g.value_type(*v).is_some_and(|t| t.shape == shape))
                };
                match &cn.op {
                    Op::Attention(a) => match pos {
                        0 => a.heads % tp == 0,
                        1 | 2 => a.kv_heads % tp == 0 && a.heads % tp == 0,
                        _ => false,
                    },
                    Op::Matmul => pos == 0 && row_able(c),
                    Op::Silu | Op::Gelu | Op::Relu | Op::Sigmoid => friendly[c.index()],
                    Op::Swiglu | Op::Mul => other_matches() && friendly[c.index()],
                    Op::Add => {
                        (other_matches() || bias_able(cn.inputs[1 - pos])) && friendly[c.index()]
                    }
                    Op::RmsNorm { .. } | Op::LayerNorm { .. } => {
                        pos == 0 && per_group(cn) && friendly[c.index()]
                    }
                    Op::Weight(_) | whole_feature_ops!() => false,
                }
            });
            friendly[i] = ok;
        }

        // Forward: the roles, and whether each value's last dim ends up split on tp.
        let mut role = vec![Role::Replicated; n];
        let mut weight = vec![WeightLayout::Replicated; n];
        let mut split_last = vec![false; n];
        let mut expert_axes = BTreeSet::new();
        for (id, node) in g.nodes() {
            let i = id.index();
            let s = |v: &moe_ir::Value| v.output == 0 && split_last[v.node.index()];
            split_last[i] = match &node.op {
                Op::Weight(t) => {
                    if t.split.iter().any(|d| !d.is_empty()) {
                        weight[i] = WeightLayout::Experts;
                        expert_axes.extend(t.split.iter().flatten().cloned());
                    }
                    false
                }
                Op::Matmul => {
                    let col_able = lone_weight(node.inputs[1])
                        .is_some_and(|w| w.rank() == 2 && w.shape[1] % tp == 0);
                    if row_able(id) && s(&node.inputs[0]) {
                        role[i] = Role::Row;
                        weight[node.inputs[1].node.index()] = WeightLayout::First;
                        false
                    } else if col_able && friendly[i] && !s(&node.inputs[0]) {
                        role[i] = Role::Column;
                        weight[node.inputs[1].node.index()] = WeightLayout::Last;
                        true
                    } else {
                        false
                    }
                }
                Op::Attention(a) if a.heads % tp == 0 => {
                    if let (true, Some(v)) = (a.sinks, node.inputs.last()) {
                        weight[v.node.index()] = WeightLayout::First;
                    }
                    true
                }
                Op::Attention(_) => false,
                Op::Silu | Op::Gelu | Op::Relu | Op::Sigmoid => s(&node.inputs[0]),
                Op::Swiglu | Op::Mul => node.inputs.iter().all(s),
                Op::Add => {
                    let (a, b) = (&node.inputs[0], &node.inputs[1]);
                    if s(a) && s(b) {
                        true
                    } else if s(a) && bias_able(*b) {
                        weight[b.node.index()] = WeightLayout::First;
                        true
                    } else {
                        false
                    }
                }
                Op::RmsNorm { .. } | Op::LayerNorm { .. } => s(&node.inputs[0]) && per_group(node),
                whole_feature_ops!() => false,
            };
        }
        Plan {
            role,
            weight,
            expert_axes,
        }
    }
}
