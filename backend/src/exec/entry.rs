//! The executor's entry points: validate, lay out the value slots, run the programs, rebuild
//! the outputs.

use super::compute::Compute;
use super::{is_fixed, Exec, Executed};
use crate::collective::Collectives;
use crate::error::ExecError;
use crate::inputs::Inputs;
use crate::value::MAX_RANK;
use crate::weights::Weights;
use crate::HostTensor;
use burn::tensor::backend::Backend;
use moe_ir::{Graph, NodeId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Micro-batches a run of `g` executes by default: its pipeline's, else 1.
pub(crate) fn default_micro_batches(g: &Graph) -> u32 {
    g.pipeline.as_ref().map_or(1, |p| p.micro_batches)
}

/// What a run reads: weights, given inputs (seeded from `seed` where not given), micro-batches.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Feed<'a> {
    pub weights: &'a Weights,
    pub inputs: Option<&'a Inputs>,
    pub seed: u64,
    pub micro_batches: Option<u32>,
}

/// Runs `g` (validated first) with every rank simulated on `device`, collectives through `coll`,
/// local ops through the compute seam `k`, reading `feed` (weights, given or seeded inputs,
/// micro-batches; default: [`default_micro_batches`]).
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
        stamps: Vec::new(),
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
        device_memory: None,
    })
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
