//! `moe-opt bench`: times compiled graphs through the executor that `run` uses (one path: what is
//! timed is what users run).
//!
//! Layer mode (default): one MoE layer of hidden `H`, expert width `F`, `E` experts, top-`k`, `T`
//! tokens on `W` GPUs, as three graphs: the dense backbone (a tensor-parallel MLP of the same
//! width: matmul, GELU, matmul, all-reduce), the standard expert-parallel layer (router,
//! capacity-padded dispatch, all-to-all, experts, all-to-all, combine; [`moe_graph`]) and the form
//! the passes make of it on a tensor-parallel group of `W` (`remap(tp=W),dispatch`: PPMoE where
//! the cost model picks it). Model mode (`--model CONFIG`): a whole imported model.
//!
//! Each form runs `--warmup` times, then `--iters` timed times; the median compute time (the
//! devices synchronised, outputs not read back) is reported with its useful TFLOP/s. The MoE
//! forms' outputs are compared (they compute the same function). `--profile` adds one run with
//! per-op device times.

use crate::exec::{load_at, BackendArg, PrecisionArg};
use crate::io::{read_input, write_output};
use crate::load::ImportArgs;
use miette::{miette, Result};
use moe_backend::{Device, Precision, RunOptions, RunReport, Weights};
use moe_ir::Graph;
use moe_passes::registry::{self, PassContext};
use serde_json::json;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to run.
    #[arg(long, value_enum, default_value_t = BackendArg::Cuda)]
    backend: BackendArg,
    /// GPUs (ranks of the layer's mesh; on the CPU, simulated ranks).
    #[arg(long, default_value_t = 1)]
    gpus: u64,
    /// Float precision.
    #[arg(long, value_enum, default_value_t = PrecisionArg::Bf16)]
    precision: PrecisionArg,
    /// Hidden size H.
    #[arg(long, default_value_t = 4096)]
    hidden: u64,
    /// FFN width F of the dense MLP and of each expert.
    #[arg(long, default_value_t = 16384)]
    ffn: u64,
    /// Experts E.
    #[arg(long, default_value_t = 8)]
    experts: u64,
    /// Experts per token.
    #[arg(long, default_value_t = 1)]
    top_k: u64,
    /// Tokens per step, all GPUs together.
    #[arg(long, default_value_t = 16384)]
    tokens: u64,
    /// Capacity factor of the expert-parallel form (slots per expert per rank:
    /// ceil(tokens per rank x k / E x factor)).
    #[arg(long, default_value_t = 1.25)]
    capacity_factor: f64,
    /// Time a whole model instead: an HF config.json or model.json (with `--set`, `--seq`, ...).
    #[arg(long, value_name = "CONFIG")]
    model: Option<String>,
    /// Timed runs per form (the median is reported).
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Untimed runs per form first (kernel compilation, plan caches).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Seed of the weights and inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also run each form once with per-op device times.
    #[arg(long)]
    profile: bool,
    /// Cost profile (TOML of rates, as `rewrite --profile`): print each form's predicted time
    /// beside the measured one (per rank, one node of the cluster's defaults otherwise).
    #[arg(long, value_name = "FILE")]
    cost_profile: Option<PathBuf>,
    /// The device's peak TFLOP/s for the share of peak (default: an H200's measured bf16 rate).
    #[arg(long, default_value_t = 790.0)]
    peak_tflops: f64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Output file (written atomically); stdout when absent or `-`.
    #[arg(short, long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    import: ImportArgs,
}

