use super::*;
use crate::rewrite::DispatchRewrite;
use crate::TensorParallel;
use moe_ir::hf::{import, ImportOptions};
use moe_ir::json::{from_doc, to_doc};
use moe_ir::{validate, DType, Mesh, StageError, Summary, TensorType, ValidationError, Value};

const MIXTRAL: &str = include_str!("../../../examples/hf/mixtral-8x7b.json");

/// A small Mixtral, remapped to tp and rewritten to PPMoE.
fn ppmoe(layers: u32, tp: u32) -> Graph {
    let opts = ImportOptions {
        mesh: Some(Mesh::parse(&format!("ep={tp}"), 8).unwrap()),
        ..Default::default()
    };
    let g = import(
        MIXTRAL,
        &[
            format!("num_hidden_layers={layers}"),
            "hidden_size=512".into(),
            "intermediate_size=1024".into(),
        ],
        &opts,
    )
    .unwrap();
    let g = TensorParallel {
        tp: u64::from(tp),
        gpus_per_node: 8,
    }
    .remap(&g)
    .unwrap();
    DispatchRewrite::default().rewrite(&g).unwrap().graph
}

fn pass(stages: u32, m: u32) -> PipelinePartition {
    PipelinePartition::new(stages, m)
}

fn sends_recvs(g: &Graph) -> (usize, usize) {
    let s = g
        .nodes()
        .filter(|(_, n)| matches!(n.op, Op::Send { .. }))
        .count();
    let r = g
        .nodes()
        .filter(|(_, n)| matches!(n.op, Op::Recv { .. }))
        .count();
    (s, r)
}

#[test]
fn a_small_model_splits_into_valid_stages() {
    let g = ppmoe(4, 2);
    let p = pass(2, 4).partition(&g).unwrap();
    validate(&p.graph).unwrap();
    assert_eq!(Summary::of(&p.graph).stages, 2);
    assert_eq!(p.graph.mesh.axes[0].name, "pp");
    assert_eq!(p.graph.mesh.ranks(), 2 * g.mesh.ranks());
    let (s, r) = sends_recvs(&p.graph);
    assert!(s >= 1 && s == r, "{s} sends, {r} recvs");
    assert_eq!(p.report.per_stage.len(), 2);
    assert_eq!(p.report.layout.iter().sum::<u32>(), 4);
    // Same weights, same parameters, nothing lost.
    let params = |g: &Graph| Summary::of(g).params;
    assert_eq!(params(&p.graph), params(&g));
    // Each stage's own program validates; together they hold every node once.
    let mut total = 0;
    for k in 0..2 {
        let sp = moe_ir::stage_program(&p.graph, k).unwrap();
        validate(&sp).unwrap();
        assert!(sp.nodes().all(|(_, n)| n.stage == Some(k)));
        total += sp.len();
    }
    assert_eq!(total, p.graph.len());
    assert!(moe_ir::stage_program(&p.graph, 2).is_err());
    // The JSON round trip keeps the pipeline.
    let back = from_doc(to_doc(&p.graph)).unwrap();
    assert_eq!(back.pipeline, p.graph.pipeline);
}

#[test]
fn layouts_are_checked() {
    let g = ppmoe(4, 2);
    let mut p = pass(2, 2);
    p.layout = Layout::Explicit(vec![3, 2]);
    assert!(matches!(
        p.partition(&g),
        Err(PipelineError::LayoutSum { sum: 5, .. })
    ));
    p.layout = Layout::Explicit(vec![4]);
    assert!(matches!(
        p.partition(&g),
        Err(PipelineError::LayoutLength { got: 1, .. })
    ));
    p.layout = Layout::Explicit(vec![4, 0]);
    assert!(matches!(
        p.partition(&g),
        Err(PipelineError::EmptyStage { index: 1, .. })
    ));
    p.layout = Layout::Explicit(vec![1, 3]);
    let out = p.partition(&g).unwrap();
    assert_eq!(out.report.layout, vec![1, 3]);
    assert!(matches!(
        pass(5, 2).partition(&g),
        Err(PipelineError::TooManyStages {
            vstages: 5,
            layers: 4
        })
    ));
    assert!(matches!(
        pass(0, 2).partition(&g),
        Err(PipelineError::ZeroStages)
    ));
    assert!(matches!(
        pass(2, 2).partition(&out.graph),
        Err(PipelineError::AlreadyPartitioned)
    ));
}

