//! The text form's grammar, line by line: the header (`graph`, `mesh`, `meta`, `pipeline`),
//! section headers, node lines and the outputs. Nodes are built through [`Graph::add`], so
//! every type is inferred and a declared one is checked; the whole graph is validated last.

use super::attr::{parse_object, parse_str};
use super::cursor::Cursor;
use super::{TextError, TextErrorKind as K};
use crate::json::FORMAT;
use crate::{
    validate, BuildError, Graph, Mesh, NodeId, Op, PipelineSpec, Scope, TensorType, Value,
    DEFAULT_GPUS_PER_NODE,
};
use serde_json::Value as J;
use std::collections::HashMap;

/// An op's attributes as read.
type Attrs = serde_json::Map<String, J>;

/// Reads a graph from its text form and validates it.
pub fn from_text(text: &str) -> Result<Graph, TextError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| {
            let t = l.trim_start();
            !t.is_empty() && !t.starts_with('#')
        });
    let Some((n, l)) = lines.next() else {
        return Err(TextError {
            line: 1,
            column: 1,
            kind: K::Empty,
        });
    };
    let name = graph_line(Cursor::new(l, n))?;
    let mesh = match lines.next() {
        Some((n, l)) => mesh_line(Cursor::new(l, n))?,
        None => {
            let last = text.lines().count().max(1);
            return Err(Cursor::new("", last + 1).expected("a `mesh` line"));
        }
    };
    let mut body = Body::new(Graph::new(name, mesh));
    for (n, l) in lines {
        body.line(Cursor::new(l, n))?;
    }
    body.finish()
}

/// Reads one op as the text form spells it, without operands or types: `matmul`,
/// `all_gather{axis=tp, dim=0}` (spaces optional). Leaves (`input`, `weight`, `zeros`, `recv`)
/// are refused: their type is not part of the spelling. Errors are located on line 1.
pub fn parse_op(text: &str) -> Result<Op, TextError> {
    let mut c = Cursor::new(text, 1);
    c.skip_ws();
    let at = c.pos();
    let (name, attrs) = op_and_attrs(&mut c)?;
    end(c.clone())?;
    make_op(name, attrs, &[]).map_err(|k| c.err_at(at, k))
}

/// An op name and its attributes, if any: `router{experts=8, ...}`.
fn op_and_attrs(c: &mut Cursor<'_>) -> Result<(&'static str, Option<Attrs>), TextError> {
    c.skip_ws();
    let at = c.pos();
    let word = c.ident("an op name")?;
    let name = Op::NAMES
        .iter()
        .copied()
        .find(|n| *n == word)
        .ok_or_else(|| c.err_at(at, K::UnknownOp(word.to_string())))?;
    let attrs = if c.peek() == Some('{') {
        Some(parse_object(c)?)
    } else {
        None
    };
    Ok((name, attrs))
}

/// `graph "name" (moe-ir/1)`: the name.
fn graph_line(mut c: Cursor<'_>) -> Result<String, TextError> {
    if !c.eat_keyword("graph") {
        return Err(c.expected("`graph \"name\" (moe-ir/1)`"));
    }
    let name = c.debug_string()?;
    c.expect('(', "`(` and the format, e.g. `(moe-ir/1)`")?;
    c.skip_ws();
    let at = c.pos();
    let Some(close) = c.rest().find(')') else {
        return Err(c.expected("the format and `)`, e.g. `(moe-ir/1)`"));
    };
    let format = c.rest()[..close].trim();
    if format != FORMAT {
        return Err(c.err_at(at, K::Format(format.to_string())));
    }
    c.advance(close + 1);
    end(c)?;
    Ok(name)
}

/// `mesh dp=2:inter, ep=8:intra` or `mesh single`.
fn mesh_line(mut c: Cursor<'_>) -> Result<Mesh, TextError> {
    if !c.eat_keyword("mesh") {
        return Err(c.expected("a `mesh` line, e.g. `mesh ep=8:intra` or `mesh single`"));
    }
    c.skip_ws();
    let at = c.pos();
    let spec = c.rest().trim_end();
    if spec == "single" {
        return Ok(Mesh::single());
    }
    Mesh::parse(spec, DEFAULT_GPUS_PER_NODE).map_err(|e| c.err_at(at, K::Mesh(e)))
}

/// Nothing but whitespace may follow.
fn end(mut c: Cursor<'_>) -> Result<(), TextError> {
    if c.at_end() {
        Ok(())
    } else {
        Err(c.expected("the end of the line"))
    }
}

/// Where the body is: before the first section (header lines allowed), in a section, in the
/// outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Header,
    Section(Scope, Option<u32>),
    Outputs,
}

