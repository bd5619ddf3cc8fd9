//! Whole-graph facts: what `moe-opt inspect` prints.

use crate::{units, Graph, Op, Scope};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Counts of communication ops in one rank's program (one per occurrence in the graph).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Collectives {
    pub all_to_all: u64,
    pub all_reduce: u64,
    pub all_gather: u64,
    pub reduce_scatter: u64,
    pub send: u64,
    pub recv: u64,
}

/// Facts about a graph. Field names are the keys of `inspect --json` (a stable interface).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub format: &'static str,
    pub name: String,
    /// Distinct transformer layers.
    pub layers: u64,
    /// Layers with a router.
    pub moe_layers: u64,
    pub nodes: u64,
    /// Parameters of the model: every weight counted once at its global shape.
    pub params: u64,
    /// Bytes of all parameters at their dtypes.
    pub param_bytes: u64,
    /// Parameter bytes held by the most loaded rank (weights split over the mesh count their shard).
    pub max_rank_param_bytes: u64,
    /// Op name -> count.
    pub ops: BTreeMap<&'static str, u64>,
    pub collectives: Collectives,
    /// Axis -> size, in mesh order.
    pub mesh: serde_json::Map<String, serde_json::Value>,
    /// Ranks in the mesh.
    pub ranks: u64,
    /// Pipeline stages this graph holds programs for (1 before partitioning, and for the single
    /// stage `rewrite --emit-stage` writes).
    pub stages: u64,
    /// For one stage's program (`rewrite --emit-stage S`): `S`, of the pipeline axis' stages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub only_stage: Option<OnlyStage>,
}

/// Which stage of how many a single-stage program is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OnlyStage {
    pub stage: u32,
    pub of: u64,
}

impl Summary {
    pub fn of(g: &Graph) -> Summary {
        let mut layers = BTreeSet::new();
        let mut moe = BTreeSet::new();
        let mut stages = BTreeSet::new();
        let mut ops: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut c = Collectives::default();
        let (mut params, mut bytes) = (0u64, 0u64);
        let mut rank_bytes: BTreeMap<Option<u32>, u64> = BTreeMap::new();
        for (_, n) in g.nodes() {
            *ops.entry(n.op.name()).or_default() += 1;
            if let Scope::Layer(l) = n.scope {
                layers.insert(l);
                if matches!(n.op, Op::Router(_)) {
                    moe.insert(l);
                }
            }
            if let Some(s) = n.stage {
                stages.insert(s);
            }
            match &n.op {
                Op::Weight(t) => {
                    // A copy on another pipeline stage is the same parameter.
                    if crate::pipeline::checkpoint_key(&n.name) == n.name {
                        // Exact on a validated graph (`limits::MAX_MODEL_BYTES`).
                        params = params.saturating_add(t.numel());
                        bytes = bytes.saturating_add(t.bytes());
                    }
                    let r = rank_bytes.entry(n.stage).or_default();
                    *r = r.saturating_add(t.local_bytes(&g.mesh));
                }
                Op::AllToAll { .. } => c.all_to_all += 1,
                Op::AllReduce { .. } => c.all_reduce += 1,
                Op::AllGather { .. } => c.all_gather += 1,
                Op::ReduceScatter { .. } => c.reduce_scatter += 1,
                Op::Send { .. } => c.send += 1,
                Op::Recv { .. } => c.recv += 1,
                _ => {}
            }
        }
        Summary {
            format: crate::json::FORMAT,
            name: g.name.clone(),
            layers: layers.len() as u64,
            moe_layers: moe.len() as u64,
            nodes: g.len() as u64,
            params,
            param_bytes: bytes,
            max_rank_param_bytes: rank_bytes.values().copied().max().unwrap_or(0),
            ops,
            collectives: c,
            mesh: g
                .mesh
                .axes
                .iter()
                .map(|a| (a.name.clone(), a.size.into()))
                .collect(),
            ranks: g.mesh.ranks(),
            stages: stages.len().max(1) as u64,
            only_stage: g.pipeline.as_ref().and_then(|p| {
                p.only_stage.map(|stage| OnlyStage {
                    stage,
                    of: g.mesh.size_of(&p.axis),
                })
            }),
        }
    }
}

impl std::fmt::Display for Summary {
    /// A human-readable table.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mesh: Vec<String> = self.mesh.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(f, "model        {}", self.name)?;
        writeln!(f, "format       {}", self.format)?;
        writeln!(
            f,
            "mesh         {} ({} ranks)",
            if mesh.is_empty() {
                "single".into()
            } else {
                mesh.join(", ")
            },
            self.ranks
        )?;
        writeln!(f, "layers       {} ({} MoE)", self.layers, self.moe_layers)?;
        match self.only_stage {
            Some(o) => writeln!(
                f,
                "stages       1 of {} (this file is stage {}'s program alone, as `--emit-stage {}` writes it)",
                o.of, o.stage, o.stage
            )?,
            None => writeln!(f, "stages       {}", self.stages)?,
        }
        writeln!(f, "nodes        {}", self.nodes)?;
        writeln!(
            f,
            "params       {} ({})",
            units::count(self.params),
            self.params
        )?;
        writeln!(
            f,
            "param bytes  {} (most loaded rank {})",
            units::bytes(self.param_bytes),
            units::bytes(self.max_rank_param_bytes)
        )?;
        let c = &self.collectives;
        writeln!(
            f,
            "collectives  all_to_all {}, all_reduce {}, all_gather {}, reduce_scatter {}, send {}, recv {}",
            c.all_to_all, c.all_reduce, c.all_gather, c.reduce_scatter, c.send, c.recv
        )?;
        writeln!(f, "ops")?;
        for (k, v) in &self.ops {
            writeln!(f, "  {k:<15} {v}")?;
        }
        Ok(())
    }
}
