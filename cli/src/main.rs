//! `moe-opt`: the command line of the moe-opt toolkit.
//!
//! Only this crate reads files, writes files and chooses exit codes: 0 success, 1 invalid input
//! or a failed check, 2 usage errors (clap).

mod cases;
mod cmd;
mod exec;
mod input;
mod io;
mod load;
mod prompt;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Rewrites expert-parallel MoE model graphs into the Pipeline-MoE form.
#[derive(Debug, Parser)]
#[command(name = "moe-opt", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log pass statistics and timings to stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the standard expert-parallel graph of a Hugging Face config.json.
    Import(cmd::import::Args),
    /// Print facts about a graph: layers, MoE layers, parameters, ops, collectives, mesh, stages.
    Inspect(cmd::inspect::Args),
    /// Rewrite a model into the cheapest dispatch form (e-graph + cost model), optionally
    /// remapped onto a tensor-parallel group (`--tp`): the PPMoE layout.
    Rewrite(cmd::rewrite::Args),
    /// Run a list of passes (`remap(tp=8),dispatch,partition(pp=4),schedule(1f1b)`) over a
    /// model, validating after each; writes the text form by default.
    Opt(cmd::opt::Args),
    /// Enumerate layouts of a model on a cluster (tp, ep, pp, dp, dispatch form, micro-batches),
    /// prune by divisibility and GPU memory, rank by predicted step time and tokens/s.
    Plan(cmd::plan::Args),
    /// Execute a model (every rank of its mesh) and print a checksum per output and the time.
    Run(cmd::run::Args),
    /// Check a graph (or config); exit 1 with the first problem.
    Validate(cmd::validate::Args),
    /// Run two programs on the same weights and inputs and compare their outputs; exit 1 when
    /// they differ beyond --rtol, naming the first differing node they share.
    Verify(cmd::verify::Args),
    /// Print the JSON Schema of model.json.
    Schema(cmd::schema::Args),
    /// Time compiled graphs through `run`'s executor: one MoE layer as the dense backbone, the
    /// expert-parallel all-to-all form and the form the passes make (PPMoE), or a whole model
    /// (`--model`). Needs a build with `--features cuda` for `--backend cuda`.
    Bench(cmd::bench::Args),
    /// Measure the cost model's rates (GEMM, grouped GEMM, attention, memory, gather, combine,
    /// collectives) with small graphs run through the executor; write a cost profile (TOML).
    Calibrate(cmd::calibrate::Args),
    /// Run small models on CUDA and on the CPU with the same weights and inputs; exit 1 when an
    /// output differs beyond the precision's tolerance. Needs a build with `--features cuda`.
    CheckGpu(cmd::check_gpu::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MOE_OPT_LOG")
                .unwrap_or_else(|_| filter.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Import(a) => cmd::import::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Rewrite(a) => cmd::rewrite::run(a),
        Command::Opt(a) => cmd::opt::run(a),
        Command::Plan(a) => cmd::plan::run(a),
        Command::Run(a) => cmd::run::run(a),
        Command::Validate(a) => cmd::validate::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Schema(a) => cmd::schema::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Calibrate(a) => cmd::calibrate::run(a),
        Command::CheckGpu(a) => cmd::check_gpu::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(report) => {
            eprintln!("{report:?}");
            ExitCode::from(1)
        }
    }
}
