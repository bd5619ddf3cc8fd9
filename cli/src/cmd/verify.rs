//! `moe-opt verify A B --backend cpu [--tokens N] [--rtol R] [--seed S] [--weights W]`.

use crate::exec::{is_hf_config, load_at, ExecArgs};
use crate::input::{self, read_model, Given};
use crate::io::write_output;
use crate::load::ImportArgs;
use miette::{miette, Result};
use moe_backend::{verify_with, Inputs, VerifyOptions};
use std::fmt::Write as _;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The reference: model.json, Hugging Face config.json (`-` for stdin) or a checkpoint
    /// folder.
    a: String,
    /// The program checked against it (model.json or config.json).
    b: String,
    /// Largest accepted error per output: max|a - b| / max(max|a|, max|b|).
    #[arg(long, default_value_t = 1e-5, value_name = "R")]
    rtol: f64,
    #[command(flatten)]
    exec: ExecArgs,
    #[command(flatten)]
    import: ImportArgs,
}

pub fn run(a: Args) -> Result<()> {
    if !(a.rtol.is_finite() && a.rtol >= 0.0) {
        return Err(miette!("--rtol must be a non-negative number"));
    }
    if a.a == "-" && a.b == "-" {
        return Err(miette!("only one of A and B can be standard input"));
    }
    let opts = VerifyOptions {
        run: a.exec.options()?,
        rtol: a.rtol,
    };
    let folder_a = read_model(&a.a).ok().and_then(|m| m.folder);
    let ids = Given::read(&a.exec, folder_a.as_deref())?;
    // Import options (`--set`, `--mesh`, ...) apply to whichever of A and B is an HF config.
    let load = |name: &str| -> Result<(moe_ir::Graph, Option<Inputs>, Option<std::path::PathBuf>)> {
        let m = read_model(name)?;
        let mut import = a.import.clone();
        if !is_hf_config(&m.text) {
            import.sets.clear();
        }
        let Some(ids) = &ids else {
            let g = load_at(&m.name, &m.text, &import, a.exec.tokens)?;
            return Ok((g, None, m.folder));
        };
        let (b, s) = ids.batch_seq();
        let g = input::load_for_ids(&m, &import, b, s)?;
        let inputs = ids.inputs_for(&g)?;
        Ok((g, Some(inputs), m.folder))
    };
    let (ga, ia, folder) = load(&a.a)?;
    let (gb, ib, _) = load(&a.b)?;
    let micro = opts
        .run
        .micro_batches
        .or(ia.as_ref().map(Inputs::micro_batches))
        .unwrap_or(1);
    let folder = folder.as_deref();
    input::check_memory(&[&ga, &gb], &a.exec, a.exec.weights_path(folder), micro)?;
    let weights = a.exec.weights(folder)?;
    let v = verify_with(&ga, &gb, &weights, [ia.as_ref(), ib.as_ref()], &opts)
        .map_err(|e| miette!("{e}"))?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "a: {} on mesh {} ({:.1} ms)\nb: {} on mesh {} ({:.1} ms)\n{}, {:?} {:?}, {} micro-batch{}, {} nodes shared by name and type",
        a.a,
        ga.mesh,
        v.times[0].as_secs_f64() * 1e3,
        a.b,
        gb.mesh,
        v.times[1].as_secs_f64() * 1e3,
        a.exec.weights_label(folder),
        opts.run.device,
        opts.run.precision,
        v.micro_batches,
        if v.micro_batches == 1 { "" } else { "es" },
        v.shared_nodes
    );
    for o in &v.outputs {
        let verdict = if o.passes(a.rtol) { "ok" } else { "DIFFERS" };
        match &o.diff {
            Ok(d) => {
                let _ = writeln!(
                    out,
                    "output {}: max abs {:.3e}, max rel {:.3e} (scale {:.3e}) {verdict}",
                    o.name, d.max_abs, d.rel, d.scale
                );
            }
            Err(why) => {
                let _ = writeln!(out, "output {}: {why} {verdict}", o.name);
            }
        }
    }
    if v.passed {
        let _ = writeln!(out, "equivalent within rtol {:e}", a.rtol);
        return write_output(None, &out);
    }
    match &v.first_differing {
        Some(n) => {
            let _ = writeln!(
                out,
                "first differing node: `{}` output {} (max abs {:.3e}, max rel {:.3e})",
                n.node, n.output, n.diff.max_abs, n.diff.rel
            );
            let router = ga
                .find(&n.node)
                .is_some_and(|id| matches!(ga.node(id).op, moe_ir::Op::Router(_)));
            if router {
                let _ = writeln!(
                    out,
                    "  `{}` chooses experts: a token whose top scores are nearly tied can pick another expert when \
                     rounding differs (TF32/bf16 GEMMs on CUDA, partial sums added in another order), and \
                     everything after it differs; `moe-opt check-gpu` compares devices leaving out what a \
                     flipped choice reaches, and `--precision f64` on the CPU makes ties vanishingly rare",
                    n.node
                );
            }
        }
        None => {
            let _ = writeln!(out, "no node shared by name and type differs");
        }
    }
    write_output(None, &out)?;
    Err(miette!("the programs differ beyond rtol {:e}", a.rtol))
}