#[test]
fn memory_that_does_not_fit_is_warned_about_and_more_stages_fix_it() {
    let g = ppmoe(4, 2);
    let mut one = pass(1, 1);
    one.gpu_memory_bytes = None;
    let need = one.partition(&g).unwrap().report.per_stage[0].memory_bytes;
    let cap = need * 0.6;
    // One stage cannot fit: the cut is still made, with a warning, and the report says so.
    let mut p = pass(1, 1);
    p.gpu_memory_bytes = Some(cap);
    let out = p.partition(&g).unwrap();
    assert_eq!(out.warnings.len(), 1);
    assert!(
        out.warnings[0].contains("no cut into 1 stages fits"),
        "{:?}",
        out.warnings
    );
    assert!(out.report.to_string().contains("exceeds the GPU"));
    // Four stages fit.
    let mut p = pass(4, 1);
    p.gpu_memory_bytes = Some(cap);
    let out = p.partition(&g).unwrap();
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    assert!(out.report.per_stage.iter().all(|s| s.memory_bytes <= cap));
}

#[test]
fn recomputation_keeps_less_and_costs_a_forward() {
    let g = ppmoe(4, 2);
    let plain = pass(2, 4).partition(&g).unwrap().report;
    let mut p = pass(2, 4);
    p.recompute = true;
    let out = p.partition(&g).unwrap();
    assert!(out.graph.pipeline.as_ref().is_some_and(|s| s.recompute));
    let re = out.report;
    for (a, b) in plain.per_stage.iter().zip(&re.per_stage) {
        assert!(
            b.peak_activation_bytes < a.peak_activation_bytes / 4.0,
            "{plain}\n{re}"
        );
    }
    assert!(re.step_s > plain.step_s);
}

#[test]
fn balanced_is_never_slower_than_equal_layers() {
    let g = ppmoe(6, 2);
    for stages in 1..=4 {
        let bal = pass(stages, 8).partition(&g).unwrap();
        let mut eq = pass(stages, 8);
        eq.layout = Layout::Equal;
        let eq = eq.partition(&g).unwrap();
        let slowest =
            |r: &ScheduleReport| r.per_stage.iter().map(|s| s.forward_s).fold(0.0, f64::max);
        assert!(
            slowest(&bal.report) <= slowest(&eq.report) * (1.0 + 1e-12),
            "P={stages}: {} vs {}",
            bal.report,
            eq.report
        );
    }
}

#[test]
fn interleaving_gives_each_device_non_adjacent_chunks() {
    let g = ppmoe(8, 2);
    let mut p = pass(2, 4);
    p.schedule = Schedule::Interleaved { chunks: 2 };
    let out = p.partition(&g).unwrap();
    validate(&out.graph).unwrap();
    assert_eq!(out.report.layout.len(), 4);
    assert_eq!(out.report.per_stage[0].layers.len(), 2);
    // Device 1 sends back to device 0 for its second chunk.
    let back = out
        .graph
        .nodes()
        .any(|(_, n)| matches!(n.op, Op::Send { .. }) && n.stage == Some(1));
    assert!(back);
    assert!(out.report.bubble < pass(2, 4).partition(&g).unwrap().report.bubble);
}

// ---- Planted bugs: each is caught by the validator, naming nodes and ranks. ----

fn stage_error(g: &Graph) -> StageError {
    match validate(g) {
        Err(ValidationError::Stage(e)) => e,
        other => panic!("expected a stage error, got {other:?}"),
    }
}

