//! `rewrite`'s memory refusal and `--explain`'s folding, through the binary.

mod common;

use common::{moe_opt, stderr};

fn flat(s: &str) -> String {
    s.replace(['│', '×', '╰', '─', '▶'], " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A layout that does not fit the cluster's GPU is refused (exit 1) with the stage, its need, the
/// GPU's memory and the nearest layout that fits; `--allow-over-memory` writes it.
#[test]
fn over_memory_layouts_are_refused_with_the_nearest_fit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = dir.path().join("small.toml");
    // A GPU of 0.5 GB: the cut Mixtral's weights (~0.9 GiB per rank at tp=2) fit neither on one
    // stage nor on two; three stages fit.
    std::fs::write(
        &cluster,
        "nodes = 1\ngpus_per_node = 2\nintra_node_gbps = 290\ninter_node_gbps = 50\n[gpu]\nname = \"tiny\"\nbf16_tflops = 675\nmemory_gb = 0.5\nhbm_gbps = 4300\n",
    )
    .expect("write cluster");
    let cluster = cluster.to_string_lossy().to_string();
    let base = [
        "rewrite",
        "examples/hf/mixtral-8x7b.json",
        "--mesh",
        "ep=2",
        "--set",
        "num_hidden_layers=8",
        "--set",
        "hidden_size=1024",
        "--set",
        "intermediate_size=4096",
        "--seq",
        "256",
        "--cluster",
        &cluster,
        "--tp",
        "2",
    ];
    let run = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        moe_opt(&a, None)
    };
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = flat(&stderr(&o));
    assert!(
        e.contains("--tp 2 without --pp does not fit in memory: stage 0 needs"),
        "{e}"
    );
    assert!(e.contains("the GPU has 0.5 GiB (tiny 0.5 GB)"), "{e}");
    assert!(
        e.contains("the nearest layout that fits is --tp 2 --pp"),
        "{e}"
    );
    let o = run(&["--pp", "2"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = flat(&stderr(&o));
    assert!(
        e.contains("--tp 2 --pp 2 does not fit in memory: stage"),
        "{e}"
    );
    // The suggested layout is accepted.
    let fit = e
        .split("the nearest layout that fits is --tp 2 ")
        .nth(1)
        .and_then(|s| s.split(" (layout").next())
        .expect("a suggestion")
        .to_string();
    let args: Vec<&str> = fit.split(' ').collect();
    let o = run(&args);
    assert_eq!(o.status.code(), Some(0), "{fit}: {}", stderr(&o));
    let o = run(&["--pp", "2", "--allow-over-memory"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// Qwen3-30B-A3B's 48 identical MoE layers fold: one entry for layers 1-47 (layer 0 differs
/// only by a buffer the others share, and says so), and the proof is PPMoE's own rule.
#[test]
fn explain_folds_identical_layers() {
    let o = moe_opt(
        &[
            "rewrite",
            "examples/hf/qwen3-30b-a3b.json",
            "--mesh",
            "ep=8",
            "--tp",
            "8",
            "--explain",
            "-o",
            "-",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("input layers 0-47 (48 layers)"), "{e}");
    assert!(e.contains("layers 1-47 (47 identical layers"), "{e}");
    assert!(e.contains("shared: "), "{e}");
    assert_eq!(e.matches("<- chosen").count(), 2, "{e}");
    assert!(
        e.contains("proof of the chosen form (egg explanation): dispatch-a2a-to-ppmoe-slicing"),
        "{e}"
    );
    assert!(!e.contains("allgather-slicing ->"), "{e}");
    assert!(e.lines().count() < 40, "{e}");
}
