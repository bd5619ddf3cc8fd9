//! The executor's own checks: deadlocks between stages.

#![allow(clippy::unwrap_used)]

use super::entry::{execute_fed, execute_unchecked, Feed};
use super::*;
use crate::collective::InProcess;
use crate::testing::Cpu;
use moe_ir::{DType, PipelineSpec, Schedule, Scope, TensorType};

/// [`execute_fed`] with seeded inputs.
#[allow(clippy::too_many_arguments)]
fn execute<B: Backend, C: Collectives<B> + Sync>(
    g: &Graph,
    device: B::Device,
    coll: C,
    k: &dyn Compute<B>,
    weights: &Weights,
    seed: u64,
    micro_batches: Option<u32>,
    capture: &BTreeSet<NodeId>,
    profile: bool,
) -> Result<Executed, ExecError> {
    let feed = Feed {
        weights,
        inputs: None,
        seed,
        micro_batches,
    };
    execute_fed(g, device, coll, k, feed, capture, profile)
}

/// Two stages each waiting for the other's message before sending its own.
fn crossed() -> Graph {
    let mut g = Graph::new("crossed", Mesh::parse("pp=2", 8).unwrap());
    g.pipeline = Some(PipelineSpec {
        axis: "pp".into(),
        layout: vec![1, 1],
        schedule: Schedule::OneFOneB,
        micro_batches: 2,
        recompute: false,
        only_stage: None,
    });
    let t = TensorType::new(DType::F32, [2]);
    let mut add = |name: &str, op: Op, inputs: &[NodeId], stage: u32| {
        let ins: Vec<Value> = inputs.iter().map(|&i| i.into()).collect();
        let id = g.add(name, op, &ins, Scope::Layer(stage)).unwrap();
        g.node_mut(id).stage = Some(stage);
        id
    };
    let r1 = add(
        "s0.recv",
        Op::Recv {
            channel: 1,
            ty: t.clone(),
        },
        &[],
        0,
    );
    add("s0.send", Op::Send { channel: 0 }, &[r1], 0);
    let r0 = add("s1.recv", Op::Recv { channel: 0, ty: t }, &[], 1);
    add("s1.send", Op::Send { channel: 1 }, &[r0], 1);
    g.add_output("y", r0);
    g
}

#[test]
fn waiting_stages_that_cannot_advance_are_a_deadlock_not_a_hang() {
    let g = crossed();
    let e = execute_unchecked::<Cpu, InProcess<Cpu>>(
        &g,
        Default::default(),
        InProcess::default(),
        &compute::Burn,
        Feed {
            weights: &Weights::Seeded,
            inputs: None,
            seed: 0,
            micro_batches: None,
        },
        &BTreeSet::new(),
        false,
    )
    .unwrap_err();
    assert_eq!(
        e,
        ExecError::Deadlock {
            node: "s0.recv".into(),
            channel: 1,
            micro: 0,
            rank: 0
        }
    );
    // The validator refuses it before execution.
    assert!(matches!(
        execute::<Cpu, InProcess<Cpu>>(
            &g,
            Default::default(),
            InProcess::default(),
            &compute::Burn,
            &Weights::Seeded,
            0,
            None,
            &BTreeSet::new(),
            false
        ),
        Err(ExecError::Invalid(_))
    ));
}
