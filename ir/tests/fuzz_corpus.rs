//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the readers on stable
//! Rust, with the properties the cargo-fuzz targets check: every input gives a value or an error,
//! never a panic, and what is read writes back and reads back equal. CI needs no nightly for it.

use moe_ir::hf::{import, ImportOptions};
use std::path::PathBuf;

/// The inputs of one corpus (at least `min` of them, so a corpus that moved fails loudly).
fn corpus(target: &str, min: usize) -> Vec<(PathBuf, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut out: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("readable entry").path())
        .filter_map(|p| {
            let bytes = std::fs::read(&p).expect("readable file");
            // The targets skip bytes that are not UTF-8 likewise.
            String::from_utf8(bytes).ok().map(|s| (p, s))
        })
        .collect();
    out.sort();
    assert!(out.len() >= min, "{}: {} inputs", dir.display(), out.len());
    out
}

#[test]
fn json_corpus_reads_or_refuses() {
    let (mut ok, mut refused) = (0, 0);
    for (path, text) in corpus("json", 20) {
        match moe_ir::json::from_json(&text) {
            Ok(g) => {
                let again =
                    moe_ir::json::from_json(&moe_ir::json::to_json(&g)).unwrap_or_else(|e| {
                        panic!("{}: written JSON does not read back: {e}", path.display())
                    });
                assert_eq!(g, again, "{}", path.display());
                let _ = moe_ir::Summary::of(&g).to_string();
                ok += 1;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty(), "{}", path.display());
                refused += 1;
            }
        }
    }
    assert!(ok > 0 && refused > 0, "{ok} read, {refused} refused");
}

#[test]
fn text_corpus_parses_or_refuses() {
    let (mut ok, mut refused) = (0, 0);
    for (path, text) in corpus("text", 10) {
        match moe_ir::text::from_text(&text) {
            Ok(g) => {
                let printed = moe_ir::print::to_text(&g);
                let again = moe_ir::text::from_text(&printed).unwrap_or_else(|e| {
                    panic!("{}: printed text does not parse back: {e}", path.display())
                });
                assert_eq!(
                    moe_ir::print::to_text(&again),
                    printed,
                    "{}",
                    path.display()
                );
                ok += 1;
            }
            Err(e) => {
                assert!(e.line >= 1, "{}: {e}", path.display());
                refused += 1;
            }
        }
    }
    assert!(ok > 0 && refused > 0, "{ok} parsed, {refused} refused");
}

#[test]
fn hf_config_corpus_imports_or_refuses() {
    let opts = ImportOptions {
        seq: 16,
        ..ImportOptions::default()
    };
    let (mut ok, mut refused) = (0, 0);
    for (path, text) in corpus("hf_config", 10) {
        match import(&text, &[], &opts) {
            Ok(g) => {
                moe_ir::validate(&g)
                    .unwrap_or_else(|e| panic!("{}: imported graph invalid: {e}", path.display()));
                ok += 1;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty(), "{}", path.display());
                refused += 1;
            }
        }
    }
    assert!(ok > 0 && refused > 0, "{ok} imported, {refused} refused");
}
