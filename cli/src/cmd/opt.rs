//! `moe-opt opt MODEL --passes LIST [--cluster FILE] [--print-after-all] [-o OUT]`: runs a named
//! list of passes (`remap(tp=8),dispatch,partition(pp=4),schedule(1f1b)`, see
//! `moe_passes::registry`), validating after each, and writes the result (text by default).

use super::{render, Format};
use crate::io::{read_input, write_output};
use crate::load::{load, ImportArgs};
use miette::{miette, Result};
use moe_passes::cost::Cluster;
use moe_passes::registry::{self, PassContext};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// model.json, text form or Hugging Face config.json (`-` for stdin).
    model: String,
    /// Passes to run, in order: dead-code, remap(tp=T), dispatch[(rules=a+b)], partition(pp=P[, layout=..,
    /// micro_batches=M, recompute=true]), schedule(gpipe|1f1b|interleaved[, chunks=C]).
    #[arg(long, value_name = "LIST")]
    passes: String,
    /// Cluster description (TOML) the cost model prices. Default: one node of 8 H200s.
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
    /// Print the text form of the graph after every pass (to stderr).
    #[arg(long)]
    print_after_all: bool,
    #[command(flatten)]
    import: ImportArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Output file (written atomically); stdout when absent or `-`.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let steps = registry::parse(&a.passes).map_err(|e| miette!("--passes `{}`: {e}", a.passes))?;
    let cluster = match &a.cluster {
        Some(p) => {
            let text = read_input(&p.to_string_lossy())?;
            Cluster::from_toml(&text).map_err(|e| miette!("{}: {e}", p.display()))?
        }
        None => Cluster::default(),
    };
    let ctx = PassContext {
        gpus_per_node: a.cluster.is_none().then_some(a.import.gpus_per_node),
        cluster,
        ..PassContext::default()
    };
    let text = read_input(&a.model)?;
    let g = load(&a.model, &text, &a.import)?;
    let print = a.print_after_all;
    let (out, _) = registry::pipeline(&steps, &ctx)
        .run_observed(g, |s, g| {
            if print {
                eprintln!(
                    "# after {} ({} -> {} nodes)",
                    s.pass, s.nodes_before, s.nodes_after
                );
                eprint!("{}", moe_ir::print::to_text(g));
            }
        })
        .map_err(|e| miette!("{}: {e}", a.model))?;
    write_output(a.output.as_deref(), &render(&out, a.format))
}
