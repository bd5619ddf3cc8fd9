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

    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            Elem::Bf16 => 2,
            Elem::F32 => 4,
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
        for (x, what) in [(a, "GEMM A"), (b, "GEMM B"), (c, "GEMM C")] {
            x.is_elem(elem.bytes(), what)?;
        }
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
                Shape { batch: 1, m, n, k },
                &a.at(off[g] * k)?,
                &b.at(g * k * n)?,
                &c.at(off[g] * n)?,
            )?;
        }
        Ok(())
    }
}

/// One operand of [`Blas::gemm_cm`], in cuBLAS's column-major terms: element `(i, j)` of
/// matrix `t` of the batch is at `i + j * ld + t * stride`; `trans` applies it transposed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Operand<'a, 't> {
    pub buf: &'a Borrowed<'t>,
    pub ld: usize,
    pub stride: usize,
    pub trans: bool,
}

impl Operand<'_, '_> {
    /// Fails unless `batch` stored matrices of `rows x cols` (before `trans`) fit the buffer.
    fn fits(&self, rows: usize, cols: usize, batch: usize, what: &str) -> Result<()> {
        if rows == 0 || cols == 0 || batch == 0 {
            return Ok(());
        }
        if self.ld < rows {
            return Err(CudaError::Invalid(format!(
                "{what}: leading dimension {} below {rows} rows",
                self.ld
            )));
        }
        let last = (rows - 1) + (cols - 1) * self.ld + (batch - 1) * self.stride;
        self.buf.holds(last + 1, what)
    }
}

/// The problems of one grouped GEMM (see [`Blas::grouped_plan`]): per non-empty group its rows
/// and the device addresses of its three matrices.
#[derive(Debug, Clone)]
pub(crate) struct GroupedPlan {
    m: Vec<i32>,
    n: i32,
    k: i32,
    /// A pointers, then B pointers, then C pointers (cuBLAS's "A" is our B: see the module docs).
    ptrs: Vec<u64>,
    stream: cudarc::driver::sys::CUstream,
}

impl GroupedPlan {
    /// The pointer arrays as one list (to upload for [`Blas::grouped_run`]).
    pub fn pointers(&self) -> &[u64] {
        &self.ptrs
    }
}

