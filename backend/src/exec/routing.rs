//! Routing: the router's expert choice, capacity slots, `dispatch`/`combine` and `local_routes`.
//!
//! Decisions (which experts, which slot, which pair is dropped) are computed on the host from the
//! scores, exactly and in a fixed order, so every rank and every backend makes the same ones (see
//! docs/FORMAT.md, "Routing and capacity semantics"):
//! - experts are ranked by score + bias, ties to the lower expert index (groups likewise, ties to
//!   the lower group index);
//! - capacity is filled in choice-major priority: all first choices in token order, then all
//!   second choices, ...; a pair whose expert is full is dropped.
//!
//! The data movement (gathers of rows) runs on the burn device.

use super::OpResult;
use crate::value::{Dense, Ints};
use burn::tensor::activation;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use moe_ir::{Capacity, GroupScore, RouterAttrs, Score};
use std::cmp::Ordering;

/// Descending by key, ties to the lower index.
fn by_key_desc(keys: &[f64]) -> impl Fn(&usize, &usize) -> Ordering + '_ {
    move |&a, &b| keys[b].total_cmp(&keys[a]).then(a.cmp(&b))
}

/// The experts chosen for one token (best first) from its `scores` and optional selection bias.
pub(crate) fn choose_one(scores: &[f64], bias: Option<&[f64]>, a: &RouterAttrs) -> Vec<usize> {
    let e = scores.len();
    let keys: Vec<f64> = match bias {
        Some(b) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
        None => scores.to_vec(),
    };
    let mut eligible: Vec<usize> = (0..e).collect();
    if let Some(g) = a.groups {
        let (groups, size) = (g.groups as usize, e / g.groups as usize);
        let gscore: Vec<f64> = (0..groups)
            .map(|i| {
                let mut m: Vec<usize> = (i * size..(i + 1) * size).collect();
                m.sort_by(by_key_desc(&keys));
                match g.group_score {
                    GroupScore::Max => keys[m[0]],
                    GroupScore::Top2Sum => keys[m[0]] + keys[m[1]],
                }
            })
            .collect();
        let mut order: Vec<usize> = (0..groups).collect();
        order.sort_by(by_key_desc(&gscore));
        let mut kept = order[..g.topk_groups as usize].to_vec();
        kept.sort_unstable();
        eligible = kept
            .iter()
            .flat_map(|&i| i * size..(i + 1) * size)
            .collect();
    }
    eligible.sort_by(by_key_desc(&keys));
    eligible.truncate(a.k as usize);
    eligible
}

/// The router on host scores `[t, e]` (row-major): indices `[t, k]` and weights `[t, k]`.
pub(crate) fn choose(
    scores: &[f64],
    bias: Option<&[f64]>,
    e: usize,
    a: &RouterAttrs,
) -> (Vec<i64>, Vec<f64>) {
    let t = scores.len() / e.max(1);
    let k = a.k as usize;
    let mut idx = Vec::with_capacity(t * k);
    let mut w = Vec::with_capacity(t * k);
    for row in scores.chunks(e) {
        let chosen = choose_one(row, bias, a);
        let mut ws: Vec<f64> = chosen.iter().map(|&i| row[i]).collect();
        if a.normalize {
            let s: f64 = ws.iter().sum();
            if s != 0.0 {
                ws.iter_mut().for_each(|x| *x /= s);
            }
        }
        idx.extend(chosen.iter().map(|&i| i as i64));
        w.extend(ws.iter().map(|x| x * a.scale.0));
    }
    (idx, w)
}

/// `router(logits[, select_bias])`: scores on the device, choice on the host.
pub(crate) fn router<B: Backend>(
    a: &RouterAttrs,
    logits: Dense<B>,
    bias: Option<Dense<B>>,
) -> OpResult<(Ints, Dense<B>)> {
    let shape = logits.shape();
    let (t, e) = (shape[0], shape[1]);
    let device = logits.t.device();
    let scores = match a.score {
        Score::Softmax => activation::softmax(logits.to::<2>(), 1),
        Score::Sigmoid => super::dense::sigmoid(logits.to::<2>()),
    };
    let scores = Dense::of(scores).to_host();
    let bias = bias.map(|b| b.to_host());
    let (idx, w) = choose(&scores, bias.as_deref(), e, a);
    let k = a.k as usize;
    Ok((
        Ints::new(vec![t, k], idx),
        Dense::from_host(w, &[t, k], &device),
    ))
}

