//! The SPMD executor: every rank of the mesh runs the graph on its local blocks.
//!
//! Ranks are driven together, node by node: at a local op each rank computes on its own values
//! (one function per op, in the files of this module by op family); at a collective the ranks of
//! each group of the axis hand their values to the [`Collectives`] layer together. A pipelined
//! graph (nodes carrying `stage`, mesh with a `pp` axis) is one program per stage, run by the
//! ranks whose `pp` coordinate is that stage.
//!
//! The graph is the program of one micro-batch; a run executes `M` of them. Weights and `zeros`
//! are made once per run; every other value exists per micro-batch. Each stage runs the forward
//! steps of its pipeline schedule (`moe_ir::pipeline::steps`: micro-batch `m` through virtual
//! stage `v`, in GPipe, 1F1B or interleaved order) one after the other, a step being the stage's
//! nodes of that virtual stage in arena order. Programs advance in turn until each waits on a
//! `recv` whose `send` (same channel, same micro-batch) has not run, which is a deadlock when no
//! program can advance. An unpartitioned graph is one program of `M` steps.

pub(crate) mod attention;
mod collective;
pub(crate) mod compute;
mod dense;
mod leaf;
pub(crate) mod moe;
mod ops;
mod routing;

// The default bodies the CUDA seam falls back to for shapes or types its kernels do not take.
#[cfg(feature = "cuda")]
pub(crate) use dense::{act as dense_act, matmul as dense_matmul, norm as dense_norm};
#[cfg(feature = "cuda")]
pub(crate) use moe::expert_ffn_padded as moe_expert_ffn_padded;
#[cfg(feature = "cuda")]
pub(crate) use routing::{
    combine as routing_combine, dispatch as routing_dispatch, router as routing_router,
};

use crate::collective::{Collectives, Tag};
use crate::error::ExecError;
use crate::inputs::Inputs;
use crate::rank;
use crate::value::{Local, MAX_RANK};
use crate::weights::Weights;
use crate::HostTensor;
use burn::tensor::backend::{Backend, DeviceOps};
use compute::Compute;
use moe_ir::pipeline::{steps, Phase};
use moe_ir::{Graph, Mesh, Node, NodeId, Op, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// An op function's error: what went wrong, without the node (the executor adds it).
pub(crate) type OpResult<T> = Result<T, String>;

/// The pipeline axis of `g` (its `pipeline` spec's `axis`), if it is partitioned.
pub(crate) fn pipeline_axis(g: &Graph) -> Option<&str> {
    g.pipeline.as_ref().map(|p| p.axis.as_str())
}

/// One forward step of a stage's schedule: micro-batch `micro` through virtual stage `vstage`,
/// run by the ranks of `stage`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StepRun {
    pub stage: u32,
    pub micro: u32,
    pub vstage: u32,
}

/// What one execution produced.
#[derive(Debug)]
pub(crate) struct Executed {
    /// The graph outputs, rebuilt as global tensors: the micro-batches' values concatenated
    /// along dim 0 (stacked into `[M]` for scalars).
    pub outputs: Vec<(String, HostTensor)>,
    /// Global values of the captured nodes, one per output of the node (micro-batches
    /// concatenated like the outputs; weights and zeros once).
    pub captured: BTreeMap<NodeId, Vec<HostTensor>>,
    /// Micro-batches executed.
    pub micro_batches: u32,
    /// The forward steps in the order they completed (every stage's own steps in its schedule's
    /// order, interleaved with the other stages' as the transfers allowed).
    pub trace: Vec<StepRun>,
    /// Time spent making weights and inputs (the devices synchronised after the weights).
    pub leaves: Duration,
    /// Time from the weights being ready to the last output computed on its device (the
    /// devices synchronised), inputs included, the outputs' download to the host not.
    pub compute: Duration,
    /// Time of the whole execution.
    pub total: Duration,
    /// Time per op kind (all ranks together), by op name: the host's time to issue it, or with
    /// `profile` the time until the device finished it (the devices synchronised after every
    /// node, so the times add up to `compute`).
    pub op_times: BTreeMap<&'static str, Duration>,
}

