//! One graph on two devices (or precisions), compared: what `moe-opt check-gpu` runs to show that
//! the CUDA executor computes what the CPU executor computes.
//!
//! Both runs use the same weights and inputs (seeded by name and global shape, so identical on
//! every device). The error of an output is [`crate::diff`]'s: `max|a - b| / max(max|a|, max|b|)`.
//!
//! **Routing is discontinuous.** A router picks its top-k experts by score; when two scores of a
//! token are closer than the candidate's rounding (bf16 keeps 8 bits of mantissa, TF32 GEMMs 11),
//! the two runs can pick different experts for that token, and its row then differs by the
//! difference of two experts' outputs, however exact everything else is (measured on an H200:
//! 2 to 5% of the choices of small Mixtral and DeepSeek-V3 models flip in bf16, none in f32).
//! Attention carries that difference to other tokens of the same sequence in later layers. So the
//! comparison also captures every router's choices in both runs: a token whose set of chosen
//! experts differs at some router is *flipped*, and the rows it can have influenced are left out
//! of the tolerance test (and counted): with causal attention (causal, sliding or chunked masks,
//! or no attention) the rows from the sequence's first flipped token to the sequence's end, with
//! any other mask the whole sequence. A real fault does not hide there: it shows on the rows
//! routed alike, and a run whose routing disagrees on more than
//! [`CrossCheckOptions::max_flipped`] of the choices, or that leaves fewer than a quarter of an
//! output's rows to compare, fails outright. Capacity-limited routing (Switch) is not covered: a
//! flip there can change which other tokens are dropped, and the check then reports a mismatch.

use crate::error::ExecError;
use crate::exec::Executed;
use crate::run::{run_capturing, HostTensor, RunOptions};
use crate::verify::{diff, Diff, Incomparable};
use crate::weights::Weights;
use moe_ir::{Graph, Mask, NodeId, Op};
use std::collections::BTreeSet;
use std::time::Duration;

/// What to compare and how strictly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CrossCheckOptions {
    /// The reference run (e.g. the CPU in f32).
    pub reference: RunOptions,
    /// The run checked against it (e.g. CUDA in bf16).
    pub candidate: RunOptions,
    /// Largest accepted relative error per output, on the rows of sequences routed alike.
    pub rtol: f64,
    /// Largest accepted fraction of (token, router) choices that differ.
    pub max_flipped: f64,
}

/// One graph output compared.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputAgreement {
    pub name: String,
    /// Over every element (or why the output cannot be compared).
    pub all: Result<Diff, Incomparable>,
    /// Over the rows of the sequences routed alike in both runs (equal to `all` when no row is
    /// left out).
    pub kept: Result<Diff, Incomparable>,
    /// Rows (tokens) left out, of `rows`.
    pub rows_left_out: usize,
    pub rows: usize,
}

impl OutputAgreement {
    /// Whether the kept rows are within `rtol`.
    pub fn passes(&self, rtol: f64) -> bool {
        self.kept.as_ref().is_ok_and(|d| d.rel <= rtol)
    }
}

/// The result of [`cross_check`].
#[derive(Clone, Debug)]
pub struct CrossCheck {
    pub outputs: Vec<OutputAgreement>,
    /// (token, router) choices compared, and how many differ.
    pub choices: usize,
    pub flipped: usize,
    /// Tokens per sequence (the attention's; 1 without attention), sequences, and sequences
    /// holding a flipped token.
    pub seq: usize,
    pub sequences: usize,
    pub sequences_flipped: usize,
    /// Whether tokens see only earlier tokens of their sequence (what rows a flip influences).
    pub causal: bool,
    /// Whether every output is within tolerance on the kept rows and routing agrees enough.
    pub passed: bool,
    /// Why it did not pass.
    pub failure: Option<String>,
    /// Run times of the reference and the candidate.
    pub times: [Duration; 2],
}

/// Runs `g` as `opts.reference` and as `opts.candidate` on `weights` and compares them (see the
/// module docs).
pub fn cross_check(
    g: &Graph,
    weights: &Weights,
    opts: &CrossCheckOptions,
) -> Result<CrossCheck, ExecError> {
    let routers: BTreeSet<NodeId> = g
        .nodes()
        .filter(|(_, n)| matches!(n.op, Op::Router(_)))
        .map(|(id, _)| id)
        .collect();
    let a = run_capturing(g, weights, &opts.reference, &routers)?;
    let b = run_capturing(g, weights, &opts.candidate, &routers)?;
    Ok(compare(g, &a, &b, &routers, opts))
}

