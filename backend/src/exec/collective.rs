//! Collective ops: the ranks of each group of the op's axis hand their values to the
//! [`Collectives`] layer together. `shard`, the local inverse of `all_gather`, is here too.

use super::{pipeline_axis, Exec};
use crate::collective::{chunk, Collectives};
use crate::error::ExecError;
use crate::value::Local;
use burn::tensor::backend::Backend;
use moe_ir::{NodeId, Op};

impl<B: Backend, C: Collectives<B> + Sync> Exec<'_, B, C> {
    /// Runs collective `id` on `ranks`, group by group.
    pub(super) fn collective(
        &mut self,
        id: NodeId,
        ranks: &[u64],
    ) -> Result<Vec<Vec<Local<B>>>, ExecError> {
        let node = self.g.node(id);
        let axis = node.op.collective_axis().unwrap_or_default();
        if Some(axis) == pipeline_axis(self.g) {
            return Err(ExecError::Pipeline {
                node: node.name.clone(),
                why: format!("a collective over the pipeline axis `{axis}` would join ranks of different stages; stages communicate by send/recv"),
            });
        }
        let v = node.inputs[0];
        let mut result: Vec<Option<Local<B>>> = vec![None; ranks.len()];
        for (i, &r) in ranks.iter().enumerate() {
            if result[i].is_some() {
                continue;
            }
            let group = self.mesh.group(r, axis);
            let mut at = Vec::with_capacity(group.len());
            for m in &group {
                let pos = ranks.iter().position(|x| x == m).ok_or_else(|| {
                    self.node_err(
                        id,
                        format!(
                            "rank {m} of the `{axis}` group of rank {r} does not run this node"
                        ),
                    )
                })?;
                at.push(pos);
            }
            let parts = group
                .iter()
                .map(|&m| self.get(id, v, m))
                .collect::<Result<Vec<_>, _>>()?;
            // A group of one rank: every collective is the identity, whatever the value's form.
            if let ([only], [pos]) = (&parts[..], &at[..]) {
                result[*pos] = Some(only.clone());
                continue;
            }
            let parts: Vec<Local<B>> = parts.into_iter().map(Local::plain).collect();
            let outs = match &node.op {
                Op::AllReduce { .. } => self.coll.all_reduce(parts),
                Op::AllGather { dim, .. } => self.coll.all_gather(parts, *dim),
                Op::ReduceScatter { dim, .. } => self.coll.reduce_scatter(parts, *dim),
                Op::AllToAll {
                    split_dim,
                    concat_dim,
                    ..
                } => self.coll.all_to_all(parts, *split_dim, *concat_dim),
                _ => unreachable!("only collectives have an axis"),
            };
            if let Some(why) = self.coll.take_failure() {
                return Err(self.node_err(id, format!("group of rank {r}: {why}")));
            }
            if outs.len() != group.len() {
                return Err(self.node_err(id, "the collective layer returned a result per member count that differs from the group"));
            }
            for (pos, o) in at.into_iter().zip(outs) {
                result[pos] = Some(o);
            }
        }
        Ok(vec![result.into_iter().flatten().collect()])
    }
}

/// `shard(x)`: the rank's block `coord` of `size` along `dim`.
pub(super) fn shard<B: Backend>(x: &Local<B>, dim: usize, coord: usize, size: usize) -> Local<B> {
    chunk(x, dim, coord, size)
}