/// Checks that every index names one of `experts` experts.
pub(crate) fn check_experts(idx: &Ints, experts: usize) -> OpResult<()> {
    match idx.data.iter().find(|&&e| e < 0 || e as usize >= experts) {
        Some(bad) => Err(format!(
            "routing index {bad} is not one of the {experts} experts"
        )),
        None => Ok(()),
    }
}

/// For each (token, choice) pair of `idx` `[t, k]` (row-major): its slot in its expert's buffer,
/// or `None` when dropped. At most `cap` pairs per expert (`None`: unbounded), filled in
/// choice-major priority.
pub(crate) fn slots(
    idx: &[i64],
    k: usize,
    experts: usize,
    cap: Option<usize>,
) -> Vec<Option<usize>> {
    let t = idx.len() / k.max(1);
    let mut fill = vec![0usize; experts];
    let mut out = vec![None; idx.len()];
    for j in 0..k {
        for tok in 0..t {
            let e = idx[tok * k + j] as usize;
            if cap.is_none_or(|c| fill[e] < c) {
                out[tok * k + j] = Some(fill[e]);
                fill[e] += 1;
            }
        }
    }
    out
}

/// `dispatch(x, idx)`: `[t, h]` -> `[experts, cap, h]`, each kept pair's token row at its slot.
pub(crate) fn dispatch<B: Backend>(
    x: Dense<B>,
    idx: &Ints,
    experts: usize,
    cap: usize,
) -> OpResult<Dense<B>> {
    check_experts(idx, experts)?;
    let [t, h] = x.shape()[..] else {
        return Err("tokens must have rank 2".into());
    };
    let k = idx.shape[1];
    let device = x.t.device();
    // Slot (e, s) reads row src[e * cap + s] of x, or the appended zero row t.
    let mut src = vec![t as i64; experts * cap];
    for (p, s) in slots(&idx.data, k, experts, Some(cap)).iter().enumerate() {
        if let Some(s) = s {
            src[idx.data[p] as usize * cap + s] = (p / k) as i64;
        }
    }
    let ext = Tensor::cat(vec![x.to::<2>(), Tensor::zeros([1, h], &device)], 0);
    let out = ext.select(0, Ints::new(vec![src.len()], src).to_tensor(&device));
    Ok(Dense::of(out.reshape([experts, cap, h])))
}

/// `combine(y, idx, w)`: `[experts, cap, h]` -> `[t, h]`, each token the weighted sum of its kept
/// pairs' slot rows (choices in order).
pub(crate) fn combine<B: Backend>(
    y: Dense<B>,
    idx: &Ints,
    w: Dense<B>,
    experts: usize,
    cap: usize,
) -> OpResult<Dense<B>> {
    check_experts(idx, experts)?;
    let h = y.shape()[2];
    let [t, k] = idx.shape[..] else {
        return Err("indices must have rank 2".into());
    };
    let device = y.t.device();
    let flat = y.to::<2>();
    let ext = Tensor::cat(vec![flat, Tensor::zeros([1, h], &device)], 0);
    let w = w.to::<2>();
    let dropped = (experts * cap) as i64;
    let s = slots(&idx.data, k, experts, Some(cap));
    let mut out: Tensor<B, 2> = Tensor::zeros([t, h], &device);
    for j in 0..k {
        let rows: Vec<i64> = (0..t)
            .map(|tok| match s[tok * k + j] {
                Some(slot) => idx.data[tok * k + j] * cap as i64 + slot as i64,
                None => dropped,
            })
            .collect();
        let g = ext
            .clone()
            .select(0, Ints::new(vec![t], rows).to_tensor(&device));
        out = out + g * w.clone().narrow(1, j, 1);
    }
    Ok(Dense::of(out))
}

/// Where a rank's experts sit among all experts, and how pairs are kept.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LocalExperts {
    /// All routed experts.
    pub experts: usize,
    /// The first of this rank's experts.
    pub first: usize,
    /// This rank's experts.
    pub count: usize,
    pub capacity: Capacity,
    /// Equal consecutive token groups, each with its own capacity.
    pub token_groups: usize,
    /// Rows of the output (the typing rule's bound).
    pub rows: usize,
}

