//! Cost profiles: `calibrate` on the CPU writes one through the executor, and `rewrite
//! --profile` prices with it.

mod common;

use common::{moe_opt, stderr};

#[test]
fn calibrate_on_the_cpu_writes_a_profile_that_rewrite_uses() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("cpu.toml");
    let out_s = out.to_string_lossy().to_string();
    let o = moe_opt(
        &[
            "calibrate",
            "--backend",
            "cpu",
            "--precision",
            "f32",
            "--gpus",
            "2",
            "--scale",
            "0.03",
            "--iters",
            "2",
            "--repeat",
            "2",
            "-o",
            &out_s,
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).expect("profile written");
    for rate in [
        "gemm_tflops",
        "grouped_gemm_tflops",
        "attention_tflops",
        "hbm_gbps",
        "gather_gbps",
        "combine_gbps",
        "intra_node_gbps",
        "intra_node_latency_us",
    ] {
        assert!(
            text.contains(&format!("{rate} = {{ value = ")),
            "{rate}: {text}"
        );
    }
    assert!(
        text.contains("measured = \"moe-opt calibrate --backend cpu"),
        "{text}"
    );

    // A CPU is far slower than an H200: the same rewrite predicts far more time with it.
    let predicted = |extra: &[&str]| {
        let mut args = vec![
            "rewrite",
            "examples/hf/mixtral-8x7b.json",
            "--mesh",
            "ep=2",
            "--set",
            "num_hidden_layers=1",
            "--set",
            "hidden_size=256",
            "--set",
            "intermediate_size=512",
            "--seq",
            "64",
            "--tp",
            "2",
            "--explain",
            "-o",
            "-",
        ];
        args.extend_from_slice(extra);
        let o = moe_opt(&args, None);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let e = stderr(&o);
        let line = e
            .lines()
            .find(|l| l.starts_with("predicted step time"))
            .unwrap_or_else(|| panic!("{e}"))
            .to_string();
        line.split_whitespace()
            .nth(3)
            .and_then(|x| x.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{line}"))
    };
    let h200 = predicted(&["--profile", "examples/profiles/h200.toml"]);
    let cpu = predicted(&["--profile", &out_s]);
    assert!(cpu > 10.0 * h200, "cpu {cpu} ms vs h200 {h200} ms");

    // A profile with an unsourced rate is refused, naming it.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[rates]\ngemm_tflops = { value = 1.0 }\n").expect("write");
    let mut args = vec![
        "rewrite",
        "examples/hf/mixtral-8x7b.json",
        "--set",
        "num_hidden_layers=1",
    ];
    let bad_s = bad.to_string_lossy().to_string();
    args.extend_from_slice(&["--profile", &bad_s]);
    let o = moe_opt(&args, None);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("gemm_tflops"), "{}", stderr(&o));
}
