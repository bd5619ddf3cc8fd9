//! Given inputs: a user's token ids `[batch, seq]`, checked against a graph and laid out as the
//! micro-batches a run executes. Read from bytes (`.npy`, `.safetensors`) or JSON text
//! ([`parse`]); reading files is the caller's job.
//!
//! A graph imported with `seq` tokens per sequence and `micro_batch` sequences per rank holds
//! `T = ranks * micro_batch * seq` tokens in each integer input: one micro-batch. `batch`
//! sequences of `seq` ids are `batch * seq / T` micro-batches; micro-batch `m` holds sequences
//! `m * T / seq ..`, rank `r` of the token axes the `r`-th block of them (the graph's own token
//! split), so the outputs, concatenated over micro-batches, are in sequence order.

pub mod parse;

use moe_ir::{Graph, Op, Value};
use std::collections::BTreeMap;
use thiserror::Error;

/// Why given inputs do not fit a graph (or cannot be read), naming the input.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InputError {
    #[error("{what}: {why}")]
    Parse { what: String, why: String },
    #[error("graph input `{input}` is given no ids (given: {given})")]
    Missing { input: String, given: String },
    #[error("ids `{name}` do not name a graph input (the graph's integer inputs: {inputs})")]
    Unknown { name: String, inputs: String },
    #[error("ids for `{input}`: {why}")]
    Shape { input: String, why: String },
    #[error("ids for `{input}`: id {id} at [{batch}, {pos}] is outside the vocabulary 0..{vocab}")]
    OutOfRange {
        input: String,
        batch: usize,
        pos: usize,
        id: i64,
        vocab: u64,
    },
}

/// Token ids `[batch, seq]`, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenIds {
    pub batch: usize,
    pub seq: usize,
    pub ids: Vec<i64>,
}

/// Values for a graph's integer inputs, per micro-batch (each the input's global values).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inputs {
    micro_batches: u32,
    values: BTreeMap<String, Vec<Vec<i64>>>,
}

/// The integer inputs of `g` with their token counts.
fn int_inputs(g: &Graph) -> Vec<(String, u64, Value)> {
    g.nodes()
        .filter_map(|(id, n)| match &n.op {
            Op::Input(t) if !t.dtype.is_float() && t.rank() == 1 => {
                Some((n.name.clone(), t.shape[0], Value::from(id)))
            }
            _ => None,
        })
        .collect()
}

/// The vocabulary an integer input indexes: the fewest rows of the embeddings reading it.
fn vocab_of(g: &Graph, input: Value) -> Option<u64> {
    g.nodes()
        .filter(|(_, n)| matches!(n.op, Op::Embedding) && n.inputs.first() == Some(&input))
        .filter_map(|(_, n)| n.inputs.get(1).and_then(|&t| g.value_type(t)))
        .map(|t| t.shape[0])
        .min()
}

/// Whether ids given as `name` feed graph input `input`: the same name, or transformers'
/// `input_ids` for an encoder-decoder graph's `encoder_input_ids`.
fn names_input(name: &str, input: &str) -> bool {
    name == input || (name == "input_ids" && input == "encoder_input_ids")
}

/// Tokens per sequence of `g`: its `seq` meta (imported graphs), else its first attention's.
pub fn graph_seq(g: &Graph) -> Option<u64> {
    if let Some(s) = g.meta.get("seq").and_then(serde_json::Value::as_u64) {
        return Some(s);
    }
    g.nodes().find_map(|(_, n)| match &n.op {
        Op::Attention(a) => Some(a.seq),
        _ => None,
    })
}

