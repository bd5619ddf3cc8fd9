//! `moe-opt rewrite MODEL [--tp T] [--pp P [--pp-layout L] [--schedule S] [--micro-batches M]
//! [--emit-stage K]] [--cluster FILE] [--explain]`: the pass list
//! `[remap(tp=T),]dispatch[,partition(pp=P, ..),schedule(S)]` of `moe_passes::registry`.

use super::{render, Format};
use crate::io::{read_input, write_output};
use crate::load::{load, ImportArgs};
use miette::{miette, Result};
use moe_ir::Schedule;
use moe_passes::cost::{Cluster, Roofline};
use moe_passes::pipeline::Layout;
use moe_passes::registry::{self, PassContext, PassStep};
use moe_passes::rewrite::{fold, layer_costs, ranges, LayerReport, Limits};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// model.json or Hugging Face config.json (`-` for stdin).
    model: String,
    /// Remap onto a tensor-parallel group of this many GPUs of one node (the PPMoE layout):
    /// the mesh's ranks become dp = ranks/T x tp = T.
    #[arg(long, value_name = "T")]
    tp: Option<u64>,
    /// Split the model into P pipeline stages of contiguous layers (each stage a copy of the
    /// mesh: P times the ranks), balanced under the cost model within GPU memory.
    #[arg(long, value_name = "P")]
    pp: Option<u32>,
    /// Layers per stage instead of the balanced cut (`14,14,14,14`; with --schedule interleaved,
    /// one entry per virtual stage), or `equal` for equal layer counts.
    #[arg(long, value_name = "LAYOUT", requires = "pp")]
    pp_layout: Option<String>,
    /// Micro-batch schedule of the pipeline.
    #[arg(long, value_enum, default_value_t = ScheduleArg::OneFOneB, requires = "pp")]
    schedule: ScheduleArg,
    /// Virtual stages per device for --schedule interleaved.
    #[arg(long, default_value_t = 2, requires = "pp")]
    chunks: u32,
    /// Micro-batches per step (default: 4 x P). The graph is one micro-batch's program.
    #[arg(long, value_name = "M", requires = "pp")]
    micro_batches: Option<u32>,
    /// Recompute activations in the backward (keep only each layer's inputs between forward and
    /// backward): less memory, one more forward per backward.
    #[arg(long, requires = "pp")]
    recompute: bool,
    /// Write only this stage's program (its nodes, recvs as inputs, sends as sinks).
    #[arg(long, value_name = "K", requires = "pp")]
    emit_stage: Option<u32>,
    /// Cluster description (TOML: nodes, gpus_per_node, intra_node_gbps, inter_node_gbps,
    /// [gpu] name, bf16_tflops, memory_gb). Default: one node of 8 H200s.
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
    /// Routing imbalance to price: the hottest expert gets F times its balanced share of the
    /// routed rows (the rank holding it sets the step time). 1 is balanced.
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    skew: f64,
    /// Cost profile (TOML of rates by op class: GEMM, grouped GEMM, attention, gather, combine,
    /// collectives), e.g. examples/profiles/h200.toml or what `moe-opt calibrate` writes.
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,
    /// Print, per MoE layer, the forms considered, their predicted costs, the choice and the
    /// rewrite's proof (to stderr).
    #[arg(long)]
    explain: bool,
    /// Write the program even when a stage needs more memory than the cluster's GPU has
    /// (otherwise such a layout is refused with the nearest one that fits).
    #[arg(long)]
    allow_over_memory: bool,
    /// Saturation limit: rule-application rounds.
    #[arg(long, default_value_t = Limits::default().iterations)]
    iter_limit: usize,
    /// Saturation limit: e-nodes.
    #[arg(long, default_value_t = Limits::default().nodes)]
    node_limit: usize,
    /// Saturation limit: seconds.
    #[arg(long, default_value_t = Limits::default().time.as_secs_f64())]
    time_limit: f64,
    #[command(flatten)]
    import: ImportArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// Output file (written atomically); stdout when absent or `-`.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

/// `--schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ScheduleArg {
    /// All forwards, then all backwards.
    Gpipe,
    /// One forward, one backward (Megatron's default).
    #[value(name = "1f1b")]
    OneFOneB,
    /// Megatron's interleaved 1F1B over --chunks virtual stages per device.
    Interleaved,
}

