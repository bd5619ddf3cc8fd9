//! One rank of a benchmark: its GPU with the CUDA path's tools loaded on it.

use super::super::device::{Buf, Elem, Gpu};
use super::super::error::{CudaError, Result};
use super::super::gemm::{Epilogue, Gemm, GemmShape};
use super::super::kernels::Kernels;

/// A GPU, its GEMM engine and its kernels.
#[derive(Debug)]
pub struct Rank {
    /// The GPU.
    pub gpu: Gpu,
    /// cuBLASLt / cuBLAS on it.
    pub gemm: Gemm,
    /// The NVRTC kernels loaded on it.
    pub k: Kernels,
    /// Whether cuBLASLt fuses GELU into the up-projection (else a separate kernel applies it).
    pub fused_gelu: bool,
}

impl Rank {
    /// Opens GPU `ordinal` and loads everything on it.
    pub fn open(ordinal: usize) -> Result<Self> {
        let gpu = Gpu::open(ordinal)?;
        gpu.bind()?;
        let gemm = Gemm::new(&gpu)?;
        let k = Kernels::load(&gpu)?;
        Ok(Self {
            gpu,
            gemm,
            k,
            fused_gelu: true,
        })
    }

    /// Opens GPUs `0..world`.
    pub fn open_all(world: usize) -> Result<Vec<Self>> {
        (0..world).map(Self::open).collect()
    }

    /// A burn buffer of `len` elements on this rank's GPU.
    pub fn alloc(&self, elem: Elem, len: usize) -> Result<Buf> {
        Buf::alloc(&self.gpu, elem, len)
    }

    /// A bf16 burn buffer filled with seeded uniform values in `[-scale, scale)`; element `i`
    /// takes the value of global index `offset + i` (so shards agree with the whole).
    pub fn random(&self, len: usize, seed: u64, offset: usize, scale: f32) -> Result<Buf> {
        let b = self.alloc(Elem::Bf16, len)?;
        self.gpu.after_burn()?;
        self.k.fill_uniform(b.addr(), len, seed, offset, scale)?;
        Ok(b)
    }

    /// Checks once whether cuBLASLt takes the GELU epilogue for an `[m, k] x [k, n]` product
    /// into `c`; if not, later up-projections apply GELU with a kernel.
    pub fn probe_fused_gelu(&mut self, a: u64, b: u64, c: u64, n: usize, k: usize) -> Result<()> {
        match self
            .gemm
            .matmul(GemmShape::new(8, n, k), Epilogue::Gelu, a, b, c)
        {
            Ok(()) => self.fused_gelu = true,
            Err(CudaError::Blas { .. }) => self.fused_gelu = false,
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Up-projection with GELU over row groups (one group: a dense GEMM), see [`Gemm::grouped`].
    #[allow(clippy::too_many_arguments)]
    pub fn up_gelu(
        &mut self,
        rows: &[usize],
        n: usize,
        k: usize,
        a: u64,
        b: u64,
        b_stride: u64,
        c: u64,
    ) -> Result<()> {
        if self.fused_gelu {
            return self
                .gemm
                .grouped(rows, n, k, Epilogue::Gelu, a, b, b_stride, c);
        }
        self.gemm
            .grouped(rows, n, k, Epilogue::None, a, b, b_stride, c)?;
        self.k.gelu_inplace(c, rows.iter().sum::<usize>() * n)
    }
}
