//! Per-MoE-layer reports: which dispatch forms the e-graph holds for a layer, what each is
//! predicted to cost, which one extraction chose, why a form is missing, and (on request) egg's
//! proof of the rewrite as the chain of rule names.

use crate::convert::Loaded;
use crate::extract::{CostSplit, DagExtractor};
use crate::lang::MoeLang;
use egg::{Id, Language};
use moe_ir::{Graph, NodeId, Op, Scope};
use std::collections::HashSet;
use std::fmt;
use std::rc::Rc;

/// A way to run one MoE layer's dispatch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Form {
    /// `dispatch -> all_to_all -> experts -> all_to_all -> combine` (DPMoE / GShard).
    AllToAll,
    /// `all_gather` tokens, slice locally, experts, `reduce_scatter` (Megatron's "allgather").
    AllGather,
    /// Replicated tokens: slice locally, experts, weighted `index_add`, `all_reduce` (PPMoE).
    Ppmoe,
}

impl Form {
    /// The form's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Form::AllToAll => "all-to-all",
            Form::AllGather => "all-gather + reduce-scatter",
            Form::Ppmoe => "ppmoe (index slicing + all-reduce)",
        }
    }

    /// A one-word name (`plan`'s tables).
    pub fn short_name(self) -> &'static str {
        match self {
            Form::AllToAll => "all-to-all",
            Form::AllGather => "all-gather",
            Form::Ppmoe => "ppmoe",
        }
    }
}

/// A form's predicted cost for one layer: the DAG cost of the layer's dispatch, experts and
/// combination, not counting what the forms share (the layer input and the router).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FormCost {
    pub form: Form,
    /// Seconds per step on one rank (`split.total()`).
    pub seconds: f64,
    /// The same seconds split into computation and communication.
    pub split: CostSplit,
}

/// What happened to one MoE layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerReport {
    /// Layer index (the `combine` node's scope).
    pub layer: u32,
    /// The layer's `combine` node in the input graph.
    pub node: String,
    /// The mesh axis the experts are split on, with its size and level.
    pub axis: String,
    pub chosen: Form,
    /// Every form the e-graph holds for this layer, cheapest first.
    pub costs: Vec<FormCost>,
    /// Why forms are missing (empty when every form applied).
    pub why_not: Vec<String>,
    /// The rules egg's explanation uses to prove the chosen form equal to the input form
    /// (filled by [`prove`]; empty when the input form was kept).
    pub rules: Vec<String>,
    // For `prove`: the input form's e-node id and the chosen node, at the level they differ.
    proof: Option<(Id, MoeLang)>,
}

impl fmt::Display for LayerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "layer {} ({}, experts on {}): {}",
            self.layer,
            self.node,
            self.axis,
            self.chosen.name()
        )?;
        self.write_body(f)
    }
}

/// Two costs within this fraction of each other are a tie (the cost model's rounding: an
/// all_reduce and its reduce_scatter + all_gather price the same up to it).
pub const TIE: f64 = 1e-3;

/// Whether two predicted times are a tie.
pub fn tied(a: f64, b: f64) -> bool {
    (a - b).abs() <= TIE * a.abs().max(b.abs())
}

