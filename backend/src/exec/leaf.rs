//! Leaves: inputs and weights (each rank's block of the full tensor), zeros, and `recv`.

use super::compute::SeededBlock;
use super::Exec;
use crate::collective::{Collectives, Tag};
use crate::error::ExecError;
use crate::rank::{self, Block};
use crate::value::{Dense, Ints, Local};
use crate::weights::seeded::{self, Init};
use crate::weights::{self, Global, Weights};
use burn::tensor::backend::{Backend, DeviceId, DeviceOps};
use moe_ir::pipeline::checkpoint_key;
use moe_ir::{NodeId, Op, TensorType, Value};
use std::collections::BTreeMap;

impl<B: Backend, C: Collectives<B> + Sync> Exec<'_, B, C> {
    /// The values of leaf `id` on `ranks` (one output).
    pub(super) fn leaf(
        &mut self,
        id: NodeId,
        ranks: &[u64],
    ) -> Result<Vec<Vec<Local<B>>>, ExecError> {
        let node = self.g.node(id);
        let ty = &node.outputs[0];
        let key = checkpoint_key(&node.name);
        let local = rank::local_shape(ty, self.mesh);
        let out = match &node.op {
            Op::Zeros(_) => ranks
                .iter()
                .map(|&r| zeros(ty, &local, &self.device_for(r)))
                .collect(),
            Op::Recv { channel, .. } => {
                let mut out = Vec::with_capacity(ranks.len());
                for &r in ranks {
                    let tag = Tag {
                        channel: *channel,
                        micro: self.micro,
                    };
                    let v = self.coll.recv(tag, r).ok_or(ExecError::Deadlock {
                        node: node.name.clone(),
                        channel: *channel,
                        micro: self.micro,
                        rank: r,
                    })?;
                    if v.shape() != local {
                        return Err(ExecError::Pipeline {
                            node: node.name.clone(),
                            why: format!(
                                "received a value of local shape {:?} on rank {r}, the declared type {ty} needs {local:?}",
                                v.shape()
                            ),
                        });
                    }
                    out.push(v);
                }
                out
            }
            // A leaf copied onto several stages (`name@stageS`) holds the tensor of its
            // checkpoint key: seeds and checkpoint lookups use the key.
            Op::Weight(_) => match self.weights {
                // Each rank's block is made directly, the same numbers as slicing the full tensor.
                Weights::Seeded => {
                    let init = Init::for_weight(key, ty);
                    let on_device = self.seeded_on_device(id, self.seed, key, ty, init, ranks)?;
                    match on_device {
                        Some(values) => values,
                        None => self.shards(ty, ranks, |b| {
                            Global::Float(seeded::block_values(
                                self.seed, key, &ty.shape, init, &b.offsets, &b.shape,
                            ))
                        }),
                    }
                }
                Weights::Checkpoint(_) => {
                    let global = weights::weight(self.weights, self.seed, key, ty)?;
                    let shape = global_shape(ty);
                    self.shards(ty, ranks, |b| {
                        Global::Float(rank::take_block(&global, &shape, b))
                    })
                }
            },
            Op::Input(_) => {
                let given = self.inputs.and_then(|i| i.get(&node.name, self.micro));
                let seed = weights::micro_batch_seed(self.seed, self.micro);
                // Float inputs are seeded like weights (`weights::input`): made on the device
                // where the compute seam can.
                if given.is_none() && ty.dtype.is_float() {
                    let init = Init::Uniform { std: 1.0 };
                    if let Some(v) = self.seeded_on_device(id, seed, key, ty, init, ranks)? {
                        return Ok(vec![v]);
                    }
                }
                let global = match given {
                    Some(ids) if !ty.dtype.is_float() && ids.len() as u64 == ty.numel() => {
                        Global::Int(ids.to_vec())
                    }
                    Some(ids) => {
                        return Err(self
                            .node_err(id, format!("{} ids given, the input is {ty}", ids.len())))
                    }
                    None => {
                        let bound = self.id_bound(id);
                        weights::input(seed, key, ty, bound)
                    }
                };
                let shape = global_shape(ty);
                self.shards(ty, ranks, |b| match &global {
                    Global::Float(g) => Global::Float(rank::take_block(g, &shape, b)),
                    Global::Int(g) => Global::Int(rank::take_block(g, &shape, b)),
                })
            }
            _ => unreachable!("only leaves are made here"),
        };
        Ok(vec![out])
    }

    /// Each rank's block of a value of type `ty`, made by `block` (row-major values of a block);
    /// ranks with the same block share one tensor. A leaf declared partial is held whole by
    /// coordinate 0 of its partial axes, zeros elsewhere.
    fn shards(
        &self,
        ty: &TensorType,
        ranks: &[u64],
        block: impl Fn(&Block) -> Global,
    ) -> Vec<Local<B>> {
        let mut made: BTreeMap<(Block, bool, DeviceId), Local<B>> = BTreeMap::new();
        ranks
            .iter()
            .map(|&r| {
                let coords = self.mesh.coords(r);
                let b = rank::block(ty, self.mesh, &coords);
                let holds = rank::holds_partial_leaf(ty, self.mesh, &coords);
                let device = self.device_for(r);
                made.entry((b.clone(), holds, device.id()))
                    .or_insert_with(|| {
                        if !holds {
                            return zeros(ty, &b.shape, &device);
                        }
                        match block(&b) {
                            Global::Float(v) => Local::Float(Dense::from_f32(v, &b.shape, &device)),
                            Global::Int(v) => Local::Int(Ints::new(b.shape.clone(), v)),
                        }
                    })
                    .clone()
            })
            .collect()
    }

    /// Each rank's block of seeded tensor `key` (under `seed`) made by the compute seam on the rank's device,
    /// or `None` when the seam leaves it to the host (ranks with the same block and device share
    /// one tensor, as in [`Self::shards`]).
    fn seeded_on_device(
        &self,
        id: NodeId,
        seed: u64,
        key: &str,
        ty: &TensorType,
        init: Init,
        ranks: &[u64],
    ) -> Result<Option<Vec<Local<B>>>, ExecError> {
        let Init::Uniform { std } = init else {
            return Ok(None);
        };
        if !ty.dtype.is_float() || !ty.partial.is_empty() {
            return Ok(None);
        }
        let mut made: BTreeMap<(Block, DeviceId), Local<B>> = BTreeMap::new();
        let mut out = Vec::with_capacity(ranks.len());
        for &r in ranks {
            let b = rank::block(ty, self.mesh, &self.mesh.coords(r));
            let device = self.device_for(r);
            let slot = (b.clone(), device.id());
            if let Some(v) = made.get(&slot) {
                out.push(v.clone());
                continue;
            }
            let block = SeededBlock {
                key: seeded::key(seed, key, &ty.shape),
                scale: 3f64.sqrt() * std,
                global: &ty.shape,
                offsets: &b.offsets,
                block: &b.shape,
            };
            let Some(d) = self
                .k
                .seeded(&block, &device)
                .map_err(|why| self.node_err(id, why))?
            else {
                return Ok(None);
            };
            let v = Local::Float(d);
            made.insert(slot, v.clone());
            out.push(v);
        }
        Ok(Some(out))
    }

    /// Token ids of an integer input are drawn below the smallest vocabulary of the embeddings
    /// reading it (1 when none does).
    fn id_bound(&self, id: NodeId) -> u64 {
        let me = Value::from(id);
        self.g
            .nodes()
            .filter(|(_, n)| matches!(n.op, Op::Embedding) && n.inputs.first() == Some(&me))
            .filter_map(|(_, n)| n.inputs.get(1).and_then(|&t| self.g.value_type(t)))
            .map(|t| t.shape[0])
            .min()
            .unwrap_or(1)
    }
}

/// The global shape of `ty` as sizes.
fn global_shape(ty: &TensorType) -> Vec<usize> {
    ty.shape.iter().map(|&n| n as usize).collect()
}

/// Zeros of type `ty` with local shape `shape`.
fn zeros<B: Backend>(ty: &TensorType, shape: &[usize], device: &B::Device) -> Local<B> {
    if ty.dtype.is_float() {
        Local::Float(Dense::zeros(shape, device))
    } else {
        Local::Int(Ints::new(shape.to_vec(), vec![0; shape.iter().product()]))
    }
}
