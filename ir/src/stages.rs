//! Static checks of a partitioned graph's stages: what would hang or fail at run time, found
//! before anything runs. [`crate::validate`] runs them on every graph (after every pass).
//!
//! The IR has no rank-dependent control flow: a rank runs the nodes of its stage in arena order
//! (every node when the graph is not partitioned). So every rank of a collective's group reaches
//! the collective, in the same order, exactly when all of the group's ranks are in the stage of the
//! collective; a group that spans stages is the only way to skip one. Point-to-point transfers are
//! checked with rendezvous semantics (a `send` completes when its `recv` runs, as NCCL's blocking
//! send/recv do for large messages): each matched pair is one event of both stages, and the
//! stages' orders of those events must not form a cycle.
//!
//! Checked: the pipeline spec against the mesh and the layers; every stage in range and none
//! empty; nothing split or partial on the pipeline axis; every collective's group inside one
//! stage; every `send` has exactly one `recv` of the same channel in another stage, declaring the
//! sent value's exact type; no cycle of waits between stages; the schedule completes.

use crate::pipeline::{check_schedule, steps, ScheduleError};
use crate::{Graph, NodeId, Op, Scope};
use std::collections::BTreeMap;
use thiserror::Error;

/// A partitioned graph that would fail or hang at run time, naming the nodes and ranks involved.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StageError {
    #[error("node {id} `{name}` ({op}) is a pipeline transfer, but the graph has no pipeline")]
    TransferWithoutPipeline {
        id: NodeId,
        name: String,
        op: &'static str,
    },
    #[error("nodes have stages but the graph has no `pipeline`")]
    StagesWithoutPipeline,
    #[error("pipeline axis `{0}` is not an axis of the mesh")]
    UnknownAxis(String),
    #[error("pipeline axis `{axis}` must be the mesh's outermost axis (it is axis {index})")]
    AxisNotOutermost { axis: String, index: usize },
    #[error("pipeline layout has {entries} virtual stages; {stages} stages x {chunks} chunks need {want}")]
    LayoutLength {
        entries: usize,
        stages: u64,
        chunks: u32,
        want: u64,
    },
    #[error("pipeline layout {layout:?} covers {sum} layers; the graph has {layers}")]
    LayoutSum {
        layout: Vec<u32>,
        sum: u64,
        layers: u32,
    },
    #[error("virtual stage {vstage} of the layout {layout:?} has no layer")]
    EmptyVirtualStage { vstage: usize, layout: Vec<u32> },
    #[error("node {id} `{name}`: stage {stage} is out of range (the `{axis}` axis has {stages})")]
    StageRange {
        id: NodeId,
        name: String,
        stage: u32,
        axis: String,
        stages: u64,
    },
    #[error(
        "node {id} `{name}` ({scope}) is on stage {stage}; the layout puts it on stage {want}"
    )]
    StageOfScope {
        id: NodeId,
        name: String,
        scope: Scope,
        stage: u32,
        want: u32,
    },
    #[error("stage {stage} has no nodes (ranks {first}..={last} would idle)")]
    EmptyStage { stage: u32, first: u64, last: u64 },
    #[error("node {id} `{name}`: a value is split or partial on the pipeline axis `{axis}`")]
    ShardedOnPipeline {
        id: NodeId,
        name: String,
        axis: String,
    },
    #[error("node {id} `{name}` ({op} over `{axis}`) runs on stage {stage}, but its group {group:?} spans stages: ranks {missing:?} are on stages {missing_stages:?} and never reach it (deadlock)")]
    CollectiveAcrossStages {
        id: NodeId,
        name: String,
        op: &'static str,
        axis: String,
        stage: u32,
        group: Vec<u64>,
        missing: Vec<u64>,
        missing_stages: Vec<u32>,
    },
    #[error("node {id} `{name}` ({op}) on channel {channel} has no matching {want}")]
    Unmatched {
        id: NodeId,
        name: String,
        op: &'static str,
        channel: u32,
        want: &'static str,
    },
    #[error("channel {channel} has two {op}s: `{first}` and `{second}`")]
    DuplicateChannel {
        channel: u32,
        op: &'static str,
        first: String,
        second: String,
    },
    #[error("channel {channel}: `{send}` sends {sent} but `{recv}` declares {declared}")]
    RecvType {
        channel: u32,
        send: String,
        recv: String,
        sent: String,
        declared: String,
    },
    #[error("channel {channel}: `{send}` and `{recv}` are both on stage {stage}")]
    SameStage {
        channel: u32,
        send: String,
        recv: String,
        stage: u32,
    },
    #[error("node {id} `{name}` is on stage {stage} in the program of stage {only}")]
    NotThisStage {
        id: NodeId,
        name: String,
        stage: u32,
        only: u32,
    },
    #[error("stage {stage} does not exist (the pipeline has {stages})")]
    NoSuchStage { stage: u32, stages: u64 },
    #[error("the graph is not partitioned: it has no stages to emit")]
    NotPartitioned,
    #[error("point-to-point deadlock, a cycle of waits between stages: {}", .0.join("; "))]
    TransferCycle(Vec<String>),
    #[error("schedule: {0}")]
    Schedule(#[from] ScheduleError),
}

