//! The dispatch rewrite: equality saturation with [`crate::rules::all`], then the cheapest program
//! under a [`CostModel`] (DAG cost), with a per-MoE-layer report of what was chosen and why.
//!
//! ```
//! use moe_passes::{rewrite::DispatchRewrite, Pipeline, TensorParallel};
//! let cfg = include_str!("../../../examples/hf/mixtral-8x7b.json");
//! let sets = ["num_hidden_layers=2".to_string()];
//! let g = moe_ir::hf::import(cfg, &sets, &Default::default()).unwrap();
//! let (out, stats) = Pipeline::new()
//!     .with(TensorParallel { tp: 8, gpus_per_node: 8 })
//!     .with(DispatchRewrite::default())
//!     .run(g)
//!     .unwrap();
//! assert_eq!(moe_ir::Summary::of(&out).collectives.all_to_all, 0);
//! assert!(stats[1].egraph.is_some());
//! ```

mod fold;
mod layers;

pub use fold::{fold, folded_text, ranges, LayerGroup};
pub use layers::{tied, Form, FormCost, LayerReport, TIE};

use crate::analysis::Types;
use crate::convert::load;
use crate::cost::{Cluster, CostModel, Roofline};
use crate::extract::{DagExtractor, ExtractError};
use crate::lang::MoeLang;
use crate::pass::{EGraphStats, Pass, PassError, PassOutput};
use crate::rules;
use egg::{Runner, StopReason};
use moe_ir::Graph;
use std::sync::Arc;
use std::time::Duration;

/// Limits of one saturation run (egg's `Runner` limits, named).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Rule-application rounds.
    pub iterations: usize,
    /// E-nodes in the e-graph.
    pub nodes: usize,
    /// Wall time of saturation.
    pub time: Duration,
}

impl Default for Limits {
    /// 16 rounds, 500,000 e-nodes, 10 s: a 61-layer model saturates in 3 rounds and ~4,000 e-nodes.
    fn default() -> Limits {
        Limits {
            iterations: 16,
            nodes: 500_000,
            time: Duration::from_secs(10),
        }
    }
}

/// What one rewrite produced.
#[derive(Debug, Clone)]
pub struct Rewritten {
    pub graph: Graph,
    pub stats: EGraphStats,
    /// One report per MoE layer, in layer order.
    pub layers: Vec<LayerReport>,
    /// Predicted time of the whole program (DAG cost, seconds per step and rank).
    pub predicted: f64,
}

/// The e-graph pass: all-to-all dispatch into index slicing, priced by topology.
#[derive(Clone)]
pub struct DispatchRewrite {
    pub limits: Limits,
    pub model: Arc<dyn CostModel + Send + Sync>,
    /// Also explain each layer's choice with egg's proof (the rule chain); costs some time.
    pub explain: bool,
    /// Saturate with only these rules of [`rules::RULES`] (`None`: all of them), to see one
    /// rule's effect alone (`opt --passes 'dispatch(rules=..)'`).
    pub only: Option<Vec<&'static rules::Rule>>,
}

impl std::fmt::Debug for DispatchRewrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatchRewrite")
            .field("limits", &self.limits)
            .field("explain", &self.explain)
            .finish_non_exhaustive()
    }
}

impl Default for DispatchRewrite {
    /// Default limits, the roofline model on the default cluster, no proofs.
    fn default() -> DispatchRewrite {
        DispatchRewrite::new(Cluster::default())
    }
}

impl DispatchRewrite {
    /// The pass's name in statistics and errors.
    pub const NAME: &'static str = "dispatch-rewrite";

    /// The rewrite priced with the roofline model of `cluster`.
    pub fn new(cluster: Cluster) -> DispatchRewrite {
        DispatchRewrite {
            limits: Limits::default(),
            model: Arc::new(Roofline { cluster }),
            explain: false,
            only: None,
        }
    }

