//! Mesh remapping to the PPMoE layout (`rewrite --tp T`).
//!
//! The standard (DPMoE) graph runs every rank on its own tokens: tokens split on all mesh axes,
//! dense weights replicated, experts split on `ep`. This pass re-lays the same global computation
//! on a mesh `dp = N/T, tp = T` (the same `N` ranks; `tp` inside a node):
//! - tokens are split on `dp` only, so the `T` ranks of a `tp` group hold the same tokens;
//! - attention and dense MLPs become Megatron tensor-parallel: column-split projections (q/k/v,
//!   gate/up: output features split on `tp`), row-split projections (o/down: input features split,
//!   output partial on `tp`, then `all_reduce(tp)`); the LM head is column-split (vocab-parallel
//!   logits); per-head norms and biases follow their projection;
//! - experts are split on `tp` (T must divide every MoE layer's expert count);
//! - each MoE layer keeps its expert-parallel form over `tp`: its tokens are `shard`ed locally
//!   (no communication) before `dispatch`/`combine` and `all_gather`ed after, because the
//!   layer around it now holds replicated tokens. The e-graph rules then offer the PPMoE form
//!   (index slicing + `all_reduce(tp)`), and the cost model chooses.
//!
//! Why the result computes the same function: every op keeps its global shape and logical value;
//! only layouts change, and every layout change is one the typing rules accept (`moe_ir::infer`):
//! a column split gives each rank whole output features, a row split gives partial sums that
//! `all_reduce` adds up, `shard` and `all_gather` are inverse local/communicating copies.

mod emit;
mod plan;

use crate::pass::{Pass, PassError, PassOutput};
use moe_ir::{Graph, Mesh, MeshError, Op};
use thiserror::Error;

/// Why a graph cannot be remapped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RemapError {
    #[error("--tp must be at least 1")]
    ZeroTp,
    #[error("--tp {tp} does not divide the mesh's {ranks} ranks ({mesh})")]
    RanksNotDivisible { tp: u64, ranks: u64, mesh: String },
    #[error("--tp {tp} is larger than a node ({gpus_per_node} GPUs): the tensor-parallel group must stay on NVLink")]
    SpansNodes { tp: u64, gpus_per_node: u64 },
    #[error("node `{node}`: {experts} experts cannot be split over tp={tp} (tp must divide the number of experts)")]
    ExpertsNotDivisible { node: String, experts: u64, tp: u64 },
    #[error("the mesh ({mesh}) already has a `{axis}` axis: remap the standard expert-parallel graph, before any tensor-parallel or pipeline pass")]
    AlreadyRemapped { mesh: String, axis: String },
    #[error("node `{node}`: {what}")]
    Unsupported { node: String, what: String },
    #[error("node `{node}`: no tensor-parallel layout type-checks: {source}")]
    Type {
        node: String,
        #[source]
        source: Box<moe_ir::BuildError>,
    },
    #[error(transparent)]
    Mesh(#[from] MeshError),
}

/// The remap pass: `N` ranks of any `dp`/`ep` mesh become `dp = N/tp` x `tp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorParallel {
    /// Tensor-parallel group size (ranks of one node).
    pub tp: u64,
    /// GPUs per node of the cluster (the `tp` axis must fit in one).
    pub gpus_per_node: u64,
}

impl TensorParallel {
    /// The pass's name in statistics and errors.
    pub const NAME: &'static str = "tensor-parallel-remap";

    /// The mesh the graph is remapped onto.
    pub fn target_mesh(&self, from: &Mesh) -> Result<Mesh, RemapError> {
        let tp = self.tp;
        if tp == 0 {
            return Err(RemapError::ZeroTp);
        }
        for axis in ["tp", "pp"] {
            if from.axis(axis).is_some() {
                return Err(RemapError::AlreadyRemapped {
                    mesh: from.to_string(),
                    axis: axis.into(),
                });
            }
        }
        let ranks = from.ranks();
        if ranks % tp != 0 {
            return Err(RemapError::RanksNotDivisible {
                tp,
                ranks,
                mesh: from.to_string(),
            });
        }
        if tp > self.gpus_per_node {
            return Err(RemapError::SpansNodes {
                tp,
                gpus_per_node: self.gpus_per_node,
            });
        }
        let dp = ranks / tp;
        let spec = if dp > 1 {
            format!("dp={dp},tp={tp}:intra")
        } else {
            format!("tp={tp}:intra")
        };
        Ok(Mesh::parse(&spec, self.gpus_per_node)?)
    }

    /// Remaps `g` (a valid graph) onto [`TensorParallel::target_mesh`].
    pub fn remap(&self, g: &Graph) -> Result<Graph, RemapError> {
        let mesh = self.target_mesh(&g.mesh)?;
        for (_, n) in g.nodes() {
            if let Op::Dispatch { experts, .. } = n.op {
                if experts % self.tp != 0 {
                    return Err(RemapError::ExpertsNotDivisible {
                        node: n.name.clone(),
                        experts,
                        tp: self.tp,
                    });
                }
            }
            if matches!(n.op, Op::Send { .. } | Op::Recv { .. }) || n.stage.is_some() {
                return Err(RemapError::Unsupported {
                    node: n.name.clone(),
                    what:
                        "the graph is already split into pipeline stages: remap before partitioning"
                            .into(),
                });
            }
        }
        let plan = plan::Plan::new(g, self.tp);
        emit::Emitter::new(g, mesh, self.tp, &plan).run()
    }
}

impl Pass for TensorParallel {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&self, g: Graph) -> Result<PassOutput, PassError> {
        let out = self.remap(&g)?;
        let mut o = PassOutput::graph(out);
        o.notes.push(format!("mesh {} -> {}", g.mesh, o.graph.mesh));
        Ok(o)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
