//! Equivalence of two programs: run both on the same weights and inputs, compare outputs, and on a
//! mismatch name the first node (in the first graph's topological order) among those the graphs
//! share by name and type whose global value differs.
//!
//! The error of `b` against `a` is `max|a - b| / max(max|a|, max|b|)` over the tensor (0 when both
//! are all zeros; infinite when a NaN appears): the largest deviation relative to the tensor's
//! scale, so that entries near zero do not blow it up and a result is not judged by its smallest
//! elements.

use crate::error::ExecError;
use crate::exec::default_micro_batches;
use crate::inputs::Inputs;
use crate::run::{run_capturing_fed, HostTensor, RunOptions};
use crate::weights::Weights;
use moe_ir::{Graph, NodeId};
use std::collections::BTreeSet;
use std::time::Duration;

/// How far one tensor is from another.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Diff {
    /// `max |a - b|`.
    pub max_abs: f64,
    /// `max(max |a|, max |b|)`.
    pub scale: f64,
    /// `max_abs / scale` (see the module docs).
    pub rel: f64,
}

/// Why two outputs cannot be compared.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Incomparable {
    #[error("shapes differ: {a:?} vs {b:?}")]
    Shapes { a: Vec<u64>, b: Vec<u64> },
    /// The output exists in one run only; `of` names the run that lacks it.
    #[error("not an output of the {of}")]
    Missing { of: &'static str },
}

/// The difference of two tensors, or why they cannot be compared.
pub fn diff(a: &HostTensor, b: &HostTensor) -> Result<Diff, Incomparable> {
    if a.shape != b.shape {
        return Err(Incomparable::Shapes {
            a: a.shape.clone(),
            b: b.shape.clone(),
        });
    }
    let mut max_abs = 0.0f64;
    let mut scale = 0.0f64;
    let mut nan = false;
    for (x, y) in a.data.iter().zip(&b.data) {
        nan |= x.is_nan() || y.is_nan();
        max_abs = max_abs.max((x - y).abs());
        scale = scale.max(x.abs()).max(y.abs());
    }
    let rel = if nan {
        f64::INFINITY
    } else if max_abs == 0.0 {
        0.0
    } else {
        max_abs / scale.max(f64::MIN_POSITIVE)
    };
    Ok(Diff {
        max_abs,
        scale,
        rel,
    })
}

/// Options of a comparison.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VerifyOptions {
    pub run: RunOptions,
    /// Largest accepted relative error ([`Diff::rel`]).
    pub rtol: f64,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            run: RunOptions::default(),
            rtol: 1e-5,
        }
    }
}

/// One graph output compared.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputCheck {
    pub name: String,
    /// The difference, or why the output cannot be compared (missing in one graph, other shape).
    pub diff: Result<Diff, Incomparable>,
}

impl OutputCheck {
    /// Whether the output is within `rtol`.
    pub fn passes(&self, rtol: f64) -> bool {
        self.diff.as_ref().is_ok_and(|d| d.rel <= rtol)
    }
}

/// The first shared node whose value differs beyond the tolerance.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeDiff {
    pub node: String,
    pub output: u32,
    pub diff: Diff,
}

/// The result of [`verify`].
#[derive(Clone, Debug)]
pub struct Verdict {
    /// Every output of either graph, `a`'s order first.
    pub outputs: Vec<OutputCheck>,
    /// Whether every output is within tolerance.
    pub passed: bool,
    /// When not passed: the first differing shared node (none when no shared node differs).
    pub first_differing: Option<NodeDiff>,
    /// Nodes the graphs share by name and type.
    pub shared_nodes: usize,
    /// Run times of `a` and `b` (the first runs, without captures).
    pub times: [Duration; 2],
    /// Micro-batches each program ran.
    pub micro_batches: u32,
}

/// Nodes of `a` (in order) that `b` has under the same name with the same output dtypes and
/// global shapes, as pairs of ids.
fn shared(a: &Graph, b: &Graph) -> Vec<(NodeId, NodeId)> {
    a.nodes()
        .filter_map(|(ia, na)| {
            let ib = b.find(&na.name)?;
            let nb = b.node(ib);
            let same = na.outputs.len() == nb.outputs.len()
                && na
                    .outputs
                    .iter()
                    .zip(&nb.outputs)
                    .all(|(x, y)| x.dtype == y.dtype && x.shape == y.shape);
            same.then_some((ia, ib))
        })
        .collect()
}

