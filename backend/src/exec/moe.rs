//! Experts and the index ops of the PPMoE form: `expert_ffn` (padded and grouped),
//! `index_select`, `index_add`.

use super::dense::{act, gated};
use super::OpResult;

/// A batched matmul `[n, M, K] @ [n, K, N]` (the compute seam's `bmm`).
pub(crate) type Bmm<'a, B> = &'a dyn Fn(Tensor<B, 3>, Tensor<B, 3>) -> OpResult<Tensor<B, 3>>;
use crate::value::{Dense, Ints};
use burn::tensor::backend::Backend;
use burn::tensor::{IndexingUpdateOp, Tensor};
use moe_ir::Activation;

/// The stacked expert weights of one `expert_ffn`: `[E, H, F]`, `[E, H, F]`, `[E, F, H]`, and
/// its biases when it has them.
#[derive(Clone, Debug)]
pub(crate) struct ExpertWeights<B: Backend> {
    pub up: Tensor<B, 3>,
    pub gate: Option<Tensor<B, 3>>,
    pub down: Tensor<B, 3>,
    pub act: Activation,
    pub biases: Option<ExpertBiases<B>>,
}

/// Per-expert biases: `[E, F]`, `[E, F]`, `[E, H]`.
#[derive(Clone, Debug)]
pub(crate) struct ExpertBiases<B: Backend> {
    pub up: Tensor<B, 2>,
    pub gate: Option<Tensor<B, 2>>,
    pub down: Tensor<B, 2>,
}

/// The experts `e..e + n` of this layer's weights and biases (as `[n, 1, width]` for biases).
struct Slice<B: Backend> {
    up: Tensor<B, 3>,
    gate: Option<Tensor<B, 3>>,
    down: Tensor<B, 3>,
    biases: Option<[Option<Tensor<B, 3>>; 3]>,
}

impl<B: Backend> ExpertWeights<B> {
    /// Experts `e..e + n`.
    fn slice(&self, e: usize, n: usize) -> Slice<B> {
        let w = |t: &Tensor<B, 3>| t.clone().narrow(0, e, n);
        let b = |t: &Tensor<B, 2>| {
            let width = t.dims()[1];
            t.clone().narrow(0, e, n).reshape([n, 1, width])
        };
        Slice {
            up: w(&self.up),
            gate: self.gate.as_ref().map(w),
            down: w(&self.down),
            biases: self
                .biases
                .as_ref()
                .map(|x| [Some(b(&x.up)), x.gate.as_ref().map(b), Some(b(&x.down))]),
        }
    }

    /// All experts.
    fn all(&self) -> Slice<B> {
        self.slice(0, self.up.dims()[0])
    }

    /// `down(act(x W_gate) * (x W_up))` or `down(act(x W_up))` for `x` `[E, C, H]` (batched over
    /// experts), each product plus its bias when there are biases.
    fn apply(&self, x: Tensor<B, 3>, s: Slice<B>, bmm: Bmm<'_, B>) -> OpResult<Tensor<B, 3>> {
        let [bu, bg, bd] = s.biases.unwrap_or([None, None, None]);
        let plus = |y: Tensor<B, 3>, b: Option<Tensor<B, 3>>| match b {
            Some(b) => y + b,
            None => y,
        };
        let u = plus(bmm(x.clone(), s.up)?, bu);
        let h = match s.gate {
            Some(g) => gated(self.act, plus(bmm(x, g)?, bg), u),
            None => act(self.act, u),
        };
        Ok(plus(bmm(h, s.down)?, bd))
    }
}

