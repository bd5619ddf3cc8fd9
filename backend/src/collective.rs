//! The collective layer: exact communication between the ranks of one group (the ranks that differ
//! only in one mesh axis' coordinate), and point-to-point messages between pipeline stages.
//!
//! The executor drives every rank it hosts node by node; at a collective it hands the trait the
//! group's local values in group order (axis coordinate 0 first) and gets each member's result
//! back in the same order. [`InProcess`] implements it exactly for ranks simulated in one process
//! (CPU); a CUDA implementation can put NCCL behind the same calls.

use crate::value::{Dense, Ints, Local};
use burn::tensor::backend::Backend;
use std::collections::BTreeMap;

/// What a point-to-point message is about: the pipeline `channel` (one `send`/`recv` pair of the
/// graph) and the micro-batch it carries. Several micro-batches of one channel may be in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Tag {
    pub channel: u32,
    pub micro: u32,
}

/// Communication between ranks. `parts[i]` is the local value of the `i`-th rank of the group
/// (in axis order); the result has one value per member, in the same order. Values of one call
/// have equal shapes (the typing rules guarantee it).
pub(crate) trait Collectives<B: Backend> {
    /// Every member gets the elementwise sum of all parts.
    fn all_reduce(&mut self, parts: Vec<Local<B>>) -> Vec<Local<B>>;
    /// Every member gets the parts concatenated along `dim`, in group order.
    fn all_gather(&mut self, parts: Vec<Local<B>>, dim: usize) -> Vec<Local<B>>;
    /// Member `i` gets block `i` (along `dim`) of the sum of all parts.
    fn reduce_scatter(&mut self, parts: Vec<Local<B>>, dim: usize) -> Vec<Local<B>>;
    /// Member `i` gets block `i` (along `split_dim`) of every part, concatenated along
    /// `concat_dim` in group order.
    fn all_to_all(
        &mut self,
        parts: Vec<Local<B>>,
        split_dim: usize,
        concat_dim: usize,
    ) -> Vec<Local<B>>;
    /// Posts `value` for rank `to` under `tag`.
    fn send(&mut self, tag: Tag, to: u64, value: Local<B>);
    /// Takes the value posted for rank `to` under `tag`, if it has been sent.
    fn recv(&mut self, tag: Tag, to: u64) -> Option<Local<B>>;
    /// Whether a value for rank `to` under `tag` is waiting.
    fn ready(&self, tag: Tag, to: u64) -> bool;
    /// The device rank `rank` computes on, when this layer places ranks itself (one GPU per
    /// rank); `None`: the executor's one device.
    fn device_of(&self, _rank: u64) -> Option<B::Device> {
        None
    }
    /// The failure of the last call, if it failed (a transport error: the values it returned are
    /// not valid). The executor reports it as the error of the node that made the call.
    fn take_failure(&mut self) -> Option<String> {
        None
    }
    /// Whether the executor may run the ranks' local ops on several host threads. GPU layers
    /// say no: burn-cuda gives every host thread its own stream (and memory pool), so one
    /// thread keeps the ranks' work on one stream per GPU.
    fn threaded(&self) -> bool {
        true
    }
}

/// Exact in-process collectives for ranks simulated in one process, with a mailbox keyed by
/// (tag, receiving rank) for send/recv.
#[derive(Debug)]
pub(crate) struct InProcess<B: Backend> {
    mailbox: BTreeMap<(Tag, u64), Local<B>>,
}

impl<B: Backend> Default for InProcess<B> {
    fn default() -> Self {
        InProcess {
            mailbox: BTreeMap::new(),
        }
    }
}

fn sum<B: Backend>(parts: Vec<Local<B>>) -> Option<Local<B>> {
    let mut it = parts.into_iter();
    let first = it.next()?;
    Some(it.fold(first, |acc, p| match (acc, p) {
        (Local::Float(a), Local::Float(b)) => Local::Float(Dense {
            t: a.t + b.t,
            rank: a.rank,
        }),
        (Local::Int(mut a), Local::Int(b)) => {
            for (x, y) in a.data.iter_mut().zip(&b.data) {
                *x += y;
            }
            Local::Int(a)
        }
        (a, b) => match (a.plain(), b.plain()) {
            (Local::Float(a), Local::Float(b)) => Local::Float(Dense {
                t: a.t + b.t,
                rank: a.rank,
            }),
            (a, _) => a,
        },
    }))
}

fn narrow<B: Backend>(v: &Local<B>, dim: usize, start: usize, len: usize) -> Local<B> {
    match v {
        Local::Float(d) => Local::Float(d.clone().narrow(dim, start, len)),
        Local::Int(i) => Local::Int(i.narrow(dim, start, len)),
        lazy => narrow(&lazy.clone().plain(), dim, start, len),
    }
}

