//! Shared helpers of the equivalence tests: import a config, produce the program forms to compare,
//! compare them.
//!
//! [`forms`] lists the programs that must compute the same function as the imported original: the
//! PPMoE rewrite (`TensorParallel` + `DispatchRewrite`) and the PPMoE rewrite cut into pipeline
//! stages (`PipelinePartition`).

#![allow(clippy::unwrap_used, dead_code)]

use moe_backend::{verify, Verdict, VerifyOptions, Weights};
use moe_ir::hf::ImportOptions;
use moe_ir::{Capacity, DType, Graph, Mesh, Node, Op};
use moe_passes::pipeline::PipelinePartition;
use moe_passes::rewrite::DispatchRewrite;
use moe_passes::{Pipeline, TensorParallel};
use std::path::PathBuf;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Imports the config at `path` (relative to the workspace root) with `sets`, on `mesh`, with
/// `seq`-token sequences, in f32.
pub fn import(path: &str, sets: &[String], mesh: &str, seq: u64) -> Graph {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    import_text(&text, sets, mesh, seq)
}

/// Imports config text (see [`import`]).
pub fn import_text(text: &str, sets: &[String], mesh: &str, seq: u64) -> Graph {
    import_batched(text, sets, mesh, seq, 1)
}

/// Imports config text with `micro_batch` sequences per rank.
pub fn import_batched(
    text: &str,
    sets: &[String],
    mesh: &str,
    seq: u64,
    micro_batch: u64,
) -> Graph {
    let opts = ImportOptions {
        mesh: Some(Mesh::parse(mesh, 8).unwrap()),
        seq,
        micro_batch,
        dtype: DType::F32,
        ..Default::default()
    };
    moe_ir::hf::import(text, sets, &opts).unwrap_or_else(|e| panic!("import {sets:?}: {e}"))
}

/// The PPMoE form of `g`: remapped onto tensor-parallel groups of `tp`, then dispatch-rewritten.
pub fn ppmoe(g: &Graph, tp: u64) -> Graph {
    let (out, _) = Pipeline::new()
        .with(TensorParallel {
            tp,
            gpus_per_node: 8,
        })
        .with(DispatchRewrite::default())
        .run(g.clone())
        .unwrap_or_else(|e| panic!("rewrite --tp {tp}: {e}"));
    out
}

/// The PPMoE form of `g` on `tp`-rank groups, cut into `pp` pipeline stages (1F1B over
/// `2 * pp` micro-batches; the graph is the program of one).
pub fn pipelined(g: &Graph, tp: u64, pp: u32) -> Graph {
    let (out, _) = Pipeline::new()
        .with(TensorParallel {
            tp,
            gpus_per_node: 8,
        })
        .with(DispatchRewrite::default())
        .with(PipelinePartition::new(pp, 2 * pp))
        .run(g.clone())
        .unwrap_or_else(|e| panic!("rewrite --tp {tp} --pp {pp}: {e}"));
    out
}

/// Every rewritten form of `g` that must equal it, named: PPMoE on `tp`, and PPMoE on `pp_tp`
/// cut into `pp` stages.
pub fn forms(g: &Graph, tp: u64, (pp_tp, pp): (u64, u32)) -> Vec<(String, Graph)> {
    vec![
        (format!("ppmoe tp={tp}"), ppmoe(g, tp)),
        (
            format!("ppmoe tp={pp_tp} + pipeline pp={pp}"),
            pipelined(g, pp_tp, pp),
        ),
    ]
}

/// Compares `original` with every form; returns the verdicts, named.
pub fn check_forms(
    original: &Graph,
    forms: &[(String, Graph)],
    opts: &VerifyOptions,
) -> Vec<(String, Verdict)> {
    forms
        .iter()
        .map(|(name, g)| {
            let v = verify(original, g, &Weights::Seeded, opts)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            (name.clone(), v)
        })
        .collect()
}

/// A one-line account of a verdict.
pub fn describe(v: &Verdict) -> String {
    let outs: Vec<String> = v
        .outputs
        .iter()
        .map(|o| match &o.diff {
            Ok(d) => format!("{}: rel {:.2e}", o.name, d.rel),
            Err(e) => format!("{}: {e}", o.name),
        })
        .collect();
    let first = v
        .first_differing
        .as_ref()
        .map(|n| {
            format!(
                "; first differing node `{}` (rel {:.2e})",
                n.node, n.diff.rel
            )
        })
        .unwrap_or_default();
    format!("{}{first}", outs.join(", "))
}

/// `g` rebuilt with `f` applied to every op (types re-inferred).
pub fn map_ops(g: &Graph, f: impl Fn(&Node) -> (Op, usize)) -> Graph {
    let mut out = Graph::new(g.name.clone(), g.mesh.clone());
    out.meta = g.meta.clone();
    out.pipeline = g.pipeline.clone();
    for (_, n) in g.nodes() {
        let (op, inputs) = f(n);
        let id = out
            .add(n.name.clone(), op, &n.inputs[..inputs], n.scope)
            .unwrap_or_else(|e| panic!("{e}"));
        out.node_mut(id).stage = n.stage;
    }
    for o in &g.outputs {
        out.add_output(o.name.clone(), o.value);
    }
    out
}

/// `g` with every `dispatch`/`combine` keeping at most `slots` pairs per expert per rank.
pub fn with_capacity(g: &Graph, slots: u64) -> Graph {
    map_ops(g, |n| {
        let op = match n.op {
            Op::Dispatch { experts, capacity } => Op::Dispatch {
                experts,
                capacity: capacity.min(slots),
            },
            Op::Combine { experts, capacity } => Op::Combine {
                experts,
                capacity: capacity.min(slots),
            },
            ref op => op.clone(),
        };
        (op, n.inputs.len())
    })
}

/// Whether `g` drops tokens somewhere (a `local_routes` with slots, or a `dispatch` smaller than
/// its tokens).
pub fn has_capacity(g: &Graph) -> bool {
    g.nodes().any(|(_, n)| {
        matches!(
            n.op,
            Op::LocalRoutes {
                capacity: Capacity::Slots(_),
                ..
            }
        )
    })
}

/// Whether `g` holds the PPMoE form (index slicing) of some MoE layer.
pub fn is_ppmoe(g: &Graph) -> bool {
    g.nodes()
        .any(|(_, n)| matches!(n.op, Op::LocalRoutes { .. }))
}