/// The graph being read and what the lines so far defined.
struct Body {
    g: Graph,
    at: At,
    /// `%n` of the text -> node.
    ids: HashMap<u64, NodeId>,
    /// The line of each node, by arena index (to locate validation errors).
    node_lines: Vec<usize>,
    /// Whether `meta` / `pipeline` were given.
    seen: (bool, bool),
    last_line: usize,
}

impl Body {
    fn new(g: Graph) -> Body {
        Body {
            g,
            at: At::Header,
            ids: HashMap::new(),
            node_lines: Vec::new(),
            seen: (false, false),
            last_line: 1,
        }
    }

    fn line(&mut self, mut c: Cursor<'_>) -> Result<(), TextError> {
        self.last_line = c.line();
        c.skip_ws();
        let start = c.clone();
        if self.at == At::Outputs {
            return self.output(c);
        }
        match c.word() {
            "meta" => self.header(c, start, "meta"),
            "pipeline" => self.header(c, start, "pipeline"),
            "embed" | "head" | "layer" | "outputs" => self.section(start),
            _ => self.node(start),
        }
    }

    /// `meta {...}` or `pipeline {...}`, only before the first section, once each, in that order.
    fn header(
        &mut self,
        mut c: Cursor<'_>,
        start: Cursor<'_>,
        key: &'static str,
    ) -> Result<(), TextError> {
        let (meta, pipe) = self.seen;
        let repeated = if key == "meta" { meta || pipe } else { pipe };
        if self.at != At::Header || repeated {
            return Err(start.err(K::HeaderOrder { key }));
        }
        c.skip_ws();
        let at = c.pos();
        let obj = parse_object(&mut c)?;
        end(c.clone())?;
        if key == "meta" {
            self.g.meta = obj.into_iter().collect();
            self.seen.0 = true;
        } else {
            let spec: PipelineSpec = serde_json::from_value(J::Object(obj)).map_err(|e| {
                c.err_at(
                    at,
                    K::Pipeline {
                        detail: e.to_string(),
                    },
                )
            })?;
            self.g.pipeline = Some(spec);
            self.seen.1 = true;
        }
        Ok(())
    }

    /// `embed:`, `layer N:`, `head:` (each with an optional ` [stage S]`), or `outputs:`.
    fn section(&mut self, mut c: Cursor<'_>) -> Result<(), TextError> {
        let scope = match c.word() {
            "outputs" => {
                c.expect(':', "`:` after `outputs`")?;
                self.at = At::Outputs;
                return end(c);
            }
            "embed" => Scope::Embed,
            "head" => Scope::Head,
            _ => Scope::Layer(c.int("a layer number")?),
        };
        let stage = if c.eat('[') {
            if !c.eat_keyword("stage") {
                return Err(c.expected("`stage` in `[stage S]`"));
            }
            let s = c.int("a stage number")?;
            c.expect(']', "`]` after the stage")?;
            Some(s)
        } else {
            None
        };
        c.expect(':', "`:` at the end of the section header")?;
        self.at = At::Section(scope, stage);
        end(c)
    }

    /// `[%n =] op[{attrs}] [%a, %b.1] [: types] [; name]`.
    fn node(&mut self, mut c: Cursor<'_>) -> Result<(), TextError> {
        let At::Section(scope, stage) = self.at else {
            return Err(c.err(K::NoSection));
        };
        let line = self.last_line;
        let id_at = c.pos();
        let text_id = if c.peek() == Some('%') {
            let (id, k) = c.value_ref()?;
            if k != 0 {
                return Err(c.err_at(
                    id_at,
                    K::Expected {
                        expected: "a node number without an output index before `=`",
                        found: format!("`%{id}.{k}`"),
                    },
                ));
            }
            if self.ids.contains_key(&id) {
                return Err(c.err_at(id_at, K::DuplicateId(id)));
            }
            c.expect('=', "`=` after the node number")?;
            Some(id)
        } else {
            None
        };
        c.skip_ws();
        let op_at = c.pos();
        let (op_name, attrs) = op_and_attrs(&mut c)?;
        let mut inputs = Vec::new();
        let mut input_at = Vec::new();
        c.skip_ws();
        if c.peek() == Some('%') {
            loop {
                let (v, at) = self.value(&mut c)?;
                inputs.push(v);
                input_at.push(at);
                if !c.eat(',') {
                    break;
                }
            }
        }
        let mut types = Vec::new();
        let types_at = if c.eat(':') {
            c.skip_ws();
            let at = c.pos();
            loop {
                types.push(c.tensor_type()?.canonical(&self.g.mesh));
                if !c.eat(',') {
                    break;
                }
            }
            Some(at)
        } else {
            None
        };
        let name = if c.eat(';') {
            c.rest().trim().to_string()
        } else if c.at_end() {
            match text_id {
                Some(id) => format!("_{id}"),
                None => format!("_line{line}"),
            }
        } else {
            return Err(c.expected(
                "`:` and the output types, `;` and the node name, or the end of the line",
            ));
        };
        let mut op = make_op(op_name, attrs, &types).map_err(|k| c.err_at(op_at, k))?;
        if let Some(t) = op.declared_type_mut() {
            // Through serde (`recv`) an unsplit type loses its per-dim `split` entries.
            t.normalize();
        }
        let leaf = op.declared_type().is_some();
        let id = self.g.add(name, op, &inputs, scope).map_err(|e| match &e {
            BuildError::BadInput { input, .. } => {
                c.err_at(input_at.get(*input).copied().unwrap_or(op_at), K::Build(e))
            }
            _ => c.err_at(op_at, K::Build(e)),
        })?;
        self.g.node_mut(id).stage = stage;
        self.node_lines.push(line);
        if let (Some(at), false) = (types_at, leaf) {
            let inferred = &self.g.node(id).outputs;
            if &types != inferred {
                return Err(c.err_at(
                    at,
                    K::TypeMismatch {
                        declared: list(&types),
                        inferred: list(inferred),
                    },
                ));
            }
        }
        if let Some(t) = text_id {
            self.ids.insert(t, id);
        }
        Ok(())
    }

