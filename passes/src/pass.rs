//! The `Pass` trait and the pipeline that runs passes, validating the graph after each one.

use moe_ir::{validate, Graph, ValidationError};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Statistics of an equality-saturation run, recorded by passes that use an e-graph.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EGraphStats {
    pub iterations: usize,
    pub enodes: usize,
    pub eclasses: usize,
    /// Rule name -> times it matched and changed the e-graph.
    pub rules_fired: BTreeMap<String, usize>,
    /// Why saturation stopped (saturated, iteration/node/time limit).
    pub stop_reason: String,
}

/// What a pass returns: the new graph and what it wants reported.
#[derive(Debug, Clone)]
pub struct PassOutput {
    pub graph: Graph,
    pub egraph: Option<EGraphStats>,
    /// Human-readable remarks (e.g. why a layer was left unchanged).
    pub notes: Vec<String>,
}

impl PassOutput {
    /// A result with nothing to report but the graph.
    pub fn graph(graph: Graph) -> PassOutput {
        PassOutput {
            graph,
            egraph: None,
            notes: Vec::new(),
        }
    }
}

/// A transformation of a validated graph into another graph that must validate too.
pub trait Pass {
    /// Name shown in statistics, logs and errors.
    fn name(&self) -> &'static str;
    /// Transforms `g`. The input is valid; the pipeline validates the output.
    fn run(&self, g: Graph) -> Result<PassOutput, PassError>;
}

/// Statistics of one pass of a pipeline run.
#[derive(Debug, Clone, PartialEq)]
pub struct PassStats {
    pub pass: &'static str,
    pub time: Duration,
    pub nodes_before: usize,
    pub nodes_after: usize,
    pub egraph: Option<EGraphStats>,
    pub notes: Vec<String>,
}