/// One stage's program: the ranks that run it, its weights, and its forward steps in schedule
/// order.
#[derive(Debug)]
struct Program {
    stage: u32,
    ranks: Vec<u64>,
    /// Weights and zeros of the stage: made once, before the first step.
    fixed: Vec<NodeId>,
    /// The stage's other nodes, per virtual stage, in arena order.
    by_vstage: BTreeMap<u32, Vec<NodeId>>,
    /// (micro-batch, virtual stage) of each forward step, in schedule order.
    steps: Vec<(u32, u32)>,
    /// The step running, and the position in its nodes.
    step: usize,
    pos: usize,
}

impl Program {
    /// The program of `stage`, run by `ranks`, with forward `steps`; nodes are added after.
    fn new(stage: u32, ranks: Vec<u64>, steps: Vec<(u32, u32)>) -> Program {
        Program {
            stage,
            ranks,
            fixed: Vec::new(),
            by_vstage: BTreeMap::new(),
            steps,
            step: 0,
            pos: 0,
        }
    }

    /// The node to run next and its micro-batch, or `None` when the program is done.
    fn current(&self) -> Option<(NodeId, u32)> {
        let &(m, v) = self.steps.get(self.step)?;
        let nodes = self.by_vstage.get(&v).map_or(&[][..], Vec::as_slice);
        nodes.get(self.pos).map(|&id| (id, m))
    }

    /// Moves past the node just run, and past finished (or empty) steps; returns the steps
    /// completed.
    fn advance(&mut self, ran: bool) -> Vec<StepRun> {
        if ran {
            self.pos += 1;
        }
        let mut done = Vec::new();
        while let Some(&(m, v)) = self.steps.get(self.step) {
            let len = self.by_vstage.get(&v).map_or(0, Vec::len);
            if self.pos < len {
                break;
            }
            done.push(StepRun {
                stage: self.stage,
                micro: m,
                vstage: v,
            });
            self.step += 1;
            self.pos = 0;
        }
        done
    }
}

/// Weights and zeros are made once per run and shared by the micro-batches.
fn is_fixed(op: &Op) -> bool {
    matches!(op, Op::Weight(_) | Op::Zeros(_))
}

/// The executor's state over one run.
pub(crate) struct Exec<'a, B: Backend, C: Collectives<B> + Sync> {
    g: &'a Graph,
    mesh: &'a Mesh,
    device: B::Device,
    coll: C,
    /// The compute seam the local ops call.
    k: &'a dyn Compute<B>,
    weights: &'a Weights,
    /// Given values of inputs (the others are seeded).
    inputs: Option<&'a Inputs>,
    seed: u64,
    /// First value slot of each node.
    slot0: Vec<usize>,
    /// Whether each node is made once per run (weights, zeros).
    fixed: Vec<bool>,
    /// Per value slot of a fixed node, per rank: the rank's local value.
    fixed_values: Vec<Vec<Option<Local<B>>>>,
    /// Per (micro-batch, value slot), per rank: the rank's local value.
    live: HashMap<(u32, usize), Vec<Option<Local<B>>>>,
    /// The micro-batch of the node running.
    micro: u32,
    /// Uses per value slot (by the nodes of one micro-batch).
    uses: Vec<usize>,
    /// Uses left per (micro-batch, value slot) before it can be freed.
    uses_left: HashMap<(u32, usize), usize>,
    /// Slots kept to the end (graph outputs).
    keep: BTreeSet<usize>,
    /// Nodes whose global values are captured.
    capture: &'a BTreeSet<NodeId>,
    /// Per captured node, per micro-batch: the global value of each output.
    captured: BTreeMap<NodeId, BTreeMap<u32, Vec<HostTensor>>>,
    /// The ranks that ran each node.
    ran_on: Vec<Vec<u64>>,
    leaves: Duration,
    op_times: BTreeMap<&'static str, Duration>,
    trace: Vec<StepRun>,
    /// Synchronise the devices after every node (per-op device times).
    profile: bool,
}