/// Runs `a` and `b` on the same weights and inputs and compares them (see the module docs).
pub fn verify(
    a: &Graph,
    b: &Graph,
    weights: &Weights,
    opts: &VerifyOptions,
) -> Result<Verdict, ExecError> {
    verify_with(a, b, weights, [None, None], opts)
}

/// [`verify`] on given inputs: `inputs[0]` laid out for `a`, `inputs[1]` for `b` (the same ids;
/// seeded where `None`).
pub fn verify_with(
    a: &Graph,
    b: &Graph,
    weights: &Weights,
    inputs: [Option<&Inputs>; 2],
    opts: &VerifyOptions,
) -> Result<Verdict, ExecError> {
    let none = BTreeSet::new();
    // Both programs run the same micro-batches: by default as many as the more pipelined one's.
    let mut run = opts.run;
    let given = inputs.iter().flatten().map(|i| i.micro_batches()).max();
    run.micro_batches = Some(
        run.micro_batches
            .or(given)
            .unwrap_or_else(|| default_micro_batches(a).max(default_micro_batches(b))),
    );
    let [ia, ib] = inputs;
    let ra = run_capturing_fed(a, weights, ia, &run, &none)?;
    let rb = run_capturing_fed(b, weights, ib, &run, &none)?;
    let mut outputs: Vec<OutputCheck> = ra
        .outputs
        .iter()
        .map(|(name, ta)| OutputCheck {
            name: name.clone(),
            diff: match rb.outputs.iter().find(|(n, _)| n == name) {
                Some((_, tb)) => diff(ta, tb),
                None => Err(Incomparable::Missing { of: "second graph" }),
            },
        })
        .collect();
    for (name, _) in &rb.outputs {
        if !ra.outputs.iter().any(|(n, _)| n == name) {
            outputs.push(OutputCheck {
                name: name.clone(),
                diff: Err(Incomparable::Missing { of: "first graph" }),
            });
        }
    }
    let passed = outputs.iter().all(|o| o.passes(opts.rtol));
    let pairs = shared(a, b);
    let mut first_differing = None;
    if !passed {
        // Runs are deterministic: run again, keeping the shared nodes' values.
        let ca: BTreeSet<NodeId> = pairs.iter().map(|p| p.0).collect();
        let cb: BTreeSet<NodeId> = pairs.iter().map(|p| p.1).collect();
        let xa = run_capturing_fed(a, weights, ia, &run, &ca)?;
        let xb = run_capturing_fed(b, weights, ib, &run, &cb)?;
        'nodes: for (ia, ib) in &pairs {
            let (Some(va), Some(vb)) = (xa.captured.get(ia), xb.captured.get(ib)) else {
                continue;
            };
            for (k, (ta, tb)) in va.iter().zip(vb).enumerate() {
                if let Ok(d) = diff(ta, tb) {
                    if d.rel > opts.rtol {
                        first_differing = Some(NodeDiff {
                            node: a.node(*ia).name.clone(),
                            output: k as u32,
                            diff: d,
                        });
                        break 'nodes;
                    }
                }
            }
        }
    }
    Ok(Verdict {
        outputs,
        passed,
        first_differing,
        shared_nodes: pairs.len(),
        times: [ra.total, rb.total],
        micro_batches: ra.micro_batches,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn t(data: &[f64]) -> HostTensor {
        HostTensor {
            shape: vec![data.len() as u64],
            data: data.to_vec(),
        }
    }

    #[test]
    fn relative_error_is_scaled_by_the_largest_magnitude() {
        let d = diff(&t(&[100.0, 0.001]), &t(&[100.0, 0.002])).unwrap();
        assert_eq!(d.max_abs, 0.001);
        assert!((d.rel - 1e-5).abs() < 1e-12);
        assert_eq!(diff(&t(&[0.0]), &t(&[0.0])).unwrap().rel, 0.0);
        assert_eq!(diff(&t(&[0.0]), &t(&[1e-300])).unwrap().rel, 1.0);
        assert!(diff(&t(&[1.0]), &t(&[f64::NAN])).unwrap().rel.is_infinite());
        assert!(diff(&t(&[1.0]), &t(&[1.0, 2.0])).is_err());
    }
}
