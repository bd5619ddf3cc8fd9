//! The SPMD executor: every rank of the mesh runs the graph on its local blocks.
//!
//! Ranks are driven together, node by node: at a local op each rank computes on its own values
//! (one function per op, in the files of this module by op family); at a collective the ranks of
//! each group of the axis hand their values to the [`Collectives`] layer together. A pipelined
//! graph (nodes carrying `stage`, mesh with a `pp` axis) is one program per stage, run by the
//! ranks whose `pp` coordinate is that stage; programs advance in turn until each waits on a
//! `recv` whose `send` has not run, which is a deadlock when no program can advance.

mod attention;
mod collective;
mod dense;
mod leaf;
mod moe;
mod ops;
mod routing;

use crate::collective::Collectives;
use crate::error::ExecError;
use crate::rank;
use crate::value::{Local, MAX_RANK};
use crate::weights::Weights;
use crate::HostTensor;
use burn::tensor::backend::Backend;
use moe_ir::{Graph, Mesh, Node, NodeId, Op, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// An op function's error: what went wrong, without the node (the executor adds it).
pub(crate) type OpResult<T> = Result<T, String>;

/// The pipeline axis of `g` (its `pipeline` spec's `axis`), if it is partitioned.
pub(crate) fn pipeline_axis(g: &Graph) -> Option<&str> {
    g.pipeline.as_ref().map(|p| p.axis.as_str())
}

/// What one execution produced.
#[derive(Debug)]
pub(crate) struct Executed {
    /// The graph outputs, rebuilt as global tensors.
    pub outputs: Vec<(String, HostTensor)>,
    /// Global values of the captured nodes, one per output of the node.
    pub captured: BTreeMap<NodeId, Vec<HostTensor>>,
    /// Time spent making weights and inputs.
    pub leaves: Duration,
    /// Time of the whole execution.
    pub total: Duration,
    /// Time per op kind (all ranks together), by op name.
    pub op_times: BTreeMap<&'static str, Duration>,
}

/// One stage's program: the ranks that run it and its nodes in arena order.
#[derive(Debug)]
struct Program {
    ranks: Vec<u64>,
    nodes: Vec<NodeId>,
    next: usize,
}

/// The executor's state over one run.
pub(crate) struct Exec<'a, B: Backend, C: Collectives<B> + Sync> {
    g: &'a Graph,
    mesh: &'a Mesh,
    device: B::Device,
    coll: C,
    weights: &'a Weights,
    seed: u64,
    /// First value slot of each node.
    slot0: Vec<usize>,
    /// Per value slot, per rank: the rank's local value.
    values: Vec<Vec<Option<Local<B>>>>,
    /// Uses left per value slot before it can be freed.
    uses: Vec<usize>,
    /// Slots kept to the end (graph outputs).
    keep: BTreeSet<usize>,
    /// Nodes whose global values are captured.
    capture: &'a BTreeSet<NodeId>,
    captured: BTreeMap<NodeId, Vec<HostTensor>>,
    /// The ranks that ran each node.
    ran_on: Vec<Vec<u64>>,
    leaves: Duration,
    op_times: BTreeMap<&'static str, Duration>,
}

impl<B: Backend, C: Collectives<B> + Sync> std::fmt::Debug for Exec<'_, B, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exec").field("graph", &self.g.name).finish()
    }
}

/// Runs `g` (validated first) with every rank simulated on `device`, collectives through `coll`.
pub(crate) fn execute<B: Backend, C: Collectives<B> + Sync>(
    g: &Graph,
    device: B::Device,
    coll: C,
    weights: &Weights,
    seed: u64,
    capture: &BTreeSet<NodeId>,
) -> Result<Executed, ExecError> {
    moe_ir::validate(g).map_err(|e| ExecError::Invalid(e.to_string()))?;
    if let Some(s) = g.pipeline.as_ref().and_then(|p| p.only_stage) {
        return Err(ExecError::Invalid(format!(
            "the graph holds only the program of pipeline stage {s} (`--emit-stage`): run the whole partitioned graph"
        )));
    }
    execute_unchecked(g, device, coll, weights, seed, capture)
}

