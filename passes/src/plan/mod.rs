//! `moe-opt plan`: enumerate the layouts of a model on a cluster, prune those that do not divide
//! or do not fit in GPU memory, and rank the rest by predicted step time and tokens per second.
//!
//! A layout is `pp` pipeline stages, each a mesh of `R = GPUs / pp` ranks, and a dispatch family:
//! - **PPMoE**: a tensor-parallel group of `tp` GPUs inside a node (`tp` dividing the GPUs per
//!   node and the experts), `dp = R / tp` copies; the dispatch rewrite chooses each layer's form
//!   (PPMoE, all-gather/reduce-scatter or the input all-to-all) by the cost model;
//! - **expert-parallel all-to-all**: the imported form, experts over `ep` = the largest divisor of
//!   the experts dividing `R` (across nodes when `ep` > GPUs per node), `dp = R / ep`.
//!
//! Per-rank costs do not depend on `dp` (it only replicates), so each family's graph is built and
//! rewritten once per `tp` / `ep` and reused for every node count and stage count. Each stage
//! count is cut by [`PipelinePartition::cut`] (balanced within memory, 1F1B, without and with
//! recomputation) and its step replayed by [`moe_ir::pipeline::simulate`]. With `train`, memory
//! adds gradients and Adam state ([`TRAIN_BYTES_PER_WEIGHT_BYTE`] per weight byte) and the step
//! adds the data-parallel gradient all-reduce, not overlapped; without it the step is the forward
//! of every micro-batch. No I/O: the caller imports graphs (`import(mesh)`).

mod svg;

pub use svg::plot_svg;

use crate::cost::collective::{self, Kind};
use crate::cost::{Cluster, Roofline};
use crate::pipeline::{costs::LayerCosts, Layout, PipelinePartition};
use crate::remap::TensorParallel;
use crate::rewrite::DispatchRewrite;
use moe_ir::pipeline::{simulate, steps, Phase};
use moe_ir::{Graph, Level, Schedule};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Extra bytes per weight byte when training with Adam in mixed precision: bf16 gradients (1x)
/// and fp32 master weights, first and second moments (3 x 2x): 7 more per bf16 weight byte.
pub const TRAIN_BYTES_PER_WEIGHT_BYTE: f64 = 7.0;

/// What to plan for.
#[derive(Debug, Clone)]
pub struct Request {
    pub cluster: Cluster,
    /// Training step (forward + backward, gradients, optimizer state) instead of inference.
    pub train: bool,
    /// Tokens per step over the whole cluster (sets the micro-batches); `None`: 4 per stage.
    pub tokens: Option<u64>,
    /// Tokens one rank holds per micro-batch (sequence length x sequences per rank).
    pub tokens_per_rank: u64,
    /// Experts per MoE layer.
    pub experts: u64,
}

/// The dispatch family of a layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// Tensor-parallel group inside a node, the rewrite choosing each layer's form.
    Ppmoe,
    /// The imported expert-parallel form (capacity-padded all-to-all).
    AllToAll,
    /// The dense backbone: each MoE layer one FFN of the expert width (data and pipeline
    /// parallel, as [`plan_dense`] plans it).
    Dense,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Ppmoe => "ppmoe",
            Family::AllToAll => "all-to-all (padded)",
            Family::Dense => "dense backbone",
        }
    }
}

/// One layout that fits, with its prediction.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub nodes: u64,
    pub gpus: u64,
    pub family: Family,
    pub tp: u64,
    pub ep: u64,
    pub pp: u32,
    pub dp: u64,
    /// What the e-graph chose per MoE layer (`ppmoe x48`), or the input form.
    pub dispatch: String,
    pub schedule: String,
    pub micro_batches: u32,
    pub recompute: bool,
    /// Layers per stage.
    pub layout: Vec<u32>,
    /// Most memory any GPU needs, bytes.
    pub memory_bytes: f64,
    /// Predicted seconds per step.
    pub step_s: f64,
    pub tokens_per_step: f64,
    pub tokens_per_s: f64,
}

impl Plan {
    /// The flags that write this layout with `rewrite` (the model imported with `--mesh`).
    pub fn flags(&self) -> String {
        let mut s = match self.family {
            Family::Ppmoe => format!("--mesh {} --tp {}", mesh_of(self.dp, self.tp), self.tp),
            Family::AllToAll | Family::Dense => format!("--mesh {}", mesh_of(self.dp, self.ep)),
        };
        if self.pp > 1 {
            s.push_str(&format!(
                " --pp {} --micro-batches {}",
                self.pp, self.micro_batches
            ));
            if self.recompute {
                s.push_str(" --recompute");
            }
        }
        s
    }
}

