//! One GPU as the CUDA path sees it, and the device addresses of burn-cuda's buffers.
//!
//! burn-cuda (cubecl 0.10) and this module share the device's **primary context**: cudarc's
//! [`CudaContext::new`] retains it, as cubecl does. Every buffer here is allocated by burn (a
//! plain, unfused [`CubeBf16`] tensor) and kept alive by its [`Buf`]; this module only reads its
//! address. Work of the CUDA path runs on its own stream ([`Gpu::stream`]). cubecl 0.10 does not
//! expose its streams, so ordering with burn is by synchronisation, not events:
//! [`Gpu::after_burn`] before reading what burn wrote, [`Gpu::sync`] before burn reads what this
//! path wrote. Inside a benchmark step nothing goes through burn, so no synchronisation is paid.

use super::error::{driver, CudaError, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{bf16, DType, Int, Tensor, TensorPrimitive};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cudarc::driver::{CudaContext, CudaStream};
use std::sync::Arc;

/// burn's CUDA backend without the fusion decorator: bf16 floats, i32 ints. Its tensors own plain
/// device buffers whose addresses [`Buf`] can read.
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

    /// burn's handle of this device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The primary context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The CUDA path's stream.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The raw stream handle, for cuBLAS, NCCL and kernel launches.
    pub fn raw_stream(&self) -> cudarc::driver::sys::CUstream {
        self.stream.cu_stream()
    }

    /// Makes the primary context current on the calling thread.
    pub fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(driver("cuCtxSetCurrent"))
    }

    /// The device's name, e.g. `NVIDIA H200`.
    pub fn name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "unknown GPU".into())
    }

    /// Compute capability (major, minor).
    pub fn compute_capability(&self) -> Result<(i32, i32)> {
        self.ctx
            .compute_capability()
            .map_err(driver("cuDeviceGetAttribute"))
    }

    /// Free and total device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.bind()?;
        self.ctx.mem_get_info().map_err(driver("cuMemGetInfo"))
    }

    /// Waits until the CUDA path's stream is idle.
    pub fn sync(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(driver("cuStreamSynchronize"))
    }

    /// Copies `data` to the device address `dst` (stream-ordered, then waits).
    pub fn upload<T: Copy>(&self, dst: u64, data: &[T]) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller guarantees `dst` holds `data.len()` elements; the host slice lives
        // until the synchronisation below.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, data, self.raw_stream()) }
            .map_err(driver("cuMemcpyHtoDAsync"))?;
        self.sync()
    }

    /// Reads `n` elements at the device address `src` (after the stream's queued work).
    pub fn download<T: Copy + Default>(&self, src: u64, n: usize) -> Result<Vec<T>> {
        self.bind()?;
        let mut v = vec![T::default(); n];
        // SAFETY: the caller guarantees `src` holds `n` elements; `v` lives until the sync.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(&mut v, src, self.raw_stream()) }
            .map_err(driver("cuMemcpyDtoHAsync"))?;
        self.sync()?;
        Ok(v)
    }

    /// A timing event (recorded on this GPU's stream by [`Gpu::record`]).
    pub fn event(&self) -> Result<cudarc::driver::CudaEvent> {
        let flags = cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT;
        self.ctx
            .new_event(Some(flags))
            .map_err(driver("cuEventCreate"))
    }

    /// An event without timing, to wait for a point of the stream (the host spins on it).
    pub fn marker(&self) -> Result<cudarc::driver::CudaEvent> {
        self.ctx.new_event(None).map_err(driver("cuEventCreate"))
    }

    /// Records `e` on the stream.
    pub fn record(&self, e: &cudarc::driver::CudaEvent) -> Result<()> {
        e.record(&self.stream).map_err(driver("cuEventRecord"))
    }

    /// Waits until burn's queued work on this device is done, so the CUDA path may read what burn
    /// wrote (and allocated: cubecl allocates stream-ordered).
    pub fn after_burn(&self) -> Result<()> {
        CubeBf16::sync(&self.device).map_err(|e| CudaError::Burn(format!("sync: {e:?}")))?;
        self.bind()
    }
}

/// What keeps a [`Buf`]'s memory alive: the burn tensor that owns it.
#[derive(Debug)]
enum Owner {
    Float(Tensor<CubeBf16, 1>),
    Int(Tensor<CubeBf16, 1, Int>),
}

/// A device buffer owned by burn, with its address for cuBLAS, NCCL and the kernels.
#[derive(Debug)]
pub struct Buf {
    owner: Owner,
    addr: u64,
    bytes: usize,
}

/// Element types of [`Buf`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    /// bfloat16.
    Bf16,
    /// 32-bit float.
    F32,
    /// 32-bit signed integer.
    I32,
}

impl Elem {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Elem::Bf16 => 2,
            Elem::F32 | Elem::I32 => 4,
        }
    }
}

