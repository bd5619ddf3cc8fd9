//! Loading a model from text: a `model.json` graph, the canonical text form, or a Hugging Face
//! config (imported).

use clap::{Args as ClapArgs, ValueEnum};
use miette::{miette, Diagnostic, NamedSource, Result, SourceSpan};
use moe_ir::hf::{self, ImportOptions, ModelSpec};
use moe_ir::json::JsonError;
use moe_ir::text::TextError;
use moe_ir::{DType, Graph, Mesh, DEFAULT_GPUS_PER_NODE};
use thiserror::Error;

/// Options that shape an import (shared by every command that accepts an HF config).
#[derive(Debug, Clone, ClapArgs)]
pub struct ImportArgs {
    /// Device mesh, outermost axis first: `axis=size[:intra|:inter],...` with axes `dp` and `ep`.
    /// Default: ep = the largest of 8, 4, 2, 1 that divides the number of experts.
    #[arg(long, value_name = "SPEC")]
    pub mesh: Option<String>,
    /// Override a config key before import (repeatable): `--set num_hidden_layers=2`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 4096)]
    pub seq: u64,
    /// Sequences per rank in one micro-batch.
    #[arg(long, default_value_t = 1)]
    pub micro_batch: u64,
    /// Parameter and activation dtype.
    #[arg(long, value_enum, default_value_t = DTypeArg::Bf16)]
    pub dtype: DTypeArg,
    /// GPUs per node, for placing mesh axes inside or across nodes.
    #[arg(long, default_value_t = DEFAULT_GPUS_PER_NODE)]
    pub gpus_per_node: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DTypeArg {
    F32,
    Bf16,
    F16,
}

impl ImportArgs {
    pub fn options(&self) -> Result<ImportOptions> {
        let mesh = match &self.mesh {
            Some(s) => {
                Some(Mesh::parse(s, self.gpus_per_node).map_err(|e| miette!("--mesh: {e}"))?)
            }
            None => None,
        };
        let dtype = match self.dtype {
            DTypeArg::F32 => DType::F32,
            DTypeArg::Bf16 => DType::Bf16,
            DTypeArg::F16 => DType::F16,
        };
        Ok(ImportOptions {
            mesh,
            seq: self.seq,
            micro_batch: self.micro_batch,
            dtype,
            gpus_per_node: self.gpus_per_node,
        })
    }
}

/// An input error shown with the offending line and a caret under the place (model.json and
/// text-form errors alike).
#[derive(Debug, Error, Diagnostic)]
#[error("{name}: {inner}")]
struct Located {
    name: String,
    inner: Box<dyn std::error::Error + Send + Sync>,
    #[source_code]
    src: NamedSource<String>,
    #[label("here")]
    at: Option<SourceSpan>,
}

fn located(
    name: &str,
    text: &str,
    inner: impl std::error::Error + Send + Sync + 'static,
    at: Option<usize>,
) -> miette::Report {
    Located {
        name: name.to_string(),
        inner: Box::new(inner),
        src: NamedSource::new(name, text.to_string()),
        at: at.map(|o| SourceSpan::from((o, 0))),
    }
    .into()
}

/// The byte offset where 1-based `line` starts.
fn line_start(text: &str, line: usize) -> usize {
    text.split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum()
}

/// Turns a JSON error into a diagnostic that shows where it is (serde's column counts bytes).
pub fn json_error(name: &str, text: &str, e: JsonError) -> miette::Report {
    let at = e.line_col.and_then(|(l, c)| {
        let off = line_start(text, l) + c.saturating_sub(1);
        (off <= text.len()).then_some(off)
    });
    located(name, text, e, at)
}

/// Text that is not JSON at all, shown at the place where it stops being JSON.
#[derive(Debug, Error)]
#[error("not valid JSON (a model.json or a Hugging Face config.json): {why}")]
struct NotJson {
    why: String,
}

fn not_json(name: &str, text: &str, e: &serde_json::Error) -> miette::Report {
    let (l, c) = (e.line(), e.column());
    let why = match e.to_string().rfind(" at line ") {
        Some(i) => format!("{} (line {l}, column {c})", &e.to_string()[..i]),
        None => e.to_string(),
    };
    let off = line_start(text, l) + c.saturating_sub(1);
    located(
        name,
        text,
        NotJson { why },
        (off <= text.len()).then_some(off),
    )
}

/// Turns a text-form error into a diagnostic that shows where it is (its column counts
/// characters).
pub fn text_error(name: &str, text: &str, e: TextError) -> miette::Report {
    let start = line_start(text, e.line);
    let at = text.get(start..).map(|rest| {
        start
            + rest
                .char_indices()
                .nth(e.column.saturating_sub(1))
                .map_or(rest.len(), |(i, _)| i)
    });
    located(name, text, e, at)
}

/// Whether `text` is the canonical text form: its first line that is not blank or a `#` comment
/// starts with `graph "`.
pub fn is_text_form(text: &str) -> bool {
    text.lines()
        .map(str::trim_start)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .is_some_and(|l| l.starts_with("graph \""))
}

/// The spec of HF config `config` (named `name`), after `--set`s; warns about every key the
/// importer did not read that may change what the model computes.
pub fn spec_of(name: &str, mut config: serde_json::Value, sets: &[String]) -> Result<ModelSpec> {
    for s in sets {
        hf::apply_set(&mut config, s).map_err(|e| miette!("{name}: {e}"))?;
    }
    let (spec, ignored) = hf::parse_spec_reporting(&config).map_err(|e| miette!("{name}: {e}"))?;
    for i in ignored.iter().filter(|i| i.unknown) {
        tracing::warn!(
            "{name}: config key `{}` is not modelled and may change what the model computes",
            i.key
        );
    }
    Ok(spec)
}

/// Loads `text` (named `name` in messages): an HF config is imported with `import`, the text form
/// is parsed, anything else is read as model.json.
pub fn load(name: &str, text: &str, import: &ImportArgs) -> Result<Graph> {
    let text_form = is_text_form(text);
    // An HF config is recognised by its `model_type` key and lack of `format`.
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) if hf::looks_like_hf_config(&v) => {
            let opts = import.options()?;
            let spec = spec_of(name, v, &import.sets)?;
            return hf::lower(&spec, &opts).map_err(|e| miette!("{name}: {e}"));
        }
        Ok(_) => {}
        // Neither a config nor a model.json can be read from broken JSON: say so, where it
        // breaks, rather than what a model.json reader makes of the first keys.
        Err(e) if !text_form => return Err(not_json(name, text, &e)),
        Err(_) => {}
    }
    if !import.sets.is_empty() {
        let what = if text_form { "text-form" } else { "model.json" };
        return Err(miette!(
            "{name}: --set applies to Hugging Face configs, and this is a {what} graph"
        ));
    }
    if text_form {
        return moe_ir::text::from_text(text).map_err(|e| text_error(name, text, e));
    }
    moe_ir::json::from_json(text).map_err(|e| json_error(name, text, e))
}

/// Reads a cost profile (`--profile FILE`): the rates the cost model prices op classes with.
pub fn cost_profile(path: &std::path::Path) -> Result<moe_passes::cost::Profile> {
    let name = path.to_string_lossy();
    let text = crate::io::read_input(&name)?;
    moe_passes::cost::Profile::from_toml(&text).map_err(|e| miette!("{name}: {e}"))
}
