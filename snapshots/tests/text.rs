//! Text-form cases: `cases/text/<name>.moe` is a small program in the text form whose leading
//! comments give its pass list and what the rewrite rules must do on it:
//! ```text
//! # passes: remap(tp=4),dispatch
//! # fires: dispatch-a2a-to-ppmoe-slicing
//! # not: all-gather-of-shard, shard-of-all-gather
//! graph "..." (moe-ir/1)
//! ```
//! The harness runs the passes (`moe_passes::registry`, every pass validated), checks `fires`
//! and `not` against the rules the passes fired, and snapshots the rules fired and the output.

mod common;

use moe_passes::registry::{self, PassContext};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A case's header: its pass list and the rules that must and must not fire.
#[derive(Debug, Default)]
struct Header {
    passes: String,
    fires: Vec<String>,
    not: Vec<String>,
}

fn header(text: &str) -> Header {
    let mut h = Header::default();
    let list = |v: &str| -> Vec<String> {
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        let l = line.trim_start_matches('#').trim();
        if let Some(v) = l.strip_prefix("passes:") {
            h.passes = v.trim().to_string();
        } else if let Some(v) = l.strip_prefix("fires:") {
            h.fires.extend(list(v));
        } else if let Some(v) = l.strip_prefix("not:") {
            h.not.extend(list(v));
        }
    }
    h
}

fn cases() -> Vec<(String, String)> {
    let dir = common::root().join("snapshots/cases/text");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("cases/text exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "moe"))
        .map(|p| {
            let name = p.file_stem().expect("name").to_string_lossy().to_string();
            (name, std::fs::read_to_string(&p).expect("case readable"))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn text() {
    common::settings().bind(|| {
        insta::glob!("../cases/text", "*.moe", |path| {
            let src = std::fs::read_to_string(path).expect("case readable");
            let h = header(&src);
            let g =
                moe_ir::text::from_text(&src).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let steps =
                registry::parse(&h.passes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let (out, stats) = registry::pipeline(&steps, &PassContext::default())
                .run(g)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let mut fired: BTreeMap<String, usize> = BTreeMap::new();
            for s in &stats {
                for (rule, n) in s.egraph.iter().flat_map(|e| &e.rules_fired) {
                    *fired.entry(rule.clone()).or_default() += n;
                }
            }
            for rule in &h.fires {
                assert!(
                    fired.get(rule).is_some_and(|&n| n > 0),
                    "{}: {rule} did not fire: {fired:?}",
                    path.display()
                );
            }
            for rule in &h.not {
                assert!(
                    !fired.contains_key(rule),
                    "{}: {rule} fired: {fired:?}",
                    path.display()
                );
            }
            let mut s = String::new();
            let _ = writeln!(s, "passes: {}", registry::to_text(&steps));
            let fired: Vec<String> = fired.iter().map(|(r, n)| format!("{r} x{n}")).collect();
            let _ = writeln!(s, "rules fired: {}\n", fired.join(", "));
            s.push_str(&common::text(&out));
            insta::assert_snapshot!(s);
        });
    });
}

/// Every rule has a text case where it fires and one where it must not.
#[test]
fn every_rule_has_a_firing_and_a_non_firing_case() {
    let headers: Vec<Header> = cases().iter().map(|(_, t)| header(t)).collect();
    for rule in moe_passes::rules::names() {
        assert!(
            headers.iter().any(|h| h.fires.iter().any(|r| r == rule)),
            "no case fires {rule}"
        );
        assert!(
            headers.iter().any(|h| h.not.iter().any(|r| r == rule)),
            "no case keeps {rule} from firing"
        );
    }
    for (name, t) in cases() {
        let h = header(&t);
        for r in h.fires.iter().chain(&h.not) {
            assert!(
                moe_passes::rules::named(r).is_some(),
                "{name}: no rule named {r}"
            );
        }
    }
}
