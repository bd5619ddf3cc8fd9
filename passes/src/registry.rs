//! The pass registry: pass lists as text (what `moe-opt opt --passes` and embedders write),
//! read into typed [`PassStep`]s and built into a [`Pipeline`] whose every pass is validated.
//!
//! ```text
//! remap(tp=8),dispatch,partition(pp=4),schedule(1f1b)
//! ```
//! | pass | options | the pass |
//! | --- | --- | --- |
//! | `dead-code` | | [`DeadCode`] |
//! | `remap` | `tp=T` | [`TensorParallel`] |
//! | `dispatch` | `rules=a+b` (rule names; default all) | [`DispatchRewrite`] (e-graph rewrite, extraction) |
//! | `partition` | `pp=P`, `layout=balanced\|equal\|14:14:14:14`, `micro_batches=M`, `recompute=true` | [`PipelinePartition`] |
//! | `schedule` | `gpipe`, `1f1b`, `interleaved` (`chunks=C`) | the schedule of the `partition` just before it |
//!
//! A schedule is part of partitioning (it decides how many micro-batches' activations a cut
//! must fit in memory), so `schedule(...)` sets the preceding `partition`'s; `partition` alone
//! uses 1F1B. `moe-opt rewrite` is the pipeline [`rewrite_steps`] builds from its flags.
//!
//! ```
//! use moe_passes::registry::{parse, PassContext};
//! let steps = parse("remap(tp=2),dispatch").unwrap();
//! let pipeline = moe_passes::registry::pipeline(&steps, &PassContext::default());
//! let g = moe_ir::json::from_json(include_str!("../../examples/moe-layer.json")).unwrap();
//! let (out, stats) = pipeline.run(g).unwrap();
//! assert_eq!(stats.len(), 2);
//! assert!(moe_ir::validate(&out).is_ok());
//! ```

use crate::cost::{Cluster, Roofline};
use crate::pipeline::{Layout, PipelinePartition};
use crate::rewrite::{DispatchRewrite, Limits};
use crate::rules::Rule;
use crate::{DeadCode, Pipeline, TensorParallel};
use moe_ir::Schedule;
use std::fmt;
use std::sync::Arc;
use thiserror::Error;

/// The passes a list may name, with their options (for help and errors).
pub const PASSES: &[(&str, &str)] = &[
    ("dead-code", ""),
    ("remap", "tp=T"),
    ("dispatch", "rules=NAME+NAME+.. (default: every rule)"),
    (
        "partition",
        "pp=P, layout=balanced|equal|N:N:.., micro_batches=M, recompute=true|false",
    ),
    ("schedule", "gpipe | 1f1b | interleaved[, chunks=C]"),
];

/// One pass of a list, with its options.
#[derive(Debug, Clone, PartialEq)]
pub enum PassStep {
    DeadCode,
    /// Remap onto a tensor-parallel group of `tp` GPUs.
    Remap {
        tp: u64,
    },
    /// The dispatch rewrite, with every rule or only the rules named.
    Dispatch {
        only: Option<Vec<&'static Rule>>,
    },
    /// Cut into `pp` pipeline stages.
    Partition {
        pp: u32,
        layout: Layout,
        schedule: Schedule,
        /// Default: 4 x `pp`.
        micro_batches: Option<u32>,
        recompute: bool,
    },
}

/// What the passes need besides their options: the cluster their cost model prices, where an
/// axis crosses nodes, the saturation limits and whether to explain.
#[derive(Debug, Clone, Default)]
pub struct PassContext {
    pub cluster: Cluster,
    /// GPUs per node for placing mesh axes (default: the cluster's).
    pub gpus_per_node: Option<u64>,
    pub limits: Limits,
    pub explain: bool,
}

/// A pass list that cannot be read: the column (1-based, in characters) and what.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("pass list, column {column}: {kind}")]
pub struct PassListError {
    pub column: usize,
    pub kind: PassListErrorKind,
}

