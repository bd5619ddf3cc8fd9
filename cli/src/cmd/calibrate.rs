//! `moe-opt calibrate --backend cpu|cuda -o profile.toml`: micro-benchmarks run through the
//! executor `run` uses (`moe_backend::run` on seeded weights), fitted into a cost profile.
//!
//! Each benchmark is a small graph (text form) whose measured op appears once, and again with
//! `--repeat` more copies reading the same inputs; the op's time is the difference of the two
//! graphs' median compute times over the extra copies, so setup (inputs, routing) cancels. The
//! rate is what the cost model counts for that op (`Roofline::op_cost`: FLOPs for GEMM classes,
//! bytes for memory classes) over that time, so the profile prices ops in the model's own units.
//! Collectives (all-reduce at two sizes: bandwidth from the slope, latency from the intercept)
//! run when `--gpus` is above 1; on the CPU they are the in-process sums.

use crate::exec::{BackendArg, PrecisionArg};
use crate::io::write_output;
use miette::{miette, Result};
use moe_backend::{Device, Precision, RunOptions, Weights};
use moe_ir::Graph;
use moe_passes::cost::{CostModel, Profile, Rate, Rates, Roofline};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to run.
    #[arg(long, value_enum, default_value_t = BackendArg::Cuda)]
    backend: BackendArg,
    /// GPUs (above 1: collectives are measured too; on the CPU, simulated ranks).
    #[arg(long, default_value_t = 1)]
    gpus: u64,
    /// Float precision (bf16 on CUDA; the graphs declare it).
    #[arg(long, value_enum, default_value_t = PrecisionArg::Bf16)]
    precision: PrecisionArg,
    /// Shape scale: `1` is GPU-sized (4096-wide GEMMs); a test on the CPU uses 1/32.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Extra copies of the measured op in the second graph.
    #[arg(long, default_value_t = 4)]
    repeat: u32,
    /// Timed runs per graph (the median is used).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Output profile (TOML, written atomically); stdout when absent or `-`.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

/// One micro-benchmark: the graph's setup lines, the measured op's line and its output type; the
/// name says which rate it measures.
struct Bench {
    name: &'static str,
    head: String,
    op: String,
    out_ty: String,
}

fn dim(scale: f64, full: u64) -> u64 {
    (((full as f64) * scale).round() as u64).max(8) / 8 * 8
}