impl Blas {
    /// `C = op(A) op(B)` (times `alpha`), column-major, batched with strides; `a`, `b` of
    /// `in_elem`, `c` of `out_elem` (f32 output keeps fp32 accumulations).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_cm(
        &self,
        in_elem: Elem,
        out_elem: Elem,
        (m, n, k): (usize, usize, usize),
        batch: usize,
        alpha: f32,
        a: Operand<'_, '_>,
        b: Operand<'_, '_>,
        c: Operand<'_, '_>,
    ) -> Result<()> {
        let (bi, mi, ni, ki) = Shape { batch, m, n, k }.check()?;
        if batch == 0 || m == 0 || n == 0 {
            return Ok(());
        }
        let (ar, ac) = if a.trans { (k, m) } else { (m, k) };
        let (br, bc) = if b.trans { (n, k) } else { (k, n) };
        a.fits(ar, ac, batch, "GEMM A")?;
        b.fits(br, bc, batch, "GEMM B")?;
        c.fits(m, n, batch, "GEMM C")?;
        a.buf.is_elem(in_elem.bytes(), "GEMM A")?;
        b.buf.is_elem(in_elem.bytes(), "GEMM B")?;
        c.buf.is_elem(out_elem.bytes(), "GEMM C")?;
        let stream = same_stream(&[a.buf, b.buf, c.buf])?;
        let op = |t: bool| match t {
            true => cbs::cublasOperation_t::CUBLAS_OP_T,
            false => cbs::cublasOperation_t::CUBLAS_OP_N,
        };
        let ld = |o: &Operand<'_, '_>| {
            i32::try_from(o.ld).map_err(|_| CudaError::Invalid("leading dimension".into()))
        };
        let beta = 0.0f32;
        // SAFETY: the handle is live; every matrix the call touches lies inside its buffer
        // (checked by `fits`); the buffers are borrowed from live tensors on this stream.
        unsafe {
            cb::set_stream(self.handle, stream as _).map_err(blas("cublasSetStream"))?;
            cb::gemm_strided_batched_ex(
                self.handle,
                op(a.trans),
                op(b.trans),
                mi,
                ni,
                ki,
                &alpha as *const f32 as *const c_void,
                a.buf.addr() as *const c_void,
                in_elem.data_type(),
                ld(&a)?,
                a.stride as i64,
                b.buf.addr() as *const c_void,
                in_elem.data_type(),
                ld(&b)?,
                b.stride as i64,
                &beta as *const f32 as *const c_void,
                c.buf.addr() as *mut c_void,
                out_elem.data_type(),
                ld(&c)?,
                c.stride as i64,
                bi,
                in_elem.compute(),
                cbs::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(blas("cublasGemmStridedBatchedEx"))
    }

    /// The problems of a grouped GEMM over row groups (as [`Blas::grouped`]), checked against
    /// the buffers: group `g` multiplies rows `off[g]..off[g + 1]` of `a` by matrix `g` of `b`.
    #[allow(clippy::too_many_arguments)]
    pub fn grouped_plan(
        elem: Elem,
        off: &[usize],
        n: usize,
        k: usize,
        a: &Borrowed<'_>,
        b: &Borrowed<'_>,
        c: &Borrowed<'_>,
    ) -> Result<GroupedPlan> {
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
        for (x, what) in [
            (a, "grouped GEMM A"),
            (b, "grouped GEMM B"),
            (c, "grouped GEMM C"),
        ] {
            x.is_elem(elem.bytes(), what)?;
        }
        let (_, _, ni, ki) = Shape {
            batch: 1,
            m: rows,
            n,
            k,
        }
        .check()?;
        let bytes = elem.bytes();
        let (mut m, mut pa, mut pb, mut pc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for g in 0..groups {
            let rows_g = off[g + 1] - off[g];
            if rows_g == 0 {
                continue;
            }
            m.push(rows_g as i32);
            // cuBLAS's A is our B (column-major C^T = B^T A^T).
            pa.push(b.addr() + (g * k * n * bytes) as u64);
            pb.push(a.addr() + (off[g] * k * bytes) as u64);
            pc.push(c.addr() + (off[g] * n * bytes) as u64);
        }
        let mut ptrs = pa;
        ptrs.extend(pb);
        ptrs.extend(pc);
        Ok(GroupedPlan {
            m,
            n: ni,
            k: ki,
            ptrs,
            stream: same_stream(&[a, b, c])?,
        })
    }

    /// Runs `plan` as one `cublasGemmGroupedBatchedEx`.
    ///
    /// # Safety
    /// `ptrs` holds exactly `plan.pointers()` (uploaded by the caller, in order, before this
    /// call on the plan's stream), and the buffers the plan was made from are still alive.
    pub unsafe fn grouped_run(
        &self,
        elem: Elem,
        plan: &GroupedPlan,
        ptrs: &Borrowed<'_>,
    ) -> Result<()> {
        let g = plan.m.len();
        if g == 0 {
            return Ok(());
        }
        // u64 pointers seen as pairs of i32.
        ptrs.holds(6 * g, "grouped GEMM pointer arrays")?;
        let stream = same_stream(&[ptrs])?;
        if stream != plan.stream {
            return Err(CudaError::Burn(
                "grouped GEMM plan made on another stream".into(),
            ));
        }
        let no = vec![cbs::cublasOperation_t::CUBLAS_OP_N; g];
        let n = vec![plan.n; g];
        let k = vec![plan.k; g];
        let alpha = vec![1.0f32; g];
        let beta = vec![0.0f32; g];
        let size = vec![1i32; g];
        let base = ptrs.addr();
        let t = elem.data_type();
        // SAFETY: the caller's contract (pointer arrays on the device match the plan, whose
        // matrices were checked against their buffers); host arrays live across the call, which
        // reads them before returning.
        unsafe {
            cb::set_stream(self.handle, stream as _).map_err(blas("cublasSetStream"))?;
            cbs::cublasGemmGroupedBatchedEx(
                self.handle,
                no.as_ptr(),
                no.as_ptr(),
                n.as_ptr(),
                plan.m.as_ptr(),
                k.as_ptr(),
                alpha.as_ptr() as *const c_void,
                base as *const *const c_void,
                t,
                n.as_ptr(),
                (base + 8 * g as u64) as *const *const c_void,
                t,
                k.as_ptr(),
                beta.as_ptr() as *const c_void,
                (base + 16 * g as u64) as *const *mut c_void,
                t,
                n.as_ptr(),
                g as i32,
                size.as_ptr(),
                elem.compute(),
            )
            .result()
        }
        .map_err(blas("cublasGemmGroupedBatchedEx"))
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
