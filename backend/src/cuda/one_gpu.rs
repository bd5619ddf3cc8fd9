//! Every rank of the mesh on one GPU: the exact in-process collectives (sums, concatenations
//! and the mailbox, all burn ops on the device), driven from one host thread so that the ranks'
//! work stays on one burn-cuda stream.

use crate::collective::{Collectives, InProcess, Tag};
use crate::value::Local;
use burn::tensor::backend::Backend;

/// [`InProcess`] for ranks sharing one GPU.
#[derive(Debug)]
pub(crate) struct OneGpu<B: Backend>(pub InProcess<B>);

impl<B: Backend> Default for OneGpu<B> {
    fn default() -> Self {
        OneGpu(InProcess::default())
    }
}

impl<B: Backend> Collectives<B> for OneGpu<B> {
    fn all_reduce(&mut self, parts: Vec<Local<B>>) -> Vec<Local<B>> {
        self.0.all_reduce(parts)
    }

    fn all_gather(&mut self, parts: Vec<Local<B>>, dim: usize) -> Vec<Local<B>> {
        self.0.all_gather(parts, dim)
    }

    fn reduce_scatter(&mut self, parts: Vec<Local<B>>, dim: usize) -> Vec<Local<B>> {
        self.0.reduce_scatter(parts, dim)
    }

    fn all_to_all(
        &mut self,
        parts: Vec<Local<B>>,
        split_dim: usize,
        concat_dim: usize,
    ) -> Vec<Local<B>> {
        self.0.all_to_all(parts, split_dim, concat_dim)
    }

    fn send(&mut self, tag: Tag, to: u64, value: Local<B>) {
        self.0.send(tag, to, value);
    }

    fn recv(&mut self, tag: Tag, to: u64) -> Option<Local<B>> {
        self.0.recv(tag, to)
    }

    fn ready(&self, tag: Tag, to: u64) -> bool {
        self.0.ready(tag, to)
    }

    fn threaded(&self) -> bool {
        false
    }
}