fn mesh_of(dp: u64, ep: u64) -> String {
    if dp > 1 {
        format!("dp={dp},ep={ep}")
    } else {
        format!("ep={ep}")
    }
}

/// A layout left out, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub nodes: u64,
    pub layout: String,
    pub why: String,
}

/// Every layout considered.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Fitting layouts, fastest (most tokens per second) first.
    pub plans: Vec<Plan>,
    pub rejected: Vec<Rejected>,
}

impl Report {
    /// The best plan of `family` on `nodes` nodes.
    pub fn best(&self, family: Family, nodes: u64) -> Option<&Plan> {
        self.plans
            .iter()
            .find(|p| p.family == family && p.nodes == nodes)
    }
}

/// Adds the dense backbone's plans to `report`: `import(mesh)` imports the backbone (one expert
/// per MoE layer, top-1, no shared expert: a dense FFN of the expert width and its trivial
/// router), planned data- and pipeline-parallel like the all-to-all family with one expert.
pub fn plan_dense(
    req: &Request,
    import: &dyn Fn(&str) -> Result<Graph, String>,
    report: &mut Report,
) {
    let dense = plan(
        &Request {
            experts: 1,
            ..req.clone()
        },
        import,
    );
    report.plans.extend(
        dense
            .plans
            .into_iter()
            .filter(|p| p.family == Family::AllToAll)
            .map(|p| Plan {
                family: Family::Dense,
                dispatch: "dense".into(),
                ..p
            }),
    );
    report.rejected.extend(
        dense
            .rejected
            .into_iter()
            .filter(|r| r.layout.starts_with("ep="))
            .map(|r| Rejected {
                layout: format!("dense {}", r.layout),
                ..r
            }),
    );
    sort(&mut report.plans);
}

fn sort(plans: &mut [Plan]) {
    plans.sort_by(|a, b| {
        b.tokens_per_s
            .total_cmp(&a.tokens_per_s)
            .then(a.gpus.cmp(&b.gpus))
            .then(a.family.cmp(&b.family))
            .then(a.pp.cmp(&b.pp))
    });
}

/// A family's graph before partitioning, with what its layers chose.
struct Built {
    graph: Graph,
    dispatch: String,
}

/// Plans `req` on 1, 2, 4, ... and all of the cluster's nodes. `import(mesh)` imports the model
/// on a mesh spec (`ep=8`, as `--mesh`).
pub fn plan(req: &Request, import: &dyn Fn(&str) -> Result<Graph, String>) -> Report {
    let c = &req.cluster;
    let gpn = c.gpus_per_node.max(1);
    let model = Roofline::new(c.clone());
    let mut built: BTreeMap<(Family, u64), Result<Built, String>> = BTreeMap::new();
    let mut plans = Vec::new();
    let mut rejected = Vec::new();
    let mut node_counts: Vec<u64> = (0..)
        .map(|i| 1u64 << i)
        .take_while(|&n| n < c.nodes)
        .collect();
    node_counts.push(c.nodes.max(1));
    for &nodes in &node_counts {
        let gpus = nodes * gpn;
        let mut reject = |layout: String, why: String| {
            rejected.push(Rejected { nodes, layout, why });
        };
        for pp in (1..=gpus as u32).filter(|p| gpus % u64::from(*p) == 0) {
            let r = gpus / u64::from(pp);
            let mut candidates: Vec<(Family, u64)> = divisors(gpn)
                .into_iter()
                .filter(|&t| t > 1)
                .map(|t| (Family::Ppmoe, t))
                .collect();
            let ep = divisors(req.experts)
                .into_iter()
                .filter(|e| r % e == 0)
                .max()
                .unwrap_or(1);
            candidates.push((Family::AllToAll, ep));
            for (family, width) in candidates {
                let name = match family {
                    Family::Ppmoe => format!("tp={width} pp={pp}"),
                    Family::AllToAll | Family::Dense => format!("ep={width} pp={pp}"),
                };
                if r % width != 0 {
                    reject(
                        name,
                        format!("{width} does not divide the {r} ranks of a stage"),
                    );
                    continue;
                }
                if family == Family::Ppmoe && req.experts % width != 0 {
                    reject(
                        name,
                        format!("tp={width} does not divide {} experts", req.experts),
                    );
                    continue;
                }
                let b = built
                    .entry((family, width))
                    .or_insert_with(|| build(family, width, gpn, &model, import));
                let b = match b {
                    Ok(b) => &*b,
                    Err(e) => {
                        reject(name, e.clone());
                        continue;
                    }
                };
                let dp = r / width;
                match evaluate(req, b, pp, r, &model, gpn) {
                    Ok(e) => plans.push(Plan {
                        nodes,
                        gpus,
                        family,
                        tp: if family == Family::Ppmoe { width } else { 1 },
                        ep: width,
                        pp,
                        dp,
                        dispatch: b.dispatch.clone(),
                        schedule: "1f1b".into(),
                        micro_batches: e.micro_batches,
                        recompute: e.recompute,
                        layout: e.layout,
                        memory_bytes: e.memory,
                        step_s: e.step_s + grad_sync(req, c, e.weights, dp, width, gpn),
                        tokens_per_step: (r * req.tokens_per_rank) as f64
                            * f64::from(e.micro_batches),
                        tokens_per_s: 0.0,
                    }),
                    Err(why) => reject(name, why),
                }
            }
        }
    }
    for p in &mut plans {
        p.tokens_per_s = if p.step_s > 0.0 {
            p.tokens_per_step / p.step_s
        } else {
            0.0
        };
    }
    sort(&mut plans);
    Report { plans, rejected }
}

