//! bf16 GEMMs (fp32 accumulation, bf16 out) through cuBLASLt on raw device addresses.
//!
//! Matrices are row-major, as burn stores them. cuBLAS is column-major, so `C = A B` with row-major
//! `A [m, k]`, `B [k, n]` is computed as the column-major `C^T = B^T A^T`: the operands are passed
//! swapped with `n, m, k`. Each shape's plan is made once, on its first call, and cached: the
//! cuBLASLt descriptors, up to [`CANDIDATES`] algorithms from cuBLASLt's heuristic (plus plain
//! `cublasGemmEx` when there is no epilogue), each timed on the call's own buffers, the fastest
//! kept ([`Gemm::set_autotune`] turns the timing off: then the heuristic's first choice runs).
//! [`Gemm::reference`] is plain `cublasGemmEx` with the default algorithm, the yardstick the
//! measurements compare against. All calls are issued on the GPU's stream.

use super::device::{Buf, Elem, Gpu};
use super::error::{blas, blas_lt, CudaError, Result};
use cudarc::cublas::{result as cb, sys as cbs};
use cudarc::cublaslt::{result as lt, sys as lts};
use std::collections::HashMap;
use std::ffi::c_void;

/// cuBLASLt workspace per GPU (NVIDIA recommends 32 MiB on Hopper).
pub const WORKSPACE_BYTES: usize = 32 << 20;

/// Algorithms asked of cuBLASLt's heuristic per shape.
pub const CANDIDATES: usize = 8;

/// Timed calls per candidate when a plan is made (after one untimed call), one per pass.
const TUNE_PASSES: usize = 4;

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

/// What runs a plan.
#[derive(Debug, Clone, Copy)]
enum Kernel {
    /// A cuBLASLt algorithm.
    Lt(lts::cublasLtMatmulAlgo_t),
    /// Plain `cublasGemmEx` (default algorithm); only without epilogue.
    Blas,
}

/// One cached plan.
#[derive(Debug)]
struct Plan {
    desc: lts::cublasLtMatmulDesc_t,
    /// Layout of the first cuBLAS operand: row-major B seen column-major, `n x k`.
    b_layout: lts::cublasLtMatrixLayout_t,
    /// Layout of the second: row-major A seen column-major, `k x m`.
    a_layout: lts::cublasLtMatrixLayout_t,
    /// Layout of C (and D): `n x m`.
    c_layout: lts::cublasLtMatrixLayout_t,
    kernel: Kernel,
}