    /// Saturates, extracts and reports. `g` must be valid.
    pub fn rewrite(&self, g: &Graph) -> Result<Rewritten, ExtractError> {
        let rules: Vec<&'static rules::Rule> = match &self.only {
            None => rules::RULES.iter().collect(),
            Some(only) => only.clone(),
        };
        let s = self.saturate(g, &rules);
        let extractor = DagExtractor::new(&s.loaded.egraph, self.model.as_ref());
        let expr = extractor.best_expr(s.loaded.root)?;
        let predicted = extractor.dag_cost(s.loaded.root);
        let mut reports = layers::report(g, &s.loaded, &extractor, &s.stats.stop_reason);
        drop(extractor);
        if self.explain {
            self.prove_chosen(g, &rules, &mut reports);
        }
        let graph = s.loaded.to_graph(&expr);
        Ok(Rewritten {
            graph,
            stats: s.stats,
            layers: reports,
            predicted,
        })
    }

    /// Loads `g` into an e-graph and saturates it with `rules` under the limits.
    fn saturate(&self, g: &Graph, rules: &[&'static rules::Rule]) -> Saturated {
        let mut loaded = load(g);
        let mesh = g.mesh.clone();
        let egraph = std::mem::replace(
            &mut loaded.egraph,
            egg::EGraph::new(Types { mesh: mesh.clone() }),
        );
        let rank = rules::max_rank(g);
        let rewrites: Vec<_> = rules.iter().map(|r| r.rewrite(&g.mesh, rank)).collect();
        let runner: Runner<MoeLang, Types, ()> = Runner::new(Types { mesh })
            .with_egraph(egraph)
            .with_iter_limit(self.limits.iterations)
            .with_node_limit(self.limits.nodes)
            .with_time_limit(self.limits.time)
            .run(&rewrites);
        let mut stats = EGraphStats {
            iterations: runner.iterations.len(),
            enodes: runner.egraph.total_number_of_nodes(),
            eclasses: runner.egraph.number_of_classes(),
            ..Default::default()
        };
        for it in &runner.iterations {
            for (rule, n) in &it.applied {
                *stats.rules_fired.entry(rule.to_string()).or_default() += n;
            }
        }
        stats.stop_reason = match &runner.stop_reason {
            Some(StopReason::Saturated) | None => "saturated".into(),
            Some(StopReason::IterationLimit(n)) => format!("iteration limit ({n})"),
            Some(StopReason::NodeLimit(n)) => format!("e-node limit ({n})"),
            Some(StopReason::TimeLimit(s)) => format!("time limit ({s} s)"),
            Some(StopReason::Other(s)) => s.clone(),
        };
        loaded.egraph = runner.egraph;
        Saturated { loaded, stats }
    }

    /// Fills each report's proof with egg's explanation **of the chosen form**. In the full
    /// e-graph one program is often reached by several rules (PPMoE's `all_reduce` is also
    /// `all_gather(reduce_scatter(..))` of the all-gather form), and egg explains by whichever
    /// union came first; so each chosen form is proved in an e-graph saturated without the other
    /// forms' dispatch rule and without the algebra that joins the two slicing forms.
    fn prove_chosen(&self, g: &Graph, all: &[&'static rules::Rule], reports: &mut [LayerReport]) {
        let forms: std::collections::BTreeSet<Form> = reports
            .iter()
            .map(|r| r.chosen)
            .filter(|f| *f != Form::AllToAll)
            .collect();
        for form in forms {
            let banned = banned_for(form);
            let rules: Vec<&'static rules::Rule> = all
                .iter()
                .copied()
                .filter(|r| !banned.contains(&r.name()))
                .collect();
            let mut s = self.saturate(g, &rules);
            let ex = DagExtractor::new(&s.loaded.egraph, self.model.as_ref());
            let mut sub = layers::report(g, &s.loaded, &ex, &s.stats.stop_reason);
            drop(ex);
            // Only the layers that chose `form` need this e-graph's proof: force its choice.
            sub.retain_mut(|r| {
                reports.iter().any(|o| o.node == r.node && o.chosen == form) && r.proves(form)
            });
            layers::prove(&mut s.loaded, &mut sub);
            for r in reports.iter_mut().filter(|r| r.chosen == form) {
                if let Some(p) = sub.iter().find(|p| p.node == r.node) {
                    r.rules = p.rules.clone();
                }
            }
        }
    }
}

/// The rules left out when proving `form`: the other slicing form's rule, and the algebra that
/// turns one slicing form into the other.
fn banned_for(form: Form) -> Vec<&'static str> {
    match form {
        Form::AllToAll => Vec::new(),
        Form::AllGather => vec![rules::PpmoeSlicing::NAME],
        Form::Ppmoe => vec![
            rules::AllGatherSlicing::NAME,
            rules::ALL_GATHER_OF_REDUCE_SCATTER.name,
        ],
    }
}

/// An e-graph after saturation, with its statistics.
struct Saturated {
    loaded: crate::convert::Loaded,
    stats: EGraphStats,
}

/// Prices the MoE layers of `g` as they are (no rewrite): one report per layer, with the cost of
/// its current form. `rewrite --explain` uses it to show the input program's cost.
pub fn layer_costs(g: &Graph, model: &dyn CostModel) -> Vec<LayerReport> {
    let loaded = load(g);
    let extractor = DagExtractor::new(&loaded.egraph, model);
    layers::report(g, &loaded, &extractor, "saturated")
}

impl Pass for DispatchRewrite {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run(&self, g: Graph) -> Result<PassOutput, PassError> {
        let r = self.rewrite(&g)?;
        let mut notes: Vec<String> = vec![folded_text(&r.layers)];
        notes.push(format!(
            "predicted step time {:.3} ms per rank (forward, this cost model)",
            r.predicted * 1e3
        ));
        Ok(PassOutput {
            graph: r.graph,
            egraph: Some(r.stats),
            notes,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
