//! The JSON form of the IR (`model.json`, format `moe-ir/1`): reading with errors that name the
//! JSON path (and line:column for syntax and type errors), and deterministic writing.
//!
//! Nodes may appear in any order in a file; they are placed in a stable topological order (file
//! order wherever it is already topological). Inputs name a node, or `node:k` for its output `k`.
//! A node's `out` types are optional on input; when present they must equal the inferred ones.
//! `docs/FORMAT.md` documents the format; `moe-opt schema` prints its JSON Schema.

use crate::{
    validate, BuildError, Graph, Mesh, Op, PipelineSpec, Scope, TensorType, ValidationError, Value,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use thiserror::Error;

/// The format tag this version reads and writes.
pub const FORMAT: &str = "moe-ir/1";

/// A whole `model.json` document.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "moe-ir model graph",
    description = "An SPMD MoE model graph, format moe-ir/1"
)]
pub struct GraphDoc {
    /// Must be `moe-ir/1`.
    pub format: String,
    /// Model name.
    pub name: String,
    pub mesh: Mesh,
    /// Free-form facts about the model.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, serde_json::Value>,
    /// How the stages of a partitioned graph run (absent before partitioning).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineSpec>,
    pub nodes: Vec<NodeDoc>,
    pub outputs: Vec<OutputDoc>,
}

/// One node of a `model.json`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeDoc {
    /// Unique name (no `:` or whitespace).
    pub name: String,
    pub op: Op,
    /// Input values: `node` or `node:k` for output `k`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    pub scope: Scope,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<u32>,
    /// Output types; inferred when absent, checked when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out: Option<Vec<TensorType>>,
}

/// A named graph output.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputDoc {
    pub name: String,
    /// `node` or `node:k`.
    pub value: String,
}

/// A `model.json` that cannot be read, with the JSON path it is about.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{}{kind}", location(path, *line_col))]
pub struct JsonError {
    /// JSON path such as `nodes[3].inputs[1]` (empty for the document itself).
    pub path: String,
    /// Line and column (1-based), known for syntax and type errors.
    pub line_col: Option<(usize, usize)>,
    pub kind: JsonErrorKind,
}

fn location(path: &str, lc: Option<(usize, usize)>) -> String {
    match (path.is_empty(), lc) {
        (true, None) => String::new(),
        (true, Some((l, c))) => format!("at line {l}, column {c}: "),
        (false, None) => format!("at {path}: "),
        (false, Some((l, c))) => format!("at {path} (line {l}, column {c}): "),
    }
}

/// What is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JsonErrorKind {
    #[error("{0}")]
    Syntax(String),
    #[error("format is `{0}`, this tool reads `{FORMAT}`")]
    Format(String),
    #[error("no node is named `{0}`")]
    UnknownNode(String),
    #[error("`{0}` is not a value reference (`node` or `node:k`)")]
    BadRef(String),
    #[error("cycle through nodes {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error("{0}")]
    Build(BuildError),
    #[error("declared output types [{declared}] differ from the inferred [{inferred}]")]
    OutMismatch { declared: String, inferred: String },
    #[error("{0}")]
    Invalid(ValidationError),
    #[error("{0}")]
    Mesh(crate::MeshError),
    #[error("node name `{name}` is used before, by nodes[{first}]")]
    DuplicateName { name: String, first: usize },
    #[error("{0}")]
    TooLarge(crate::limits::TooLarge),
}

fn err(path: impl Into<String>, kind: JsonErrorKind) -> JsonError {
    JsonError {
        path: path.into(),
        line_col: None,
        kind,
    }
}

fn parse_ref(s: &str) -> Option<(&str, u32)> {
    match s.split_once(':') {
        None => Some((s, 0)),
        Some((n, k)) => Some((n, k.parse().ok()?)),
    }
}

/// Reads a graph from `model.json` text and validates it.
pub fn from_json(text: &str) -> Result<Graph, JsonError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    let doc: GraphDoc = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        JsonError {
            path: if path == "." { String::new() } else { path },
            line_col: Some((inner.line(), inner.column())),
            kind: JsonErrorKind::Syntax(strip_position(&inner.to_string())),
        }
    })?;
    from_doc(doc)
}

