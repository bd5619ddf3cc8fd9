//! Hugging Face `config.json` import: builds the standard expert-parallel graph of a published
//! MoE model.
//!
//! A family parser (one file per family under `families/`) reads the config's keys into a
//! [`ModelSpec`]; [`lower`] turns the spec into a graph. `--set key=value` overrides are applied
//! to the JSON first ([`apply_set`]), so small test models are published configs with a few keys changed.

mod config;
mod families;
pub mod ignored;
mod lower;
pub mod spec;

pub use config::Cfg;
pub use ignored::Ignored;
pub use lower::{default_mesh, lower};
pub use spec::{Family, ModelSpec};

use crate::{DType, Graph, Mesh, DEFAULT_GPUS_PER_NODE};
use serde_json::Value;
use thiserror::Error;

/// Why a config cannot be imported. Messages name the config key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ImportError {
    #[error("config is not valid JSON: {message} at line {line} column {column}")]
    Json {
        message: String,
        line: usize,
        column: usize,
    },
    #[error("unknown model_type `{found}`; supported: {supported}")]
    UnknownModelType { found: String, supported: String },
    #[error("config has no `model_type` key; supported model types: {0}")]
    NoModelType(String),
    #[error("config key `{key}` {why}")]
    Key { key: String, why: String },
    #[error("`--set {0}`: expected key=value")]
    BadSet(String),
    #[error("mesh: axis `{axis}`: import builds the expert-parallel form, whose mesh has `dp` and `ep` axes only (tensor and pipeline parallelism come from `rewrite --tp/--pp`)")]
    MeshAxis { axis: String },
    #[error("mesh: the mesh needs an `ep` axis (e.g. ep=8)")]
    NoEpAxis,
    #[error("mesh: ep={ep} does not divide the {experts} experts: choose an ep that divides them")]
    EpDoesNotDivide { ep: u32, experts: u64 },
    #[error("options: --micro-batch {micro_batch}: expert capacity (expert_capacity) is counted per sequence, and a graph counts it per rank's micro-batch: import with --micro-batch 1 (run sequences as micro-batches)")]
    CapacityPerSequence { micro_batch: u64 },
    #[error("options: --seq and --micro-batch must be positive")]
    NoTokens,
    #[error("options: --seq x --micro-batch x ranks is too many tokens (2^53 at most)")]
    TooManyTokens,
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("internal error while lowering (please report): {0}")]
    Internal(String),
    /// A size the config implies is beyond [`crate::limits`]: no real model reaches it.
    #[error("the config makes node `{node}` too large: {source}")]
    TooLarge {
        node: String,
        #[source]
        source: crate::limits::TooLarge,
    },
}

/// Options of an import.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportOptions {
    /// The mesh; `None` picks `ep` = the largest of 8, 4, 2, 1 dividing the experts.
    pub mesh: Option<Mesh>,
    /// Tokens per sequence.
    pub seq: u64,
    /// Sequences per rank per micro-batch.
    pub micro_batch: u64,
    /// Parameter and activation dtype.
    pub dtype: DType,
    /// Ranks per node, for the levels of a default mesh.
    pub gpus_per_node: u64,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            mesh: None,
            seq: 4096,
            micro_batch: 1,
            dtype: DType::Bf16,
            gpus_per_node: DEFAULT_GPUS_PER_NODE,
        }
    }
}

/// Applies one `key=value` override. The value is read as JSON when it parses (`2`, `true`,
/// `"silu"`, `[1,2]`), else as a string. A dotted key (`text_config.num_hidden_layers`) walks nested
/// objects; a plain key missing at the top level but present in `text_config` is set there.
pub fn apply_set(config: &mut Value, set: &str) -> Result<(), ImportError> {
    let (key, raw) = set
        .split_once('=')
        .ok_or_else(|| ImportError::BadSet(set.to_string()))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(ImportError::BadSet(set.to_string()));
    }
    let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
    let mut parts: Vec<&str> = key.split('.').collect();
    let root = config.as_object().ok_or_else(|| ImportError::Key {
        key: "(root)".into(),
        why: "a config must be a JSON object".into(),
    })?;
    if parts.len() == 1 && !root.contains_key(key) {
        if let Some(Value::Object(t)) = root.get("text_config") {
            if t.contains_key(key) {
                parts.insert(0, "text_config");
            }
        }
    }
    let last = parts.pop().expect("split yields one part");
    let mut cur = config;
    for (i, p) in parts.iter().enumerate() {
        cur = cur
            .as_object_mut()
            .and_then(|o| o.get_mut(*p))
            .filter(|v| v.is_object())
            .ok_or_else(|| ImportError::Key {
                key: parts[..=i].join("."),
                why: "is not an object to set keys in".into(),
            })?;
    }
    cur.as_object_mut()
        .expect("checked to be an object")
        .insert(last.to_string(), value);
    Ok(())
}

/// Reads a config into a [`ModelSpec`].
pub fn parse_spec(config: &Value) -> Result<ModelSpec, ImportError> {
    parse_spec_reporting(config).map(|(s, _)| s)
}

/// Reads a config into a [`ModelSpec`], with the keys the family's parser did not read (see
/// [`ignored`]).
pub fn parse_spec_reporting(config: &Value) -> Result<(ModelSpec, Vec<Ignored>), ImportError> {
    let seen = std::cell::RefCell::new(std::collections::BTreeSet::new());
    let spec = parse_tracked(Cfg::tracked(config, &seen)?)?;
    let seen = seen.into_inner();
    Ok((spec, ignored::ignored(config, &seen)))
}

fn parse_tracked(cfg: Cfg<'_>) -> Result<ModelSpec, ImportError> {
    let model_type = match cfg.opt_str("model_type")? {
        Some(t) => t,
        None => return Err(ImportError::NoModelType(Family::supported())),
    };
    let family =
        Family::from_model_type(model_type).ok_or_else(|| ImportError::UnknownModelType {
            found: model_type.to_string(),
            supported: Family::supported(),
        })?;
    let mut spec = families::parse(family, cfg)?;
    spec.family = family;
    if let Some(n) = cfg.opt_str("_name_or_path")?.filter(|n| !n.is_empty()) {
        spec.name = n.rsplit('/').next().unwrap_or(n).to_string();
    }
    families::check(&spec)?;
    Ok(spec)
}

/// Imports config text with overrides: parse, apply `--set`s, read the spec, lower.
pub fn import(text: &str, sets: &[String], opts: &ImportOptions) -> Result<Graph, ImportError> {
    let mut config: Value = serde_json::from_str(text).map_err(|e| ImportError::Json {
        message: {
            let m = e.to_string();
            m.rfind(" at line ")
                .map_or(m.clone(), |i| m[..i].to_string())
        },
        line: e.line(),
        column: e.column(),
    })?;
    for s in sets {
        apply_set(&mut config, s)?;
    }
    let spec = parse_spec(&config)?;
    lower(&spec, opts)
}

/// Whether JSON text looks like an HF config rather than a `model.json` (it has `model_type` and
/// no `format`).
pub fn looks_like_hf_config(v: &Value) -> bool {
    v.get("model_type").is_some() && v.get("format").is_none()
}