/// What is wrong with a pass list.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PassListErrorKind {
    #[error("expected {expected}, found {found}")]
    Expected {
        expected: &'static str,
        found: String,
    },
    #[error("unknown pass `{0}` (passes: dead-code, remap, dispatch, partition, schedule)")]
    UnknownPass(String),
    #[error("pass `{pass}` has no option `{option}` (options: {known})")]
    UnknownOption {
        pass: &'static str,
        option: String,
        known: &'static str,
    },
    #[error("`{pass}({option}=..)`: `{value}` is not {expected}")]
    BadValue {
        pass: &'static str,
        option: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("pass `{pass}` needs `{option}`")]
    Missing {
        pass: &'static str,
        option: &'static str,
    },
    #[error("`schedule` sets the schedule of a `partition`: put it right after one")]
    ScheduleWithoutPartition,
    #[error("the pass list is empty")]
    Empty,
}

/// One `name(args)` of a list: its column, name and `(key, value, column)` arguments (a
/// positional argument has key `""`).
type Item<'a> = (usize, &'a str, Vec<(&'a str, &'a str, usize)>);

/// Splits `text` into items at top-level commas.
fn items(text: &str) -> Result<Vec<Item<'_>>, PassListError> {
    let err = |at: usize, expected: &'static str, found: &str| PassListError {
        column: text[..at].chars().count() + 1,
        kind: PassListErrorKind::Expected {
            expected,
            found: if found.is_empty() {
                "the end".into()
            } else {
                format!("`{found}`")
            },
        },
    };
    let mut out = Vec::new();
    let mut pos = 0;
    while pos <= text.len() {
        let rest = &text[pos..];
        let lead = rest.len() - rest.trim_start().len();
        let start = pos + lead;
        let end = text[start..]
            .find([',', '('])
            .map_or(text.len(), |i| start + i);
        let name = text[start..end].trim_end();
        if name.is_empty() {
            return Err(err(start, "a pass name", text[start..end].trim()));
        }
        let mut args = Vec::new();
        pos = end;
        if text[pos..].starts_with('(') {
            let close = text[pos..]
                .find(')')
                .map(|i| pos + i)
                .ok_or_else(|| err(text.len(), "`)`", ""))?;
            let mut at = pos + 1;
            for arg in text[pos + 1..close].split(',') {
                let a = arg.trim();
                let col = at + (arg.len() - arg.trim_start().len());
                if !a.is_empty() {
                    let (k, v) = a
                        .split_once('=')
                        .map_or(("", a), |(k, v)| (k.trim(), v.trim()));
                    args.push((k, v, col));
                }
                at += arg.len() + 1;
            }
            pos = close + 1;
        }
        out.push((start, name, args));
        let rest = &text[pos..];
        let trimmed = rest.trim_start();
        if trimmed.is_empty() {
            break;
        }
        let at = pos + rest.len() - trimmed.len();
        if !trimmed.starts_with(',') {
            return Err(err(
                at,
                "`,` between passes",
                trimmed.split(',').next().unwrap_or(""),
            ));
        }
        pos = at + 1;
    }
    Ok(out)
}

