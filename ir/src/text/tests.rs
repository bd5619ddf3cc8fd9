//! The text form reads back what it prints (every bundled family, model.json example and a
//! staged graph), and bad programs fail at the line and column of the problem.

#![allow(clippy::unwrap_used)]

use super::{from_text, TextErrorKind as K};
use crate::hf::{self, ImportOptions};
use crate::print::to_text;
use crate::{Graph, Mesh};
use std::path::Path;

/// print -> parse gives an equal graph, and printing that gives the same bytes.
fn assert_round_trip(g: &Graph, what: &str) {
    let text = to_text(g);
    let back = from_text(&text).unwrap_or_else(|e| panic!("{what}: {e}\n{text}"));
    assert_eq!(to_text(&back), text, "{what}: print -> parse -> print");
    assert!(
        back == *g,
        "{what}: parsed graph differs from the printed one"
    );
}

#[test]
fn every_bundled_family_round_trips() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hf");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        for mesh in ["ep=8", "dp=2,ep=4"] {
            let opts = ImportOptions {
                mesh: Some(Mesh::parse(mesh, 8).unwrap()),
                ..Default::default()
            };
            // Meshes that do not fit a family (experts not divisible) are import errors, not
            // round-trip cases.
            if let Ok(g) = hf::import(&text, &[], &opts) {
                assert_round_trip(&g, &format!("{} on {mesh}", p.display()));
                n += 1;
            }
        }
    }
    assert!(n >= 16, "only {n} imports round-tripped");
}

#[test]
fn the_model_json_example_round_trips() {
    let g = crate::json::from_json(include_str!("../../../examples/moe-layer.json")).unwrap();
    assert_round_trip(&g, "examples/moe-layer.json");
}

const TINY: &str = r#"graph "tiny" (moe-ir/1)
mesh pp=2:intra, tp=2:intra
meta {family=test, n=[1, 2], "odd key"="1.5"}
pipeline {axis=pp, layout=[1, 1], schedule=1f1b, micro_batches=2}

layer 0 [stage 0]:
  %0 = input : f32[4, 8]  ; x
  %1 = weight : f32[8, 6@tp]  ; w
  %2 = matmul %0, %1 : f32[4, 6@tp]  ; y
  send{channel=0} %2  ; s

layer 1 [stage 1]:
  %4 = recv{channel=0} : f32[4, 6@tp]  ; r
  %5 = all_gather{axis=tp, dim=1} %4 : f32[4, 6]  ; g

outputs:
  "out put" = %5
"#;

#[test]
fn staged_graphs_with_meta_and_pipeline_round_trip() {
    let g = from_text(TINY).unwrap();
    assert_eq!(to_text(&g), TINY);
    assert_eq!(g.meta["odd key"], serde_json::json!("1.5"));
    assert_eq!(g.pipeline.as_ref().unwrap().micro_batches, 2);
    assert_eq!(g.node(g.find("r").unwrap()).stage, Some(1));
    assert_round_trip(&g, "tiny");
}

#[test]
fn hand_written_programs_may_leave_out_names_types_and_comments() {
    let g = from_text(
        "# a comment\ngraph \"h\" (moe-ir/1)\nmesh tp=2\nembed:\n  %7 = input : f32[4, 8]\n\
         # inferred type, default name\n  %9 = silu %7\noutputs:\n  y = %9\n",
    )
    .unwrap();
    let y = g.find("_9").unwrap();
    assert_eq!(g.node(y).outputs[0].to_string(), "f32[4, 8]");
    assert_eq!(g.outputs[0].value, y.into());
}

/// The error of `text` with line `line` replaced by `with`.
fn error_with(line: usize, with: &str) -> super::TextError {
    let mut lines: Vec<&str> = TINY.lines().collect();
    lines[line - 1] = with;
    from_text(&lines.join("\n")).unwrap_err()
}

