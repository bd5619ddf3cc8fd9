//! `moe-opt opt` (pass lists), the text form as an input of every command, and its errors.

mod common;

use common::{moe_opt, stderr};

const LAYER: &str = "examples/moe-layer.json";

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn opt_runs_a_pass_list_and_its_text_output_reads_back() {
    let o = moe_opt(&["opt", LAYER, "--passes", "remap(tp=4),dispatch"], None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.starts_with("graph \"one-moe-layer\" (moe-ir/1)\nmesh tp=4:intra\n"),
        "{text}"
    );
    assert!(
        text.contains("local_routes"),
        "the dispatch rewrite ran: {text}"
    );
    // The text form is an input like model.json: through stdin, to every command.
    let again = moe_opt(
        &["opt", "-", "--passes", "dead-code"],
        Some(text.as_bytes()),
    );
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert_eq!(
        stdout(&again),
        text,
        "text -> opt(dead-code) -> the same text"
    );
    let v = moe_opt(&["validate", "-"], Some(text.as_bytes()));
    assert_eq!(v.status.code(), Some(0), "{}", stderr(&v));
    let j = moe_opt(
        &["opt", "-", "--passes", "dead-code", "--format", "json"],
        Some(text.as_bytes()),
    );
    assert!(
        stdout(&j).starts_with("{\n  \"format\": \"moe-ir/1\""),
        "{}",
        stdout(&j)
    );
}

#[test]
fn opt_prints_after_every_pass_and_matches_rewrite() {
    let o = moe_opt(
        &[
            "opt",
            LAYER,
            "--passes",
            "remap(tp=4),dispatch",
            "--print-after-all",
            "--format",
            "json",
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let e = stderr(&o);
    let after: Vec<&str> = e.lines().filter(|l| l.starts_with("# after ")).collect();
    assert_eq!(after.len(), 2, "{e}");
    assert!(after[0].starts_with("# after tensor-parallel-remap"), "{e}");
    assert!(after[1].starts_with("# after dispatch-rewrite"), "{e}");
    let r = moe_opt(&["rewrite", LAYER, "--tp", "4"], None);
    assert_eq!(
        stdout(&r),
        stdout(&o),
        "rewrite --tp 4 is remap(tp=4),dispatch"
    );
}

#[test]
fn bad_pass_lists_exit_1_with_the_column() {
    for (list, want) in [
        ("remap(tp=4),frob", "column 13: unknown pass `frob`"),
        ("remap(tp=x)", "column 7"),
        ("dispatch,schedule(1f1b)", "put it right after one"),
    ] {
        let o = moe_opt(&["opt", LAYER, "--passes", list], None);
        assert_eq!(o.status.code(), Some(1), "{list}");
        assert!(stderr(&o).contains(want), "{list}: {}", stderr(&o));
    }
    // A pass that refuses its input names itself.
    let o = moe_opt(&["opt", LAYER, "--passes", "remap(tp=3)"], None);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("tensor-parallel-remap"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn text_errors_exit_1_with_line_column_and_a_caret() {
    let text = stdout(&moe_opt(&["opt", LAYER, "--passes", "dead-code"], None));
    let bad = text.replacen("= matmul", "= matmull", 1);
    let line = bad
        .lines()
        .position(|l| l.contains("matmull"))
        .expect("edited")
        + 1;
    let o = moe_opt(&["inspect", "-"], Some(bad.as_bytes()));
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains(&format!("line {line}, column 8: unknown op `matmull`")),
        "{e}"
    );
    assert!(
        e.contains('▲') || e.contains('^'),
        "a caret under the column: {e}"
    );
    let o = moe_opt(&["validate", "-", "--set", "x=1"], Some(text.as_bytes()));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("text-form graph"), "{}", stderr(&o));
}
