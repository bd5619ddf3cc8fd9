//! The executor's collectives over one GPU per rank, through NCCL on burn-cuda's own buffers.
//!
//! [`NcclCollectives`] implements the executor's [`Collectives`] trait when rank `r` of the mesh
//! computes on GPU `r` (see [`super::exec`]). Every float collective is one grouped NCCL call
//! ([`nccl::Collectives`], the engine `moe-opt bench --backend cuda` measures): the members'
//! values are made contiguous in the layout NCCL moves ([`super::layout`]), their device
//! addresses read through cubecl, the output buffers allocated by burn on each member's GPU, and
//! the results viewed back as the IR's shapes. A group of ranks gets its own communicator, made on
//! first use by `ncclCommInitAll` over the group's GPUs in group order; send/recv between pipeline
//! stages is a grouped `ncclSend`/`ncclRecv` pair on the communicator of all GPUs, issued when the
//! send runs, the received tensor stored in the mailbox on the receiving GPU.
//!
//! **Ordering.** cubecl 0.10 keeps its streams private, so ordering is by synchronisation (as in
//! [`super::device`]): burn's queued work on each GPU involved is waited for before NCCL reads
//! burn's buffers (the device addresses are read first, which also makes this thread's stream
//! wait for any other stream that wrote them), and NCCL's streams are waited for before the
//! results are handed back to burn.
//!
//! **Integers** (token ids, routing indices, expert counts) live on the host in the executor
//! (`Ints`); every rank of this process reads the same host memory, so their collectives are the
//! exact host ones of [`InProcess`]. They are small metadata: no GPU buffer carries them.
//!
//! **Failures** are kept and reported through [`Collectives::take_failure`]; the executor turns
//! them into the error of the node that made the call.

use super::device::{address, Elem, Gpu};
use super::error::{CudaError, Result};
use super::layout::{blocks_outermost, concat_blocks, scaled};
use super::nccl::{self, Exchange};
use crate::collective::{Collectives, InProcess, Tag};
use crate::value::{Dense, Local};
use burn::tensor::{DType, Tensor, TensorPrimitive};
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{CubeBackend, FloatElement};
use burn_cuda::CudaDevice;
use std::collections::BTreeMap;

/// burn's CUDA backend without the fusion decorator, computing in `F` (f32 or bf16): its tensors
/// own plain device buffers whose addresses NCCL can use.
pub(crate) type Cuda<F> = CubeBackend<CudaRuntime, F, i32, u8>;

/// NCCL collectives for ranks `0..W` on GPUs `0..W` of this process.
#[derive(Debug)]
pub(crate) struct NcclCollectives<F: FloatElement> {
    /// GPU `r` (rank `r`), with the stream NCCL runs on.
    gpus: Vec<Gpu>,
    /// Communicators by the GPUs of their group, in group order.
    comms: BTreeMap<Vec<usize>, nccl::Collectives>,
    /// Messages between pipeline stages, by (channel, receiving rank), on the receiver's GPU.
    mailbox: BTreeMap<(Tag, u64), Local<Cuda<F>>>,
    /// The host collectives of integer values.
    host: InProcess<Cuda<F>>,
    /// The failure of the last call.
    failure: Option<String>,
}

// SAFETY: NCCL communicators (raw pointers inside `nccl::Collectives`) are used only by the
// methods that take `&mut self`; through `&self` (what the executor shares with the threads
// running local ops) only `device_of` and `ready` are reachable, which read plain data.
unsafe impl<F: FloatElement> Sync for NcclCollectives<F> {}

/// A burn float tensor's cubecl tensor, contiguous (copied when it is a strided view).
fn contiguous<F: FloatElement, const D: usize>(t: Tensor<Cuda<F>, D>) -> CubeTensor<CudaRuntime> {
    match t.into_primitive() {
        TensorPrimitive::Float(p) => into_contiguous(p),
        TensorPrimitive::QFloat(p) => p,
    }
}

/// A fresh flat buffer of `n` elements on GPU `gpu`, as a burn tensor and its cubecl tensor
/// (sharing the buffer).
fn output<F: FloatElement>(n: usize, gpu: usize) -> (Tensor<Cuda<F>, 1>, CubeTensor<CudaRuntime>) {
    let t = Tensor::<Cuda<F>, 1>::empty([n], &CudaDevice::new(gpu));
    let p = contiguous(t.clone());
    (t, p)
}

