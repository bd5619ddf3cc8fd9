//! `rewrite --tp T --pp P` of every bundled family (whole models) and of two cut models printed as
//! text and DOT: `cases/pipeline/*.toml`. The snapshot holds the schedule report (layout, per-stage
//! time and memory, step time, bubble) and every transfer (channel, stages, value, type).
//!
//! Each case also checks: the output validates (the stage checks included), runs twice
//! byte-identically, keeps the parameter count, has `P` stages with every send matched, every
//! stage's own program validates, and the balanced cut is never slower than equal layers.

mod common;

use moe_ir::{Graph, Op, Schedule, Summary};
use moe_passes::cost::Roofline;
use moe_passes::pipeline::{Layout, Partitioned, PipelinePartition};
use moe_passes::rewrite::DispatchRewrite;
use std::fmt::Write as _;
use std::sync::Arc;

fn partition(g: &Graph, opts: &common::CaseOptions, layout: Layout) -> Partitioned {
    let cluster = common::cluster(opts);
    let g = common::remap(g, opts);
    let g = DispatchRewrite::new(cluster.clone())
        .rewrite(&g)
        .expect("rewrite succeeds")
        .graph;
    let pp = opts.pp.expect("pipeline cases give pp");
    let schedule = match opts.schedule.as_deref().unwrap_or("1f1b") {
        "gpipe" => Schedule::Gpipe,
        "1f1b" => Schedule::OneFOneB,
        "interleaved" => Schedule::Interleaved {
            chunks: opts.chunks.unwrap_or(2),
        },
        other => panic!("unknown schedule {other}"),
    };
    PipelinePartition {
        stages: pp,
        layout,
        schedule,
        micro_batches: opts.micro_batches.unwrap_or(4 * pp),
        gpus_per_node: cluster.gpus_per_node,
        gpu_memory_bytes: Some(cluster.gpu.memory_gb * 1e9),
        recompute: opts.recompute.unwrap_or(false),
        model: Arc::new(Roofline { cluster }),
    }
    .partition(&g)
    .expect("partition succeeds")
}

fn transfers(g: &Graph) -> String {
    let mut s = String::new();
    let recvs: std::collections::BTreeMap<u32, &moe_ir::Node> = g
        .nodes()
        .filter_map(|(_, n)| match n.op {
            Op::Recv { channel, .. } => Some((channel, n)),
            _ => None,
        })
        .collect();
    for (_, n) in g.nodes() {
        if let Op::Send { channel } = n.op {
            let r = recvs.get(&channel).expect("every send has its recv");
            let _ = writeln!(
                s,
                "channel {channel}: stage {} -> {}  {} : {}",
                n.stage.unwrap_or(0),
                r.stage.unwrap_or(0),
                g.node(n.inputs[0].node).name,
                r.outputs[0]
            );
        }
    }
    s
}

#[test]
fn pipeline() {
    common::settings().bind(|| {
        insta::glob!("../cases/pipeline", "*.toml", |path| {
            let opts = common::options(path);
            let config = opts.config.as_ref().expect("pipeline cases name a config");
            let text =
                std::fs::read_to_string(common::root().join(config)).expect("config readable");
            let g = common::load(&text, &opts).unwrap_or_else(|e| panic!("{config}: {e}"));
            let layout = opts
                .pp_layout
                .clone()
                .map_or(Layout::Balanced, Layout::Explicit);
            let p = partition(&g, &opts, layout.clone());
            let out = &p.graph;
            moe_ir::validate(out).expect("the partitioned graph validates");
            let again = partition(&g, &opts, layout.clone());
            assert_eq!(
                moe_ir::json::to_json(out),
                moe_ir::json::to_json(&again.graph),
                "partitioning is deterministic"
            );
            let summary = Summary::of(out);
            assert_eq!(
                summary.params,
                Summary::of(&g).params,
                "{config}: same weights"
            );
            let pp = opts.pp.expect("pp");
            assert_eq!(summary.stages, u64::from(pp));
            let sends = out.nodes().filter(|(_, n)| matches!(n.op, Op::Send { .. }));
            let recvs = out.nodes().filter(|(_, n)| matches!(n.op, Op::Recv { .. }));
            assert_eq!(sends.count(), recvs.count());
            for k in 0..pp {
                let sp = moe_ir::stage_program(out, k).expect("stage program");
                moe_ir::validate(&sp).unwrap_or_else(|e| panic!("stage {k}: {e}"));
            }
            if layout == Layout::Balanced {
                let eq = partition(&g, &opts, Layout::Equal);
                let slowest = |p: &Partitioned| {
                    p.report
                        .per_stage
                        .iter()
                        .map(|s| s.forward_s)
                        .fold(0.0, f64::max)
                };
                let fits = |p: &Partitioned| {
                    p.report
                        .per_stage
                        .iter()
                        .all(|s| Some(s.memory_bytes) <= p.report.gpu_memory_bytes)
                };
                if fits(&eq) {
                    assert!(slowest(&p) <= slowest(&eq) * (1.0 + 1e-9));
                }
            }
            let out_text = common::text(out);
            let mut s = String::new();
            let _ = writeln!(s, "mesh {}", out.mesh);
            s.push_str(&p.report.to_string());
            s.push('\n');
            s.push_str(&transfers(out));
            match opts.print.as_deref() {
                Some("text") => {
                    s.push('\n');
                    s.push_str(&out_text);
                }
                Some("dot") => {
                    s.push('\n');
                    s.push_str(&moe_ir::print::to_dot(out));
                }
                _ => {}
            }
            insta::assert_snapshot!(s);
        });
    });
}

/// Every family has its whole-model pipeline case.
#[test]
fn every_import_case_has_a_pipeline_case() {
    let dir = common::root().join("snapshots/cases");
    for e in std::fs::read_dir(dir.join("import")).expect("import cases") {
        let p = e.expect("entry").path();
        let stem = p.file_stem().expect("name").to_string_lossy().to_string();
        let case = dir.join("pipeline").join(format!("{stem}.toml"));
        assert!(case.exists(), "missing {}", case.display());
    }
}
