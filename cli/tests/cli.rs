//! End-to-end behaviour of the `moe-opt` binary: exit codes, stdin/stdout, atomic output files,
//! determinism.

mod common;

use common::{moe_opt, root, stderr};
use std::process::Output;

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
fn output_into_a_missing_folder_names_the_users_path() {
    // A folder name without `.tmp`, so that a temporary file's name would stand out.
    let dir = tempfile::Builder::new()
        .prefix("moe-out")
        .tempdir()
        .expect("temp dir");
    let out = dir.path().join("no-such-folder").join("g.json");
    let out = out.to_str().expect("utf-8");
    let o = moe_opt(&["rewrite", LAYER, "-o", out], None);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    // miette wraps long lines: compare without the breaks and the frame.
    let flat: String = e.split_whitespace().filter(|w| *w != "│").collect();
    assert!(
        flat.contains(&out.replace(' ', "")) && e.contains("does not exist"),
        "{e}"
    );
    assert!(
        !flat.contains(".tmp"),
        "the temporary file is ours, not the user's: {e}"
    );
}

#[test]
fn a_truncated_config_is_not_valid_json_for_every_command() {
    let cfg = std::fs::read_to_string(root().join("examples/hf/mixtral-8x7b.json"))
        .expect("example exists");
    let cut = &cfg.as_bytes()[..cfg.len() / 2];
    for cmd in ["import", "rewrite", "inspect", "validate"] {
        let o = moe_opt(&[cmd, "-"], Some(cut));
        assert_eq!(o.status.code(), Some(1), "{cmd}");
        let e = stderr(&o);
        assert!(
            e.contains("not valid JSON") && e.contains("line "),
            "{cmd}: {e}"
        );
        assert!(!e.contains("unknown field"), "{cmd}: {e}");
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

/// `--set`s of a small Mixtral (2 layers, hidden 64, 4 experts).
const SMALL: &[&str] = &[
    "--set",
    "num_hidden_layers=2",
    "--set",
    "hidden_size=64",
    "--set",
    "intermediate_size=64",
    "--set",
    "num_attention_heads=4",
    "--set",
    "num_key_value_heads=2",
    "--set",
    "vocab_size=64",
    "--set",
    "num_local_experts=4",
];

/// Imports the small Mixtral on ep=4 and rewrites it with --tp 2: (original, rewritten) paths.
fn small_pair(dir: &std::path::Path) -> (String, String) {
    let a = dir.join("a.json").to_string_lossy().to_string();
    let b = dir.join("b.json").to_string_lossy().to_string();
    let mut args = vec![
        "import",
        "examples/hf/mixtral-8x7b.json",
        "--mesh",
        "ep=4",
        "--seq",
        "8",
        "-o",
        &a,
    ];
    args.extend_from_slice(SMALL);
    let o = moe_opt(&args, None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = moe_opt(&["rewrite", &a, "--tp", "2", "-o", &b], None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    (a, b)
}

#[test]
fn run_prints_a_checksum_per_output_and_is_deterministic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, _) = small_pair(dir.path());
    let o = moe_opt(&["run", &a, "--backend", "cpu", "--seed", "3"], None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.contains("output logits [32, 64]: sum"), "{out}");
    assert!(out.contains("time:"), "{out}");
    let sums = |s: &str| -> String { s.lines().filter(|l| l.starts_with("output")).collect() };
    let again = moe_opt(&["run", &a, "--seed", "3"], None);
    assert_eq!(sums(&out), sums(&String::from_utf8_lossy(&again.stdout)));
    let other = moe_opt(&["run", &a, "--seed", "4"], None);
    assert_ne!(sums(&out), sums(&String::from_utf8_lossy(&other.stdout)));
    // Two micro-batches: the outputs of both, concatenated along the tokens.
    let two = moe_opt(&["run", &a, "--seed", "3", "--micro-batches", "2"], None);
    let two = String::from_utf8_lossy(&two.stdout);
    assert!(two.contains("micro-batches: 2"), "{two}");
    assert!(two.contains("output logits [64, 64]: sum"), "{two}");
    let zero = moe_opt(&["run", &a, "--micro-batches", "0"], None);
    assert_eq!(zero.status.code(), Some(2), "{}", stderr(&zero));
}

#[test]
fn run_imports_a_config_at_a_token_count() {
    let mut args = vec![
        "run",
        "examples/hf/mixtral-8x7b.json",
        "--mesh",
        "ep=2",
        "--tokens",
        "24",
        "--seq",
        "4",
    ];
    args.extend_from_slice(SMALL);
    let o = moe_opt(&args, None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("output logits [24, 64]"));
    args[5] = "25";
    let o = moe_opt(&args, None);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("multiple of the 2 ranks"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn verify_accepts_a_rewrite_and_catches_a_planted_bug() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (a, b) = small_pair(dir.path());
    let o = moe_opt(&["verify", &a, &b, "--backend", "cpu"], None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains("output logits: max abs") && out.contains("equivalent"),
        "{out}"
    );
    // The PPMoE graph with layer 1's expert outputs added unweighted.
    let mut g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&b).expect("rewritten graph")).expect("json");
    let nodes = g["nodes"].as_array_mut().expect("nodes");
    let n = nodes
        .iter_mut()
        .find(|n| n["name"] == "l1.index_add")
        .expect("an index_add in layer 1");
    n["op"] = serde_json::json!({"index_add": {"scaled": false}});
    n["inputs"].as_array_mut().expect("inputs").pop();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, g.to_string()).expect("write");
    let bad = bad.to_string_lossy().to_string();
    let o = moe_opt(&["verify", &a, &bad], None);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains("DIFFERS") && out.contains("first differing node: `l1."),
        "{out}"
    );
    let o = moe_opt(&["verify", &b, &bad], None);
    assert!(String::from_utf8_lossy(&o.stdout).contains("first differing node: `l1.index_add`"));
    // A router that scores otherwise: the first differing node is a router, and verify says
    // what a differing router means.
    let mut g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&b).expect("rewritten graph")).expect("json");
    let nodes = g["nodes"].as_array_mut().expect("nodes");
    let n = nodes
        .iter_mut()
        .find(|n| n["name"] == "l1.moe.router")
        .expect("layer 1's router");
    n["op"]["router"]["scale"] = serde_json::json!(2.0);
    let scaled = dir.path().join("scaled.json");
    std::fs::write(&scaled, g.to_string()).expect("write");
    let o = moe_opt(&["verify", &b, &scaled.to_string_lossy()], None);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        out.contains("first differing node: `l1.moe.router`") && out.contains("chooses experts"),
        "{out}"
    );
    // A config against a rewritten graph: the import options apply to the config only.
    let mut args = vec![
        "verify",
        "examples/hf/mixtral-8x7b.json",
        &b,
        "--mesh",
        "ep=4",
        "--seq",
        "8",
    ];
    args.extend_from_slice(SMALL);
    let o = moe_opt(&args, None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn run_refuses_what_it_cannot_do_with_exit_1() {
    // The layer has 4 ranks: 3 GPUs is neither one GPU nor one per rank.
    let o = moe_opt(&["run", LAYER, "--backend", "cuda", "--gpus", "3"], None);
    assert_eq!(o.status.code(), Some(1));
    let why = if cfg!(feature = "cuda") {
        "3 GPUs for a mesh of 4"
    } else {
        "built without CUDA"
    };
    assert!(stderr(&o).contains(why), "{}", stderr(&o));
    let o = moe_opt(&["run", LAYER, "--gpus", "2"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--gpus applies to --backend cuda"));
    let o = moe_opt(&["run", LAYER, "--precision", "bf16"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("cannot compute in"), "{}", stderr(&o));
    let o = moe_opt(&["run", LAYER, "--tokens", "7"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not --tokens 7"), "{}", stderr(&o));
    let o = moe_opt(&["run", LAYER, "--weights", "no/such.safetensors"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no/such.safetensors"), "{}", stderr(&o));
    let o = moe_opt(&["verify", LAYER, LAYER, "--rtol=-1"], None);
    assert_eq!(o.status.code(), Some(1));
}

/// A safetensors file of f32 tensors, written by hand (8-byte header length, JSON header, data).
fn safetensors(tensors: &[(&str, &[usize], &[f32])]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let h = serde_json::Value::Object(header).to_string();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h.as_bytes());
    out.extend(data);
    out
}

#[test]
fn run_reads_weights_from_a_file_or_a_checkpoint_folder() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = dir.path().join("model.json");
    std::fs::write(
        &model,
        r#"{"format": "moe-ir/1", "name": "tiny", "mesh": {"axes": [{"name": "tp", "size": 2, "level": "intra_node"}]},
        "nodes": [
          {"name": "x", "op": {"input": {"dtype": "f32", "shape": [2, 2]}}, "scope": "embed"},
          {"name": "w", "op": {"weight": {"dtype": "f32", "shape": [2, 2], "split": [[], ["tp"]]}}, "scope": "embed"},
          {"name": "y", "op": "matmul", "inputs": ["x", "w"], "scope": "embed"}
        ],
        "outputs": [{"name": "y", "value": "y"}]}"#,
    )
    .expect("write model");
    let model = model.to_string_lossy().to_string();
    let file = dir.path().join("w.safetensors");
    std::fs::write(&file, safetensors(&[("w", &[2, 2], &[1.0, 0.0, 0.0, 2.0])])).expect("write");
    let out = |args: &[&str]| {
        let o = moe_opt(args, None);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let s = String::from_utf8_lossy(&o.stdout).to_string();
        s.lines()
            .find(|l| l.starts_with("output y"))
            .unwrap_or_default()
            .to_string()
    };
    let from_file = out(&["run", &model, "--weights", &file.to_string_lossy()]);
    let seeded = out(&["run", &model]);
    assert_ne!(from_file, seeded);
    // A checkpoint folder: the index names the file holding each tensor.
    let ckpt = dir.path().join("ckpt");
    std::fs::create_dir(&ckpt).expect("mkdir");
    std::fs::copy(&file, ckpt.join("model-00001-of-00001.safetensors")).expect("copy");
    std::fs::write(
        ckpt.join("model.safetensors.index.json"),
        r#"{"metadata": {}, "weight_map": {"w": "model-00001-of-00001.safetensors"}}"#,
    )
    .expect("write index");
    assert_eq!(
        out(&["run", &model, "--weights", &ckpt.to_string_lossy()]),
        from_file
    );
    // A checkpoint without the weight: exit 1 naming it.
    std::fs::write(&file, safetensors(&[("v", &[2, 2], &[1.0; 4])])).expect("write");
    let o = moe_opt(&["run", &model, "--weights", &file.to_string_lossy()], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("weight `w`"), "{}", stderr(&o));
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

/// The README opens with the headline job on a bundled example, then the test command that CI
/// (`.ci/run`) runs: both stay true.
#[test]
fn readme_first_commands_are_the_headline_rewrite_and_the_tests() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README");
    let block = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a first sh block");
    let mut lines = block.lines();
    let first = lines.next().expect("a first command");
    let args = first
        .strip_prefix("cargo run --release -p moe-opt -- ")
        .expect("the first command runs moe-opt");
    let mut args: Vec<String> = args.split_whitespace().map(String::from).collect();
    assert_eq!(args[0], "rewrite", "{first}");
    assert!(args.iter().any(|a| a == "--explain"), "{first}");
    assert!(root().join(&args[1]).is_file(), "{first}: a bundled model");
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out.json");
    if let Some(i) = args.iter().position(|a| a == "-o") {
        args[i + 1] = out.to_str().expect("utf-8").to_string();
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = moe_opt(&args, None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &stderr(&o);
    for needle in [
        "<- chosen",
        "ppmoe",
        "proof of the chosen form (egg explanation)",
    ] {
        assert!(text.contains(needle), "`{needle}` not in: {text}");
    }
    assert!(out.is_file());
    let second = lines.next().expect("a second command");
    assert_eq!(second.trim(), "cargo test --workspace");
    let ci = std::fs::read_to_string(root().join(".ci/run")).expect(".ci/run");
    assert!(
        ci.contains("\ncargo test --workspace --locked"),
        "CI runs the README's tests"
    );
}