/// cuBLASLt and cuBLAS on one GPU, with a plan cache.
#[derive(Debug)]
pub struct Gemm {
    lt: lts::cublasLtHandle_t,
    blas: cbs::cublasHandle_t,
    workspace: Buf,
    stream: cudarc::driver::sys::CUstream,
    plans: HashMap<(GemmShape, Epilogue), Plan>,
    autotune: bool,
    events: [cudarc::driver::sys::CUevent; 2],
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
        let event = || {
            cudarc::driver::result::event::create(
                cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT,
            )
            .map_err(super::error::driver("cuEventCreate"))
        };
        Ok(Self {
            lt,
            blas: handle,
            workspace,
            stream,
            plans: HashMap::new(),
            autotune: true,
            events: [event()?, event()?],
        })
    }

    /// Whether new plans time their candidates (default) or take the heuristic's first.
    pub fn set_autotune(&mut self, on: bool) {
        self.autotune = on;
    }

    /// Plans cached so far.
    pub fn cached_plans(&self) -> usize {
        self.plans.len()
    }

    fn make_plan(&self, s: GemmShape, epi: Epilogue, a: u64, b: u64, c: u64) -> Result<Plan> {
        let bf16 = lts::cudaDataType::CUDA_R_16BF;
        let desc = lt::create_matmul_desc(
            lts::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            lts::cudaDataType::CUDA_R_32F,
        )
        .map_err(blas_lt("cublasLtMatmulDescCreate"))?;
        let (m, n, k) = (s.m as u64, s.n as u64, s.k as u64);
        let layout = |rows: u64, cols: u64| {
            lt::create_matrix_layout(bf16, rows, cols, rows as i64)
                .map_err(blas_lt("cublasLtMatrixLayoutCreate"))
        };
        // From here on the plan owns the descriptors: dropping it on an error destroys them.
        let mut plan = Plan {
            desc,
            b_layout: layout(n, k)?,
            a_layout: layout(k, m)?,
            c_layout: layout(n, m)?,
            kernel: Kernel::Blas,
        };
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
        let mut candidates: Vec<Kernel> =
            self.heuristic(&plan)?.into_iter().map(Kernel::Lt).collect();
        if epi == Epilogue::None {
            candidates.push(Kernel::Blas);
        }
        plan.kernel = match candidates.as_slice() {
            [] => {
                return Err(CudaError::Blas {
                    call: "cublasLtMatmulAlgoGetHeuristic",
                    message: format!("no algorithm for {s:?} with {epi:?}"),
                })
            }
            [only] => *only,
            [first, ..] if !self.autotune => *first,
            _ => self.fastest(&plan, s, &candidates, a, b, c)?,
        };
        Ok(plan)
    }

    /// Up to [`CANDIDATES`] algorithms for `p`'s descriptors, best first, within the workspace.
    fn heuristic(&self, p: &Plan) -> Result<Vec<lts::cublasLtMatmulAlgo_t>> {
        let pref = lt::create_matmul_pref().map_err(blas_lt("cublasLtMatmulPreferenceCreate"))?;
        let ws = WORKSPACE_BYTES as u64;
        let mut found = 0i32;
        // SAFETY: the results are plain C structs, valid zeroed; every descriptor is live; the
        // preference is destroyed before returning.
        let mut results: [lts::cublasLtMatmulHeuristicResult_t; CANDIDATES] =
            unsafe { std::mem::zeroed() };
        let status = unsafe {
            let set = lt::set_matmul_pref_attribute(
                pref,
                lts::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                std::mem::size_of::<u64>(),
            );
            let status = set.and_then(|_| {
                lts::cublasLtMatmulAlgoGetHeuristic(
                    self.lt,
                    p.desc,
                    p.b_layout,
                    p.a_layout,
                    p.c_layout,
                    p.c_layout,
                    pref,
                    CANDIDATES as i32,
                    results.as_mut_ptr(),
                    &mut found,
                )
                .result()
            });
            let _ = lt::destroy_matmul_pref(pref);
            status
        };
        status.map_err(blas_lt("cublasLtMatmulAlgoGetHeuristic"))?;
        Ok(results
            .iter()
            .take(found.clamp(0, CANDIDATES as i32) as usize)
            .filter(|r| r.state == lts::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
            .filter(|r| r.workspaceSize <= WORKSPACE_BYTES)
            .map(|r| r.algo)
            .collect())
    }

    /// Times every candidate on the call's buffers; the fastest that runs. Candidates are timed
    /// one call at a time in interleaved passes (alternating order), so clock and power drift
    /// during tuning favours none of them.
    fn fastest(
        &self,
        p: &Plan,
        s: GemmShape,
        candidates: &[Kernel],
        a: u64,
        b: u64,
        c: u64,
    ) -> Result<Kernel> {
        use cudarc::driver::result::event;
        let ev = super::error::driver;
        let runnable: Vec<Kernel> = candidates
            .iter()
            .copied()
            .filter(|&k| self.launch(p, k, s, a, b, c).is_ok())
            .collect();
        let mut total = vec![0.0f32; runnable.len()];
        for pass in 0..TUNE_PASSES {
            let order: Vec<usize> = if pass % 2 == 0 {
                (0..runnable.len()).collect()
            } else {
                (0..runnable.len()).rev().collect()
            };
            for i in order {
                // SAFETY: both events are live (made in `new`), recorded on this GPU's stream.
                total[i] += unsafe {
                    event::record(self.events[0], self.stream).map_err(ev("cuEventRecord"))?;
                    self.launch(p, runnable[i], s, a, b, c)?;
                    event::record(self.events[1], self.stream).map_err(ev("cuEventRecord"))?;
                    event::synchronize(self.events[1]).map_err(ev("cuEventSynchronize"))?;
                    event::elapsed(self.events[0], self.events[1])
                        .map_err(ev("cuEventElapsedTime"))?
                };
            }
        }
        total
            .iter()
            .zip(&runnable)
            .min_by(|x, y| x.0.total_cmp(y.0))
            .map(|(_, &k)| k)
            .ok_or_else(|| CudaError::Blas {
                call: "cublasLtMatmul",
                message: format!("no candidate algorithm ran for {s:?}"),
            })
    }

    /// Runs plan `p` with kernel `k`.
    fn launch(&self, p: &Plan, k: Kernel, s: GemmShape, a: u64, b: u64, c: u64) -> Result<()> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (ws, ws_bytes) = (self.workspace.addr(), self.workspace.bytes());
        match k {
            Kernel::Blas => self.reference(s, a, b, c),
            // SAFETY: the plan's descriptors match the buffers' sizes, which the caller
            // guarantees; the workspace is a live buffer of `ws_bytes`.
            Kernel::Lt(algo) => unsafe {
                lt::matmul(
                    self.lt,
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
                    &algo,
                    ws as *mut c_void,
                    ws_bytes,
                    self.stream as _,
                )
            }
            .map_err(blas_lt("cublasLtMatmul")),
        }
    }

    /// `C = epi(A B)`; `a`, `b`, `c` are device addresses of row-major bf16 matrices of `s`'s
    /// sizes. `m = 0` is a no-op. The shape's first call makes its plan (timing candidates on
    /// these buffers, so `c` is written several times).
    pub fn matmul(&mut self, s: GemmShape, epi: Epilogue, a: u64, b: u64, c: u64) -> Result<()> {
        s.check()?;
        if s.m == 0 {
            return Ok(());
        }
        if !self.plans.contains_key(&(s, epi)) {
            let plan = self.make_plan(s, epi, a, b, c)?;
            self.plans.insert((s, epi), plan);
        }
        match self.plans.get(&(s, epi)) {
            Some(p) => self.launch(p, p.kernel, s, a, b, c),
            None => Err(CudaError::Invalid("GEMM plan cache".into())),
        }
    }

    /// How many cached plans run plain `cublasGemmEx` (the rest run a cuBLASLt algorithm).
    pub fn plans_on_cublas(&self) -> usize {
        self.plans
            .values()
            .filter(|p| matches!(p.kernel, Kernel::Blas))
            .count()
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

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: the plan created these descriptors and destroys them once.
        unsafe {
            let _ = lt::destroy_matrix_layout(self.a_layout);
            let _ = lt::destroy_matrix_layout(self.b_layout);
            let _ = lt::destroy_matrix_layout(self.c_layout);
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

impl Drop for Gemm {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: the handles and events were created by this struct and are destroyed once.
        unsafe {
            let _ = lt::destroy_handle(self.lt);
            let _ = cb::destroy_handle(self.blas);
            for e in self.events {
                let _ = cudarc::driver::result::event::destroy(e);
            }
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
