//! Emits the remapped graph node by node, in the original order, inserting the layout changes
//! (`shard`, `all_gather`, `all_reduce`) the plan implies.

use super::plan::{Plan, Role, WeightLayout};
use super::RemapError;
use moe_ir::{BuildError, Graph, Mesh, Node, NodeId, Op, Scope, TensorType, Value};
use std::collections::HashMap;

const TP: &str = "tp";

pub(super) struct Emitter<'a> {
    g: &'a Graph,
    plan: &'a Plan,
    tp: u64,
    out: Graph,
    map: Vec<Vec<Value>>,
    replicated: HashMap<Value, Value>,
    token_sharded: HashMap<Value, Value>,
}

impl<'a> Emitter<'a> {
    pub fn new(g: &'a Graph, mesh: Mesh, tp: u64, plan: &'a Plan) -> Emitter<'a> {
        let mut out = Graph::new(g.name.clone(), mesh);
        out.meta = g.meta.clone();
        Emitter {
            g,
            plan,
            tp,
            out,
            map: Vec::with_capacity(g.len()),
            replicated: HashMap::new(),
            token_sharded: HashMap::new(),
        }
    }

    pub fn run(mut self) -> Result<Graph, RemapError> {
        let g = self.g;
        for (id, node) in g.nodes() {
            let outs = self.node(id, node)?;
            self.map.push(outs);
        }
        for o in &g.outputs {
            let v = self.mapped(o.value);
            self.out.add_output(o.name.clone(), v);
        }
        Ok(self.out)
    }

    fn mapped(&self, v: Value) -> Value {
        self.map[v.node.index()][v.output as usize]
    }

    fn ty(&self, v: Value) -> TensorType {
        self.out
            .value_type(v)
            .cloned()
            .expect("emitted values have types")
    }

    /// A fresh name for an inserted node: taken neither in the output nor by an original node.
    fn unique(&self, base: &str) -> String {
        if self.out.find(base).is_none() && self.g.find(base).is_none() {
            return base.to_string();
        }
        (1..)
            .map(|k| format!("{base}.{k}"))
            .find(|n| self.out.find(n).is_none() && self.g.find(n).is_none())
            .expect("some suffix is free")
    }

    fn add(
        &mut self,
        name: &str,
        op: Op,
        inputs: &[Value],
        scope: Scope,
    ) -> Result<Value, BuildError> {
        self.out.add(name, op, inputs, scope).map(Value::from)
    }

    /// A layout change inserted by the remap, named after the value it converts.
    fn convert(&mut self, v: Value, op: Op, scope: Scope) -> Result<Value, RemapError> {
        let src = &self.out.node(v.node).name;
        let base = match v.output {
            0 => format!("{src}.{}", op.name()),
            o => format!("{src}.{o}.{}", op.name()),
        };
        let base = self.unique(&base);
        self.add(&base, op, &[v], scope)
            .map_err(|e| RemapError::Type {
                node: base,
                source: Box::new(e),
            })
    }

    /// `v` replicated on `tp`: partial sums all-reduced, splits all-gathered.
    fn replicated(&mut self, v: Value, scope: Scope) -> Result<Value, RemapError> {
        if let Some(r) = self.replicated.get(&v) {
            return Ok(*r);
        }
        let mut cur = v;
        if self.ty(cur).is_partial_on(TP) {
            cur = self.convert(cur, Op::AllReduce { axis: TP.into() }, scope)?;
        }
        let ty = self.ty(cur);
        for d in 0..ty.rank() {
            if ty.split_of(d).iter().any(|a| a == TP) {
                cur = self.convert(
                    cur,
                    Op::AllGather {
                        axis: TP.into(),
                        dim: d,
                    },
                    scope,
                )?;
            }
        }
        self.replicated.insert(v, cur);
        Ok(cur)
    }

    /// `v` with its token dim (0) split on `tp`, as the expert-parallel ops expect.
    fn token_sharded(&mut self, v: Value, scope: Scope) -> Result<Value, RemapError> {
        if let Some(r) = self.token_sharded.get(&v) {
            return Ok(*r);
        }
        let v = self.replicated(v, scope)?;
        let s = self.convert(
            v,
            Op::Shard {
                axis: TP.into(),
                dim: 0,
            },
            scope,
        )?;
        self.token_sharded.insert(v, s);
        Ok(s)
    }

    /// `v` with its last dim split on `tp`.
    fn split_last(&mut self, v: Value, scope: Scope) -> Result<Value, RemapError> {
        let ty = self.ty(v);
        let last = ty.rank().saturating_sub(1);
        if ty.split_of(last).last().map(String::as_str) == Some(TP) && !ty.is_partial_on(TP) {
            return Ok(v);
        }
        let r = self.replicated(v, scope)?;
        self.convert(
            r,
            Op::Shard {
                axis: TP.into(),
                dim: last,
            },
            scope,
        )
    }

    /// A token-carrying leaf's type: dims split on any old axis are split on `dp` (if any).
    fn token_type(&self, t: &TensorType, node: &str) -> Result<TensorType, RemapError> {
        if !t.partial.is_empty() {
            return Err(RemapError::Unsupported {
                node: node.into(),
                what: format!("a partial leaf ({t}) cannot be remapped"),
            });
        }
        let mut t = t.clone();
        let dp = self.out.mesh.axis("dp").is_some();
        for d in &mut t.split {
            if !d.is_empty() {
                *d = if dp {
                    vec!["dp".to_string()]
                } else {
                    Vec::new()
                };
            }
        }
        Ok(t)
    }

    fn weight_type(&self, t: &TensorType, layout: WeightLayout) -> TensorType {
        let mut t = t.clone();
        // JSON leaves may omit the split of unsplit dims.
        t.split.resize(t.rank(), Vec::new());
        let last = t.rank().saturating_sub(1);
        for (d, s) in t.split.iter_mut().enumerate() {
            let split = match layout {
                WeightLayout::Replicated => false,
                WeightLayout::Experts => !s.is_empty(),
                WeightLayout::Last => d == last,
                WeightLayout::First => d == 0,
            };
            *s = if split {
                vec![TP.to_string()]
            } else {
                Vec::new()
            };
        }
        t.partial.clear();
        t
    }

    fn leaf(&mut self, node: &Node, op: Op) -> Result<Vec<Value>, RemapError> {
        let v = self
            .add(&node.name, op, &[], node.scope)
            .map_err(|e| RemapError::Type {
                node: node.name.clone(),
                source: Box::new(e),
            })?;
        Ok(vec![v])
    }

    fn node(&mut self, id: NodeId, node: &Node) -> Result<Vec<Value>, RemapError> {
        let i = id.index();
        let scope = node.scope;
        let ins: Vec<Value> = node.inputs.iter().map(|v| self.mapped(*v)).collect();
        let type_err = |e: BuildError| RemapError::Type {
            node: node.name.clone(),
            source: Box::new(e),
        };
        let op = match node.op.collective_axis() {
            Some(ax) if self.plan.expert_axes.contains(ax) => rename_axis(&node.op),
            Some(ax) => {
                return Err(RemapError::Unsupported {
                    node: node.name.clone(),
                    what: format!(
                        "a collective over `{ax}`, which the experts are not split on, has no place in the tensor-parallel layout"
                    ),
                })
            }
            None => node.op.clone(),
        };
        let inputs: Vec<Value> = match &op {
            Op::Input(t) => {
                let t = self.token_type(t, &node.name)?;
                return self.leaf(node, Op::Input(t));
            }
            Op::Zeros(t) => {
                let t = self.token_type(t, &node.name)?;
                return self.leaf(node, Op::Zeros(t));
            }
            Op::Weight(t) => {
                let t = self.weight_type(t, self.plan.weight[i]);
                return self.leaf(node, Op::Weight(t));
            }
            Op::Recv { .. } | Op::Send { .. } => {
                return Err(RemapError::Unsupported {
                    node: node.name.clone(),
                    what: "send/recv: remap before pipeline partitioning".into(),
                })
            }
            Op::Matmul => match self.plan.role[i] {
                Role::Row => {
                    let x = self.split_last(ins[0], scope)?;
                    let y = self
                        .add(&node.name, op, &[x, ins[1]], scope)
                        .map_err(type_err)?;
                    let r = self.convert(y, Op::AllReduce { axis: TP.into() }, scope)?;
                    return Ok(vec![r]);
                }
                Role::Column | Role::Replicated => {
                    vec![self.replicated(ins[0], scope)?, ins[1]]
                }
            },
            Op::Attention(a) => {
                let mut v = Vec::with_capacity(ins.len());
                for (pos, x) in ins.iter().enumerate() {
                    let split = match pos {
                        0 => a.heads % self.tp == 0,
                        1 | 2 => a.heads % self.tp == 0 && a.kv_heads % self.tp == 0,
                        _ => false,
                    };
                    let is_sinks = a.sinks && pos + 1 == ins.len();
                    v.push(if is_sinks {
                        *x
                    } else if split {
                        self.split_last(*x, scope)?
                    } else {
                        self.replicated(*x, scope)?
                    });
                }
                v
            }
            Op::Dispatch { .. } => vec![
                self.token_sharded(ins[0], scope)?,
                self.token_sharded(ins[1], scope)?,
            ],
            Op::Combine { .. } => vec![
                ins[0],
                self.token_sharded(ins[1], scope)?,
                self.token_sharded(ins[2], scope)?,
            ],
            // Inputs as they come (replicated below if that does not type-check); collectives
            // over the experts' axis, now `tp`, keep the expert-parallel form.
            moe_ir::pointwise_ops!()
            | moe_ir::collective_ops!()
            | Op::Embedding
            | Op::Transpose
            | Op::BatchMatmul
            | Op::Softmax
            | Op::RmsNorm { .. }
            | Op::LayerNorm { .. }
            | Op::Router(_)
            | Op::LocalRoutes { .. }
            | Op::IndexSelect
            | Op::IndexAdd { .. }
            | Op::ExpertFfn { .. }
            | Op::Shard { .. } => ins.clone(),
        };
        let first = self.add(&node.name, op.clone(), &inputs, scope);
        let v = match first {
            Ok(v) => v,
            Err(BuildError::Type { .. }) => {
                let mut rep = Vec::with_capacity(inputs.len());
                for x in &inputs {
                    rep.push(self.replicated(*x, scope)?);
                }
                self.add(&node.name, op, &rep, scope).map_err(type_err)?
            }
            Err(e) => return Err(type_err(e)),
        };
        Ok((0..node.outputs.len() as u32)
            .map(|o| Value {
                node: v.node,
                output: o,
            })
            .collect())
    }
}

/// The same collective over `tp` (`op` is one: it has a [`Op::collective_axis`]).
fn rename_axis(op: &Op) -> Op {
    let mut op = op.clone();
    if let Op::AllToAll { axis, .. }
    | Op::AllReduce { axis }
    | Op::AllGather { axis, .. }
    | Op::ReduceScatter { axis, .. }
    | Op::Shard { axis, .. } = &mut op
    {
        *axis = TP.into();
    }
    op
}
