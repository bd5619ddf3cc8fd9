use super::*;
use crate::TensorParallel;
use moe_ir::hf::{import, ImportOptions};
use moe_ir::{Mesh, Summary};

fn imported(config: &str, mesh: &str, layers: u32, gpus_per_node: u64) -> Graph {
    let opts = ImportOptions {
        mesh: Some(Mesh::parse(mesh, gpus_per_node).unwrap()),
        gpus_per_node,
        ..Default::default()
    };
    import(config, &[format!("num_hidden_layers={layers}")], &opts).unwrap()
}

const MIXTRAL: &str = include_str!("../../../examples/hf/mixtral-8x7b.json");

fn two_nodes() -> Cluster {
    Cluster {
        nodes: 2,
        ..Cluster::default()
    }
}

#[test]
fn tensor_parallel_layout_gets_ppmoe() {
    let g = imported(MIXTRAL, "ep=8", 2, 8);
    let tp = TensorParallel {
        tp: 8,
        gpus_per_node: 8,
    }
    .remap(&g)
    .unwrap();
    let rw = DispatchRewrite {
        explain: true,
        ..DispatchRewrite::default()
    };
    let r = rw.rewrite(&tp).unwrap();
    moe_ir::validate(&r.graph).unwrap();
    let s = Summary::of(&r.graph);
    assert_eq!(s.collectives.all_to_all, 0);
    assert!(
        s.collectives.all_reduce >= 2 * 2,
        "attention + moe per layer"
    );
    assert_eq!(r.layers.len(), 2);
    for l in &r.layers {
        assert_eq!(l.chosen, Form::Ppmoe, "{l}");
        let forms: Vec<Form> = l.costs.iter().map(|c| c.form).collect();
        assert!(forms.contains(&Form::AllToAll), "{l}");
        assert!(!l.rules.is_empty(), "a proof names rules: {l}");
        assert_eq!(l.costs[0].form, Form::Ppmoe, "the cheapest is chosen: {l}");
    }
    assert_eq!(r.stats.stop_reason, "saturated");
}

#[test]
fn expert_parallel_across_nodes_costs_more_than_ppmoe_in_a_node() {
    // The standard graph with its experts over 16 GPUs of two nodes, and the same model remapped.
    let g = imported(MIXTRAL, "dp=2,ep=8", 1, 8);
    let across = imported(
        include_str!("../../../examples/hf/mixtral-8x7b.json"),
        "ep=8",
        1,
        4,
    );
    assert_eq!(across.mesh.axes[0].level, moe_ir::Level::InterNode);
    let model = Roofline {
        cluster: two_nodes(),
    };
    let a2a_across = layer_costs(&across, &model)[0].costs[0].seconds;
    let a2a_inside = layer_costs(&g, &model)[0].costs[0].seconds;
    assert!(a2a_across > a2a_inside, "{a2a_across} vs {a2a_inside}");
    let tp = TensorParallel {
        tp: 8,
        gpus_per_node: 8,
    }
    .remap(&g)
    .unwrap();
    let r = DispatchRewrite::new(two_nodes()).rewrite(&tp).unwrap();
    let ppmoe = r.layers[0]
        .costs
        .iter()
        .find(|c| c.form == Form::Ppmoe)
        .unwrap()
        .seconds;
    assert!(a2a_across > ppmoe, "{a2a_across} vs {ppmoe}");
}

#[test]
fn without_tp_the_layer_stays_expert_parallel_and_says_why() {
    let g = imported(MIXTRAL, "ep=8", 1, 8);
    let r = DispatchRewrite::default().rewrite(&g).unwrap();
    moe_ir::validate(&r.graph).unwrap();
    let l = &r.layers[0];
    assert!(
        l.why_not.iter().any(|w| w.contains("not replicated")),
        "{l}"
    );
    // Both forms of sharded tokens are priced; the report lists the cheaper first.
    assert_eq!(l.costs.len(), 2, "{l}");
    assert!(l.costs[0].seconds <= l.costs[1].seconds);
}

#[test]
fn output_is_deterministic() {
    let g = imported(MIXTRAL, "ep=8", 2, 8);
    let tp = TensorParallel {
        tp: 8,
        gpus_per_node: 8,
    }
    .remap(&g)
    .unwrap();
    let a = moe_ir::json::to_json(&DispatchRewrite::default().rewrite(&tp).unwrap().graph);
    let b = moe_ir::json::to_json(&DispatchRewrite::default().rewrite(&tp).unwrap().graph);
    assert_eq!(a, b);
}