/// `expert_ffn` in the padded layout: `x` `[E, C, H]`.
///
/// Most slots of a dropless capacity buffer are empty (all-zero rows): when fewer than 3/4 of the
/// rows hold data, only those rows are computed (gathered per expert, run as the grouped layout,
/// scattered back), which gives the same numbers as the batched computation on the filled rows
/// (without biases an empty row's output is zero either way; with biases empty slots are never
/// read, see the op's typing rule).
pub(crate) fn expert_ffn_padded<B: Backend>(
    x: Dense<B>,
    w: &ExpertWeights<B>,
    bmm: Bmm<'_, B>,
) -> OpResult<Dense<B>> {
    let [e, c, h] = x.shape()[..] else {
        return Err("slots must have rank 3".into());
    };
    let mass = Dense::of(x.clone().to::<3>().abs().sum_dim(2)).to_host();
    let filled: Vec<usize> = (0..e * c).filter(|&r| mass[r] != 0.0).collect();
    if filled.len() * 4 >= e * c * 3 {
        let y = w.apply(x.to::<3>(), w.all(), bmm)?;
        return Ok(Dense::of(y));
    }
    let device = x.t.device();
    if filled.is_empty() {
        return Ok(Dense::zeros(&[e, c, h], &device));
    }
    let mut counts = vec![0i64; e];
    for &r in &filled {
        counts[r / c] += 1;
    }
    let ids = Ints::new(
        vec![filled.len()],
        filled.iter().map(|&r| r as i64).collect(),
    );
    let flat = Dense::of(x.to::<2>());
    let rows = index_select(flat.clone(), &ids)?;
    let y = expert_ffn_grouped(rows, &Ints::new(vec![e], counts), w, bmm)?;
    let out = index_add(Dense::zeros(&[e * c, h], &device), &ids, y, None)?;
    Ok(out.reshape(&[e, c, h]))
}

/// `expert_ffn` in the grouped layout: rows `[N, H]`, the first `counts[0]` for local expert 0,
/// the next `counts[1]` for expert 1, ...; rows past the sum are padding and give zeros.
pub(crate) fn expert_ffn_grouped<B: Backend>(
    x: Dense<B>,
    counts: &Ints,
    w: &ExpertWeights<B>,
    bmm: Bmm<'_, B>,
) -> OpResult<Dense<B>> {
    let [n, h] = x.shape()[..] else {
        return Err("rows must have rank 2".into());
    };
    let experts = w.up.dims()[0];
    if counts.data.len() != experts {
        return Err(format!(
            "{} counts for {experts} local experts",
            counts.data.len()
        ));
    }
    let total: i64 = counts.data.iter().sum();
    if counts.data.iter().any(|&c| c < 0) || total as usize > n {
        return Err(format!("counts {:?} do not fit the {n} rows", counts.data));
    }
    let device = x.t.device();
    let x = x.to::<2>();
    let mut parts = Vec::new();
    let mut at = 0;
    for (e, &c) in counts.data.iter().enumerate() {
        let c = c as usize;
        if c == 0 {
            continue;
        }
        let rows = x.clone().narrow(0, at, c).reshape([1, c, h]);
        let y = w.apply(rows, w.slice(e, 1), bmm)?;
        parts.push(y.reshape([c, h]));
        at += c;
    }
    if at < n {
        parts.push(Tensor::zeros([n - at, h], &device));
    }
    Ok(Dense::of(Tensor::cat(parts, 0)))
}

/// `index_select(x, ids)`: row `ids[i]` of `x` `[T, H]`, zero for ids `>= T`.
pub(crate) fn index_select<B: Backend>(x: Dense<B>, ids: &Ints) -> OpResult<Dense<B>> {
    let [t, h] = x.shape()[..] else {
        return Err("rows must have rank 2".into());
    };
    if let Some(bad) = ids.data.iter().find(|&&i| i < 0) {
        return Err(format!("negative row id {bad}"));
    }
    let device = x.t.device();
    let ids: Vec<i64> = ids.data.iter().map(|&i| i.min(t as i64)).collect();
    let ext = Tensor::cat(vec![x.to::<2>(), Tensor::zeros([1, h], &device)], 0);
    let out = ext.select(0, Ints::new(vec![ids.len()], ids).to_tensor(&device));
    Ok(Dense::of(out))
}