/// Reads a pass list such as `remap(tp=8),dispatch,partition(pp=4),schedule(1f1b)`.
pub fn parse(text: &str) -> Result<Vec<PassStep>, PassListError> {
    if text.trim().is_empty() {
        return Err(PassListError {
            column: 1,
            kind: PassListErrorKind::Empty,
        });
    }
    let col = |at: usize| text[..at.min(text.len())].chars().count() + 1;
    let mut steps = Vec::new();
    for (at, name, args) in items(text)? {
        let fail = |at: usize, kind| PassListError {
            column: col(at),
            kind,
        };
        let (pass, known) = PASSES
            .iter()
            .copied()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| fail(at, PassListErrorKind::UnknownPass(name.to_string())))?;
        let value = |option: &'static str, v: &str, c: usize, expected: &'static str| {
            fail(
                c,
                PassListErrorKind::BadValue {
                    pass,
                    option,
                    value: v.to_string(),
                    expected,
                },
            )
        };
        let unknown = |k: &str, c: usize| {
            fail(
                c,
                PassListErrorKind::UnknownOption {
                    pass,
                    option: if k.is_empty() {
                        "(positional)".into()
                    } else {
                        k.to_string()
                    },
                    known,
                },
            )
        };
        match pass {
            "dead-code" => {
                if let Some((k, _, c)) = args.first() {
                    return Err(unknown(k, *c));
                }
                steps.push(PassStep::DeadCode);
            }
            "dispatch" => {
                let mut only = None;
                for (k, v, c) in args {
                    match k {
                        "rules" => {
                            let rules: Option<Vec<&'static Rule>> = v
                                .split('+')
                                .map(|n| crate::rules::named(n.trim()))
                                .collect();
                            only = Some(rules.ok_or_else(|| {
                                value("rules", v, c, "rule names joined by `+` (see rules::RULES)")
                            })?);
                        }
                        _ => return Err(unknown(k, c)),
                    }
                }
                steps.push(PassStep::Dispatch { only });
            }
            "remap" => {
                let mut tp = None;
                for (k, v, c) in args {
                    match k {
                        "tp" => tp = Some(v.parse().map_err(|_| value("tp", v, c, "a GPU count"))?),
                        _ => return Err(unknown(k, c)),
                    }
                }
                let tp =
                    tp.ok_or_else(|| fail(at, PassListErrorKind::Missing { pass, option: "tp" }))?;
                steps.push(PassStep::Remap { tp });
            }
            "partition" => {
                let (mut pp, mut layout, mut micro_batches, mut recompute) =
                    (None, Layout::Balanced, None, false);
                for (k, v, c) in args {
                    match k {
                        "pp" => {
                            pp = Some(v.parse().map_err(|_| value("pp", v, c, "a stage count"))?)
                        }
                        "layout" => {
                            layout = parse_layout(v).ok_or_else(|| {
                                value(
                                    "layout",
                                    v,
                                    c,
                                    "`balanced`, `equal` or layer counts like `14:14:14:14`",
                                )
                            })?
                        }
                        "micro_batches" => {
                            micro_batches =
                                Some(v.parse().map_err(|_| {
                                    value("micro_batches", v, c, "a micro-batch count")
                                })?)
                        }
                        "recompute" => {
                            recompute = v
                                .parse()
                                .map_err(|_| value("recompute", v, c, "`true` or `false`"))?
                        }
                        _ => return Err(unknown(k, c)),
                    }
                }
                let pp =
                    pp.ok_or_else(|| fail(at, PassListErrorKind::Missing { pass, option: "pp" }))?;
                steps.push(PassStep::Partition {
                    pp,
                    layout,
                    schedule: Schedule::OneFOneB,
                    micro_batches,
                    recompute,
                });
            }
            _ => {
                let mut schedule = None;
                let mut chunks = 2;
                for (k, v, c) in args {
                    match (k, v) {
                        ("", "gpipe") => schedule = Some(Schedule::Gpipe),
                        ("", "1f1b") => schedule = Some(Schedule::OneFOneB),
                        ("", "interleaved") => schedule = Some(Schedule::Interleaved { chunks: 0 }),
                        ("", _) => {
                            return Err(value("schedule", v, c, "`gpipe`, `1f1b` or `interleaved`"))
                        }
                        ("chunks", _) => {
                            chunks = v
                                .parse()
                                .map_err(|_| value("chunks", v, c, "a chunk count"))?
                        }
                        _ => return Err(unknown(k, c)),
                    }
                }
                let s = match schedule {
                    Some(Schedule::Interleaved { .. }) => Schedule::Interleaved { chunks },
                    Some(s) => s,
                    None => {
                        return Err(fail(
                            at,
                            PassListErrorKind::Missing {
                                pass,
                                option: "a schedule",
                            },
                        ))
                    }
                };
                match steps.last_mut() {
                    Some(PassStep::Partition { schedule, .. }) => *schedule = s,
                    _ => return Err(fail(at, PassListErrorKind::ScheduleWithoutPartition)),
                }
            }
        }
    }
    Ok(steps)
}

