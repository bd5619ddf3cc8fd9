//! Printers: the canonical text form (what snapshots use) and Graphviz DOT.
//!
//! Both are deterministic: node numbers are arena indices, attributes print in declaration order.

mod dot;
mod text;

pub use dot::to_dot;
pub use text::{op_label, to_text};