impl LayerReport {
    /// The report without its header line: every candidate, why the winner won, what did not
    /// apply and the proof. [`super::fold`] prints it once for a group of identical layers.
    pub(super) fn write_body(&self, f: &mut dyn fmt::Write) -> fmt::Result {
        let best = self.costs.first().map_or(0.0, |c| c.seconds);
        for c in &self.costs {
            let mark = if c.form == self.chosen {
                "  <- chosen".to_string()
            } else if best > 0.0 && tied(c.seconds, best) {
                "  (tie)".to_string()
            } else if best > 0.0 {
                format!("  ({:.2}x)", c.seconds / best)
            } else {
                String::new()
            };
            writeln!(
                f,
                "  {:<36} {:>10.3} ms = compute {:.3} ms + communication {:.3} ms ({}){mark}",
                c.form.name(),
                c.seconds * 1e3,
                c.split.compute * 1e3,
                c.split.comm * 1e3,
                bytes(c.split.comm_bytes),
            )?;
        }
        if let Some(chosen) = self.costs.iter().find(|c| c.form == self.chosen) {
            let others: Vec<&FormCost> = self
                .costs
                .iter()
                .filter(|c| c.form != self.chosen)
                .collect();
            let ties: Vec<&str> = others
                .iter()
                .filter(|c| tied(c.seconds, chosen.seconds))
                .map(|c| c.form.name())
                .collect();
            if !ties.is_empty() {
                writeln!(
                    f,
                    "  tie: {} costs the same as {} (within {}%); extraction keeps the first in its fixed order",
                    ties.join(", "),
                    self.chosen.name(),
                    TIE * 100.0
                )?;
            }
            // Why it won: against the cheapest form that is not tied with it.
            if let Some(next) = others.iter().find(|c| !tied(c.seconds, chosen.seconds)) {
                writeln!(
                    f,
                    "  why: {:.2}x faster than {}: {} communication ({} vs {}) and {} compute",
                    next.seconds / chosen.seconds.max(f64::MIN_POSITIVE),
                    next.form.name(),
                    delta(chosen.split.comm, next.split.comm),
                    bytes(chosen.split.comm_bytes).trim_end_matches(" per rank"),
                    bytes(next.split.comm_bytes),
                    delta(chosen.split.compute, next.split.compute),
                )?;
            } else if others.is_empty() {
                writeln!(f, "  why: the only form the e-graph holds for this layer")?;
            }
        }
        for w in &self.why_not {
            writeln!(f, "  not applicable: {w}")?;
        }
        if !self.rules.is_empty() {
            writeln!(
                f,
                "  proof of the chosen form (egg explanation): {}",
                self.rules.join(" -> ")
            )?;
        }
        Ok(())
    }

    /// Whether this report chose `form` and holds what [`prove`] needs to explain it.
    pub(super) fn proves(&self, form: Form) -> bool {
        self.chosen == form && self.proof.is_some()
    }

    /// Whether two reports say the same apart from the layer they are about: same axis, choice,
    /// candidates (times to the nanosecond, bytes to the byte), reasons and proof.
    pub fn same_as(&self, other: &LayerReport) -> bool {
        let ns = |s: f64| (s * 1e9).round() as i64;
        let costs = |r: &LayerReport| -> Vec<(Form, i64, i64, i64)> {
            r.costs
                .iter()
                .map(|c| {
                    (
                        c.form,
                        ns(c.split.compute),
                        ns(c.split.comm),
                        c.split.comm_bytes.round() as i64,
                    )
                })
                .collect()
        };
        let why = |r: &LayerReport| -> Vec<String> {
            r.why_not
                .iter()
                .map(|w| w.replace(&r.node, "{node}"))
                .collect()
        };
        self.axis == other.axis
            && self.chosen == other.chosen
            && costs(self) == costs(other)
            && why(self) == why(other)
            && self.rules == other.rules
    }
}

/// `0.845 ms less` / `0.845 ms more`: `a` against `b`.
fn delta(a: f64, b: f64) -> String {
    let d = (b - a) * 1e3;
    if d >= 0.0 {
        format!("{d:.3} ms less")
    } else {
        format!("{:.3} ms more", -d)
    }
}

/// A byte count for reports: `12.5 MiB per rank`.
fn bytes(b: f64) -> String {
    let mib = b / (1u64 << 20) as f64;
    if mib >= 0.1 {
        format!("{mib:.1} MiB per rank")
    } else {
        format!("{:.1} KiB per rank", b / 1024.0)
    }
}

/// The MoE layers of `g`: (combine node, the layer's output node, the nodes the forms share).
struct MoeLayer {
    combine: NodeId,
    out: NodeId,
    stop: Vec<NodeId>,
    axis: String,
}

/// Skips a local `shard` (the remap's token split) to the value it splits.
fn through_shard(g: &Graph, id: NodeId) -> NodeId {
    let n = g.node(id);
    match n.op {
        Op::Shard { .. } => n.inputs[0].node,
        _ => id,
    }
}