/// `index_add(buf, ids, src[, scale])`: `buf[ids[i]] += scale[i] * src[i]`, ids `>= T` skipped.
pub(crate) fn index_add<B: Backend>(
    buf: Dense<B>,
    ids: &Ints,
    src: Dense<B>,
    scale: Option<Dense<B>>,
) -> OpResult<Dense<B>> {
    let [t, h] = buf.shape()[..] else {
        return Err("the buffer must have rank 2".into());
    };
    if let Some(bad) = ids.data.iter().find(|&&i| i < 0) {
        return Err(format!("negative row id {bad}"));
    }
    let device = buf.t.device();
    let mut src = src.to::<2>();
    if let Some(s) = scale {
        let n = s.shape()[0];
        src = src * s.t.reshape([n, 1]);
    }
    // Skipped rows land in an appended scratch row.
    let ids: Vec<i64> = ids.data.iter().map(|&i| i.min(t as i64)).collect();
    let ext = Tensor::cat(vec![buf.to::<2>(), Tensor::zeros([1, h], &device)], 0);
    let out = ext.select_assign(
        0,
        Ints::new(vec![ids.len()], ids).to_tensor(&device),
        src,
        IndexingUpdateOp::Add,
    );
    Ok(Dense::of(out.narrow(0, 0, t)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, dense};

    type Cpu = crate::testing::Cpu;

    fn bmm(a: Tensor<Cpu, 3>, b: Tensor<Cpu, 3>) -> OpResult<Tensor<Cpu, 3>> {
        Ok(a.matmul(b))
    }

    /// Two experts, H = 1, F = 1: expert 0 doubles then relu, expert 1 triples (up), down 1.
    fn weights(gate: bool) -> ExpertWeights<crate::testing::Cpu> {
        ExpertWeights {
            up: dense(&[2., 3.], &[2, 1, 1]).to::<3>(),
            gate: gate.then(|| dense(&[1., -1.], &[2, 1, 1]).to::<3>()),
            down: dense(&[1., 1.], &[2, 1, 1]).to::<3>(),
            act: Activation::Relu,
            biases: None,
        }
    }

    #[test]
    fn padded_experts_run_per_expert() {
        let x = dense(&[1., -1., 2., 5.], &[2, 2, 1]);
        let y = expert_ffn_padded(x.clone(), &weights(false), &bmm).unwrap();
        assert_eq!(y.to_host(), vec![2., 0., 6., 15.]);
        // Gated: relu(x * g) * (x * up).
        let y = expert_ffn_padded(x, &weights(true), &bmm).unwrap();
        assert_eq!(y.to_host(), vec![2., 0., 0., 0.]);
        // No filled slot at all: zeros.
        let z = expert_ffn_padded(dense(&[0.; 4], &[2, 2, 1]), &weights(true), &bmm).unwrap();
        assert_eq!(z.to_host(), vec![0.; 4]);
        // Mostly empty slots: only the filled rows are computed, with the same results.
        let x = dense(&[0., 0., 3., 0., 0., 0., 0., 2.], &[2, 4, 1]);
        let y = expert_ffn_padded(x, &weights(false), &bmm).unwrap();
        assert_eq!(y.to_host(), vec![0., 0., 6., 0., 0., 0., 0., 6.]);
    }

    #[test]
    fn grouped_experts_follow_counts_and_zero_the_padding() {
        let x = dense(&[1., 2., 3., 9.], &[4, 1]);
        let y = expert_ffn_grouped(
            x.clone(),
            &Ints::new(vec![2], vec![1, 2]),
            &weights(false),
            &bmm,
        );
        assert_eq!(y.unwrap().to_host(), vec![2., 6., 9., 0.]);
        let y = expert_ffn_grouped(
            x.clone(),
            &Ints::new(vec![2], vec![0, 3]),
            &weights(false),
            &bmm,
        );
        assert_eq!(y.unwrap().to_host(), vec![3., 6., 9., 0.]);
        assert!(
            expert_ffn_grouped(x, &Ints::new(vec![2], vec![3, 3]), &weights(false), &bmm).is_err()
        );
    }

    #[test]
    fn index_select_and_add_skip_out_of_range_ids() {
        let x = dense(&[1., 2., 3., 4.], &[2, 2]);
        let ids = Ints::new(vec![3], vec![1, 2, 0]);
        let s = index_select(x, &ids).unwrap();
        assert_eq!(s.to_host(), vec![3., 4., 0., 0., 1., 2.]);
        let buf = dense(&[0., 0., 10., 10.], &[2, 2]);
        let src = dense(&[1., 1., 5., 5., 2., 2.], &[3, 2]);
        let scale = dense(&[0.5, 7., 2.], &[3]);
        let y = index_add(buf.clone(), &ids, src.clone(), Some(scale)).unwrap();
        assert_close(&y.to_host(), &[4., 4., 10.5, 10.5], 0.0);
        let y = index_add(buf, &Ints::new(vec![3], vec![1, 1, 0]), src, None).unwrap();
        assert_eq!(y.to_host(), vec![2., 2., 16., 16.]);
    }
}
