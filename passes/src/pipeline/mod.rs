//! Pipeline parallelism: cut the model into `P` stages of contiguous layers, balanced under the
//! cost model and within device memory, insert `send`/`recv` where values cross stages, and report
//! the micro-batch schedule.
//!
//! [`PipelinePartition`] (`rewrite --pp P`) is the pass:
//! 1. [`costs::LayerCosts`] prices every layer (forward seconds, weight bytes, activation bytes);
//!    the embedding joins the first stage and the head the last.
//! 2. [`partition::balanced`] picks the layout minimising the slowest virtual stage (exact dynamic
//!    programme) among those whose weights plus peak activations fit the GPU; or the user's
//!    `--pp-layout` is checked and used.
//! 3. [`emit::emit`] builds the staged program on the mesh with the outermost `pp` axis.
//! 4. [`schedule::ScheduleReport`] replays the schedule (GPipe, 1F1B, interleaved 1F1B) with the
//!    stage costs: step time, bubble, per-stage memory.
//!
//! `--pp` multiplies the ranks: each stage runs on a copy of the input graph's mesh (`--tp 8
//! --pp 4` on an 8-rank graph gives 32 ranks). The graph stays the program of one micro-batch.

pub mod costs;
pub mod emit;
pub mod fit;
pub mod partition;
pub mod schedule;

use crate::cost::{CostModel, Roofline};
use crate::pass::{Pass, PassError, PassOutput};
use costs::LayerCosts;
use moe_ir::pipeline::{peak_activations, steps, ScheduleError};
use moe_ir::{BuildError, Graph, Op, PipelineSpec, Schedule, Scope};
use schedule::ScheduleReport;
use std::sync::Arc;
use thiserror::Error;

/// Why a graph cannot be partitioned as asked.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PipelineError {
    #[error("--pp must be at least 1")]
    ZeroStages,
    #[error("the graph has no transformer layers to partition")]
    NoLayers,
    #[error("{vstages} pipeline stages (stages x chunks) for {layers} layers: every stage needs at least one layer")]
    TooManyStages { vstages: u32, layers: u32 },
    #[error("--pp-layout has {got} entries; {stages} stages x {chunks} chunks need {want}")]
    LayoutLength {
        got: usize,
        stages: u32,
        chunks: u32,
        want: u32,
    },
    #[error("--pp-layout {layout:?} adds up to {sum} layers; the model has {layers}")]
    LayoutSum {
        layout: Vec<u32>,
        sum: u64,
        layers: u32,
    },
    #[error("--pp-layout {layout:?}: stage {index} has no layer")]
    EmptyStage { layout: Vec<u32>, index: usize },
    #[error("the graph is partitioned already (it has a pipeline)")]
    AlreadyPartitioned,
    #[error("the mesh has an axis named `{0}` already")]
    AxisTaken(String),
    #[error("no cut into {vstages} stages fits in {gpu_gib:.1} GiB per GPU (weights plus the schedule's peak activations; the time-balanced cut needs {need_gib:.1} GiB on stage {vstage}): use more stages, --recompute, or shorter micro-batches")]
    DoesNotFit {
        vstages: u32,
        gpu_gib: f64,
        vstage: u32,
        need_gib: f64,
    },
    #[error("node `{node}` ({scope}) reads `{input}` of a later part of the model ({input_scope}): scopes are not in layer order")]
    ReadsLaterLayer {
        node: String,
        scope: Scope,
        input: String,
        input_scope: Scope,
    },
    #[error("schedule: {0}")]
    Schedule(#[from] ScheduleError),
    #[error("building the staged graph: {0}")]
    Build(BuildError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// How the layers are cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Balanced by the cost model within memory (dynamic programming).
    Balanced,
    /// Megatron's default: equal layer counts (the first stages one more when it does not divide).
    Equal,
    /// Layers per virtual stage, given.
    Explicit(Vec<u32>),
}

/// The partition pass (`rewrite --pp P`).
#[derive(Clone)]
pub struct PipelinePartition {
    /// Devices along the pipeline (`P`).
    pub stages: u32,
    pub layout: Layout,
    pub schedule: Schedule,
    /// Micro-batches per step (`M`).
    pub micro_batches: u32,
    pub model: Arc<dyn CostModel + Send + Sync>,
    /// GPUs per node (decides whether the pipeline axis crosses nodes).
    pub gpus_per_node: u64,
    /// Device memory; `None` skips the memory constraint.
    pub gpu_memory_bytes: Option<f64>,
    /// Recompute activations in the backward (keep only each layer's inputs).
    pub recompute: bool,
}

impl std::fmt::Debug for PipelinePartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelinePartition")
            .field("stages", &self.stages)
            .field("layout", &self.layout)
            .field("schedule", &self.schedule)
            .field("micro_batches", &self.micro_batches)
            .field("gpus_per_node", &self.gpus_per_node)
            .field("gpu_memory_bytes", &self.gpu_memory_bytes)
            .field("recompute", &self.recompute)
            .finish_non_exhaustive()
    }
}

