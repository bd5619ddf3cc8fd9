//! The canonical text form.
//!
//! ```text
//! graph "tiny" (moe-ir/1)
//! mesh ep=2:intra
//! meta {family=mixtral, hidden=64}
//!
//! embed:
//!   %0 = input : i32[64@ep]  ; tokens
//! layer 0:
//!   %5 = router{experts=4, k=2, score=softmax, normalize=true, scale=1} %4 : i32[64@ep, 2], f32[64@ep, 2]  ; l0.moe.router
//! outputs:
//!   logits = %9
//! ```
//! Nodes are grouped under a header whenever their scope or stage changes; `%n.k` is output `k`.
//! `meta` and `pipeline` lines appear when the graph has them. [`crate::text::from_text`] reads
//! the form back into an equal graph.

use crate::text::attr::{print_str, print_value};
use crate::{Graph, Op};
use serde_json::Value as J;
use std::fmt::Write;

/// `router{experts=8, k=2, ...}`: the op name with its attributes (declared leaf types omitted:
/// the node's type shows them).
pub fn op_label(op: &Op) -> String {
    let v = serde_json::to_value(op).expect("ops serialize");
    let attrs = match (&v, op.declared_type().is_some()) {
        (J::Object(m), false) => m.values().next().cloned(),
        (J::Object(m), true) => match m.values().next() {
            Some(J::Object(inner)) if matches!(op, Op::Recv { .. }) => {
                let mut inner = inner.clone();
                inner.remove("ty");
                Some(J::Object(inner))
            }
            _ => None,
        },
        _ => None,
    };
    match attrs {
        Some(J::Object(m)) if !m.is_empty() => {
            format!("{}{}", op.name(), print_value(&J::Object(m)))
        }
        Some(J::Object(_)) | None => op.name().to_string(),
        Some(other) => format!("{}{{{}}}", op.name(), print_value(&other)),
    }
}

/// Renders the canonical text form.
pub fn to_text(g: &Graph) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "graph {:?} ({})", g.name, crate::json::FORMAT);
    let _ = writeln!(s, "mesh {}", g.mesh);
    if !g.meta.is_empty() {
        let meta: serde_json::Map<String, J> =
            g.meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let _ = writeln!(s, "meta {}", print_value(&J::Object(meta)));
    }
    if let Some(p) = &g.pipeline {
        let p = serde_json::to_value(p).expect("pipeline specs serialize");
        let _ = writeln!(s, "pipeline {}", print_value(&p));
    }
    let mut header = None;
    for (id, n) in g.nodes() {
        let h = (n.scope, n.stage);
        if header != Some(h) {
            header = Some(h);
            match n.stage {
                Some(st) => {
                    let _ = writeln!(s, "\n{} [stage {st}]:", n.scope);
                }
                None => {
                    let _ = writeln!(s, "\n{}:", n.scope);
                }
            }
        }
        let _ = write!(s, "  ");
        if !n.outputs.is_empty() {
            let _ = write!(s, "{id} = ");
        }
        let _ = write!(s, "{}", op_label(&n.op));
        for (i, v) in n.inputs.iter().enumerate() {
            let _ = write!(s, "{}{v}", if i == 0 { " " } else { ", " });
        }
        if !n.outputs.is_empty() {
            let tys: Vec<String> = n.outputs.iter().map(ToString::to_string).collect();
            let _ = write!(s, " : {}", tys.join(", "));
        }
        let _ = writeln!(s, "  ; {}", n.name);
    }
    let _ = writeln!(s, "\noutputs:");
    for o in &g.outputs {
        let _ = writeln!(s, "  {} = {}", print_str(&o.name), o.value);
    }
    s
}
