//! `moe-opt plan MODEL --cluster FILE [--tokens N] [--train] [--json] [--plot OUT.svg]`: every
//! layout of an HF config on the cluster (1, 2, 4, ... and all its nodes), pruned by divisibility
//! and memory, ranked by predicted tokens per second (`moe_passes::plan`).

use crate::io::{read_input, write_output};
use crate::load::ImportArgs;
use miette::{miette, Result};
use moe_ir::{hf, Mesh};
use moe_passes::cost::Cluster;
use moe_passes::plan::{plan, plan_dense, plot_svg, Family, Report, Request};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Hugging Face config.json.
    model: String,
    /// Cluster description (TOML, as `rewrite --cluster`).
    #[arg(long, value_name = "FILE")]
    cluster: PathBuf,
    /// Routing imbalance to price: the hottest expert gets F times its balanced share of the
    /// routed rows (the rank holding it sets the step time). 1 is balanced.
    #[arg(long, value_name = "F", default_value_t = 1.0)]
    skew: f64,
    /// Cost profile (TOML of rates by op class), as `rewrite --profile`.
    #[arg(long, value_name = "FILE")]
    profile: Option<PathBuf>,
    /// Tokens per step over the whole cluster (sets the micro-batches; default 4 per stage).
    #[arg(long, value_name = "N")]
    tokens: Option<u64>,
    /// Plan a training step (forward + backward, gradients and Adam state, gradient all-reduce).
    #[arg(long)]
    train: bool,
    /// Plans shown.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Print `{"plans": [...], "rejected": [...]}` instead of tables.
    #[arg(long)]
    json: bool,
    /// Write an SVG of the best throughput against node count per dispatch family.
    #[arg(long, value_name = "OUT.svg")]
    plot: Option<PathBuf>,
    /// `--set`, `--seq`, `--micro-batch`, `--dtype` as for `import` (`--mesh` is the plan's).
    #[command(flatten)]
    import: ImportArgs,
}

pub fn run(a: Args) -> Result<()> {
    let p = a.cluster.to_string_lossy().to_string();
    let cluster = Cluster::from_toml(&read_input(&p)?).map_err(|e| miette!("{p}: {e}"))?;
    let cluster = match &a.profile {
        Some(f) => crate::load::cost_profile(f)?.apply(&cluster),
        None => cluster,
    };
    if !(a.skew.is_finite() && a.skew >= 1.0) {
        return Err(miette!(
            "--skew must be a number of at least 1 (1: balanced routing)"
        ));
    }
    let cluster = Cluster {
        skew: a.skew,
        ..cluster
    };
    if a.import.mesh.is_some() {
        return Err(miette!("plan chooses the mesh itself: drop --mesh"));
    }
    let text = read_input(&a.model)?;
    let (report, name) = plan_model(&a.model, &text, &a.import, &cluster, a.train, a.tokens)?;
    if let Some(out) = &a.plot {
        let title = format!(
            "{} on {} x {} {}: {}",
            name,
            cluster.nodes,
            cluster.gpus_per_node,
            cluster.gpu.name,
            if a.train { "training" } else { "inference" }
        );
        write_output(Some(out), &plot_svg(&report, &title))?;
    }
    let text = if a.json {
        let mut v = serde_json::to_value(&report).map_err(|e| miette!("{e}"))?;
        if let Some(p) = v.get_mut("plans").and_then(|p| p.as_array_mut()) {
            p.truncate(a.top.max(1) * 10);
        }
        serde_json::to_string_pretty(&v).map_err(|e| miette!("{e}"))? + "\n"
    } else {
        table(&report, &cluster, a.top)
    };
    write_output(None, &text)
}

/// Plans the HF config `text` (named `name`) on `cluster`: the report and the model's name.
pub fn plan_model(
    name: &str,
    text: &str,
    import_args: &ImportArgs,
    cluster: &Cluster,
    train: bool,
    tokens: Option<u64>,
) -> Result<(Report, String)> {
    let base = import_args.options()?;
    let gpn = cluster.gpus_per_node;
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| miette!("{name}: {e}"))?;
    let spec = crate::load::spec_of(name, value, &import_args.sets)?;
    let lower = |spec: &hf::ModelSpec, mesh: &str| {
        let m = Mesh::parse(mesh, gpn).map_err(|e| e.to_string())?;
        let opts = hf::ImportOptions {
            mesh: Some(m),
            gpus_per_node: gpn,
            ..base.clone()
        };
        hf::lower(spec, &opts).map_err(|e| e.to_string())
    };
    let import = |mesh: &str| lower(&spec, mesh);
    // The dense backbone: one expert per MoE layer, top-1, no shared expert.
    let mut dense_spec = spec.clone();
    if let Some(moe) = dense_spec.moe.as_mut() {
        moe.experts = 1;
        moe.top_k = 1;
        moe.shared = None;
        moe.capacity = hf::spec::CapacitySpec::Dropless;
        moe.router.groups = None;
        moe.router.select_bias = false;
        moe.router.normalize = true;
        moe.router.scale = 1.0;
        moe.router.scale_input = false;
    }
    let import_dense = |mesh: &str| lower(&dense_spec, mesh);
    let probe = import("ep=1").map_err(|e| miette!("{name}: {e}"))?;
    let experts = probe
        .meta
        .get("experts")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| miette!("{name}: not a MoE model (no experts)"))?;
    let req = Request {
        cluster: cluster.clone(),
        train,
        tokens,
        tokens_per_rank: base.seq * base.micro_batch,
        experts,
    };
    let t0 = std::time::Instant::now();
    let mut report = plan(&req, &import);
    plan_dense(&req, &import_dense, &mut report);
    tracing::info!(seconds = t0.elapsed().as_secs_f64(), "planned");
    Ok((report, probe.name))
}