/// The layout [`PipelinePartition::cut`] chose, before any graph is built.
#[derive(Debug, Clone)]
pub struct Cut {
    /// Layers per virtual stage.
    pub layout: Vec<u32>,
    /// Per device (pipeline stage): memory per GPU, its virtual stages' weights plus each one's
    /// peak activations under the schedule.
    pub memory_bytes: Vec<f64>,
    /// Per virtual stage: forward seconds of one micro-batch.
    pub seconds: Vec<f64>,
    /// Set when no balanced cut fits and time alone was balanced ([`PipelineError::DoesNotFit`]).
    pub over: Option<PipelineError>,
}

/// A partitioned graph and its schedule report.
#[derive(Debug, Clone)]
pub struct Partitioned {
    pub graph: Graph,
    pub report: ScheduleReport,
    /// What the user should know (a memory limit no cut meets).
    pub warnings: Vec<String>,
}

impl PipelinePartition {
    pub const NAME: &'static str = "pipeline-partition";

    /// `stages` stages, balanced, 1F1B over `micro_batches`, priced by the default roofline and
    /// its cluster's GPU memory.
    pub fn new(stages: u32, micro_batches: u32) -> PipelinePartition {
        let r = Roofline::default();
        PipelinePartition {
            stages,
            layout: Layout::Balanced,
            schedule: Schedule::OneFOneB,
            micro_batches,
            gpus_per_node: r.cluster.gpus_per_node,
            gpu_memory_bytes: Some(r.cluster.gpu.memory_gb * 1e9),
            recompute: false,
            model: Arc::new(r),
        }
    }

