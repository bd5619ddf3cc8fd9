//! `moe-opt schema`: the JSON Schema of model.json.

use crate::io::write_output;
use miette::Result;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output file (written atomically); stdout when absent or `-`.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    write_output(a.output.as_deref(), &moe_ir::json::schema())
}
