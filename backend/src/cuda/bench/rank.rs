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

    /// Chooses how up-projections apply GELU, by timing an `[m, k] x [k, n]` product into `c`
    /// both ways: fused into cuBLASLt's epilogue, or a plain GEMM then the GELU kernel. Returns
    /// the milliseconds per call (fused, separate); fused is NaN where cuBLASLt refuses it.
    #[allow(clippy::too_many_arguments)]
    pub fn choose_gelu(
        &mut self,
        a: u64,
        b: u64,
        c: u64,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<(f64, f64)> {
        let s = GemmShape::new(m, n, k);
        let fused_ok = match self.gemm.matmul(s, Epilogue::Gelu, a, b, c) {
            Ok(()) => true,
            Err(CudaError::Blas { .. }) => false,
            Err(e) => return Err(e),
        };
        self.gemm.matmul(s, Epilogue::None, a, b, c)?;
        self.k.gelu_inplace(c, m * n)?;
        let (start, end) = (self.gpu.event()?, self.gpu.event()?);
        let time = |this: &mut Self, fused: bool| -> Result<f64> {
            this.gpu.record(&start)?;
            for _ in 0..3 {
                if fused {
                    this.gemm.matmul(s, Epilogue::Gelu, a, b, c)?;
                } else {
                    this.gemm.matmul(s, Epilogue::None, a, b, c)?;
                    this.k.gelu_inplace(c, m * n)?;
                }
            }
            this.gpu.record(&end)?;
            let ms = start
                .elapsed_ms(&end)
                .map_err(super::super::error::driver("cuEventElapsedTime"))?;
            Ok(f64::from(ms) / 3.0)
        };
        let separate = time(self, false)?;
        let fused = if fused_ok {
            time(self, true)?
        } else {
            f64::NAN
        };
        self.fused_gelu = fused_ok && fused <= separate;
        Ok((fused, separate))
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