    /// The layers per virtual stage this pass would cut `g` into, with each virtual stage's
    /// memory per GPU (weights plus the schedule's peak activations) and, when the balanced cut
    /// had to ignore memory, why. Emits nothing: `plan` and the memory check call it per layout.
    pub fn cut(&self, g: &Graph) -> Result<Cut, PipelineError> {
        if g.pipeline.is_some() {
            return Err(PipelineError::AlreadyPartitioned);
        }
        if self.stages == 0 {
            return Err(PipelineError::ZeroStages);
        }
        let costs = LayerCosts::of(g, self.model.as_ref());
        let n = costs.layers.len();
        if n == 0 {
            return Err(PipelineError::NoLayers);
        }
        let chunks = self.schedule.chunks();
        let vstages = self.stages * chunks;
        // The schedule's in-flight micro-batches per virtual stage (checks the schedule too).
        let order = steps(self.schedule, self.stages, self.micro_batches)?;
        let in_flight: Vec<f64> = (0..vstages)
            .map(|v| {
                peak_activations(&order, |x| f64::from(u8::from(x == v)))
                    [(v % self.stages) as usize]
            })
            .collect();
        let vs = vstages as usize;
        let cost = |v: usize, a: usize, b: usize| costs.range(a, b, v, vs).seconds;
        // A device holds `chunks` virtual stages: each gets its share of the memory.
        let cap = self.gpu_memory_bytes.map(|m| m / f64::from(chunks));
        let memory = |v: usize, a: usize, b: usize| {
            let c = costs.range(a, b, v, vs);
            c.weight_bytes + in_flight[v] * c.kept_bytes(self.recompute)
        };
        let fits = |v: usize, a: usize, b: usize| cap.is_none_or(|m| memory(v, a, b) <= m);
        let mut over = None;
        let layout = match &self.layout {
            Layout::Explicit(l) => {
                if l.len() != vs {
                    return Err(PipelineError::LayoutLength {
                        got: l.len(),
                        stages: self.stages,
                        chunks,
                        want: vstages,
                    });
                }
                if let Some(index) = l.iter().position(|&x| x == 0) {
                    return Err(PipelineError::EmptyStage {
                        layout: l.clone(),
                        index,
                    });
                }
                let sum: u64 = l.iter().map(|&x| u64::from(x)).sum();
                if sum != n as u64 {
                    return Err(PipelineError::LayoutSum {
                        layout: l.clone(),
                        sum,
                        layers: n as u32,
                    });
                }
                l.clone()
            }
            _ if vs > n => {
                return Err(PipelineError::TooManyStages {
                    vstages,
                    layers: n as u32,
                })
            }
            Layout::Equal => partition::equal_split(n, vs),
            Layout::Balanced => match partition::balanced(n, vs, cost, fits) {
                Some(l) => l,
                None => {
                    // Nothing fits: balance time alone (the report marks the stages over the
                    // limit) rather than refuse to show the schedule, and say how far off it is.
                    let lens = partition::balanced(n, vs, cost, |_, _, _| true).ok_or(
                        PipelineError::TooManyStages {
                            vstages,
                            layers: n as u32,
                        },
                    )?;
                    let (mut a, mut worst) = (0usize, (0usize, 0f64));
                    for (v, &l) in lens.iter().enumerate() {
                        let b = a + l as usize;
                        let m = memory(v, a, b);
                        if m > worst.1 {
                            worst = (v, m);
                        }
                        a = b;
                    }
                    over = Some(PipelineError::DoesNotFit {
                        vstages,
                        gpu_gib: cap.unwrap_or(0.0) / (1u64 << 30) as f64,
                        vstage: worst.0 as u32,
                        need_gib: worst.1 / (1u64 << 30) as f64,
                    });
                    lens
                }
            },
        };
        let mut memory_bytes = vec![0f64; self.stages as usize];
        let mut a = 0usize;
        for (v, &l) in layout.iter().enumerate() {
            let b = (a + l as usize).min(n);
            memory_bytes[v % self.stages as usize] += memory(v, a, b);
            a = b;
        }
        let times: Vec<f64> = {
            let mut a = 0usize;
            layout
                .iter()
                .enumerate()
                .map(|(v, &l)| {
                    let b = (a + l as usize).min(n);
                    let t = cost(v, a, b);
                    a = b;
                    t
                })
                .collect()
        };
        Ok(Cut {
            layout,
            memory_bytes,
            seconds: times,
            over,
        })
    }

    /// Partitions `g` (valid, not partitioned).
    pub fn partition(&self, g: &Graph) -> Result<Partitioned, PipelineError> {
        let cut = self.cut(g)?;
        let mut warnings = Vec::new();
        if let Some(e) = cut.over {
            tracing::warn!("{e}; balancing time alone");
            warnings.push(e.to_string());
        }
        let layout = cut.layout;
        let spec = PipelineSpec {
            axis: emit::AXIS.to_string(),
            layout,
            schedule: self.schedule,
            micro_batches: self.micro_batches,
            recompute: self.recompute,
            only_stage: None,
        };
        let graph = emit::emit(g, spec, self.stages, self.gpus_per_node)?;
        let report = ScheduleReport::of(&graph, self.model.as_ref(), self.gpu_memory_bytes)
            .ok_or_else(|| PipelineError::Internal("the staged graph has no pipeline".into()))??;
        Ok(Partitioned {
            graph,
            report,
            warnings,
        })
    }
}

impl Pass for PipelinePartition {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&self, g: Graph) -> Result<PassOutput, PassError> {
        let p = self.partition(&g)?;
        let sends = p
            .graph
            .nodes()
            .filter(|(_, n)| matches!(n.op, Op::Send { .. }))
            .count();
        Ok(PassOutput {
            graph: p.graph,
            egraph: None,
            notes: vec![format!("{sends} send/recv pairs"), p.report.to_string()],
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
