//! Graph <-> e-graph. A graph goes in as e-nodes (loss-free: names, scopes and stages are kept in
//! a side table by e-class); an extracted term comes back as a graph whose untouched nodes keep
//! their names, scopes, stages and relative order.

use crate::analysis::Types;
use crate::lang::MoeLang;
use egg::{EGraph, Id, Language, RecExpr};
use moe_ir::{Graph, Node, NodeId, Op, Scope, Value};
use std::collections::HashMap;

/// What the e-graph does not hold about an original node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub scope: Scope,
    pub stage: Option<u32>,
    /// Position in the original graph (orders the extracted graph like the original).
    pub index: usize,
}

/// An e-graph of one graph, with what is needed to turn an extracted term back into a graph.
#[derive(Debug)]
pub struct Loaded {
    pub egraph: EGraph<MoeLang, Types>,
    pub root: Id,
    /// Original node facts by the e-class of the node's (single-output) value or tuple.
    infos: Vec<(Id, NodeInfo)>,
    template: Graph,
}

/// Adds `g` to a fresh e-graph.
pub fn load(g: &Graph) -> Loaded {
    let mut egraph = EGraph::new(Types {
        mesh: g.mesh.clone(),
    })
    .with_explanations_enabled();
    let mut class: Vec<Id> = Vec::with_capacity(g.len());
    let mut infos = Vec::with_capacity(g.len());
    let value = |egraph: &mut EGraph<MoeLang, Types>, class: &[Id], v: Value| -> Id {
        let src = g.node(v.node);
        let c = class[v.node.index()];
        if src.outputs.len() == 1 {
            c
        } else {
            egraph.add(MoeLang::Get {
                index: v.output,
                child: [c],
            })
        }
    };
    let mut effects = Vec::new();
    for (id, n) in g.nodes() {
        let children: Vec<Id> = n
            .inputs
            .iter()
            .map(|v| value(&mut egraph, &class, *v))
            .collect();
        let leaf = n.op.declared_type().map(|_| n.name.clone());
        let c = egraph.add(MoeLang::Op {
            op: n.op.clone(),
            leaf,
            children,
        });
        class.push(c);
        infos.push((
            c,
            NodeInfo {
                name: n.name.clone(),
                scope: n.scope,
                stage: n.stage,
                index: id.index(),
            },
        ));
        if matches!(n.op, Op::Send { .. }) {
            effects.push(c);
        }
    }
    let mut roots: Vec<Id> = g
        .outputs
        .iter()
        .map(|o| value(&mut egraph, &class, o.value))
        .collect();
    roots.extend(effects);
    let root = egraph.add(MoeLang::Root(roots));
    egraph.rebuild();
    let mut template = Graph::new(g.name.clone(), g.mesh.clone());
    template.meta = g.meta.clone();
    template.outputs = g.outputs.clone();
    Loaded {
        egraph,
        root,
        infos,
        template,
    }
}

impl Loaded {
    /// The e-class id the original node `id` was added as (its own e-node, for explanations;
    /// pass it through `egraph.find` for the canonical class).
    pub fn class_of(&self, id: NodeId) -> Id {
        self.infos[id.index()].0
    }