fn benches(s: f64, dt: &str, w: u64) -> Vec<Bench> {
    let (m, k) = (dim(s, 8192), dim(s, 4096));
    let small = dim(s, 1024).max(32);
    let (t, h, f, e) = (dim(s, 8192), dim(s, 4096), dim(s, 2048), 8u64);
    // local_routes' rows: T * min(k, E/n) per rank, n ranks.
    let r = t * w;
    let routed = format!(
        "  %0 = input : {dt}[{t}, {h}]  ; x\n  %1 = weight : {dt}[{h}, {e}]  ; w_gate\n  %2 = matmul %0, %1 : {dt}[{t}, {e}]  ; logits\n  %3 = router{{experts={e}, k=1, score=softmax, normalize=false, scale=1.0, select_bias=false}} %2 : i32[{t}, 1], f32[{t}, 1]  ; router\n  %4 = local_routes{{experts={e}, axis=tp, capacity=dropless, token_groups=1}} %3, %3.1 : i32[{r}@tp], f32[{r}@tp], i32[{e}@tp]  ; routes\n  %5 = index_select %0, %4 : {dt}[{r}@tp, {h}]  ; rows\n"
    );
    let heads = ((32.0 * s).round() as u64).max(2);
    let hd: u64 = if s < 0.5 { 64 } else { 128 };
    let seq = dim(s, 4096);
    let qw = heads * hd;
    let mut v = vec![
        Bench {
            name: "gemm_tflops",
            head: format!("  %0 = input : {dt}[{m}, {k}]  ; x\n  %1 = weight : {dt}[{k}, {k}]  ; w\n"),
            op: "matmul %0, %1".into(),
            out_ty: format!("{dt}[{m}, {k}]"),
        },
        Bench {
            name: "gemm_small_tflops",
            head: format!(
                "  %0 = input : {dt}[{small}, {small}]  ; x\n  %1 = weight : {dt}[{small}, {small}]  ; w\n"
            ),
            op: "matmul %0, %1".into(),
            out_ty: format!("{dt}[{small}, {small}]"),
        },
        Bench {
            name: "grouped_gemm_tflops",
            head: format!(
                "{routed}  %6 = weight : {dt}[{e}@tp, {h}, {f}]  ; w_up\n  %7 = weight : {dt}[{e}@tp, {f}, {h}]  ; w_down\n"
            ),
            op: "expert_ffn{layout=grouped, act=gelu, gated=false} %5, %4.2, %6, %7".into(),
            out_ty: format!("{dt}[{r}@tp, {h}]"),
        },
        Bench {
            name: "attention_tflops",
            head: format!(
                "  %0 = input : {dt}[{seq}, {qw}]  ; q\n  %1 = input : {dt}[{seq}, {qw}]  ; k\n  %2 = input : {dt}[{seq}, {qw}]  ; v\n"
            ),
            op: format!("attention{{heads={heads}, kv_heads={heads}, head_dim={hd}, v_head_dim={hd}, rope_dim={hd}, shared_k_dim=0, rope_theta=10000.0, seq={seq}, kv_seq={seq}, mask=causal, sinks=false}} %0, %1, %2"),
            out_ty: format!("{dt}[{seq}, {qw}]"),
        },
        Bench {
            name: "hbm_gbps",
            head: format!("  %0 = input : {dt}[{t}, {h}]  ; x\n"),
            op: "add %0, %0".into(),
            out_ty: format!("{dt}[{t}, {h}]"),
        },
        Bench {
            name: "gather_gbps",
            head: routed.clone(),
            op: "index_select %0, %4".into(),
            out_ty: format!("{dt}[{r}@tp, {h}]"),
        },
        Bench {
            name: "combine_gbps",
            head: format!("{routed}  %6 = zeros : {dt}[{t}, {h}] partial(tp)  ; zeros\n"),
            op: "index_add{scaled=true} %6, %4, %5, %4.1".into(),
            out_ty: format!("{dt}[{t}, {h}] partial(tp)"),
        },
    ];
    if w > 1 {
        for (name, rows) in [
            ("all_reduce_small", dim(s, 256)),
            ("all_reduce_large", dim(s, 16384)),
        ] {
            v.push(Bench {
                name,
                head: format!(
                    "  %0 = input : {dt}[{rows}, {h}@tp]  ; x\n  %1 = weight : {dt}[{h}@tp, {h}]  ; w\n  %2 = matmul %0, %1 : {dt}[{rows}, {h}] partial(tp)  ; partial\n"
                ),
                op: "all_reduce{axis=tp} %2".into(),
                out_ty: format!("{dt}[{rows}, {h}]"),
                });
        }
    }
    v
}

/// The benchmark's graph with `copies` copies of its op.
fn graph(b: &Bench, copies: u32, w: u64) -> Result<Graph> {
    let base = b.head.lines().count();
    let mut text = format!(
        "graph \"calibrate-{}\" (moe-ir/1)\nmesh tp={w}:intra\n\nlayer 0:\n{}",
        b.name, b.head
    );
    for i in 0..copies {
        text.push_str(&format!(
            "  %{} = {} : {}  ; op{i}\n",
            base + i as usize,
            b.op,
            b.out_ty
        ));
    }
    text.push_str(&format!(
        "\noutputs:\n  y = %{}\n",
        base + copies as usize - 1
    ));
    moe_ir::text::from_text(&text).map_err(|e| miette!("calibration graph {}: {e}\n{text}", b.name))
}

