//! One module per subcommand.

pub mod bench;
pub mod calibrate;
pub mod check_gpu;
pub mod fits;
pub mod import;
pub mod inspect;
pub mod opt;
pub mod plan;
pub mod rewrite;
pub mod run;
pub mod schema;
pub mod validate;
pub mod verify;

use clap::ValueEnum;
use moe_ir::Graph;

/// How a graph is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// model.json (moe-ir/1).
    Json,
    /// The canonical text form.
    Text,
    /// Graphviz DOT.
    Dot,
}

/// Renders `g` in `format`.
pub fn render(g: &Graph, format: Format) -> String {
    match format {
        Format::Json => moe_ir::json::to_json(g),
        Format::Text => moe_ir::print::to_text(g),
        Format::Dot => moe_ir::print::to_dot(g),
    }
}