impl<B: Backend, C: Collectives<B> + Sync> std::fmt::Debug for Exec<'_, B, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exec").field("graph", &self.g.name).finish()
    }
}

/// Micro-batches a run of `g` executes by default: its pipeline's, else 1.
pub(crate) fn default_micro_batches(g: &Graph) -> u32 {
    g.pipeline.as_ref().map_or(1, |p| p.micro_batches)
}

/// Runs `g` (validated first) with every rank simulated on `device`, collectives through `coll`,
/// local ops through the compute seam `k`:
/// `micro_batches` micro-batches (default: [`default_micro_batches`]).
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn execute<B: Backend, C: Collectives<B> + Sync>(
    g: &Graph,
    device: B::Device,
    coll: C,
    k: &dyn Compute<B>,
    weights: &Weights,
    seed: u64,
    micro_batches: Option<u32>,
    capture: &BTreeSet<NodeId>,
    profile: bool,
) -> Result<Executed, ExecError> {
    let run = Feed {
        weights,
        inputs: None,
        seed,
        micro_batches,
    };
    execute_fed(g, device, coll, k, run, capture, profile)
}

/// What a run reads: weights, given inputs (seeded from `seed` where not given), micro-batches.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Feed<'a> {
    pub weights: &'a Weights,
    pub inputs: Option<&'a Inputs>,
    pub seed: u64,
    pub micro_batches: Option<u32>,
}

/// [`execute`] with given inputs.
pub(crate) fn execute_fed<B: Backend, C: Collectives<B> + Sync>(
    g: &Graph,
    device: B::Device,
    coll: C,
    k: &dyn Compute<B>,
    feed: Feed<'_>,
    capture: &BTreeSet<NodeId>,
    profile: bool,
) -> Result<Executed, ExecError> {
    moe_ir::validate(g).map_err(|e| ExecError::Invalid(e.to_string()))?;
    if let Some(s) = g.pipeline.as_ref().and_then(|p| p.only_stage) {
        return Err(ExecError::Invalid(format!(
            "the graph holds only the program of pipeline stage {s} (`--emit-stage`): run the whole partitioned graph"
        )));
    }
    execute_unchecked(g, device, coll, k, feed, capture, profile)
}