/// NCCL's element type of a cubecl tensor.
fn elem(t: &CubeTensor<CudaRuntime>) -> Result<Elem> {
    match t.dtype {
        DType::F32 => Ok(Elem::F32),
        DType::BF16 => Ok(Elem::Bf16),
        other => Err(CudaError::Invalid(format!(
            "NCCL collectives of {other:?} tensors are not supported (f32 or bf16)"
        ))),
    }
}

/// The float values of `parts`, or `None` when they are integers.
fn floats<F: FloatElement>(parts: &[Local<Cuda<F>>]) -> Option<Vec<Dense<Cuda<F>>>> {
    parts
        .iter()
        .map(|p| match p {
            Local::Float(d) => Some(d.clone()),
            _ => None,
        })
        .collect()
}

impl<F: FloatElement> NcclCollectives<F> {
    /// Opens GPUs `0..world` (rank `r` on GPU `r`). Communicators are made on first use.
    pub(crate) fn new(world: usize) -> Result<Self> {
        let gpus = (0..world).map(Gpu::open).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            gpus,
            comms: BTreeMap::new(),
            mailbox: BTreeMap::new(),
            host: InProcess::default(),
            failure: None,
        })
    }

    /// The GPUs of a group's values, in group order; each must be one of ours, once.
    fn devices(&self, parts: &[Dense<Cuda<F>>]) -> Result<Vec<usize>> {
        let devices: Vec<usize> = parts.iter().map(|p| p.t.device().index).collect();
        for (i, &d) in devices.iter().enumerate() {
            if d >= self.gpus.len() {
                return Err(CudaError::Invalid(format!(
                    "member {i} of the group holds its value on GPU {d}; this run has {} GPUs",
                    self.gpus.len()
                )));
            }
            if devices[..i].contains(&d) {
                return Err(CudaError::Invalid(format!(
                    "two members of the group hold their values on GPU {d}; NCCL needs one GPU per rank"
                )));
            }
        }
        Ok(devices)
    }

    /// Runs `call(comm, send, recv)` with the device addresses of `inputs` and `outputs`, on the
    /// communicator of the GPUs `group`, ordered after burn's work on the GPUs `touched` and
    /// waited for before returning.
    fn transfer(
        &mut self,
        group: &[usize],
        touched: &[usize],
        inputs: &[CubeTensor<CudaRuntime>],
        outputs: &[CubeTensor<CudaRuntime>],
        call: impl FnOnce(&nccl::Collectives, &[u64], &[u64]) -> Result<()>,
    ) -> Result<()> {
        let send = inputs.iter().map(address).collect::<Result<Vec<_>>>()?;
        let recv = outputs.iter().map(address).collect::<Result<Vec<_>>>()?;
        for &d in touched {
            self.gpus[d].after_burn()?;
        }
        if !self.comms.contains_key(group) {
            let gpus: Vec<&Gpu> = group.iter().map(|&d| &self.gpus[d]).collect();
            let comm = nccl::Collectives::new(&gpus)?;
            self.comms.insert(group.to_vec(), comm);
        }
        let comm = self
            .comms
            .get(group)
            .ok_or_else(|| CudaError::Invalid("communicator missing".into()))?;
        call(comm, &send, &recv)?;
        for &d in touched {
            self.gpus[d].sync()?;
        }
        Ok(())
    }

    /// Sum over the group.
    fn all_reduce_on(&mut self, parts: &[Dense<Cuda<F>>]) -> Result<Vec<Dense<Cuda<F>>>> {
        let devices = self.devices(parts)?;
        let shape = parts[0].shape();
        let n: usize = shape.iter().product();
        if n == 0 {
            return Ok(parts.to_vec());
        }
        let inputs: Vec<_> = parts.iter().map(|p| contiguous(p.t.clone())).collect();
        let (outs, prims): (Vec<_>, Vec<_>) = devices.iter().map(|&d| output::<F>(n, d)).unzip();
        let e = elem(&inputs[0])?;
        self.transfer(&devices, &devices, &inputs, &prims, |c, s, r| {
            c.all_reduce(s, r, n, e)
        })?;
        Ok(outs
            .into_iter()
            .map(|t| Dense::of(t).reshape(&shape))
            .collect())
    }

    /// The members' values concatenated along `dim`, on every member.
    fn all_gather_on(
        &mut self,
        parts: &[Dense<Cuda<F>>],
        dim: usize,
    ) -> Result<Vec<Dense<Cuda<F>>>> {
        let devices = self.devices(parts)?;
        let (w, shape) = (parts.len(), parts[0].shape());
        let n: usize = shape.iter().product();
        if n == 0 {
            return Ok(zeros(&devices, &scaled(&shape, dim, w, 1)));
        }
        let inputs: Vec<_> = parts.iter().map(|p| contiguous(p.t.clone())).collect();
        let (outs, prims): (Vec<_>, Vec<_>) =
            devices.iter().map(|&d| output::<F>(w * n, d)).unzip();
        let e = elem(&inputs[0])?;
        self.transfer(&devices, &devices, &inputs, &prims, |c, s, r| {
            c.all_gather(s, r, n, e)
        })?;
        Ok(outs
            .into_iter()
            .map(|t| concat_blocks(t, w, &shape, dim))
            .collect())
    }

    /// Member `i` gets block `i` along `dim` of the sum.
    fn reduce_scatter_on(
        &mut self,
        parts: &[Dense<Cuda<F>>],
        dim: usize,
    ) -> Result<Vec<Dense<Cuda<F>>>> {
        let devices = self.devices(parts)?;
        let (w, shape) = (parts.len(), parts[0].shape());
        let block = scaled(&shape, dim, 1, w);
        let count: usize = block.iter().product();
        if count == 0 {
            return Ok(zeros(&devices, &block));
        }
        let inputs: Vec<_> = parts
            .iter()
            .map(|p| contiguous(blocks_outermost(p.clone(), dim, w)))
            .collect();
        let (outs, prims): (Vec<_>, Vec<_>) =
            devices.iter().map(|&d| output::<F>(count, d)).unzip();
        let e = elem(&inputs[0])?;
        self.transfer(&devices, &devices, &inputs, &prims, |c, s, r| {
            c.reduce_scatter(s, r, count, e)
        })?;
        Ok(outs
            .into_iter()
            .map(|t| Dense::of(t).reshape(&block))
            .collect())
    }

    /// Member `i` gets block `i` along `split` of every member's value, concatenated along
    /// `concat`: one grouped set of send/recv pairs.
    fn all_to_all_on(
        &mut self,
        parts: &[Dense<Cuda<F>>],
        split: usize,
        concat: usize,
    ) -> Result<Vec<Dense<Cuda<F>>>> {
        let devices = self.devices(parts)?;
        let (w, shape) = (parts.len(), parts[0].shape());
        let block = scaled(&shape, split, 1, w);
        let count: usize = block.iter().product();
        if count == 0 {
            return Ok(zeros(&devices, &scaled(&block, concat, w, 1)));
        }
        let inputs: Vec<_> = parts
            .iter()
            .map(|p| contiguous(blocks_outermost(p.clone(), split, w)))
            .collect();
        let (outs, prims): (Vec<_>, Vec<_>) =
            devices.iter().map(|&d| output::<F>(w * count, d)).unzip();
        let e = elem(&inputs[0])?;
        let run = (count * e.size()) as u64;
        self.transfer(&devices, &devices, &inputs, &prims, |c, s, r| {
            let mut x = Exchange::default();
            for (j, &src) in s.iter().enumerate() {
                for (i, &dst) in r.iter().enumerate() {
                    x.push(j, src + i as u64 * run, i, dst + j as u64 * run, count);
                }
            }
            c.exchange(&x, e)
        })?;
        Ok(outs
            .into_iter()
            .map(|t| concat_blocks(t, w, &block, concat))
            .collect())
    }

    /// `value` moved to GPU `to` (one grouped ncclSend/ncclRecv pair); unchanged when it is
    /// there already.
    fn move_to(&mut self, value: Dense<Cuda<F>>, to: usize) -> Result<Dense<Cuda<F>>> {
        let from = self.devices(std::slice::from_ref(&value))?[0];
        if to >= self.gpus.len() {
            return Err(CudaError::Invalid(format!(
                "a message for rank {to}, but this run has {} GPUs",
                self.gpus.len()
            )));
        }
        let shape = value.shape();
        let n: usize = shape.iter().product();
        if from == to {
            return Ok(value);
        }
        if n == 0 {
            return Ok(Dense::zeros(&shape, &CudaDevice::new(to)));
        }
        let input = contiguous(value.t);
        let (out, prim) = output::<F>(n, to);
        let e = elem(&input)?;
        let world: Vec<usize> = (0..self.gpus.len()).collect();
        self.transfer(&world, &[from, to], &[input], &[prim], |c, s, r| {
            let mut x = Exchange::default();
            x.push(from, s[0], to, r[0], n);
            c.exchange(&x, e)
        })?;
        Ok(Dense::of(out).reshape(&shape))
    }

    /// The float results of `result`, or (recording the failure) `fallback`, which has one value
    /// per member.
    fn settle(
        &mut self,
        what: &str,
        result: Result<Vec<Dense<Cuda<F>>>>,
        fallback: Vec<Local<Cuda<F>>>,
    ) -> Vec<Local<Cuda<F>>> {
        match result {
            Ok(v) => v.into_iter().map(Local::Float).collect(),
            Err(e) => {
                self.failure = Some(format!("NCCL {what}: {e}"));
                fallback
            }
        }
    }
}

