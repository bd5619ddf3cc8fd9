//! `rewrite`'s memory check: a layout given by flags that does not fit the GPU's memory is
//! refused (exit 1) with the stage, its need, the GPU's memory and the nearest layout that fits,
//! unless `--allow-over-memory`.

use miette::{miette, Result};
use moe_ir::{Graph, Schedule};
use moe_passes::cost::{Cluster, Roofline};
use moe_passes::pipeline::fit::{gib, nearest_fit, unpipelined, worst_stage, OverMemory};
use moe_passes::pipeline::schedule::ScheduleReport;
use moe_passes::pipeline::{Layout, PipelinePartition};
use moe_passes::registry::{self, PassContext};
use std::sync::Arc;

/// What the user asked for, as the check needs it.
pub struct Asked<'a> {
    pub tp: Option<u64>,
    pub pp: Option<u32>,
    pub schedule: Schedule,
    pub micro_batches: Option<u32>,
    pub recompute: bool,
    pub cluster: &'a Cluster,
    pub gpus_per_node: u64,
}

/// Checks the rewritten program `out` of `input` against the GPU's memory.
pub fn check(input: &Graph, out: &Graph, asked: &Asked<'_>) -> Result<()> {
    let model = Roofline {
        cluster: asked.cluster.clone(),
    };
    let gpu_bytes = asked.cluster.gpu.memory_gb * 1e9;
    let base = PipelinePartition {
        stages: asked.pp.unwrap_or(1),
        layout: Layout::Balanced,
        schedule: asked.schedule,
        micro_batches: asked.micro_batches.unwrap_or(4),
        model: Arc::new(model.clone()),
        gpus_per_node: asked.gpus_per_node,
        gpu_memory_bytes: Some(gpu_bytes),
        recompute: asked.recompute,
    };
    let over: Option<OverMemory> = match ScheduleReport::of(out, &model, Some(gpu_bytes)) {
        Some(report) => worst_stage(&report.map_err(|e| miette!("{e}"))?),
        None => unpipelined(out, &base).map_err(|e| miette!("{e}"))?,
    };
    let Some(over) = over else {
        return Ok(());
    };
    // The program before partitioning, to try other cuts on.
    let unstaged = if out.pipeline.is_some() {
        let steps = registry::rewrite_steps(asked.tp, None);
        let ctx = PassContext {
            cluster: asked.cluster.clone(),
            gpus_per_node: Some(asked.gpus_per_node),
            ..PassContext::default()
        };
        registry::pipeline(&steps, &ctx)
            .run(input.clone())
            .map_err(|e| miette!("{e}"))?
            .0
    } else {
        out.clone()
    };
    let from = asked.pp.unwrap_or(1);
    let nearest = nearest_fit(&unstaged, &base, from, asked.micro_batches);
    let tp = asked.tp.map_or(String::new(), |t| format!("--tp {t} "));
    let layout = match asked.pp {
        Some(p) => format!(
            "{tp}--pp {p}{}",
            if asked.recompute { " --recompute" } else { "" }
        ),
        None => format!("{tp}without --pp").trim().to_string(),
    };
    let hint = match nearest {
        Some(f) => format!("the nearest layout that fits is {tp}{f}"),
        None => format!(
            "no pipeline of up to one layer per stage fits at this --tp ({:.1} GiB at the least); use more GPUs per tensor-parallel group",
            gib(over.need_bytes)
        ),
    };
    Err(miette!(
        "{layout} does not fit in memory: {over} ({} {} GB); {hint}; pass --allow-over-memory to write it anyway",
        asked.cluster.gpu.name,
        asked.cluster.gpu.memory_gb
    ))
}
