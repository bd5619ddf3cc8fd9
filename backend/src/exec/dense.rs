//! Dense math on one rank's local tensors: embedding, matmuls, elementwise ops, activations,
//! softmax and norms. Each function computes exactly what the op's typing rule says on the local
//! blocks; sharding needs nothing more (a split contracted dim gives the partial sums the output
//! type declares).

use super::OpResult;
use crate::value::{Dense, Ints};
use burn::tensor::activation;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use moe_ir::Activation;

/// `embedding(ids, table)`: row `ids[i] - first` of the local table rows `first..first + rows`,
/// zero for ids outside them (a vocab-parallel table: the rank's partial sum).
pub(crate) fn embedding<B: Backend>(
    ids: &Ints,
    table: Dense<B>,
    first: usize,
    vocab: usize,
) -> OpResult<Dense<B>> {
    let [rows, _] = table.shape()[..] else {
        return Err("the table must have rank 2".into());
    };
    if let Some(&bad) = ids.data.iter().find(|&&i| i < 0 || i as usize >= vocab) {
        return Err(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        ));
    }
    let device = table.t.device();
    // Rows of other ranks (a vocab-parallel table) read row 0 and are then zeroed.
    let mine = |i: i64| (first..first + rows).contains(&(i as usize));
    let local: Vec<i64> = ids
        .data
        .iter()
        .map(|&i| if mine(i) { i - first as i64 } else { 0 })
        .collect();
    let n = local.len();
    let mut out = table
        .to::<2>()
        .select(0, Ints::new(vec![n], local).to_tensor(&device));
    if !ids.data.iter().all(|&i| mine(i)) {
        let keep: Vec<f64> = ids
            .data
            .iter()
            .map(|&i| f64::from(u8::from(mine(i))))
            .collect();
        out = out * Dense::<B>::from_host(keep, &[n, 1], &device).to::<2>();
    }
    Ok(Dense::of(out))
}

/// `matmul(a, b)`: `[..., M, K] @ [K, N]`.
pub(crate) fn matmul<B: Backend>(a: Dense<B>, b: Dense<B>) -> Dense<B> {
    let mut shape = a.shape();
    let n = b.shape()[1];
    let y = a.to::<2>().matmul(b.to::<2>());
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    Dense::of(y).reshape(&shape)
}

/// `transpose(x)`: swaps the last two dims.
pub(crate) fn transpose<B: Backend>(x: Dense<B>) -> Dense<B> {
    let r = x.rank;
    Dense {
        t: x.t.swap_dims(2, 3),
        rank: r,
    }
}

/// `add(a, b)` with right-aligned broadcasting.
pub(crate) fn add<B: Backend>(a: Dense<B>, b: Dense<B>) -> Dense<B> {
    let rank = a.rank.max(b.rank);
    Dense { t: a.t + b.t, rank }
}

/// `mul(a, b)` with right-aligned broadcasting.
pub(crate) fn mul<B: Backend>(a: Dense<B>, b: Dense<B>) -> Dense<B> {
    let rank = a.rank.max(b.rank);
    Dense { t: a.t * b.t, rank }
}

/// `1 / (1 + exp(-x))` in the backend's precision. (burn's own sigmoid computes in f32 whatever
/// the backend's float type, and burn-ndarray's SIMD `recip` is an approximation whose error
/// depends on the tensor's length, so neither is used.)
pub(crate) fn sigmoid<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    Tensor::ones_like(&x) / (x.neg().exp() + 1.0)
}

/// The activation `act` of `x`. `oai_swiglu` needs the up projection and is handled by
/// [`gated`]; alone it is its gate part.
pub(crate) fn act<B: Backend, const D: usize>(act: Activation, x: Tensor<B, D>) -> Tensor<B, D> {
    match act {
        Activation::Silu => x.clone() / (x.neg().exp() + 1.0),
        Activation::Gelu => activation::gelu(x),
        Activation::Relu => activation::relu(x),
        Activation::OaiSwiglu => {
            let g = x.clamp_max(7.0);
            g.clone() * sigmoid(g * 1.702)
        }
    }
}