/// Zeros of `shape` on each of `devices`.
fn zeros<F: FloatElement>(devices: &[usize], shape: &[usize]) -> Vec<Dense<Cuda<F>>> {
    devices
        .iter()
        .map(|&d| Dense::zeros(shape, &CudaDevice::new(d)))
        .collect()
}

impl<F: FloatElement> Collectives<Cuda<F>> for NcclCollectives<F> {
    fn all_reduce(&mut self, parts: Vec<Local<Cuda<F>>>) -> Vec<Local<Cuda<F>>> {
        match floats(&parts) {
            None => self.host.all_reduce(parts),
            Some(d) => {
                let r = self.all_reduce_on(&d);
                self.settle("all_reduce", r, parts)
            }
        }
    }

    fn all_gather(&mut self, parts: Vec<Local<Cuda<F>>>, dim: usize) -> Vec<Local<Cuda<F>>> {
        match floats(&parts) {
            None => self.host.all_gather(parts, dim),
            Some(d) => {
                let r = self.all_gather_on(&d, dim);
                self.settle("all_gather", r, parts)
            }
        }
    }

    fn reduce_scatter(&mut self, parts: Vec<Local<Cuda<F>>>, dim: usize) -> Vec<Local<Cuda<F>>> {
        match floats(&parts) {
            None => self.host.reduce_scatter(parts, dim),
            Some(d) => {
                let r = self.reduce_scatter_on(&d, dim);
                self.settle("reduce_scatter", r, parts)
            }
        }
    }

