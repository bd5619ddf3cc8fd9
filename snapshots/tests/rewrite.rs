//! `rewrite` of every bundled family at two topologies: `cases/rewrite/<model>@<nodes>x8.toml`
//! names the config, the standard graph's mesh, a cut, `--tp` and the cluster file. The snapshot
//! holds the collectives before and after, the per-layer report (`--explain`) and the canonical
//! text of the rewritten cut model.

mod common;

use moe_ir::Summary;
use moe_passes::cost::Roofline;
use moe_passes::rewrite::{fold, folded_text, layer_costs, ranges, DispatchRewrite};
use moe_passes::Pipeline;
use std::fmt::Write as _;

fn collectives(g: &moe_ir::Graph) -> String {
    let c = Summary::of(g).collectives;
    format!(
        "mesh {}: all_to_all {}, all_reduce {}, all_gather {}, reduce_scatter {}",
        g.mesh, c.all_to_all, c.all_reduce, c.all_gather, c.reduce_scatter
    )
}

fn run_rewrite(g: &moe_ir::Graph, opts: &common::CaseOptions) -> (moe_ir::Graph, String) {
    let cluster = common::cluster(opts);
    let g = common::remap(g, opts);
    let mut r = DispatchRewrite::new(cluster);
    r.explain = true;
    let out = r.rewrite(&g).expect("rewrite succeeds");
    moe_ir::validate(&out.graph).expect("the rewritten graph validates");
    for l in &out.layers {
        // Extraction takes the cheapest form the report prices (ties aside).
        assert_eq!(l.costs[0].form, l.chosen, "{l}");
    }
    (out.graph, folded_text(&out.layers))
}

#[test]
fn rewrite() {
    common::settings().bind(|| {
        insta::glob!("../cases/rewrite", "*.toml", |path| {
            let opts = common::options(path);
            let config = opts.config.as_ref().expect("rewrite cases name a config");
            let text =
                std::fs::read_to_string(common::root().join(config)).expect("config readable");
            let g = common::load(&text, &opts).unwrap_or_else(|e| panic!("{config}: {e}"));
            let (out, notes) = run_rewrite(&g, &opts);
            moe_ir::validate(&out).expect("the rewritten graph validates");
            let (again, _) = run_rewrite(&g, &opts);
            assert_eq!(
                moe_ir::json::to_json(&out),
                moe_ir::json::to_json(&again),
                "rewrite is deterministic"
            );
            assert_eq!(
                Summary::of(&out).params,
                Summary::of(&g).params,
                "same weights"
            );
            let mut s = String::new();
            let _ = writeln!(s, "before  {}", collectives(&g));
            let _ = writeln!(s, "after   {}", collectives(&out));
            let model = Roofline {
                cluster: common::cluster(&opts),
            };
            let input = layer_costs(&g, &model);
            for grp in fold(&input) {
                let l = grp.report;
                let _ = writeln!(
                    s,
                    "input layer {}: {} over {}: {:.3} ms",
                    ranges(&grp.layers),
                    l.chosen.name(),
                    l.axis,
                    l.costs.first().map_or(0.0, |c| c.seconds) * 1e3
                );
            }
            let _ = writeln!(s, "{notes}\n");
            s.push_str(&common::text(&out));
            insta::assert_snapshot!(s);
        });
    });
}

/// A model without MoE layers comes out of `rewrite` (no `--tp`) unchanged.
#[test]
fn a_dense_model_passes_through_unchanged() {
    let text = std::fs::read_to_string(common::root().join("examples/hf/deepseek-v3.json"))
        .expect("config readable");
    let opts = common::CaseOptions {
        mesh: Some("ep=8".into()),
        set: vec!["num_hidden_layers=3".into()], // DeepSeek-V3's first 3 layers are dense
        ..Default::default()
    };
    let g = common::load(&text, &opts).expect("imports");
    assert_eq!(Summary::of(&g).moe_layers, 0);
    let (out, stats) = Pipeline::new()
        .with(DispatchRewrite::default())
        .run(g.clone())
        .expect("rewrite succeeds");
    assert_eq!(moe_ir::json::to_json(&out), moe_ir::json::to_json(&g));
    let e = stats[0].egraph.as_ref().expect("e-graph stats");
    assert!(e.rules_fired.is_empty(), "{:?}", e.rules_fired);
}

/// Every rewrite case's model has its two topologies.
#[test]
fn every_import_case_has_two_rewrite_cases() {
    let dir = common::root().join("snapshots/cases");
    for e in std::fs::read_dir(dir.join("import")).expect("import cases") {
        let p = e.expect("entry").path();
        let stem = p.file_stem().expect("name").to_string_lossy().to_string();
        for topo in ["1x8", "8x8"] {
            let case = dir.join("rewrite").join(format!("{stem}@{topo}.toml"));
            assert!(case.exists(), "missing {}", case.display());
        }
    }
}