/// `act(gate) * up`; GPT-OSS's clamped SwiGLU is `gate * sigmoid(1.702 gate) * (up + 1)` with the
/// gate clamped above at 7 and up to [-7, 7].
pub(crate) fn gated<B: Backend, const D: usize>(
    a: Activation,
    gate: Tensor<B, D>,
    up: Tensor<B, D>,
) -> Tensor<B, D> {
    match a {
        Activation::OaiSwiglu => act(a, gate) * (up.clamp(-7.0, 7.0) + 1.0),
        _ => act(a, gate) * up,
    }
}

/// `gelu`, `silu`, `relu` (as activations) and `sigmoid`.
pub(crate) fn unary<B: Backend>(x: Dense<B>, f: Option<Activation>) -> Dense<B> {
    let r = x.rank;
    let t = match f {
        Some(a) => act(a, x.t),
        None => sigmoid(x.t),
    };
    Dense { t, rank: r }
}

/// `softmax(x)` over the last dim.
pub(crate) fn softmax<B: Backend>(x: Dense<B>) -> Dense<B> {
    let r = x.rank;
    Dense {
        t: activation::softmax(x.t, 3),
        rank: r,
    }
}

/// `rms_norm` (`bias` None, `center` false) or `layer_norm` over each consecutive group of
/// `len(w)` elements of the last dim: `(x - mean) / sqrt(var + eps) * w + b`, mean 0 for RMSNorm.
pub(crate) fn norm<B: Backend>(
    x: Dense<B>,
    w: Dense<B>,
    b: Option<Dense<B>>,
    eps: f64,
    center: bool,
) -> Dense<B> {
    let shape = x.shape();
    let h = shape.last().copied().unwrap_or(1);
    let g = w.shape()[0];
    let rows = shape.iter().product::<usize>() / h;
    let mut t: Tensor<B, 3> = x.t.reshape([rows, h / g, g]);
    if center {
        let mean = t.clone().mean_dim(2);
        t = t - mean;
    }
    let var = t.clone().square().mean_dim(2);
    let mut y = t / (var + eps).sqrt() * w.t.reshape([1, 1, g]);
    if let Some(b) = b {
        y = y + b.t.reshape([1, 1, g]);
    }
    Dense::of(y).reshape(&shape)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, dense};

    #[test]
    fn embedding_reads_rows_and_zeroes_other_ranks_rows() {
        let table = dense(&[1., 2., 3., 4., 5., 6.], &[3, 2]);
        let ids = Ints::new(vec![3], vec![2, 0, 2]);
        let y = embedding(&ids, table.clone(), 0, 3).unwrap();
        assert_eq!(y.to_host(), vec![5., 6., 1., 2., 5., 6.]);
        // Rows 1..2 of a vocab of 4 held by this rank (vocab-parallel).
        let part = dense(&[3., 4.], &[1, 2]);
        let y = embedding(&Ints::new(vec![2], vec![1, 3]), part, 1, 4).unwrap();
        assert_eq!(y.to_host(), vec![3., 4., 0., 0.]);
        assert!(embedding(&Ints::new(vec![1], vec![3]), table, 0, 3).is_err());
    }

    #[test]
    fn matmul_flattens_leading_dims() {
        let a = dense(&[1., 2., 3., 4., 5., 6., 7., 8.], &[2, 2, 2]);
        let b = dense(&[1., 0., 1., 0., 1., 1.], &[2, 3]);
        let y = matmul(a, b);
        assert_eq!(y.shape(), vec![2, 2, 3]);
        assert_eq!(
            y.to_host(),
            vec![1., 2., 3., 3., 4., 7., 5., 6., 11., 7., 8., 15.]
        );
    }

    #[test]
    fn transpose_and_the_default_batch_matmul() {
        let x = dense(&[1., 2., 3., 4., 5., 6.], &[2, 3]);
        assert_eq!(transpose(x).to_host(), vec![1., 4., 2., 5., 3., 6.]);
        let a = dense(&[1., 2., 3., 4.], &[2, 1, 2]);
        let b = dense(&[1., 1., 2., 0.], &[2, 2, 1]);
        let y = super::super::compute::Compute::bmm(
            &super::super::compute::Burn,
            a.to::<3>(),
            b.to::<3>(),
        );
        assert_eq!(Dense::of(y.unwrap()).to_host(), vec![3., 6.]);
    }

    #[test]
    fn add_and_mul_broadcast_right_aligned() {
        let x = dense(&[1., 2., 3., 4.], &[2, 2]);
        let b = dense(&[10., 20.], &[2]);
        assert_eq!(add(x.clone(), b).to_host(), vec![11., 22., 13., 24.]);
        let g = dense(&[2., 3.], &[2, 1]);
        let y = mul(x, g);
        assert_eq!(y.shape(), vec![2, 2]);
        assert_eq!(y.to_host(), vec![2., 4., 9., 12.]);
    }

    #[test]
    fn activations_match_their_formulas() {
        let x = dense(&[-1., 0.5, 2.], &[3]);
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let silu: Vec<f64> = [-1., 0.5, 2.].iter().map(|&v| v * sig(v)).collect();
        assert_close(
            &unary(x.clone(), Some(Activation::Silu)).to_host(),
            &silu,
            1e-6,
        );
        assert_eq!(
            unary(x.clone(), Some(Activation::Relu)).to_host(),
            vec![0., 0.5, 2.]
        );
        // gelu(x) = x * Phi(x); Phi(-1) = 0.158655, Phi(0.5) = 0.691462, Phi(2) = 0.977250.
        assert_close(
            &unary(x.clone(), Some(Activation::Gelu)).to_host(),
            &[-0.158655, 0.345731, 1.954500],
            1e-5,
        );
        let sg: Vec<f64> = [-1., 0.5, 2.].iter().map(|&v| sig(v)).collect();
        assert_close(&unary(x.clone(), None).to_host(), &sg, 1e-6);
        let up = dense(&[2., 2., 2.], &[3]);
        let sw: Vec<f64> = silu.iter().map(|v| v * 2.0).collect();
        let y = super::super::compute::Compute::gated(
            &super::super::compute::Burn,
            Activation::Silu,
            x,
            up,
        );
        assert_close(&y.unwrap().to_host(), &sw, 1e-6);
    }

    #[test]
    fn oai_swiglu_clamps() {
        let gate = dense(&[10., 1.], &[2]).t;
        let up = dense(&[-20., 0.5], &[2]).t;
        let y = Dense::of(gated(Activation::OaiSwiglu, gate, up)).to_host();
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        // gate 10 -> 7, up -20 -> -7: 7 * sig(11.914) * -6; gate 1, up 0.5: sig(1.702) * 1.5.
        let want = [7.0 * sig(7.0 * 1.702) * -6.0, sig(1.702) * 1.5];
        assert_close(&y, &want, 1e-5);
    }

    #[test]
    fn softmax_is_over_the_last_dim() {
        let x = dense(&[0., 0., 1., 1.], &[2, 2]);
        assert_close(&softmax(x).to_host(), &[0.5, 0.5, 0.5, 0.5], 1e-7);
    }

    #[test]
    fn norms_work_per_group() {
        // Two groups of 2: [3, 4] -> rms 3.5355; [0, 2] -> rms 1.4142.
        let x = dense(&[3., 4., 0., 2.], &[1, 4]);
        let w = dense(&[1., 2.], &[2]);
        let y = norm(x.clone(), w.clone(), None, 1e-12, false);
        let r1 = (12.5f64).sqrt();
        let r2 = 2f64.sqrt();
        assert_close(&y.to_host(), &[3. / r1, 8. / r1, 0., 4. / r2], 1e-6);
        // LayerNorm: [3, 4] -> [-1, 1]; [0, 2] -> [-1, 1]; times w plus b.
        let b = dense(&[0.5, 0.5], &[2]);
        let y = norm(x, w, Some(b), 1e-12, true);
        assert_close(&y.to_host(), &[-0.5, 2.5, -0.5, 2.5], 1e-6);
    }
}
