//! bf16 GEMMs (fp32 accumulation, bf16 out) through cuBLASLt on raw device addresses.
//!
//! Matrices are row-major, as burn stores them. cuBLAS is column-major, so `C = A B` with row-major
//! `A [m, k]`, `B [k, n]` is computed as the column-major `C^T = B^T A^T`: the operands are passed
//! swapped with `n, m, k`. Each shape's cuBLASLt plan (descriptors plus the heuristic's algorithm)
//! is made once and cached. [`Gemm::reference`] is plain `cublasGemmEx` with the default algorithm,
//! the yardstick the measurements compare against. All calls are issued on the GPU's stream.

use super::device::{Buf, Elem, Gpu};
use super::error::{blas, blas_lt, CudaError, Result};
use cudarc::cublas::{result as cb, sys as cbs};
use cudarc::cublaslt::{result as lt, sys as lts};
use std::collections::HashMap;
use std::ffi::c_void;

/// cuBLASLt workspace per GPU (NVIDIA recommends 32 MiB on Hopper).
pub const WORKSPACE_BYTES: usize = 32 << 20;

/// The shape of `C [m, n] = A [m, k] B [k, n]`, all row-major and dense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GemmShape {
    /// Rows of A and C.
    pub m: usize,
    /// Columns of B and C.
    pub n: usize,
    /// Columns of A, rows of B.
    pub k: usize,
}

impl GemmShape {
    /// The shape `[m, k] x [k, n]`.
    pub fn new(m: usize, n: usize, k: usize) -> Self {
        Self { m, n, k }
    }

    /// Floating-point operations: `2 m n k`.
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }

    fn check(&self) -> Result<()> {
        for (v, what) in [(self.m, "m"), (self.n, "n"), (self.k, "k")] {
            if v > i32::MAX as usize {
                return Err(CudaError::Invalid(format!("GEMM {what} = {v} exceeds i32")));
            }
        }
        if self.n == 0 || self.k == 0 {
            return Err(CudaError::Invalid(format!(
                "GEMM with an empty dimension: {self:?}"
            )));
        }
        Ok(())
    }
}

/// What the GEMM applies to its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Epilogue {
    /// Nothing.
    None,
    /// GELU (tanh form), fused into the GEMM.
    Gelu,
}

/// One cached cuBLASLt plan.
#[derive(Debug)]
struct Plan {
    desc: lts::cublasLtMatmulDesc_t,
    /// Layout of the first cuBLAS operand: row-major B seen column-major, `n x k`.
    b_layout: lts::cublasLtMatrixLayout_t,
    /// Layout of the second: row-major A seen column-major, `k x m`.
    a_layout: lts::cublasLtMatrixLayout_t,
    /// Layout of C (and D): `n x m`.
    c_layout: lts::cublasLtMatrixLayout_t,
    algo: lts::cublasLtMatmulAlgo_t,
}

/// cuBLASLt and cuBLAS on one GPU, with a plan cache.
#[derive(Debug)]
pub struct Gemm {
    lt: lts::cublasLtHandle_t,
    blas: cbs::cublasHandle_t,
    workspace: Buf,
    stream: cudarc::driver::sys::CUstream,
    plans: HashMap<(GemmShape, Epilogue), Plan>,
}

impl Gemm {
    /// Creates the handles on `gpu` (its context current) and the workspace (a burn buffer).
    pub fn new(gpu: &Gpu) -> Result<Self> {
        gpu.bind()?;
        let workspace = Buf::alloc(gpu, Elem::Bf16, WORKSPACE_BYTES / 2)?;
        workspace.check_aligned("cuBLASLt workspace", 256)?;
        let lt = lt::create_handle().map_err(blas_lt("cublasLtCreate"))?;
        let handle = cb::create_handle().map_err(blas("cublasCreate"))?;
        let stream = gpu.raw_stream();
        // SAFETY: the handle was just created; the stream lives as long as the GPU.
        unsafe { cb::set_stream(handle, stream as _) }.map_err(blas("cublasSetStream"))?;
        Ok(Self {
            lt,
            blas: handle,
            workspace,
            stream,
            plans: HashMap::new(),
        })
    }