/// [`execute`] without validating `g` first (the caller did, or a test wants the executor's own
/// checks).
pub(crate) fn execute_unchecked<B: Backend, C: Collectives<B> + Sync>(
    g: &Graph,
    device: B::Device,
    coll: C,
    weights: &Weights,
    seed: u64,
    capture: &BTreeSet<NodeId>,
) -> Result<Executed, ExecError> {
    let start = Instant::now();
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
    let ranks = g.mesh.ranks() as usize;
    let mut ex = Exec {
        g,
        mesh: &g.mesh,
        device,
        coll,
        weights,
        seed,
        slot0,
        values: vec![vec![None; ranks]; slots],
        uses,
        keep,
        capture,
        captured: BTreeMap::new(),
        ran_on: vec![Vec::new(); g.len()],
        leaves: Duration::ZERO,
        op_times: BTreeMap::new(),
    };
    let mut programs = ex.programs()?;
    ex.run(&mut programs)?;
    let mut outputs = Vec::with_capacity(g.outputs.len());
    for o in &g.outputs {
        outputs.push((o.name.clone(), ex.global(o.value)?));
    }
    Ok(Executed {
        outputs,
        captured: std::mem::take(&mut ex.captured),
        leaves: ex.leaves,
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

    /// The stage programs (one program of every node on every rank when unstaged).
    fn programs(&self) -> Result<Vec<Program>, ExecError> {
        let all: Vec<u64> = (0..self.mesh.ranks()).collect();
        let mut stages: BTreeMap<Option<u32>, Vec<NodeId>> = BTreeMap::new();
        for (id, n) in self.g.nodes() {
            stages.entry(n.stage).or_default().push(id);
        }
        let axis = pipeline_axis(self.g);
        let pp = axis.and_then(|a| self.mesh.axis_index(a));
        let mut out = Vec::new();
        for (stage, nodes) in stages {
            let ranks = match (stage, pp) {
                (Some(s), Some(i)) => {
                    if s >= self.mesh.axes[i].size {
                        return Err(ExecError::Pipeline {
                            node: self.g.node(nodes[0]).name.clone(),
                            why: format!(
                                "stage {s} does not exist on the mesh's `{}` axis of {}",
                                self.mesh.axes[i].name, self.mesh.axes[i].size
                            ),
                        });
                    }
                    all.iter()
                        .copied()
                        .filter(|&r| self.mesh.coords(r)[i] == s)
                        .collect()
                }
                _ => all.clone(),
            };
            out.push(Program {
                ranks,
                nodes,
                next: 0,
            });
        }
        Ok(out)
    }

    /// Advances the programs in turn until all are done; a round without progress is a deadlock.
    fn run(&mut self, programs: &mut [Program]) -> Result<(), ExecError> {
        loop {
            let mut progressed = false;
            for p in programs.iter_mut() {
                while let Some(&id) = p.nodes.get(p.next) {
                    if let Op::Recv { channel, .. } = self.g.node(id).op {
                        if !p.ranks.iter().all(|&r| self.coll.ready(channel, r)) {
                            break;
                        }
                    }
                    self.node(id, &p.ranks)?;
                    p.next += 1;
                    progressed = true;
                }
            }
            let blocked = programs
                .iter()
                .find_map(|p| p.nodes.get(p.next).map(|&id| (id, p)));
            let Some((id, p)) = blocked else {
                return Ok(());
            };
            if !progressed {
                let Op::Recv { channel, .. } = self.g.node(id).op else {
                    unreachable!("programs only stop at a recv")
                };
                let rank = p
                    .ranks
                    .iter()
                    .copied()
                    .find(|&r| !self.coll.ready(channel, r))
                    .unwrap_or(0);
                return Err(ExecError::Deadlock {
                    node: self.g.node(id).name.clone(),
                    channel,
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

    /// Rank `r`'s local value of `v`.
    fn get(&self, id: NodeId, v: Value, r: u64) -> Result<Local<B>, ExecError> {
        self.values[self.slot(v)][r as usize].clone().ok_or_else(|| {
            let src = &self.g.node(v.node).name;
            self.node_err(
                id,
                format!(
                    "input `{src}` is not on rank {r}: a value used by another pipeline stage must go through send/recv"
                ),
            )
        })
    }

    /// Runs node `id` on `ranks`.
    fn node(&mut self, id: NodeId, ranks: &[u64]) -> Result<(), ExecError> {
        let node = self.g.node(id);
        let started = Instant::now();
        let outs: Vec<Vec<Local<B>>> = match &node.op {
            Op::Input(_) | Op::Weight(_) | Op::Zeros(_) | Op::Recv { .. } => {
                let r = self.leaf(id, ranks);
                if !matches!(node.op, Op::Recv { .. }) {
                    self.leaves += started.elapsed();
                }
                r?
            }
            Op::Send { channel } => {
                self.send(id, *channel, ranks)?;
                Vec::new()
            }
            op if op.collective_axis().is_some() => self.collective(id, ranks)?,
            _ => self.local_on(id, ranks)?,
        };
        *self.op_times.entry(node.op.name()).or_default() += started.elapsed();
        self.ran_on[id.index()] = ranks.to_vec();
        for (k, per_rank) in outs.into_iter().enumerate() {
            let slot = self.slot0[id.index()] + k;
            for (&r, v) in ranks.iter().zip(per_rank) {
                self.values[slot][r as usize] = Some(v);
            }
        }
        if self.capture.contains(&id) {
            let globals = (0..node.outputs.len() as u32)
                .map(|output| self.global(Value { node: id, output }))
                .collect::<Result<Vec<_>, _>>()?;
            self.captured.insert(id, globals);
        }
        for &v in &node.inputs {
            let s = self.slot(v);
            self.uses[s] -= 1;
            if self.uses[s] == 0 && !self.keep.contains(&s) {
                self.values[s].iter_mut().for_each(|x| *x = None);
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

    /// The global value of `v`, rebuilt from the ranks that computed it: splits concatenated,
    /// partial sums added, one copy of replicas.
    fn global(&self, v: Value) -> Result<HostTensor, ExecError> {
        let ty = &self.g.node(v.node).outputs[v.output as usize];
        let shape: Vec<usize> = ty.shape.iter().map(|&n| n as usize).collect();
        let mut data = vec![0.0; shape.iter().product()];
        for r in rank::representatives(ty, self.mesh, &self.ran_on[v.node.index()]) {
            let local = self.get(v.node, v, r)?;
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
            if self.coll.ready(channel, to) {
                return Err(ExecError::Pipeline {
                    node: self.g.node(id).name.clone(),
                    why: format!("channel {channel} already holds an unreceived value for rank {to}: one send per channel"),
                });
            }
            let x = self.get(id, v, r)?;
            self.coll.send(channel, to, x);
            if let Some(why) = self.coll.take_failure() {
                return Err(self.node_err(id, format!("send from rank {r} to rank {to}: {why}")));
            }
        }
        Ok(())
    }
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
            &Weights::Seeded,
            0,
            &BTreeSet::new(),
        )
        .unwrap_err();
        assert_eq!(
            e,
            ExecError::Deadlock {
                node: "s0.recv".into(),
                channel: 1,
                rank: 0
            }
        );
        // The validator refuses it before execution.
        assert!(matches!(
            execute::<Cpu, InProcess<Cpu>>(
                &g,
                Default::default(),
                InProcess::default(),
                &Weights::Seeded,
                0,
                &BTreeSet::new()
            ),
            Err(ExecError::Invalid(_))
        ));
    }
}
