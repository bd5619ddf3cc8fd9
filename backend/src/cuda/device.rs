//! One GPU of the NCCL collectives (`collectives`, `nccl`): its primary context (shared with
//! burn-cuda: cudarc's [`CudaContext::new`] retains it, as cubecl does), a stream of its own for
//! NCCL, and the device addresses of burn-cuda's buffers. cubecl's stream is not this one, so
//! ordering with burn is by synchronisation: [`Gpu::after_burn`] before NCCL reads what burn
//! wrote, [`Gpu::sync`] before burn reads what NCCL wrote. (The compute seam does not use this
//! module: its kernels run on burn's own stream, see `buffer`.)

use super::error::{driver, CudaError, Result};
use burn::tensor::backend::Backend;
use burn::tensor::bf16;
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cudarc::driver::{CudaContext, CudaStream};
use std::sync::Arc;

/// burn's CUDA backend without the fusion decorator: bf16 floats, i32 ints.
pub type CubeBf16 = CubeBackend<CudaRuntime, bf16, i32, u8>;

/// burn's CUDA device handle.
pub type Device = burn_cuda::CudaDevice;

/// One GPU: burn's device, the primary context, and the CUDA path's stream on it.
#[derive(Debug)]
pub struct Gpu {
    ordinal: usize,
    device: Device,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
}

impl Gpu {
    /// Opens GPU `ordinal`: retains its primary context and creates a non-blocking stream.
    pub fn open(ordinal: usize) -> Result<Self> {
        let count = CudaContext::device_count().map_err(driver("cuDeviceGetCount"))?;
        if ordinal >= count.max(0) as usize {
            return Err(CudaError::Invalid(format!(
                "GPU {ordinal} asked for, but this machine has {count} CUDA device(s)"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(driver("cuDevicePrimaryCtxRetain"))?;
        // SAFETY: buffers here are raw addresses, never cudarc `CudaSlice`s, so cudarc's
        // per-slice event tracking has nothing to track; every ordering is explicit.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(driver("cuStreamCreate"))?;
        Ok(Self {
            ordinal,
            device: Device::new(ordinal),
            ctx,
            stream,
        })
    }

    /// The device's ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The primary context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The raw stream handle, for cuBLAS, NCCL and kernel launches.
    pub fn raw_stream(&self) -> cudarc::driver::sys::CUstream {
        self.stream.cu_stream()
    }

    /// Makes the primary context current on the calling thread.
    pub fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(driver("cuCtxSetCurrent"))
    }

    /// Waits until the CUDA path's stream is idle.
    pub fn sync(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(driver("cuStreamSynchronize"))
    }

    /// Waits until burn's queued work on this device is done, so the CUDA path may read what burn
    /// wrote (and allocated: cubecl allocates stream-ordered).
    pub fn after_burn(&self) -> Result<()> {
        CubeBf16::sync(&self.device).map_err(|e| CudaError::Burn(format!("sync: {e:?}")))?;
        self.bind()
    }
}

/// Element types of NCCL buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    /// bfloat16.
    Bf16,
    /// 32-bit float.
    F32,
}

impl Elem {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Elem::Bf16 => 2,
            Elem::F32 => 4,
        }
    }
}

/// The device address of burn tensor `t`'s buffer (after the work queued on it).
pub fn address(t: &CubeTensor<CudaRuntime>) -> Result<u64> {
    if !t.is_contiguous() {
        return Err(CudaError::Invalid(
            "the CUDA path needs contiguous tensors (call `.contiguous()` first)".into(),
        ));
    }
    let res = t
        .client
        .get_resource(t.handle.clone())
        .map_err(|e| CudaError::Burn(format!("get_resource: {e:?}")))?;
    Ok(res.resource().ptr)
}
