//! Building the partitioned program: a stage on every node, `send`/`recv` where a value crosses
//! stages, and the pipeline axis on the mesh.
//!
//! - Ops go to the stage their scope's virtual stage lives on (`v % P`).
//! - A leaf (`input`, `weight`, `zeros`) goes to every stage that reads it: the copy on any stage
//!   but the first is named `name@stageS` (a weight copy loads the checkpoint key `name`: tied
//!   embeddings, as Megatron keeps them on the first and the last stage) and takes the scope of its
//!   first reader there, so its cost counts where it lives (the rewrite shares one `zeros` buffer
//!   between layers).
//! - A value read on another stage gets one `send` on its producer's stage right after the
//!   producer and one `recv` on each reading stage, declaring the value's exact type. Channels are
//!   numbered in the order of the producers, and every stage runs its transfers in channel order,
//!   so the transfers cannot wait on each other in a cycle.
//! - The mesh gains the pipeline axis as its outermost axis: inter-node unless all stages fit in
//!   one node.

use super::PipelineError;
use moe_ir::{
    Graph, Level, MeshAxis, NodeId, Op, PipelineSpec, Scope, Value, DEFAULT_GPUS_PER_NODE,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The name of the pipeline axis the partitioner adds.
pub const AXIS: &str = "pp";

/// The virtual stage and the stage of a scope under `spec`, with `stages` devices.
pub fn stage_of(spec: &PipelineSpec, stages: u32, scope: Scope) -> (u32, u32) {
    let v = spec.virtual_stage_of(scope);
    (v, v % stages.max(1))
}

fn is_leaf(op: &Op) -> bool {
    matches!(op, Op::Input(_) | Op::Weight(_) | Op::Zeros(_))
}

/// A value's name: `node` or `node.k`.
fn value_name(g: &Graph, v: Value) -> String {
    let n = &g.node(v.node).name;
    if v.output == 0 {
        n.clone()
    } else {
        format!("{n}.{}", v.output)
    }
}

/// A transfer waiting for its `recv` to be placed on the reading stage.
struct Pending {
    channel: u32,
    value: Value,
    name: String,
}

/// Builds the partitioned graph of `g` (valid, not partitioned) under `spec` with `stages`
/// devices. `gpus_per_node` decides the pipeline axis' level.
pub fn emit(
    g: &Graph,
    spec: PipelineSpec,
    stages: u32,
    gpus_per_node: u64,
) -> Result<Graph, PipelineError> {
    // Stage of every op, and the stages that read every value.
    let op_stage: Vec<(u32, u32)> = g
        .nodes()
        .map(|(_, n)| stage_of(&spec, stages, n.scope))
        .collect();
    let mut readers: HashMap<Value, BTreeSet<u32>> = HashMap::new();
    // (leaf, stage) -> the scope of its first reader there (a copy's scope).
    let mut first_reader: HashMap<(NodeId, u32), Scope> = HashMap::new();
    for (id, n) in g.nodes() {
        let (v_user, s_user) = op_stage[id.index()];
        for v in &n.inputs {
            first_reader.entry((v.node, s_user)).or_insert(n.scope);
        }
        for &v in &n.inputs {
            let p = g.node(v.node);
            if !is_leaf(&p.op) && op_stage[v.node.index()].0 > v_user {
                return Err(PipelineError::ReadsLaterLayer {
                    node: n.name.clone(),
                    scope: n.scope,
                    input: p.name.clone(),
                    input_scope: p.scope,
                });
            }
            readers.entry(v).or_default().insert(s_user);
        }
    }

    let mut mesh = g.mesh.clone();
    if mesh.axis(AXIS).is_some() {
        return Err(PipelineError::AxisTaken(AXIS.into()));
    }
    let per_stage = mesh.ranks();
    let gpn = if gpus_per_node == 0 {
        DEFAULT_GPUS_PER_NODE
    } else {
        gpus_per_node
    };
    let level = if per_stage * u64::from(stages) <= gpn {
        Level::IntraNode
    } else {
        Level::InterNode
    };
    mesh.axes.insert(
        0,
        MeshAxis {
            name: AXIS.into(),
            size: stages,
            level,
        },
    );

    let mut out = Graph::new(g.name.clone(), mesh);
    out.meta = g.meta.clone();
    // (old value, stage) -> new value.
    let mut avail: HashMap<(Value, u32), Value> = HashMap::new();
    // Reading stage -> transfers whose recv is not placed yet, in channel order.
    let mut pending: BTreeMap<u32, Vec<Pending>> = BTreeMap::new();
    let mut channel = 0u32;
    let add = |out: &mut Graph,
               name: String,
               op: Op,
               inputs: &[Value],
               scope: Scope,
               stage: u32|
     -> Result<NodeId, PipelineError> {
        let id = out
            .add(name, op, inputs, scope)
            .map_err(PipelineError::Build)?;
        out.node_mut(id).stage = Some(stage);
        Ok(id)
    };

    for (id, n) in g.nodes() {
        if is_leaf(&n.op) {
            // One copy per reading stage (the scope's stage when nothing reads it).
            let (_, own) = op_stage[id.index()];
            let stages_reading: BTreeSet<u32> = readers
                .get(&Value::from(id))
                .cloned()
                .unwrap_or_else(|| BTreeSet::from([own]));
            for (i, &s) in stages_reading.iter().enumerate() {
                let name = if i == 0 {
                    n.name.clone()
                } else {
                    format!("{}@stage{s}", n.name)
                };
                // A copy is costed with the layer that reads it first on its stage.
                let scope = if i == 0 {
                    n.scope
                } else {
                    first_reader.get(&(id, s)).copied().unwrap_or(n.scope)
                };
                let new = add(&mut out, name, n.op.clone(), &[], scope, s)?;
                avail.insert((Value::from(id), s), Value::from(new));
            }
            continue;
        }
        let (_, s) = op_stage[id.index()];
        // Place the recvs this node needs (and every earlier pending one of this stage, to keep
        // the stage's transfers in channel order).
        let need: Option<u32> = n
            .inputs
            .iter()
            .filter(|v| !avail.contains_key(&(**v, s)))
            .filter_map(|v| {
                pending
                    .get(&s)?
                    .iter()
                    .find(|p| p.value == *v)
                    .map(|p| p.channel)
            })
            .max();
        if let Some(upto) = need {
            let list = pending.entry(s).or_default();
            let cut = list.iter().take_while(|p| p.channel <= upto).count();
            let ready: Vec<Pending> = list.drain(..cut).collect();
            for p in ready {
                let ty = g
                    .value_type(p.value)
                    .cloned()
                    .ok_or_else(|| PipelineError::Internal(format!("no type for {}", p.name)))?;
                let r = add(
                    &mut out,
                    format!("{}.recv.s{s}", p.name),
                    Op::Recv {
                        channel: p.channel,
                        ty,
                    },
                    &[],
                    n.scope,
                    s,
                )?;
                avail.insert((p.value, s), Value::from(r));
            }
        }
        let inputs: Vec<Value> = n
            .inputs
            .iter()
            .map(|v| {
                avail.get(&(*v, s)).copied().ok_or_else(|| {
                    PipelineError::Internal(format!(
                        "`{}` on stage {s} reads `{}`, which has no transfer",
                        n.name,
                        value_name(g, *v)
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        let new = add(&mut out, n.name.clone(), n.op.clone(), &inputs, n.scope, s)?;
        for k in 0..n.outputs.len() {
            let v = Value {
                node: id,
                output: k as u32,
            };
            let nv = Value {
                node: new,
                output: k as u32,
            };
            avail.insert((v, s), nv);
            let Some(rs) = readers.get(&v) else { continue };
            for &t in rs.iter().filter(|&&t| t != s) {
                let name = value_name(g, v);
                add(
                    &mut out,
                    format!("{name}.send.s{t}"),
                    Op::Send { channel },
                    &[nv],
                    n.scope,
                    s,
                )?;
                pending.entry(t).or_default().push(Pending {
                    channel,
                    value: v,
                    name,
                });
                channel += 1;
            }
        }
    }
    for o in &g.outputs {
        // An op's output is read where it runs; a leaf's from its first copy.
        let s = op_stage[o.value.node.index()].1;
        let v = avail
            .get(&(o.value, s))
            .copied()
            .or_else(|| (0..stages).find_map(|t| avail.get(&(o.value, t)).copied()))
            .ok_or_else(|| PipelineError::Internal(format!("output `{}` lost", o.name)))?;
        out.add_output(o.name.clone(), v);
    }
    out.pipeline = Some(spec);
    Ok(out)
}