/// Median compute seconds of `g` over `iters` runs (after one untimed run).
fn time(g: &Graph, opts: &RunOptions, iters: usize) -> Result<f64> {
    let go = || moe_backend::run(g, &Weights::Seeded, opts).map_err(|e| miette!("{}: {e}", g.name));
    go()?;
    let mut v: Vec<f64> = (0..iters.max(1))
        .map(|_| go().map(|r| r.compute.as_secs_f64()))
        .collect::<Result<_>>()?;
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

/// FLOPs and bytes the cost model counts for the op node `op0` of `g` (one rank).
fn counted(g: &Graph) -> Result<(f64, f64)> {
    let id = g
        .find("op0")
        .ok_or_else(|| miette!("calibration graph has no op0"))?;
    let n = g.node(id);
    let tys: Vec<_> = n.inputs.iter().filter_map(|v| g.value_type(*v)).collect();
    let c = Roofline::default().op_cost(&n.op, &tys, &vec![1.0; tys.len()], &n.outputs, &g.mesh);
    Ok((
        c.flops,
        if n.op.communicates() {
            c.comm_bytes
        } else {
            c.hbm_bytes
        },
    ))
}

pub fn run(a: Args) -> Result<()> {
    let precision = match a.precision {
        PrecisionArg::F32 => Precision::F32,
        PrecisionArg::F64 => Precision::F64,
        PrecisionArg::Bf16 => Precision::Bf16,
    };
    let (device, backend) = match a.backend {
        BackendArg::Cpu => (Device::Cpu, "cpu"),
        BackendArg::Cuda => (
            Device::Cuda {
                gpus: a.gpus as usize,
            },
            "cuda",
        ),
    };
    let dt = match precision {
        Precision::Bf16 => "bf16",
        Precision::F32 | Precision::F64 => "f32",
    };
    if a.repeat == 0 || !(a.scale > 0.0) {
        return Err(miette!("--repeat and --scale must be positive"));
    }
    let opts = RunOptions {
        device,
        precision,
        seed: 0,
        micro_batches: None,
        profile: false,
    };
    let how = format!(
        "moe-opt calibrate --backend {backend} --gpus {} --precision {} --scale {} (median of {} runs, {} extra copies)",
        a.gpus,
        precision.name(),
        a.scale,
        a.iters,
        a.repeat
    );
    let mut rates = Rates::default();
    let mut ar: Vec<(f64, f64)> = Vec::new();
    for b in benches(a.scale, dt, a.gpus) {
        let one = graph(&b, 1, a.gpus)?;
        // A difference lost in the noise is measured again with more copies (up to 8x).
        let mut repeat = a.repeat;
        let per_op = loop {
            let many = graph(&b, 1 + repeat, a.gpus)?;
            let (t1, tn) = (time(&one, &opts, a.iters)?, time(&many, &opts, a.iters)?);
            let per_op = (tn - t1) / f64::from(repeat);
            if per_op > 0.0 {
                break per_op;
            }
            if repeat >= 8 * a.repeat {
                return Err(miette!(
                    "{}: {} copies ran no slower than one ({tn:.6} s vs {t1:.6} s); raise --scale or --iters",
                    b.name,
                    1 + repeat
                ));
            }
            repeat *= 2;
        };
        let (flops, bytes) = counted(&one)?;
        tracing::info!(bench = b.name, per_op_s = per_op, flops, bytes, "measured");
        let src = format!("{how}: {:.3} ms per op", per_op * 1e3);
        let rate = |v: f64| Some(Rate::measured(v, src.clone()));
        let r = &mut rates;
        match b.name {
            "gemm_tflops" => r.gemm_tflops = rate(flops / per_op / 1e12),
            "gemm_small_tflops" => r.gemm_small_tflops = rate(flops / per_op / 1e12),
            "grouped_gemm_tflops" => r.grouped_gemm_tflops = rate(flops / per_op / 1e12),
            "attention_tflops" => r.attention_tflops = rate(flops / per_op / 1e12),
            "hbm_gbps" => r.hbm_gbps = rate(bytes / per_op / 1e9),
            "gather_gbps" => r.gather_gbps = rate(bytes / per_op / 1e9),
            "combine_gbps" => r.combine_gbps = rate(bytes / per_op / 1e9),
            _ => ar.push((bytes, per_op)),
        }
    }
    if let [(b1, t1), (b2, t2)] = ar[..] {
        // Ring all-reduce: 2(n-1) steps of latency, 2(n-1)/n of the bytes at bus bandwidth.
        let n = a.gpus as f64;
        let steps = 2.0 * (n - 1.0);
        let slope = (t2 - t1) / (b2 - b1);
        if slope > 0.0 {
            let src = format!(
                "{how}: all-reduce of {b1:.0} and {b2:.0} bytes, {:.3} and {:.3} ms",
                t1 * 1e3,
                t2 * 1e3
            );
            rates.intra_node_gbps = Some(Rate::measured(steps / n / slope / 1e9, src.clone()));
            rates.intra_node_latency_us = Some(Rate::measured(
                ((t1 - slope * b1) / steps).max(0.0) * 1e6,
                src,
            ));
        }
    }
    let profile = Profile {
        device: format!("{backend} ({} GPU(s), {})", a.gpus, precision.name()),
        rates,
    };
    profile.check().map_err(|e| miette!("{e}"))?;
    write_output(a.output.as_deref(), &profile.to_toml())
}
