//! The local ops: from an IR node and one rank's input values to that rank's outputs. Each arm
//! reads the rank-dependent facts an op needs (which vocab rows, heads or experts the rank holds)
//! from the input types and the rank's coordinates, then calls the op's function.

use super::attention::{self, Heads};
use super::compute::{host_ints, plain_float};
use super::moe::{ExpertBiases, ExpertWeights};
use super::{collective, dense, moe, routing, Exec, OpResult};
use crate::collective::Collectives;
use crate::rank;
use crate::value::{Dense, Ints, Local};
use burn::tensor::backend::Backend;
use moe_ir::{Activation, FfnLayout, Node, Op, TensorType};

fn float<B: Backend>(v: Option<Local<B>>) -> OpResult<Dense<B>> {
    plain_float(v.ok_or("missing input")?)
}

fn ints<B: Backend>(v: Option<Local<B>>) -> OpResult<Ints> {
    host_ints(v.ok_or("missing input")?)
}

/// An integer input as it is (host or device integers), for the compute seam.
fn any_ints<B: Backend>(v: Option<Local<B>>) -> OpResult<Local<B>> {
    match v {
        Some(i @ (Local::Int(_) | Local::DevInt(_))) => Ok(i),
        Some(_) => Err("expected an integer input, got floats".into()),
        None => Err("missing input".into()),
    }
}

