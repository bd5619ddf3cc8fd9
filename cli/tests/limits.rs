//! Malformed and overflowing model.json files: every command that reads one exits 1 with a
//! message naming where the problem is, and nothing panics.

mod common;

use common::{moe_opt, root, stderr};

const LAYER: &str = "examples/moe-layer.json";

/// The bundled layer with `edit` applied to its JSON.
fn layer_with(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let text = std::fs::read_to_string(root().join(LAYER)).expect("example exists");
    let mut doc: serde_json::Value = serde_json::from_str(&text).expect("example is JSON");
    edit(&mut doc);
    doc.to_string().into_bytes()
}

fn node<'a>(doc: &'a mut serde_json::Value, name: &str) -> &'a mut serde_json::Value {
    doc["nodes"]
        .as_array_mut()
        .expect("nodes")
        .iter_mut()
        .find(|n| n["name"] == name)
        .expect("node exists")
}

/// `text` through validate, inspect and rewrite: exit 1, every needle in the message, no panic.
fn refused_everywhere(what: &str, text: &[u8], needles: &[&str]) {
    for cmd in [
        &["validate", "-"][..],
        &["inspect", "-"],
        &["inspect", "-", "--json"],
        &["rewrite", "-", "--explain"],
    ] {
        let o = moe_opt(cmd, Some(text));
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{what}: {cmd:?}: {e}");
        assert!(!e.contains("panicked"), "{what}: {cmd:?}: {e}");
        assert!(o.stdout.is_empty(), "{what}: {cmd:?} printed a result");
        // miette wraps long lines: compare without the breaks and the frame.
        let flat = |t: &str| -> String { t.split_whitespace().filter(|w| *w != "│").collect() };
        for n in needles {
            assert!(
                flat(&e).contains(&flat(n)),
                "{what}: {cmd:?}: `{n}` not in: {e}"
            );
        }
    }
}

#[test]
fn sizes_no_model_reaches_are_refused_by_json_path() {
    let huge = serde_json::json!(10_000_000_000_000_000_000u64);
    refused_everywhere(
        "expert weights [8, 32, 10^19]",
        &layer_with(|d| {
            node(d, "w_up")["op"]["weight"]["shape"] = serde_json::json!([8, 32, huge.clone()]);
        }),
        &[
            "nodes[6].op.weight.shape[2]",
            "dim 2 is 10000000000000000000",
        ],
    );
    refused_everywhere(
        "meta.hidden = 10^19",
        &layer_with(|d| d["meta"] = serde_json::json!({ "hidden": huge.clone() })),
        &["meta.hidden is 10000000000000000000"],
    );
    refused_everywhere(
        "elements beyond u64 from dims that each fit",
        &layer_with(|d| {
            node(d, "w_up")["op"]["weight"]["shape"] =
                serde_json::json!([8, 1u64 << 32, 1u64 << 32]);
        }),
        &["nodes[6].op.weight.shape", "element count is 1.476e20"],
    );
    refused_everywhere(
        "capacity whose slots overflow",
        &layer_with(|d| {
            node(d, "dispatch")["op"]["dispatch"]["capacity"] = serde_json::json!(u64::MAX);
        }),
        &[
            "nodes[4]",
            "dispatch",
            "capacity x token shards is 7.379e19",
        ],
    );
    refused_everywhere(
        "a layer index at u32::MAX",
        &layer_with(|d| node(d, "y")["scope"] = serde_json::json!({ "layer": u32::MAX })),
        &["`y`", "layer index is 4294967295"],
    );
    refused_everywhere(
        "a mesh of 2^34 ranks",
        &layer_with(|d| {
            d["mesh"]["axes"]
                .as_array_mut()
                .expect("axes")
                .push(serde_json::json!({"name": "dp", "size": u32::MAX, "level": "inter_node"}));
        }),
        &["at mesh", "number of ranks"],
    );
}

#[test]
fn malformed_model_json_is_refused_with_a_location() {
    let cases: [(&str, Vec<u8>, &str); 6] = [
        (
            "a dim beyond u64",
            br#"{"format": "moe-ir/1", "name": "x", "mesh": {"axes": []}, "nodes": [{"name": "a", "op": {"input": {"dtype": "f32", "shape": [100000000000000000000]}}, "scope": "embed"}], "outputs": [{"name": "a", "value": "a"}]}"#.to_vec(),
            "line 1, column",
        ),
        (
            "a zero dim",
            br#"{"format": "moe-ir/1", "name": "x", "mesh": {"axes": []}, "nodes": [{"name": "a", "op": {"input": {"dtype": "f32", "shape": [4, 0]}}, "scope": "embed"}], "outputs": [{"name": "a", "value": "a"}]}"#.to_vec(),
            "nodes[0]",
        ),
        (
            "a truncated file",
            b"{\"format\": \"moe-ir/1\", \"name\": \"x\", \"mesh\": {\"axes\": [".to_vec(),
            "line 1, column",
        ),
        (
            "an output of a node that has none",
            layer_with(|d| d["outputs"][0]["value"] = serde_json::json!("y:7")),
            "graph output `y`",
        ),
        (
            "micro-batches the schedule cannot hold",
            layer_with(|d| {
                d["mesh"]["axes"]
                    .as_array_mut()
                    .expect("axes")
                    .insert(0, serde_json::json!({"name": "pp", "size": 1, "level": "inter_node"}));
                d["pipeline"] = serde_json::json!({"axis": "pp", "layout": [1], "schedule": "gpipe", "micro_batches": u32::MAX});
            }),
            "schedule's steps",
        ),
        (
            "meta.seq that is not a whole number",
            layer_with(|d| d["meta"] = serde_json::json!({ "seq": 2.5 })),
            "meta.seq is 2.5",
        ),
    ];
    for (what, text, needle) in cases {
        refused_everywhere(what, &text, &[needle]);
    }
}