/// serde_json appends " at line L column C"; the location is reported separately.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Builds and validates a graph from a parsed document.
pub fn from_doc(doc: GraphDoc) -> Result<Graph, JsonError> {
    if doc.format != FORMAT {
        return Err(err("format", JsonErrorKind::Format(doc.format)));
    }
    doc.mesh
        .check()
        .map_err(|e| err("mesh", JsonErrorKind::Mesh(e)))?;
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, n) in doc.nodes.iter().enumerate() {
        if let Some(&first) = index.get(n.name.as_str()) {
            return Err(err(
                format!("nodes[{i}].name"),
                JsonErrorKind::DuplicateName {
                    name: n.name.clone(),
                    first,
                },
            ));
        }
        index.insert(n.name.clone(), i);
    }
    // Resolve references to (file index, output).
    let mut refs: Vec<Vec<(usize, u32)>> = Vec::with_capacity(doc.nodes.len());
    for (i, n) in doc.nodes.iter().enumerate() {
        let mut r = Vec::with_capacity(n.inputs.len());
        for (j, s) in n.inputs.iter().enumerate() {
            let path = format!("nodes[{i}].inputs[{j}]");
            let (name, k) =
                parse_ref(s).ok_or_else(|| err(&path, JsonErrorKind::BadRef(s.clone())))?;
            let &src = index
                .get(name)
                .ok_or_else(|| err(&path, JsonErrorKind::UnknownNode(name.into())))?;
            r.push((src, k));
        }
        refs.push(r);
    }
    let order = topo_order(&doc.nodes, &refs)?;
    let nodes_len = doc.nodes.len();
    let mut g = Graph::new(doc.name, doc.mesh);
    g.meta = doc.meta;
    g.pipeline = doc.pipeline;
    let mut id_of = vec![None; nodes_len];
    let mut nodes: Vec<Option<NodeDoc>> = doc.nodes.into_iter().map(Some).collect();
    for i in order {
        let n = nodes[i].take().expect("each node is placed once");
        let inputs: Vec<Value> = refs[i]
            .iter()
            .map(|&(src, k)| Value {
                node: id_of[src].expect("topological order"),
                output: k,
            })
            .collect();
        // A leaf's declared type is kept in the op: put it in canonical form (one `split` entry
        // per dim, partial axes in mesh order), as every type of a graph is.
        let mut op = n.op;
        if let Some(t) = op.declared_type() {
            crate::limits::check_shape(&t.shape, t.dtype.size_bytes()).map_err(|e| {
                err(
                    declared_shape_path(i, &op, &e.quantity),
                    JsonErrorKind::TooLarge(e),
                )
            })?;
        }
        if let Some(t) = op.declared_type_mut() {
            *t = std::mem::replace(t, TensorType::new(t.dtype, [])).canonical(&g.mesh);
        }
        let id = g
            .add(n.name, op, &inputs, n.scope)
            .map_err(|e| err(format!("nodes[{i}]"), JsonErrorKind::Build(e)))?;
        g.node_mut(id).stage = n.stage;
        if let Some(declared) = n.out {
            let declared: Vec<_> = declared.into_iter().map(|t| t.canonical(&g.mesh)).collect();
            if declared != g.node(id).outputs {
                return Err(err(
                    format!("nodes[{i}].out"),
                    JsonErrorKind::OutMismatch {
                        declared: list(&declared),
                        inferred: list(&g.node(id).outputs),
                    },
                ));
            }
        }
        id_of[i] = Some(id);
    }
    for (i, o) in doc.outputs.into_iter().enumerate() {
        let path = format!("outputs[{i}].value");
        let (name, k) = parse_ref(&o.value)
            .ok_or_else(|| err(&path, JsonErrorKind::BadRef(o.value.clone())))?;
        let &src = index
            .get(name)
            .ok_or_else(|| err(&path, JsonErrorKind::UnknownNode(name.into())))?;
        g.add_output(
            o.name,
            Value {
                node: id_of[src].expect("all nodes placed"),
                output: k,
            },
        );
    }
    validate(&g).map_err(|e| err("", JsonErrorKind::Invalid(e)))?;
    Ok(g)
}

/// `nodes[i].op.weight.shape[d]` (or `.shape` for the whole shape): where a leaf declares a size.
fn declared_shape_path(i: usize, op: &Op, q: &crate::limits::Quantity) -> String {
    let ty = if matches!(op, Op::Recv { .. }) {
        "recv.ty"
    } else {
        op.name()
    };
    match q {
        crate::limits::Quantity::Dim(d) => format!("nodes[{i}].op.{ty}.shape[{d}]"),
        _ => format!("nodes[{i}].op.{ty}.shape"),
    }
}