fn gib(b: f64) -> f64 {
    b / (1u64 << 30) as f64
}

/// The top plans on all of the cluster's nodes, the best of each family per node count, and why
/// the rest were rejected.
fn table(r: &Report, c: &Cluster, top: usize) -> String {
    let mut s = String::new();
    let all = c.nodes;
    let _ = writeln!(
        s,
        "plans on {} node(s) x {} {} ({:.0} GB), best first:",
        all, c.gpus_per_node, c.gpu.name, c.gpu.memory_gb
    );
    let _ = writeln!(
        s,
        "  {:<22} {:>3} {:>3} {:>3} {:>4} {:>4}  {:<26} {:>9} {:>12} {:>8}  flags",
        "family", "tp", "ep", "pp", "dp", "mb", "dispatch chosen", "step ms", "tokens/s", "GiB/GPU"
    );
    // The dense backbone is a reference, not a layout of this model: it is in the summary below.
    for p in r
        .plans
        .iter()
        .filter(|p| p.nodes == all && p.family != Family::Dense)
        .take(top)
    {
        let _ = writeln!(
            s,
            "  {:<22} {:>3} {:>3} {:>3} {:>4} {:>4}  {:<26} {:>9.1} {:>12.0} {:>8.1}  {}",
            p.family.name(),
            p.tp,
            p.ep,
            p.pp,
            p.dp,
            p.micro_batches,
            p.dispatch,
            p.step_s * 1e3,
            p.tokens_per_s,
            gib(p.memory_bytes),
            p.flags()
        );
    }
    let mut nodes: Vec<u64> = r.plans.iter().map(|p| p.nodes).collect();
    nodes.extend(r.rejected.iter().map(|x| x.nodes));
    nodes.sort_unstable();
    nodes.dedup();
    let _ = writeln!(s, "best per node count (tokens/s):");
    for n in nodes {
        let pp = r.best(Family::Ppmoe, n);
        let aa = r.best(Family::AllToAll, n);
        let cell = |p: Option<&moe_passes::plan::Plan>| {
            p.map_or("no layout fits".to_string(), |p| {
                format!("{:.0} ({})", p.tokens_per_s, p.flags())
            })
        };
        let dense = r.best(Family::Dense, n);
        let of_dense = match (pp, dense) {
            (Some(x), Some(d)) if d.tokens_per_s > 0.0 => format!(
                "; dense backbone {:.0} ({}), ppmoe at {:.0}% of it",
                d.tokens_per_s,
                d.flags(),
                100.0 * x.tokens_per_s / d.tokens_per_s
            ),
            _ => String::new(),
        };
        let ratio = match (pp, aa) {
            (Some(x), Some(y)) if y.tokens_per_s > 0.0 => {
                let q = x.tokens_per_s / y.tokens_per_s;
                if q >= 1.0 {
                    format!("ppmoe {q:.2}x faster")
                } else {
                    format!("ppmoe {:.2}x slower", 1.0 / q)
                }
            }
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "  {n:>3} node(s): ppmoe {}; all-to-all (padded) {}; {ratio}{of_dense}",
            cell(pp),
            cell(aa)
        );
    }
    // Rejections grouped by reason (memory reasons by their kind).
    let mut why: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for x in &r.rejected {
        let key = if x.why.starts_with("needs ") {
            "does not fit in GPU memory".to_string()
        } else {
            x.why.clone()
        };
        why.entry(key)
            .or_default()
            .push(format!("{}@{}n", x.layout, x.nodes));
    }
    let _ = writeln!(s, "rejected {} layout(s):", r.rejected.len());
    for (k, v) in why {
        let shown: Vec<&str> = v.iter().take(6).map(String::as_str).collect();
        let more = if v.len() > 6 {
            format!(", ... ({} in all)", v.len())
        } else {
            String::new()
        };
        let _ = writeln!(s, "  {k}: {}{more}", shown.join(", "));
    }
    s
}