/// [`execute`] without validating `g` first (the caller did, or a test wants the executor's own
/// checks).
pub(crate) fn execute_unchecked<B: Backend, C: Collectives<B> + Sync>(
    g: &Graph,
    device: B::Device,
    coll: C,
    k: &dyn Compute<B>,
    feed: Feed<'_>,
    capture: &BTreeSet<NodeId>,
    profile: bool,
) -> Result<Executed, ExecError> {
    let start = Instant::now();
    let given = feed.inputs.map(Inputs::micro_batches);
    let micro_batches = match (feed.micro_batches, given) {
        (Some(m), Some(n)) if m != n => {
            return Err(ExecError::Invalid(format!(
                "{m} micro-batches asked for, the given inputs make {n}"
            )))
        }
        (m, n) => m.or(n).unwrap_or_else(|| default_micro_batches(g)),
    };
    if micro_batches == 0 {
        return Err(ExecError::Invalid(
            "a run needs at least one micro-batch".into(),
        ));
    }
    for (_, n) in g.nodes() {
        if let Some(t) = n.outputs.iter().find(|t| t.rank() > MAX_RANK) {
            return Err(ExecError::Rank {
                node: n.name.clone(),
                op: n.op.name(),
                rank: t.rank(),
            });
        }
    }
    let mut slot0 = Vec::with_capacity(g.len());
    let mut slots = 0;
    for (_, n) in g.nodes() {
        slot0.push(slots);
        slots += n.outputs.len();
    }
    let mut uses = vec![0usize; slots];
    for (_, n) in g.nodes() {
        for v in &n.inputs {
            uses[slot0[v.node.index()] + v.output as usize] += 1;
        }
    }
    let keep = g
        .outputs
        .iter()
        .map(|o| slot0[o.value.node.index()] + o.value.output as usize)
        .collect();
    let fixed: Vec<bool> = g.nodes().map(|(_, n)| is_fixed(&n.op)).collect();
    let mut ex = Exec {
        g,
        mesh: &g.mesh,
        device,
        coll,
        k,
        weights: feed.weights,
        inputs: feed.inputs,
        seed: feed.seed,
        slot0,
        fixed,
        fixed_values: vec![Vec::new(); slots],
        live: HashMap::new(),
        micro: 0,
        uses,
        uses_left: HashMap::new(),
        keep,
        capture,
        captured: BTreeMap::new(),
        ran_on: vec![Vec::new(); g.len()],
        leaves: Duration::ZERO,
        op_times: BTreeMap::new(),
        trace: Vec::new(),
        profile,
    };
    let mut programs = ex.programs(micro_batches)?;
    let compute = ex.run(&mut programs)?;
    let mut outputs = Vec::with_capacity(g.outputs.len());
    for o in &g.outputs {
        let parts = (0..micro_batches)
            .map(|m| ex.global(o.value, m))
            .collect::<Result<Vec<_>, _>>()?;
        outputs.push((o.name.clone(), concat_micro(parts)));
    }
    let captured = std::mem::take(&mut ex.captured)
        .into_iter()
        .map(|(id, per_micro)| {
            let outs = per_micro.values().next().map_or(0, Vec::len);
            let mut by_output: Vec<Vec<HostTensor>> = vec![Vec::new(); outs];
            for values in per_micro.into_values() {
                for (k, t) in values.into_iter().enumerate() {
                    by_output[k].push(t);
                }
            }
            (id, by_output.into_iter().map(concat_micro).collect())
        })
        .collect();
    Ok(Executed {
        outputs,
        captured,
        micro_batches,
        trace: std::mem::take(&mut ex.trace),
        leaves: ex.leaves,
        compute,
        total: start.elapsed(),
        op_times: std::mem::take(&mut ex.op_times),
    })
}