    /// Plans cached so far.
    pub fn cached_plans(&self) -> usize {
        self.plans.len()
    }

    fn plan(&mut self, s: GemmShape, epi: Epilogue) -> Result<&Plan> {
        if !self.plans.contains_key(&(s, epi)) {
            let plan = self.make_plan(s, epi)?;
            self.plans.insert((s, epi), plan);
        }
        self.plans
            .get(&(s, epi))
            .ok_or_else(|| CudaError::Invalid("plan cache".into()))
    }

    fn make_plan(&self, s: GemmShape, epi: Epilogue) -> Result<Plan> {
        let bf16 = lts::cudaDataType::CUDA_R_16BF;
        let desc = lt::create_matmul_desc(
            lts::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            lts::cudaDataType::CUDA_R_32F,
        )
        .map_err(blas_lt("cublasLtMatmulDescCreate"))?;
        if epi == Epilogue::Gelu {
            let e = lts::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU;
            // SAFETY: desc is live; the attribute is a cublasLtEpilogue_t passed by address.
            unsafe {
                lt::set_matmul_desc_attribute(
                    desc,
                    lts::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE,
                    &e as *const _ as *const c_void,
                    std::mem::size_of_val(&e),
                )
            }
            .map_err(blas_lt("cublasLtMatmulDescSetAttribute(EPILOGUE)"))?;
        }
        let (m, n, k) = (s.m as u64, s.n as u64, s.k as u64);
        let b_layout = lt::create_matrix_layout(bf16, n, k, n as i64)
            .map_err(blas_lt("cublasLtMatrixLayoutCreate"))?;
        let a_layout = lt::create_matrix_layout(bf16, k, m, k as i64)
            .map_err(blas_lt("cublasLtMatrixLayoutCreate"))?;
        let c_layout = lt::create_matrix_layout(bf16, n, m, n as i64)
            .map_err(blas_lt("cublasLtMatrixLayoutCreate"))?;
        let pref = lt::create_matmul_pref().map_err(blas_lt("cublasLtMatmulPreferenceCreate"))?;
        let ws = WORKSPACE_BYTES as u64;
        // SAFETY: every descriptor above is live until destroyed below or in Drop.
        let heuristic = unsafe {
            lt::set_matmul_pref_attribute(
                pref,
                lts::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                std::mem::size_of::<u64>(),
            )
            .map_err(blas_lt("cublasLtMatmulPreferenceSetAttribute"))?;
            let h = lt::get_matmul_algo_heuristic(
                self.lt, desc, b_layout, a_layout, c_layout, c_layout, pref,
            );
            let _ = lt::destroy_matmul_pref(pref);
            h
        }
        .map_err(blas_lt("cublasLtMatmulAlgoGetHeuristic"))?;
        Ok(Plan {
            desc,
            b_layout,
            a_layout,
            c_layout,
            algo: heuristic.algo,
        })
    }

    /// `C = epi(A B)` through cuBLASLt; `a`, `b`, `c` are device addresses of row-major bf16
    /// matrices of `s`'s sizes. `m = 0` is a no-op.
    pub fn matmul(&mut self, s: GemmShape, epi: Epilogue, a: u64, b: u64, c: u64) -> Result<()> {
        s.check()?;
        if s.m == 0 {
            return Ok(());
        }
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (lt_handle, stream) = (self.lt, self.stream);
        let (ws, ws_bytes) = (self.workspace.addr(), self.workspace.bytes());
        let p = self.plan(s, epi)?;
        // SAFETY: the plan's descriptors match the buffers' sizes, which the caller guarantees;
        // the workspace is a live buffer of `ws_bytes`.
        unsafe {
            lt::matmul(
                lt_handle,
                p.desc,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                b as *const c_void,
                p.b_layout,
                a as *const c_void,
                p.a_layout,
                c as *const c_void,
                p.c_layout,
                c as *mut c_void,
                p.c_layout,
                &p.algo,
                ws as *mut c_void,
                ws_bytes,
                stream as _,
            )
        }
        .map_err(blas_lt("cublasLtMatmul"))
    }