/// One timed form.
#[derive(Debug)]
struct Form {
    name: String,
    /// Median compute time over the timed runs, ms.
    ms: f64,
    /// All timed runs, ms.
    runs: Vec<f64>,
    flops: f64,
    /// Per-op device times of the profiled run, ms, largest first, with the op's useful FLOPs
    /// (0 for ops that do none).
    ops: Vec<(&'static str, f64, f64)>,
    /// Weights and inputs made on the device in the last timed run, ms (synchronised).
    setup_ms: f64,
    /// Device memory the allocator held after the runs, bytes (a high-water mark; GPU only).
    memory: Option<u64>,
    /// What the graph holds: collectives and routing ops.
    shape: String,
    /// The cost model's prediction under `--cost-profile`, ms.
    predicted_ms: Option<f64>,
}

/// The cost model's time for `g` as it is (DAG cost of its program, per rank), ms.
fn predict(g: &Graph, cluster: &moe_passes::cost::Cluster) -> f64 {
    let loaded = moe_passes::load(g);
    let model = moe_passes::cost::Roofline::new(cluster.clone());
    moe_passes::DagExtractor::new(&loaded.egraph, &model).dag_cost(loaded.root) * 1e3
}

/// The standard expert-parallel layer as model.json: tokens split over `ep` (`W` ranks), experts
/// split over `ep`, capacity-padded dispatch and combine around two all-to-alls.
pub fn moe_graph(h: u64, f: u64, e: u64, k: u64, t: u64, w: u64, cap: u64) -> serde_json::Value {
    let l = json!({"layer": 0});
    json!({
        "format": "moe-ir/1",
        "name": "bench-moe-layer",
        "mesh": {"axes": [{"name": "ep", "size": w, "level": "intra_node"}]},
        "nodes": [
            {"name": "x", "op": {"input": {"dtype": "bf16", "shape": [t, h], "split": [["ep"], []]}}, "scope": l},
            {"name": "w_gate", "op": {"weight": {"dtype": "bf16", "shape": [h, e]}}, "scope": l},
            {"name": "logits", "op": "matmul", "inputs": ["x", "w_gate"], "scope": l},
            {"name": "router", "op": {"router": {"experts": e, "k": k, "score": "softmax", "normalize": k > 1}}, "inputs": ["logits"], "scope": l},
            {"name": "dispatch", "op": {"dispatch": {"experts": e, "capacity": cap}}, "inputs": ["x", "router:0"], "scope": l},
            {"name": "a2a_in", "op": {"all_to_all": {"axis": "ep", "split_dim": 0, "concat_dim": 1}}, "inputs": ["dispatch"], "scope": l},
            {"name": "w_up", "op": {"weight": {"dtype": "bf16", "shape": [e, h, f], "split": [["ep"], [], []]}}, "scope": l},
            {"name": "w_down", "op": {"weight": {"dtype": "bf16", "shape": [e, f, h], "split": [["ep"], [], []]}}, "scope": l},
            {"name": "experts", "op": {"expert_ffn": {"layout": "padded", "act": "gelu", "gated": false}}, "inputs": ["a2a_in", "w_up", "w_down"], "scope": l},
            {"name": "a2a_out", "op": {"all_to_all": {"axis": "ep", "split_dim": 1, "concat_dim": 0}}, "inputs": ["experts"], "scope": l},
            {"name": "y", "op": {"combine": {"experts": e, "capacity": cap}}, "inputs": ["a2a_out", "router:0", "router:1"], "scope": l}
        ],
        "outputs": [{"name": "y", "value": "y"}]
    })
}

/// The dense backbone as model.json: a tensor-parallel MLP over `tp` (`W` ranks), GELU.
pub fn dense_graph(h: u64, f: u64, t: u64, w: u64) -> serde_json::Value {
    let l = json!({"layer": 0});
    json!({
        "format": "moe-ir/1",
        "name": "bench-dense-mlp",
        "mesh": {"axes": [{"name": "tp", "size": w, "level": "intra_node"}]},
        "nodes": [
            {"name": "x", "op": {"input": {"dtype": "bf16", "shape": [t, h]}}, "scope": l},
            {"name": "w_up", "op": {"weight": {"dtype": "bf16", "shape": [h, f], "split": [[], ["tp"]]}}, "scope": l},
            {"name": "up", "op": "matmul", "inputs": ["x", "w_up"], "scope": l},
            {"name": "act", "op": "gelu", "inputs": ["up"], "scope": l},
            {"name": "w_down", "op": {"weight": {"dtype": "bf16", "shape": [f, h], "split": [["tp"], []]}}, "scope": l},
            {"name": "down", "op": "matmul", "inputs": ["act", "w_down"], "scope": l},
            {"name": "y", "op": {"all_reduce": {"axis": "tp"}}, "inputs": ["down"], "scope": l}
        ],
        "outputs": [{"name": "y", "value": "y"}]
    })
}

/// The ops of `g` that say which form it is.
fn shape_of(g: &Graph) -> String {
    let mut seen: Vec<&'static str> = Vec::new();
    for (_, n) in g.nodes() {
        let name = n.op.name();
        let telling = matches!(
            name,
            "all_to_all"
                | "all_reduce"
                | "all_gather"
                | "reduce_scatter"
                | "local_routes"
                | "dispatch"
        );
        if telling && !seen.contains(&name) {
            seen.push(name);
        }
    }
    seen.join("+")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Times `g` (see the module docs); returns the form and the last run's report.
fn time(name: &str, g: &Graph, a: &Args, opts: RunOptions) -> Result<(Form, RunReport)> {
    let go = |o: &RunOptions| {
        moe_backend::run(g, &Weights::Seeded, o).map_err(|e| miette!("{name}: {e}"))
    };
    let mut last = go(&opts)?;
    for _ in 1..a.warmup.max(1) {
        last = go(&opts)?;
    }
    let mut runs = Vec::with_capacity(a.iters);
    for _ in 0..a.iters.max(1) {
        last = go(&opts)?;
        runs.push(ms(last.compute));
    }
    let mut ops = Vec::new();
    if a.profile {
        let p = go(&RunOptions {
            profile: true,
            ..opts
        })?;
        let flops_of = |op: &str| {
            p.op_flops
                .iter()
                .find(|(o, _)| *o == op)
                .map_or(0.0, |&(_, f)| f)
        };
        ops = p
            .op_times
            .iter()
            .map(|&(op, t)| (op, ms(t), flops_of(op)))
            .collect();
        ops.sort_by(|x, y| y.1.total_cmp(&x.1));
    }
    let form = Form {
        name: name.to_string(),
        ms: median(&mut runs.clone()),
        runs,
        flops: last.flops,
        memory: last.device_memory,
        setup_ms: ms(last.setup),
        ops,
        shape: shape_of(g),
        predicted_ms: match &a.cost_profile {
            Some(p) => Some(predict(
                g,
                &crate::load::cost_profile(p)?.apply(&moe_passes::cost::Cluster::default()),
            )),
            None => None,
        },
    };
    Ok((form, last))
}

/// The largest relative difference of two runs' outputs (max |a - b| / max |b|).
fn max_rel(a: &RunReport, b: &RunReport) -> f64 {
    let mut worst: f64 = 0.0;
    for ((_, x), (_, y)) in a.outputs.iter().zip(&b.outputs) {
        let scale = y.data.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-30);
        let diff = x
            .data
            .iter()
            .zip(&y.data)
            .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()));
        worst = worst.max(diff / scale);
    }
    worst
}