/// Runs every check on `g` (a graph that already type-checks).
pub fn check_stages(g: &Graph) -> Result<(), StageError> {
    let Some(spec) = &g.pipeline else {
        if g.nodes().any(|(_, n)| n.stage.is_some()) {
            return Err(StageError::StagesWithoutPipeline);
        }
        if let Some((id, n)) = g
            .nodes()
            .find(|(_, n)| matches!(n.op, Op::Send { .. } | Op::Recv { .. }))
        {
            return Err(StageError::TransferWithoutPipeline {
                id,
                name: n.name.clone(),
                op: n.op.name(),
            });
        }
        return Ok(());
    };
    let axis = spec.axis.as_str();
    let index = g
        .mesh
        .axis_index(axis)
        .ok_or_else(|| StageError::UnknownAxis(axis.to_string()))?;
    if index != 0 {
        return Err(StageError::AxisNotOutermost {
            axis: axis.to_string(),
            index,
        });
    }
    let stages = g.mesh.size_of(axis);
    let chunks = spec.schedule.chunks();
    let want = stages * u64::from(chunks);
    if spec.layout.len() as u64 != want {
        return Err(StageError::LayoutLength {
            entries: spec.layout.len(),
            stages,
            chunks,
            want,
        });
    }
    if let Some(v) = spec.layout.iter().position(|&n| n == 0) {
        return Err(StageError::EmptyVirtualStage {
            vstage: v,
            layout: spec.layout.clone(),
        });
    }
    let layers = g
        .nodes()
        .filter_map(|(_, n)| match n.scope {
            Scope::Layer(l) => Some(l.saturating_add(1)),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let sum: u64 = spec.layout.iter().map(|&n| u64::from(n)).sum();
    // A single stage's program holds only its own layers.
    let short = spec.only_stage.is_some() && sum >= u64::from(layers);
    if sum != u64::from(layers) && !short {
        return Err(StageError::LayoutSum {
            layout: spec.layout.clone(),
            sum,
            layers,
        });
    }
    let vstages = spec.virtual_stages();
    let stage_of_scope =
        |scope: Scope| -> u32 { (u64::from(spec.virtual_stage_of(scope)) % stages) as u32 };
    // Stages in range, where the layout says, none empty, nothing sharded on the axis.
    let per_stage = g.mesh.ranks() / stages;
    let mut used = vec![false; stages as usize];
    for (id, n) in g.nodes() {
        let stage = n.stage.unwrap_or(0);
        if u64::from(stage) >= stages {
            return Err(StageError::StageRange {
                id,
                name: n.name.clone(),
                stage,
                axis: axis.to_string(),
                stages,
            });
        }
        used[stage as usize] = true;
        // Transfers and the leaves copied for them may sit on any stage; everything else where
        // its scope's layers are.
        let free = matches!(
            n.op,
            Op::Send { .. } | Op::Recv { .. } | Op::Input(_) | Op::Weight(_) | Op::Zeros(_)
        );
        let want = stage_of_scope(n.scope);
        if !free && stage != want {
            return Err(StageError::StageOfScope {
                id,
                name: n.name.clone(),
                scope: n.scope,
                stage,
                want,
            });
        }
    }
    if let Some(only) = spec.only_stage {
        if let Some((id, n)) = g.nodes().find(|(_, n)| n.stage != Some(only)) {
            return Err(StageError::NotThisStage {
                id,
                name: n.name.clone(),
                stage: n.stage.unwrap_or(0),
                only,
            });
        }
    } else if let Some(s) = used.iter().position(|u| !u) {
        let first = s as u64 * per_stage;
        return Err(StageError::EmptyStage {
            stage: s as u32,
            first,
            last: first + per_stage - 1,
        });
    }
    // Collectives: the group of the first rank of the stage must lie inside the stage. Groups
    // of other ranks of the stage are translates of it (they differ only in coordinates other
    // than the group's axis), so one rank decides.
    let stage_of_rank = |r: u64| (r / per_stage) as u32;
    for (id, n) in g.nodes() {
        let Some(ax) = n.op.collective_axis() else {
            continue;
        };
        let stage = n.stage.unwrap_or(0);
        let group = g.mesh.group(u64::from(stage) * per_stage, ax);
        let missing: Vec<u64> = group
            .iter()
            .copied()
            .filter(|&r| stage_of_rank(r) != stage)
            .collect();
        if !missing.is_empty() {
            return Err(StageError::CollectiveAcrossStages {
                id,
                name: n.name.clone(),
                op: n.op.name(),
                axis: ax.to_string(),
                stage,
                missing_stages: missing.iter().map(|&r| stage_of_rank(r)).collect(),
                group,
                missing,
            });
        }
    }
    for (id, n) in g.nodes() {
        if n.outputs.iter().any(|t| t.axes().any(|a| a == axis)) {
            return Err(StageError::ShardedOnPipeline {
                id,
                name: n.name.clone(),
                axis: axis.to_string(),
            });
        }
    }
    check_transfers(g, spec.only_stage.is_none())?;
    let order = steps(spec.schedule, stages as u32, spec.micro_batches)?;
    check_schedule(&order, vstages, spec.micro_batches)?;
    Ok(())
}

/// Send/recv matching and the rendezvous cycle check (`whole`: the graph holds every stage; a
/// single stage's program only has its channels checked for duplicates).
fn check_transfers(g: &Graph, whole: bool) -> Result<(), StageError> {
    let mut sends: BTreeMap<u32, NodeId> = BTreeMap::new();
    let mut recvs: BTreeMap<u32, NodeId> = BTreeMap::new();
    for (id, n) in g.nodes() {
        let (map, channel) = match n.op {
            Op::Send { channel } => (&mut sends, channel),
            Op::Recv { channel, .. } => (&mut recvs, channel),
            _ => continue,
        };
        if let Some(&first) = map.get(&channel) {
            return Err(StageError::DuplicateChannel {
                channel,
                op: n.op.name(),
                first: g.node(first).name.clone(),
                second: n.name.clone(),
            });
        }
        map.insert(channel, id);
    }
    if !whole {
        return Ok(());
    }
    let unmatched = |id: NodeId, channel: u32, want: &'static str| {
        let n = g.node(id);
        StageError::Unmatched {
            id,
            name: n.name.clone(),
            op: n.op.name(),
            channel,
            want,
        }
    };
    for (&c, &s) in &sends {
        let Some(&r) = recvs.get(&c) else {
            return Err(unmatched(s, c, "recv"));
        };
        let (sn, rn) = (g.node(s), g.node(r));
        let sent = g
            .value_type(sn.inputs[0])
            .map(ToString::to_string)
            .unwrap_or_default();
        let declared = rn.outputs[0].to_string();
        if sent != declared {
            return Err(StageError::RecvType {
                channel: c,
                send: sn.name.clone(),
                recv: rn.name.clone(),
                sent,
                declared,
            });
        }
        if sn.stage == rn.stage {
            return Err(StageError::SameStage {
                channel: c,
                send: sn.name.clone(),
                recv: rn.name.clone(),
                stage: sn.stage.unwrap_or(0),
            });
        }
    }
    if let Some((&c, &r)) = recvs.iter().find(|(c, _)| !sends.contains_key(c)) {
        return Err(unmatched(r, c, "send"));
    }
    // Events: one per channel. Each stage orders the events it takes part in (arena order);
    // consecutive events of a stage are edges. A cycle is a deadlock.
    let mut per_stage: BTreeMap<u32, Vec<(u32, NodeId)>> = BTreeMap::new();
    for (id, n) in g.nodes() {
        if let Op::Send { channel } | Op::Recv { channel, .. } = n.op {
            per_stage
                .entry(n.stage.unwrap_or(0))
                .or_default()
                .push((channel, id));
        }
    }
    let mut next: BTreeMap<u32, Vec<(u32, NodeId, NodeId)>> = BTreeMap::new();
    for evs in per_stage.values() {
        for w in evs.windows(2) {
            next.entry(w[0].0)
                .or_default()
                .push((w[1].0, w[0].1, w[1].1));
        }
    }
    // Iterative DFS with colours over channels.
    let mut colour: BTreeMap<u32, u8> = BTreeMap::new();
    for &start in sends.keys() {
        if colour.get(&start).copied().unwrap_or(0) != 0 {
            continue;
        }
        // (channel, index of the next edge to try), plus the edge taken into each frame.
        let mut stack: Vec<(u32, usize)> = vec![(start, 0)];
        let mut via: Vec<(NodeId, NodeId)> = Vec::new();
        colour.insert(start, 1);
        while let Some(&mut (c, ref mut i)) = stack.last_mut() {
            let edges = next.get(&c).map_or(&[][..], Vec::as_slice);
            if let Some(&(d, before, after)) = edges.get(*i) {
                *i += 1;
                match colour.get(&d).copied().unwrap_or(0) {
                    0 => {
                        colour.insert(d, 1);
                        stack.push((d, 0));
                        via.push((before, after));
                    }
                    1 => {
                        // Cycle: the frames from `d` to the top, closed by this edge.
                        let from = stack.iter().position(|&(x, _)| x == d).unwrap_or(0);
                        let mut edges: Vec<(NodeId, NodeId)> = via[from..].to_vec();
                        edges.push((before, after));
                        return Err(StageError::TransferCycle(
                            edges
                                .into_iter()
                                .map(|(a, b)| {
                                    let (an, bn) = (g.node(a), g.node(b));
                                    format!(
                                        "stage {} runs {} `{}` before {} `{}`",
                                        an.stage.unwrap_or(0),
                                        an.op.name(),
                                        an.name,
                                        bn.op.name(),
                                        bn.name
                                    )
                                })
                                .collect(),
                        ));
                    }
                    _ => {}
                }
            } else {
                colour.insert(c, 2);
                stack.pop();
                via.pop();
            }
        }
    }
    Ok(())
}

/// The program of one stage of a partitioned graph: its nodes (recvs as leaves, sends as sinks),
/// the graph outputs it produces, and the pipeline spec marked [`PipelineSpec::only_stage`].
///
/// [`PipelineSpec::only_stage`]: crate::PipelineSpec::only_stage
pub fn stage_program(g: &Graph, stage: u32) -> Result<Graph, StageError> {
    let spec = g.pipeline.as_ref().ok_or(StageError::NotPartitioned)?;
    let stages = g.mesh.size_of(&spec.axis);
    if u64::from(stage) >= stages {
        return Err(StageError::NoSuchStage { stage, stages });
    }
    let mut out = Graph::new(format!("{}.stage{stage}", g.name), g.mesh.clone());
    out.meta = g.meta.clone();
    let mut map: Vec<Option<NodeId>> = vec![None; g.len()];
    for (id, n) in g.nodes() {
        if n.stage != Some(stage) {
            continue;
        }
        let mut node = n.clone();
        for v in &mut node.inputs {
            // A valid graph reads only its own stage's values.
            v.node = map[v.node.index()].ok_or_else(|| StageError::NotThisStage {
                id: v.node,
                name: g.node(v.node).name.clone(),
                stage: g.node(v.node).stage.unwrap_or(0),
                only: stage,
            })?;
        }
        map[id.index()] = Some(out.push_unchecked(node));
    }
    for o in &g.outputs {
        if let Some(nid) = map[o.value.node.index()] {
            out.add_output(
                o.name.clone(),
                crate::Value {
                    node: nid,
                    output: o.value.output,
                },
            );
        }
    }
    out.pipeline = Some(crate::PipelineSpec {
        only_stage: Some(stage),
        ..spec.clone()
    });
    Ok(out)
}
