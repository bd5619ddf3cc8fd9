//! Collectives over W GPUs of one process through NCCL (cudarc's `nccl` bindings).
//!
//! One communicator per GPU of the group, made together by `ncclCommInitAll`. One host thread
//! drives every rank: each collective issues the per-rank calls between `ncclGroupStart` and
//! `ncclGroupEnd` (NCCL's rule for one thread and several devices), each on that rank's stream of
//! the CUDA path, so collectives are ordered with the kernels and GEMMs around them without host
//! synchronisation. Buffers are raw device addresses (burn-cuda's buffers). The all-to-all is a
//! grouped set of send/recv pairs, so its chunks may have any sizes and addresses.

use super::device::{Elem, Gpu};
use super::error::{nccl, CudaError, Result};
use cudarc::nccl::{result as nr, sys as ns};
use std::ffi::c_void;

fn dtype(e: Elem) -> ns::ncclDataType_t {
    match e {
        Elem::Bf16 => ns::ncclDataType_t::ncclBfloat16,
        Elem::F32 => ns::ncclDataType_t::ncclFloat32,
    }
}

/// One message of an all-to-all or a point-to-point exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    /// Sending rank.
    pub from: usize,
    /// Device address on the sender.
    pub src: u64,
    /// Receiving rank.
    pub to: usize,
    /// Device address on the receiver.
    pub dst: u64,
    /// Elements.
    pub count: usize,
}

/// The messages of one exchange. Each rank issues its sends and receives in message order, so
/// between any two ranks the i-th send matches the i-th receive, as NCCL requires.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exchange {
    /// The messages, in issue order.
    pub messages: Vec<Message>,
}

impl Exchange {
    /// Adds one message of `count` elements from rank `from` (at `src`) to rank `to` (at `dst`).
    pub fn push(&mut self, from: usize, src: u64, to: usize, dst: u64, count: usize) {
        self.messages.push(Message {
            from,
            src,
            to,
            dst,
            count,
        });
    }

    /// Fails unless every rank named is inside a group of `world`.
    pub fn validate(&self, world: usize) -> Result<()> {
        match self
            .messages
            .iter()
            .find(|m| m.from >= world || m.to >= world)
        {
            Some(m) => Err(CudaError::Invalid(format!(
                "message from rank {} to rank {} in a group of {world}",
                m.from, m.to
            ))),
            None => Ok(()),
        }
    }
}

/// NCCL communicators for a group of GPUs driven by one thread.
#[derive(Debug)]
pub struct Collectives {
    comms: Vec<ns::ncclComm_t>,
    streams: Vec<cudarc::driver::sys::CUstream>,
    contexts: Vec<std::sync::Arc<cudarc::driver::CudaContext>>,
}

impl Collectives {
    /// One communicator per GPU of `gpus` (rank = position), by `ncclCommInitAll`.
    pub fn new(gpus: &[&Gpu]) -> Result<Self> {
        if gpus.is_empty() {
            return Err(CudaError::Invalid("a collective group needs a GPU".into()));
        }
        let ordinals: Vec<i32> = gpus.iter().map(|g| g.ordinal() as i32).collect();
        let mut comms = vec![std::ptr::null_mut(); gpus.len()];
        // SAFETY: comms has room for one communicator per listed device.
        unsafe { nr::comm_init_all(comms.as_mut_ptr(), gpus.len() as i32, ordinals.as_ptr()) }
            .map_err(nccl("ncclCommInitAll"))?;
        Ok(Self {
            comms,
            streams: gpus.iter().map(|g| g.raw_stream()).collect(),
            contexts: gpus.iter().map(|g| g.context().clone()).collect(),
        })
    }

    /// Ranks in the group.
    pub fn world(&self) -> usize {
        self.comms.len()
    }

    /// Runs `call(rank, comm, stream)` for every rank inside one NCCL group.
    fn grouped(
        &self,
        what: &'static str,
        mut call: impl FnMut(usize, ns::ncclComm_t, ns::cudaStream_t) -> Result<()>,
    ) -> Result<()> {
        nr::group_start().map_err(nccl("ncclGroupStart"))?;
        let mut first_err = None;
        for r in 0..self.world() {
            let res = self.contexts[r]
                .bind_to_thread()
                .map_err(super::error::driver("cuCtxSetCurrent"))
                .and_then(|_| call(r, self.comms[r], self.streams[r] as _));
            if let Err(e) = res {
                first_err = Some(e);
                break;
            }
        }
        let end = nr::group_end().map_err(nccl(what));
        match first_err {
            Some(e) => Err(e),
            None => end.map(|_| ()),
        }
    }