pub fn run(a: Args) -> Result<()> {
    let precision = match a.precision {
        PrecisionArg::F32 => Precision::F32,
        PrecisionArg::F64 => Precision::F64,
        PrecisionArg::Bf16 => Precision::Bf16,
    };
    let device = match a.backend {
        BackendArg::Cpu => Device::Cpu,
        BackendArg::Cuda => Device::Cuda {
            gpus: a.gpus as usize,
        },
    };
    let opts = RunOptions {
        device,
        precision,
        seed: a.seed,
        micro_batches: None,
        profile: false,
    };
    let mut forms = Vec::new();
    let mut agreement = None;
    let title;
    if let Some(model) = &a.model {
        let text = read_input(model)?;
        let g = load_at(model, &text, &a.import, None)?;
        title = format!("model {} on mesh {}", g.name, g.mesh);
        forms.push(time(&g.name, &g, &a, opts)?.0);
    } else {
        let (h, f, e, k, t, w) = (a.hidden, a.ffn, a.experts, a.top_k, a.tokens, a.gpus);
        if w == 0 || t % w != 0 || e % w != 0 || f % w != 0 {
            return Err(miette!(
                "--gpus {w} must divide --tokens {t}, --experts {e} and --ffn {f}"
            ));
        }
        let cap = ((t / w * k) as f64 / e as f64 * a.capacity_factor).ceil() as u64;
        let parse = |v: serde_json::Value| {
            moe_ir::json::from_json(&v.to_string()).map_err(|e| miette!("bench graph: {e}"))
        };
        let dense = parse(dense_graph(h, f, t, w))?;
        let moe = parse(moe_graph(h, f, e, k, t, w, cap))?;
        let steps = registry::rewrite_steps(Some(w), None);
        let pipeline = registry::pipeline(&steps, &PassContext::default());
        let (rewritten, _) = pipeline
            .run(moe.clone())
            .map_err(|e| miette!("rewriting the layer: {e}"))?;
        title = format!(
            "one layer: H={h} F={f} E={e} top-{k}, {t} tokens, {w} GPU(s), capacity {cap} slots per expert per rank (factor {})",
            a.capacity_factor
        );
        forms.push(time("dense backbone (tp MLP)", &dense, &a, opts)?.0);
        let (ep, ep_run) = time("expert-parallel (all-to-all)", &moe, &a, opts)?;
        forms.push(ep);
        let (pp, pp_run) = time(
            &format!("rewritten ({})", registry::to_text(&steps)),
            &rewritten,
            &a,
            opts,
        )?;
        forms.push(pp);
        agreement = Some(max_rel(&pp_run, &ep_run));
    }
    let text = if a.json {
        let forms: Vec<serde_json::Value> = forms
            .iter()
            .map(|f| {
                json!({
                    "form": f.name, "graph": f.shape, "median_ms": f.ms, "runs_ms": f.runs,
                    "tflop": f.flops / 1e12,
                    "tflops": f.flops / f.ms / 1e9,
                    "share_of_peak": f.flops / f.ms / 1e9 / a.peak_tflops,
                    "device_memory_bytes": f.memory, "setup_ms": f.setup_ms,
                    "predicted_ms": f.predicted_ms,
                    "ops_ms": f.ops.iter().map(|(o, t, fl)| json!({"op": o, "ms": t, "tflop": fl / 1e12})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let v = json!({"bench": title, "forms": forms, "outputs_max_rel": agreement});
        format!("{v}\n")
    } else {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "moe-opt bench ({:?}, {}): {title}",
            opts.device,
            precision.name()
        );
        let base = forms.first().map_or(f64::NAN, |f| f.ms);
        for f in &forms {
            let tf = f.flops / f.ms / 1e9;
            let _ = writeln!(
                s,
                "  {:<44} {:9.3} ms  {:7.1} TFLOP/s ({:4.1}% of peak)  throughput vs first {:5.3}  [{}]",
                f.name,
                f.ms,
                tf,
                100.0 * tf / a.peak_tflops,
                base / f.ms,
                f.shape
            );
            if let Some(p) = f.predicted_ms {
                let _ = writeln!(
                    s,
                    "      predicted {p:.3} ms (cost profile), measured / predicted {:.2}",
                    f.ms / p
                );
            }
            let _ = writeln!(s, "      weights ready in {:.1} ms (last run)", f.setup_ms);
            if let Some(b) = f.memory {
                let gib = b as f64 / (1u64 << 30) as f64;
                let _ = writeln!(s, "      device memory held after the runs: {gib:.2} GiB");
            }
            let op_total: f64 = f.ops.iter().map(|o| o.1).sum();
            for (op, t, fl) in &f.ops {
                let share = 100.0 * t / op_total.max(f64::MIN_POSITIVE);
                if *fl > 0.0 {
                    let _ = writeln!(
                        s,
                        "      {op:<16} {t:9.3} ms {share:5.1}%  {:7.1} TFLOP/s",
                        fl / t / 1e9
                    );
                } else {
                    let _ = writeln!(s, "      {op:<16} {t:9.3} ms {share:5.1}%");
                }
            }
        }
        if let Some(r) = agreement {
            let _ = writeln!(s, "  MoE forms' outputs: max rel difference {r:.3e}");
        }
        s
    };
    write_output(a.output.as_deref(), &text)?;
    match agreement {
        Some(r) if r > 2e-2 => Err(miette!(
            "the expert-parallel and rewritten forms' outputs differ: max rel {r:.3e}"
        )),
        _ => Ok(()),
    }
}
