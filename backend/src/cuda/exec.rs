//! `run --backend cuda --gpus W`: the generic executor on burn-cuda.
//!
//! The executor of [`crate::exec`] runs unchanged on burn's CUDA backend without the fusion
//! decorator ([`Cuda<F>`]: its tensors own plain device buffers, which NCCL needs, and its GEMMs
//! are the faster ones, see shared FACTS), computing in f32 or bf16. Placement:
//! - **W = 1**: every rank of the mesh on GPU 0, collectives the exact in-process ones on the
//!   device ([`OneGpu`]);
//! - **W = ranks of the mesh**: rank `r` on GPU `r`, collectives and send/recv through NCCL
//!   ([`NcclCollectives`]); pipeline stages, being ranks, are on different GPUs;
//! - any other W is an error ([`ExecError::Placement`]).
//!
//! burn keeps one default float type per GPU for the whole process, set at the GPU's first use:
//! a process computes on a GPU in one precision (a second one is refused, see `fix_precision`).
//! The ranks' local ops run on one host thread (burn-cuda gives each host thread its own
//! stream). Before anything runs, the CUDA libraries are loaded and the GPUs counted, so a machine without
//! them gets an error rather than a panic; a panic inside burn-cuda (an out-of-memory, a driver
//! failure) is caught and returned as [`ExecError::Cuda`].

use super::collectives::{Cuda, NcclCollectives};
use super::compute::CudaCompute;
use super::libs;
use super::one_gpu::OneGpu;
use crate::error::ExecError;
use crate::exec::{self, Executed, Feed};
use crate::run::Precision;
use burn::tensor::backend::get_device_settings;
use burn::tensor::{bf16, DType};
use burn_cubecl::FloatElement;
use burn_cuda::CudaDevice;
use moe_ir::{Graph, NodeId};
use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `g` on `gpus` GPUs in `precision` (see the module docs).
pub(crate) fn execute(
    g: &Graph,
    gpus: usize,
    precision: Precision,
    feed: Feed<'_>,
    capture: &BTreeSet<NodeId>,
    profile: bool,
) -> Result<Executed, ExecError> {
    let ranks = g.mesh.ranks();
    if gpus == 0 || (gpus > 1 && gpus as u64 != ranks) {
        return Err(ExecError::Placement { gpus, ranks });
    }
    if precision == Precision::F64 {
        return Err(ExecError::Precision {
            device: "the CUDA backend",
            precision: "f64",
            why: "it computes in f32 or bf16; use --backend cpu for f64",
        });
    }
    preflight(gpus)?;
    let run = || match precision {
        Precision::Bf16 => on::<bf16>(g, gpus, feed, capture, profile),
        _ => on::<f32>(g, gpus, feed, capture, profile),
    };
    catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|payload| {
        Err(ExecError::Cuda(format!(
            "burn-cuda failed: {}",
            panic_text(payload.as_ref())
        )))
    })
}

/// The message of a caught panic's payload (burn-cuda reports device failures by panicking).
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "a panic without a message".into()
    }
}

/// Loads the libraries burn-cuda needs (and NCCL for several GPUs) and checks the GPU count.
fn preflight(gpus: usize) -> Result<(), ExecError> {
    let cuda = |e: super::CudaError| ExecError::Cuda(e.to_string());
    for lib in ["cuda", "nvrtc", "cublas", "cublasLt"] {
        libs::load(lib).map_err(cuda)?;
    }
    if gpus > 1 {
        libs::load("nccl").map_err(cuda)?;
    }
    let count = cudarc::driver::CudaContext::device_count()
        .map_err(|e| ExecError::Cuda(format!("cuDeviceGetCount: {e}")))?;
    if gpus > count.max(0) as usize {
        return Err(ExecError::Cuda(format!(
            "{gpus} GPUs asked for, but this machine has {count}"
        )));
    }
    Ok(())
}

/// Fixes the float type of GPUs `0..gpus` to `F`, or fails when this process already fixed
/// another: burn keeps one default float type per device (set at its first use, whatever the
/// backend's element type), and the executor creates its tensors with the default.
fn fix_precision<F: FloatElement>(gpus: usize) -> Result<(), ExecError> {
    for d in 0..gpus {
        let settings = get_device_settings::<Cuda<F>>(&CudaDevice::new(d));
        if DType::from(settings.float_dtype) != F::dtype() {
            return Err(ExecError::Precision {
                device: "the CUDA backend",
                precision: if F::dtype() == DType::BF16 {
                    "bf16"
                } else {
                    "f32"
                },
                why: "this process already computed on the GPU in another precision, and burn \
                      fixes a device's float type at its first use: run each precision in its own \
                      process",
            });
        }
    }
    Ok(())
}

