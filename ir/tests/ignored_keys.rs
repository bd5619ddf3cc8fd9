//! Every key of the bundled configs (published, and as transformers 5 saved the parity fixtures)
//! is read by its family's parser or known not to change the function, except the ones listed
//! here with why.

#![allow(clippy::unwrap_used)]

use std::path::Path;

/// (config file, key): ignored keys that may change the function, and why they are left out.
const KNOWN: &[(&str, &str, &str)] = &[
    (
        "examples/hf/deepseek-v3.json",
        "quantization_config",
        QUANTIZED,
    ),
    (
        "examples/hf/gpt-oss-120b.json",
        "quantization_config",
        QUANTIZED,
    ),
    (
        "examples/hf/gpt-oss-20b.json",
        "quantization_config",
        QUANTIZED,
    ),
];

const QUANTIZED: &str = "the published checkpoint's storage format (fp8, mxfp4); moe-opt reads \
                         float tensors and refuses others by name at load";

fn unknown(path: &Path) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (_, ignored) = moe_ir::hf::parse_spec_reporting(&v).unwrap();
    ignored
        .into_iter()
        .filter(|i| i.unknown)
        .map(|i| i.key)
        .collect()
}

#[test]
fn bundled_configs_have_no_unknown_keys() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("examples/hf"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    for e in std::fs::read_dir(root.join("backend/tests/parity")).unwrap() {
        let p = e.unwrap().path().join("config.json");
        if p.exists() {
            files.push(p);
        }
    }
    files.sort();
    let mut bad = Vec::new();
    for f in &files {
        let name = f.strip_prefix(&root).unwrap().display().to_string();
        for k in unknown(f) {
            if !KNOWN.iter().any(|(n, key, _)| *n == name && *key == k) {
                bad.push(format!("{name}: {k}"));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
