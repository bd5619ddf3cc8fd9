//! Reading the canonical text form back (the form [`crate::print::to_text`] writes), so that a
//! program can be written, diffed and fed to passes as text. `docs/FORMAT.md` has the grammar.
//!
//! ```
//! let text = "graph \"tiny\" (moe-ir/1)
//! mesh tp=2:intra
//!
//! layer 0:
//!   %0 = input : f32[4, 8]  ; x
//!   %1 = weight : f32[8, 6@tp]  ; w
//!   %2 = matmul %0, %1 : f32[4, 6@tp]  ; y
//!
//! outputs:
//!   y = %2
//! ";
//! let g = moe_ir::text::from_text(text).unwrap();
//! assert_eq!(moe_ir::print::to_text(&g), text);
//! ```
//!
//! Everything the printer writes reads back into an equal [`crate::Graph`]: name, mesh, `meta`,
//! the pipeline spec, every node's op, inputs, types, scope, stage and name, and the outputs.
//! Hand-written programs may leave out what can be inferred: a non-leaf node's types (checked
//! when given) and node names (`_<n>` for `%n`). Lines starting with `#` are comments.

pub(crate) mod attr;
mod cursor;
mod parse;

pub use parse::{from_text, parse_op};

use crate::json::FORMAT;
use crate::{BuildError, MeshError, ValidationError};
use thiserror::Error;

/// A text program that cannot be read: where (1-based line and column, in characters) and what.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("line {line}, column {column}: {kind}")]
pub struct TextError {
    pub line: usize,
    pub column: usize,
    pub kind: TextErrorKind,
}

/// What is wrong with a text program.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TextErrorKind {
    #[error("expected {expected}, found {found}")]
    Expected {
        expected: &'static str,
        found: String,
    },
    #[error("{what} `{text}` does not fit in its integer type")]
    TooLarge { what: &'static str, text: String },
    #[error("unterminated string (a `\"` is missing)")]
    UnterminatedString,
    #[error("malformed string literal (an escape the format does not write)")]
    BadString,
    #[error("unknown dtype `{0}` (expected f32, bf16, f16 or i32)")]
    UnknownDType(String),
    #[error("attribute `{0}` is given twice")]
    DuplicateAttr(String),
    #[error("format is `{0}`, this tool reads `{FORMAT}`")]
    Format(String),
    #[error("mesh: {0}")]
    Mesh(MeshError),
    #[error("`{key}` repeats or comes after the first section; the header is `graph`, `mesh`, then optional `meta` and `pipeline`")]
    HeaderOrder { key: &'static str },
    #[error("`pipeline` does not describe a pipeline: {detail}")]
    Pipeline { detail: String },
    #[error("unknown op `{0}` (see `moe-opt schema` or docs/FORMAT.md for the op names)")]
    UnknownOp(String),
    #[error("attributes do not fit op `{op}`: {detail}")]
    Attrs { op: &'static str, detail: String },
    #[error("`{op}` declares its value: give exactly one type after `:`, e.g. `{op} : f32[4, 8]`")]
    LeafType { op: &'static str },
    #[error("node `%{0}` is defined twice")]
    DuplicateId(u64),
    #[error("`%{0}` is not defined above (a node's inputs come before it)")]
    UnknownValue(u64),
    #[error("a node before any section header (`embed:`, `layer N:`, `head:`)")]
    NoSection,
    #[error("a node after `outputs:` (outputs are `name = %n` lines)")]
    NodeInOutputs,
    #[error("{0}")]
    Build(BuildError),
    #[error("declared output types [{declared}] differ from the inferred [{inferred}]")]
    TypeMismatch { declared: String, inferred: String },
    #[error("{0}")]
    Invalid(ValidationError),
    #[error("the text has no `graph \"name\" (moe-ir/1)` line")]
    Empty,
}

#[cfg(test)]
mod tests;
