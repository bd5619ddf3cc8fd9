//! The graph: an arena of nodes with typed handles, children before parents.
//!
//! Invariants (checked by [`crate::validate`]):
//! - every input of node `n` refers to a node with a smaller id (so the arena order is a
//!   topological order and the graph is acyclic) and to an existing output of it;
//! - node names are unique and non-empty and contain no `:` (which separates an output index);
//! - `outputs` of a node are exactly what [`crate::infer`] computes from its op and input types.

use crate::{infer, Mesh, Op, PipelineSpec, TensorType, TypeError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use thiserror::Error;

/// Handle of a node in a [`Graph`]'s arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(u32);

impl NodeId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
    pub fn from_index(i: usize) -> NodeId {
        NodeId(u32::try_from(i).expect("graphs hold fewer than 2^32 nodes"))
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// One output of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Value {
    pub node: NodeId,
    pub output: u32,
}

impl From<NodeId> for Value {
    fn from(node: NodeId) -> Value {
        Value { node, output: 0 }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.output == 0 {
            write!(f, "{}", self.node)
        } else {
            write!(f, "{}.{}", self.node, self.output)
        }
    }
}

/// Which part of the model a node belongs to: pipeline partitioning and printers group by it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Before the first layer (token embedding).
    Embed,
    /// Transformer layer `n` (0-based; encoder layers first in encoder-decoder models).
    Layer(u32),
    /// After the last layer (final norm, LM head).
    Head,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Embed => f.write_str("embed"),
            Scope::Layer(n) => write!(f, "layer {n}"),
            Scope::Head => f.write_str("head"),
        }
    }
}

/// A node: an op applied to input values, with its inferred output types.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// Unique name, e.g. `l3.moe.router`; weights use it as their checkpoint key.
    pub name: String,
    pub op: Op,
    pub inputs: Vec<Value>,
    /// Output types (see the module invariants).
    pub outputs: Vec<TensorType>,
    pub scope: Scope,
    /// Pipeline stage, once partitioned.
    pub stage: Option<u32>,
}

/// A named result of the graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GraphOutput {
    pub name: String,
    pub value: Value,
}

/// An SPMD program: one graph every rank of `mesh` runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    /// Model name.
    pub name: String,
    pub mesh: Mesh,
    /// Free-form facts about the model (family, sizes), kept in JSON under `meta`.
    pub meta: BTreeMap<String, serde_json::Value>,
    /// How the stages run, once partitioned (see [`crate::pipeline`]).
    pub pipeline: Option<PipelineSpec>,
    nodes: Vec<Node>,
    names: HashMap<String, NodeId>,
    pub outputs: Vec<GraphOutput>,
}

/// Why a node cannot be added to a graph.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BuildError {
    #[error("node `{0}`: a node of that name exists already")]
    DuplicateName(String),
    #[error("node name `{0}` is empty or contains `:`")]
    BadName(String),
    #[error("node `{node}`: input {input} refers to {value}, which does not exist")]
    BadInput {
        node: String,
        input: usize,
        value: String,
    },
    #[error("node `{node}` ({op}): {source}")]
    Type {
        node: String,
        op: &'static str,
        #[source]
        source: TypeError,
    },
}

/// Whether `name` is usable as a node name.
pub fn valid_node_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(':') && !name.chars().any(char::is_whitespace)
}

impl Graph {
    /// An empty graph on `mesh`.
    pub fn new(name: impl Into<String>, mesh: Mesh) -> Graph {
        Graph {
            name: name.into(),
            mesh,
            meta: BTreeMap::new(),
            pipeline: None,
            nodes: Vec::new(),
            names: HashMap::new(),
            outputs: Vec::new(),
        }
    }

    /// Appends a node, inferring its output types. Inputs must already be in the graph.
    pub fn add(
        &mut self,
        name: impl Into<String>,
        op: Op,
        inputs: &[Value],
        scope: Scope,
    ) -> Result<NodeId, BuildError> {
        let name = name.into();
        if !valid_node_name(&name) {
            return Err(BuildError::BadName(name));
        }
        if self.names.contains_key(&name) {
            return Err(BuildError::DuplicateName(name));
        }
        let mut tys = Vec::with_capacity(inputs.len());
        for (i, v) in inputs.iter().enumerate() {
            match self.value_type(*v) {
                Some(t) => tys.push(t),
                None => {
                    return Err(BuildError::BadInput {
                        node: name,
                        input: i,
                        value: v.to_string(),
                    })
                }
            }
        }
        let outputs = infer(&op, &tys, &self.mesh).map_err(|source| BuildError::Type {
            node: name.clone(),
            op: op.name(),
            source,
        })?;
        Ok(self.push_unchecked(Node {
            name,
            op,
            inputs: inputs.to_vec(),
            outputs,
            scope,
            stage: None,
        }))
    }

    /// Appends a node as is. The caller upholds the module invariants (or validates afterwards).
    pub fn push_unchecked(&mut self, node: Node) -> NodeId {
        let id = NodeId::from_index(self.nodes.len());
        self.names.insert(node.name.clone(), id);
        self.nodes.push(node);
        id
    }

    /// Adds a named graph output.
    pub fn add_output(&mut self, name: impl Into<String>, value: impl Into<Value>) {
        self.outputs.push(GraphOutput {
            name: name.into(),
            value: value.into(),
        });
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id.index()]
    }

    /// Nodes in arena (topological) order.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = (NodeId, &Node)> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (NodeId::from_index(i), n))
    }

    /// Looks a node up by name.
    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.names.get(name).copied()
    }

    /// Type of a value, if it exists.
    pub fn value_type(&self, v: Value) -> Option<&TensorType> {
        self.nodes
            .get(v.node.index())?
            .outputs
            .get(v.output as usize)
    }

    /// Number of users of each node (graph outputs count as users).
    pub fn use_counts(&self) -> Vec<u32> {
        let mut c = vec![0u32; self.nodes.len()];
        for n in &self.nodes {
            for v in &n.inputs {
                c[v.node.index()] += 1;
            }
        }
        for o in &self.outputs {
            c[o.value.node.index()] += 1;
        }
        c
    }

    /// Removes nodes that neither reach a graph output nor communicate (a dead `send` is still an
    /// effect), keeping the order of the rest. Returns the old-to-new id map.
    pub fn compact(&mut self) -> Vec<Option<NodeId>> {
        let mut live = vec![false; self.nodes.len()];
        for o in &self.outputs {
            live[o.value.node.index()] = true;
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if matches!(n.op, Op::Send { .. }) {
                live[i] = true;
            }
        }
        for i in (0..self.nodes.len()).rev() {
            if live[i] {
                for v in &self.nodes[i].inputs {
                    live[v.node.index()] = true;
                }
            }
        }
        let mut map = vec![None; self.nodes.len()];
        let old = std::mem::take(&mut self.nodes);
        self.names.clear();
        for (i, mut n) in old.into_iter().enumerate() {
            if !live[i] {
                continue;
            }
            for v in &mut n.inputs {
                v.node = map[v.node.index()].expect("inputs precede their users");
            }
            map[i] = Some(self.push_unchecked(n));
        }
        for o in &mut self.outputs {
            o.value.node = map[o.value.node.index()].expect("outputs are live");
        }
        map
    }
}
