//! Shared helpers of the snapshot tests: case options and loading inputs the way the CLI does.

#![allow(dead_code)]

use moe_ir::hf::{self, ImportOptions};
use moe_ir::{Graph, Mesh, DEFAULT_GPUS_PER_NODE};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Options of a case, read from the `.toml` file beside it (all optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseOptions {
    /// An HF config to import, relative to the workspace root (instead of the case's own input).
    pub config: Option<String>,
    /// `--mesh`.
    pub mesh: Option<String>,
    /// `--set key=value` overrides.
    #[serde(default)]
    pub set: Vec<String>,
    pub seq: Option<u64>,
    pub micro_batch: Option<u64>,
    /// `rewrite --tp`.
    pub tp: Option<u64>,
    /// `rewrite --cluster`, relative to the workspace root.
    pub cluster: Option<String>,
    /// `rewrite --pp`.
    pub pp: Option<u32>,
    /// `rewrite --pp-layout` (layers per virtual stage).
    pub pp_layout: Option<Vec<u32>>,
    /// `rewrite --schedule` (`gpipe`, `1f1b`, `interleaved`).
    pub schedule: Option<String>,
    /// `rewrite --chunks`.
    pub chunks: Option<u32>,
    /// `rewrite --recompute`.
    pub recompute: Option<bool>,
    /// `rewrite --micro-batches`.
    pub micro_batches: Option<u32>,
    /// Also print the output: `text` or `dot`.
    pub print: Option<String>,
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("snapshots/ is in the workspace")
        .to_path_buf()
}

/// Reads the options beside `case` (`x.json` -> `x.toml`, or `case` itself when it is a `.toml`).
pub fn options(case: &Path) -> CaseOptions {
    let p = case.with_extension("toml");
    match std::fs::read_to_string(&p) {
        Ok(t) => toml::from_str(&t).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        Err(_) => CaseOptions::default(),
    }
}

impl CaseOptions {
    pub fn import_options(&self) -> ImportOptions {
        let d = ImportOptions::default();
        ImportOptions {
            mesh: self
                .mesh
                .as_ref()
                .map(|m| Mesh::parse(m, DEFAULT_GPUS_PER_NODE).expect("case mesh parses")),
            seq: self.seq.unwrap_or(d.seq),
            micro_batch: self.micro_batch.unwrap_or(d.micro_batch),
            ..d
        }
    }
}

/// Loads `text` as the CLI does: HF configs are imported with `opts`, anything else is model.json.
/// Errors come back as their messages.
pub fn load(text: &str, opts: &CaseOptions) -> Result<Graph, String> {
    let is_hf =
        serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| hf::looks_like_hf_config(&v));
    if is_hf {
        hf::import(text, &opts.set, &opts.import_options()).map_err(|e| e.to_string())
    } else {
        moe_ir::json::from_json(text).map_err(|e| e.to_string())
    }
}

/// The case's cluster (the default one when it names none).
pub fn cluster(opts: &CaseOptions) -> moe_passes::cost::Cluster {
    match &opts.cluster {
        Some(p) => {
            let text = std::fs::read_to_string(root().join(p)).expect("cluster file readable");
            moe_passes::cost::Cluster::from_toml(&text).unwrap_or_else(|e| panic!("{p}: {e}"))
        }
        None => moe_passes::cost::Cluster::default(),
    }
}

/// `rewrite --tp` of a case: the graph remapped onto the case's tensor-parallel group (a clone
/// when the case gives no `tp`).
pub fn remap(g: &Graph, opts: &CaseOptions) -> Graph {
    match opts.tp {
        Some(tp) => moe_passes::TensorParallel {
            tp,
            gpus_per_node: cluster(opts).gpus_per_node,
        }
        .remap(g)
        .expect("remap succeeds"),
        None => g.clone(),
    }
}

/// Snapshot settings: snapshots beside the test files, no input-path metadata (keeps them stable).
pub fn settings() -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_prepend_module_to_snapshot(false);
    s.set_omit_expression(true);
    s
}

/// The canonical text of `g`, after checking that it reads back into an equal graph that prints
/// the same bytes (every snapshot case's graphs round-trip through the text form).
pub fn text(g: &Graph) -> String {
    let text = moe_ir::print::to_text(g);
    let back = moe_ir::text::from_text(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        moe_ir::print::to_text(&back),
        text,
        "print -> parse -> print"
    );
    assert!(
        back == *g,
        "the text of `{}` reads back as a different graph",
        g.name
    );
    text
}