impl Buf {
    /// Allocates `len` elements of `elem` through burn on `gpu` (contents undefined).
    pub fn alloc(gpu: &Gpu, elem: Elem, len: usize) -> Result<Self> {
        let len = len.max(1);
        let owner = match elem {
            Elem::Bf16 => Owner::Float(Tensor::empty([len], (gpu.device(), DType::BF16))),
            Elem::F32 => Owner::Float(Tensor::empty([len], (gpu.device(), DType::F32))),
            Elem::I32 => Owner::Int(Tensor::empty([len], (gpu.device(), DType::I32))),
        };
        Self::from_owner(owner)
    }

    /// Takes over a flat int (i32) tensor.
    pub fn from_int(t: Tensor<CubeBf16, 1, Int>) -> Result<Self> {
        Self::from_owner(Owner::Int(t))
    }

    /// Takes over a float tensor of any rank (it is flattened; burn tensors made by
    /// `Tensor::empty`, `zeros`, `from_data` or `matmul` are contiguous).
    pub fn from_float<const D: usize>(t: Tensor<CubeBf16, D>) -> Result<Self> {
        let n = t.shape().num_elements();
        Self::from_owner(Owner::Float(t.reshape([n])))
    }

    fn from_owner(owner: Owner) -> Result<Self> {
        let prim: CubeTensor<CudaRuntime> = match &owner {
            Owner::Float(t) => match t.clone().into_primitive() {
                TensorPrimitive::Float(p) => p,
                TensorPrimitive::QFloat(_) => {
                    return Err(CudaError::Invalid(
                        "quantized tensors are not supported".into(),
                    ))
                }
            },
            Owner::Int(t) => t.clone().into_primitive(),
        };
        let addr = address(&prim)?;
        let bytes = prim.meta.shape().num_elements() * prim.dtype.size();
        Ok(Self { owner, addr, bytes })
    }

    /// The device address of the first element.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// The size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The address `offset` elements of `elem` in, checked against the buffer's size.
    pub fn at(&self, elem: Elem, offset: usize) -> Result<u64> {
        let off = offset * elem.size();
        if off > self.bytes {
            return Err(CudaError::Invalid(format!(
                "offset {off} bytes is past a buffer of {} bytes",
                self.bytes
            )));
        }
        Ok(self.addr + off as u64)
    }

    /// The float tensor that owns the buffer (flat), e.g. to read it back through burn.
    pub fn float_tensor(&self) -> Option<Tensor<CubeBf16, 1>> {
        match &self.owner {
            Owner::Float(t) => Some(t.clone()),
            Owner::Int(_) => None,
        }
    }

    /// Fails unless the address is a multiple of `align` bytes.
    pub fn check_aligned(&self, what: &'static str, align: u64) -> Result<()> {
        if self.addr % align != 0 {
            return Err(CudaError::Misaligned {
                what,
                addr: self.addr,
                align,
            });
        }
        Ok(())
    }
}

/// The device address of a contiguous cubecl tensor's first element.
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

/// Page-locked host memory for small device-to-host copies that must not stall the stream
/// (the per-expert token counts the PPMoE step needs on the host).
#[derive(Debug)]
pub struct PinnedI32 {
    ptr: *mut i32,
    len: usize,
    ctx: Arc<CudaContext>,
}

impl PinnedI32 {
    /// `len` page-locked i32 on the host, registered with `gpu`'s context.
    pub fn new(gpu: &Gpu, len: usize) -> Result<Self> {
        gpu.bind()?;
        let len = len.max(1);
        // SAFETY: plain page-locked allocation; freed once in Drop.
        let ptr = unsafe { cudarc::driver::result::malloc_host(len * 4, 0) }
            .map_err(driver("cuMemHostAlloc"))? as *mut i32;
        // SAFETY: the allocation holds `len` i32; zero them so reads are defined.
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
        Ok(Self {
            ptr,
            len,
            ctx: gpu.context().clone(),
        })
    }

    /// Queues a copy of the first `n` values from the device address `src` on `gpu`'s stream.
    /// Read them with [`PinnedI32::values`] after the stream (or an event recorded after this
    /// call) has been waited for.
    pub fn fetch(&mut self, gpu: &Gpu, src: u64, n: usize) -> Result<()> {
        if n > self.len {
            return Err(CudaError::Invalid(format!(
                "{n} values into a host buffer of {}",
                self.len
            )));
        }
        // SAFETY: the buffer holds `len >= n` i32 and outlives the copy (the caller waits
        // before reading or dropping it).
        let dst = unsafe { std::slice::from_raw_parts_mut(self.ptr, n) };
        // SAFETY: `src` holds `n` i32 on the device (caller's guarantee).
        unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, src, gpu.raw_stream()) }
            .map_err(driver("cuMemcpyDtoHAsync"))
    }

    /// The first `n` values (valid once the copy has completed).
    pub fn values(&self, n: usize) -> &[i32] {
        // SAFETY: the buffer holds `len` initialised i32.
        unsafe { std::slice::from_raw_parts(self.ptr, n.min(self.len)) }
    }
}

impl Drop for PinnedI32 {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: allocated by `malloc_host` in `new`, freed once.
        let _ = unsafe { cudarc::driver::result::free_host(self.ptr as *mut std::ffi::c_void) };
    }
}
