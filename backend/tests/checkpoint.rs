//! Weights from safetensors. For every family, a small checkpoint written under Hugging Face's
//! names and layouts (`[out, in]` linear weights; per-expert or fused expert tensors; DBRX's
//! `Wqkv`; DeepSeek's fused MLA projections; T5's block names), built by each test from the
//! graph-layout values of the graph's weights, gives exactly the run of the same numbers written
//! under the graph's own names; a fused tensor of the wrong shape is refused, naming the weight
//! and the keys tried. Checkpoint weights shard like seeded ones (the expert-parallel original
//! equals its PPMoE rewrite).

#![allow(clippy::unwrap_used)]

mod common;
#[path = "checkpoint/dbrx.rs"]
mod dbrx;
#[path = "checkpoint/deepseek.rs"]
mod deepseek;
#[path = "checkpoint/gpt_oss.rs"]
mod gpt_oss;
#[path = "checkpoint/llama4.rs"]
mod llama4;
#[path = "checkpoint/mixtral.rs"]
mod mixtral;
#[path = "checkpoint/switch.rs"]
mod switch;

use moe_backend::{run, Checkpoint, RunOptions, Weights};
use moe_ir::{Graph, Op};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::BTreeMap;

/// A checkpoint tensor: key, shape, row-major values.
pub type Tensor = (String, Vec<usize>, Vec<f32>);

/// Imports `examples/hf/{config}.json` with `sets` on `mesh` with 8-token sequences, in f32.
pub fn small(config: &str, sets: &[&str], mesh: &str) -> Graph {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    common::import(&format!("examples/hf/{config}.json"), &sets, mesh, 8)
}

/// Arbitrary values for weight `name` of `shape` (graph layout), scaled like a sane init.
fn values(name: &str, shape: &[u64]) -> Vec<f32> {
    let n: u64 = shape.iter().product();
    let salt = name.bytes().map(u64::from).sum::<u64>() as f32;
    let scale = if shape.len() == 1 && name.contains("norm") {
        return (0..n)
            .map(|i| 1.0 + 0.01 * (i as f32 + salt).sin())
            .collect();
    } else if shape.len() >= 2 {
        1.0 / (shape[shape.len() - 2] as f32).sqrt()
    } else {
        0.05
    };
    (0..n)
        .map(|i| scale * (0.37 * i as f32 + salt).sin() * 1.7)
        .collect()
}

/// `[rows, cols]` row-major -> `[cols, rows]`.
pub fn transpose(d: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; d.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = d[r * cols + c];
        }
    }
    out
}

/// The weights of `g` with arbitrary values, under the graph's names and in its layouts.
pub fn under_graph_names(g: &Graph) -> Vec<Tensor> {
    g.nodes()
        .filter_map(|(_, n)| match &n.op {
            Op::Weight(t) => Some((
                n.name.clone(),
                t.shape.iter().map(|&d| d as usize).collect(),
                values(&n.name, &t.shape),
            )),
            _ => None,
        })
        .collect()
}

/// The same values written under Hugging Face keys: each test takes the graph weights (graph
/// layout) and pushes HF tensors; `finish` checks every graph weight was written.
#[derive(Debug)]
pub struct Hf {
    graph: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    out: Vec<Tensor>,
}

impl Hf {
    pub fn new(g: &Graph) -> Hf {
        Hf {
            graph: under_graph_names(g)
                .into_iter()
                .map(|(n, s, v)| (n, (s, v)))
                .collect(),
            out: Vec::new(),
        }
    }

    /// Graph weight `name` (shape, values), marked written.
    pub fn take(&mut self, name: &str) -> (Vec<usize>, Vec<f32>) {
        self.graph
            .remove(name)
            .unwrap_or_else(|| panic!("no graph weight `{name}` (or taken twice)"))
    }

    /// Whether the graph has weight `name` not yet written.
    pub fn has(&self, name: &str) -> bool {
        self.graph.contains_key(name)
    }

    pub fn push(&mut self, key: impl Into<String>, shape: Vec<usize>, data: Vec<f32>) {
        assert_eq!(shape.iter().product::<usize>(), data.len());
        self.out.push((key.into(), shape, data));
    }

    /// `name` as it is under `key`.
    pub fn direct(&mut self, name: &str, key: impl Into<String>) {
        let (s, v) = self.take(name);
        self.push(key, s, v);
    }

