//! Embedding the passes in another compiler: build a one-layer expert-parallel MoE graph in code,
//! remap it onto a tensor-parallel group, rewrite it with the e-graph rules under a cost model of
//! your own, and read the per-layer report. No CLI, no files.
//!
//! `cargo run -p moe-passes --example embed`

use moe_ir::{
    Activation, DType, FfnLayout, Graph, Mesh, Op, RouterAttrs, Scope, Score, TensorType, Value,
    F64,
};
use moe_passes::cost::{CostModel, Roofline};
use moe_passes::rewrite::DispatchRewrite;
use moe_passes::{Pipeline, TensorParallel};
use std::sync::Arc;

/// A cost model that wraps the roofline and makes every collective `factor` times dearer
/// (e.g. a congested network): how a compiler plugs in its own prices.
struct Congested {
    inner: Roofline,
    factor: f64,
}

impl CostModel for Congested {
    fn op_time(
        &self,
        op: &Op,
        inputs: &[&TensorType],
        input_fill: &[f64],
        outputs: &[TensorType],
        mesh: &Mesh,
    ) -> f64 {
        let t = self.inner.op_time(op, inputs, input_fill, outputs, mesh);
        if op.communicates() {
            t * self.factor
        } else {
            t
        }
    }
}

fn build() -> Result<Graph, moe_ir::BuildError> {
    let (tokens, hidden, ffn, experts) = (4096, 1024, 2048, 8);
    let mesh = Mesh::parse("ep=4", 8).expect("a valid mesh");
    let mut g = Graph::new("embedded-moe", mesh);
    let l0 = Scope::Layer(0);
    let x = g.add(
        "x",
        Op::Input(TensorType::new(DType::Bf16, [tokens, hidden]).with_split(0, &["ep"])),
        &[],
        l0,
    )?;
    let wg = g.add(
        "w_gate",
        Op::Weight(TensorType::new(DType::Bf16, [hidden, experts])),
        &[],
        l0,
    )?;
    let logits = g.add("logits", Op::Matmul, &[x.into(), wg.into()], l0)?;
    let router = g.add(
        "router",
        Op::Router(RouterAttrs {
            experts,
            k: 2,
            score: Score::Softmax,
            normalize: true,
            scale: F64(1.0),
            groups: None,
            select_bias: false,
        }),
        &[logits.into()],
        l0,
    )?;
    let (idx, w) = (
        Value {
            node: router,
            output: 0,
        },
        Value {
            node: router,
            output: 1,
        },
    );
    // Dropless: each expert may receive every local token.
    let capacity = tokens / 4;
    let d = g.add(
        "dispatch",
        Op::Dispatch { experts, capacity },
        &[x.into(), idx],
        l0,
    )?;
    let a2a = |axis_split, concat| Op::AllToAll {
        axis: "ep".into(),
        split_dim: axis_split,
        concat_dim: concat,
    };
    let a = g.add("a2a_in", a2a(0, 1), &[d.into()], l0)?;
    let expert_w =
        |shape: [u64; 3]| Op::Weight(TensorType::new(DType::Bf16, shape).with_split(0, &["ep"]));
    let up = g.add("w_up", expert_w([experts, hidden, ffn]), &[], l0)?;
    let gate = g.add("w_gate_proj", expert_w([experts, hidden, ffn]), &[], l0)?;
    let down = g.add("w_down", expert_w([experts, ffn, hidden]), &[], l0)?;
    let h = g.add(
        "experts",
        Op::ExpertFfn {
            layout: FfnLayout::Padded,
            act: Activation::Silu,
            gated: true,
            bias: false,
        },
        &[a.into(), up.into(), gate.into(), down.into()],
        l0,
    )?;
    let b = g.add("a2a_out", a2a(1, 0), &[h.into()], l0)?;
    let y = g.add(
        "y",
        Op::Combine { experts, capacity },
        &[b.into(), idx, w],
        l0,
    )?;
    g.add_output("y", y);
    Ok(g)
}

fn main() {
    let g = build().expect("the example graph type-checks");
    moe_ir::validate(&g).expect("valid");
    let rewrite = DispatchRewrite {
        model: Arc::new(Congested {
            inner: Roofline::default(),
            factor: 2.0,
        }),
        explain: true,
        ..DispatchRewrite::default()
    };
    let (out, stats) = Pipeline::new()
        .with(TensorParallel {
            tp: 4,
            gpus_per_node: 8,
        })
        .with(rewrite)
        .run(g)
        .expect("the pipeline runs");
    for s in &stats {
        println!("{}: {:.2} ms", s.pass, s.time.as_secs_f64() * 1e3);
        for n in &s.notes {
            print!("{n}");
            if !n.ends_with('\n') {
                println!();
            }
        }
    }
    println!("\n{}", moe_ir::print::to_text(&out));
}
