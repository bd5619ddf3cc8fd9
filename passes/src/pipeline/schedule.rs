//! The schedule report of a partitioned graph: per-stage time and memory, predicted step time and
//! bubble, from the cost model and a replay of the schedule ([`moe_ir::pipeline::simulate`]).
//!
//! Assumptions, stated where the numbers are shown: the graph is one micro-batch's forward; a
//! backward costs [`BACKWARD_RATIO`] times its forward (two matmuls per forward matmul), plus one
//! forward with recomputation; a stage keeps every value its ops produce (routed buffers at their
//! expected fill) from a micro-batch's forward to its backward, or only its layers' inputs with
//! recomputation;
//! the transfer into a virtual stage is the sum of its `recv`s, and the backward sends the same
//! bytes back.

use super::costs::LayerCosts;
use super::emit::stage_of;
use crate::cost::CostModel;
use moe_ir::pipeline::{peak_activations, simulate, steps, Phase, ScheduleError};
use moe_ir::{Graph, Op};
use serde::Serialize;
use std::fmt;

/// Backward seconds per forward second (without recomputation).
pub const BACKWARD_RATIO: f64 = 2.0;

/// Backward seconds per forward second, one more forward with recomputation.
pub fn backward_ratio(recompute: bool) -> f64 {
    BACKWARD_RATIO + f64::from(u8::from(recompute))
}

/// One device's share of the pipeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageReport {
    pub stage: u32,
    /// Layer ranges `[first, last]` of its virtual stages, in order.
    pub layers: Vec<[u32; 2]>,
    /// Holds the embedding / the head.
    pub embed: bool,
    pub head: bool,
    /// Forward seconds of one micro-batch through all its virtual stages.
    pub forward_s: f64,
    /// Seconds of `send`/`recv` of one micro-batch's forward.
    pub transfer_s: f64,
    /// Local weight bytes per rank.
    pub weight_bytes: f64,
    /// Activation bytes one micro-batch keeps on this stage.
    pub activation_bytes: f64,
    /// The most activations the schedule keeps at once.
    pub peak_activation_bytes: f64,
    /// Micro-batches in flight at the peak (peak / per-micro-batch).
    pub peak_in_flight: f64,
    /// Weights plus peak activations.
    pub memory_bytes: f64,
    /// Busy share of the step.
    pub utilisation: f64,
}

/// The schedule report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScheduleReport {
    pub schedule: String,
    /// Activations recomputed in the backward.
    pub recompute: bool,
    pub stages: u32,
    pub micro_batches: u32,
    /// Layers per virtual stage.
    pub layout: Vec<u32>,
    pub per_stage: Vec<StageReport>,
    /// Predicted seconds per step (all micro-batches, forward and backward).
    pub step_s: f64,
    /// Idle share of the devices over the step.
    pub bubble: f64,
    /// The textbook bubble for equal stages: `(P-1) / (chunks*M + P-1)`.
    pub ideal_bubble: f64,
    /// Device memory the report compares against, if known.
    pub gpu_memory_bytes: Option<f64>,
}

impl ScheduleReport {
    /// The report for a partitioned graph (`None` when `g` has no pipeline).
    pub fn of(
        g: &Graph,
        model: &dyn CostModel,
        gpu_memory_bytes: Option<f64>,
    ) -> Option<Result<ScheduleReport, ScheduleError>> {
        let spec = g.pipeline.as_ref()?;
        let p = g.mesh.size_of(&spec.axis) as u32;
        Some(report(g, model, spec, p, gpu_memory_bytes))
    }
}

