//! Every bundled model family, cut small (`tests/families/*.toml`: 2 layers, hidden 128), computes
//! the same function in its imported expert-parallel form, in its PPMoE rewrite (`rewrite --tp 4`)
//! and in its PPMoE rewrite cut into two pipeline stages (`rewrite --tp 2 --pp 2`): what
//! `moe-opt verify CONFIG REWRITTEN --backend cpu` checks, in f32 with the default tolerance.

#![allow(clippy::unwrap_used)]

mod common;

use common::{check_forms, describe, forms, import, is_ppmoe, root};
use moe_backend::VerifyOptions;

struct Case {
    name: String,
    config: String,
    mesh: String,
    seq: u64,
    tp: u64,
    sets: Vec<String>,
}

fn cases() -> Vec<Case> {
    let dir = root().join("backend/tests/families");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let v: toml::Value = std::fs::read_to_string(p).unwrap().parse().unwrap();
            let s = |k: &str| v[k].as_str().unwrap().to_string();
            let n = |k: &str| v[k].as_integer().unwrap() as u64;
            Case {
                name: p.file_stem().unwrap().to_string_lossy().into(),
                config: s("config"),
                mesh: s("mesh"),
                seq: n("seq"),
                tp: n("tp"),
                sets: v["set"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap().to_string())
                    .collect(),
            }
        })
        .collect()
}

#[test]
fn every_example_family_has_a_case() {
    let names: Vec<String> = cases().into_iter().map(|c| c.name).collect();
    for e in std::fs::read_dir(root().join("examples/hf")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "json") {
            let stem = p.file_stem().unwrap().to_string_lossy().to_string();
            assert!(
                names.contains(&stem),
                "examples/hf/{stem}.json has no case in backend/tests/families"
            );
        }
    }
}

#[test]
fn every_family_equals_its_ppmoe_and_pipelined_rewrites() {
    let opts = VerifyOptions::default();
    let mut failures = Vec::new();
    for c in cases() {
        let g = import(&c.config, &c.sets, &c.mesh, c.seq);
        let forms = forms(&g, c.tp, (2, 2));
        for (form, rewritten) in &forms {
            assert!(
                is_ppmoe(rewritten),
                "{}: the {form} form has no index slicing",
                c.name
            );
        }
        for (form, v) in check_forms(&g, &forms, &opts) {
            println!("{} vs {form}: {}", c.name, describe(&v));
            if !v.passed {
                failures.push(format!("{} vs {form}: {}", c.name, describe(&v)));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
