//! burn-cuda tensors as the compute seam's kernels see them: a device address, an element count
//! and the stream to enqueue on.
//!
//! A [`Borrowed`] view is made from a burn-cuda tensor through cubecl's `get_resource`, which
//! (with the vendored patch, vendor/cubecl-cuda/README.moe-opt.md) also returns the calling
//! thread's stream after making it wait for the buffer's pending writes. Work enqueued on that
//! stream is ordered with burn's own kernels on this thread: no host synchronisation. The view
//! borrows the tensor, so the memory outlives every use the borrow allows; memory that burn
//! frees after the borrow ends is reused only by later work on the same stream (cubecl pools
//! memory per stream), so work already enqueued is never overwritten.

use super::error::{CudaError, Result};
use burn::tensor::{Int, Tensor, TensorPrimitive};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, FloatElement};
use cudarc::driver::sys::CUstream;
use std::marker::PhantomData;

/// burn's CUDA backend without the fusion decorator, floats `F`, i32 integers.
pub(crate) type Cuda<F> = CubeBackend<CudaRuntime, F, i32, u8>;

/// A burn-cuda tensor's primitive, contiguous (copied when it was a strided view).
#[derive(Debug, Clone)]
pub(crate) struct Prim(CubeTensor<CudaRuntime>);

impl Prim {
    /// The float tensor `t`, contiguous.
    pub fn float<F: FloatElement, const D: usize>(t: Tensor<Cuda<F>, D>) -> Prim {
        let p = match t.into_primitive() {
            TensorPrimitive::Float(p) => p,
            TensorPrimitive::QFloat(p) => p,
        };
        Prim::contiguous(p)
    }

    /// The integer tensor `t`, contiguous.
    pub fn int<F: FloatElement, const D: usize>(t: Tensor<Cuda<F>, D, Int>) -> Prim {
        Prim::contiguous(t.into_primitive())
    }

    fn contiguous(p: CubeTensor<CudaRuntime>) -> Prim {
        if p.is_contiguous() {
            Prim(p)
        } else {
            Prim(into_contiguous(p))
        }
    }

    /// Elements.
    pub fn len(&self) -> usize {
        self.0.meta.shape().num_elements()
    }

    /// Bytes per element.
    pub fn elem_bytes(&self) -> usize {
        self.0.dtype.size()
    }

    /// Borrows the buffer for foreign work on the calling thread's stream.
    pub fn borrow(&self) -> Result<Borrowed<'_>> {
        let res = self
            .0
            .client
            .get_resource(self.0.handle.clone())
            .map_err(|e| CudaError::Burn(format!("get_resource: {e:?}")))?;
        let r = res.resource();
        if r.stream.is_null() {
            return Err(CudaError::Burn(
                "cubecl returned no stream with the resource: the vendored cubecl-cuda patch is \
                 not in effect (see vendor/cubecl-cuda/README.moe-opt.md)"
                    .into(),
            ));
        }
        let bytes = self.len() * self.elem_bytes();
        if (r.size as usize) < bytes {
            return Err(CudaError::Burn(format!(
                "a resource of {} bytes for a tensor of {bytes}",
                r.size
            )));
        }
        Ok(Borrowed {
            addr: r.ptr,
            stream: r.stream,
            len: self.len(),
            elem_bytes: self.elem_bytes(),
            _tensor: PhantomData,
        })
    }

    /// Back to a burn float tensor of `dims` (their product must be the element count).
    pub fn into_float<F: FloatElement, const D: usize>(
        self,
        dims: [usize; D],
    ) -> Tensor<Cuda<F>, D> {
        let n = self.len();
        Tensor::<Cuda<F>, 1>::from_primitive(TensorPrimitive::Float(self.0))
            .reshape([n])
            .reshape(dims)
    }

    /// Back to a burn integer tensor (flat).
    pub fn into_int<F: FloatElement>(self) -> Tensor<Cuda<F>, 1, Int> {
        let n = self.len();
        Tensor::<Cuda<F>, 1, Int>::from_primitive(self.0).reshape([n])
    }
}

/// New, uninitialised float buffer of `dims` on `device`.
pub(crate) fn empty<F: FloatElement, const D: usize>(
    dims: [usize; D],
    device: &burn_cuda::CudaDevice,
) -> Prim {
    Prim::float(Tensor::<Cuda<F>, D>::empty(dims, device))
}

/// New, uninitialised i32 buffer of `len` on `device` (at least one element).
pub(crate) fn empty_int<F: FloatElement>(len: usize, device: &burn_cuda::CudaDevice) -> Prim {
    Prim::int(Tensor::<Cuda<F>, 1, Int>::empty([len.max(1)], device))
}

/// A device buffer borrowed from a [`Prim`]: address, elements, and the stream that work on it
/// must be enqueued on. It cannot outlive the tensor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Borrowed<'t> {
    addr: u64,
    stream: CUstream,
    len: usize,
    elem_bytes: usize,
    _tensor: PhantomData<&'t Prim>,
}

impl<'t> Borrowed<'t> {
    /// The part of the buffer from element `first` on.
    pub fn at(&self, first: usize) -> Result<Borrowed<'t>> {
        if first > self.len {
            return Err(CudaError::Invalid(format!(
                "element {first} of a buffer of {}",
                self.len
            )));
        }
        Ok(Borrowed {
            addr: self.addr + (first * self.elem_bytes) as u64,
            len: self.len - first,
            ..*self
        })
    }

    /// Elements from the first on.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The device address of the first element.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// The stream to enqueue work on.
    pub fn stream(&self) -> CUstream {
        self.stream
    }

    /// Fails unless the elements are `bytes` wide (`what` names the buffer).
    pub fn is_elem(&self, bytes: usize, what: &str) -> Result<()> {
        if self.elem_bytes != bytes {
            return Err(CudaError::Invalid(format!(
                "{what}: elements of {} bytes where {bytes} are needed",
                self.elem_bytes
            )));
        }
        Ok(())
    }

    /// Fails unless the buffer holds at least `n` elements (`what` names it).
    pub fn holds(&self, n: usize, what: &str) -> Result<()> {
        if self.len < n {
            return Err(CudaError::Invalid(format!(
                "{what}: a buffer of {} elements where {n} are needed",
                self.len
            )));
        }
        Ok(())
    }

    /// Fails unless the address is a multiple of `align` bytes.
    pub fn aligned(&self, what: &'static str, align: u64) -> Result<()> {
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