impl<B: Backend, C: Collectives<B> + Sync> Exec<'_, B, C> {
    fn node_err(&self, id: NodeId, why: impl Into<String>) -> ExecError {
        let n = self.g.node(id);
        ExecError::Node {
            node: n.name.clone(),
            op: n.op.name(),
            why: why.into(),
        }
    }

    /// The stage programs (one program of every node on every rank when unstaged), each with its
    /// forward steps for `micro_batches` micro-batches.
    fn programs(&self, micro_batches: u32) -> Result<Vec<Program>, ExecError> {
        let all: Vec<u64> = (0..self.mesh.ranks()).collect();
        let pp = pipeline_axis(self.g).and_then(|a| self.mesh.axis_index(a));
        let staged = self.g.pipeline.as_ref().zip(pp);
        let mut out = match staged {
            None => vec![Program::new(
                0,
                all,
                (0..micro_batches).map(|m| (m, 0)).collect(),
            )],
            Some((spec, i)) => {
                let order =
                    steps(spec.schedule, self.mesh.axes[i].size, micro_batches).map_err(|e| {
                        ExecError::Invalid(format!(
                            "pipeline schedule {} with {micro_batches} micro-batches: {e}",
                            spec.schedule
                        ))
                    })?;
                (0u32..)
                    .zip(order)
                    .map(|(s, steps)| {
                        let ranks = all
                            .iter()
                            .copied()
                            .filter(|&r| self.mesh.coords(r)[i] == s)
                            .collect();
                        let forward = steps
                            .into_iter()
                            .filter(|st| st.phase == Phase::Forward)
                            .map(|st| (st.micro, st.vstage))
                            .collect();
                        Program::new(s, ranks, forward)
                    })
                    .collect()
            }
        };
        for (id, n) in self.g.nodes() {
            let stage = n.stage.unwrap_or(0);
            let v = match staged {
                None => 0,
                Some((spec, i)) => {
                    let axis = &self.mesh.axes[i];
                    if stage >= axis.size {
                        return Err(ExecError::Pipeline {
                            node: n.name.clone(),
                            why: format!(
                                "stage {stage} does not exist on the mesh's `{}` axis of {}",
                                axis.name, axis.size
                            ),
                        });
                    }
                    let v = spec.virtual_stage_of(n.scope);
                    if !is_fixed(&n.op) && v % axis.size != stage {
                        return Err(ExecError::Pipeline {
                            node: n.name.clone(),
                            why: format!(
                                "its scope {} belongs to virtual stage {v}, which runs on stage {}, but the node is on stage {stage}: no step of the schedule runs it",
                                n.scope,
                                v % axis.size
                            ),
                        });
                    }
                    v
                }
            };
            let p = &mut out[if staged.is_some() { stage as usize } else { 0 }];
            if is_fixed(&n.op) {
                p.fixed.push(id);
            } else {
                p.by_vstage.entry(v).or_default().push(id);
            }
        }
        Ok(out)
    }

    /// Waits until every device of the run has finished the work issued so far.
    fn sync_devices(&self) -> Result<(), ExecError> {
        let mut seen = BTreeSet::new();
        for r in 0..self.mesh.ranks() {
            let d = self.device_for(r);
            if seen.insert(d.id()) {
                B::sync(&d).map_err(|e| ExecError::Cuda(format!("device sync: {e:?}")))?;
            }
        }
        Ok(())
    }

    /// Makes every program's weights, then advances the programs in turn until all are done (a
    /// round without progress is a deadlock); returns the compute time (see [`Executed`]).
    fn run(&mut self, programs: &mut [Program]) -> Result<Duration, ExecError> {
        let weights = Instant::now();
        for p in programs.iter_mut() {
            for &id in &p.fixed {
                self.node(id, 0, &p.ranks)?;
            }
            let done = p.advance(false);
            self.trace.extend(done);
        }
        self.sync_devices()?;
        self.leaves = weights.elapsed();
        let start = Instant::now();
        self.run_steps(programs)?;
        self.sync_devices()?;
        Ok(start.elapsed())
    }

    /// Advances the programs in turn until all are done; a round without progress is a
    /// deadlock.
    fn run_steps(&mut self, programs: &mut [Program]) -> Result<(), ExecError> {
        loop {
            let mut progressed = false;
            for p in programs.iter_mut() {
                while let Some((id, m)) = p.current() {
                    if let Op::Recv { channel, .. } = self.g.node(id).op {
                        let tag = Tag { channel, micro: m };
                        if !p.ranks.iter().all(|&r| self.coll.ready(tag, r)) {
                            break;
                        }
                    }
                    self.node(id, m, &p.ranks)?;
                    let done = p.advance(true);
                    self.trace.extend(done);
                    progressed = true;
                }
            }
            let blocked = programs
                .iter()
                .find_map(|p| p.current().map(|(id, m)| (id, m, p)));
            let Some((id, micro, p)) = blocked else {
                return Ok(());
            };
            if !progressed {
                let Op::Recv { channel, .. } = self.g.node(id).op else {
                    unreachable!("programs only stop at a recv")
                };
                let tag = Tag { channel, micro };
                let rank = p
                    .ranks
                    .iter()
                    .copied()
                    .find(|&r| !self.coll.ready(tag, r))
                    .unwrap_or(0);
                return Err(ExecError::Deadlock {
                    node: self.g.node(id).name.clone(),
                    channel,
                    micro,
                    rank,
                });
            }
        }
    }

    /// The device rank `r` computes on: the collective layer's placement, else the one device.
    fn device_for(&self, r: u64) -> B::Device {
        self.coll
            .device_of(r)
            .unwrap_or_else(|| self.device.clone())
    }

    fn slot(&self, v: Value) -> usize {
        self.slot0[v.node.index()] + v.output as usize
    }

    /// Rank `r`'s local value of `v` in micro-batch `micro` (weights and zeros: the run's).
    fn get_at(&self, v: Value, micro: u32, r: u64) -> Option<Local<B>> {
        let slot = self.slot(v);
        let per_rank = if self.fixed[v.node.index()] {
            &self.fixed_values[slot]
        } else {
            self.live.get(&(micro, slot))?
        };
        per_rank.get(r as usize).cloned().flatten()
    }

    /// Rank `r`'s local value of `v` (an input of node `id`) in the running micro-batch.
    fn get(&self, id: NodeId, v: Value, r: u64) -> Result<Local<B>, ExecError> {
        self.get_at(v, self.micro, r).ok_or_else(|| {
            let src = &self.g.node(v.node).name;
            self.node_err(
                id,
                format!(
                    "input `{src}` is not on rank {r}: a value used by another pipeline stage must go through send/recv"
                ),
            )
        })
    }

    /// Runs node `id` of micro-batch `micro` on `ranks`.
    fn node(&mut self, id: NodeId, micro: u32, ranks: &[u64]) -> Result<(), ExecError> {
        let node = self.g.node(id);
        self.micro = micro;
        let started = Instant::now();
        let outs: Vec<Vec<Local<B>>> = match &node.op {
            Op::Input(_) | Op::Weight(_) | Op::Zeros(_) | Op::Recv { .. } => {
                self.leaf(id, ranks)?
            }
            Op::Send { channel } => {
                self.send(id, *channel, ranks)?;
                Vec::new()
            }
            op if op.collective_axis().is_some() => self.collective(id, ranks)?,
            _ => self.local_on(id, ranks)?,
        };
        if self.profile && !self.fixed[id.index()] {
            self.sync_devices()?;
        }
        *self.op_times.entry(node.op.name()).or_default() += started.elapsed();
        self.ran_on[id.index()] = ranks.to_vec();
        let all = self.mesh.ranks() as usize;
        let fixed = self.fixed[id.index()];
        for (k, per_rank) in outs.into_iter().enumerate() {
            let slot = self.slot0[id.index()] + k;
            let store = if fixed {
                &mut self.fixed_values[slot]
            } else {
                self.live.entry((micro, slot)).or_default()
            };
            store.resize(all, None);
            for (&r, v) in ranks.iter().zip(per_rank) {
                store[r as usize] = Some(v);
            }
        }
        if self.capture.contains(&id) && (!fixed || !self.captured.contains_key(&id)) {
            let globals = (0..node.outputs.len() as u32)
                .map(|output| self.global(Value { node: id, output }, micro))
                .collect::<Result<Vec<_>, _>>()?;
            self.captured.entry(id).or_default().insert(micro, globals);
        }
        // Outputs nothing reads (a router's unused weights) are not kept past their node.
        if !fixed {
            for k in 0..node.outputs.len() {
                let slot = self.slot0[id.index()] + k;
                if self.uses[slot] == 0 && !self.keep.contains(&slot) {
                    self.live.remove(&(micro, slot));
                }
            }
        }
        for &v in &node.inputs {
            if self.fixed[v.node.index()] {
                continue;
            }
            let s = self.slot(v);
            let left = self.uses_left.entry((micro, s)).or_insert(self.uses[s]);
            *left -= 1;
            if *left == 0 {
                self.uses_left.remove(&(micro, s));
                if !self.keep.contains(&s) {
                    self.live.remove(&(micro, s));
                }
            }
        }
        Ok(())
    }

    /// Runs local op `id` on each of `ranks` (on several threads: the ranks are independent), and
    /// returns per output the ranks' values in `ranks` order.
    fn local_on(&self, id: NodeId, ranks: &[u64]) -> Result<Vec<Vec<Local<B>>>, ExecError> {
        let node = self.g.node(id);
        let one = |r: u64| -> Result<Vec<Local<B>>, ExecError> {
            let inputs = node
                .inputs
                .iter()
                .map(|&v| self.get(id, v, r))
                .collect::<Result<Vec<_>, _>>()?;
            self.local(node, r, inputs)
                .map_err(|why| self.node_err(id, why))
        };
        let threads = match self.coll.threaded() {
            true => std::thread::available_parallelism().map_or(1, |n| n.get()),
            false => 1,
        }
        .min(ranks.len());
        let per_rank: Vec<Result<Vec<Local<B>>, ExecError>> = if threads > 1 {
            let chunk = ranks.len().div_ceil(threads);
            std::thread::scope(|s| {
                let handles: Vec<_> = ranks
                    .chunks(chunk)
                    .map(|part| s.spawn(move || part.iter().map(|&r| one(r)).collect::<Vec<_>>()))
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| {
                        h.join().unwrap_or_else(|_| {
                            vec![Err(self.node_err(id, "a rank's thread panicked"))]
                        })
                    })
                    .collect()
            })
        } else {
            ranks.iter().map(|&r| one(r)).collect()
        };
        let mut outs: Vec<Vec<Local<B>>> =
            vec![Vec::with_capacity(ranks.len()); node.outputs.len()];
        for res in per_rank {
            for (o, v) in outs.iter_mut().zip(res?) {
                o.push(v);
            }
        }
        Ok(outs)
    }

    /// The global value of `v` in micro-batch `micro`, rebuilt from the ranks that computed it:
    /// splits concatenated, partial sums added, one copy of replicas.
    fn global(&self, v: Value, micro: u32) -> Result<HostTensor, ExecError> {
        let ty = &self.g.node(v.node).outputs[v.output as usize];
        let shape: Vec<usize> = ty.shape.iter().map(|&n| n as usize).collect();
        let mut data = vec![0.0; shape.iter().product()];
        for r in rank::representatives(ty, self.mesh, &self.ran_on[v.node.index()]) {
            let local = self.get_at(v, micro, r).ok_or_else(|| {
                self.node_err(
                    v.node,
                    format!("its value of micro-batch {micro} on rank {r} was not kept"),
                )
            })?;
            let b = rank::block(ty, self.mesh, &self.mesh.coords(r));
            rank::add_block(&mut data, &shape, &b, &local.to_host());
        }
        Ok(HostTensor {
            shape: ty.shape.clone(),
            data,
        })
    }

    /// `send(x)`: posts each rank's value for the rank of the `recv`'s stage with the same other
    /// coordinates.
    fn send(&mut self, id: NodeId, channel: u32, ranks: &[u64]) -> Result<(), ExecError> {
        let recvs: Vec<&Node> = self
            .g
            .nodes()
            .map(|(_, n)| n)
            .filter(|n| matches!(n.op, Op::Recv { channel: c, .. } if c == channel))
            .collect();
        let [recv] = recvs[..] else {
            return Err(ExecError::Pipeline {
                node: self.g.node(id).name.clone(),
                why: format!(
                    "channel {channel} has {} recv nodes; exactly one is needed",
                    recvs.len()
                ),
            });
        };
        let pp = pipeline_axis(self.g).and_then(|a| self.mesh.axis_index(a));
        let v = self.g.node(id).inputs[0];
        for &r in ranks {
            let mut c = self.mesh.coords(r);
            if let (Some(i), Some(s)) = (pp, recv.stage) {
                c[i] = s;
            }
            let to = self.mesh.rank_of(&c);
            let tag = Tag {
                channel,
                micro: self.micro,
            };
            if self.coll.ready(tag, to) {
                return Err(ExecError::Pipeline {
                    node: self.g.node(id).name.clone(),
                    why: format!(
                        "channel {channel} already holds an unreceived value of micro-batch {} for rank {to}: one send per channel and micro-batch",
                        self.micro
                    ),
                });
            }
            let x = self.get(id, v, r)?;
            self.coll.send(tag, to, x);
            if let Some(why) = self.coll.take_failure() {
                return Err(self.node_err(id, format!("send from rank {r} to rank {to}: {why}")));
            }
        }
        Ok(())
    }
}

