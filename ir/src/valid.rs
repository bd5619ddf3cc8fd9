//! The validator: the gate every graph passes before a pass or a backend sees it.
//!
//! Checks the mesh, node names, handles (inputs refer to earlier nodes: acyclic by construction),
//! every node's types against [`crate::infer`], graph outputs, and stage annotations (all nodes
//! or none), then the stage checks of [`crate::stages`] (collectives reached by every rank of their
//! group, send/recv matched, no cycle of waits, the schedule completes).

use crate::graph::valid_node_name;
use crate::limits::{self, Quantity, TooLarge};
use crate::stages::{check_stages, StageError};
use crate::{infer, Graph, MeshError, NodeId, TypeError};
use std::collections::HashSet;
use thiserror::Error;

/// A broken invariant, naming the node (id and name) it is about.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValidationError {
    #[error("mesh: {0}")]
    Mesh(#[from] MeshError),
    #[error("node {id} `{name}`: name is empty, contains `:` or whitespace")]
    BadName { id: NodeId, name: String },
    #[error("node {id} `{name}`: name used before by node {first}")]
    DuplicateName {
        id: NodeId,
        name: String,
        first: NodeId,
    },
    #[error("node {id} `{name}`: input {input} refers to {value}, which is not an earlier node's output")]
    BadInput {
        id: NodeId,
        name: String,
        input: usize,
        value: String,
    },
    #[error("node {id} `{name}` ({op}): {source}")]
    Type {
        id: NodeId,
        name: String,
        op: &'static str,
        #[source]
        source: TypeError,
    },
    #[error("node {id} `{name}` ({op}): recorded output types [{recorded}] differ from the inferred [{inferred}]")]
    StaleType {
        id: NodeId,
        name: String,
        op: &'static str,
        recorded: String,
        inferred: String,
    },
    #[error("graph output `{name}` refers to {value}, which does not exist")]
    BadOutput { name: String, value: String },
    #[error("graph output name `{0}` is used twice")]
    DuplicateOutput(String),
    #[error("the graph has no outputs (and sends nothing)")]
    NoOutputs,
    #[error(
        "node {id} `{name}` has no stage while other nodes have one: annotate all nodes or none"
    )]
    PartialStages { id: NodeId, name: String },
    #[error("{0}")]
    Stage(#[from] StageError),
    #[error("node {id} `{name}`: scope: {source}")]
    Scope {
        id: NodeId,
        name: String,
        #[source]
        source: TooLarge,
    },
    #[error("meta.{key} is {value}; a size must be a whole number from 1 to {max}", max = limits::MAX_DIM)]
    MetaSize { key: String, value: String },
    #[error("{0}")]
    TooLarge(#[from] TooLarge),
}

/// The keys of `meta` that hold sizes (what the importer writes); each must be a whole number in
/// `1..=MAX_DIM` when present.
pub const META_SIZE_KEYS: &[&str] = &["hidden", "seq", "micro_batch", "experts", "top_k"];

impl ValidationError {
    /// The node the error is about, when it is about one node.
    pub fn node(&self) -> Option<NodeId> {
        match self {
            ValidationError::BadName { id, .. }
            | ValidationError::DuplicateName { id, .. }
            | ValidationError::BadInput { id, .. }
            | ValidationError::Type { id, .. }
            | ValidationError::StaleType { id, .. }
            | ValidationError::PartialStages { id, .. }
            | ValidationError::Scope { id, .. } => Some(*id),
            ValidationError::Mesh(_)
            | ValidationError::BadOutput { .. }
            | ValidationError::DuplicateOutput(_)
            | ValidationError::NoOutputs
            | ValidationError::Stage(_)
            | ValidationError::MetaSize { .. }
            | ValidationError::TooLarge(_) => None,
        }
    }
}

fn join<T: std::fmt::Display>(ts: &[T]) -> String {
    ts.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Validates `g`, returning the first broken invariant.
pub fn validate(g: &Graph) -> Result<(), ValidationError> {
    g.mesh.check()?;
    check_meta(g)?;
    let mut seen: std::collections::HashMap<&str, NodeId> = std::collections::HashMap::new();
    let staged = g.nodes().any(|(_, n)| n.stage.is_some());
    for (id, n) in g.nodes() {
        let name = || n.name.clone();
        if !valid_node_name(&n.name) {
            return Err(ValidationError::BadName { id, name: name() });
        }
        if let Some(&first) = seen.get(n.name.as_str()) {
            return Err(ValidationError::DuplicateName {
                id,
                name: name(),
                first,
            });
        }
        seen.insert(&n.name, id);
        if let crate::Scope::Layer(l) = n.scope {
            limits::at_most(Quantity::Layer, l.into(), limits::MAX_LAYER).map_err(|source| {
                ValidationError::Scope {
                    id,
                    name: name(),
                    source,
                }
            })?;
        }
        if staged && n.stage.is_none() {
            return Err(ValidationError::PartialStages { id, name: name() });
        }
        let mut tys = Vec::with_capacity(n.inputs.len());
        for (i, v) in n.inputs.iter().enumerate() {
            match (v.node < id).then(|| g.value_type(*v)).flatten() {
                Some(t) => tys.push(t),
                None => {
                    return Err(ValidationError::BadInput {
                        id,
                        name: name(),
                        input: i,
                        value: v.to_string(),
                    })
                }
            }
        }
        let inferred = infer(&n.op, &tys, &g.mesh).map_err(|source| ValidationError::Type {
            id,
            name: name(),
            op: n.op.name(),
            source,
        })?;
        let recorded: Vec<_> = n
            .outputs
            .iter()
            .map(|t| t.clone().canonical(&g.mesh))
            .collect();
        if recorded != inferred {
            return Err(ValidationError::StaleType {
                id,
                name: name(),
                op: n.op.name(),
                recorded: join(&n.outputs),
                inferred: join(&inferred),
            });
        }
    }
    // A pipeline stage whose results leave by `send` has no outputs of its own.
    if g.outputs.is_empty()
        && !g
            .nodes()
            .any(|(_, n)| matches!(n.op, crate::Op::Send { .. }))
    {
        return Err(ValidationError::NoOutputs);
    }
    let mut out_names = HashSet::new();
    for o in &g.outputs {
        if g.value_type(o.value).is_none() {
            return Err(ValidationError::BadOutput {
                name: o.name.clone(),
                value: o.value.to_string(),
            });
        }
        if !out_names.insert(o.name.as_str()) {
            return Err(ValidationError::DuplicateOutput(o.name.clone()));
        }
    }
    check_model_bytes(g)?;
    check_stages(g)?;
    Ok(())
}

fn check_meta(g: &Graph) -> Result<(), ValidationError> {
    for &key in META_SIZE_KEYS {
        let Some(v) = g.meta.get(key) else { continue };
        if !matches!(v.as_u64(), Some(n) if (1..=limits::MAX_DIM).contains(&n)) {
            return Err(ValidationError::MetaSize {
                key: key.to_string(),
                value: v.to_string(),
            });
        }
    }
    Ok(())
}

/// The weights of one graph together stay under [`limits::MAX_MODEL_BYTES`] (copies of a weight
/// on other pipeline stages count once, as in [`crate::Summary`]).
fn check_model_bytes(g: &Graph) -> Result<(), ValidationError> {
    let mut bytes: u128 = 0;
    for (_, n) in g.nodes() {
        if let crate::Op::Weight(t) = &n.op {
            if crate::pipeline::checkpoint_key(&n.name) == n.name {
                // Each type passed `check_type`: its bytes are exact.
                bytes += u128::from(t.numel()) * u128::from(t.dtype.size_bytes());
            }
        }
    }
    limits::at_most(Quantity::ModelBytes, bytes, limits::MAX_MODEL_BYTES)?;
    Ok(())
}
