//! End-to-end behaviour of the `moe-opt` binary: exit codes, stdin/stdout, atomic output files,
//! determinism.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn moe_opt(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_moe-opt"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    {
        let mut si = child.stdin.take().expect("stdin piped");
        if let Some(bytes) = stdin {
            si.write_all(bytes).expect("stdin accepts input");
        }
    }
    child.wait_with_output().expect("binary finishes")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

const LAYER: &str = "examples/moe-layer.json";

#[test]
fn validate_accepts_a_good_graph_and_exits_0() {
    let o = moe_opt(&["validate", LAYER], None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn invalid_input_exits_1_naming_the_place() {
    let o = moe_opt(
        &["validate", "snapshots/cases/invalid/shape-mismatch.json"],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("nodes[2]") && e.contains("logits"), "{e}");
    let o = moe_opt(
        &["validate", "snapshots/cases/invalid/unknown-field.json"],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("line 77"), "{}", stderr(&o));
}

#[test]
fn usage_errors_exit_2() {
    let o = moe_opt(&["inspect"], None);
    assert_eq!(o.status.code(), Some(2));
    let o = moe_opt(&["frobnicate"], None);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn missing_file_exits_1() {
    let o = moe_opt(&["inspect", "no/such/file.json"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no/such/file.json"));
}

#[test]
fn bad_configs_exit_1_without_panicking() {
    for case in [
        "hf-topk-exceeds-experts",
        "hf-negative-size",
        "hf-unknown-model-type",
        "hf-missing-key",
        "hf-mistyped-key",
    ] {
        let path = format!("snapshots/cases/invalid/{case}.json");
        let o = moe_opt(&["import", &path], None);
        assert_eq!(o.status.code(), Some(1), "{case}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{case}: {}", stderr(&o));
    }
}

#[test]
fn stdin_and_stdout_pipe_and_output_is_deterministic() {
    let text = std::fs::read(root().join(LAYER)).expect("example exists");
    let a = moe_opt(&["import", "-"], Some(&text));
    assert_eq!(
        a.status.code(),
        Some(1),
        "a model.json is not a config: {}",
        stderr(&a)
    );
    let j1 = moe_opt(&["inspect", "-", "--json"], Some(&text));
    let j2 = moe_opt(&["inspect", "-", "--json"], Some(&text));
    assert_eq!(j1.status.code(), Some(0), "{}", stderr(&j1));
    assert_eq!(j1.stdout, j2.stdout);
    let v: serde_json::Value =
        serde_json::from_slice(&j1.stdout).expect("inspect --json prints JSON");
    for key in [
        "format",
        "layers",
        "moe_layers",
        "nodes",
        "params",
        "ops",
        "collectives",
        "mesh",
        "stages",
    ] {
        assert!(v.get(key).is_some(), "inspect --json lacks `{key}`");
    }
    let c = &v["collectives"];
    let keys: Vec<&str> = c
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "all_to_all",
            "all_reduce",
            "all_gather",
            "reduce_scatter",
            "send",
            "recv"
        ]
    );
    assert_eq!(c["all_to_all"], 2);
    assert_eq!(v["params"], 32 * 8 + 8 * 32 * 64 * 2);
}

#[test]
fn output_file_is_written_whole_and_nothing_is_written_on_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("g.txt");
    let o = moe_opt(
        &[
            "import",
            "snapshots/cases/invalid/hf-negative-size.json",
            "-o",
            out.to_str().expect("utf-8"),
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(!out.exists(), "no file on error");
    let files: Vec<_> = std::fs::read_dir(dir.path()).expect("readable").collect();
    assert!(files.is_empty(), "no temporary left behind");
    let cfg = "snapshots/cases/invalid/hf-ep-does-not-divide-experts.json"; // a valid Mixtral config
    let o = moe_opt(
        &[
            "import",
            cfg,
            "--set",
            "num_hidden_layers=1",
            "--format",
            "text",
            "-o",
            out.to_str().expect("utf-8"),
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = std::fs::read_to_string(&out).expect("written");
    assert!(text.starts_with("graph ") && text.contains("outputs:"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out)
            .expect("exists")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(
            mode, 0o644,
            "a new output file gets the usual mode, not the temporary file's 0600"
        );
    }
}

#[test]
fn dot_output_has_clusters_and_marks_collectives() {
    let o = moe_opt(
        &[
            "import",
            "snapshots/cases/invalid/hf-ep-does-not-divide-experts.json",
            "--set",
            "num_hidden_layers=2",
            "--format",
            "dot",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let dot = String::from_utf8(o.stdout).expect("utf-8");
    assert!(dot.starts_with("digraph"));
    assert!(dot.contains("subgraph cluster_layer0") && dot.contains("subgraph cluster_layer1"));
    assert!(dot.contains("all_to_all") && dot.contains("#cc0000"));
}

#[test]
fn schema_prints_json_schema() {
    let o = moe_opt(&["schema"], None);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("schema is JSON");
    assert!(v.get("$schema").is_some());
}

const MIXTRAL: &str = "examples/hf/mixtral-8x7b.json";

/// stderr with miette's wrapping undone: words joined by single spaces.
fn flat(o: &Output) -> String {
    stderr(o)
        .replace(['│', '×', '╰', '─', '▶'], " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// `rewrite --pp`: bad requests exit 1 with the reason; `--emit-stage` writes one stage's program.
#[test]
fn pipeline_flags() {
    let cut = [
        "--mesh",
        "ep=2",
        "--set",
        "num_hidden_layers=4",
        "--set",
        "hidden_size=256",
        "--set",
        "intermediate_size=512",
        "--seq",
        "64",
    ];
    let run = |extra: &[&str]| {
        let mut args = vec!["rewrite", MIXTRAL];
        args.extend_from_slice(&cut);
        args.extend_from_slice(extra);
        moe_opt(&args, None)
    };
    let o = run(&["--tp", "2", "--pp", "5"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        flat(&o).contains("5 pipeline stages (stages x chunks) for 4 layers"),
        "{}",
        stderr(&o)
    );
    let o = run(&["--pp", "2", "--pp-layout", "3,2"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        flat(&o).contains("adds up to 5 layers; the model has 4"),
        "{}",
        stderr(&o)
    );
    let o = run(&["--pp", "2", "--pp-layout", "3,x"]);
    assert_eq!(o.status.code(), Some(1));
    let o = run(&[
        "--pp",
        "3",
        "--schedule",
        "interleaved",
        "--micro-batches",
        "4",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        flat(&o).contains("multiple of the stages"),
        "{}",
        stderr(&o)
    );
    // --pp-layout without --pp is a usage error.
    assert_eq!(run(&["--pp-layout", "2,2"]).status.code(), Some(2));

    let o = run(&["--tp", "2", "--pp", "2", "--emit-stage", "1"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = moe_opt(&["inspect", "-", "--json"], Some(&o.stdout));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(j["stages"], 1, "one stage's program");
    assert_eq!(j["collectives"]["send"], 0);
    assert_eq!(j["collectives"]["recv"], 1);

    let o = run(&["--tp", "2", "--pp", "2", "--micro-batches", "6"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = moe_opt(&["inspect", "-", "--json"], Some(&o.stdout));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(j["stages"], 2);
    assert_eq!(j["schedule"]["micro_batches"], 6);
    assert_eq!(j["schedule"]["per_stage"].as_array().map(Vec::len), Some(2));
}
