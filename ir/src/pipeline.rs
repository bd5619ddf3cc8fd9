//! Pipeline parallelism: how a partitioned graph's stages run their micro-batches.
//!
//! A partitioned graph has an outermost mesh axis (its [`PipelineSpec::axis`], `pp`) of size `P`
//! and a stage on every node: the ranks whose `pp` coordinate is `s` run exactly the nodes of stage
//! `s`, once per micro-batch. The model's layers are cut into **virtual stages** (`layout`, model
//! order); virtual stage `v` runs on stage (device) `v % P`. Without interleaving there are `P`
//! virtual stages, one per device; Megatron's interleaved schedule gives each device `chunks`
//! non-adjacent runs of layers.
//!
//! A schedule is, per device, the order of its [`Step`]s: the forward and the backward of each
//! micro-batch through each of its virtual stages. Dependencies: the forward of micro-batch `m` on
//! virtual stage `v` needs it on `v - 1`; the backward on `v` needs the backward on `v + 1` (the
//! last virtual stage needs its own forward). A device runs its steps in order, each once the
//! previous one is done and its dependency has arrived. [`simulate`] replays that with given
//! durations; with unit durations it is the static check that the order has no cycle of waits.

use crate::Scope;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

/// The micro-batch schedule of a pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    /// GPipe: every micro-batch's forward, then every backward. Peak activations: all `M`
    /// micro-batches on every stage.
    Gpipe,
    /// 1F1B (PipeDream-Flush, Megatron's default): `P - s - 1` warm-up forwards on stage `s`,
    /// then one forward and one backward in turn. Same bubble as GPipe, at most `P - s`
    /// micro-batches in flight.
    #[serde(rename = "1f1b")]
    OneFOneB,
    /// Megatron's interleaved 1F1B: each device holds `chunks` virtual stages; the bubble
    /// shrinks by `chunks` at the price of more point-to-point traffic. Needs `M % P == 0`.
    Interleaved { chunks: u32 },
}

impl Schedule {
    /// Virtual stages per device.
    pub fn chunks(self) -> u32 {
        match self {
            Schedule::Interleaved { chunks } => chunks,
            _ => 1,
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Gpipe => f.write_str("gpipe"),
            Schedule::OneFOneB => f.write_str("1f1b"),
            Schedule::Interleaved { chunks } => write!(f, "interleaved-1f1b x{chunks}"),
        }
    }
}

/// What a partitioned graph records about its pipeline (JSON `pipeline`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// The mesh axis stages run along (outermost; no value is split or partial on it).
    pub axis: String,
    /// Transformer layers in each virtual stage, in model order (`P * chunks` entries). The
    /// embedding runs with the first virtual stage, the head with the last.
    pub layout: Vec<u32>,
    pub schedule: Schedule,
    /// Micro-batches per step; the graph is the program of one micro-batch.
    pub micro_batches: u32,
    /// Activation recomputation (Megatron's `--recompute-granularity full`): each stage keeps only
    /// the values entering its layers between a micro-batch's forward and backward, and runs the
    /// forward again during the backward.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recompute: bool,
    /// Set when the graph holds the program of this one stage only (`rewrite --emit-stage`): its
    /// transfers' peers are in other files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only_stage: Option<u32>,
}

impl PipelineSpec {
    /// Virtual stages (`layout.len()`).
    pub fn virtual_stages(&self) -> u32 {
        self.layout.len() as u32
    }

    /// The virtual stage holding transformer layer `layer` (`None` past the last layer).
    pub fn virtual_stage_of_layer(&self, layer: u32) -> Option<u32> {
        let mut end = 0u64;
        for (v, &n) in self.layout.iter().enumerate() {
            end += u64::from(n);
            if u64::from(layer) < end {
                return Some(v as u32);
            }
        }
        None
    }

    /// The virtual stage of an op of `scope`: the embedding runs with the first virtual stage,
    /// the head (and layers past the layout) with the last.
    pub fn virtual_stage_of(&self, scope: Scope) -> u32 {
        let last = self.virtual_stages().saturating_sub(1);
        match scope {
            Scope::Embed => 0,
            Scope::Layer(l) => self.virtual_stage_of_layer(l).unwrap_or(last),
            Scope::Head => last,
        }
    }
}