/// A two-stage toy: stage 0 computes a and b from x and sends both; stage 1 adds them.
fn two_transfers(swap_recvs: bool) -> Graph {
    let mesh = Mesh::parse("pp=2:inter,tp=2", 8).unwrap();
    let mut g = Graph::new("toy", mesh);
    let t = TensorType::new(DType::F32, [4, 8]);
    let l0 = Scope::Layer(0);
    let l1 = Scope::Layer(1);
    let add = |g: &mut Graph, name: &str, op: Op, ins: &[Value], scope, stage| {
        let id = g.add(name, op, ins, scope).unwrap();
        g.node_mut(id).stage = Some(stage);
        id
    };
    let x = add(&mut g, "x", Op::Input(t.clone()), &[], l0, 0);
    let a = add(&mut g, "a", Op::Relu, &[x.into()], l0, 0);
    let b = add(&mut g, "b", Op::Silu, &[x.into()], l0, 0);
    add(
        &mut g,
        "a.send",
        Op::Send { channel: 0 },
        &[a.into()],
        l0,
        0,
    );
    add(
        &mut g,
        "b.send",
        Op::Send { channel: 1 },
        &[b.into()],
        l0,
        0,
    );
    let order = if swap_recvs { [1, 0] } else { [0, 1] };
    let mut got = Vec::new();
    for c in order {
        let r = add(
            &mut g,
            &format!("r{c}"),
            Op::Recv {
                channel: c,
                ty: t.clone(),
            },
            &[],
            l1,
            1,
        );
        got.push(r);
    }
    let y = add(&mut g, "y", Op::Add, &[got[0].into(), got[1].into()], l1, 1);
    g.add_output("y", y);
    g.pipeline = Some(PipelineSpec {
        axis: "pp".into(),
        layout: vec![1, 1],
        schedule: Schedule::OneFOneB,
        micro_batches: 2,
        recompute: false,
        only_stage: None,
    });
    g
}

#[test]
fn the_toy_is_valid_as_built() {
    validate(&two_transfers(false)).unwrap();
}