impl<B: Backend, C: Collectives<B> + Sync> Exec<'_, B, C> {
    fn input_type(&self, node: &Node, i: usize) -> OpResult<&TensorType> {
        node.inputs
            .get(i)
            .and_then(|&v| self.g.value_type(v))
            .ok_or_else(|| format!("input {i} has no type"))
    }

    /// Runs local op `node` on rank `r` with the rank's `inputs`.
    pub(super) fn local(
        &self,
        node: &Node,
        r: u64,
        inputs: Vec<Local<B>>,
    ) -> OpResult<Vec<Local<B>>> {
        let coords = self.mesh.coords(r);
        let mut it = inputs.into_iter();
        let f = |d: Dense<B>| Ok(vec![Local::Float(d)]);
        match &node.op {
            Op::Embedding => {
                let ids = ints(it.next())?;
                let table = float(it.next())?;
                let tt = self.input_type(node, 1)?;
                let first = rank::block(tt, self.mesh, &coords).offsets[0];
                f(dense::embedding(&ids, table, first, tt.shape[0] as usize)?)
            }
            Op::Matmul => f(self.k.matmul(float(it.next())?, float(it.next())?)?),
            Op::Transpose => f(dense::transpose(float(it.next())?)),
            Op::Scale { factor } => {
                let x = float(it.next())?;
                f(Dense {
                    t: x.t * factor.0,
                    rank: x.rank,
                })
            }
            Op::BatchMatmul => {
                let (a, b) = (float(it.next())?, float(it.next())?);
                f(Dense::of(self.k.bmm(a.to::<3>(), b.to::<3>())?))
            }
            Op::Add => f(dense::add(float(it.next())?, float(it.next())?)),
            Op::Mul => f(dense::mul(float(it.next())?, float(it.next())?)),
            Op::Gelu => f(self.k.activation(Activation::Gelu, float(it.next())?)?),
            Op::Silu => f(self.k.activation(Activation::Silu, float(it.next())?)?),
            Op::Relu => f(self.k.activation(Activation::Relu, float(it.next())?)?),
            Op::Sigmoid => f(dense::unary(float(it.next())?, None)),
            Op::Swiglu => {
                let (g, u) = (float(it.next())?, float(it.next())?);
                f(self.k.gated(Activation::Silu, g, u)?)
            }
            Op::Softmax => f(dense::softmax(float(it.next())?)),
            Op::RmsNorm { eps } => {
                let (x, w) = (float(it.next())?, float(it.next())?);
                f(self.k.norm(x, w, None, eps.0, false)?)
            }
            Op::LayerNorm { eps, bias } => {
                let (x, w) = (float(it.next())?, float(it.next())?);
                let b = if *bias { Some(float(it.next())?) } else { None };
                f(self.k.norm(x, w, b, eps.0, true)?)
            }
            Op::Attention(a) => {
                let (q, k, v) = (float(it.next())?, float(it.next())?, float(it.next())?);
                let ks = if a.shared_k_dim > 0 {
                    Some(float(it.next())?)
                } else {
                    None
                };
                let sinks = if a.sinks {
                    Some(float(it.next())?)
                } else {
                    None
                };
                let table = if a.position_bias.is_some() {
                    Some(float(it.next())?)
                } else {
                    None
                };
                let (qi, qn) =
                    rank::axis_block(self.mesh, &coords, self.input_type(node, 0)?.split_of(1));
                let (ki, kn) =
                    rank::axis_block(self.mesh, &coords, self.input_type(node, 1)?.split_of(1));
                let heads = Heads {
                    first_head: (qi * (a.heads / qn)) as usize,
                    first_kv_head: (ki * (a.kv_heads / kn)) as usize,
                };
                // Attributes the compute seam's kernels do not take run the burn body (with the
                // seam's batched matmul).
                if table.is_some() || a.clip_qkv.is_some() || a.softmax_scale.is_some() {
                    let bmm = |x, y| self.k.bmm(x, y);
                    return f(attention::attention_with(
                        a, q, k, v, ks, sinks, table, heads, &bmm,
                    )?);
                }
                f(self.k.attention(a, q, k, v, ks, sinks, heads)?)
            }
            Op::Router(a) => {
                let logits = float(it.next())?;
                let bias = if a.select_bias {
                    Some(float(it.next())?)
                } else {
                    None
                };
                let (idx, w) = self.k.router(a, logits, bias)?;
                Ok(vec![idx, Local::Float(w)])
            }
            Op::Dispatch { experts, capacity } => {
                let x = float(it.next())?;
                let idx = any_ints(it.next())?;
                Ok(vec![self.k.dispatch(
                    x,
                    idx,
                    *experts as usize,
                    *capacity as usize,
                )?])
            }
            Op::Combine { experts, capacity } => {
                let y = it.next().ok_or("missing input")?;
                let idx = any_ints(it.next())?;
                let w = float(it.next())?;
                f(self
                    .k
                    .combine(y, idx, w, *experts as usize, *capacity as usize)?)
            }
            Op::LocalRoutes {
                experts,
                axis,
                capacity,
                token_groups,
            } => {
                let idx = any_ints(it.next())?;
                let w = float(it.next())?;
                let (index, size) = rank::axis_block(self.mesh, &coords, &[axis]);
                let count = (*experts / size) as usize;
                let rows = rank::local_shape(&node.outputs[0], self.mesh)[0];
                let le = routing::LocalExperts {
                    experts: *experts as usize,
                    first: index as usize * count,
                    count,
                    capacity: *capacity,
                    token_groups: *token_groups as usize,
                    rows,
                };
                Ok(self.k.local_routes(idx, w, le)?.into())
            }
            Op::IndexSelect => {
                let x = float(it.next())?;
                f(self.k.index_select(x, any_ints(it.next())?)?)
            }
            Op::IndexAdd { scaled } => {
                let buf = float(it.next())?;
                let ids = any_ints(it.next())?;
                let src = float(it.next())?;
                let scale = if *scaled {
                    Some(float(it.next())?)
                } else {
                    None
                };
                f(self.k.index_add(buf, ids, src, scale)?)
            }
            Op::ExpertFfn {
                layout,
                act,
                gated,
                bias,
            } => {
                let x = it.next().ok_or("missing input")?;
                let counts = match layout {
                    FfnLayout::Grouped => Some(any_ints(it.next())?),
                    FfnLayout::Padded => None,
                };
                let up = float(it.next())?.to::<3>();
                let gate = if *gated {
                    Some(float(it.next())?.to::<3>())
                } else {
                    None
                };
                let down = float(it.next())?.to::<3>();
                let mut w = ExpertWeights {
                    up,
                    gate,
                    down,
                    act: *act,
                    biases: None,
                };
                if !*bias {
                    return match counts {
                        Some(c) => f(self.k.expert_ffn_grouped(plain_float(x)?, c, &w)?),
                        None => Ok(vec![self.k.expert_ffn_padded(x, &w)?]),
                    };
                }
                // Experts with biases run the burn bodies (the compute seam's kernels take
                // none), with the seam's batched matmul.
                let up_b = float(it.next())?.to::<2>();
                let gate_b = if *gated {
                    Some(float(it.next())?.to::<2>())
                } else {
                    None
                };
                let down_b = float(it.next())?.to::<2>();
                w.biases = Some(ExpertBiases {
                    up: up_b,
                    gate: gate_b,
                    down: down_b,
                });
                let bmm = |a, b| self.k.bmm(a, b);
                match counts {
                    Some(c) => f(moe::expert_ffn_grouped(
                        plain_float(x)?,
                        &host_ints(c)?,
                        &w,
                        &bmm,
                    )?),
                    None => Ok(vec![Local::Float(moe::expert_ffn_padded(
                        plain_float(x)?,
                        &w,
                        &bmm,
                    )?)]),
                }
            }
            Op::Shard { axis, dim } => {
                let x = it.next().ok_or("missing input")?;
                let (index, size) = rank::axis_block(self.mesh, &coords, &[axis]);
                Ok(vec![collective::shard(
                    &x,
                    *dim,
                    index as usize,
                    size as usize,
                )])
            }
            // Leaves, transfers and collectives run in the executor's own arms (`Exec::node`);
            // listed so that a new op is a compile error here until it is executed.
            op @ (moe_ir::leaf_ops!() | moe_ir::transfer_ops!() | moe_ir::collective_ops!()) => {
                Err(format!("`{}` is not a local op", op.name()))
            }
        }
    }
}
