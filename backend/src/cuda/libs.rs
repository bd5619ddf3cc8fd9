//! Loading the CUDA libraries up front, so that a missing one is an error, not a panic.
//!
//! cudarc loads libcuda, libcublas, libcublasLt, libnvrtc and libnccl at first use and panics when
//! one is missing. [`probe`] touches each once, turning such a panic into [`CudaError::Library`].

use super::error::{CudaError, Result};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The libraries the CUDA path loads, by cudarc's short names.
pub const LIBRARIES: [&str; 5] = ["cuda", "cublas", "cublasLt", "nvrtc", "nccl"];

/// Loads every library of [`LIBRARIES`]; the first that cannot be loaded is the error.
pub fn probe() -> Result<()> {
    for name in LIBRARIES {
        load(name)?;
    }
    Ok(())
}

/// Loads one library of [`LIBRARIES`].
pub fn load(name: &'static str) -> Result<()> {
    // SAFETY: `culib` only loads the shared library (dlopen) and caches the handle.
    let touch = || unsafe {
        match name {
            "cuda" => {
                let _ = cudarc::driver::sys::culib();
            }
            "cublas" => {
                let _ = cudarc::cublas::sys::culib();
            }
            "cublasLt" => {
                let _ = cudarc::cublaslt::sys::culib();
            }
            "nvrtc" => {
                let _ = cudarc::nvrtc::sys::culib();
            }
            _ => {
                let _ = cudarc::nccl::sys::culib();
            }
        }
    };
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = catch_unwind(AssertUnwindSafe(touch));
    std::panic::set_hook(hook);
    r.map_err(|payload| CudaError::Library {
        name,
        detail: first_sentence(&panic_text(payload.as_ref(), "unknown loader error")),
    })
}

/// The message of a caught panic's payload, or `otherwise` when it carries none.
pub(crate) fn panic_text(p: &(dyn std::any::Any + Send), otherwise: &str) -> String {
    if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        otherwise.into()
    }
}

/// cudarc's message up to its advice (the list of names it tried stays: it says what to link).
fn first_sentence(s: &str) -> String {
    match s.find(". Ensure") {
        Some(i) => s[..i].to_string(),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_messages_are_cut_before_the_advice() {
        let m = "Unable to dynamically load the \"nccl\" shared library - searched for library \
                 names: [\"libnccl.so\"]. Ensure that `LD_LIBRARY_PATH` has the correct path.";
        assert_eq!(
            first_sentence(m),
            "Unable to dynamically load the \"nccl\" shared library - searched for library names: [\"libnccl.so\"]"
        );
    }
}