/// The checkpoint key of a weight node: its name without the `@stageS` suffix the partitioner gives
/// a leaf copied onto another stage (tied embeddings read on the first and the last stage).
/// Copies hold the same tensor: loaders and initialisers must key weights by this.
pub fn checkpoint_key(name: &str) -> &str {
    match name.rsplit_once("@stage") {
        Some((base, s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => name,
    }
}

/// Forward or backward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    Forward,
    Backward,
}

/// One unit of a device's work: a micro-batch's forward or backward through one virtual stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Step {
    pub phase: Phase,
    pub micro: u32,
    /// Virtual stage (`chunk * P + device`).
    pub vstage: u32,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.phase {
            Phase::Forward => "F",
            Phase::Backward => "B",
        };
        write!(f, "{p}{} on virtual stage {}", self.micro, self.vstage)
    }
}

/// A schedule that cannot run.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScheduleError {
    #[error("a pipeline needs at least one stage and one micro-batch (stages {stages}, micro-batches {micro_batches})")]
    Empty { stages: u32, micro_batches: u32 },
    #[error("interleaved 1F1B needs the micro-batches ({micro_batches}) to be a multiple of the stages ({stages}) and at least 2 chunks (got {chunks})")]
    Interleaving {
        stages: u32,
        micro_batches: u32,
        chunks: u32,
    },
    #[error("{0}")]
    TooLarge(#[from] crate::limits::TooLarge),
    #[error("stage {device} runs {step}, which belongs to stage {owner}")]
    WrongDevice { device: u32, step: Step, owner: u32 },
    #[error("{step} appears twice")]
    Duplicate { step: Step },
    #[error("{step} is never run")]
    Missing { step: Step },
    #[error("cycle of waits: {}", .0.join("; "))]
    Cycle(Vec<String>),
}

/// Each device's steps in order, for `stages` devices and `micro_batches` micro-batches.
pub fn steps(
    schedule: Schedule,
    stages: u32,
    micro_batches: u32,
) -> Result<Vec<Vec<Step>>, ScheduleError> {
    let (p, m) = (stages, micro_batches);
    if p == 0 || m == 0 {
        return Err(ScheduleError::Empty {
            stages: p,
            micro_batches: m,
        });
    }
    // Every product below (m * c, p * c, ...) is at most the step count, so exact in u32.
    crate::limits::at_most(
        crate::limits::Quantity::ScheduleSteps,
        2 * u128::from(p) * u128::from(schedule.chunks()) * u128::from(m),
        crate::limits::MAX_SCHEDULE_STEPS,
    )?;
    let f = |micro, vstage| Step {
        phase: Phase::Forward,
        micro,
        vstage,
    };
    let b = |micro, vstage| Step {
        phase: Phase::Backward,
        micro,
        vstage,
    };
    let mut out = Vec::with_capacity(p as usize);
    for s in 0..p {
        let mut v = Vec::with_capacity(2 * m as usize);
        match schedule {
            Schedule::Gpipe => {
                v.extend((0..m).map(|i| f(i, s)));
                v.extend((0..m).map(|i| b(i, s)));
            }
            Schedule::OneFOneB => {
                let warm = (p - s - 1).min(m);
                v.extend((0..warm).map(|i| f(i, s)));
                for i in 0..m - warm {
                    v.push(f(warm + i, s));
                    v.push(b(i, s));
                }
                v.extend((m - warm..m).map(|i| b(i, s)));
            }
            Schedule::Interleaved { chunks } => {
                if chunks < 2 || m % p != 0 {
                    return Err(ScheduleError::Interleaving {
                        stages: p,
                        micro_batches: m,
                        chunks,
                    });
                }
                // Megatron-LM's order (schedules.py, forward_backward_pipelining_with_interleaving):
                // the k-th forward of a device is micro-batch (k / (P*c)) * P + k % P of chunk
                // (k / P) % c; backwards walk the chunks in reverse.
                let c = chunks;
                let total = m * c;
                let fwd = |k: u32| f((k / (p * c)) * p + k % p, ((k / p) % c) * p + s);
                let bwd = |k: u32| b((k / (p * c)) * p + k % p, (c - 1 - (k / p) % c) * p + s);
                let warm = if m == p {
                    total
                } else {
                    ((p - s - 1) * 2 + (c - 1) * p).min(total)
                };
                v.extend((0..warm).map(fwd));
                for k in 0..total - warm {
                    v.push(fwd(warm + k));
                    v.push(bwd(k));
                }
                v.extend((total - warm..total).map(bwd));
            }
        }
        out.push(v);
    }
    Ok(out)
}

