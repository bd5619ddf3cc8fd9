//! Pipeline stages built by hand: a graph cut into stages (a `pipeline` spec, nodes carrying
//! `stage`, mesh with an outermost `pp` axis, `send`/`recv` between stages) computes what the
//! unstaged graph computes, whatever the arena order of the stages; transfers that could never
//! complete are refused. (Graphs cut by the pipeline pass are compared in `families.rs` and
//! `equivalence.rs`.)

#![allow(clippy::unwrap_used)]

use moe_backend::{run, verify, ExecError, RunOptions, VerifyOptions, Weights};
use moe_ir::{DType, Graph, Mesh, NodeId, Op, PipelineSpec, Schedule, Scope, TensorType, Value};

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
    let out = run(&mlp(true, true), &Weights::Seeded, &RunOptions::default()).unwrap();
    assert_eq!(out.outputs[0].1.shape, vec![8, 4]);
    assert!(out.outputs[0].1.abs_sum() > 0.0);
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
