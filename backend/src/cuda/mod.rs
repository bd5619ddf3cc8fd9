//! The CUDA path: cuBLASLt GEMMs, NVRTC-compiled gather / combine / routing kernels and NCCL
//! collectives, all on burn-cuda's own device buffers (feature `cuda`).
//!
//! - [`device`]: one GPU (primary context shared with burn-cuda, the path's stream) and the
//!   addresses of burn buffers ([`device::Buf`]);
//! - [`gemm`]: bf16 GEMMs through cuBLASLt (fused GELU), grouped expert GEMMs, the cuBLAS
//!   reference;
//! - [`kernels`]: the `.cu` source and its launches (row gather, top-k combine, routing sort);
//! - [`nccl`]: all_reduce, all_gather, reduce_scatter and grouped send/recv over W GPUs;
//! - [`bench`]: `moe-opt bench --backend cuda`, the layer benchmark and the micro checks;
//! - `exec`, `one_gpu`, `collectives`, `layout`: `run --backend cuda --gpus W`, the generic executor on
//!   burn-cuda with every rank on GPU 0 (W = 1) or rank r on GPU r and NCCL collectives.
//!
//! Ordering with burn is by synchronisation (see [`device`]); inside this path everything is
//! stream-ordered on one stream per GPU.

// FFI to cuBLAS, NCCL and the driver needs `unsafe`; each block states its precondition.
#![allow(unsafe_code)]

pub(crate) mod attention;
pub mod bench;
pub(crate) mod blas;
pub(crate) mod buffer;
pub(crate) mod collectives;
pub(crate) mod compute;
pub mod device;
pub mod error;
pub(crate) mod exec;
pub mod gemm;
pub mod kernels;
pub(crate) mod layout;
pub mod libs;
pub mod nccl;
pub(crate) mod one_gpu;
pub(crate) mod ops;

pub use error::{CudaError, Result};