    /// Turns an extracted term (rooted at a `Root`) back into a graph.
    pub fn to_graph(&self, expr: &RecExpr<MoeLang>) -> Graph {
        let infos: HashMap<Id, &NodeInfo> = {
            let mut m = HashMap::new();
            for (c, info) in &self.infos {
                m.entry(self.egraph.find(*c)).or_insert(info);
            }
            m
        };
        let nodes = expr.as_ref();
        // Each term node's e-class, to find the original node it stands for.
        let mut classes: Vec<Id> = Vec::with_capacity(nodes.len());
        for n in nodes {
            let canon = n.clone().map_children(|c| classes[usize::from(c)]);
            classes.push(
                self.egraph
                    .lookup(canon)
                    .expect("extracted nodes are in the e-graph"),
            );
        }
        // Order: an original node at its original index; a new node right after its latest input.
        let mut key: Vec<(usize, usize, usize)> = Vec::with_capacity(nodes.len());
        for (i, n) in nodes.iter().enumerate() {
            let k = match (n, infos.get(&classes[i])) {
                (MoeLang::Op { .. }, Some(info)) => (info.index, 0, i),
                _ => {
                    let after = n
                        .children()
                        .iter()
                        .map(|c| key[usize::from(*c)].0)
                        .max()
                        .unwrap_or(0);
                    (after, 1, i)
                }
            };
            key.push(k);
        }
        let mut order: Vec<usize> = (0..nodes.len()).collect();
        order.sort_by_key(|&i| key[i]);
        let respects_inputs = {
            let mut pos = vec![0; nodes.len()];
            for (p, &i) in order.iter().enumerate() {
                pos[i] = p;
            }
            nodes
                .iter()
                .enumerate()
                .all(|(i, n)| n.children().iter().all(|c| pos[usize::from(*c)] < pos[i]))
        };
        if !respects_inputs {
            order = (0..nodes.len()).collect();
        }
        let mut g = self.template.clone();
        g.outputs.clear();
        let mut values: Vec<Option<Value>> = vec![None; nodes.len()];
        for &i in &order {
            match &nodes[i] {
                MoeLang::Op { op, leaf, children } => {
                    let inputs: Vec<Value> = children
                        .iter()
                        .map(|c| values[usize::from(*c)].expect("inputs first"))
                        .collect();
                    let (name, scope, stage) = match infos.get(&classes[i]) {
                        Some(info) => (info.name.clone(), info.scope, info.stage),
                        None => {
                            let scope = inputs
                                .iter()
                                .map(|v| g.node(v.node).scope)
                                .max()
                                .unwrap_or(Scope::Embed);
                            let base = leaf.clone().unwrap_or_else(|| match scope {
                                Scope::Layer(l) => format!("l{l}.{}", op.name()),
                                Scope::Embed => format!("embed.{}", op.name()),
                                Scope::Head => format!("head.{}", op.name()),
                            });
                            (unique_name(&g, base), scope, None)
                        }
                    };
                    let outputs = self.egraph[classes[i]].data.clone();
                    let id: NodeId = g.push_unchecked(Node {
                        name,
                        op: op.clone(),
                        inputs,
                        outputs,
                        scope,
                        stage,
                    });
                    values[i] = Some(id.into());
                }
                MoeLang::Get { index, child } => {
                    let v = values[usize::from(child[0])].expect("inputs first");
                    values[i] = Some(Value {
                        node: v.node,
                        output: *index,
                    });
                }
                MoeLang::Root(children) => {
                    for (o, c) in self.template.outputs.iter().zip(children) {
                        g.add_output(
                            o.name.clone(),
                            values[usize::from(*c)].expect("inputs first"),
                        );
                    }
                }
            }
        }
        g
    }
}

/// `base`, or `base.1`, `base.2`, ... if taken.
fn unique_name(g: &Graph, base: String) -> String {
    if g.find(&base).is_none() {
        return base;
    }
    (1..)
        .map(|k| format!("{base}.{k}"))
        .find(|n| g.find(n).is_none())
        .expect("some suffix is free")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use egg::{AstSize, Extractor};

    fn round_trip(g: &Graph) -> Graph {
        let l = load(g);
        let (_, expr) = Extractor::new(&l.egraph, AstSize).find_best(l.root);
        l.to_graph(&expr)
    }

    #[test]
    fn untouched_graphs_come_back_identical() {
        let g = moe_ir::json::from_json(include_str!("../../examples/moe-layer.json")).unwrap();
        let back = round_trip(&g);
        moe_ir::validate(&back).unwrap();
        assert_eq!(moe_ir::json::to_json(&back), moe_ir::json::to_json(&g));
    }

    #[test]
    fn an_imported_model_comes_back_identical() {
        let cfg = include_str!("../../examples/hf/deepseek-v3.json");
        let sets = vec!["num_hidden_layers=4".to_string()];
        let g = moe_ir::hf::import(cfg, &sets, &moe_ir::hf::ImportOptions::default()).unwrap();
        let back = round_trip(&g);
        moe_ir::validate(&back).unwrap();
        assert_eq!(moe_ir::print::to_text(&back), moe_ir::print::to_text(&g));
    }
}
