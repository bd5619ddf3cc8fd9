//! `moe-opt validate MODEL`.

use crate::io::read_input;
use crate::load::{load, ImportArgs};
use miette::Result;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// model.json or Hugging Face config.json (`-` for stdin).
    model: String,
    #[command(flatten)]
    import: ImportArgs,
}

pub fn run(a: Args) -> Result<()> {
    let text = read_input(&a.model)?;
    let g = load(&a.model, &text, &a.import)?;
    eprintln!("{}: valid ({} nodes, mesh {})", a.model, g.len(), g.mesh);
    Ok(())
}
