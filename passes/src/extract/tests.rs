#![allow(clippy::unwrap_used)]

use super::*;
use crate::cost::{Cluster, Roofline};
use crate::rules::testing::small;
use crate::rules::AllGatherSlicing;
use crate::{load, Loaded};
use egg::{CostFunction, Extractor, Rewrite, Runner};
use moe_ir::{DType, Mesh, Op, TensorType};

/// Loads `g` and saturates with the dispatch rule; returns the e-graph and whether it grew.
fn saturate(g: &moe_ir::Graph) -> (Loaded, bool) {
    let mut l = load(g);
    let before = l.egraph.total_number_of_nodes();
    let rules: Vec<Rewrite<MoeLang, Types>> =
        vec![Rewrite::new(AllGatherSlicing::NAME, AllGatherSlicing, AllGatherSlicing).unwrap()];
    let empty = EGraph::new(Types {
        mesh: g.mesh.clone(),
    });
    let runner: Runner<MoeLang, Types, ()> = Runner::new(Types {
        mesh: g.mesh.clone(),
    })
    .with_node_limit(1_000_000)
    .with_egraph(std::mem::replace(&mut l.egraph, empty))
    .run(&rules);
    l.egraph = runner.egraph;
    let grew = l.egraph.total_number_of_nodes() > before;
    (l, grew)
}

#[test]
fn a_rewritten_small_model_extracts_to_a_valid_graph() {
    let model = Roofline::new(Cluster::default());
    let g = small("ep=4", &[]);
    let (l, grew) = saturate(&g);
    assert!(grew, "the rule fired");
    let x = DagExtractor::new(&l.egraph, &model);
    assert!(!x.used_fallback() && x.converged());
    let out = l.to_graph(&x.best_expr(l.root).unwrap());
    moe_ir::validate(&out).unwrap();
    let cost = x.dag_cost(l.root);
    assert!(cost.is_finite() && cost > 0.0);
    let s = moe_ir::Summary::of(&out);
    // Each of the 2 MoE layers in one of its two forms: 2 all-to-alls, or 1 reduce-scatter.
    assert_eq!(
        s.collectives.all_to_all + 2 * s.collectives.reduce_scatter,
        4
    );
    // Never worse than the original program.
    let orig = load(&g);
    let before = DagExtractor::new(&orig.egraph, &model).dag_cost(orig.root);
    assert!(cost <= before * (1.0 + 1e-12), "{cost} > {before}");
    if std::env::var_os("MOE_SHOW").is_some() {
        println!(
            "{} ms -> {} ms, all_to_all {}, reduce_scatter {}",
            before * 1e3,
            cost * 1e3,
            s.collectives.all_to_all,
            s.collectives.reduce_scatter
        );
    }
    // Extracting again gives the same program (determinism).
    let again = l.to_graph(
        &DagExtractor::new(&l.egraph, &model)
            .best_expr(l.root)
            .unwrap(),
    );
    assert_eq!(moe_ir::print::to_text(&again), moe_ir::print::to_text(&out));
}

#[test]
fn without_a_rewrite_the_graph_comes_back_identical() {
    let model = Roofline::default();
    let layer = moe_ir::json::from_json(include_str!("../../../examples/moe-layer.json")).unwrap();
    for g in [small("ep=4", &[]), small("dp=2,ep=4", &[]), layer] {
        let l = load(&g);
        let x = DagExtractor::new(&l.egraph, &model);
        let out = l.to_graph(&x.best_expr(l.root).unwrap());
        moe_ir::validate(&out).unwrap();
        assert_eq!(moe_ir::print::to_text(&out), moe_ir::print::to_text(&g));
    }
}