fn moe_layers(g: &Graph) -> Vec<MoeLayer> {
    let mut users: Vec<Vec<NodeId>> = vec![Vec::new(); g.len()];
    for (id, n) in g.nodes() {
        for v in &n.inputs {
            users[v.node.index()].push(id);
        }
    }
    let mut out = Vec::new();
    for (id, n) in g.nodes() {
        if !matches!(n.op, Op::Combine { .. }) {
            continue;
        }
        // combine(all_to_all(expert_ffn(all_to_all(dispatch(x, idx)))), idx, w)
        let a2a = g.node(n.inputs[0].node);
        let axis = a2a.op.collective_axis().unwrap_or("?").to_string();
        let dispatch = (|| {
            let ffn = g.node(a2a.inputs.first()?.node);
            let a2a1 = g.node(ffn.inputs.first()?.node);
            let d = a2a1.inputs.first()?.node;
            matches!(g.node(d).op, Op::Dispatch { .. }).then_some(d)
        })();
        let mut stop = vec![through_shard(g, n.inputs[1].node)];
        if let Some(d) = dispatch {
            stop.push(through_shard(g, g.node(d).inputs[0].node));
        }
        // After the tensor-parallel remap the layer ends in an all_gather of its tokens.
        let layer_out = match users[id.index()].as_slice() {
            [u] if matches!(&g.node(*u).op, Op::AllGather { axis: a, dim: 0 } if *a == axis) => *u,
            _ => id,
        };
        out.push(MoeLayer {
            combine: id,
            out: layer_out,
            stop,
            axis,
        });
    }
    out
}

fn op_of(node: &MoeLang) -> Option<&Op> {
    match node {
        MoeLang::Op { op, .. } => Some(op),
        _ => None,
    }
}

/// Why the slicing forms did not apply to the layer of `combine`.
fn why_not(g: &Graph, l: &MoeLayer, forms: &[Form]) -> Vec<String> {
    let mut why = Vec::new();
    let n = g.node(l.combine);
    let Some(x) = moe_x(g, l) else {
        return vec!["the layer is not `dispatch -> all_to_all -> expert_ffn -> all_to_all -> combine` over one axis".into()];
    };
    let x_ty = &g.node(x.0).outputs[0];
    let d_ty = &g.node(x.1).outputs[0];
    let ax = &l.axis;
    if !forms.contains(&Form::AllGather) {
        why.push(format!(
            "{}: tokens {} are not split on `{ax}` as their minor-most axis, so there is nothing to all-gather",
            n.name, d_ty
        ));
    }
    if !forms.contains(&Form::Ppmoe) {
        if x.0 != x.1 {
            why.push(format!(
                "{}: tokens are replicated on `{ax}` but the layer's output stays split on it (no all_gather after combine), so the reduce-scatter form is the replicated-token form here",
                n.name
            ));
        } else if l.out == l.combine {
            why.push(format!(
                "{}: tokens {} are not replicated on `{ax}` (every rank holds its own tokens); `rewrite --tp` makes them replicated",
                n.name, x_ty
            ));
        } else {
            why.push(format!(
                "{}: tokens {} could not be sliced locally",
                n.name, x_ty
            ));
        }
    }
    why
}

/// The layer's token input (before any shard) and the value dispatch reads.
fn moe_x(g: &Graph, l: &MoeLayer) -> Option<(NodeId, NodeId)> {
    let n = g.node(l.combine);
    let ffn = g.node(g.node(n.inputs[0].node).inputs.first()?.node);
    let a2a1 = g.node(ffn.inputs.first()?.node);
    let d = g.node(a2a1.inputs.first()?.node);
    let dx = d.inputs.first()?.node;
    Some((through_shard(g, dx), dx))
}