/// Per-step timing of a simulated schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    /// Time the last step ends (the step time).
    pub makespan: f64,
    /// Per device: the sum of its steps' durations.
    pub busy: Vec<f64>,
    /// Per device: (step, start, end), in the device's order.
    pub runs: Vec<Vec<(Step, f64, f64)>>,
}

impl Timeline {
    /// Idle share of the devices' time: `1 - sum(busy) / (P * makespan)`.
    pub fn bubble(&self) -> f64 {
        let p = self.busy.len() as f64;
        if self.makespan <= 0.0 || p == 0.0 {
            return 0.0;
        }
        1.0 - self.busy.iter().sum::<f64>() / (p * self.makespan)
    }
}

/// Replays `steps` (per device, in order) on `stages` devices with `virtual_stages` virtual
/// stages: `duration(step)` is a step's compute time, `transfer(from, to)` the time a value takes
/// from virtual stage `from` to `to` (0 on one device). Checks that every forward and backward of
/// every micro-batch runs exactly once on its device, and that the order has no cycle of waits (a
/// [`ScheduleError::Cycle`] names the waiting steps).
pub fn simulate(
    steps: &[Vec<Step>],
    virtual_stages: u32,
    micro_batches: u32,
    duration: impl Fn(Step) -> f64,
    transfer: impl Fn(u32, u32) -> f64,
) -> Result<Timeline, ScheduleError> {
    let p = steps.len() as u32;
    let (vs, m) = (virtual_stages as usize, micro_batches as usize);
    // end[phase][vstage][micro]
    let mut end = vec![vec![vec![None::<f64>; m]; vs]; 2];
    let mut seen = vec![vec![vec![false; m]; vs]; 2];
    for (d, list) in steps.iter().enumerate() {
        for &st in list {
            let owner = if p == 0 { 0 } else { st.vstage % p };
            if st.vstage as usize >= vs || st.micro as usize >= m {
                return Err(ScheduleError::WrongDevice {
                    device: d as u32,
                    step: st,
                    owner,
                });
            }
            if owner != d as u32 {
                return Err(ScheduleError::WrongDevice {
                    device: d as u32,
                    step: st,
                    owner,
                });
            }
            let slot = &mut seen[st.phase as usize][st.vstage as usize][st.micro as usize];
            if *slot {
                return Err(ScheduleError::Duplicate { step: st });
            }
            *slot = true;
        }
    }
    for (phase, per_v) in [Phase::Forward, Phase::Backward].into_iter().zip(&seen) {
        for (v, per_m) in per_v.iter().enumerate() {
            if let Some(i) = per_m.iter().position(|s| !s) {
                return Err(ScheduleError::Missing {
                    step: Step {
                        phase,
                        micro: i as u32,
                        vstage: v as u32,
                    },
                });
            }
        }
    }
    // What a step waits for: (its dependency step, transfer time).
    let dep = |st: Step| -> Option<(Step, f64)> {
        match st.phase {
            Phase::Forward if st.vstage > 0 => Some((
                Step {
                    vstage: st.vstage - 1,
                    ..st
                },
                transfer(st.vstage - 1, st.vstage),
            )),
            Phase::Forward => None,
            Phase::Backward if (st.vstage as usize) + 1 < vs => Some((
                Step {
                    vstage: st.vstage + 1,
                    ..st
                },
                transfer(st.vstage + 1, st.vstage),
            )),
            Phase::Backward => Some((
                Step {
                    phase: Phase::Forward,
                    ..st
                },
                0.0,
            )),
        }
    };
    let mut pos = vec![0usize; steps.len()];
    let mut free = vec![0f64; steps.len()];
    let mut busy = vec![0f64; steps.len()];
    let mut runs: Vec<Vec<(Step, f64, f64)>> =
        steps.iter().map(|l| Vec::with_capacity(l.len())).collect();
    let total: usize = steps.iter().map(Vec::len).sum();
    let mut done = 0usize;
    while done < total {
        let mut progressed = false;
        for d in 0..steps.len() {
            while let Some(&st) = steps[d].get(pos[d]) {
                let ready = match dep(st) {
                    None => Some(0.0),
                    Some((need, t)) => end[need.phase as usize][need.vstage as usize]
                        [need.micro as usize]
                        .map(|e| e + t),
                };
                let Some(ready) = ready else { break };
                let start = free[d].max(ready);
                let dur = duration(st).max(0.0);
                let stop = start + dur;
                end[st.phase as usize][st.vstage as usize][st.micro as usize] = Some(stop);
                free[d] = stop;
                busy[d] += dur;
                runs[d].push((st, start, stop));
                pos[d] += 1;
                done += 1;
                progressed = true;
            }
        }
        if !progressed {
            // Every unfinished device waits on a step of another device: follow the waits
            // until one repeats.
            let waiting = |d: usize| {
                let st = steps[d][pos[d]];
                let need = dep(st).map(|(n, _)| n).unwrap_or(st);
                (st, need, (need.vstage % p.max(1)) as usize)
            };
            let start = (0..steps.len())
                .find(|&d| pos[d] < steps[d].len())
                .unwrap_or(0);
            let mut path = vec![start];
            let mut cur = start;
            let cycle = loop {
                let (_, _, next) = waiting(cur);
                if let Some(i) = path.iter().position(|&x| x == next) {
                    break path[i..].to_vec();
                }
                if pos[next] >= steps[next].len() {
                    break path.clone();
                }
                path.push(next);
                cur = next;
            };
            return Err(ScheduleError::Cycle(
                cycle
                    .into_iter()
                    .map(|d| {
                        let (st, need, _) = waiting(d);
                        format!("stage {d} waits at {st} for {need}")
                    })
                    .collect(),
            ));
        }
    }
    Ok(Timeline {
        makespan: free.iter().copied().fold(0.0, f64::max),
        busy,
        runs,
    })
}

