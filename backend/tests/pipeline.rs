//! Pipeline stages built by hand: a graph cut into stages (a `pipeline` spec, nodes carrying
//! `stage`, mesh with an outermost `pp` axis, `send`/`recv` between stages) computes what the
//! unstaged graph computes, whatever the arena order of the stages; transfers that could never
//! complete are refused. Graphs cut by the pipeline pass run their micro-batches in the order of
//! their schedule (GPipe, 1F1B, interleaved) and compute what the unstaged graph computes on the
//! same micro-batches. (Every family's pipelined form is compared in `families.rs` and
//! `equivalence.rs`.)

#![allow(clippy::unwrap_used)]

mod common;

use common::import;
use moe_backend::{run, verify, ExecError, RunOptions, StepRun, VerifyOptions, Weights};
use moe_ir::pipeline::{steps, Phase};
use moe_ir::{DType, Graph, Mesh, NodeId, Op, PipelineSpec, Schedule, Scope, TensorType, Value};
use moe_passes::pipeline::{Layout, PipelinePartition};
use moe_passes::rewrite::DispatchRewrite;
use moe_passes::{Pipeline, TensorParallel};
use std::collections::HashMap;

fn f32t(shape: &[u64]) -> TensorType {
    TensorType::new(DType::F32, shape.to_vec())
}

/// Builds nodes with an optional stage.
struct B {
    g: Graph,
}

impl B {
    fn new(mesh: &str) -> B {
        let mut g = Graph::new("mlp", Mesh::parse(mesh, 8).unwrap());
        if mesh.starts_with("pp=") {
            g.pipeline = Some(PipelineSpec {
                axis: "pp".into(),
                layout: vec![1, 1],
                schedule: Schedule::OneFOneB,
                micro_batches: 2,
                recompute: false,
                only_stage: None,
            });
        }
        B { g }
    }

    fn add(&mut self, name: &str, op: Op, inputs: &[NodeId], stage: Option<u32>) -> NodeId {
        let ins: Vec<Value> = inputs.iter().map(|&i| i.into()).collect();
        let id = self
            .g
            .add(name, op, &ins, Scope::Layer(stage.unwrap_or(0)))
            .unwrap_or_else(|e| panic!("{e}"));
        self.g.node_mut(id).stage = stage;
        id
    }
}

/// Layer 0: a tensor-parallel MLP (column then row split, all-reduce); layer 1: a matmul.
/// With `pp`, layer 0 is stage 0 and layer 1 stage 1, joined by channel 0; `stage1_first` puts
/// stage 1's nodes first in the arena.
fn mlp(pp: bool, stage1_first: bool) -> Graph {
    let mesh = if pp { "pp=2,tp=2" } else { "tp=2" };
    let mut b = B::new(mesh);
    let (s0, s1) = if pp { (Some(0), Some(1)) } else { (None, None) };
    let stage1 = |b: &mut B, h: Option<NodeId>| {
        let h = match h {
            Some(h) => h,
            None => b.add(
                "l1.recv",
                Op::Recv {
                    channel: 0,
                    ty: f32t(&[8, 16]),
                },
                &[],
                s1,
            ),
        };
        let w3 = b.add("l1.w3", Op::Weight(f32t(&[16, 4])), &[], s1);
        let y = b.add("l1.out", Op::Matmul, &[h, w3], s1);
        b.g.add_output("y", y);
    };
    if stage1_first {
        stage1(&mut b, None);
    }
    let x = b.add("x", Op::Input(f32t(&[8, 16])), &[], s0);
    let w1 = b.add(
        "l0.w1",
        Op::Weight(f32t(&[16, 32]).with_split(1, &["tp"])),
        &[],
        s0,
    );
    let h = b.add("l0.up", Op::Matmul, &[x, w1], s0);
    let h = b.add("l0.gelu", Op::Gelu, &[h], s0);
    let w2 = b.add(
        "l0.w2",
        Op::Weight(f32t(&[32, 16]).with_split(0, &["tp"])),
        &[],
        s0,
    );
    let p = b.add("l0.down", Op::Matmul, &[h, w2], s0);
    let r = b.add(
        "l0.all_reduce",
        Op::AllReduce { axis: "tp".into() },
        &[p],
        s0,
    );
    if pp {
        b.add("l0.send", Op::Send { channel: 0 }, &[r], s0);
        if !stage1_first {
            stage1(&mut b, None);
        }
    } else {
        stage1(&mut b, Some(r));
    }
    moe_ir::validate(&b.g).unwrap();
    b.g
}