    fn all_to_all(
        &mut self,
        parts: Vec<Local<Cuda<F>>>,
        split_dim: usize,
        concat_dim: usize,
    ) -> Vec<Local<Cuda<F>>> {
        match floats(&parts) {
            None => self.host.all_to_all(parts, split_dim, concat_dim),
            Some(d) => {
                let r = self.all_to_all_on(&d, split_dim, concat_dim);
                self.settle("all_to_all (grouped send/recv)", r, parts)
            }
        }
    }

    fn send(&mut self, tag: Tag, to: u64, value: Local<Cuda<F>>) {
        let value = match value.plain() {
            Local::Int(i) => Local::Int(i),
            Local::Float(d) => match self.move_to(d, to as usize) {
                Ok(d) => Local::Float(d),
                Err(e) => {
                    self.failure = Some(format!("NCCL send/recv: {e}"));
                    return;
                }
            },
            lazy => lazy,
        };
        self.mailbox.insert((tag, to), value);
    }

    fn recv(&mut self, tag: Tag, to: u64) -> Option<Local<Cuda<F>>> {
        self.mailbox.remove(&(tag, to))
    }

    fn ready(&self, tag: Tag, to: u64) -> bool {
        self.mailbox.contains_key(&(tag, to))
    }

    fn device_of(&self, rank: u64) -> Option<CudaDevice> {
        Some(CudaDevice::new(rank as usize))
    }

    fn take_failure(&mut self) -> Option<String> {
        self.failure.take()
    }

    /// One host thread drives every GPU, as in the bench's NCCL engine.
    fn threaded(&self) -> bool {
        false
    }
}
