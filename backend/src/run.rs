//! Running a graph: the public entry point over the generic executor.

use crate::collective::InProcess;
use crate::error::ExecError;
use crate::exec::{self, Executed, Feed, StepRun};
pub use crate::flops::{useful_flops, useful_flops_by_op};
use crate::inputs::Inputs;
use crate::weights::Weights;
use burn::tensor::backend::Backend;
use burn_ndarray::{NdArray, NdArrayDevice};
use moe_ir::{Graph, NodeId};
use std::collections::BTreeSet;
use std::time::Duration;

/// Where a graph runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// burn-ndarray on the CPU; every rank of the mesh simulated in this process.
    #[default]
    Cpu,
    /// burn-cuda (feature `cuda`) on `gpus` GPUs of this process: 1 puts every rank of the mesh on
    /// GPU 0 (exact in-process collectives on the device); as many as the mesh has ranks puts
    /// rank r on GPU r (collectives through NCCL).
    Cuda { gpus: usize },
}

/// The float type computations use. Whatever the graph's declared dtype (bf16, f16, f32), the
/// CPU computes in this precision: bf16 graphs run in f32 (or f64), not rounded to 16 bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    #[default]
    F32,
    F64,
    /// bfloat16 tensors and arithmetic (CUDA only; burn-ndarray has no bf16 backend).
    Bf16,
}

impl Precision {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F64 => "f64",
            Precision::Bf16 => "bf16",
        }
    }
}

/// Options of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    pub device: Device,
    pub precision: Precision,
    /// Seed of the inputs and of seeded weights.
    pub seed: u64,
    /// Micro-batches to run (each a forward pass of the graph on its own inputs; a pipelined
    /// graph's stages run them in its schedule's order). Default: the graph's pipeline's
    /// `micro_batches`, else 1.
    pub micro_batches: Option<u32>,
    /// Synchronise the devices after every node, so that [`RunReport::op_times`] are device
    /// times that add up to the compute time (slower: the host no longer runs ahead).
    pub profile: bool,
}

/// A global (unsharded) tensor on the host, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<u64>,
    pub data: Vec<f64>,
}

impl HostTensor {
    /// Sum of the elements.
    pub fn sum(&self) -> f64 {
        self.data.iter().sum()
    }