impl Inputs {
    /// Lays `given` out for `g`: each entry names a graph input, or is unnamed (`None`) and then
    /// feeds every integer input not named by another. Every integer input needs ids; all must
    /// have the graph's sequence length and make a whole number of micro-batches, the same for
    /// all inputs; ids must lie in the vocabulary of the embeddings that read them.
    pub fn for_graph(
        g: &Graph,
        given: &[(Option<String>, TokenIds)],
    ) -> Result<Inputs, InputError> {
        let inputs = int_inputs(g);
        let names = || {
            inputs
                .iter()
                .map(|(n, _, _)| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (name, _) in given {
            if let Some(n) = name {
                if !inputs.iter().any(|(i, _, _)| names_input(n, i)) {
                    return Err(InputError::Unknown {
                        name: n.clone(),
                        inputs: names(),
                    });
                }
            }
        }
        let seq = graph_seq(g);
        let mut out = Inputs::default();
        let mut micro: Option<(u32, String)> = None;
        for (input, tokens, value) in &inputs {
            let ids = given
                .iter()
                .find(|(n, _)| n.as_deref().is_some_and(|n| names_input(n, input)))
                .or_else(|| given.iter().find(|(n, _)| n.is_none()))
                .map(|(_, t)| t)
                .ok_or_else(|| InputError::Missing {
                    input: input.clone(),
                    given: if given.is_empty() {
                        "none".into()
                    } else {
                        given
                            .iter()
                            .map(|(n, _)| n.clone().unwrap_or_else(|| "(unnamed)".into()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                })?;
            let shape_err = |why: String| InputError::Shape {
                input: input.clone(),
                why,
            };
            if ids.ids.len() != ids.batch * ids.seq || ids.batch == 0 || ids.seq == 0 {
                return Err(shape_err(format!(
                    "[{}, {}] with {} values: need a non-empty batch x seq array",
                    ids.batch,
                    ids.seq,
                    ids.ids.len()
                )));
            }
            if let Some(s) = seq.filter(|&s| s != ids.seq as u64) {
                return Err(shape_err(format!(
                    "sequences of {} tokens, the graph's are {s} (import it with --seq {})",
                    ids.seq, ids.seq
                )));
            }
            let total = ids.ids.len() as u64;
            if *tokens == 0 || total % tokens != 0 {
                return Err(shape_err(format!(
                    "[{}, {}] is {total} tokens, not a whole number of the graph's micro-batches of {tokens} tokens",
                    ids.batch, ids.seq
                )));
            }
            let m = u32::try_from(total / tokens)
                .map_err(|_| shape_err(format!("{} micro-batches are too many", total / tokens)))?;
            match &micro {
                Some((mm, other)) if *mm != m => {
                    return Err(shape_err(format!(
                        "makes {m} micro-batches, the ids of `{other}` make {mm}"
                    )))
                }
                _ => micro = Some((m, input.clone())),
            }
            if let Some(vocab) = vocab_of(g, *value) {
                if let Some(i) = ids.ids.iter().position(|&v| v < 0 || v as u64 >= vocab) {
                    return Err(InputError::OutOfRange {
                        input: input.clone(),
                        batch: i / ids.seq,
                        pos: i % ids.seq,
                        id: ids.ids[i],
                        vocab,
                    });
                }
            }
            let per: Vec<Vec<i64>> = ids
                .ids
                .chunks(*tokens as usize)
                .map(<[i64]>::to_vec)
                .collect();
            out.values.insert(input.clone(), per);
        }
        out.micro_batches = micro.map_or(1, |(m, _)| m);
        Ok(out)
    }

    /// Micro-batches the given ids make.
    pub fn micro_batches(&self) -> u32 {
        self.micro_batches
    }

    /// The global values of input `name` in micro-batch `micro`, when given.
    pub(crate) fn get(&self, name: &str, micro: u32) -> Option<&[i64]> {
        self.values
            .get(name)
            .and_then(|v| v.get(micro as usize))
            .map(Vec::as_slice)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn graph(seq: u64, mb: u64) -> Graph {
        let cfg = include_str!("../../../examples/hf/mixtral-8x7b.json");
        let sets: Vec<String> = [
            "num_hidden_layers=1",
            "hidden_size=32",
            "intermediate_size=16",
            "num_attention_heads=4",
            "num_key_value_heads=2",
            "vocab_size=50",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let opts = moe_ir::hf::ImportOptions {
            mesh: Some(moe_ir::Mesh::parse("ep=2", 8).unwrap()),
            seq,
            micro_batch: mb,
            dtype: moe_ir::DType::F32,
            gpus_per_node: 8,
        };
        moe_ir::hf::import(cfg, &sets, &opts).unwrap()
    }

    fn ids(batch: usize, seq: usize) -> TokenIds {
        TokenIds {
            batch,
            seq,
            ids: (0..(batch * seq) as i64).map(|i| i % 50).collect(),
        }
    }

    #[test]
    fn batches_become_micro_batches() {
        let g = graph(4, 1);
        let inp = Inputs::for_graph(&g, &[(None, ids(6, 4))]).unwrap();
        assert_eq!(inp.micro_batches(), 3);
        assert_eq!(
            inp.get("input_ids", 1).unwrap(),
            &[8, 9, 10, 11, 12, 13, 14, 15]
        );
    }

    #[test]
    fn bad_ids_are_named() {
        let g = graph(4, 1);
        let e = Inputs::for_graph(&g, &[(None, ids(3, 4))]).unwrap_err();
        assert!(e.to_string().contains("whole number"), "{e}");
        let e = Inputs::for_graph(&g, &[(None, ids(2, 5))]).unwrap_err();
        assert!(e.to_string().contains("--seq 5"), "{e}");
        let mut big = ids(2, 4);
        big.ids[5] = 50;
        let e = Inputs::for_graph(&g, &[(None, big)]).unwrap_err();
        assert!(e.to_string().contains("id 50 at [1, 1]"), "{e}");
        let e = Inputs::for_graph(&g, &[(Some("x".into()), ids(2, 4))]).unwrap_err();
        assert!(e.to_string().contains("`input_ids`"), "{e}");
        let e = Inputs::for_graph(&g, &[]).unwrap_err();
        assert!(matches!(e, InputError::Missing { .. }), "{e}");
    }
}
