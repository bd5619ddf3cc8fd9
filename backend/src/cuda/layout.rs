//! Views between the executor's tensors and NCCL's flat buffers.
//!
//! NCCL moves flat runs of elements: `all_gather` writes the members' buffers one after the other,
//! `reduce_scatter` gives member `i` the `i`-th contiguous chunk of the sum, a send moves one
//! contiguous run. The IR's collectives concatenate and split along any dim. The two functions
//! here turn one into the other with burn ops on the device: [`blocks_outermost`] before NCCL
//! reads, [`concat_blocks`] after NCCL writes.

use crate::value::Dense;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `[outer, n, inner]` of `shape` around `dim`: the product of the dims before it, the dim, the
/// product of the dims after it.
pub(crate) fn around(shape: &[usize], dim: usize) -> [usize; 3] {
    let outer = shape[..dim].iter().product();
    let inner = shape[dim + 1..].iter().product();
    [outer, shape[dim], inner]
}

/// `shape` with dim `dim` multiplied by `num` and divided by `den`.
pub(crate) fn scaled(shape: &[usize], dim: usize, num: usize, den: usize) -> Vec<usize> {
    let mut s = shape.to_vec();
    s[dim] = s[dim] * num / den;
    s
}

/// `x`'s `w` equal blocks along logical dim `dim`, made outermost: `[w, outer, n / w, inner]`,
/// so that once contiguous, block `i` is the `i`-th of `w` equal runs of the flat buffer.
/// `x.shape()[dim]` must be a multiple of `w` (the IR's typing rules guarantee it).
pub(crate) fn blocks_outermost<B: Backend>(x: Dense<B>, dim: usize, w: usize) -> Tensor<B, 4> {
    let [outer, n, inner] = around(&x.shape(), dim);
    x.t.reshape([outer, w, n / w, inner]).swap_dims(0, 1)
}

/// A flat buffer holding `w` tensors of shape `block` one after the other, as the blocks
/// concatenated along logical dim `dim` (in buffer order).
pub(crate) fn concat_blocks<B: Backend>(
    flat: Tensor<B, 1>,
    w: usize,
    block: &[usize],
    dim: usize,
) -> Dense<B> {
    let [outer, b, inner] = around(block, dim);
    let t = flat
        .reshape([w, outer, b, inner])
        .swap_dims(0, 1)
        .reshape([outer, w * b, inner]);
    Dense::of(t).reshape(&scaled(block, dim, w, 1))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! The layouts with NCCL's transport simulated on the host (flat concatenation, flat sum,
    //! contiguous chunks) give exactly what the exact in-process collectives give.

    use super::*;
    use crate::collective::{Collectives, InProcess};
    use crate::testing::{dense, Cpu};
    use crate::value::Local;

    /// Three ranks' `[2, 6, 3]` tensors with distinct entries.
    fn parts() -> Vec<Dense<Cpu>> {
        (0..3)
            .map(|r| {
                let v: Vec<f64> = (0..36).map(|i| (100 * r + i) as f64).collect();
                dense(&v, &[2, 6, 3])
            })
            .collect()
    }

    fn flat(x: Tensor<Cpu, 4>) -> Vec<f64> {
        Dense::of(x).to_host()
    }

    fn host(v: Vec<Local<Cpu>>) -> Vec<Vec<f64>> {
        v.iter().map(Local::to_host).collect()
    }

    fn locals(p: &[Dense<Cpu>]) -> Vec<Local<Cpu>> {
        p.iter().cloned().map(Local::Float).collect()
    }

    fn tensor1(v: Vec<f64>) -> Tensor<Cpu, 1> {
        let n = v.len();
        dense(&v, &[n]).to::<1>()
    }

    #[test]
    fn gathered_buffers_concatenate_along_any_dim() {
        let p = parts();
        // ncclAllGather: every member receives the members' buffers one after the other.
        let buffer: Vec<f64> = p.iter().flat_map(|d| d.to_host()).collect();
        for dim in 0..3 {
            let got = concat_blocks(tensor1(buffer.clone()), 3, &[2, 6, 3], dim);
            let want = InProcess::default().all_gather(locals(&p), dim);
            assert_eq!(got.shape(), want[0].shape(), "dim {dim}");
            assert_eq!(got.to_host(), want[0].to_host(), "dim {dim}");
        }
    }

    /// ncclReduceScatter simulated: member i gets the i-th contiguous run of the elementwise sum
    /// of the members' buffers.
    fn reduce_scatter_runs(p: &[Dense<Cpu>], dim: usize) -> Vec<Vec<f64>> {
        let w = p.len();
        let n: usize = p[0].shape().iter().product();
        let sum = p
            .iter()
            .map(|d| flat(blocks_outermost(d.clone(), dim, w)))
            .fold(vec![0.0; n], |acc, v| {
                acc.iter().zip(v).map(|(a, b)| a + b).collect()
            });
        sum.chunks(n / w).map(<[f64]>::to_vec).collect()
    }

    #[test]
    fn scattered_chunks_are_the_blocks_of_the_sum() {
        let p = parts();
        let want = host(InProcess::default().reduce_scatter(locals(&p), 1));
        assert_eq!(reduce_scatter_runs(&p, 1), want);
        let two = &p[..2];
        for dim in [0, 1] {
            let want = host(InProcess::default().reduce_scatter(locals(two), dim));
            assert_eq!(reduce_scatter_runs(two, dim), want, "dim {dim}");
        }
    }

    #[test]
    fn exchanged_chunks_are_the_all_to_all() {
        let p = parts();
        for (split, concat) in [(1, 0), (1, 2), (1, 1)] {
            // Grouped send/recv: member j sends its i-th run to member i, which stores it as its
            // j-th run.
            let sent: Vec<Vec<f64>> = p
                .iter()
                .map(|d| flat(blocks_outermost(d.clone(), split, 3)))
                .collect();
            let run = 36 / 3;
            let want = InProcess::default().all_to_all(locals(&p), split, concat);
            for (i, w) in want.iter().enumerate() {
                let buffer: Vec<f64> = sent
                    .iter()
                    .flat_map(|s| s[i * run..(i + 1) * run].to_vec())
                    .collect();
                let block = scaled(&[2, 6, 3], split, 1, 3);
                let got = concat_blocks(tensor1(buffer), 3, &block, concat);
                assert_eq!(got.shape(), w.shape(), "split {split} concat {concat}");
                assert_eq!(got.to_host(), w.to_host(), "split {split} concat {concat}");
            }
        }
    }
}
