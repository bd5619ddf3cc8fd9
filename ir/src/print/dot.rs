//! Graphviz DOT: one cluster per layer (per stage once the graph is partitioned, with its layers
//! nested), collectives drawn red and bold, send/recv blue, weights as small grey notes.

use super::op_label;
use crate::{Graph, Op, Scope};
use std::collections::BTreeMap;
use std::fmt::Write;

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn node_attrs(op: &Op) -> &'static str {
    match op {
        _ if op.collective_axis().is_some() => {
            "shape=box, style=\"filled,bold\", fillcolor=\"#f4cccc\", color=\"#cc0000\", penwidth=2"
        }
        Op::Send { .. } | Op::Recv { .. } => {
            "shape=box, style=\"filled,bold\", fillcolor=\"#cfe2f3\", color=\"#1155cc\""
        }
        Op::Weight(_) => "shape=note, fontsize=9, color=grey50, fontcolor=grey30",
        Op::Input(_) | Op::Zeros(_) => "shape=ellipse",
        Op::Router(_)
        | Op::Dispatch { .. }
        | Op::Combine { .. }
        | Op::LocalRoutes { .. }
        | Op::ExpertFfn { .. } => "shape=box, style=filled, fillcolor=\"#fff2cc\"",
        _ => "shape=box",
    }
}

fn cluster_label(scope: Scope) -> String {
    scope.to_string()
}

/// Renders DOT.
pub fn to_dot(g: &Graph) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "digraph \"{}\" {{", esc(&g.name));
    let _ = writeln!(
        s,
        "  rankdir=TB;\n  node [fontname=\"Helvetica\", fontsize=10];"
    );
    let _ = writeln!(
        s,
        "  label=\"{} — mesh {}\";",
        esc(&g.name),
        esc(&g.mesh.to_string())
    );
    // stage -> scope -> nodes
    let mut groups: BTreeMap<Option<u32>, BTreeMap<Scope, Vec<usize>>> = BTreeMap::new();
    for (id, n) in g.nodes() {
        groups
            .entry(n.stage)
            .or_default()
            .entry(n.scope)
            .or_default()
            .push(id.index());
    }
    for (stage, scopes) in &groups {
        let indent = if let Some(st) = stage {
            let _ = writeln!(s, "  subgraph cluster_stage{st} {{\n    label=\"stage {st}\"; style=bold; color=\"#1155cc\";");
            "    "
        } else {
            "  "
        };
        for (scope, ids) in scopes {
            let key = match scope {
                Scope::Embed => "embed".to_string(),
                Scope::Layer(l) => format!("layer{l}"),
                Scope::Head => "head".to_string(),
            };
            let sfx = stage.map_or(String::new(), |st| format!("_s{st}"));
            let _ = writeln!(s, "{indent}subgraph cluster_{key}{sfx} {{\n{indent}  label=\"{}\"; style=rounded; color=grey60;", cluster_label(*scope));
            for &i in ids {
                let n = g.node(crate::NodeId::from_index(i));
                let tys: Vec<String> = n.outputs.iter().map(ToString::to_string).collect();
                let label = format!(
                    "{}\\n{}\\n{}",
                    esc(&n.name),
                    esc(&op_label(&n.op)),
                    esc(&tys.join(", "))
                );
                let _ = writeln!(
                    s,
                    "{indent}  n{i} [label=\"{label}\", {}];",
                    node_attrs(&n.op)
                );
            }
            let _ = writeln!(s, "{indent}}}");
        }
        if stage.is_some() {
            let _ = writeln!(s, "  }}");
        }
    }
    for (id, n) in g.nodes() {
        for v in &n.inputs {
            let style = if matches!(g.node(v.node).op, Op::Weight(_)) {
                " [color=grey70]"
            } else {
                ""
            };
            let _ = writeln!(s, "  n{} -> n{}{style};", v.node.index(), id.index());
        }
    }
    for (i, o) in g.outputs.iter().enumerate() {
        let _ = writeln!(
            s,
            "  out{i} [label=\"{}\", shape=doublecircle];\n  n{} -> out{i};",
            esc(&o.name),
            o.value.node.index()
        );
    }
    s.push_str("}\n");
    s
}
