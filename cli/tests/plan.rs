//! `moe-opt plan` through the binary: tables, `--json`, `--plot`, and `rewrite --cluster`
//! without layout flags applying the best plan.

mod common;

use common::{moe_opt, stderr};

const CUT: [&str; 8] = [
    "--set",
    "num_hidden_layers=4",
    "--set",
    "hidden_size=512",
    "--set",
    "intermediate_size=1024",
    "--seq",
    "256",
];

#[test]
fn plan_prints_json_and_a_plot() {
    let dir = tempfile::tempdir().expect("temp dir");
    let svg = dir.path().join("p.svg");
    let svg_s = svg.to_string_lossy().to_string();
    let mut args = vec![
        "plan",
        "examples/hf/mixtral-8x7b.json",
        "--cluster",
        "examples/clusters/h200-2x8.toml",
        "--train",
        "--json",
        "--plot",
        &svg_s,
    ];
    args.extend_from_slice(&CUT);
    let o = moe_opt(&args, None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let plans = j["plans"].as_array().expect("plans");
    assert!(!plans.is_empty());
    assert!(plans[0]["tokens_per_s"].as_f64().expect("number") > 0.0);
    assert!(j["rejected"].as_array().is_some());
    let text = std::fs::read_to_string(&svg).expect("svg written");
    assert!(
        text.starts_with("<svg") && text.contains("tokens/s"),
        "{text}"
    );

    // The table: plans, the best per node count with the ratio, rejections with reasons.
    let mut args = vec![
        "plan",
        "examples/hf/mixtral-8x7b.json",
        "--cluster",
        "examples/clusters/h200-2x8.toml",
    ];
    args.extend_from_slice(&CUT);
    let o = moe_opt(&args, None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(t.contains("best per node count"), "{t}");
    assert!(t.contains("rejected"), "{t}");
}

#[test]
fn rewrite_with_only_a_cluster_applies_the_best_plan() {
    let mut args = vec![
        "rewrite",
        "examples/hf/mixtral-8x7b.json",
        "--cluster",
        "examples/clusters/h200-1x8.toml",
        "-o",
        "-",
    ];
    args.extend_from_slice(&CUT);
    let o = moe_opt(&args, None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("applying the best plan on 1 node(s): --mesh"),
        "{e}"
    );
    let o = moe_opt(&["inspect", "-", "--json"], Some(&o.stdout));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(j["ranks"], 8 * j["stages"].as_u64().expect("stages"));
}
