//! Times `moe_passes::plan::plan` (what `moe-opt plan` runs) on a config and a cluster file:
//! `cargo run --release -p moe-passes --example plan_time -- CONFIG CLUSTER [--train]`.
//! A benchmark, not a test: it prints the median of 3 runs and the best plan.

use moe_ir::hf::{import, ImportOptions};
use moe_ir::Mesh;
use moe_passes::cost::Cluster;
use moe_passes::plan::{plan, Request};
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
    let imp = |mesh: &str| {
        let opts = ImportOptions {
            mesh: Some(Mesh::parse(mesh, gpn).map_err(|e| e.to_string())?),
            gpus_per_node: gpn,
            ..Default::default()
        };
        import(&text, &[], &opts).map_err(|e| e.to_string())
    };
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
        last = Some(plan(&req, &imp));
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
    if let Some(p) = r.plans.iter().find(|p| p.nodes == cluster.nodes) {
        println!("best: {} ({:.0} tokens/s)", p.flags(), p.tokens_per_s);
    }
    Ok(())
}
