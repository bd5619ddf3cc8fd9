//! `moe-opt bench --backend cuda`: times one MoE layer as a dense tensor-parallel MLP, as PPMoE
//! and as all-to-all expert parallelism on W GPUs (or, with `--micro`, checks and times the GEMMs,
//! gathers, combines and NCCL collectives underneath). Needs a build with `--features cuda`.

use clap::ValueEnum;
use miette::Result;
use std::path::PathBuf;

/// Where the benchmark runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// NVIDIA GPUs through burn-cuda, cuBLASLt, NVRTC kernels and NCCL.
    Cuda,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Backend to run on.
    #[arg(long, value_enum, default_value = "cuda")]
    backend: Backend,
    /// GPUs (ranks), one process.
    #[arg(long, default_value_t = 1)]
    gpus: usize,
    /// Hidden size H.
    #[arg(long, default_value_t = 4096)]
    hidden: usize,
    /// FFN width F of the dense MLP and of each expert.
    #[arg(long, default_value_t = 16384)]
    ffn: usize,
    /// Experts E.
    #[arg(long, default_value_t = 8)]
    experts: usize,
    /// Experts per token.
    #[arg(long, default_value_t = 1)]
    top_k: usize,
    /// Tokens per step, all GPUs together.
    #[arg(long, default_value_t = 16384)]
    tokens: usize,
    /// Timed steps per form (the median is reported).
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Untimed steps per form before timing.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Capacity factor of the all-to-all form.
    #[arg(long, default_value_t = 1.25)]
    capacity_factor: f64,
    /// Seed of the random inputs and weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run the micro checks (GEMMs vs cuBLAS and burn, gather/combine vs memcpy, NCCL
    /// collectives) instead of the layer.
    #[arg(long)]
    micro: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Output file (written atomically); stdout when absent or `-`.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

#[cfg(not(feature = "cuda"))]
pub fn run(a: Args) -> Result<()> {
    let Backend::Cuda = a.backend;
    Err(miette::miette!(
        "built without CUDA: rebuild with --features cuda \
         (cargo build --release -p moe-opt --features cuda)"
    ))
}

#[cfg(feature = "cuda")]
pub fn run(a: Args) -> Result<()> {
    use crate::io::write_output;
    use moe_backend::cuda::bench::{run_layer, run_micro, LayerConfig, MicroConfig};
    let Backend::Cuda = a.backend;
    let (text, failure) = if a.micro {
        let cfg = MicroConfig {
            gpus: a.gpus,
            iters: a.iters,
            seed: a.seed,
        };
        let r = run_micro(&cfg).map_err(|e| miette::miette!("{e}"))?;
        let text = if a.json {
            format::micro_json(&r)
        } else {
            format::micro_table(&r)
        };
        (text, format::micro_failure(&r))
    } else {
        let cfg = LayerConfig {
            gpus: a.gpus,
            hidden: a.hidden,
            ffn: a.ffn,
            experts: a.experts,
            top_k: a.top_k,
            tokens: a.tokens,
            iters: a.iters,
            warmup: a.warmup,
            capacity_factor: a.capacity_factor,
            seed: a.seed,
        };
        let r = run_layer(&cfg).map_err(|e| miette::miette!("{e}"))?;
        let text = if a.json {
            format::layer_json(&r)
        } else {
            format::layer_table(&r)
        };
        (text, format::layer_failure(&r))
    };
    write_output(a.output.as_deref(), &text)?;
    match failure {
        Some(f) => Err(miette::miette!("{f}")),
        None => Ok(()),
    }
}

/// Tables and JSON of the benchmark reports.
#[cfg(feature = "cuda")]
mod format {
    use moe_backend::cuda::bench::{LayerReport, MicroReport};
    use serde_json::json;
    use std::fmt::Write;

    /// H200 HBM3e peak bandwidth, GB/s (NVIDIA's figure), for the bandwidth fractions.
    pub const HBM_PEAK_GBS: f64 = 4800.0;

    /// Largest relative error a GEMM or combine may show against its reference.
    pub const MAX_REL_ERR: f64 = 1e-2;

