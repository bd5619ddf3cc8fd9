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

/// `--skew F` prices the rank holding the hottest expert: the PPMoE layer's predicted time grows;
/// a skew below 1 is refused.
#[test]
fn skew_raises_the_predicted_time_of_sliced_experts() {
    let predicted = |skew: &str| {
        let mut args = vec![
            "rewrite",
            "examples/hf/mixtral-8x7b.json",
            "--mesh",
            "ep=2",
            "--tp",
            "2",
        ];
        args.extend_from_slice(&CUT);
        args.extend_from_slice(&["--skew", skew, "--explain", "-o", "-"]);
        let o = moe_opt(&args, None);
        (o.status.code(), stderr(&o))
    };
    let time = |e: &str| -> f64 {
        e.lines()
            .find(|l| l.starts_with("predicted step time"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("{e}"))
    };
    let (c1, e1) = predicted("1");
    let (c2, e2) = predicted("2");
    assert_eq!((c1, c2), (Some(0), Some(0)), "{e1}\n{e2}");
    assert!(time(&e2) > time(&e1), "{e1}\n{e2}");
    let (c, e) = predicted("0.5");
    assert_eq!(c, Some(1), "{e}");
    assert!(e.contains("--skew"), "{e}");
}