fn list(ts: &[TensorType]) -> String {
    ts.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Kahn's algorithm, always taking the smallest file index that is ready: a file that is already
/// in topological order keeps its order.
fn topo_order(nodes: &[NodeDoc], refs: &[Vec<(usize, u32)>]) -> Result<Vec<usize>, JsonError> {
    let n = nodes.len();
    let mut pending = vec![0usize; n];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, r) in refs.iter().enumerate() {
        for &(src, _) in r {
            pending[i] += 1;
            users[src].push(i);
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> =
        (0..n).filter(|&i| pending[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &u in &users[i] {
            pending[u] -= 1;
            if pending[u] == 0 {
                ready.push(Reverse(u));
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    // Walk back through unplaced inputs from the first unplaced node until a node repeats.
    let start = (0..n)
        .find(|&i| pending[i] > 0)
        .expect("some node is unplaced");
    let mut path = vec![start];
    let mut cur = start;
    loop {
        let next = refs[cur]
            .iter()
            .map(|&(s, _)| s)
            .find(|&s| pending[s] > 0)
            .expect("an unplaced node has an unplaced input");
        if let Some(p) = path.iter().position(|&x| x == next) {
            let mut cyc: Vec<String> = path[p..]
                .iter()
                .rev()
                .map(|&x| nodes[x].name.clone())
                .collect();
            cyc.push(cyc[0].clone());
            return Err(err(
                format!("nodes[{}]", path[p]),
                JsonErrorKind::Cycle(cyc),
            ));
        }
        path.push(next);
        cur = next;
    }
}

fn value_ref(g: &Graph, v: Value) -> String {
    let name = &g.node(v.node).name;
    if v.output == 0 {
        name.clone()
    } else {
        format!("{name}:{}", v.output)
    }
}

/// The document form of a graph (types included).
pub fn to_doc(g: &Graph) -> GraphDoc {
    GraphDoc {
        format: FORMAT.to_string(),
        name: g.name.clone(),
        mesh: g.mesh.clone(),
        meta: g.meta.clone(),
        pipeline: g.pipeline.clone(),
        nodes: g
            .nodes()
            .map(|(_, n)| NodeDoc {
                name: n.name.clone(),
                op: n.op.clone(),
                inputs: n.inputs.iter().map(|v| value_ref(g, *v)).collect(),
                scope: n.scope,
                stage: n.stage,
                out: (n.op.declared_type().is_none()).then(|| n.outputs.clone()),
            })
            .collect(),
        outputs: g
            .outputs
            .iter()
            .map(|o| OutputDoc {
                name: o.name.clone(),
                value: value_ref(g, o.value),
            })
            .collect(),
    }
}

/// Writes `model.json` text: deterministic, one node per line.
pub fn to_json(g: &Graph) -> String {
    let doc = to_doc(g);
    let mut s = String::new();
    s.push_str("{\n");
    s.push_str(&format!("  \"format\": {},\n", one(&doc.format)));
    s.push_str(&format!("  \"name\": {},\n", one(&doc.name)));
    s.push_str(&format!("  \"mesh\": {},\n", one(&doc.mesh)));
    if !doc.meta.is_empty() {
        s.push_str(&format!("  \"meta\": {},\n", one(&doc.meta)));
    }
    if let Some(p) = &doc.pipeline {
        s.push_str(&format!("  \"pipeline\": {},\n", one(p)));
    }
    s.push_str("  \"nodes\": [");
    push_lines(&mut s, doc.nodes.iter().map(one));
    s.push_str("],\n  \"outputs\": [");
    push_lines(&mut s, doc.outputs.iter().map(one));
    s.push_str("]\n}\n");
    s
}

fn push_lines(s: &mut String, items: impl Iterator<Item = String>) {
    let mut any = false;
    for (i, it) in items.enumerate() {
        s.push_str(if i == 0 { "\n    " } else { ",\n    " });
        s.push_str(&it);
        any = true;
    }
    if any {
        s.push_str("\n  ");
    }
}

/// One-line JSON of an IR value (these contain no maps with non-string keys, so they serialize).
fn one<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("IR values serialize")
}

/// The JSON Schema of `model.json`, pretty-printed.
pub fn schema() -> String {
    let s = schemars::schema_for!(GraphDoc);
    let mut out = serde_json::to_string_pretty(&s).expect("schemas serialize");
    out.push('\n');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LAYER: &str = include_str!("../../examples/moe-layer.json");

    #[test]
    fn round_trip_is_byte_stable() {
        let g = from_json(LAYER).unwrap();
        let once = to_json(&g);
        let g2 = from_json(&once).unwrap();
        assert_eq!(g, g2);
        assert_eq!(once, to_json(&g2));
    }

    #[test]
    fn nodes_in_any_order_are_sorted_stably() {
        let mut doc: serde_json::Value = serde_json::from_str(LAYER).unwrap();
        doc["nodes"].as_array_mut().unwrap().reverse();
        let g = from_json(&doc.to_string()).unwrap();
        let names: Vec<_> = g.nodes().map(|(_, n)| n.name.as_str()).collect();
        // The reversed file is topologically sorted with the smallest file index first.
        assert_eq!(names.first(), Some(&"w_down"));
        assert_eq!(names.last(), Some(&"y"));
    }

    /// `LAYER` with the node named `name` given `shape` (a JSON array) and `meta`.
    fn layer_with(name: &str, shape: &str, meta: &str) -> String {
        let mut doc: serde_json::Value = serde_json::from_str(LAYER).unwrap();
        for n in doc["nodes"].as_array_mut().unwrap() {
            if n["name"] == name {
                let leaf = n["op"]
                    .as_object_mut()
                    .unwrap()
                    .values_mut()
                    .next()
                    .unwrap();
                leaf["shape"] = serde_json::from_str(shape).unwrap();
            }
        }
        doc["meta"] = serde_json::from_str(meta).unwrap();
        doc.to_string()
    }

    #[test]
    fn sizes_above_the_limits_are_refused_at_their_path() {
        let e = from_json(&layer_with("w_up", "[8, 32, 10000000000000000000]", "{}")).unwrap_err();
        assert_eq!(e.path, "nodes[6].op.weight.shape[2]", "{e}");
        assert!(
            e.to_string()
                .contains("dim 2 is 10000000000000000000, above the limit"),
            "{e}"
        );
        // Each dim fits, the product does not (it wrapped around in u64 before the limits).
        let e = from_json(&layer_with("w_up", "[8, 64, 1099511627776]", "{}")).unwrap_err();
        assert_eq!(e.path, "nodes[6].op.weight.shape", "{e}");
        assert!(
            e.to_string().contains("element count is 562949953421312"),
            "{e}"
        );
        // Beyond u64: a JSON syntax-level error with its line and column, not a panic.
        let e = from_json(&layer_with("w_up", "[8, 32, 100000000000000000000]", "{}")).unwrap_err();
        assert!(e.line_col.is_some(), "{e}");
        let e = from_json(&layer_with(
            "w_up",
            "[8, 32, 64]",
            r#"{"hidden": 10000000000000000000}"#,
        ))
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("meta.hidden is 10000000000000000000"),
            "{e}"
        );
        let e = from_json(&layer_with("w_up", "[8, 32, 64]", r#"{"seq": -4}"#)).unwrap_err();
        assert!(e.to_string().starts_with("meta.seq is -4"), "{e}");
        let g = from_json(&layer_with(
            "w_up",
            "[8, 32, 64]",
            r#"{"hidden": 32, "family": "x"}"#,
        ));
        assert!(g.is_ok(), "{g:?}");
    }

    #[test]
    fn sizes_derived_from_attributes_are_refused_at_the_node() {
        // capacity x token shards overflows u64 (4 ranks split the tokens).
        let text = LAYER.replace("\"capacity\": 16", "\"capacity\": 9223372036854775807");
        let e = from_json(&text).unwrap_err();
        assert_eq!(e.path, "nodes[4]", "{e}");
        assert!(
            e.to_string()
                .contains("capacity x token shards is 3.689e19"),
            "{e}"
        );
    }

    #[test]
    fn meshes_above_the_rank_limit_are_refused() {
        let text = LAYER.replace(
            r#"{"name": "ep", "size": 4, "level": "intra_node"}"#,
            r#"{"name": "ep", "size": 4, "level": "intra_node"}, {"name": "dp", "size": 4294967295, "level": "inter_node"}"#,
        );
        let e = from_json(&text).unwrap_err();
        assert_eq!(e.path, "mesh", "{e}");
        assert!(
            e.to_string().contains("number of ranks is 17179869180"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_path() {
        let e = from_json("{\"format\": \"moe-ir/1\"}").unwrap_err();
        assert!(e.to_string().contains("missing field `name`"), "{e}");
        let e = from_json("[1, 2").unwrap_err();
        assert!(e.line_col.is_some());
    }
}