#[test]
fn long_sequences_take_the_all_gather_form() {
    // Mixtral's widths, 4096 tokens per rank: the dropless padded buffer holds 4 x 8 x 4096 rows per rank, the
    // grouped form the 2/8 of 16384 x 2 routed rows a rank expects.
    let model = Roofline::default();
    let opts = moe_ir::hf::ImportOptions {
        mesh: Some(Mesh::parse("ep=4", 8).unwrap()),
        seq: 4096,
        ..Default::default()
    };
    let sets: Vec<String> = ["num_hidden_layers=2", "vocab_size=128"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let g = moe_ir::hf::import(
        include_str!("../../../examples/hf/mixtral-8x7b.json"),
        &sets,
        &opts,
    )
    .unwrap();
    let (l, grew) = saturate(&g);
    assert!(grew);
    let x = DagExtractor::new(&l.egraph, &model);
    let out = l.to_graph(&x.best_expr(l.root).unwrap());
    moe_ir::validate(&out).unwrap();
    let s = moe_ir::Summary::of(&out);
    assert_eq!(
        (s.collectives.all_to_all, s.collectives.reduce_scatter),
        (0, 2)
    );
    let orig = load(&g);
    let before = DagExtractor::new(&orig.egraph, &model).dag_cost(orig.root);
    assert!(x.dag_cost(l.root) < before);
}

#[test]
fn grouped_experts_see_the_fill_of_their_routes() {
    let model = Roofline::default();
    let (l, _) = saturate(&small("ep=4", &[]));
    let x = DagExtractor::new(&l.egraph, &model);
    let mut seen = 0;
    for c in l.egraph.classes() {
        for n in &c.nodes {
            if let MoeLang::Op {
                op: Op::LocalRoutes { .. },
                ..
            } = n
            {
                // 8 experts over 4 ranks, top-2: each rank gets 1/4 of the pairs, bound k * T.
                assert_eq!(x.fills(c.id), &[0.25, 0.25, 1.0]);
                seen += 1;
            }
            if let MoeLang::Op {
                op:
                    Op::ExpertFfn {
                        layout: moe_ir::FfnLayout::Grouped,
                        ..
                    },
                ..
            } = n
            {
                assert_eq!(x.fill(c.id), 0.25);
            }
        }
    }
    assert_eq!(seen, 2);
}

fn leaf(eg: &mut EGraph<MoeLang, Types>, name: &str, ty: TensorType) -> Id {
    eg.add(MoeLang::Op {
        op: Op::Input(ty),
        leaf: Some(name.into()),
        children: vec![],
    })
}

fn op(eg: &mut EGraph<MoeLang, Types>, op: Op, children: Vec<Id>) -> Id {
    eg.add(MoeLang::Op {
        op,
        leaf: None,
        children,
    })
}

/// Tree cost with the extractor's own costs (what a tree extractor would minimise).
struct Tree<'x, 'a>(&'x DagExtractor<'a>);
impl CostFunction<MoeLang> for Tree<'_, '_> {
    type Cost = f64;
    fn cost<C: FnMut(Id) -> f64>(&mut self, enode: &MoeLang, mut costs: C) -> f64 {
        let own = self.0.node_own_cost(enode);
        enode.fold(own, |s, c| s + costs(c))
    }
}

#[test]
fn a_shared_subterm_is_paid_once() {
    // Memory-bound ops on [1024, 1024] bf16: unary ops move 2 units, binary ops 3.
    let mesh = Mesh::single();
    let mut eg = EGraph::new(Types { mesh });
    let t = TensorType::new(DType::Bf16, [1024, 1024]);
    let x = leaf(&mut eg, "x", t);
    // a = mul(gelu(s), relu(s)), s = add(x, x): tree 3 + (2+3) + (2+3) = 13, DAG 3+2+2+3 = 10.
    let s = op(&mut eg, Op::Add, vec![x, x]);
    let p = op(&mut eg, Op::Gelu, vec![s]);
    let q = op(&mut eg, Op::Relu, vec![s]);
    let a = op(&mut eg, Op::Mul, vec![p, q]);
    // b = mul(sigmoid^4(x), x): 4 * 2 + 3 = 11 either way.
    let mut y = x;
    for _ in 0..4 {
        y = op(&mut eg, Op::Sigmoid, vec![y]);
    }
    let b = op(&mut eg, Op::Mul, vec![y, x]);
    eg.union(a, b);
    let root = eg.add(MoeLang::Root(vec![a]));
    eg.rebuild();
    let model = Roofline::default();
    let x_ = DagExtractor::new(&eg, &model);
    let unit = (1024.0 * 1024.0 * 2.0) / 4300e9;
    let dag = x_.dag_cost(root);
    assert!(
        (dag - 10.0 * unit).abs() < 1e-9 * unit,
        "{dag} vs {}",
        10.0 * unit
    );
    let expr = x_.best_expr(root).unwrap();
    let text = expr.to_string();
    assert!(text.contains("gelu") && !text.contains("sigmoid"), "{text}");
    // A tree extractor on the same costs picks the other form.
    let (tree_cost, tree) = Extractor::new(&eg, Tree(&x_)).find_best(root);
    assert!(tree.to_string().contains("sigmoid"), "{tree}");
    assert!((tree_cost - 11.0 * unit).abs() < 1e-9 * unit);
    // The DAG price of each alternative above x (x is free anyway).
    let ca = x_.cost_of_node_above(a, x_.chosen(a).unwrap(), &[x]);
    assert!((ca - 10.0 * unit).abs() < 1e-9 * unit);
    let alt = eg[a]
        .nodes
        .iter()
        .find(|n| Some(*n) != x_.chosen(a))
        .unwrap();
    let cb = x_.cost_of_node_above(a, alt, &[x]);
    assert!((cb - 11.0 * unit).abs() < 1e-9 * unit);
    // Stopping at s leaves the mul and the two unary ops.
    let cs = x_.cost_of_node_above(a, x_.chosen(a).unwrap(), &[s]);
    assert!((cs - 7.0 * unit).abs() < 1e-9 * unit);
}

#[test]
fn a_cycle_terminates_and_extracts_the_leaf() {
    let mesh = Mesh::parse("tp=4", 8).unwrap();
    let mut eg = EGraph::new(Types { mesh });
    let x = leaf(&mut eg, "x", TensorType::new(DType::Bf16, [16, 8]));
    let sh = op(
        &mut eg,
        Op::Shard {
            axis: "tp".into(),
            dim: 0,
        },
        vec![x],
    );
    let ag = op(
        &mut eg,
        Op::AllGather {
            axis: "tp".into(),
            dim: 0,
        },
        vec![sh],
    );
    eg.union(x, ag);
    let y = op(&mut eg, Op::Gelu, vec![x]);
    let root = eg.add(MoeLang::Root(vec![y]));
    eg.rebuild();
    let model = Roofline::default();
    let ex = DagExtractor::new(&eg, &model);
    assert!(!ex.used_fallback());
    let expr = ex.best_expr(root).unwrap();
    assert_eq!(expr.to_string(), "(root (gelu input:x))");
    let gelu = 2.0 * 16.0 * 8.0 * 2.0 / 4300e9;
    assert!((ex.dag_cost(root) - gelu).abs() < 1e-20);
}