/// The expert choices `[t, k]` of token `tok`, as a sorted set.
fn chosen(idx: &HostTensor, tok: usize) -> Vec<i64> {
    let k = idx.shape.get(1).map_or(1, |&k| k as usize);
    let mut v: Vec<i64> = idx.data[tok * k..(tok + 1) * k]
        .iter()
        .map(|&x| x as i64)
        .collect();
    v.sort_unstable();
    v
}

/// Tokens per sequence (the smallest attention `seq` of `g`, 1 without attention) and whether
/// every token sees only itself and earlier tokens of its sequence (causal, sliding or chunked
/// self-attention, or none).
fn token_mixing(g: &Graph) -> (usize, bool) {
    let mut seq = usize::MAX;
    let mut causal = true;
    for (_, n) in g.nodes() {
        if let Op::Attention(a) = &n.op {
            seq = seq.min(a.seq as usize);
            causal &= a.kv_seq == a.seq && a.mask != Mask::Full;
        }
    }
    (if seq == usize::MAX { 1 } else { seq.max(1) }, causal)
}

/// The rows flips can have influenced: for each sequence of `seq` tokens holding a flipped
/// token, its rows from the first flipped one (`causal`) or all of them.
fn influenced(flipped: &BTreeSet<usize>, seq: usize, causal: bool) -> BTreeSet<usize> {
    let mut out = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for &t in flipped {
        let s = t / seq;
        if seen.insert(s) {
            let from = if causal { t } else { s * seq };
            out.extend(from..(s + 1) * seq);
        }
    }
    out
}

/// `t`'s rows (first dim) whose index satisfies `keep`.
fn rows(t: &HostTensor, keep: &dyn Fn(usize) -> bool) -> HostTensor {
    let n = t.shape.first().map_or(1, |&n| n as usize).max(1);
    let width = t.data.len() / n;
    let mut shape = t.shape.clone();
    let mut data = Vec::new();
    let mut kept = 0;
    for r in (0..n).filter(|&r| keep(r)) {
        data.extend_from_slice(&t.data[r * width..(r + 1) * width]);
        kept += 1;
    }
    if let Some(first) = shape.first_mut() {
        *first = kept;
    }
    HostTensor { shape, data }
}