/// The data-parallel gradient all-reduce of a training step (not overlapped), seconds.
fn grad_sync(req: &Request, c: &Cluster, weights: f64, dp: u64, width: u64, gpn: u64) -> f64 {
    if !req.train || dp <= 1 {
        return 0.0;
    }
    let level = if dp * width > gpn {
        Level::InterNode
    } else {
        Level::IntraNode
    };
    collective::time(c, Kind::AllReduce, dp, level, weights as u64)
}

fn divisors(n: u64) -> Vec<u64> {
    (1..=n).filter(|d| n % d == 0).collect()
}

fn build(
    family: Family,
    width: u64,
    gpn: u64,
    model: &Roofline,
    import: &dyn Fn(&str) -> Result<Graph, String>,
) -> Result<Built, String> {
    let g = import(&format!("ep={width}"))?;
    match family {
        Family::AllToAll | Family::Dense => Ok(Built {
            graph: g,
            dispatch: "all-to-all".into(),
        }),
        Family::Ppmoe => {
            let g = TensorParallel {
                tp: width,
                gpus_per_node: gpn,
            }
            .remap(&g)
            .map_err(|e| format!("tensor-parallel remap: {e}"))?;
            let rw = DispatchRewrite {
                model: Arc::new(model.clone()),
                ..DispatchRewrite::default()
            };
            let out = rw.rewrite(&g).map_err(|e| format!("rewrite: {e}"))?;
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for l in &out.layers {
                *counts.entry(l.chosen.short_name()).or_default() += 1;
            }
            let dispatch = counts
                .iter()
                .map(|(k, n)| format!("{k} x{n}"))
                .collect::<Vec<_>>()
                .join(", ");
            Ok(Built {
                graph: out.graph,
                dispatch,
            })
        }
    }
}

struct Evaluated {
    micro_batches: u32,
    recompute: bool,
    layout: Vec<u32>,
    memory: f64,
    weights: f64,
    step_s: f64,
}