fn parse_layout(s: &str) -> Result<Layout> {
    match s {
        "balanced" => Ok(Layout::Balanced),
        "equal" => Ok(Layout::Equal),
        _ => s
            .split(',')
            .map(|x| {
                x.trim().parse::<u32>().map_err(|_| {
                    miette!("--pp-layout `{s}`: expected layer counts like `14,14,14,14`, `equal` or `balanced`")
                })
            })
            .collect::<Result<Vec<u32>>>()
            .map(Layout::Explicit),
    }
}

pub fn run(mut a: Args) -> Result<()> {
    let cluster = match &a.cluster {
        Some(p) => {
            let text = read_input(&p.to_string_lossy())?;
            Cluster::from_toml(&text).map_err(|e| miette!("{}: {e}", p.display()))?
        }
        None => Cluster::default(),
    };
    let cluster = match &a.profile {
        Some(p) => crate::load::cost_profile(p)?.apply(&cluster),
        None => cluster,
    };
    if !(a.skew.is_finite() && a.skew >= 1.0) {
        return Err(miette!(
            "--skew must be a number of at least 1 (1: balanced routing)"
        ));
    }
    let cluster = Cluster {
        skew: a.skew,
        ..cluster
    };
    if !(a.time_limit.is_finite() && a.time_limit > 0.0) {
        return Err(miette!("--time-limit must be a positive number of seconds"));
    }
    let text = read_input(&a.model)?;
    if a.cluster.is_some()
        && a.tp.is_none()
        && a.pp.is_none()
        && a.import.mesh.is_none()
        && is_hf(&text)
    {
        apply_best_plan(&mut a, &text, &cluster)?;
    }
    let g = load(&a.model, &text, &a.import)?;
    let limits = Limits {
        iterations: a.iter_limit,
        nodes: a.node_limit,
        time: Duration::from_secs_f64(a.time_limit),
    };
    let input_costs = a.explain.then(|| {
        layer_costs(
            &g,
            &Roofline {
                cluster: cluster.clone(),
            },
        )
    });
    let input_mesh = g.mesh.to_string();
    let partition = match a.pp {
        Some(pp) => Some(PassStep::Partition {
            pp,
            layout: match &a.pp_layout {
                Some(l) => parse_layout(l)?,
                None => Layout::Balanced,
            },
            schedule: match a.schedule {
                ScheduleArg::Gpipe => Schedule::Gpipe,
                ScheduleArg::OneFOneB => Schedule::OneFOneB,
                ScheduleArg::Interleaved => Schedule::Interleaved { chunks: a.chunks },
            },
            micro_batches: a.micro_batches,
            recompute: a.recompute,
        }),
        None => None,
    };
    let steps = registry::rewrite_steps(a.tp, partition);
    tracing::info!(passes = %registry::to_text(&steps), "rewrite pipeline");
    let ctx = PassContext {
        cluster: cluster.clone(),
        gpus_per_node: a.cluster.is_none().then_some(a.import.gpus_per_node),
        limits,
        explain: a.explain,
    };
    let pipeline = registry::pipeline(&steps, &ctx);
    let (out, stats) = pipeline
        .run(g.clone())
        .map_err(|e| miette!("{}: {e}", a.model))?;
    if !a.allow_over_memory {
        let schedule = match a.schedule {
            ScheduleArg::Gpipe => Schedule::Gpipe,
            ScheduleArg::OneFOneB => Schedule::OneFOneB,
            ScheduleArg::Interleaved => Schedule::Interleaved { chunks: a.chunks },
        };
        super::fits::check(
            &g,
            &out,
            &super::fits::Asked {
                tp: a.tp,
                pp: a.pp,
                schedule,
                micro_batches: a.micro_batches,
                recompute: a.recompute,
                cluster: &cluster,
                gpus_per_node: ctx.gpus_per_node.unwrap_or(cluster.gpus_per_node),
            },
        )
        .map_err(|e| miette!("{}: {e}", a.model))?;
    }
    let out = match a.emit_stage {
        Some(k) => moe_ir::stage_program(&out, k).map_err(|e| miette!("--emit-stage {k}: {e}"))?,
        None => out,
    };
    for s in &stats {
        tracing::info!(
            pass = s.pass,
            ms = s.time.as_secs_f64() * 1e3,
            nodes_before = s.nodes_before,
            nodes_after = s.nodes_after,
            "pass done"
        );
        if let Some(e) = &s.egraph {
            tracing::info!(
                iterations = e.iterations,
                enodes = e.enodes,
                eclasses = e.eclasses,
                stop = %e.stop_reason,
                rules = ?e.rules_fired,
                "e-graph"
            );
        }
    }
    if a.explain {
        let mut x = String::new();
        let _ = writeln!(
            x,
            "cluster: {} node(s) x {} {} ({} TFLOP/s bf16), NVLink {} GB/s, network {} GB/s",
            cluster.nodes,
            cluster.gpus_per_node,
            cluster.gpu.name,
            cluster.gpu.bf16_tflops,
            cluster.intra_node_gbps,
            cluster.inter_node_gbps
        );
        let _ = writeln!(x, "mesh: {input_mesh} -> {}", out.mesh);
        if let Some(costs) = &input_costs {
            x.push_str(&input_layers(costs));
        }
        for s in &stats {
            if let Some(e) = &s.egraph {
                let _ = writeln!(
                    x,
                    "{}: {} iterations, {} e-nodes, {} e-classes, {}; rules fired: {}",
                    s.pass,
                    e.iterations,
                    e.enodes,
                    e.eclasses,
                    e.stop_reason,
                    e.rules_fired
                        .iter()
                        .map(|(r, n)| format!("{r} x{n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            for n in &s.notes {
                x.push_str(n);
                if !n.ends_with('\n') {
                    x.push('\n');
                }
            }
        }
        eprint!("{x}");
    }
    write_output(a.output.as_deref(), &render(&out, a.format))
}

/// The input program's MoE layers, identical ones folded: one line per distinct layer cost.
pub fn input_layers(costs: &[LayerReport]) -> String {
    let mut x = String::new();
    for g in fold(costs) {
        let l = g.report;
        let Some(c) = l.costs.iter().find(|c| c.form == l.chosen) else {
            continue;
        };
        let which = match g.layers.as_slice() {
            [one] => format!("input layer {one} ({})", l.node),
            many => format!("input layers {} ({} layers)", ranges(many), many.len()),
        };
        let _ = writeln!(
            x,
            "{which}: {} over {}: {:.3} ms = compute {:.3} ms + communication {:.3} ms",
            l.chosen.name(),
            l.axis,
            c.seconds * 1e3,
            c.split.compute * 1e3,
            c.split.comm * 1e3
        );
    }
    x
}

fn is_hf(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .is_ok_and(|v| moe_ir::hf::looks_like_hf_config(&v))
}

/// `rewrite CONFIG --cluster FILE` without layout flags: the best layout `plan` finds on all of
/// the cluster's nodes (inference), applied as if its flags were given.
fn apply_best_plan(a: &mut Args, text: &str, cluster: &Cluster) -> Result<()> {
    let (report, _) = super::plan::plan_model(&a.model, text, &a.import, cluster, false, None)?;
    let best = report
        .plans
        .iter()
        .find(|p| p.nodes == cluster.nodes && p.family != moe_passes::plan::Family::Dense)
        .ok_or_else(|| {
            miette!(
                "{}: no layout fits the cluster ({} rejected); see `moe-opt plan`",
                a.model,
                report.rejected.len()
            )
        })?;
    eprintln!(
        "applying the best plan on {} node(s): {} ({} family, predicted {:.0} tokens/s)",
        cluster.nodes,
        best.flags(),
        best.family.name(),
        best.tokens_per_s
    );
    a.import.gpus_per_node = cluster.gpus_per_node;
    a.import.mesh = Some(if best.dp > 1 {
        format!("dp={},ep={}", best.dp, best.ep)
    } else {
        format!("ep={}", best.ep)
    });
    if best.family == moe_passes::plan::Family::Ppmoe {
        a.tp = Some(best.tp);
    }
    if best.pp > 1 {
        a.pp = Some(best.pp);
        a.micro_batches = Some(best.micro_batches);
        a.recompute = best.recompute;
    }
    Ok(())
}