/// Compares two runs of `g` that captured `routers` (see the module docs).
pub(crate) fn compare(
    g: &Graph,
    a: &Executed,
    b: &Executed,
    routers: &BTreeSet<NodeId>,
    opts: &CrossCheckOptions,
) -> CrossCheck {
    let mut flipped_tokens = BTreeSet::new();
    let (mut choices, mut flipped) = (0, 0);
    let mut tokens: Option<Option<usize>> = None;
    for id in routers {
        let (Some(ra), Some(rb)) = (a.captured.get(id), b.captured.get(id)) else {
            continue;
        };
        let (ia, ib) = (&ra[0], &rb[0]);
        let t = ia.shape.first().map_or(0, |&t| t as usize);
        tokens = Some(match tokens {
            None => Some(t),
            Some(prev) => prev.filter(|&p| p == t),
        });
        for tok in 0..t {
            choices += 1;
            if chosen(ia, tok) != chosen(ib, tok) {
                flipped += 1;
                flipped_tokens.insert(tok);
            }
        }
    }
    // Rows map to tokens only when every router saw the same tokens.
    let tokens = tokens.flatten();
    let (seq, causal) = token_mixing(g);
    let left_out = influenced(&flipped_tokens, seq, causal);
    let touched: BTreeSet<usize> = flipped_tokens.iter().map(|t| t / seq).collect();
    let sequences = tokens.map_or(0, |t| t.div_ceil(seq));
    let outputs: Vec<OutputAgreement> = a
        .outputs
        .iter()
        .map(|(name, ta)| {
            let Some((_, tb)) = b.outputs.iter().find(|(n, _)| n == name) else {
                let missing = Err(Incomparable::Missing {
                    of: "candidate run",
                });
                return OutputAgreement {
                    name: name.clone(),
                    all: missing.clone(),
                    kept: missing,
                    rows_left_out: 0,
                    rows: 0,
                };
            };
            let all = diff(ta, tb);
            let n = ta.shape.first().map_or(0, |&n| n as usize);
            if left_out.is_empty() || tokens != Some(n) {
                return OutputAgreement {
                    name: name.clone(),
                    kept: all.clone(),
                    all,
                    rows_left_out: 0,
                    rows: n,
                };
            }
            let keep = |r: usize| !left_out.contains(&r);
            let kept = diff(&rows(ta, &keep), &rows(tb, &keep));
            OutputAgreement {
                name: name.clone(),
                all,
                kept,
                rows_left_out: (0..n).filter(|&r| !keep(r)).count(),
                rows: n,
            }
        })
        .collect();
    let failure = if flipped as f64 > opts.max_flipped * choices as f64 {
        Some(format!(
            "routing differs on {flipped} of {choices} (token, router) choices, more than {:.0}%",
            opts.max_flipped * 100.0
        ))
    } else if let Some(o) = outputs.iter().find(|o| 4 * o.rows_left_out > 3 * o.rows) {
        Some(format!(
            "output `{}`: routing flips influence {} of its {} rows, too few left to compare",
            o.name, o.rows_left_out, o.rows
        ))
    } else {
        outputs
            .iter()
            .find(|o| !o.passes(opts.rtol))
            .map(|o| match &o.kept {
                Ok(d) => format!(
                    "output `{}` differs: max rel {:.3e} > rtol {:e}",
                    o.name, d.rel, opts.rtol
                ),
                Err(why) => format!("output `{}`: {why}", o.name),
            })
    };
    CrossCheck {
        outputs,
        choices,
        flipped,
        seq,
        sequences,
        sequences_flipped: touched.len(),
        causal,
        passed: failure.is_none(),
        failure,
        times: [a.total, b.total],
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::run::{Device, Precision};
    use std::collections::BTreeMap;

    fn layer() -> Graph {
        moe_ir::json::from_json(include_str!("../../examples/moe-layer.json")).unwrap()
    }

    fn opts(reference: RunOptions, candidate: RunOptions) -> CrossCheckOptions {
        CrossCheckOptions {
            reference,
            candidate,
            rtol: 1e-5,
            max_flipped: 0.1,
        }
    }

    fn cpu(precision: Precision, seed: u64) -> RunOptions {
        RunOptions {
            device: Device::Cpu,
            precision,
            seed,
            micro_batches: None,
            profile: false,
        }
    }

    #[test]
    fn f32_agrees_with_f64_on_the_cpu() {
        let g = layer();
        let o = opts(cpu(Precision::F64, 0), cpu(Precision::F32, 0));
        let c = cross_check(&g, &Weights::Seeded, &o).unwrap();
        assert!(c.passed, "{:?}", c.failure);
        assert!(c.choices > 0, "the layer's router is compared");
        assert_eq!(c.flipped, 0);
        assert!(c.outputs.iter().all(|o| o.rows_left_out == 0));
    }

    #[test]
    fn other_weights_fail() {
        let g = layer();
        let o = opts(cpu(Precision::F32, 0), cpu(Precision::F32, 1));
        let c = cross_check(&g, &Weights::Seeded, &o).unwrap();
        assert!(!c.passed);
        assert!(c.failure.is_some());
    }

    #[test]
    fn bf16_on_the_cpu_is_refused() {
        let o = opts(cpu(Precision::F32, 0), cpu(Precision::Bf16, 0));
        let e = cross_check(&layer(), &Weights::Seeded, &o).unwrap_err();
        assert!(matches!(e, ExecError::Precision { .. }), "{e}");
    }

    fn t(shape: &[u64], data: Vec<f64>) -> HostTensor {
        HostTensor {
            shape: shape.to_vec(),
            data,
        }
    }

    fn executed(idx: HostTensor, y: HostTensor) -> Executed {
        Executed {
            outputs: vec![("y".into(), y)],
            captured: BTreeMap::from([(NodeId::from_index(0), vec![idx])]),
            micro_batches: 1,
            trace: Vec::new(),
            leaves: Duration::ZERO,
            compute: Duration::ZERO,
            total: Duration::ZERO,
            op_times: BTreeMap::new(),
            device_memory: None,
        }
    }

    /// A flipped token's sequence is left out; the rest must agree.
    #[test]
    fn flipped_tokens_leave_their_sequence_out() {
        let g = layer(); // one router, no attention: sequences of one token
        let routers = BTreeSet::from([NodeId::from_index(0)]);
        // 4 tokens, top-2; token 2 picks {0, 3} in one run and {0, 1} in the other; token 1
        // only changes order.
        let ia = t(&[4, 2], vec![0., 1., 2., 1., 0., 3., 1., 2.]);
        let ib = t(&[4, 2], vec![0., 1., 1., 2., 0., 1., 1., 2.]);
        let ya = t(&[4, 1], vec![1., 2., 3., 4.]);
        let yb = t(&[4, 1], vec![1., 2., 9., 4.]);
        let o = CrossCheckOptions {
            max_flipped: 0.3,
            ..opts(RunOptions::default(), RunOptions::default())
        };
        let c = compare(
            &g,
            &executed(ia.clone(), ya.clone()),
            &executed(ib.clone(), yb),
            &routers,
            &o,
        );
        assert_eq!((c.choices, c.flipped, c.seq), (4, 1, 1));
        assert_eq!((c.sequences, c.sequences_flipped), (4, 1));
        let out = &c.outputs[0];
        assert_eq!(out.rows_left_out, 1);
        assert!(out.all.as_ref().unwrap().rel > 0.5);
        assert_eq!(out.kept.as_ref().unwrap().rel, 0.0);
        assert!(c.passed, "{:?}", c.failure);
        // A difference on a row routed alike fails.
        let yc = t(&[4, 1], vec![1., 2.5, 9., 4.]);
        let c = compare(&g, &executed(ia, ya), &executed(ib, yc), &routers, &o);
        assert!(!c.passed);
        assert!(c.failure.unwrap().contains("output `y`"));
    }

    #[test]
    fn causal_attention_keeps_the_rows_before_a_flip() {
        let flipped = BTreeSet::from([5, 6, 9]);
        // Sequences of 4: tokens 5 and 6 are in sequence 1 (rows 4..8), 9 in sequence 2.
        let causal: Vec<usize> = influenced(&flipped, 4, true).into_iter().collect();
        assert_eq!(causal, [5, 6, 7, 9, 10, 11]);
        let full: Vec<usize> = influenced(&flipped, 4, false).into_iter().collect();
        assert_eq!(full, [4, 5, 6, 7, 8, 9, 10, 11]);
        // A small Mixtral: causal self-attention over 16-token sequences.
        let mixtral = include_str!("../../examples/hf/mixtral-8x7b.json");
        let sets: Vec<String> = ["num_hidden_layers=1", "hidden_size=64", "vocab_size=64"]
            .map(String::from)
            .into();
        let opts = moe_ir::hf::ImportOptions {
            mesh: Some(moe_ir::Mesh::parse("ep=2", 8).unwrap()),
            seq: 16,
            ..Default::default()
        };
        let g = moe_ir::hf::import(mixtral, &sets, &opts).unwrap();
        assert_eq!(token_mixing(&g), (16, true));
        assert_eq!(token_mixing(&layer()), (1, true));
    }

    #[test]
    fn flips_that_leave_too_few_rows_fail() {
        let g = layer();
        let routers = BTreeSet::from([NodeId::from_index(0)]);
        let ia = t(&[4, 1], vec![0., 1., 2., 3.]);
        let ib = t(&[4, 1], vec![1., 0., 3., 2.]);
        let y = t(&[4, 1], vec![1., 2., 3., 4.]);
        let o = opts(RunOptions::default(), RunOptions::default());
        let lenient = CrossCheckOptions {
            max_flipped: 1.0,
            ..o
        };
        let c = compare(
            &g,
            &executed(ia, y.clone()),
            &executed(ib, y),
            &routers,
            &lenient,
        );
        assert_eq!(c.outputs[0].rows_left_out, 4);
        assert!(c.failure.unwrap().contains("too few left to compare"));
    }

    #[test]
    fn routing_that_disagrees_widely_fails() {
        let g = layer();
        let routers = BTreeSet::from([NodeId::from_index(0)]);
        let ia = t(&[4, 1], vec![0., 1., 2., 3.]);
        let ib = t(&[4, 1], vec![1., 1., 3., 0.]);
        let y = t(&[4, 1], vec![1., 2., 3., 4.]);
        let o = CrossCheckOptions {
            max_flipped: 0.3,
            ..opts(RunOptions::default(), RunOptions::default())
        };
        let c = compare(&g, &executed(ia, y.clone()), &executed(ib, y), &routers, &o);
        assert!(!c.passed);
        assert!(c.failure.unwrap().contains("routing differs"));
    }
}