/// `balanced`, `equal` or `14:14:14:14`.
fn parse_layout(v: &str) -> Option<Layout> {
    match v {
        "balanced" => Some(Layout::Balanced),
        "equal" => Some(Layout::Equal),
        _ => v
            .split(':')
            .map(|n| n.trim().parse().ok())
            .collect::<Option<Vec<u32>>>()
            .map(Layout::Explicit),
    }
}

impl fmt::Display for PassStep {
    /// The step as a list spells it (`parse` reads it back).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PassStep::DeadCode => f.write_str("dead-code"),
            PassStep::Remap { tp } => write!(f, "remap(tp={tp})"),
            PassStep::Dispatch { only: None } => f.write_str("dispatch"),
            PassStep::Dispatch { only: Some(rules) } => {
                let names: Vec<&str> = rules.iter().map(|r| r.name()).collect();
                write!(f, "dispatch(rules={})", names.join("+"))
            }
            PassStep::Partition {
                pp,
                layout,
                schedule,
                micro_batches,
                recompute,
            } => {
                write!(f, "partition(pp={pp}")?;
                match layout {
                    Layout::Balanced => {}
                    Layout::Equal => f.write_str(", layout=equal")?,
                    Layout::Explicit(l) => {
                        let l: Vec<String> = l.iter().map(u32::to_string).collect();
                        write!(f, ", layout={}", l.join(":"))?;
                    }
                }
                if let Some(m) = micro_batches {
                    write!(f, ", micro_batches={m}")?;
                }
                if *recompute {
                    f.write_str(", recompute=true")?;
                }
                match schedule {
                    Schedule::Gpipe => f.write_str("),schedule(gpipe)"),
                    Schedule::OneFOneB => f.write_str("),schedule(1f1b)"),
                    Schedule::Interleaved { chunks } => {
                        write!(f, "),schedule(interleaved, chunks={chunks})")
                    }
                }
            }
        }
    }
}

/// A list as text (each step's `Display`, comma-separated).
pub fn to_text(steps: &[PassStep]) -> String {
    steps
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The pipeline of `steps`: each step's pass, validated after it runs.
pub fn pipeline(steps: &[PassStep], ctx: &PassContext) -> Pipeline {
    let gpus_per_node = ctx.gpus_per_node.unwrap_or(ctx.cluster.gpus_per_node);
    let model = || {
        Arc::new(Roofline {
            cluster: ctx.cluster.clone(),
        })
    };
    let mut p = Pipeline::new();
    for s in steps {
        p = match s {
            PassStep::DeadCode => p.with(DeadCode),
            PassStep::Remap { tp } => p.with(TensorParallel {
                tp: *tp,
                gpus_per_node,
            }),
            PassStep::Dispatch { only } => p.with(DispatchRewrite {
                limits: ctx.limits,
                model: model(),
                explain: ctx.explain,
                only: only.clone(),
            }),
            PassStep::Partition {
                pp,
                layout,
                schedule,
                micro_batches,
                recompute,
            } => p.with(PipelinePartition {
                stages: *pp,
                layout: layout.clone(),
                schedule: *schedule,
                micro_batches: micro_batches.unwrap_or(4 * (*pp).max(1)),
                model: model(),
                gpus_per_node,
                gpu_memory_bytes: Some(ctx.cluster.gpu.memory_gb * 1e9),
                recompute: *recompute,
            }),
        };
    }
    p
}

/// `moe-opt rewrite`'s pipeline: `remap(tp)` when given, `dispatch`, then `partition` when
/// given.
pub fn rewrite_steps(tp: Option<u64>, partition: Option<PassStep>) -> Vec<PassStep> {
    let mut steps: Vec<PassStep> = tp.map(|tp| PassStep::Remap { tp }).into_iter().collect();
    steps.push(PassStep::Dispatch { only: None });
    steps.extend(partition);
    steps
}

#[cfg(test)]
mod tests;