    /// `C = A B` through plain `cublasGemmEx` (default algorithm): the reference.
    pub fn reference(&self, s: GemmShape, a: u64, b: u64, c: u64) -> Result<()> {
        s.check()?;
        if s.m == 0 {
            return Ok(());
        }
        let (alpha, beta) = (1.0f32, 0.0f32);
        let bf16 = cbs::cudaDataType::CUDA_R_16BF;
        let (m, n, k) = (s.m as i32, s.n as i32, s.k as i32);
        // SAFETY: as `matmul`.
        unsafe {
            cb::gemm_ex(
                self.blas,
                cbs::cublasOperation_t::CUBLAS_OP_N,
                cbs::cublasOperation_t::CUBLAS_OP_N,
                n,
                m,
                k,
                &alpha as *const f32 as *const c_void,
                b as *const c_void,
                bf16,
                n,
                a as *const c_void,
                bf16,
                k,
                &beta as *const f32 as *const c_void,
                c as *mut c_void,
                bf16,
                n,
                cbs::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cbs::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(blas("cublasGemmEx"))
    }

    /// Expert GEMMs over row groups: group `g` multiplies the `rows[g]` rows of `a` starting after
    /// the previous groups' rows by expert `g`'s weight (`b + g * b_stride` bytes), writing the same
    /// rows of `c`. `a` has `s.k` columns, `c` `s.n`; one cuBLASLt call per non-empty group.
    #[allow(clippy::too_many_arguments)]
    pub fn grouped(
        &mut self,
        rows: &[usize],
        n: usize,
        k: usize,
        epi: Epilogue,
        a: u64,
        b: u64,
        b_stride: u64,
        c: u64,
    ) -> Result<()> {
        for (g, off) in group_offsets(rows).into_iter().enumerate() {
            let s = GemmShape::new(rows[g], n, k);
            let a_g = a + (off * k * 2) as u64;
            let c_g = c + (off * n * 2) as u64;
            self.matmul(s, epi, a_g, b + g as u64 * b_stride, c_g)?;
        }
        Ok(())
    }

    /// [`Gemm::grouped`] through the reference `cublasGemmEx`.
    #[allow(clippy::too_many_arguments)]
    pub fn grouped_reference(
        &self,
        rows: &[usize],
        n: usize,
        k: usize,
        a: u64,
        b: u64,
        b_stride: u64,
        c: u64,
    ) -> Result<()> {
        for (g, off) in group_offsets(rows).into_iter().enumerate() {
            let s = GemmShape::new(rows[g], n, k);
            let a_g = a + (off * k * 2) as u64;
            let c_g = c + (off * n * 2) as u64;
            self.reference(s, a_g, b + g as u64 * b_stride, c_g)?;
        }
        Ok(())
    }
}

/// The first row of each group: exclusive prefix sums of `rows`.
pub fn group_offsets(rows: &[usize]) -> Vec<usize> {
    rows.iter()
        .scan(0usize, |acc, &r| {
            let first = *acc;
            *acc += r;
            Some(first)
        })
        .collect()
}

impl Drop for Gemm {
    fn drop(&mut self) {
        // SAFETY: every handle and descriptor was created by this struct and is destroyed once.
        unsafe {
            for (_, p) in self.plans.drain() {
                let _ = lt::destroy_matrix_layout(p.a_layout);
                let _ = lt::destroy_matrix_layout(p.b_layout);
                let _ = lt::destroy_matrix_layout(p.c_layout);
                let _ = lt::destroy_matmul_desc(p.desc);
            }
            let _ = lt::destroy_handle(self.lt);
            let _ = cb::destroy_handle(self.blas);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flops_are_two_m_n_k() {
        assert_eq!(
            GemmShape::new(8192, 8192, 8192).flops(),
            2.0 * 8192f64.powi(3)
        );
    }

    #[test]
    fn group_offsets_are_exclusive_prefix_sums() {
        assert_eq!(group_offsets(&[3, 0, 5, 2]), vec![0, 3, 3, 8]);
        assert!(group_offsets(&[]).is_empty());
    }

    #[test]
    fn shapes_outside_i32_or_empty_are_rejected() {
        assert!(GemmShape::new(1 << 31, 8, 8).check().is_err());
        assert!(GemmShape::new(8, 0, 8).check().is_err());
        assert!(GemmShape::new(0, 8, 8).check().is_ok());
    }
}