/// Why a pipeline stopped.
#[derive(Debug, Error)]
pub enum PassError {
    /// The input graph was invalid before any pass ran.
    #[error("input graph is invalid: {0}")]
    InvalidInput(#[source] ValidationError),
    /// A pass produced an invalid graph: a bug in that pass.
    #[error("pass `{pass}` produced an invalid graph: {source}")]
    Invalid {
        pass: &'static str,
        #[source]
        source: ValidationError,
    },
    /// The tensor-parallel remap refused its input (options that do not fit the model).
    #[error("pass `{name}`: {0}", name = crate::remap::TensorParallel::NAME)]
    Remap(#[from] crate::remap::RemapError),
    /// The dispatch rewrite could not extract a program.
    #[error("pass `{name}`: {0}", name = crate::rewrite::DispatchRewrite::NAME)]
    Rewrite(#[from] crate::extract::ExtractError),
    /// The pipeline partition refused its input.
    #[error("pass `{name}`: {0}", name = crate::pipeline::PipelinePartition::NAME)]
    Partition(#[from] crate::pipeline::PipelineError),
    /// A pass of an embedder refused its input, with its own error.
    #[error("pass `{pass}`: {source}")]
    Failed {
        pass: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl PassError {
    /// The name of the pass that failed (`None` for an invalid input graph).
    pub fn pass(&self) -> Option<&'static str> {
        match self {
            PassError::InvalidInput(_) => None,
            PassError::Invalid { pass, .. } | PassError::Failed { pass, .. } => Some(pass),
            PassError::Remap(_) => Some(crate::remap::TensorParallel::NAME),
            PassError::Rewrite(_) => Some(crate::rewrite::DispatchRewrite::NAME),
            PassError::Partition(_) => Some(crate::pipeline::PipelinePartition::NAME),
        }
    }
}

/// A straight list of passes, each followed by the validator (Cranelift's `verify_if`).
#[derive(Default)]
pub struct Pipeline {
    passes: Vec<Box<dyn Pass>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.passes.iter().map(|p| p.name()))
            .finish()
    }
}

impl Pipeline {
    pub fn new() -> Pipeline {
        Pipeline::default()
    }

    /// Appends a pass.
    pub fn with(mut self, pass: impl Pass + 'static) -> Pipeline {
        self.passes.push(Box::new(pass));
        self
    }

    /// Runs every pass in order on `g`, validating the input and each pass's output.
    pub fn run(&self, g: Graph) -> Result<(Graph, Vec<PassStats>), PassError> {
        self.run_observed(g, |_, _| {})
    }

    /// As [`Pipeline::run`], calling `after` with each pass's statistics and validated output
    /// (what `moe-opt opt --print-after-all` prints).
    pub fn run_observed(
        &self,
        g: Graph,
        mut after: impl FnMut(&PassStats, &Graph),
    ) -> Result<(Graph, Vec<PassStats>), PassError> {
        validate(&g).map_err(PassError::InvalidInput)?;
        let mut g = g;
        let mut stats = Vec::with_capacity(self.passes.len());
        for p in &self.passes {
            let nodes_before = g.len();
            let start = Instant::now();
            let out = p.run(g)?;
            let time = start.elapsed();
            validate(&out.graph).map_err(|source| PassError::Invalid {
                pass: p.name(),
                source,
            })?;
            let s = PassStats {
                pass: p.name(),
                time,
                nodes_before,
                nodes_after: out.graph.len(),
                egraph: out.egraph,
                notes: out.notes,
            };
            tracing::info!(
                pass = s.pass,
                ms = s.time.as_secs_f64() * 1e3,
                nodes_before = s.nodes_before,
                nodes_after = s.nodes_after,
                egraph = ?s.egraph,
                "pass done"
            );
            after(&s, &out.graph);
            stats.push(s);
            g = out.graph;
        }
        Ok((g, stats))
    }
}

/// Removes nodes that reach no output and communicate nothing; renumbers the rest in order.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadCode;

impl Pass for DeadCode {
    fn name(&self) -> &'static str {
        "dead-code"
    }

    fn run(&self, mut g: Graph) -> Result<PassOutput, PassError> {
        g.compact();
        Ok(PassOutput::graph(g))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use moe_ir::{DType, Mesh, Op, Scope, TensorType};

    fn tiny() -> Graph {
        let mut g = Graph::new("tiny", Mesh::single());
        let x = g
            .add(
                "x",
                Op::Input(TensorType::new(DType::F32, [4, 8])),
                &[],
                Scope::Embed,
            )
            .unwrap();
        let w = g
            .add(
                "w",
                Op::Weight(TensorType::new(DType::F32, [8, 8])),
                &[],
                Scope::Embed,
            )
            .unwrap();
        let y = g
            .add("y", Op::Matmul, &[x.into(), w.into()], Scope::Layer(0))
            .unwrap();
        g.add("unused", Op::Silu, &[x.into()], Scope::Layer(0))
            .unwrap();
        g.add_output("y", y);
        g
    }

    /// Records a wrong type on purpose.
    struct Corrupt;
    impl Pass for Corrupt {
        fn name(&self) -> &'static str {
            "corrupt"
        }
        fn run(&self, mut g: Graph) -> Result<PassOutput, PassError> {
            let id = g.find("y").unwrap();
            g.node_mut(id).outputs[0].shape[0] = 5;
            Ok(PassOutput::graph(g))
        }
    }

    #[test]
    fn dead_code_removes_unused_nodes_and_stats_count_them() {
        let (g, stats) = Pipeline::new().with(DeadCode).run(tiny()).unwrap();
        assert_eq!(g.len(), 3);
        assert!(g.find("unused").is_none());
        assert_eq!((stats[0].nodes_before, stats[0].nodes_after), (4, 3));
    }

    #[test]
    fn an_invalid_pass_output_is_reported_with_the_pass_name() {
        let e = Pipeline::new()
            .with(DeadCode)
            .with(Corrupt)
            .run(tiny())
            .unwrap_err();
        assert!(
            matches!(
                e,
                PassError::Invalid {
                    pass: "corrupt",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("`y`"), "{e}");
    }
}
