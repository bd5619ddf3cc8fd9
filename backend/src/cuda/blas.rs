//! GEMMs of the compute seam through cuBLAS, on burn-cuda's buffers and stream.
//!
//! Matrices are row-major, as burn stores them; cuBLAS is column-major, so `C = A B` with
//! row-major `A [m, k]`, `B [k, n]` is the column-major `C^T = B^T A^T`: operands swapped, sizes
//! `n, m, k`. bf16 runs with fp32 accumulation (bf16 out); f32 runs on TF32 tensor cores with
//! fp32 accumulation, as burn-cuda's own f32 matmul does.
//!
//! Every call checks its buffers' sizes against the shape before anything is enqueued, so a safe
//! caller cannot make cuBLAS read or write outside a buffer.

use super::buffer::Borrowed;
use super::error::{blas, CudaError, Result};
use cudarc::cublas::{result as cb, sys as cbs};
use std::ffi::c_void;

/// The element type of a GEMM's operands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Elem {
    Bf16,
    F32,
}

impl Elem {
    fn data_type(self) -> cbs::cudaDataType {
        match self {
            Elem::Bf16 => cbs::cudaDataType::CUDA_R_16BF,
            Elem::F32 => cbs::cudaDataType::CUDA_R_32F,
        }
    }

    fn compute(self) -> cbs::cublasComputeType_t {
        match self {
            Elem::Bf16 => cbs::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            Elem::F32 => cbs::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
        }
    }
}

/// `[batch x] C [m, n] = A [m, k] B [k, n]`, row-major and dense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

impl Shape {
    fn check(&self) -> Result<(i32, i32, i32, i32)> {
        let int = |v: usize, what: &str| {
            i32::try_from(v)
                .map_err(|_| CudaError::Invalid(format!("GEMM {what} = {v} exceeds i32")))
        };
        Ok((
            int(self.batch, "batch")?,
            int(self.m, "m")?,
            int(self.n, "n")?,
            int(self.k, "k")?,
        ))
    }
}

/// A cuBLAS handle of one device. Not `Sync`: the seam keeps it under a lock.
#[derive(Debug)]
pub(crate) struct Blas {
    handle: cbs::cublasHandle_t,
}

// SAFETY: a cuBLAS handle may be used from any thread, one call at a time; the compute seam only
// reaches it through a `Mutex`.
unsafe impl Send for Blas {}

impl Blas {
    /// A handle on the current context (the caller made the device's primary context current).
    pub fn new() -> Result<Blas> {
        let handle = cb::create_handle().map_err(blas("cublasCreate"))?;
        Ok(Blas { handle })
    }

    /// `C = A B` (batched when `s.batch > 1`: matrices consecutive in each buffer), enqueued on
    /// the buffers' stream. Empty products write zeros nowhere and return.
    pub fn gemm(
        &self,
        elem: Elem,
        s: Shape,
        a: &Borrowed<'_>,
        b: &Borrowed<'_>,
        c: &Borrowed<'_>,
    ) -> Result<()> {
        let (batch, m, n, k) = s.check()?;
        if s.batch == 0 || s.m == 0 || s.n == 0 {
            return Ok(());
        }
        a.holds(s.batch * s.m * s.k, "GEMM A")?;
        b.holds(s.batch * s.k * s.n, "GEMM B")?;
        c.holds(s.batch * s.m * s.n, "GEMM C")?;
        let stream = same_stream(&[a, b, c])?;
        let (alpha, beta) = (1.0f32, 0.0f32);
        let t = elem.data_type();
        let no = cbs::cublasOperation_t::CUBLAS_OP_N;
        // SAFETY: the handle is live; the three buffers hold the elements the shape needs
        // (checked above) and stay allocated until the work is done (they are borrowed from
        // live tensors, whose memory burn reuses only on this same stream).
        unsafe {
            cb::set_stream(self.handle, stream as _).map_err(blas("cublasSetStream"))?;
            cb::gemm_strided_batched_ex(
                self.handle,
                no,
                no,
                n,
                m,
                k,
                &alpha as *const f32 as *const c_void,
                b.addr() as *const c_void,
                t,
                n,
                (s.k * s.n) as i64,
                a.addr() as *const c_void,
                t,
                k,
                (s.m * s.k) as i64,
                &beta as *const f32 as *const c_void,
                c.addr() as *mut c_void,
                t,
                n,
                (s.m * s.n) as i64,
                batch,
                elem.compute(),
                cbs::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(blas("cublasGemmStridedBatchedEx"))
    }

    /// Expert GEMMs over row groups: group `g` multiplies rows `off[g]..off[g + 1]` of `a`
    /// (`[rows, k]`) by matrix `g` of `b` (`[groups, k, n]`) into the same rows of `c`
    /// (`[rows, n]`). One cuBLAS call per non-empty group.
    pub fn grouped(
        &self,
        elem: Elem,
        off: &[usize],
        n: usize,
        k: usize,
        a: &Borrowed<'_>,
        b: &Borrowed<'_>,
        c: &Borrowed<'_>,
    ) -> Result<()> {
        let groups = off.len().saturating_sub(1);
        let rows = off.last().copied().unwrap_or(0);
        if off.windows(2).any(|w| w[1] < w[0]) {
            return Err(CudaError::Invalid(format!(
                "group offsets must not decrease: {off:?}"
            )));
        }
        a.holds(rows * k, "grouped GEMM A")?;
        b.holds(groups * k * n, "grouped GEMM B")?;
        c.holds(rows * n, "grouped GEMM C")?;
        for g in 0..groups {
            let m = off[g + 1] - off[g];
            if m == 0 {
                continue;
            }
            self.gemm(
                elem,
                Shape {
                    batch: 1,
                    m,
                    n,
                    k,
                },
                &a.at(off[g] * k)?,
                &b.at(g * k * n)?,
                &c.at(off[g] * n)?,
            )?;
        }
        Ok(())
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: the handle was created in `new` and is destroyed once.
        let _ = unsafe { cb::destroy_handle(self.handle) };
    }
}

/// The one stream of `bufs` (all borrowed on this thread: cubecl hands out the thread's stream).
pub(crate) fn same_stream(bufs: &[&Borrowed<'_>]) -> Result<cudarc::driver::sys::CUstream> {
    let first = bufs
        .first()
        .map(|b| b.stream())
        .ok_or_else(|| CudaError::Invalid("no buffer".into()))?;
    if bufs.iter().any(|b| b.stream() != first) {
        return Err(CudaError::Burn(
            "buffers of one op were borrowed on different streams".into(),
        ));
    }
    Ok(first)
}
