//! `moe-opt import CONFIG.json`.

use super::{render, Format};
use crate::io::{read_input, write_output};
use crate::load::ImportArgs;
use miette::{miette, Result};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Hugging Face config.json (`-` for stdin).
    config: String,
    #[command(flatten)]
    import: ImportArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// Output file (written atomically); stdout when absent or `-`.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let text = read_input(&a.config)?;
    if serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| v.get("format").is_some()) {
        return Err(miette!(
            "{}: this is a model.json graph already; `import` reads Hugging Face config.json files",
            a.config
        ));
    }
    let opts = a.import.options()?;
    let config: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| miette!("{}: config is not valid JSON: {e}", a.config))?;
    let spec = crate::load::spec_of(&a.config, config, &a.import.sets)?;
    let g = moe_ir::hf::lower(&spec, &opts).map_err(|e| miette!("{}: {e}", a.config))?;
    write_output(a.output.as_deref(), &render(&g, a.format))
}
