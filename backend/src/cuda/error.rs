//! The one error type of the CUDA path.

use thiserror::Error;

/// Everything that can go wrong on the CUDA path. Each variant names the call or the argument.
#[derive(Debug, Error)]
pub enum CudaError {
    /// A shared library (libcuda, libcublas, libcublasLt, libnvrtc, libnccl) could not be loaded.
    #[error(
        "the CUDA library `{name}` could not be loaded ({detail}); on the GPU machine add its \
         folder to LD_LIBRARY_PATH (see docs/GPU.md)"
    )]
    Library {
        /// The library's short name, e.g. `cublasLt`.
        name: &'static str,
        /// What the loader said.
        detail: String,
    },
    /// A CUDA driver call failed.
    #[error("CUDA driver: {call}: {message}")]
    Driver {
        /// The call, e.g. `cuStreamSynchronize`.
        call: &'static str,
        /// The driver's error.
        message: String,
    },
    /// A cuBLAS or cuBLASLt call failed.
    #[error("cuBLAS: {call}: {message}")]
    Blas {
        /// The call, e.g. `cublasLtMatmul`.
        call: &'static str,
        /// The library's status.
        message: String,
    },
    /// NVRTC could not compile the kernels.
    #[error("NVRTC could not compile the kernels with {options:?}: {log}")]
    Compile {
        /// The compiler options.
        options: Vec<String>,
        /// The compiler log.
        log: String,
    },
    /// An NCCL call failed.
    #[error("NCCL: {call}: {message}")]
    Nccl {
        /// The call, e.g. `ncclAllReduce`.
        call: &'static str,
        /// NCCL's result code.
        message: String,
    },
    /// burn (cubecl) could not hand out a buffer or synchronise.
    #[error("burn-cuda: {0}")]
    Burn(String),
    /// An argument is out of range or inconsistent with another.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A device buffer is not aligned as a kernel needs.
    #[error("{what}: device address {addr:#x} is not aligned to {align} bytes")]
    Misaligned {
        /// Which buffer.
        what: &'static str,
        /// Its address.
        addr: u64,
        /// The alignment needed.
        align: u64,
    },
}

/// Shorthand for results of the CUDA path.
pub type Result<T> = std::result::Result<T, CudaError>;

/// Converts a driver error of `call`.
pub(crate) fn driver(call: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> CudaError {
    move |e| CudaError::Driver {
        call,
        message: e.to_string(),
    }
}

/// Converts a cuBLAS error of `call`.
pub(crate) fn blas(
    call: &'static str,
) -> impl FnOnce(cudarc::cublas::result::CublasError) -> CudaError {
    move |e| CudaError::Blas {
        call,
        message: e.to_string(),
    }
}

/// Converts an NCCL error of `call`.
pub(crate) fn nccl(
    call: &'static str,
) -> impl FnOnce(cudarc::nccl::result::NcclError) -> CudaError {
    move |e| CudaError::Nccl {
        call,
        message: format!("{:?}", e.0),
    }
}