    pub fn layer_table(r: &LayerReport) -> String {
        let c = &r.config;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "moe-opt bench --backend cuda: {} x {}, bf16, H={} F={} E={} top-{}, {} tokens/step, \
             capacity factor {} ({} slots per expert per GPU)",
            c.gpus,
            r.device,
            c.hidden,
            c.ffn,
            c.experts,
            c.top_k,
            c.tokens,
            c.capacity_factor,
            c.capacity()
        );
        let _ = writeln!(
            s,
            "median of {} steps after {} warm-up (CUDA events, slowest GPU); collectives: {}",
            c.iters, c.warmup, r.collectives
        );
        let _ = writeln!(
            s,
            "GELU: {} (chosen by timing the dense up-projection: fused {:.3} ms, GEMM + kernel \
             {:.3} ms)",
            if r.fused_gelu {
                "fused into cuBLASLt"
            } else {
                "separate kernel"
            },
            r.gelu_ms.0,
            r.gelu_ms.1
        );
        let _ = writeln!(
            s,
            "\n{:<28} {:>9} {:>19} {:>12} {:>9} {:>10}",
            "form", "ms/step", "(min - max)", "tokens/s", "TFLOP/s", "executed"
        );
        for f in &r.forms {
            let _ = writeln!(
                s,
                "{:<28} {:>9.3} {:>19} {:>12.0} {:>9.1} {:>10.1}",
                f.form.label(),
                f.stats.median_ms,
                format!("({:.3} - {:.3})", f.stats.min_ms, f.stats.max_ms),
                f.tokens_per_s(),
                f.tflops(),
                f.executed_tflops()
            );
        }
        let _ = writeln!(
            s,
            "\nPPMoE / dense throughput: {:.3}\nall-to-all / PPMoE time:  {:.3}",
            r.ppmoe_over_dense_throughput(),
            r.all_to_all_over_ppmoe_time()
        );
        let _ = writeln!(s, "tokens per expert (PPMoE routing): {:?}", r.expert_load);
        let a = &r.agreement;
        let verdict = if a.dropped > 0 {
            format!(
                "not comparable: the all-to-all form dropped {} entries",
                a.dropped
            )
        } else if a.passed() {
            "PPMoE and all-to-all agree".into()
        } else {
            format!("MISMATCH in {} values", a.mismatched)
        };
        let _ = writeln!(
            s,
            "check: {verdict} ({} values, max |diff| {:.3e}, max |y| {:.3e}, tolerance {} |y| + {} max|y|)",
            a.compared,
            a.max_abs_diff,
            a.max_abs,
            moe_backend::cuda::bench::Agreement::RTOL,
            moe_backend::cuda::bench::Agreement::ATOL
        );
        s
    }

    pub fn layer_json(r: &LayerReport) -> String {
        let c = &r.config;
        let forms: serde_json::Map<String, serde_json::Value> = r
            .forms
            .iter()
            .map(|f| {
                (
                    f.form.key().to_string(),
                    json!({
                        "ms_median": f.stats.median_ms,
                        "ms_min": f.stats.min_ms,
                        "ms_max": f.stats.max_ms,
                        "steps": f.stats.samples,
                        "tokens_per_s": f.tokens_per_s(),
                        "tflops": f.tflops(),
                        "executed_tflops": f.executed_tflops(),
                    }),
                )
            })
            .collect();
        let a = &r.agreement;
        let v = json!({
            "device": r.device,
            "config": {
                "gpus": c.gpus, "hidden": c.hidden, "ffn": c.ffn, "experts": c.experts,
                "top_k": c.top_k, "tokens": c.tokens, "iters": c.iters, "warmup": c.warmup,
                "capacity_factor": c.capacity_factor, "capacity": c.capacity(), "seed": c.seed,
            },
            "forms": forms,
            "ppmoe_over_dense_throughput": r.ppmoe_over_dense_throughput(),
            "all_to_all_over_ppmoe_time": r.all_to_all_over_ppmoe_time(),
            "expert_load": r.expert_load,
            "check": {
                "passed": a.passed(), "dropped": a.dropped, "compared": a.compared,
                "mismatched": a.mismatched, "max_abs_diff": a.max_abs_diff, "max_abs": a.max_abs,
            },
            "fused_gelu": r.fused_gelu,
            "gelu_ms": {"fused": r.gelu_ms.0, "separate": r.gelu_ms.1},
            "collectives": r.collectives,
        });
        let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
        s.push('\n');
        s
    }

    pub fn layer_failure(r: &LayerReport) -> Option<String> {
        let a = &r.agreement;
        (a.dropped == 0 && !a.passed()).then(|| {
            format!(
                "check failed: PPMoE and all-to-all outputs differ in {} of {} values",
                a.mismatched, a.compared
            )
        })
    }

    pub fn micro_table(r: &MicroReport) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "moe-opt bench --backend cuda --micro: {}", r.device);
        let _ = writeln!(
            s,
            "\n{:<64} {:>8} {:>8} {:>7} {:>8} {:>10}  vs",
            "GEMM, bf16 in/out, fp32 accumulate", "ours", "cuBLAS", "ratio", "burn", "rel err"
        );
        for g in &r.gemms {
            let _ = writeln!(
                s,
                "{:<64} {:>8.1} {:>8.1} {:>7.3} {:>8} {:>10}  {}",
                g.label,
                g.ours_tflops,
                g.cublas_tflops,
                g.ours_tflops / g.cublas_tflops,
                g.burn_tflops.map_or("-".into(), |b| format!("{b:.1}")),
                g.max_rel_err.map_or("-".into(), |e| format!("{e:.2e}")),
                g.err_against
            );
        }
        let _ = writeln!(
            s,
            "(TFLOP/s; ratio = ours / cuBLAS on the same shape, same run)"
        );
        let _ = writeln!(
            s,
            "\n{:<58} {:>8} {:>8} {:>7} {:>7} {:>8} {:>9}",
            "gather / combine (GB/s, read + write)",
            "ours",
            "memcpy",
            "/copy",
            "/peak",
            "burn",
            "rel err"
        );
        for c in &r.copies {
            let _ = writeln!(
                s,
                "{:<58} {:>8.0} {:>8.0} {:>7.3} {:>7.3} {:>8} {:>9.2e}",
                c.label,
                c.ours_gbs,
                c.memcpy_gbs,
                c.ours_gbs / c.memcpy_gbs,
                c.ours_gbs / HBM_PEAK_GBS,
                c.burn_gbs.map_or("-".into(), |b| format!("{b:.0}")),
                c.max_rel_err
            );
        }
        let _ = writeln!(
            s,
            "(/copy: of cuMemcpyDtoD in the same run; /peak: of {HBM_PEAK_GBS} GB/s HBM3e)"
        );
        let _ = writeln!(
            s,
            "\ncollectives (NCCL {})",
            r.nccl_version.map_or("?".into(), |v| v.to_string())
        );
        for c in &r.collectives {
            let timing = match (c.ms, c.alg_gbs, c.bus_gbs) {
                (Some(ms), Some(alg), Some(bus)) => {
                    format!("  {ms:.3} ms, algbw {alg:.0} GB/s, busbw {bus:.0} GB/s")
                }
                _ => String::new(),
            };
            let ok = if c.correct { "correct" } else { "WRONG" };
            let _ = writeln!(s, "{:<64} {ok}{timing}", c.label);
        }
        s
    }

    pub fn micro_json(r: &MicroReport) -> String {
        let v = json!({
            "device": r.device,
            "nccl_version": r.nccl_version,
            "gemms": r.gemms.iter().map(|g| json!({
                "label": g.label, "flops": g.flops, "ours_tflops": g.ours_tflops,
                "cublas_tflops": g.cublas_tflops, "ratio": g.ours_tflops / g.cublas_tflops,
                "burn_tflops": g.burn_tflops, "max_rel_err": g.max_rel_err,
                "err_against": g.err_against,
            })).collect::<Vec<_>>(),
            "copies": r.copies.iter().map(|c| json!({
                "label": c.label, "bytes": c.bytes, "ours_gbs": c.ours_gbs,
                "memcpy_gbs": c.memcpy_gbs, "burn_gbs": c.burn_gbs,
                "fraction_of_peak": c.ours_gbs / HBM_PEAK_GBS, "max_rel_err": c.max_rel_err,
            })).collect::<Vec<_>>(),
            "collectives": r.collectives.iter().map(|c| json!({
                "label": c.label, "correct": c.correct, "ms": c.ms,
                "alg_gbs": c.alg_gbs, "bus_gbs": c.bus_gbs,
            })).collect::<Vec<_>>(),
        });
        let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
        s.push('\n');
        s
    }

    pub fn micro_failure(r: &MicroReport) -> Option<String> {
        let bad_gemm = r
            .gemms
            .iter()
            .filter(|g| g.max_rel_err.is_some_and(|e| e.is_nan() || e > MAX_REL_ERR))
            .map(|g| g.label.clone());
        let bad_copy = r
            .copies
            .iter()
            .filter(|c| c.max_rel_err.is_nan() || c.max_rel_err > MAX_REL_ERR)
            .map(|c| c.label.clone());
        let bad_coll = r
            .collectives
            .iter()
            .filter(|c| !c.correct)
            .map(|c| c.label.clone());
        let bad: Vec<String> = bad_gemm.chain(bad_copy).chain(bad_coll).collect();
        (!bad.is_empty()).then(|| format!("check failed: {}", bad.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn without_cuda_the_command_says_how_to_rebuild() {
        let c = Cli::parse_from(["bench", "--backend", "cuda", "--gpus", "1"]);
        let e = run(c.args).expect_err("no CUDA in this build").to_string();
        assert!(
            e.contains("built without CUDA: rebuild with --features cuda"),
            "{e}"
        );
    }

    #[test]
    fn defaults_are_the_reference_layer() {
        let a = Cli::parse_from(["bench"]).args;
        assert_eq!(
            (a.gpus, a.hidden, a.ffn, a.experts, a.top_k, a.tokens),
            (1, 4096, 16384, 8, 1, 16384)
        );
        assert_eq!(a.capacity_factor, 1.25);
        assert!(Cli::try_parse_from(["bench", "--backend", "cpu"]).is_err());
    }
}