#[test]
fn stages_compute_what_the_unstaged_graph_computes() {
    let plain = mlp(false, false);
    let opts = VerifyOptions {
        rtol: 0.0,
        ..Default::default()
    };
    for stage1_first in [false, true] {
        let staged = mlp(true, stage1_first);
        let v = verify(&plain, &staged, &Weights::Seeded, &opts).unwrap();
        assert!(v.passed, "stage 1 first: {stage1_first}: {v:?}");
    }
    // The spec's 2 micro-batches run: their outputs are concatenated along the tokens.
    let out = run(&mlp(true, true), &Weights::Seeded, &RunOptions::default()).unwrap();
    assert_eq!(out.micro_batches, 2);
    assert_eq!(out.outputs[0].1.shape, vec![16, 4]);
    assert!(out.outputs[0].1.abs_sum() > 0.0);
}

/// A Mixtral cut to 4 layers of hidden 64 on `ep=2`, 8-token sequences.
fn small_mixtral() -> Graph {
    let sets: Vec<String> = [
        "num_hidden_layers=4",
        "hidden_size=64",
        "intermediate_size=96",
        "num_attention_heads=4",
        "num_key_value_heads=2",
        "vocab_size=128",
        "num_local_experts=4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    import("examples/hf/mixtral-8x7b.json", &sets, "ep=2", 8)
}

/// `g` in PPMoE form on `tp=2`, cut into `pp` stages run in `schedule` over `m` micro-batches
/// with equal layers per virtual stage.
fn cut(g: &Graph, pp: u32, schedule: Schedule, m: u32) -> Graph {
    let mut part = PipelinePartition::new(pp, m);
    part.schedule = schedule;
    part.layout = Layout::Equal;
    let (out, _) = Pipeline::new()
        .with(TensorParallel {
            tp: 2,
            gpus_per_node: 8,
        })
        .with(DispatchRewrite::default())
        .with(part)
        .run(g.clone())
        .unwrap_or_else(|e| panic!("--pp {pp} {schedule}: {e}"));
    out
}

/// Checks `trace` against the schedule: each stage ran exactly its forward steps, in its order,
/// and every micro-batch went through the virtual stages in model order.
fn check_trace(trace: &[StepRun], schedule: Schedule, pp: u32, m: u32) {
    let order = steps(schedule, pp, m).unwrap();
    for (s, own) in order.iter().enumerate() {
        let want: Vec<(u32, u32)> = own
            .iter()
            .filter(|st| st.phase == Phase::Forward)
            .map(|st| (st.micro, st.vstage))
            .collect();
        let ran: Vec<(u32, u32)> = trace
            .iter()
            .filter(|t| t.stage == s as u32)
            .map(|t| (t.micro, t.vstage))
            .collect();
        assert_eq!(
            ran, want,
            "{schedule}: stage {s} ran its steps out of order"
        );
    }
    let at: HashMap<(u32, u32), usize> = trace
        .iter()
        .enumerate()
        .map(|(i, t)| ((t.micro, t.vstage), i))
        .collect();
    let vstages = pp * schedule.chunks();
    for micro in 0..m {
        for v in 1..vstages {
            assert!(
                at[&(micro, v - 1)] < at[&(micro, v)],
                "{schedule}: micro-batch {micro} finished virtual stage {v} before {}",
                v - 1
            );
        }
    }
}

#[test]
fn stages_run_their_micro_batches_in_schedule_order() {
    let g = small_mixtral();
    let m = 4;
    let opts = VerifyOptions {
        rtol: 1e-5,
        ..Default::default()
    };
    let cases = [
        (2, Schedule::Gpipe),
        (2, Schedule::OneFOneB),
        (4, Schedule::OneFOneB),
        (2, Schedule::Interleaved { chunks: 2 }),
    ];
    let mut same_cut: HashMap<(String, Vec<u32>), Graph> = HashMap::new();
    let mut compared = 0;
    for (pp, schedule) in cases {
        let staged = cut(&g, pp, schedule, m);
        let r = run(&staged, &Weights::Seeded, &RunOptions::default()).unwrap();
        assert_eq!(r.micro_batches, m);
        assert_eq!(r.trace.len() as u32, m * pp * schedule.chunks());
        check_trace(&r.trace, schedule, pp, m);
        // The unstaged graph on the same 4 micro-batches computes the same function.
        let v = verify(&g, &staged, &Weights::Seeded, &opts).unwrap();
        assert!(v.passed, "--pp {pp} {schedule}: {v:?}");
        assert_eq!(v.micro_batches, m);
        // Schedules only reorder the work: the same cut (mesh and layout) under another
        // schedule gives the same numbers, bit for bit.
        let key = (
            staged.mesh.to_string(),
            staged.pipeline.as_ref().unwrap().layout.clone(),
        );
        match same_cut.get(&key) {
            Some(other) => {
                let exact = VerifyOptions {
                    rtol: 0.0,
                    ..Default::default()
                };
                let v = verify(other, &staged, &Weights::Seeded, &exact).unwrap();
                assert!(v.passed, "{schedule} differs from its cut's other schedule");
                compared += 1;
            }
            None => {
                same_cut.insert(key, staged);
            }
        }
    }
    assert_eq!(compared, 1, "GPipe and 1F1B on pp=2 share a cut");
}

#[test]
fn each_micro_batch_has_its_own_inputs_and_the_first_is_the_single_run() {
    let g = small_mixtral();
    let one = run(&g, &Weights::Seeded, &RunOptions::default()).unwrap();
    let three = run(
        &g,
        &Weights::Seeded,
        &RunOptions {
            micro_batches: Some(3),
            ..Default::default()
        },
    )
    .unwrap();
    let (a, b) = (&one.outputs[0].1, &three.outputs[0].1);
    assert_eq!(b.shape[0], 3 * a.shape[0]);
    assert_eq!(b.shape[1..], a.shape[1..]);
    let n = a.data.len();
    assert_eq!(
        b.data[..n],
        a.data[..],
        "micro-batch 0 is the one-micro-batch run"
    );
    assert_ne!(
        b.data[n..2 * n],
        b.data[..n],
        "micro-batch 1 has its own tokens"
    );
    assert_ne!(
        b.data[2 * n..],
        b.data[n..2 * n],
        "micro-batch 2 has its own tokens"
    );
    assert_eq!(three.trace.len(), 3);
}

#[test]
fn an_interleaved_schedule_needs_micro_batches_in_multiples_of_the_stages() {
    let staged = cut(&small_mixtral(), 2, Schedule::Interleaved { chunks: 2 }, 4);
    let e = run(
        &staged,
        &Weights::Seeded,
        &RunOptions {
            micro_batches: Some(3),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("3 micro-batches"), "{e}");
}

#[test]
fn transfers_that_could_never_complete_are_refused() {
    // Stage 0 waits for channel 1 before sending channel 0; stage 1 waits for channel 0 before
    // sending channel 1: the validator sees the cycle (the executor's own deadlock check is a
    // unit test of the executor).
    let mut b = B::new("pp=2");
    let t = f32t(&[2, 2]);
    let r1 = b.add(
        "s0.recv",
        Op::Recv {
            channel: 1,
            ty: t.clone(),
        },
        &[],
        Some(0),
    );
    b.add("s0.send", Op::Send { channel: 0 }, &[r1], Some(0));
    let r0 = b.add("s1.recv", Op::Recv { channel: 0, ty: t }, &[], Some(1));
    b.add("s1.send", Op::Send { channel: 1 }, &[r0], Some(1));
    b.g.add_output("y", r0);
    let e = run(&b.g, &Weights::Seeded, &RunOptions::default()).unwrap_err();
    assert!(matches!(e, ExecError::Invalid(_)), "{e}");
    // A send without its recv.
    let mut b = B::new("pp=2");
    let x = b.add("x", Op::Input(f32t(&[2, 2])), &[], Some(0));
    b.add("send", Op::Send { channel: 3 }, &[x], Some(0));
    let y = b.add("y", Op::Input(f32t(&[2, 2])), &[], Some(1));
    b.g.add_output("y", y);
    let e = run(&b.g, &Weights::Seeded, &RunOptions::default()).unwrap_err();
    assert!(e.to_string().contains("channel 3"), "{e}");
}
