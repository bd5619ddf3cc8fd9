//! A stage's program: the ranks that run it and its forward steps in schedule order, and the
//! programs of a run (one per pipeline stage; one for an unstaged graph).

use super::{is_fixed, pipeline_axis, Exec, StepRun};
use crate::collective::Collectives;
use crate::error::ExecError;
use burn::tensor::backend::Backend;
use moe_ir::pipeline::{steps, Phase};
use moe_ir::NodeId;
use std::collections::BTreeMap;

/// One stage's program: the ranks that run it, its weights, and its forward steps in schedule
/// order.
#[derive(Debug)]
pub(super) struct Program {
    pub(super) stage: u32,
    pub(super) ranks: Vec<u64>,
    /// Weights and zeros of the stage: made once, before the first step.
    pub(super) fixed: Vec<NodeId>,
    /// The stage's other nodes, per virtual stage, in arena order.
    pub(super) by_vstage: BTreeMap<u32, Vec<NodeId>>,
    /// (micro-batch, virtual stage) of each forward step, in schedule order.
    pub(super) steps: Vec<(u32, u32)>,
    /// The step running, and the position in its nodes.
    pub(super) step: usize,
    pub(super) pos: usize,
}

impl Program {
    /// The program of `stage`, run by `ranks`, with forward `steps`; nodes are added after.
    pub(super) fn new(stage: u32, ranks: Vec<u64>, steps: Vec<(u32, u32)>) -> Program {
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
    pub(super) fn current(&self) -> Option<(NodeId, u32)> {
        let &(m, v) = self.steps.get(self.step)?;
        let nodes = self.by_vstage.get(&v).map_or(&[][..], Vec::as_slice);
        nodes.get(self.pos).map(|&id| (id, m))
    }

    /// Moves past the node just run, and past finished (or empty) steps; returns the steps
    /// completed.
    pub(super) fn advance(&mut self, ran: bool) -> Vec<StepRun> {
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

impl<B: Backend, C: Collectives<B> + Sync> Exec<'_, B, C> {
    /// The stage programs (one program of every node on every rank when unstaged), each with its
    /// forward steps for `micro_batches` micro-batches.
    pub(super) fn programs(&self, micro_batches: u32) -> Result<Vec<Program>, ExecError> {
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
}
