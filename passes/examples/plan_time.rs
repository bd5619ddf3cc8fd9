//! Times `moe_passes::plan::plan` and `plan_dense` (what `moe-opt plan` runs) on a config and a cluster file:
//! `cargo run --release -p moe-passes --example plan_time -- CONFIG CLUSTER [--train]`.
//! A benchmark, not a test: it prints the median of 3 runs and the best plan.

use moe_ir::hf::{lower, parse_spec, ImportOptions};
use moe_ir::Mesh;
use moe_passes::cost::Cluster;
use moe_passes::plan::{plan, plan_dense, Family, Request};
use std::time::Instant;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(cfg), Some(cl)) = (args.get(1), args.get(2)) else {
        return Err("usage: plan_time CONFIG CLUSTER [--train]".into());
    };
    let train = args.iter().any(|a| a == "--train");
    let text = std::fs::read_to_string(cfg).map_err(|e| format!("{cfg}: {e}"))?;
    let cluster = Cluster::from_toml(&std::fs::read_to_string(cl).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let gpn = cluster.gpus_per_node;
    let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let spec = parse_spec(&config).map_err(|e| e.to_string())?;
    // The dense backbone, as `moe-opt plan` builds it.
    let mut dense = spec.clone();
    if let Some(m) = dense.moe.as_mut() {
        m.experts = 1;
        m.top_k = 1;
        m.shared = None;
        m.router.groups = None;
        m.router.select_bias = false;
        m.router.normalize = true;
    }
    let lower_on = |spec: &moe_ir::hf::ModelSpec, mesh: &str| {
        let opts = ImportOptions {
            mesh: Some(Mesh::parse(mesh, gpn).map_err(|e| e.to_string())?),
            gpus_per_node: gpn,
            ..Default::default()
        };
        lower(spec, &opts).map_err(|e| e.to_string())
    };
    let imp = |mesh: &str| lower_on(&spec, mesh);
    let imp_dense = |mesh: &str| lower_on(&dense, mesh);
    let experts = imp("ep=1")?
        .meta
        .get("experts")
        .and_then(serde_json::Value::as_u64)
        .ok_or("not a MoE model")?;
    let req = Request {
        cluster: cluster.clone(),
        train,
        tokens: None,
        tokens_per_rank: ImportOptions::default().seq,
        experts,
    };
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let t = Instant::now();
        let mut r = plan(&req, &imp);
        plan_dense(&req, &imp_dense, &mut r);
        last = Some(r);
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let r = last.ok_or("no run")?;
    println!(
        "plan {cfg} on {cl}: median {:.3} s of 3 ({} plans, {} rejected)",
        times[1],
        r.plans.len(),
        r.rejected.len()
    );
    for f in [Family::Ppmoe, Family::AllToAll, Family::Dense] {
        if let Some(p) = r.best(f, cluster.nodes) {
            println!(
                "best {}: {} ({:.0} tokens/s)",
                f.name(),
                p.flags(),
                p.tokens_per_s
            );
        }
    }
    Ok(())
}
