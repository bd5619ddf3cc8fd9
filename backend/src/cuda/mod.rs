//! The CUDA path (feature `cuda`), private to the backend: the compute seam's CUDA side and the
//! collectives, on burn-cuda's own buffers and stream.
//!
//! - [`compute`]: `Compute` for burn-cuda — the executor's hot ops (GEMMs, grouped expert FFN,
//!   router, ragged dispatch, combine, norms, gated activations, attention, seeded weights) on
//!   cuBLAS and NVRTC kernels, falling back to the burn defaults for shapes it does not take;
//! - [`blas`]: cuBLAS GEMMs (strided batched, grouped batched) on typed borrowed buffers;
//! - [`ops`] (+ `ops.cu`): the NVRTC kernels and their checked launches;
//! - [`attention`]: causal/sliding/chunked attention with RoPE and sinks;
//! - [`buffer`]: typed views of burn-cuda buffers (owned, or borrowed with a lifetime);
//! - [`device`], [`libs`], [`error`]: one GPU's context and stream, dynamic loading of the CUDA
//!   libraries (a build without a GPU still links), typed CUDA errors;
//! - [`nccl`], [`collectives`], [`layout`], [`one_gpu`], [`exec`]: `run --backend cuda --gpus W`,
//!   the generic executor with every rank on GPU 0 (W = 1) or rank r on GPU r with NCCL.
//!
//! Everything of one GPU is ordered on burn-cuda's stream of that GPU; nothing here is reachable
//! from outside the crate except through `run`/`verify`.

// FFI to cuBLAS, NCCL and the driver needs `unsafe`; each block states its precondition.
#![allow(unsafe_code)]

pub(crate) mod attention;
pub(crate) mod attn_ops;
pub(crate) mod blas;
pub(crate) mod buffer;
pub(crate) mod collectives;
pub(crate) mod compute;
pub(crate) mod device;
pub(crate) mod error;
pub(crate) mod exec;
pub(crate) mod grouped;
pub(crate) mod layout;
pub(crate) mod libs;
pub(crate) mod moe;
pub(crate) mod nccl;
pub(crate) mod one_gpu;
pub(crate) mod ops;
pub(crate) mod ppmoe;
pub(crate) mod routing_ops;

pub(crate) use error::CudaError;