/// The values of one node output over micro-batches as one tensor: concatenated along dim 0, or
/// stacked into `[M]` for scalars.
fn concat_micro(parts: Vec<HostTensor>) -> HostTensor {
    let count = parts.len() as u64;
    let mut it = parts.into_iter();
    let Some(mut out) = it.next() else {
        return HostTensor {
            shape: vec![0],
            data: Vec::new(),
        };
    };
    if count == 1 {
        return out;
    }
    match out.shape.first_mut() {
        Some(d0) => *d0 *= count,
        None => out.shape = vec![count],
    }
    for p in it {
        out.data.extend(p.data);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::collective::InProcess;
    use crate::testing::Cpu;
    use moe_ir::{DType, PipelineSpec, Schedule, Scope, TensorType};

    /// Two stages each waiting for the other's message before sending its own.
    fn crossed() -> Graph {
        let mut g = Graph::new("crossed", Mesh::parse("pp=2", 8).unwrap());
        g.pipeline = Some(PipelineSpec {
            axis: "pp".into(),
            layout: vec![1, 1],
            schedule: Schedule::OneFOneB,
            micro_batches: 2,
            recompute: false,
            only_stage: None,
        });
        let t = TensorType::new(DType::F32, [2]);
        let mut add = |name: &str, op: Op, inputs: &[NodeId], stage: u32| {
            let ins: Vec<Value> = inputs.iter().map(|&i| i.into()).collect();
            let id = g.add(name, op, &ins, Scope::Layer(stage)).unwrap();
            g.node_mut(id).stage = Some(stage);
            id
        };
        let r1 = add(
            "s0.recv",
            Op::Recv {
                channel: 1,
                ty: t.clone(),
            },
            &[],
            0,
        );
        add("s0.send", Op::Send { channel: 0 }, &[r1], 0);
        let r0 = add("s1.recv", Op::Recv { channel: 0, ty: t }, &[], 1);
        add("s1.send", Op::Send { channel: 1 }, &[r0], 1);
        g.add_output("y", r0);
        g
    }

    #[test]
    fn waiting_stages_that_cannot_advance_are_a_deadlock_not_a_hang() {
        let g = crossed();
        let e = execute_unchecked::<Cpu, InProcess<Cpu>>(
            &g,
            Default::default(),
            InProcess::default(),
            &compute::Burn,
            Feed {
                weights: &Weights::Seeded,
                inputs: None,
                seed: 0,
                micro_batches: None,
            },
            &BTreeSet::new(),
            false,
        )
        .unwrap_err();
        assert_eq!(
            e,
            ExecError::Deadlock {
                node: "s0.recv".into(),
                channel: 1,
                micro: 0,
                rank: 0
            }
        );
        // The validator refuses it before execution.
        assert!(matches!(
            execute::<Cpu, InProcess<Cpu>>(
                &g,
                Default::default(),
                InProcess::default(),
                &compute::Burn,
                &Weights::Seeded,
                0,
                None,
                &BTreeSet::new(),
                false
            ),
            Err(ExecError::Invalid(_))
        ));
    }
}