    /// Sum of the absolute values.
    pub fn abs_sum(&self) -> f64 {
        self.data.iter().map(|v| v.abs()).sum()
    }
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The graph outputs by name, as global tensors: the micro-batches' values concatenated along
    /// dim 0 (scalars stacked into `[M]`).
    pub outputs: Vec<(String, HostTensor)>,
    /// Micro-batches run.
    pub micro_batches: u32,
    /// The forward steps in the order they completed: each stage's steps in its schedule's order,
    /// interleaved with the other stages' as the transfers allowed.
    pub trace: Vec<StepRun>,
    /// Time spent making the weights (seeded or read from the checkpoint, sharded, on the
    /// device: synchronised).
    pub setup: Duration,
    /// Time from the weights being ready to the outputs computed on the devices (synchronised):
    /// inputs and every op, not the outputs' download to the host.
    pub compute: Duration,
    /// Time of the whole run (setup and the outputs' download included).
    pub total: Duration,
    /// Time per op kind (every rank's share added), by op name: host issue time, or device time
    /// with [`RunOptions::profile`].
    pub op_times: Vec<(&'static str, Duration)>,
    /// The useful floating-point operations of the run (see [`useful_flops`]).
    pub flops: f64,
    /// The useful floating-point operations per op kind (see [`useful_flops_by_op`]), the run's
    /// micro-batches together: with [`RunReport::op_times`], each op's achieved rate.
    pub op_flops: Vec<(&'static str, f64)>,
    /// Device memory held by the allocator at the end of the run, bytes over all GPUs (a
    /// high-water mark); `None` on the CPU.
    pub device_memory: Option<u64>,
    /// The values of the nodes asked for with [`run_with`]'s `dump`, by name.
    pub dumped: Vec<(String, HostTensor)>,
}

/// Runs `g` on `opts.device` with `weights`; every rank of the mesh runs its program.
pub fn run(g: &Graph, weights: &Weights, opts: &RunOptions) -> Result<RunReport, ExecError> {
    run_with(g, weights, None, &[], opts)
}

/// Runs `g` on `inputs` (seeded where `None`, or for inputs they do not name) and also returns
/// the global values of the nodes named in `dump` (every output of each, micro-batches
/// concatenated like the graph outputs; `name` for a one-output node, `name:k` for output `k`).
pub fn run_with(
    g: &Graph,
    weights: &Weights,
    inputs: Option<&Inputs>,
    dump: &[String],
    opts: &RunOptions,
) -> Result<RunReport, ExecError> {
    let mut capture = BTreeSet::new();
    for name in dump {
        let id = g
            .find(name)
            .ok_or_else(|| ExecError::Invalid(format!("--dump: the graph has no node `{name}`")))?;
        capture.insert(id);
    }
    let mut e = run_capturing_fed(g, weights, inputs, opts, &capture)?;
    let mut dumped = Vec::new();
    for name in dump {
        let Some(id) = g.find(name) else { continue };
        let outs = e.captured.remove(&id).unwrap_or_default();
        let many = outs.len() > 1;
        for (k, t) in outs.into_iter().enumerate() {
            let key = if many {
                format!("{name}:{k}")
            } else {
                name.clone()
            };
            dumped.push((key, t));
        }
    }
    Ok(RunReport {
        dumped,
        outputs: e.outputs,
        micro_batches: e.micro_batches,
        trace: e.trace,
        setup: e.leaves,
        compute: e.compute,
        total: e.total,
        op_times: e.op_times.into_iter().collect(),
        flops: useful_flops(g) * f64::from(e.micro_batches),
        op_flops: useful_flops_by_op(g)
            .into_iter()
            .map(|(op, f)| (op, f * f64::from(e.micro_batches)))
            .collect(),
        device_memory: e.device_memory,
    })
}

/// Runs `g`, also rebuilding the global values of the nodes in `capture`.
pub(crate) fn run_capturing(
    g: &Graph,
    weights: &Weights,
    opts: &RunOptions,
    capture: &BTreeSet<NodeId>,
) -> Result<Executed, ExecError> {
    run_capturing_fed(g, weights, None, opts, capture)
}

/// [`run_capturing`] with given inputs.
pub(crate) fn run_capturing_fed(
    g: &Graph,
    weights: &Weights,
    inputs: Option<&Inputs>,
    opts: &RunOptions,
    capture: &BTreeSet<NodeId>,
) -> Result<Executed, ExecError> {
    let feed = Feed {
        weights,
        inputs,
        seed: opts.seed,
        micro_batches: opts.micro_batches,
    };
    match (opts.device, opts.precision) {
        (Device::Cpu, Precision::F32) => {
            on::<NdArray<f32>>(g, NdArrayDevice::Cpu, feed, opts, capture)
        }
        (Device::Cpu, Precision::F64) => {
            on::<NdArray<f64>>(g, NdArrayDevice::Cpu, feed, opts, capture)
        }
        (Device::Cpu, Precision::Bf16) => Err(ExecError::Precision {
            device: "the CPU backend (burn-ndarray)",
            precision: "bf16",
            why: "it computes in f32 or f64 only; use --backend cuda for bf16",
        }),
        #[cfg(feature = "cuda")]
        (Device::Cuda { gpus }, precision) => {
            crate::cuda::exec::execute(g, gpus, precision, feed, capture, opts.profile)
        }
        #[cfg(not(feature = "cuda"))]
        (Device::Cuda { .. }, _) => Err(ExecError::Cuda(
            "built without CUDA: rebuild with --features cuda".into(),
        )),
    }
}

fn on<B: Backend>(
    g: &Graph,
    device: B::Device,
    feed: Feed<'_>,
    opts: &RunOptions,
    capture: &BTreeSet<NodeId>,
) -> Result<Executed, ExecError> {
    exec::execute_fed::<B, InProcess<B>>(
        g,
        device,
        InProcess::default(),
        &exec::compute::Burn,
        feed,
        capture,
        opts.profile,
    )
}