#[test]
fn planted_recv_order_swap_is_a_cycle_of_waits() {
    let e = stage_error(&two_transfers(true));
    assert!(matches!(e, StageError::TransferCycle(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("stage 0 runs send `a.send` before send `b.send`"),
        "{msg}"
    );
    assert!(
        msg.contains("stage 1 runs recv `r1` before recv `r0`"),
        "{msg}"
    );
}

#[test]
fn planted_mismatched_recv_is_caught() {
    let g = ppmoe(2, 2);
    let out = pass(2, 2).partition(&g).unwrap().graph;
    // The first send ships another value of its stage than the one its recv declares.
    let mut doc = to_doc(&out);
    let si = doc
        .nodes
        .iter()
        .position(|n| matches!(n.op, Op::Send { .. }))
        .unwrap();
    let sent = doc.nodes[si].inputs[0].clone();
    let sent_ty = out
        .value_type(out.find(&sent).unwrap().into())
        .unwrap()
        .clone();
    let other = out
        .nodes()
        .find(|(_, n)| {
            n.stage == doc.nodes[si].stage
                && n.outputs.len() == 1
                && n.outputs[0] != sent_ty
                && !matches!(n.op, Op::Send { .. })
        })
        .map(|(_, n)| n.name.clone())
        .unwrap();
    doc.nodes[si].inputs = vec![other];
    let e = from_doc(doc).unwrap_err().to_string();
    assert!(
        e.contains("sends") && e.contains(&format!("declares {sent_ty}")),
        "{e}"
    );

    // A recv on a channel nobody sends on.
    let mut doc = to_doc(&out);
    for n in doc.nodes.iter_mut() {
        if let Op::Recv { channel, .. } = &mut n.op {
            *channel += 1000;
            break;
        }
    }
    let e = from_doc(doc).unwrap_err().to_string();
    assert!(e.contains("has no matching recv"), "{e}");
}

#[test]
fn planted_collective_across_stages_is_caught() {
    // A value partial over `pp` all-reduced over it (say, tied-embedding gradients summed
    // across the first and the last stage): the group's other rank runs another stage.
    let mesh = Mesh::parse("pp=2:inter,tp=2", 8).unwrap();
    let mut g = Graph::new("toy", mesh);
    let t = TensorType::new(DType::F32, [4, 8]).with_partial(&["pp"]);
    let x = g.add("x", Op::Zeros(t), &[], Scope::Layer(0)).unwrap();
    let y = g
        .add(
            "y",
            Op::AllReduce { axis: "pp".into() },
            &[x.into()],
            Scope::Layer(0),
        )
        .unwrap();
    let z = g.add("z", Op::Relu, &[y.into()], Scope::Layer(1)).unwrap();
    g.node_mut(x).stage = Some(0);
    g.node_mut(y).stage = Some(0);
    g.node_mut(z).stage = Some(1);
    g.add_output("z", z);
    g.pipeline = Some(PipelineSpec {
        axis: "pp".into(),
        layout: vec![1, 1],
        schedule: Schedule::Gpipe,
        micro_batches: 1,
        recompute: false,
        only_stage: None,
    });
    let e = stage_error(&g);
    assert!(
        matches!(e, StageError::CollectiveAcrossStages { .. }),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("`y` (all_reduce over `pp`) runs on stage 0"),
        "{msg}"
    );
    assert!(
        msg.contains("group [0, 2]") && msg.contains("ranks [2] are on stages [1]"),
        "{msg}"
    );
}

#[test]
fn planted_empty_stage_and_stray_stage_are_caught() {
    // Layer 1 has no nodes, so the stage that holds only layer 1 would idle.
    let mut g = two_transfers(false);
    let mut doc = to_doc(&g);
    doc.mesh = Mesh::parse("pp=3:inter,tp=2", 8).unwrap();
    for n in doc.nodes.iter_mut() {
        if n.stage == Some(1) {
            n.scope = Scope::Layer(2);
            n.stage = Some(2);
        }
    }
    doc.pipeline.as_mut().unwrap().layout = vec![1, 1, 1];
    let e = from_doc(doc).unwrap_err().to_string();
    assert!(
        e.contains("stage 1 has no nodes (ranks 2..=3 would idle)"),
        "{e}"
    );
    // A virtual stage without layers.
    g.pipeline.as_mut().unwrap().layout = vec![2, 0];
    assert!(matches!(
        stage_error(&g),
        StageError::EmptyVirtualStage { vstage: 1, .. }
    ));
    // An op on a stage its layer is not on.
    let mut g = two_transfers(false);
    let y = g.find("y").unwrap();
    g.node_mut(y).stage = Some(0);
    let e = stage_error(&g);
    assert!(matches!(e, StageError::StageOfScope { .. }), "{e}");
}

/// On real small models (dense and MoE layers of different cost, embedding and head), the pass's
/// slowest stage equals the brute-force optimum over every contiguous cut, and is never slower
/// than equal layers.
#[test]
fn the_cut_is_optimal_on_small_models() {
    let llama4 = include_str!("../../../examples/hf/llama4-scout.json");
    let dsv2 = include_str!("../../../examples/hf/deepseek-v2-lite.json");
    let cases: [(&str, Vec<String>); 2] = [
        (
            llama4,
            vec![
                "num_hidden_layers=7".into(),
                "interleave_moe_layer_step=2".into(),
                "moe_layers=[1,3,5]".into(),
                "no_rope_layers=[1,1,1,0,1,1,1]".into(),
            ],
        ),
        (
            dsv2,
            vec![
                "num_hidden_layers=7".into(),
                "first_k_dense_replace=2".into(),
            ],
        ),
    ];
    for (cfg, set) in cases {
        let opts = ImportOptions {
            mesh: Some(Mesh::parse("ep=2", 8).unwrap()),
            seq: 256,
            ..Default::default()
        };
        let g = import(cfg, &set, &opts).unwrap();
        let g = TensorParallel {
            tp: 2,
            gpus_per_node: 8,
        }
        .remap(&g)
        .unwrap();
        let g = DispatchRewrite::default().rewrite(&g).unwrap().graph;
        let m = Roofline::default();
        let costs = costs::LayerCosts::of(&g, &m);
        let n = costs.layers.len();
        assert_eq!(n, 7);
        for stages in 1..=4u32 {
            let p = pass(stages, 8).partition(&g).unwrap();
            let vs = stages as usize;
            let cost = |k: usize, a: usize, b: usize| costs.range(a, b, k, vs).seconds;
            let dp = partition::slowest(&p.report.layout, cost);
            let mut brute = f64::INFINITY;
            let mut stack = vec![(Vec::<u32>::new(), 0usize)];
            while let Some((lens, used)) = stack.pop() {
                if lens.len() == vs {
                    if used == n {
                        brute = brute.min(partition::slowest(&lens, cost));
                    }
                    continue;
                }
                for l in 1..=(n - used) {
                    let mut next = lens.clone();
                    next.push(l as u32);
                    stack.push((next, used + l));
                }
            }
            assert!(dp <= brute * 1.01, "P={stages}: dp {dp} brute {brute}");
            let eq = partition::slowest(&partition::equal_split(n, vs), cost);
            assert!(dp <= eq * (1.0 + 1e-12), "P={stages}: dp {dp} equal {eq}");
        }
    }
}