    /// `name = %n` (a name that is not a bare word is a JSON string).
    fn output(&mut self, mut c: Cursor<'_>) -> Result<(), TextError> {
        if c.peek() == Some('%') {
            return Err(c.err(K::NodeInOutputs));
        }
        let name = parse_str(&mut c, "an output name")?;
        c.expect('=', "`=` after the output name")?;
        let (v, _) = self.value(&mut c)?;
        end(c)?;
        self.g.add_output(name, v);
        Ok(())
    }

    /// A reference `%n[.k]` to a value defined above, and where it starts.
    fn value(&self, c: &mut Cursor<'_>) -> Result<(Value, usize), TextError> {
        c.skip_ws();
        let at = c.pos();
        let (id, output) = c.value_ref()?;
        let node = *self
            .ids
            .get(&id)
            .ok_or_else(|| c.err_at(at, K::UnknownValue(id)))?;
        Ok((Value { node, output }, at))
    }

    /// Validates the graph; an error about a node points at its line.
    fn finish(self) -> Result<Graph, TextError> {
        match validate(&self.g) {
            Ok(()) => Ok(self.g),
            Err(e) => {
                let line = e
                    .node()
                    .and_then(|id| self.node_lines.get(id.index()).copied())
                    .unwrap_or(self.last_line);
                Err(TextError {
                    line,
                    column: 1,
                    kind: K::Invalid(e),
                })
            }
        }
    }
}

fn list(ts: &[TensorType]) -> String {
    ts.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The op `name{attrs}` of a node whose types are `types`: leaves take their declared type from
/// them, every other op is read from its attributes (serde, as model.json reads it).
fn make_op(name: &'static str, attrs: Option<Attrs>, types: &[TensorType]) -> Result<Op, K> {
    let attrs_err = |detail: &str| K::Attrs {
        op: name,
        detail: detail.to_string(),
    };
    let from = |v: J| serde_json::from_value::<Op>(v).map_err(|e| attrs_err(&e.to_string()));
    let leaf_type = || match types {
        [t] => Ok(t.clone()),
        _ => Err(K::LeafType { op: name }),
    };
    match (name, attrs) {
        ("input", None) => Ok(Op::Input(leaf_type()?)),
        ("weight", None) => Ok(Op::Weight(leaf_type()?)),
        ("zeros", None) => Ok(Op::Zeros(leaf_type()?)),
        ("input" | "weight" | "zeros", Some(_)) => Err(attrs_err(
            "this op takes no attributes: its type follows `:`",
        )),
        ("recv", attrs) => {
            let mut m = attrs.unwrap_or_default();
            let ty = serde_json::to_value(leaf_type()?).map_err(|e| attrs_err(&e.to_string()))?;
            if m.insert("ty".into(), ty).is_some() {
                return Err(attrs_err("`ty` is not an attribute: the type follows `:`"));
            }
            from(serde_json::json!({ name: m }))
        }
        (_, Some(m)) => from(serde_json::json!({ name: m })),
        (_, None) => from(J::String(name.into()))
            .or_else(|first| from(serde_json::json!({ name: {} })).map_err(|_| first)),
    }
}