fn on<F: FloatElement>(
    g: &Graph,
    gpus: usize,
    feed: Feed<'_>,
    capture: &BTreeSet<NodeId>,
    profile: bool,
) -> Result<Executed, ExecError> {
    fix_precision::<F>(gpus)?;
    let gpu0 = CudaDevice::new(0);
    let k = CudaCompute::<F>::default();
    let mut done = if gpus == 1 {
        exec::execute_fed::<Cuda<F>, OneGpu<Cuda<F>>>(
            g,
            gpu0,
            OneGpu::default(),
            &k,
            feed,
            capture,
            profile,
        )?
    } else {
        let coll = NcclCollectives::<F>::new(gpus).map_err(|e| ExecError::Cuda(e.to_string()))?;
        exec::execute_fed::<Cuda<F>, NcclCollectives<F>>(g, gpu0, coll, &k, feed, capture, profile)?
    };
    done.device_memory = Some(reserved(gpus)?);
    Ok(done)
}

/// Bytes burn-cuda's allocator holds on GPUs `0..gpus` for this thread's stream (the executor
/// runs every rank on the calling thread): its pools keep what they reserved, so this is the
/// process's high-water mark so far.
fn reserved(gpus: usize) -> Result<u64, ExecError> {
    use burn_cubecl::cubecl::Runtime;
    let mut bytes = 0;
    for d in 0..gpus {
        let usage = burn_cubecl::cubecl::cuda::CudaRuntime::client(&CudaDevice::new(d))
            .memory_usage()
            .map_err(|e| ExecError::Cuda(format!("memory usage of GPU {d}: {e:?}")))?;
        bytes += usage.bytes_reserved;
    }
    Ok(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::collective::{Collectives, InProcess, Tag};
    use crate::testing::Cpu;
    use crate::value::Local;
    use crate::weights::Weights;

    fn seeded() -> Feed<'static> {
        Feed {
            weights: &Weights::Seeded,
            inputs: None,
            seed: 0,
            micro_batches: None,
        }
    }

    fn layer() -> Graph {
        moe_ir::json::from_json(include_str!("../../../examples/moe-layer.json")).unwrap()
    }

    #[test]
    fn placements_other_than_one_gpu_or_one_per_rank_are_refused_before_cuda_loads() {
        let g = layer(); // 4 ranks
        for gpus in [0, 2, 3, 8] {
            let e = execute(&g, gpus, Precision::F32, seeded(), &BTreeSet::new(), false);
            assert_eq!(e.unwrap_err(), ExecError::Placement { gpus, ranks: 4 });
        }
        let e = execute(&g, 1, Precision::F64, seeded(), &BTreeSet::new(), false);
        assert!(matches!(e, Err(ExecError::Precision { .. })));
    }

    /// The in-process collectives, with the all-to-all failing as a broken transport would.
    #[derive(Debug, Default)]
    struct Failing {
        exact: InProcess<Cpu>,
        failure: Option<String>,
    }

    impl Collectives<Cpu> for Failing {
        fn all_reduce(&mut self, parts: Vec<Local<Cpu>>) -> Vec<Local<Cpu>> {
            self.exact.all_reduce(parts)
        }
        fn all_gather(&mut self, parts: Vec<Local<Cpu>>, dim: usize) -> Vec<Local<Cpu>> {
            self.exact.all_gather(parts, dim)
        }
        fn reduce_scatter(&mut self, parts: Vec<Local<Cpu>>, dim: usize) -> Vec<Local<Cpu>> {
            self.exact.reduce_scatter(parts, dim)
        }
        fn all_to_all(&mut self, parts: Vec<Local<Cpu>>, s: usize, c: usize) -> Vec<Local<Cpu>> {
            self.failure = Some("NCCL all_to_all: transport down".into());
            self.exact.all_to_all(parts, s, c)
        }
        fn send(&mut self, tag: Tag, to: u64, value: Local<Cpu>) {
            self.exact.send(tag, to, value);
        }
        fn recv(&mut self, tag: Tag, to: u64) -> Option<Local<Cpu>> {
            self.exact.recv(tag, to)
        }
        fn ready(&self, tag: Tag, to: u64) -> bool {
            self.exact.ready(tag, to)
        }
        fn take_failure(&mut self) -> Option<String> {
            self.failure.take()
        }
    }

    #[test]
    fn a_failing_collective_is_the_error_of_its_node() {
        let e = exec::execute_fed::<Cpu, Failing>(
            &layer(),
            Default::default(),
            Failing::default(),
            &crate::exec::compute::Burn,
            seeded(),
            &BTreeSet::new(),
            false,
        )
        .unwrap_err();
        let ExecError::Node { node, op, why } = e else {
            panic!("{e}");
        };
        assert_eq!((node.as_str(), op), ("a2a_in", "all_to_all"));
        assert!(why.contains("transport down"), "{why}");
    }
}
