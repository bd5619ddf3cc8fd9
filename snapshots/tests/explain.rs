//! `rewrite --explain` as a person reads it: `cases/explain/<name>.toml` names a config, a mesh,
//! a cut, `--tp` and a cluster. The snapshot is the folded report: identical layers once, with
//! their count, every candidate's time, compute, communication and bytes, why the winner won (ties
//! said to be ties) and the proof of the chosen form.

mod common;

use moe_passes::cost::Roofline;
use moe_passes::rewrite::{fold, folded_text, layer_costs, ranges, DispatchRewrite, Form};
use std::fmt::Write as _;

#[test]
fn explain() {
    common::settings().bind(|| {
        insta::glob!("../cases/explain", "*.toml", |path| {
            let opts = common::options(path);
            let config = opts.config.as_ref().expect("explain cases name a config");
            let text =
                std::fs::read_to_string(common::root().join(config)).expect("config readable");
            let g = common::load(&text, &opts).unwrap_or_else(|e| panic!("{config}: {e}"));
            let cluster = common::cluster(&opts);
            let model = Roofline {
                cluster: cluster.clone(),
            };
            let mut s = String::new();
            let input = layer_costs(&g, &model);
            let input_groups = fold(&input);
            for grp in &input_groups {
                let _ = writeln!(
                    s,
                    "input layers {} ({}): {} over {}: {:.3} ms",
                    ranges(&grp.layers),
                    grp.layers.len(),
                    grp.report.chosen.name(),
                    grp.report.axis,
                    grp.report.costs[0].seconds * 1e3
                );
            }
            let remapped = common::remap(&g, &opts);
            let mut rw = DispatchRewrite::new(cluster);
            rw.explain = true;
            let out = rw.rewrite(&remapped).expect("rewrite succeeds");
            let groups = fold(&out.layers);
            // Folding loses nothing: every layer is in exactly one group.
            let n: usize = groups.iter().map(|g| g.layers.len()).sum();
            assert_eq!(n, out.layers.len());
            assert!(groups.len() < out.layers.len(), "identical layers fold");
            for l in &out.layers {
                // The proof is the chosen form's: PPMoE's names its own rule, never the
                // all-gather form's.
                if l.chosen == Form::Ppmoe {
                    assert!(
                        l.rules.iter().any(|r| r == "dispatch-a2a-to-ppmoe-slicing"),
                        "{l}"
                    );
                    assert!(
                        !l.rules
                            .iter()
                            .any(|r| r == "dispatch-a2a-to-allgather-slicing"),
                        "{l}"
                    );
                }
            }
            s.push_str(&folded_text(&out.layers));
            insta::assert_snapshot!(s);
        });
    });
}
