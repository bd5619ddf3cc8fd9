//! `moe-opt inspect MODEL`.

use crate::io::{read_input, write_output};
use crate::load::{load, ImportArgs};
use miette::{IntoDiagnostic, Result};
use moe_ir::Summary;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// model.json or Hugging Face config.json (`-` for stdin).
    model: String,
    /// Print JSON (stable keys: format, layers, moe_layers, nodes, params, ops, collectives, mesh, stages, ...).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    import: ImportArgs,
}

pub fn run(a: Args) -> Result<()> {
    let text = read_input(&a.model)?;
    let g = load(&a.model, &text, &a.import)?;
    let s = Summary::of(&g);
    let out = if a.json {
        let mut j = serde_json::to_string_pretty(&s).into_diagnostic()?;
        j.push('\n');
        j
    } else {
        s.to_string()
    };
    write_output(None, &out)
}
