//! Memory per GPU of a layout, and the nearest layout that fits: what `rewrite` checks before it
//! writes a program that could not run (a layout given by flags is refused unless the user allows
//! it), and what `plan` prunes with.
//!
//! A device's need is its weights plus the activations its schedule keeps at the peak
//! ([`super::schedule::StageReport::memory_bytes`]); a graph without a pipeline is one stage with
//! one micro-batch in flight.

use super::schedule::ScheduleReport;
use super::{Layout, PipelineError, PipelinePartition};
use moe_ir::Graph;
use std::fmt;

/// A device over its memory: the worst one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverMemory {
    /// Pipeline stage (0 without a pipeline).
    pub stage: u32,
    /// Bytes the stage needs per GPU.
    pub need_bytes: f64,
    /// Bytes the GPU has.
    pub gpu_bytes: f64,
}

impl fmt::Display for OverMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stage {} needs {:.1} GiB per GPU; the GPU has {:.1} GiB",
            self.stage,
            gib(self.need_bytes),
            gib(self.gpu_bytes)
        )
    }
}

/// GiB, as reports print memory.
pub fn gib(b: f64) -> f64 {
    b / (1u64 << 30) as f64
}

/// The stage of `report` furthest over its GPU's memory, if any is over.
pub fn worst_stage(report: &ScheduleReport) -> Option<OverMemory> {
    let gpu = report.gpu_memory_bytes?;
    report
        .per_stage
        .iter()
        .filter(|s| s.memory_bytes > gpu)
        .max_by(|a, b| a.memory_bytes.total_cmp(&b.memory_bytes))
        .map(|s| OverMemory {
            stage: s.stage,
            need_bytes: s.memory_bytes,
            gpu_bytes: gpu,
        })
}

/// Memory per GPU of a graph without a pipeline (one stage, one micro-batch in flight), priced
/// like `base` prices stages; `None` when `base` knows no GPU memory.
pub fn unpipelined(
    g: &Graph,
    base: &PipelinePartition,
) -> Result<Option<OverMemory>, PipelineError> {
    let Some(gpu) = base.gpu_memory_bytes else {
        return Ok(None);
    };
    let one = PipelinePartition {
        stages: 1,
        layout: Layout::Balanced,
        schedule: moe_ir::Schedule::OneFOneB,
        micro_batches: 1,
        ..base.clone()
    };
    let cut = one.cut(g)?;
    let need = cut.memory_bytes.iter().copied().fold(0.0, f64::max);
    Ok((need > gpu).then_some(OverMemory {
        stage: 0,
        need_bytes: need,
        gpu_bytes: gpu,
    }))
}

/// A layout that fits.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    pub pp: u32,
    pub recompute: bool,
    pub micro_batches: u32,
    /// The most memory any of its devices needs.
    pub need_bytes: f64,
    /// Layers per virtual stage.
    pub layout: Vec<u32>,
}

impl fmt::Display for Fit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "--pp {} --micro-batches {}{} (layout {}; at most {:.1} GiB per GPU)",
            self.pp,
            self.micro_batches,
            if self.recompute { " --recompute" } else { "" },
            self.layout
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            gib(self.need_bytes)
        )
    }
}

/// The nearest layout to `base` (its schedule, `--tp` as in `g`) that fits the GPU: the fewest
/// pipeline stages from `from_pp` up, without recomputation before with it. `micro_batches`
/// is the user's count (default 4 x stages). `g` is the graph before partitioning.
pub fn nearest_fit(
    g: &Graph,
    base: &PipelinePartition,
    from_pp: u32,
    micro_batches: Option<u32>,
) -> Option<Fit> {
    let gpu = base.gpu_memory_bytes?;
    let layers = super::costs::LayerCosts::of(g, base.model.as_ref())
        .layers
        .len() as u32;
    let chunks = base.schedule.chunks();
    for pp in from_pp.max(1)..=layers / chunks.max(1) {
        for recompute in [false, true] {
            let m = micro_batches.unwrap_or(4 * pp);
            let p = PipelinePartition {
                stages: pp,
                layout: Layout::Balanced,
                micro_batches: m,
                recompute,
                ..base.clone()
            };
            let Ok(cut) = p.cut(g) else { continue };
            let need = cut.memory_bytes.iter().copied().fold(0.0, f64::max);
            if cut.over.is_none() && need <= gpu {
                return Some(Fit {
                    pp,
                    recompute,
                    micro_batches: m,
                    need_bytes: need,
                    layout: cut.layout,
                });
            }
        }
    }
    None
}