fn cat<B: Backend>(parts: Vec<Local<B>>, dim: usize) -> Local<B> {
    let parts: Vec<Local<B>> = parts.into_iter().map(Local::plain).collect();
    if matches!(parts.first(), Some(Local::Int(_))) {
        let ints: Vec<Ints> = parts
            .into_iter()
            .filter_map(|p| match p {
                Local::Int(i) => Some(i),
                _ => None,
            })
            .collect();
        return Local::Int(Ints::cat(&ints, dim));
    }
    let dense: Vec<Dense<B>> = parts
        .into_iter()
        .filter_map(|p| match p {
            Local::Float(d) => Some(d),
            _ => None,
        })
        .collect();
    Local::Float(Dense::cat(dense, dim))
}

/// Block `i` of `n` equal blocks of `v` along `dim`.
pub(crate) fn chunk<B: Backend>(v: &Local<B>, dim: usize, i: usize, n: usize) -> Local<B> {
    let len = v.shape()[dim] / n;
    narrow(v, dim, i * len, len)
}

impl<B: Backend> Collectives<B> for InProcess<B> {
    fn all_reduce(&mut self, parts: Vec<Local<B>>) -> Vec<Local<B>> {
        let n = parts.len();
        sum(parts).map_or_else(Vec::new, |s| vec![s; n])
    }

    fn all_gather(&mut self, parts: Vec<Local<B>>, dim: usize) -> Vec<Local<B>> {
        let n = parts.len();
        vec![cat(parts, dim); n]
    }

    fn reduce_scatter(&mut self, parts: Vec<Local<B>>, dim: usize) -> Vec<Local<B>> {
        let n = parts.len();
        let Some(s) = sum(parts) else {
            return Vec::new();
        };
        (0..n).map(|i| chunk(&s, dim, i, n)).collect()
    }

    fn all_to_all(
        &mut self,
        parts: Vec<Local<B>>,
        split_dim: usize,
        concat_dim: usize,
    ) -> Vec<Local<B>> {
        let n = parts.len();
        (0..n)
            .map(|i| {
                let received = parts.iter().map(|p| chunk(p, split_dim, i, n)).collect();
                cat(received, concat_dim)
            })
            .collect()
    }

    fn send(&mut self, tag: Tag, to: u64, value: Local<B>) {
        self.mailbox.insert((tag, to), value);
    }

    fn recv(&mut self, tag: Tag, to: u64) -> Option<Local<B>> {
        self.mailbox.remove(&(tag, to))
    }

    fn ready(&self, tag: Tag, to: u64) -> bool {
        self.mailbox.contains_key(&(tag, to))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::{dense, Cpu};

    fn host(v: &[Local<Cpu>]) -> Vec<Vec<f64>> {
        v.iter().map(Local::to_host).collect()
    }

    fn parts() -> Vec<Local<Cpu>> {
        // Two ranks, each [2, 2].
        vec![
            Local::Float(dense(&[1., 2., 3., 4.], &[2, 2])),
            Local::Float(dense(&[10., 20., 30., 40.], &[2, 2])),
        ]
    }

    #[test]
    fn all_reduce_sums() {
        let out = InProcess::default().all_reduce(parts());
        assert_eq!(host(&out), vec![vec![11., 22., 33., 44.]; 2]);
    }

    #[test]
    fn all_gather_concatenates_in_group_order() {
        let out = InProcess::default().all_gather(parts(), 1);
        assert_eq!(out[0].shape(), vec![2, 4]);
        assert_eq!(host(&out)[1], vec![1., 2., 10., 20., 3., 4., 30., 40.]);
    }

    #[test]
    fn reduce_scatter_keeps_each_members_block_of_the_sum() {
        let out = InProcess::default().reduce_scatter(parts(), 0);
        assert_eq!(host(&out), vec![vec![11., 22.], vec![33., 44.]]);
    }

    #[test]
    fn all_to_all_transposes_blocks() {
        // Member i receives block i of dim 0 from everyone, concatenated along dim 1.
        let out = InProcess::default().all_to_all(parts(), 0, 1);
        assert_eq!(
            host(&out),
            vec![vec![1., 2., 10., 20.], vec![3., 4., 30., 40.]]
        );
        let ints = vec![
            Local::<Cpu>::Int(Ints::new(vec![2], vec![1, 2])),
            Local::Int(Ints::new(vec![2], vec![3, 4])),
        ];
        let out = InProcess::default().all_to_all(ints, 0, 0);
        assert_eq!(host(&out), vec![vec![1., 3.], vec![2., 4.]]);
    }

    #[test]
    fn mailbox_is_keyed_by_channel_micro_batch_and_rank() {
        let tag = |channel, micro| Tag { channel, micro };
        let mut c = InProcess::<Cpu>::default();
        assert!(!c.ready(tag(3, 0), 1));
        c.send(tag(3, 0), 1, Local::Int(Ints::new(vec![1], vec![7])));
        c.send(tag(3, 1), 1, Local::Int(Ints::new(vec![1], vec![8])));
        assert!(!c.ready(tag(3, 0), 0) && !c.ready(tag(2, 0), 1) && !c.ready(tag(3, 2), 1));
        assert_eq!(c.recv(tag(3, 1), 1).unwrap().to_host(), vec![8.]);
        assert_eq!(c.recv(tag(3, 0), 1).unwrap().to_host(), vec![7.]);
        assert!(c.recv(tag(3, 0), 1).is_none());
    }
}
