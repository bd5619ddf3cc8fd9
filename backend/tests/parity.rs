//! Numerical parity with Hugging Face transformers. Every folder of `tests/parity/` (made by
//! `scripts/make_parity_fixtures.py`, which documents how to refresh them) holds a tiny random
//! model of one example config as transformers 5 saved it, token ids and transformers' f32
//! logits. Each is imported from its saved `config.json`, loaded from the saved checkpoint (and
//! from transformers 5's fused expert layout where it differs), run on the CPU in f32 on the same
//! ids, and compared: max |moe-opt - transformers| / max |transformers| over all logits must be
//! within [`RTOL`].
//!
//! [`GAPS`] lists the fixtures that do not match yet, each with the error measured when it was
//! listed: the test fails when one gets worse than that, and when one matches (then take it off
//! the list).

#![allow(clippy::unwrap_used)]

use moe_backend::inputs::parse::{self, ArrayData};
use moe_backend::{run_with, Checkpoint, Inputs, RunOptions, TokenIds, Weights};
use moe_ir::hf::{self, ImportOptions};
use moe_ir::{DType, Mesh};
use std::path::{Path, PathBuf};

/// The relative error every family must reach.
const RTOL: f64 = 1e-4;

/// Fixtures that do not match transformers yet: (fixture, error measured, why).
const GAPS: &[(&str, f64, &str)] = &[];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/parity")
}

fn ids(path: &Path) -> TokenIds {
    let bytes = std::fs::read(path).unwrap();
    let what = path.display().to_string();
    parse::ids_of(parse::npy(&bytes, &what).unwrap(), &what).unwrap()
}

/// The fixture's logits, `[batch, seq, vocab]` flattened.
fn reference(fixture: &Path) -> Vec<f64> {
    let bytes = std::fs::read(fixture.join("logits.npy")).unwrap();
    match parse::npy(&bytes, "logits.npy").unwrap().data {
        ArrayData::Float(v) => v,
        ArrayData::Int(_) => panic!("logits are floats"),
    }
}

/// The error of moe-opt's logits for `fixture` with the weights of `checkpoint` (a file in it).
fn error(fixture: &Path, checkpoint: &str) -> Result<f64, String> {
    let x = ids(&fixture.join("input_ids.npy"));
    let config = std::fs::read_to_string(fixture.join("config.json")).unwrap();
    let opts = ImportOptions {
        mesh: Some(Mesh::parse("ep=2", 8).unwrap()),
        seq: x.seq as u64,
        micro_batch: 1,
        dtype: DType::F32,
        gpus_per_node: 8,
    };
    let g = hf::import(&config, &[], &opts).map_err(|e| format!("import: {e}"))?;
    let mut given = vec![(None, x)];
    let dec = fixture.join("decoder_input_ids.npy");
    if dec.exists() {
        given = vec![
            (Some("encoder_input_ids".to_string()), given.remove(0).1),
            (Some("decoder_input_ids".to_string()), ids(&dec)),
        ];
    }
    let inputs = Inputs::for_graph(&g, &given).map_err(|e| e.to_string())?;
    let mut c = Checkpoint::new();
    c.add_file(checkpoint, std::fs::read(fixture.join(checkpoint)).unwrap())
        .unwrap();
    let r = run_with(
        &g,
        &Weights::Checkpoint(c),
        Some(&inputs),
        &[],
        &RunOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    let got = &r.outputs[0].1.data;
    let want = reference(fixture);
    assert_eq!(got.len(), want.len(), "{}: logits size", fixture.display());
    let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(&want)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
    Ok(diff / scale)
}

#[test]
fn every_family_matches_transformers() {
    let mut fixtures: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("config.json").exists())
        .collect();
    fixtures.sort();
    assert_eq!(fixtures.len(), 16, "one fixture per example config");
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for f in &fixtures {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let gap = GAPS.iter().find(|(n, _, _)| *n == name);
        for ckpt in ["model.safetensors", "fused.safetensors"] {
            if !f.join(ckpt).exists() {
                continue;
            }
            let e = match error(f, ckpt) {
                Ok(e) => e,
                Err(why) => {
                    failures.push(format!("{name} ({ckpt}): {why}"));
                    continue;
                }
            };
            report.push(format!("{name} ({ckpt}): {e:.2e}"));
            match gap {
                None if e > RTOL => failures.push(format!("{name} ({ckpt}): {e:.3e} > {RTOL:e}")),
                Some((_, was, why)) if e > was * 1.01 => failures.push(format!(
                    "{name} ({ckpt}): {e:.3e}, worse than the {was:.3e} of its known gap ({why})"
                )),
                Some((_, _, _)) if e <= RTOL => failures.push(format!(
                    "{name} ({ckpt}): {e:.3e} now matches: take it off GAPS"
                )),
                _ => {}
            }
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_gap_list_names_fixtures() {
    for (name, _, _) in GAPS {
        assert!(dir().join(name).join("config.json").exists(), "{name}");
    }
}