fn report(
    g: &Graph,
    model: &dyn CostModel,
    spec: &moe_ir::PipelineSpec,
    p: u32,
    gpu_memory_bytes: Option<f64>,
) -> Result<ScheduleReport, ScheduleError> {
    let costs = LayerCosts::of(g, model);
    let vs = spec.virtual_stages() as usize;
    let mut starts = Vec::with_capacity(vs);
    let mut a = 0usize;
    let per_v: Vec<_> = spec
        .layout
        .iter()
        .enumerate()
        .map(|(v, &n)| {
            let b = (a + n as usize).min(costs.layers.len());
            starts.push(a);
            let c = costs.range(a.min(b), b, v, vs);
            a = b;
            c
        })
        .collect();
    // Transfers into each virtual stage, per micro-batch forward.
    let mut transfer_in = vec![0f64; vs];
    let mut transfer_dev = vec![0f64; p as usize];
    for (_, n) in g.nodes() {
        if let Op::Recv { .. } | Op::Send { .. } = n.op {
            let tys: Vec<_> = n.inputs.iter().filter_map(|v| g.value_type(*v)).collect();
            let t = model.op_time(&n.op, &tys, &vec![1.0; tys.len()], &n.outputs, &g.mesh);
            let t = if t.is_finite() { t.max(0.0) } else { 0.0 };
            let (v, s) = stage_of(spec, p, n.scope);
            transfer_dev[s as usize] += t;
            if matches!(n.op, Op::Recv { .. }) {
                transfer_in[v as usize] += t;
            }
        }
    }
    let order = steps(spec.schedule, p, spec.micro_batches)?;
    let fwd = |v: u32| per_v.get(v as usize).map_or(0.0, |c| c.seconds);
    let bwd_ratio = backward_ratio(spec.recompute);
    let timeline = simulate(
        &order,
        vs as u32,
        spec.micro_batches,
        |st| match st.phase {
            Phase::Forward => fwd(st.vstage),
            Phase::Backward => bwd_ratio * fwd(st.vstage),
        },
        |from, to| {
            if from % p == to % p {
                0.0
            } else if to > from {
                transfer_in[to as usize]
            } else {
                transfer_in[from as usize]
            }
        },
    )?;
    let act = |v: u32| {
        per_v
            .get(v as usize)
            .map_or(0.0, |c| c.kept_bytes(spec.recompute))
    };
    let peaks = peak_activations(&order, act);
    let mut per_stage = Vec::with_capacity(p as usize);
    for s in 0..p {
        let mine: Vec<usize> = (0..vs).filter(|v| *v as u32 % p == s).collect();
        let forward_s: f64 = mine.iter().map(|&v| per_v[v].seconds).sum();
        let weight_bytes: f64 = mine.iter().map(|&v| per_v[v].weight_bytes).sum();
        let activation_bytes: f64 = mine
            .iter()
            .map(|&v| per_v[v].kept_bytes(spec.recompute))
            .sum();
        let peak = peaks[s as usize];
        per_stage.push(StageReport {
            stage: s,
            layers: mine
                .iter()
                .map(|&v| {
                    let first = starts[v] as u32;
                    [first, first + spec.layout[v].saturating_sub(1)]
                })
                .collect(),
            embed: mine.contains(&0),
            head: mine.contains(&(vs - 1)),
            forward_s,
            transfer_s: transfer_dev[s as usize],
            weight_bytes,
            activation_bytes,
            peak_activation_bytes: peak,
            peak_in_flight: if activation_bytes > 0.0 {
                peak / activation_bytes
            } else {
                0.0
            },
            memory_bytes: weight_bytes + peak,
            utilisation: if timeline.makespan > 0.0 {
                timeline.busy[s as usize] / timeline.makespan
            } else {
                1.0
            },
        });
    }
    let c = f64::from(spec.schedule.chunks());
    let (pf, mf) = (f64::from(p), f64::from(spec.micro_batches));
    Ok(ScheduleReport {
        schedule: spec.schedule.to_string(),
        recompute: spec.recompute,
        stages: p,
        micro_batches: spec.micro_batches,
        layout: spec.layout.clone(),
        per_stage,
        step_s: timeline.makespan,
        bubble: timeline.bubble(),
        ideal_bubble: (pf - 1.0) / (c * mf + pf - 1.0),
        gpu_memory_bytes,
    })
}

fn gib(b: f64) -> f64 {
    b / (1u64 << 30) as f64
}

impl fmt::Display for ScheduleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "pipeline: {} stages, {}{}, {} micro-batches, layout {}",
            self.stages,
            self.schedule,
            if self.recompute {
                ", full recompute"
            } else {
                ""
            },
            self.micro_batches,
            self.layout
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        )?;
        writeln!(
            f,
            "  stage  layers            fwd ms/mb  p2p ms/mb  busy   weights GiB  act GiB/mb  peak act GiB (mb)  memory GiB"
        )?;
        for s in &self.per_stage {
            let mut layers = s
                .layers
                .iter()
                .map(|[a, b]| {
                    if a == b {
                        format!("{a}")
                    } else {
                        format!("{a}-{b}")
                    }
                })
                .collect::<Vec<_>>()
                .join("+");
            if s.embed {
                layers = format!("E+{layers}");
            }
            if s.head {
                layers.push_str("+H");
            }
            let over = match self.gpu_memory_bytes {
                Some(m) if s.memory_bytes > m => "  exceeds the GPU",
                _ => "",
            };
            writeln!(
                f,
                "  {:>5}  {:<16} {:>10.3} {:>10.3} {:>5.1}% {:>12.2} {:>11.3} {:>12.2} ({:>4.1}) {:>11.2}{over}",
                s.stage,
                layers,
                s.forward_s * 1e3,
                s.transfer_s * 1e3,
                s.utilisation * 100.0,
                gib(s.weight_bytes),
                gib(s.activation_bytes),
                gib(s.peak_activation_bytes),
                s.peak_in_flight,
                gib(s.memory_bytes),
            )?;
        }
        writeln!(
            f,
            "  predicted step {:.3} ms (forward + backward of {} micro-batches; backward = {}x forward), bubble {:.1}% (equal stages: {:.1}%)",
            self.step_s * 1e3,
            self.micro_batches,
            backward_ratio(self.recompute),
            self.bubble * 100.0,
            self.ideal_bubble * 100.0
        )
    }
}
