//! A wrong rewrite must be caught: a copy of the PPMoE graph whose `index_add` does not scale the
//! expert outputs by their routing weights (`scaled: false`), and one whose routes ignore
//! capacity, both differ from the original, and verify names the first node that differs.

#![allow(clippy::unwrap_used)]

mod common;

use common::{import, map_ops, ppmoe, with_capacity};
use moe_backend::{verify, VerifyOptions, Weights};
use moe_ir::{Capacity, Graph, Op};

fn small() -> Graph {
    let sets: Vec<String> = [
        "num_hidden_layers=2",
        "hidden_size=64",
        "intermediate_size=96",
        "num_attention_heads=4",
        "num_key_value_heads=2",
        "vocab_size=128",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    import("examples/hf/mixtral-8x7b.json", &sets, "ep=4", 16)
}

/// `g` with layer 1's `index_add` unscaled (the routing weights are dropped from combine).
fn unscaled(g: &Graph) -> Graph {
    map_ops(g, |n| match n.op {
        Op::IndexAdd { scaled: true } if n.name.starts_with("l1.") => {
            (Op::IndexAdd { scaled: false }, 3)
        }
        ref op => (op.clone(), n.inputs.len()),
    })
}

#[test]
fn unscaled_combine_is_caught_and_located() {
    let g = small();
    let good = ppmoe(&g, 4);
    let bad = unscaled(&good);
    assert_ne!(good, bad);
    let opts = VerifyOptions::default();
    let ok = verify(&g, &good, &Weights::Seeded, &opts).unwrap();
    assert!(ok.passed, "{ok:?}");
    let v = verify(&g, &bad, &Weights::Seeded, &opts).unwrap();
    assert!(!v.passed, "the planted bug went unnoticed: {v:?}");
    let d = v.outputs[0].diff.as_ref().unwrap();
    assert!(d.rel > 1e-2, "{d:?}");
    // Against the original, the first shared node after the bug is layer 1's residual add.
    let first = v.first_differing.unwrap();
    assert!(first.node.starts_with("l1."), "{first:?}");
    // Against the correct rewrite, the planted node itself.
    let v = verify(&good, &bad, &Weights::Seeded, &opts).unwrap();
    assert_eq!(v.first_differing.unwrap().node, "l1.index_add");
}

#[test]
fn ignoring_capacity_is_caught() {
    // Two slots per expert per rank: tokens are dropped.
    let g = with_capacity(&small(), 2);
    let good = ppmoe(&g, 4);
    assert!(common::has_capacity(&good));
    let dropless = map_ops(&good, |n| match &n.op {
        Op::LocalRoutes {
            experts,
            axis,
            capacity: Capacity::Slots(_),
            ..
        } => (
            Op::LocalRoutes {
                experts: *experts,
                axis: axis.clone(),
                capacity: Capacity::Dropless,
                token_groups: 1,
            },
            2,
        ),
        op => (op.clone(), n.inputs.len()),
    });
    let opts = VerifyOptions::default();
    assert!(verify(&g, &good, &Weights::Seeded, &opts).unwrap().passed);
    let v = verify(&g, &dropless, &Weights::Seeded, &opts).unwrap();
    assert!(!v.passed, "dropping nothing went unnoticed: {v:?}");
    assert!(v.first_differing.unwrap().node.starts_with("l0."));
}
