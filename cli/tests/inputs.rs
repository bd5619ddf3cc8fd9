//! `run` and `verify` on a user's token ids and checkpoint: a transformers-saved checkpoint
//! folder (whole or sharded with an index) gives transformers' logits in `-o`; bad inputs exit 1
//! naming the file and the tensor or field, and write nothing.

#![allow(clippy::unwrap_used)]

mod common;

use common::{moe_opt, root, stderr};
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

const FIXTURE: &str = "backend/tests/parity/mixtral-8x7b";

fn fixture() -> PathBuf {
    root().join(FIXTURE)
}

/// The fixture's logits, flattened.
fn reference() -> Vec<f32> {
    let bytes = std::fs::read(fixture().join("logits.npy")).unwrap();
    // A v1 .npy header of `<f4`: the data follows the header.
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn logits_of(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("logits").unwrap();
    let v = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (t.shape().to_vec(), v)
}

fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// A copy of the fixture's config in `dir` with the checkpoint tensors `keep` says to keep,
/// in `shards` files with an index when more than one.
fn checkpoint_copy(dir: &Path, shards: usize, keep: impl Fn(&str) -> bool) {
    std::fs::copy(fixture().join("config.json"), dir.join("config.json")).unwrap();
    let bytes = std::fs::read(fixture().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<&str> = st.names().into_iter().filter(|n| keep(n)).collect();
    names.sort();
    let per = names.len().div_ceil(shards);
    let mut map = serde_json::Map::new();
    for (i, chunk) in names.chunks(per).enumerate() {
        let file = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{shards:05}.safetensors", i + 1)
        };
        let views: Vec<(String, _)> = chunk
            .iter()
            .map(|n| (n.to_string(), st.tensor(n).unwrap()))
            .collect();
        std::fs::write(
            dir.join(&file),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
        for n in chunk {
            map.insert(n.to_string(), file.clone().into());
        }
    }
    if shards > 1 {
        let index = serde_json::json!({"metadata": {}, "weight_map": map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    }
}

fn ids_path() -> String {
    fixture().join("input_ids.npy").display().to_string()
}

#[test]
fn a_checkpoint_folder_gives_transformers_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("logits.safetensors");
    let o = moe_opt(
        &[
            "run",
            FIXTURE,
            "--input",
            &ids_path(),
            "-o",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("sequence 1: top-5 next tokens"), "{text}");
    let (shape, got) = logits_of(&out);
    assert_eq!(shape, [2, 8, 96]);
    assert!(rel_err(&got, &reference()) < 1e-4);
    // The same weights sharded over three files with an index.
    let sharded = tmp.path().join("sharded");
    std::fs::create_dir(&sharded).unwrap();
    checkpoint_copy(&sharded, 3, |_| true);
    let out2 = tmp.path().join("sharded.safetensors");
    let o = moe_opt(
        &[
            "run",
            sharded.to_str().unwrap(),
            "--input",
            &ids_path(),
            "-o",
            out2.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(logits_of(&out2).1, got);
    // verify: the config against itself on the same ids and weights.
    let cfg = fixture().join("config.json");
    let cfg = cfg.to_str().unwrap();
    let o = moe_opt(&["verify", FIXTURE, cfg, "--input", &ids_path()], None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// Runs `args` with `-o` into a fresh folder: exit 1, stderr holding every one of `needles`,
/// and no file written.
fn refused(args: &[&str], needles: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.safetensors");
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-o", out.to_str().unwrap()]);
    let o = moe_opt(&all, None);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
    for n in needles {
        assert!(e.contains(n), "{args:?}: `{n}` not in: {e}");
    }
    assert!(!e.contains("panicked"), "{e}");
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "{args:?} wrote a file"
    );
}

#[test]
fn bad_inputs_exit_1_naming_the_file_and_field_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    // Ids outside the vocabulary (96).
    let big = tmp.path().join("big.json");
    std::fs::write(&big, "[[1, 2, 3, 4, 5, 6, 7, 500]]").unwrap();
    refused(
        &["run", FIXTURE, "--input", big.to_str().unwrap()],
        &["big.json", "input_ids", "id 500 at [0, 7]", "0..96"],
    );
    // Ragged rows, and a batch that is not a whole number of micro-batches of the mesh.
    let ragged = tmp.path().join("ragged.json");
    std::fs::write(&ragged, "[[1, 2, 3], [4, 5]]").unwrap();
    refused(
        &["run", FIXTURE, "--input", ragged.to_str().unwrap()],
        &["ragged.json", "[1]"],
    );
    let three = tmp.path().join("three.json");
    std::fs::write(&three, "[[1, 2], [3, 4], [5, 6]]").unwrap();
    refused(
        &[
            "run",
            FIXTURE,
            "--mesh",
            "ep=2",
            "--input",
            three.to_str().unwrap(),
        ],
        &["three.json", "input_ids", "micro-batches"],
    );
    // A truncated checkpoint.
    let cut = tmp.path().join("cut");
    std::fs::create_dir(&cut).unwrap();
    checkpoint_copy(&cut, 1, |_| true);
    let file = cut.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    refused(
        &["run", cut.to_str().unwrap(), "--input", &ids_path()],
        &["model.safetensors", "truncated"],
    );
    // A missing expert tensor.
    let gone = tmp.path().join("gone");
    std::fs::create_dir(&gone).unwrap();
    checkpoint_copy(&gone, 1, |n| {
        !n.ends_with("layers.1.block_sparse_moe.experts.3.w1.weight")
    });
    refused(
        &["run", gone.to_str().unwrap(), "--input", &ids_path()],
        &["l1.moe.experts.gate_proj", "experts.3.w1.weight"],
    );
    // A model too big for this machine's memory: refused before anything is allocated.
    refused(
        &["run", "examples/hf/mixtral-8x7b.json", "--seq", "16"],
        &["would need about", "available", "--allow-over-memory"],
    );
}

#[test]
fn unknown_config_keys_are_named() {
    let cfg = fixture().join("config.json");
    let cfg = cfg.to_str().unwrap();
    let o = moe_opt(&["import", cfg, "--set", "frobnicate=3"], None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("`frobnicate` is not modelled"),
        "{}",
        stderr(&o)
    );
    let o = moe_opt(&["inspect", cfg, "--set", "frobnicate=3"], None);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("may change the function: frobnicate")
            && text.contains("inert (training, ids, bookkeeping): architectures"),
        "{text}"
    );
}

#[test]
fn a_prompt_is_tokenized_as_transformers_does() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (
        tmp.path().join("a.safetensors"),
        tmp.path().join("b.safetensors"),
    );
    // prompt.json: the prompt and the ids transformers' tokenizer gave (an object by input name).
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("prompt.json")).unwrap())
            .unwrap();
    let prompt = p["prompt"].as_str().unwrap();
    let o = moe_opt(
        &[
            "run",
            FIXTURE,
            "--prompt",
            prompt,
            "-o",
            a.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("sequence 0: top-5 next tokens") && text.contains('"'),
        "{text}"
    );
    let ids = fixture().join("prompt.json");
    let o = moe_opt(
        &[
            "run",
            FIXTURE,
            "--input",
            ids.to_str().unwrap(),
            "-o",
            b.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    // Without a tokenizer there is nothing to encode with.
    let o = moe_opt(
        &["run", "examples/hf/mixtral-8x7b.json", "--prompt", "hi"],
        None,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--tokenizer"), "{}", stderr(&o));
}