/// The fastest fitting cut of `b` into `pp` stages (without recomputation first).
fn evaluate(
    req: &Request,
    b: &Built,
    pp: u32,
    ranks: u64,
    model: &Roofline,
    gpn: u64,
) -> Result<Evaluated, String> {
    let gpu = req.cluster.gpu.memory_gb * 1e9;
    // Tokens of one micro-batch over the stage's whole mesh.
    let per_mb = ranks * req.tokens_per_rank;
    // Micro-batches: enough for the requested tokens per stage mesh, at least one per stage.
    let m = match req.tokens {
        Some(t) => t.div_ceil(per_mb.max(1)).max(u64::from(pp)) as u32,
        None => 4 * pp,
    };
    let costs = LayerCosts::of(&b.graph, model);
    let mut worst = String::new();
    for recompute in [false, true] {
        let part = PipelinePartition {
            stages: pp,
            layout: Layout::Balanced,
            schedule: Schedule::OneFOneB,
            // Inference keeps one micro-batch's activations per stage at a time; training keeps
            // what 1F1B has in flight.
            micro_batches: if req.train { m } else { 1 },
            model: Arc::new(model.clone()),
            gpus_per_node: gpn,
            gpu_memory_bytes: Some(gpu),
            recompute,
        };
        let cut = part.cut(&b.graph).map_err(|e| e.to_string())?;
        // Weights per device, for the optimizer state and the gradient all-reduce.
        let mut a = 0usize;
        let mut weights = vec![0f64; pp as usize];
        for (v, &l) in cut.layout.iter().enumerate() {
            let bnd = a + l as usize;
            weights[v % pp as usize] += costs.range(a, bnd, v, cut.layout.len()).weight_bytes;
            a = bnd;
        }
        let extra = if req.train {
            TRAIN_BYTES_PER_WEIGHT_BYTE
        } else {
            0.0
        };
        let (mut need, mut w_max) = (0f64, 0f64);
        for (s, m) in cut.memory_bytes.iter().enumerate() {
            need = need.max(m + extra * weights[s]);
            w_max = w_max.max(weights[s]);
        }
        if cut.over.is_some() || need > gpu {
            worst = format!(
                "needs {:.1} GiB per GPU{} (the GPU has {:.1} GiB)",
                need / (1u64 << 30) as f64,
                if recompute {
                    " even with recomputation"
                } else {
                    ""
                },
                gpu / (1u64 << 30) as f64
            );
            continue;
        }
        let order = steps(Schedule::OneFOneB, pp, m).map_err(|e| e.to_string())?;
        let bwd = if req.train {
            crate::pipeline::schedule::backward_ratio(recompute)
        } else {
            0.0
        };
        let t = simulate(
            &order,
            pp,
            m,
            |st| {
                let f = cut.seconds.get(st.vstage as usize).copied().unwrap_or(0.0);
                match st.phase {
                    Phase::Forward => f,
                    Phase::Backward => bwd * f,
                }
            },
            |_, _| 0.0,
        )
        .map_err(|e| e.to_string())?;
        return Ok(Evaluated {
            micro_batches: m,
            recompute,
            layout: cut.layout,
            memory: need,
            weights: w_max,
            step_s: t.makespan,
        });
    }
    Err(worst)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use moe_ir::hf::{import, ImportOptions};
    use moe_ir::Mesh;

    const MIXTRAL: &str = include_str!("../../../examples/hf/mixtral-8x7b.json");

    fn run(memory_gb: f64, train: bool) -> Report {
        let cluster = Cluster {
            nodes: 2,
            gpu: crate::cost::Gpu {
                memory_gb,
                ..Cluster::default().gpu
            },
            ..Cluster::default()
        };
        let sets = [
            "num_hidden_layers=4".to_string(),
            "hidden_size=512".to_string(),
            "intermediate_size=1024".to_string(),
        ];
        let imp = |mesh: &str| {
            let opts = ImportOptions {
                mesh: Some(Mesh::parse(mesh, 8).map_err(|e| e.to_string())?),
                seq: 256,
                ..Default::default()
            };
            import(MIXTRAL, &sets, &opts).map_err(|e| e.to_string())
        };
        let req = Request {
            cluster,
            train,
            tokens: None,
            tokens_per_rank: 256,
            experts: 8,
        };
        plan(&req, &imp)
    }

    #[test]
    fn plans_fit_are_ranked_and_rejections_say_why() {
        let r = run(141.0, true);
        assert!(!r.plans.is_empty());
        for w in r.plans.windows(2) {
            assert!(w[0].tokens_per_s >= w[1].tokens_per_s);
        }
        for p in &r.plans {
            assert!(p.memory_bytes <= 141e9, "{p:?}");
            assert_eq!(p.gpus, u64::from(p.pp) * p.dp * p.ep, "{p:?}");
            assert!(p.step_s > 0.0 && p.tokens_per_s > 0.0);
        }
        // Both families on both node counts.
        for n in [1, 2] {
            assert!(r.best(Family::Ppmoe, n).is_some());
            assert!(r.best(Family::AllToAll, n).is_some());
        }
        assert!(r.rejected.iter().any(|x| x.why.contains("does not divide")));
        // The SVG names its axes and legend.
        let svg = plot_svg(&r, "t");
        assert!(svg.contains("tokens/s") && svg.contains("nodes") && svg.contains("ppmoe"));
    }

    #[test]
    fn nothing_fits_a_tiny_gpu_and_each_layout_says_how_much_it_needs() {
        let r = run(0.001, true);
        assert!(r.plans.is_empty());
        assert!(r.rejected.iter().any(|x| x.why.starts_with("needs ")));
        // Training needs more than inference (gradients and optimizer state).
        let a = run(141.0, true);
        let b = run(141.0, false);
        let need = |r: &Report| {
            r.best(Family::Ppmoe, 1)
                .map(|p| (p.tp, p.pp, p.memory_bytes))
        };
        let (ta, pa, ma) = need(&a).unwrap();
        let same = b
            .plans
            .iter()
            .find(|p| p.family == Family::Ppmoe && p.nodes == 1 && p.tp == ta && p.pp == pa)
            .unwrap();
        assert!(ma > same.memory_bytes, "{ma} vs {}", same.memory_bytes);
    }
}