/// `local_routes` on the host: `(token ids [rows], weights [rows], counts [count])` of the pairs
/// routed to this rank's experts, grouped by expert, tokens ascending; unused rows hold token id
/// `t` and weight 0.
pub(crate) fn local_routes(
    idx: &Ints,
    w: &[f64],
    le: LocalExperts,
) -> OpResult<(Vec<i64>, Vec<f64>, Vec<i64>)> {
    check_experts(idx, le.experts)?;
    let [t, k] = idx.shape[..] else {
        return Err("indices must have rank 2".into());
    };
    let per = t / le.token_groups.max(1);
    let cap = match le.capacity {
        Capacity::Dropless => None,
        Capacity::Slots(c) => Some(c as usize),
    };
    // (local expert, token, weight) of every kept pair.
    let mut kept: Vec<(usize, usize, f64)> = Vec::new();
    for g in 0..le.token_groups {
        let part = &idx.data[g * per * k..(g + 1) * per * k];
        for (p, s) in slots(part, k, le.experts, cap).iter().enumerate() {
            let e = part[p] as usize;
            if s.is_some() && (le.first..le.first + le.count).contains(&e) {
                let tok = g * per + p / k;
                kept.push((e - le.first, tok, w[tok * k + p % k]));
            }
        }
    }
    if kept.len() > le.rows {
        return Err(format!(
            "{} routed pairs exceed the {} rows of the output",
            kept.len(),
            le.rows
        ));
    }
    kept.sort_by_key(|&(e, tok, _)| (e, tok));
    let mut counts = vec![0i64; le.count];
    let mut ids = vec![t as i64; le.rows];
    let mut ws = vec![0.0; le.rows];
    for (i, &(e, tok, wt)) in kept.iter().enumerate() {
        counts[e] += 1;
        ids[i] = tok as i64;
        ws[i] = wt;
    }
    Ok((ids, ws, counts))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testing::{assert_close, dense};
    use moe_ir::{Groups, F64};

    fn attrs(k: u64) -> RouterAttrs {
        RouterAttrs {
            experts: 4,
            k,
            score: Score::Softmax,
            normalize: false,
            scale: F64(1.0),
            groups: None,
            select_bias: false,
        }
    }

    #[test]
    fn ties_go_to_the_lower_expert() {
        let a = attrs(2);
        assert_eq!(choose_one(&[0.1, 0.3, 0.3, 0.3], None, &a), vec![1, 2]);
        assert_eq!(choose_one(&[0.2, 0.2, 0.2, 0.2], None, &a), vec![0, 1]);
        // Best first, whatever the index.
        assert_eq!(choose_one(&[0.1, 0.2, 0.3, 0.4], None, &a), vec![3, 2]);
    }

    #[test]
    fn bias_selects_but_does_not_weigh() {
        let a = RouterAttrs {
            select_bias: true,
            normalize: true,
            scale: F64(2.0),
            ..attrs(2)
        };
        let (idx, w) = choose(&[0.4, 0.3, 0.2, 0.1], Some(&[0., 0., 0.5, 0.]), 4, &a);
        assert_eq!(idx, vec![2, 0]);
        assert_close(&w, &[2.0 * 0.2 / 0.6, 2.0 * 0.4 / 0.6], 1e-12);
    }

    #[test]
    fn groups_limit_the_choice() {
        // Two groups of 2; group 0 = {0.5, 0.0}, group 1 = {0.3, 0.3}.
        let s = [0.5, 0.0, 0.3, 0.3];
        let g = |group_score| RouterAttrs {
            groups: Some(Groups {
                groups: 2,
                topk_groups: 1,
                group_score,
            }),
            ..attrs(2)
        };
        // Max: group 0 (0.5) wins; its two experts are chosen, 1 despite its zero score.
        assert_eq!(choose_one(&s, None, &g(GroupScore::Max)), vec![0, 1]);
        // Top-2 sum: group 1 (0.6) beats group 0 (0.5).
        assert_eq!(choose_one(&s, None, &g(GroupScore::Top2Sum)), vec![2, 3]);
        // Tied groups: the lower group wins.
        let t = [0.3, 0.3, 0.3, 0.3];
        assert_eq!(choose_one(&t, None, &g(GroupScore::Top2Sum)), vec![0, 1]);
    }

    #[test]
    fn router_scores_with_softmax_or_sigmoid() {
        let logits = dense(&[0., 0., 0., 3f64.ln()], &[1, 4]);
        let (idx, w) = router(&attrs(1), logits.clone(), None).unwrap();
        assert_eq!(idx.data, vec![3]);
        assert_close(&w.to_host(), &[0.5], 1e-6);
        let sig = RouterAttrs {
            score: Score::Sigmoid,
            ..attrs(1)
        };
        let (_, w) = router(&sig, logits, None).unwrap();
        assert_close(&w.to_host(), &[0.75], 1e-6);
    }

    #[test]
    fn capacity_is_filled_choice_major() {
        // 3 tokens, k = 2; expert 0 is everyone's second choice, expert 1 token 2's first.
        let idx = [1, 0, 2, 0, 1, 0];
        // Capacity 2: first choices take expert 1 slots 0, 1 and expert 2 slot 0; then second
        // choices of tokens 0 and 1 take expert 0's two slots, token 2's is dropped.
        assert_eq!(
            slots(&idx, 2, 3, Some(2)),
            vec![Some(0), Some(0), Some(0), Some(1), Some(1), None]
        );
        // Capacity 1: token 2's first choice (expert 1) is dropped before any second choice.
        assert_eq!(
            slots(&idx, 2, 3, Some(1)),
            vec![Some(0), Some(0), Some(0), None, None, None]
        );
    }

    #[test]
    fn dispatch_then_combine_applies_weights_and_drops() {
        let x = dense(&[1., 10., 2., 20., 3., 30.], &[3, 2]);
        let idx = Ints::new(vec![3, 2], vec![1, 0, 2, 0, 1, 0]);
        let d = dispatch(x, &idx, 3, 2).unwrap();
        assert_eq!(
            d.to_host(),
            vec![1., 10., 2., 20., 1., 10., 3., 30., 2., 20., 0., 0.]
        );
        let w = dense(&[0.5, 0.25, 1., 1., 2., 3.], &[3, 2]);
        let y = combine(d, &idx, w, 3, 2).unwrap();
        // Token 2's second choice is dropped: 2 * row 3 only.
        assert_eq!(y.to_host(), vec![0.75, 7.5, 4., 40., 6., 60.]);
        assert!(dispatch(dense(&[1.], &[1, 1]), &Ints::new(vec![1, 1], vec![3]), 3, 1).is_err());
    }

    #[test]
    fn local_routes_keep_what_dispatch_keeps_per_token_group() {
        // 4 tokens in 2 groups of 2, k = 1, 2 experts on 2 ranks; capacity 1 per group.
        let idx = Ints::new(vec![4, 1], vec![0, 0, 1, 0]);
        let w = [0.1, 0.2, 0.3, 0.4];
        let le = |first, capacity, token_groups| LocalExperts {
            experts: 2,
            first,
            count: 1,
            capacity,
            token_groups,
            rows: 4,
        };
        let (ids, ws, counts) = local_routes(&idx, &w, le(0, Capacity::Slots(1), 2)).unwrap();
        // Group 0 keeps token 0 (token 1 dropped); group 1 keeps token 3 for expert 0.
        assert_eq!(ids, vec![0, 3, 4, 4]);
        assert_eq!(ws, vec![0.1, 0.4, 0.0, 0.0]);
        assert_eq!(counts, vec![2]);
        let (ids, _, counts) = local_routes(&idx, &w, le(1, Capacity::Slots(1), 2)).unwrap();
        assert_eq!((ids, counts), (vec![2, 4, 4, 4], vec![1]));
        // One group of 4 with capacity 1 would keep only token 0 for expert 0.
        let (ids, _, _) = local_routes(&idx, &w, le(0, Capacity::Slots(1), 1)).unwrap();
        assert_eq!(ids, vec![0, 4, 4, 4]);
        let (ids, _, counts) = local_routes(&idx, &w, le(0, Capacity::Dropless, 1)).unwrap();
        assert_eq!((ids, counts), (vec![0, 1, 3, 4], vec![3]));
    }
}
