//! `moe-opt run MODEL --backend cpu|cuda [--gpus W] [--tokens N] [--weights W] [--seed S] [--repeat N]`.

use crate::exec::{load_at, ExecArgs};
use crate::io::{read_input, write_output};
use crate::load::ImportArgs;
use miette::{miette, Result};
use moe_backend::{run as execute, HostTensor};
use std::fmt::Write as _;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// model.json or Hugging Face config.json (`-` for stdin).
    model: String,
    /// Also print the time per op kind (all ranks together), largest first: device time, the
    /// devices synchronised after every node (so the run is slower and the times add up to its
    /// compute time).
    #[arg(long)]
    profile: bool,
    /// The device's peak rate in TFLOP/s that achieved throughput is quoted against (default:
    /// 790, an H200's measured bf16 dense GEMM rate, docs/GPU.md).
    #[arg(long, default_value_t = 790.0, value_name = "TFLOPS")]
    peak_tflops: f64,
    /// Run N times in this process and print each run's time (the first pays one-time costs:
    /// CUDA kernel compilation and autotuning); outputs and profile are the last run's.
    #[arg(long, default_value_t = 1, value_name = "N")]
    repeat: usize,
    #[command(flatten)]
    exec: ExecArgs,
    #[command(flatten)]
    import: ImportArgs,
}

/// `sum`, `abs-sum` and the first values of a tensor, on one line.
pub fn checksum(t: &HostTensor) -> String {
    let first: Vec<String> = t.data.iter().take(4).map(|v| format!("{v:.6e}")).collect();
    format!(
        "sum {:.9e}  abs-sum {:.9e}  first [{}]",
        t.sum(),
        t.abs_sum(),
        first.join(", ")
    )
}

/// Which micro-batches ran, and in what order the stages ran them.
fn schedule_line(g: &moe_ir::Graph, r: &moe_backend::RunReport) -> String {
    let m = r.micro_batches;
    let Some(spec) = &g.pipeline else {
        return format!("micro-batches: {m} (one program on every rank)");
    };
    let stages = r.trace.iter().map(|s| s.stage + 1).max().unwrap_or(1);
    let first: Vec<String> = (0..stages)
        .map(|s| {
            let mut own: Vec<String> = r
                .trace
                .iter()
                .filter(|t| t.stage == s)
                .map(|t| format!("F{}.{}", t.micro, t.vstage))
                .collect();
            if own.len() > 6 {
                own.truncate(6);
                own.push("..".into());
            }
            format!("stage {s}: {}", own.join(" "))
        })
        .collect();
    format!(
        "micro-batches: {m} through {stages} stages, {} order (forward steps F<micro>.<virtual stage>; {})",
        spec.schedule,
        first.join("; ")
    )
}

pub fn run(a: Args) -> Result<()> {
    let mut opts = a.exec.options()?;
    opts.profile = a.profile;
    let text = read_input(&a.model)?;
    let g = load_at(&a.model, &text, &a.import, a.exec.tokens)?;
    let weights = a.exec.weights()?;
    let mut r = execute(&g, &weights, &opts).map_err(|e| miette!("{}: {e}", a.model))?;
    let mut times = vec![(r.total, r.compute)];
    for _ in 1..a.repeat {
        r = execute(&g, &weights, &opts).map_err(|e| miette!("{}: {e}", a.model))?;
        times.push((r.total, r.compute));
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "model {} on mesh {} ({} ranks), {}, {:?} {:?}",
        g.name,
        g.mesh,
        g.mesh.ranks(),
        a.exec.weights_label(),
        opts.device,
        opts.precision
    );
    let _ = writeln!(out, "{}", schedule_line(&g, &r));
    for (name, t) in &r.outputs {
        let _ = writeln!(out, "output {name} {:?}: {}", t.shape, checksum(t));
    }
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let _ = writeln!(
        out,
        "time: {:.1} ms total ({:.1} ms weights, {:.1} ms compute: inputs and every op, the devices synchronised; the rest is reading outputs back)",
        ms(r.total),
        ms(r.setup),
        ms(r.compute),
    );
    let secs = r.compute.as_secs_f64();
    if secs > 0.0 && r.flops > 0.0 {
        let tflops = r.flops / secs / 1e12;
        let _ = writeln!(
            out,
            "useful work: {:.3} TFLOP in {:.1} ms = {:.1} TFLOP/s, {:.1}% of {} TFLOP/s peak",
            r.flops / 1e12,
            secs * 1e3,
            tflops,
            100.0 * tflops / a.peak_tflops,
            a.peak_tflops
        );
    }
    if times.len() > 1 {
        let each: Vec<String> = times
            .iter()
            .map(|(t, c)| format!("{:.1} ({:.1})", ms(*t), ms(*c)))
            .collect();
        let _ = writeln!(out, "runs, ms total (compute): {}", each.join(", "));
    }
    if a.profile {
        let mut ops = r.op_times.clone();
        ops.sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(y.0)));
        for (op, t) in ops {
            let _ = writeln!(out, "  {op:<16} {:9.1} ms", t.as_secs_f64() * 1e3);
        }
    }
    write_output(None, &out)
}