    /// The `[in, out]` matrix `name` as an `[out, in]` linear weight `key`.
    pub fn linear(&mut self, name: &str, key: impl Into<String>) {
        let (s, v) = self.take(name);
        self.push(key, vec![s[1], s[0]], transpose(&v, s[0], s[1]));
    }

    /// Stacked experts `[E, in, out]` as one `[out, in]` tensor per expert, `key(e)`.
    pub fn per_expert(&mut self, name: &str, key: impl Fn(usize) -> String) {
        let (s, v) = self.take(name);
        let (i, o) = (s[1], s[2]);
        for e in 0..s[0] {
            let part = &v[e * i * o..(e + 1) * i * o];
            self.push(key(e), vec![o, i], transpose(part, i, o));
        }
    }

    /// What decoder-only checkpoints name alike: `{root}embed_tokens`, `{root}norm`, the LM head
    /// under `head`, and each of `layers` layers' two norms under `{root}layers.{i}.`.
    pub fn decoder_common(&mut self, root: &str, head: &str, layers: usize) {
        self.direct("embed_tokens.weight", format!("{root}embed_tokens.weight"));
        self.direct("norm.weight", format!("{root}norm.weight"));
        self.linear("lm_head.weight", head);
        for i in 0..layers {
            for n in ["input_layernorm", "post_attention_layernorm"] {
                self.direct(
                    &format!("l{i}.{n}.weight"),
                    format!("{root}layers.{i}.{n}.weight"),
                );
            }
        }
    }

    /// The HF tensors; panics if a graph weight was not written.
    pub fn finish(self) -> Vec<Tensor> {
        let left: Vec<&String> = self.graph.keys().collect();
        assert!(left.is_empty(), "graph weights not written: {left:?}");
        self.out
    }
}

/// Tensors as one in-memory safetensors file.
pub fn checkpoint(t: &[Tensor]) -> Weights {
    let bytes: Vec<Vec<u8>> = t
        .iter()
        .map(|(_, _, d)| d.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView<'_>)> = t
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let file = safetensors::serialize(views, None).unwrap();
    let mut c = Checkpoint::new();
    c.add_file("model.safetensors", file).unwrap();
    Weights::Checkpoint(c)
}

/// `g` runs the same on `hf` as on its weights under graph names (and not as on seeded ones).
pub fn same_run(g: &Graph, hf: &[Tensor]) {
    let opts = RunOptions::default();
    let a = run(g, &checkpoint(&under_graph_names(g)), &opts).unwrap();
    let b = run(g, &checkpoint(hf), &opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.outputs.len(), b.outputs.len());
    for ((name, x), (_, y)) in a.outputs.iter().zip(&b.outputs) {
        let diff = x
            .data
            .iter()
            .zip(&y.data)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max);
        assert!(x == y, "output `{name}` differs by up to {diff}");
    }
    let seeded = run(g, &Weights::Seeded, &opts).unwrap();
    assert_ne!(a.outputs, seeded.outputs);
}

/// `hf` with tensor `key` reshaped by `change` (shape, values in, shape, values out).
pub fn reshaped(
    hf: &[Tensor],
    key: &str,
    change: impl Fn(&[usize], &[f32]) -> (Vec<usize>, Vec<f32>),
) -> Vec<Tensor> {
    let mut out = hf.to_vec();
    let t = out
        .iter_mut()
        .find(|t| t.0 == key)
        .unwrap_or_else(|| panic!("no tensor `{key}`"));
    let (s, v) = change(&t.1, &t.2);
    t.1 = s;
    t.2 = v;
    out
}

/// A run of `g` on `t` fails with a message naming a weight starting with `weight`, the tensor
/// `key` and the keys tried.
pub fn refused(g: &Graph, t: &[Tensor], weight: &str, key: &str) -> String {
    let e = run(g, &checkpoint(t), &RunOptions::default())
        .err()
        .unwrap_or_else(|| panic!("ran with a misshapen `{key}`"));
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("weight `{weight}")) && msg.contains(key) && msg.contains("tried"),
        "{msg}"
    );
    msg
}

/// Drops the last row of a 2-d tensor.
pub fn drop_row(s: &[usize], v: &[f32]) -> (Vec<usize>, Vec<f32>) {
    let cols = s[1];
    (vec![s[0] - 1, cols], v[..v.len() - cols].to_vec())
}