    fn check_len<T>(&self, v: &[T], what: &str) -> Result<()> {
        if v.len() != self.world() {
            return Err(CudaError::Invalid(format!(
                "{what}: {} buffers for {} ranks",
                v.len(),
                self.world()
            )));
        }
        Ok(())
    }

    /// Sum over ranks: rank `r` reads `count` elements at `send[r]` and writes the sum at
    /// `recv[r]` (may equal `send[r]`: in place).
    pub fn all_reduce(&self, send: &[u64], recv: &[u64], count: usize, elem: Elem) -> Result<()> {
        self.check_len(send, "all_reduce")?;
        self.check_len(recv, "all_reduce")?;
        self.grouped("ncclAllReduce", |r, comm, stream| {
            // SAFETY: the caller guarantees `count` elements at both addresses on rank r's GPU.
            unsafe {
                nr::all_reduce(
                    send[r] as *const c_void,
                    recv[r] as *mut c_void,
                    count,
                    dtype(elem),
                    ns::ncclRedOp_t::ncclSum,
                    comm,
                    stream,
                )
            }
            .map(|_| ())
            .map_err(nccl("ncclAllReduce"))
        })
    }

    /// Rank `r` contributes `count` elements at `send[r]`; every rank receives all ranks' parts,
    /// in rank order, at `recv[r]` (`world * count` elements).
    pub fn all_gather(&self, send: &[u64], recv: &[u64], count: usize, elem: Elem) -> Result<()> {
        self.check_len(send, "all_gather")?;
        self.check_len(recv, "all_gather")?;
        self.grouped("ncclAllGather", |r, comm, stream| {
            // SAFETY: send holds count elements, recv world * count, on rank r's GPU.
            unsafe {
                nr::all_gather(
                    send[r] as *const c_void,
                    recv[r] as *mut c_void,
                    count,
                    dtype(elem),
                    comm,
                    stream,
                )
            }
            .map(|_| ())
            .map_err(nccl("ncclAllGather"))
        })
    }

    /// Sum over ranks, scattered: rank `r` reads `world * count` elements at `send[r]` and
    /// receives part `r` of the sum (`count` elements) at `recv[r]`.
    pub fn reduce_scatter(
        &self,
        send: &[u64],
        recv: &[u64],
        count: usize,
        elem: Elem,
    ) -> Result<()> {
        self.check_len(send, "reduce_scatter")?;
        self.check_len(recv, "reduce_scatter")?;
        self.grouped("ncclReduceScatter", |r, comm, stream| {
            // SAFETY: send holds world * count elements, recv count, on rank r's GPU.
            unsafe {
                nr::reduce_scatter(
                    send[r] as *const c_void,
                    recv[r] as *mut c_void,
                    count,
                    dtype(elem),
                    ns::ncclRedOp_t::ncclSum,
                    comm,
                    stream,
                )
            }
            .map(|_| ())
            .map_err(nccl("ncclReduceScatter"))
        })
    }

    /// Every message of `x` in one NCCL group: an all-to-all (any chunk sizes and addresses) or
    /// point-to-point send/recv between pipeline stages.
    pub fn exchange(&self, x: &Exchange, elem: Elem) -> Result<()> {
        x.validate(self.world())?;
        self.grouped("ncclGroupEnd(send/recv)", |r, comm, stream| {
            for m in x.messages.iter().filter(|m| m.from == r) {
                // SAFETY: the message's source holds `count` elements on rank r's GPU.
                unsafe {
                    nr::send(
                        m.src as *const c_void,
                        m.count,
                        dtype(elem),
                        m.to as i32,
                        comm,
                        stream,
                    )
                }
                .map_err(nccl("ncclSend"))?;
            }
            for m in x.messages.iter().filter(|m| m.to == r) {
                // SAFETY: the message's destination holds `count` elements on rank r's GPU.
                unsafe {
                    nr::recv(
                        m.dst as *mut c_void,
                        m.count,
                        dtype(elem),
                        m.from as i32,
                        comm,
                        stream,
                    )
                }
                .map_err(nccl("ncclRecv"))?;
            }
            Ok(())
        })
    }
}

impl Drop for Collectives {
    fn drop(&mut self) {
        for (r, &c) in self.comms.iter().enumerate() {
            let _ = self.contexts[r].bind_to_thread();
            // SAFETY: each communicator was created by `new` and is destroyed once.
            let _ = unsafe { nr::comm_destroy(c) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_outside_the_group_are_rejected() {
        let mut x = Exchange::default();
        x.push(0, 0, 3, 0, 1);
        assert!(x.validate(2).is_err());
        assert!(x.validate(4).is_ok());
    }
}
