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
mod entry;
mod leaf;
pub(crate) mod moe;
mod ops;
mod program;
mod routing;

pub(crate) use entry::{default_micro_batches, execute_fed, Feed};
use program::Program;

// The default bodies the CUDA seam falls back to for shapes or types its kernels do not take.
#[cfg(feature = "cuda")]
pub(crate) use dense::{act as dense_act, matmul as dense_matmul, norm as dense_norm};
#[cfg(feature = "cuda")]
pub(crate) use moe::expert_ffn_padded as moe_expert_ffn_padded;
#[cfg(feature = "cuda")]
pub(crate) use routing::{
    combine as routing_combine, dispatch as routing_dispatch, router as routing_router,
    LocalExperts,
};

use crate::collective::{Collectives, Tag};
use crate::error::ExecError;
use crate::inputs::Inputs;
use crate::rank;
use crate::value::Local;
use crate::weights::Weights;
use crate::HostTensor;
use burn::tensor::backend::{Backend, DeviceOps};
use compute::Compute;
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
    /// `profile` the device time from the previous node's end to its own (CUDA events on the
    /// first rank's device, no synchronisation between ops; on the CPU the devices synchronised
    /// after every node), so the times add up to `compute`.
    pub op_times: BTreeMap<&'static str, Duration>,
    /// Device memory the run's allocator holds when it ends, bytes over all GPUs (its high-water
    /// mark: burn-cuda's pools keep what they reserved); `None` on the CPU.
    pub device_memory: Option<u64>,
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
    /// Per-op device times: a [`compute::Stamp`] after every node where the compute seam has
    /// device timers, else the devices synchronised after every node.
    profile: bool,
    /// The profile's stamps: the start of the steps, then one per node run, with its op.
    stamps: Vec<(&'static str, Box<dyn compute::Stamp>)>,
}

impl<B: Backend, C: Collectives<B> + Sync> std::fmt::Debug for Exec<'_, B, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exec").field("graph", &self.g.name).finish()
    }
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
        if self.profile {
            if let Some(s) = self.stamp()? {
                self.stamps.push(("", s));
            }
        }
        self.run_steps(programs)?;
        self.sync_devices()?;
        let compute = start.elapsed();
        self.charge_stamps()?;
        Ok(compute)
    }

    /// A device stamp on the first rank's device, where the compute seam has timers.
    fn stamp(&self) -> Result<Option<Box<dyn compute::Stamp>>, ExecError> {
        self.k
            .stamp(&self.device_for(0))
            .map_err(|e| ExecError::Cuda(format!("device timer: {e}")))
    }

    /// Charges each profiled node the device time from the previous stamp to its own.
    fn charge_stamps(&mut self) -> Result<(), ExecError> {
        let stamps = std::mem::take(&mut self.stamps);
        for w in stamps.windows(2) {
            let secs = w[1]
                .1
                .since(w[0].1.as_ref())
                .map_err(|e| ExecError::Cuda(format!("device timer: {e}")))?;
            *self.op_times.entry(w[1].0).or_default() += Duration::from_secs_f64(secs.max(0.0));
        }
        Ok(())
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
        if self.profile && !self.fixed[id.index()] && !self.stamps.is_empty() {
            // Device time, charged when the run ends (see `charge_stamps`).
            let s = self
                .stamp()?
                .ok_or_else(|| ExecError::Cuda("the device timer stopped giving stamps".into()))?;
            self.stamps.push((node.op.name(), s));
        } else {
            if self.profile && !self.fixed[id.index()] {
                self.sync_devices()?;
            }
            *self.op_times.entry(node.op.name()).or_default() += started.elapsed();
        }
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

#[cfg(test)]
mod tests;
