//! `moe-opt run MODEL --backend cpu|cuda [--gpus W] [--tokens N] [--weights W] [--seed S] [--repeat N]
//! [--input IDS] [-o OUT.safetensors] [--dump NODE,...]`.

use crate::exec::{load_at, ExecArgs};
use crate::input::{self, read_model, Given};
use crate::io::{write_bytes, write_output};
use crate::load::ImportArgs;
use miette::{miette, Result};
use moe_backend::{run_with, HostTensor};
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// model.json, Hugging Face config.json (`-` for stdin), or a checkpoint folder (config.json
    /// and its safetensors, sharded with an index or not).
    model: String,
    /// Write the graph outputs (logits `[batch, seq, vocab]` with `--input`) and the `--dump`
    /// values to this safetensors file, as f32 (atomically: nothing is written on an error).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// Also write the values of these nodes (by name, comma-separated) to `-o`.
    #[arg(
        long,
        value_name = "NODE,...",
        value_delimiter = ',',
        requires = "output"
    )]
    dump: Vec<String>,
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
    let m = read_model(&a.model)?;
    let given = Given::read(&a.exec, m.folder.as_deref())?;
    let (g, inputs, batch_seq) = match &given {
        Some(ids) => {
            let (b, s) = ids.batch_seq();
            let g = input::load_for_ids(&m, &a.import, b, s)?;
            let inputs = ids.inputs_for(&g)?;
            (g, Some(inputs), Some((b, s)))
        }
        None => (
            load_at(&m.name, &m.text, &a.import, a.exec.tokens)?,
            None,
            None,
        ),
    };
    let micro = opts
        .micro_batches
        .or(inputs.as_ref().map(|i| i.micro_batches()))
        .unwrap_or_else(|| g.pipeline.as_ref().map_or(1, |p| p.micro_batches));
    let folder = m.folder.as_deref();
    input::check_memory(&[&g], &a.exec, a.exec.weights_path(folder), micro)?;
    let weights = a.exec.weights(folder)?;
    let go = || {
        run_with(&g, &weights, inputs.as_ref(), &a.dump, &opts)
            .map_err(|e| miette!("{}: {e}", m.name))
    };
    let mut r = go()?;
    let mut times = vec![(r.total, r.compute)];
    for _ in 1..a.repeat {
        r = go()?;
        times.push((r.total, r.compute));
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "model {} on mesh {} ({} ranks), {}, {:?} {:?}",
        g.name,
        g.mesh,
        g.mesh.ranks(),
        a.exec.weights_label(folder),
        opts.device,
        opts.precision
    );
    let _ = writeln!(out, "{}", schedule_line(&g, &r));
    for (name, t) in &r.outputs {
        let _ = writeln!(out, "output {name} {:?}: {}", t.shape, checksum(t));
    }
    if let (Some((b, s)), Some((name, logits))) = (batch_seq, r.outputs.first()) {
        for (seq, top) in input::top_next(logits, b, s, 5).iter().enumerate() {
            let tok = given.as_ref().and_then(|g| g.tokenizer.as_ref());
            let best: Vec<String> = top
                .iter()
                .map(|(i, v)| match tok {
                    Some(t) => format!("{i} {:?} ({v:.4})", t.decode(*i)),
                    None => format!("{i} ({v:.4})"),
                })
                .collect();
            let _ = writeln!(
                out,
                "sequence {seq}: top-5 next tokens by `{name}`: {}",
                best.join(", ")
            );
        }
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
    if let Some(path) = &a.output {
        let mut all = r.outputs.clone();
        all.extend(r.dumped.iter().cloned());
        let bytes = input::safetensors_of(&all, batch_seq)?;
        write_bytes(path, &bytes)?;
        let _ = writeln!(out, "wrote {} tensors to {}", all.len(), path.display());
    }
    write_output(None, &out)
}