/// Reports on every MoE layer of `g` (the graph that was loaded into `loaded`).
pub(super) fn report(
    g: &Graph,
    loaded: &Loaded,
    ex: &DagExtractor<'_>,
    stop_reason: &str,
) -> Vec<LayerReport> {
    let eg = &loaded.egraph;
    let mut reports = Vec::new();
    for l in moe_layers(g) {
        let out_c = eg.find(loaded.class_of(l.out));
        let comb_c = eg.find(loaded.class_of(l.combine));
        let stop: Vec<Id> = l
            .stop
            .iter()
            .map(|s| eg.find(loaded.class_of(*s)))
            .collect();
        let mut costs: Vec<FormCost> = Vec::new();
        let mut push = |form: Form, split: CostSplit| {
            let seconds = split.total();
            match costs.iter_mut().find(|c| c.form == form) {
                Some(c) if seconds < c.seconds => {
                    *c = FormCost {
                        form,
                        seconds,
                        split,
                    }
                }
                Some(_) => {}
                None => costs.push(FormCost {
                    form,
                    seconds,
                    split,
                }),
            }
        };
        // Forms at the combine class.
        let comb_forms: Vec<(Form, &MoeLang, CostSplit)> = eg[comb_c]
            .nodes
            .iter()
            .filter_map(|node| {
                let form = match op_of(node)? {
                    Op::Combine { .. } => Form::AllToAll,
                    Op::ReduceScatter { .. } => Form::AllGather,
                    _ => return None,
                };
                Some((form, node, ex.split_of_node_above(comb_c, node, &stop)))
            })
            .collect();
        if out_c == comb_c {
            for (form, _, s) in &comb_forms {
                push(*form, *s);
            }
        } else {
            for node in &eg[out_c].nodes {
                match op_of(node) {
                    Some(Op::AllGather { .. })
                        if node.children().iter().any(|c| eg.find(*c) == comb_c) =>
                    {
                        let own = ex.node_split(node);
                        for (form, _, s) in &comb_forms {
                            let mut total = *s;
                            total += own;
                            push(*form, total);
                        }
                    }
                    Some(Op::AllReduce { .. }) => {
                        push(Form::Ppmoe, ex.split_of_node_above(out_c, node, &stop));
                    }
                    _ => {}
                }
            }
        }
        // What extraction chose, and where it differs from the input.
        let best_out = ex.chosen(out_c);
        let (chosen, proof) = match best_out.and_then(op_of) {
            Some(Op::AllReduce { .. }) => (
                Form::Ppmoe,
                best_out.map(|b| (loaded.class_of(l.out), b.clone())),
            ),
            _ => {
                let best_comb = ex.chosen(comb_c);
                match best_comb.and_then(op_of) {
                    Some(Op::ReduceScatter { .. }) => (
                        Form::AllGather,
                        best_comb.map(|b| (loaded.class_of(l.combine), b.clone())),
                    ),
                    _ => (Form::AllToAll, None),
                }
            }
        };
        // Cheapest first (to the nanosecond: all_reduce and reduce_scatter + all_gather price
        // the same up to rounding); on a tie the chosen form first.
        let ns = |s: f64| (s * 1e9).round() as i64;
        costs.sort_by(|a, b| {
            ns(a.seconds)
                .cmp(&ns(b.seconds))
                .then((a.form != chosen).cmp(&(b.form != chosen)))
                .then(a.form.cmp(&b.form))
        });
        let forms: Vec<Form> = costs.iter().map(|c| c.form).collect();
        let mut why = why_not(g, &l, &forms);
        if stop_reason != "saturated" && forms.len() == 1 {
            why.push(format!("saturation stopped early: {stop_reason}"));
        }
        let size = g.mesh.axis(&l.axis).map_or(String::new(), |a| {
            format!("={} {}", a.size, a.level.name().replace('_', "-"))
        });
        reports.push(LayerReport {
            layer: match g.node(l.combine).scope {
                Scope::Layer(i) => i,
                _ => 0,
            },
            node: g.node(l.combine).name.clone(),
            axis: format!("{}{size}", l.axis),
            chosen,
            costs,
            why_not: why,
            rules: Vec::new(),
            proof,
        });
    }
    reports
}

/// Fills each report's `rules` with the rule names of egg's explanation of its rewrite.
pub(super) fn prove(loaded: &mut Loaded, reports: &mut [LayerReport]) {
    for r in reports.iter_mut() {
        let Some((from, node)) = r.proof.take() else {
            continue;
        };
        let to = loaded.egraph.add_uncanonical(node);
        if loaded.egraph.find(from) != loaded.egraph.find(to) {
            continue;
        }
        let expl = loaded.egraph.explain_id_equivalence(from, to);
        if std::env::var_os("MOE_DEBUG_PROOF").is_some() {
            eprintln!(
                "proof {from} -> {to}: {} steps",
                expl.explanation_trees.len()
            );
        }
        // Post-order over the proof trees (children's rewrites before their parent's), each
        // shared subproof once.
        let mut seen: HashSet<*const egg::TreeTerm<MoeLang>> = HashSet::new();
        let mut rules: Vec<String> = Vec::new();
        let mut stack: Vec<(Rc<egg::TreeTerm<MoeLang>>, bool)> = expl
            .explanation_trees
            .iter()
            .rev()
            .map(|t| (t.clone(), false))
            .collect();
        while let Some((t, children_done)) = stack.pop() {
            if children_done {
                for rule in [t.forward_rule, t.backward_rule].into_iter().flatten() {
                    let rule = rule.to_string();
                    if !rules.contains(&rule) {
                        rules.push(rule);
                    }
                }
                continue;
            }
            if !seen.insert(Rc::as_ptr(&t)) {
                continue;
            }
            stack.push((t.clone(), true));
            for proof in t.child_proofs.iter().rev() {
                stack.extend(proof.iter().rev().map(|c| (c.clone(), false)));
            }
        }
        r.rules = rules;
    }
}