/// The static check: `steps` run to completion (unit durations, no transfer time).
pub fn check_schedule(
    steps: &[Vec<Step>],
    virtual_stages: u32,
    micro_batches: u32,
) -> Result<(), ScheduleError> {
    simulate(steps, virtual_stages, micro_batches, |_| 1.0, |_, _| 0.0).map(|_| ())
}

/// Peak micro-batches' activations held at once by each device, weighted by `bytes(vstage)` (the
/// activations one micro-batch keeps on a virtual stage from its forward to its backward).
pub fn peak_activations(steps: &[Vec<Step>], bytes: impl Fn(u32) -> f64) -> Vec<f64> {
    steps
        .iter()
        .map(|list| {
            let (mut cur, mut peak) = (0f64, 0f64);
            for st in list {
                match st.phase {
                    Phase::Forward => {
                        cur += bytes(st.vstage);
                        peak = peak.max(cur);
                    }
                    Phase::Backward => cur -= bytes(st.vstage),
                }
            }
            peak
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn bubble(schedule: Schedule, p: u32, m: u32, tb: f64) -> f64 {
        let s = steps(schedule, p, m).unwrap();
        let v = p * schedule.chunks();
        simulate(
            &s,
            v,
            m,
            |st| {
                let c = 1.0 / f64::from(schedule.chunks());
                match st.phase {
                    Phase::Forward => c,
                    Phase::Backward => tb * c,
                }
            },
            |_, _| 0.0,
        )
        .unwrap()
        .bubble()
    }

    #[test]
    fn copies_share_their_checkpoint_key() {
        assert_eq!(checkpoint_key("shared.weight@stage3"), "shared.weight");
        assert_eq!(checkpoint_key("shared.weight"), "shared.weight");
        assert_eq!(checkpoint_key("odd@stagex"), "odd@stagex");
        assert_eq!(checkpoint_key("odd@stage"), "odd@stage");
    }

    #[test]
    fn equal_stages_have_the_textbook_bubble() {
        for p in 1..=8u32 {
            for m in 1..=16u32 {
                let want = f64::from(p - 1) / f64::from(m + p - 1);
                for s in [Schedule::Gpipe, Schedule::OneFOneB] {
                    for tb in [1.0, 2.0] {
                        let got = bubble(s, p, m, tb);
                        assert!(
                            (got - want).abs() < 1e-12,
                            "{s} P={p} M={m}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn interleaving_shrinks_the_bubble_by_the_chunks() {
        // Megatron's figure: (P-1) / (c*M + P-1) with equal chunks.
        for (p, m, c) in [(4u32, 8u32, 2u32), (4, 16, 2), (2, 4, 3), (4, 4, 2)] {
            let sch = Schedule::Interleaved { chunks: c };
            let got = bubble(sch, p, m, 2.0);
            let want = f64::from(p - 1) / f64::from(c * m + p - 1);
            assert!(
                (got - want).abs() < 1e-9,
                "P={p} M={m} c={c}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn one_f_one_b_holds_fewer_activations_than_gpipe() {
        let (p, m) = (4, 8);
        let g = peak_activations(&steps(Schedule::Gpipe, p, m).unwrap(), |_| 1.0);
        let o = peak_activations(&steps(Schedule::OneFOneB, p, m).unwrap(), |_| 1.0);
        assert_eq!(g, vec![8.0; 4]);
        assert_eq!(o, vec![4.0, 3.0, 2.0, 1.0]);
    }

    #[test]
    fn a_cyclic_order_is_a_cycle_of_waits() {
        // Stage 1 insists on micro-batch 1 first; stage 0 sends it only after the backward of
        // micro-batch 0, which needs stage 1.
        let f = |micro, vstage| Step {
            phase: Phase::Forward,
            micro,
            vstage,
        };
        let b = |micro, vstage| Step {
            phase: Phase::Backward,
            micro,
            vstage,
        };
        let s = vec![
            vec![f(0, 0), b(0, 0), f(1, 0), b(1, 0)],
            vec![f(1, 1), f(0, 1), b(0, 1), b(1, 1)],
        ];
        let e = check_schedule(&s, 2, 2).unwrap_err();
        let ScheduleError::Cycle(waits) = &e else {
            panic!("{e}")
        };
        assert_eq!(waits.len(), 2, "{e}");
        assert!(
            e.to_string()
                .contains("stage 1 waits at F1 on virtual stage 1"),
            "{e}"
        );
    }

    #[test]
    fn missing_duplicate_and_misplaced_steps_are_refused() {
        let mut s = steps(Schedule::OneFOneB, 2, 2).unwrap();
        let last = s[1].pop().unwrap();
        assert!(
            matches!(check_schedule(&s, 2, 2), Err(ScheduleError::Missing { step }) if step == last)
        );
        s[1].push(last);
        s[1].push(last);
        assert!(matches!(
            check_schedule(&s, 2, 2),
            Err(ScheduleError::Duplicate { .. })
        ));
        s[1].pop();
        s[0].push(Step {
            phase: Phase::Forward,
            micro: 0,
            vstage: 1,
        });
        assert!(matches!(
            check_schedule(&s, 2, 2),
            Err(ScheduleError::WrongDevice { device: 0, .. })
        ));
    }

    #[test]
    fn generated_schedules_are_complete_and_acyclic() {
        for p in 1..=6u32 {
            for m in 1..=12u32 {
                for s in [Schedule::Gpipe, Schedule::OneFOneB] {
                    check_schedule(&steps(s, p, m).unwrap(), p, m).unwrap();
                }
                if m % p == 0 {
                    for c in 2..=3 {
                        let s = Schedule::Interleaved { chunks: c };
                        check_schedule(&steps(s, p, m).unwrap(), p * c, m)
                            .unwrap_or_else(|e| panic!("P={p} M={m} c={c}: {e}"));
                    }
                }
            }
        }
    }
}
