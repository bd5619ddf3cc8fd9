//! # moe-backend: executing moe-opt graphs on burn
//!
//! A validated [`moe_ir::Graph`] is an SPMD program: every rank of its mesh runs it on its local
//! blocks. [`run`] executes one with every rank simulated in this process on the CPU
//! (burn-ndarray), collectives exact and in-process, or with feature `cuda` on GPUs through
//! burn-cuda ([`Device::Cuda`]); [`verify`] runs two programs on the same weights and inputs and
//! compares them; [`cross_check`] runs one program on two devices or precisions. Weights are [`Weights::Seeded`] (a weight's full tensor
//! depends only on the seed, its name and its global shape; each rank holds its slice) or read
//! from a safetensors [`Checkpoint`].
//!
//! Computation is in f32 (or f64; bf16 on CUDA) whatever the declared dtype. Routing decisions are exact and
//! deterministic: computed on the host, ties to the lower expert index.
//!
//! This is the only crate that depends on burn; burn types never appear in its public API.
//!
//! ```
//! use moe_backend::{run, RunOptions, Weights};
//! let g = moe_ir::json::from_json(include_str!("../../examples/moe-layer.json")).unwrap();
//! let out = run(&g, &Weights::Seeded, &RunOptions::default()).unwrap();
//! assert_eq!(out.outputs.len(), g.outputs.len());
//! ```

mod collective;
mod crosscheck;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
mod error;
mod exec;
mod flops;
pub mod inputs;
pub mod memory;
mod rank;
mod run;
#[cfg(test)]
mod testing;
mod value;
mod verify;
mod weights;

pub use crosscheck::{cross_check, CrossCheck, CrossCheckOptions, OutputAgreement};
pub use error::{ExecError, SplitError, WeightError};
pub use exec::StepRun;
pub use inputs::{InputError, Inputs, TokenIds};
pub use memory::{estimate as estimate_memory, MemoryEstimate};
pub use run::{
    run, run_with, useful_flops, useful_flops_by_op, Device, HostTensor, Precision, RunOptions,
    RunReport,
};
pub use verify::{
    diff, verify, verify_with, Diff, Incomparable, NodeDiff, OutputCheck, Verdict, VerifyOptions,
};
pub use weights::{Checkpoint, Weights};
