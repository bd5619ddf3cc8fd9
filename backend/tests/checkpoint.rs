//! Weights from safetensors: a small Mixtral checkpoint written under Hugging Face's names
//! (`[out, in]` linear weights, one tensor per expert, Mixtral's w1/w2/w3) gives the same run as
//! the same numbers written under the graph's own names; it shards like seeded weights (the
//! expert-parallel original equals its PPMoE rewrite); a missing tensor is named.

#![allow(clippy::unwrap_used)]

mod common;

use common::{import, ppmoe};
use moe_backend::{run, verify, Checkpoint, RunOptions, VerifyOptions, Weights};
use moe_ir::{Graph, Op};
use safetensors::tensor::TensorView;
use safetensors::Dtype;

fn small() -> Graph {
    let sets: Vec<String> = [
        "num_hidden_layers=2",
        "hidden_size=32",
        "intermediate_size=48",
        "num_attention_heads=4",
        "num_key_value_heads=2",
        "vocab_size=64",
        "num_local_experts=4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    import("examples/hf/mixtral-8x7b.json", &sets, "ep=2", 8)
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

fn transpose(d: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; d.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = d[r * cols + c];
        }
    }
    out
}

/// The checkpoint tensors (name, shape, values) of `g`'s weights, under the graph's names or
/// under Hugging Face Mixtral's.
fn tensors(g: &Graph, hf: bool) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut out = Vec::new();
    for (_, n) in g.nodes() {
        let Op::Weight(t) = &n.op else { continue };
        let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        let v = values(&n.name, &t.shape);
        if !hf {
            out.push((n.name.clone(), shape, v));
            continue;
        }
        let layer = |rest: &str| {
            let (l, tail) = rest.split_once('.').unwrap();
            let tail = tail.replace("moe.", "block_sparse_moe.");
            format!("model.layers.{l}.{tail}")
        };
        match (n.name.as_str(), shape.len()) {
            ("embed_tokens.weight", _) => out.push(("model.embed_tokens.weight".into(), shape, v)),
            ("norm.weight", _) => out.push(("model.norm.weight".into(), shape, v)),
            (name, 3) => {
                // Stacked experts [E, in, out] -> one [out, in] tensor per expert.
                let (e, i, o) = (shape[0], shape[1], shape[2]);
                let (base, proj) = name.rsplit_once('.').unwrap();
                let w = match proj {
                    "gate_proj" => "w1",
                    "up_proj" => "w3",
                    "down_proj" => "w2",
                    p => panic!("unexpected expert weight {p}"),
                };
                for x in 0..e {
                    let part = &v[x * i * o..(x + 1) * i * o];
                    out.push((
                        format!("{}.{x}.{w}.weight", layer(&base[1..])),
                        vec![o, i],
                        transpose(part, i, o),
                    ));
                }
            }
            (name, 2) => {
                let key = if name == "lm_head.weight" {
                    name.to_string()
                } else {
                    layer(&name[1..])
                };
                out.push((
                    key,
                    vec![shape[1], shape[0]],
                    transpose(&v, shape[0], shape[1]),
                ));
            }
            (name, _) => out.push((layer(&name[1..]), shape, v)),
        }
    }
    out
}

fn checkpoint(t: &[(String, Vec<usize>, Vec<f32>)]) -> Weights {
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

#[test]
fn hf_names_and_graph_names_give_the_same_run() {
    let g = small();
    let hf = tensors(&g, true);
    assert!(hf
        .iter()
        .any(|(n, _, _)| n == "model.layers.1.block_sparse_moe.experts.3.w2.weight"));
    let opts = RunOptions::default();
    let a = run(&g, &checkpoint(&tensors(&g, false)), &opts).unwrap();
    let b = run(&g, &checkpoint(&hf), &opts).unwrap();
    assert_eq!(a.outputs, b.outputs);
    let seeded = run(&g, &Weights::Seeded, &opts).unwrap();
    assert_ne!(a.outputs, seeded.outputs);
}

#[test]
fn checkpoint_weights_shard_like_seeded_ones() {
    let g = small();
    let w = checkpoint(&tensors(&g, true));
    let v = verify(&g, &ppmoe(&g, 2), &w, &VerifyOptions::default()).unwrap();
    assert!(v.passed, "{v:?}");
}

#[test]
fn a_missing_tensor_is_named() {
    let g = small();
    let mut t = tensors(&g, true);
    t.retain(|(n, _, _)| n != "model.layers.0.self_attn.k_proj.weight");
    let e = run(&g, &checkpoint(&t), &RunOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("weight `l0.self_attn.k_proj.weight`")
            && msg.contains("model.layers.0.self_attn.k_proj.weight"),
        "{msg}"
    );
    // A matrix stored flat.
    let mut t = tensors(&g, false);
    let i = t.iter().position(|x| x.1.len() == 2).unwrap();
    t[i].1 = vec![t[i].2.len()];
    let e = run(&g, &checkpoint(&t), &RunOptions::default()).unwrap_err();
    assert!(
        e.to_string().contains(&format!("weight `{}`", t[i].0)),
        "{e}"
    );
}
