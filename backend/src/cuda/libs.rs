//! Checking for the CUDA libraries up front, so that a missing one is an error, not a panic.
//!
//! cudarc loads libcuda, libcublas, libcublasLt, libnvrtc and libnccl at first use and panics when
//! one is missing. [`load`] asks cudarc's own presence check (the same candidate names, no panic)
//! first, so a missing library becomes [`CudaError::Library`] naming what was tried.

use super::error::{CudaError, Result};

/// Fails with [`CudaError::Library`] unless cudarc can load the library of its short name `name`
/// (`cuda`, `cublas`, `cublasLt`, `nvrtc`, `nccl`).
pub(crate) fn load(name: &'static str) -> Result<()> {
    // SAFETY: each `is_culib_present` dlopens cudarc's candidate file names for the library and
    // drops the handles; loading runs the library's initialisers as any later use would, and
    // touches no Rust state.
    let present = unsafe {
        match name {
            "cuda" => cudarc::driver::sys::is_culib_present(),
            "cublas" => cudarc::cublas::sys::is_culib_present(),
            "cublasLt" => cudarc::cublaslt::sys::is_culib_present(),
            "nvrtc" => cudarc::nvrtc::sys::is_culib_present(),
            "nccl" => cudarc::nccl::sys::is_culib_present(),
            _ => {
                return Err(CudaError::Invalid(format!(
                    "no CUDA library is called `{name}`"
                )));
            }
        }
    };
    if present {
        return Ok(());
    }
    let tried = cudarc::get_lib_name_candidates(name);
    Err(CudaError::Library {
        name,
        detail: format!(
            "none of {} could be loaded: add the folder that holds it to LD_LIBRARY_PATH",
            tried.join(", ")
        ),
    })
}