#[test]
fn errors_point_at_the_line_and_column() {
    let e = error_with(7, "  %0 = inptu : f32[4, 8]  ; x");
    assert_eq!((e.line, e.column), (7, 8));
    assert!(matches!(e.kind, K::UnknownOp(ref o) if o == "inptu"), "{e}");
    let e = error_with(9, "  %2 = matmul %0, %3 : f32[4, 6@tp]  ; y");
    assert_eq!((e.line, e.column), (9, 19));
    assert!(matches!(e.kind, K::UnknownValue(3)), "{e}");
    let e = error_with(9, "  %2 = matmul %0, %1 : f32[4, 6]  ; y");
    assert_eq!((e.line, e.column), (9, 24));
    assert!(matches!(e.kind, K::TypeMismatch { .. }), "{e}");
    let e = error_with(9, "  %2 = matmul{k=1} %0, %1  ; y");
    assert!(matches!(e.kind, K::Attrs { op: "matmul", .. }), "{e}");
    let e = error_with(7, "  %0 = input  ; x");
    assert!(matches!(e.kind, K::LeafType { op: "input" }), "{e}");
    let e = error_with(13, "  %2 = recv{channel=0} : f32[4, 6@tp]  ; r");
    assert_eq!((e.line, e.column, e.kind), (13, 3, K::DuplicateId(2)));
    let e = error_with(14, "  %5 = all_gather{axis=xx, dim=1} %4  ; g");
    assert_eq!((e.line, e.column), (14, 8));
    assert!(matches!(e.kind, K::Build(_)), "{e}");
    assert!(e.to_string().contains("`g`"), "{e}");
    let e = error_with(1, "graph \"tiny\" (moe-ir/2)");
    assert_eq!((e.line, e.column), (1, 15));
    assert!(matches!(e.kind, K::Format(ref f) if f == "moe-ir/2"), "{e}");
    let e = error_with(2, "mesh pp=2, pp=2");
    assert!(matches!(e.kind, K::Mesh(_)), "{e}");
    let e = error_with(4, "pipeline {axis=pp}");
    assert!(matches!(e.kind, K::Pipeline { .. }), "{e}");
    let e = error_with(6, "layer x:");
    assert_eq!(
        e.to_string(),
        "line 6, column 7: expected a layer number, found `x`"
    );
    let e = error_with(17, "  out = %9");
    assert!(matches!(e.kind, K::UnknownValue(9)), "{e}");
    let e = error_with(16, "  %9 = silu %5");
    assert!(matches!(e.kind, K::Expected { .. }), "{e}");
    // Found only when the whole graph is checked: the error names the node's line.
    let e = error_with(10, "  send{channel=1} %2  ; s");
    assert!(matches!(e.kind, K::Invalid(_)), "{e}");
    assert_eq!(from_text("").unwrap_err().kind, K::Empty);
    let e = from_text("graph \"x\" (moe-ir/1)").unwrap_err();
    assert_eq!(e.line, 2);
}

#[test]
fn a_node_before_any_section_or_after_the_outputs_is_refused() {
    let e = from_text("graph \"x\" (moe-ir/1)\nmesh single\n%0 = input : f32[2]\n").unwrap_err();
    assert_eq!((e.line, e.kind), (3, K::NoSection));
    let e = error_with(16, "outputs:\n  %6 = silu %5");
    assert_eq!(e.kind, K::NodeInOutputs);
    let e = error_with(5, "meta {a=1}");
    assert!(matches!(e.kind, K::HeaderOrder { key: "meta" }), "{e}");
}

#[test]
fn the_example_in_format_md_reads() {
    let doc = include_str!("../../../docs/FORMAT.md");
    let section = &doc[doc.find("## The text form").unwrap()..];
    let start = section.find("```text\n").unwrap() + "```text\n".len();
    let example = &section[start..start + section[start..].find("```").unwrap()];
    let g = from_text(example).unwrap();
    assert_eq!(
        g.node(g.find("g").unwrap()).outputs[0].to_string(),
        "f32[4, 6]"
    );
    assert_round_trip(&g, "docs/FORMAT.md");
}

#[test]
fn ops_read_alone_as_patterns_spell_them() {
    use crate::Op;
    let op = super::parse_op("all_gather{axis=tp,dim=1}").unwrap();
    assert_eq!(
        op,
        Op::AllGather {
            axis: "tp".into(),
            dim: 1
        }
    );
    assert_eq!(super::parse_op("matmul").unwrap(), Op::Matmul);
    for op in [op, Op::IndexAdd { scaled: true }] {
        assert_eq!(super::parse_op(&crate::print::op_label(&op)).unwrap(), op);
    }
    assert!(matches!(
        super::parse_op("weight").unwrap_err().kind,
        K::LeafType { .. }
    ));
    assert!(matches!(
        super::parse_op("shard{axis=tp}").unwrap_err().kind,
        K::Attrs { .. }
    ));
    assert!(matches!(
        super::parse_op("nope").unwrap_err().kind,
        K::UnknownOp(_)
    ));
}
