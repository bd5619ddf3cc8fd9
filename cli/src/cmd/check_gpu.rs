//! `moe-opt check-gpu [CASE...] [--gpus W] [--precision f32|bf16|both] [--rtol-f32 R]
//! [--rtol-bf16 R] [--max-flipped F] [--seed S]`: the CUDA executor against the CPU executor.
//!
//! Every case (default: the bundled `backend/tests/families/*.toml`, read from the repository
//! root) is run in each of its forms (original, PPMoE rewrite, PPMoE cut into two pipeline
//! stages; see [`crate::cases::forms`]) on the CPU in f32 and on CUDA in each precision asked, with
//! the same seeded weights and inputs; per output the largest error relative to the tensor's
//! scale is printed, and the command exits 1 when a form differs beyond the precision's tolerance
//! (see `moe_backend::cross_check` for how tokens whose expert choice flipped under rounding are
//! handled).

use crate::cases::{self, Case, FAMILIES};
use crate::io::write_output;
use miette::{miette, IntoDiagnostic, Result, WrapErr};
use moe_backend::{
    cross_check, CrossCheck, CrossCheckOptions, Device, Precision, RunOptions, Weights,
};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Case files (TOML: config, mesh, seq, tp, set). Default: every file of
    /// backend/tests/families (run from the repository root).
    cases: Vec<PathBuf>,
    /// GPUs: 1 (every rank on GPU 0) or W (meshes of W ranks, rank r on GPU r, NCCL).
    #[arg(long, default_value_t = 1, value_name = "W")]
    gpus: usize,
    /// CUDA precision(s) checked against the CPU's f32 (`both`: one process each, since burn fixes
    /// a GPU's float type at its first use in a process).
    #[arg(long, value_enum, default_value_t = CheckPrecision::Both)]
    precision: CheckPrecision,
    /// Tolerance of CUDA f32. burn's f32 GEMMs run on tensor cores in TF32 (inputs rounded to
    /// 10 mantissa bits, unit roundoff 4.9e-4): about 10 units.
    #[arg(long, default_value_t = 5e-3, value_name = "R")]
    rtol_f32: f64,
    /// Tolerance of CUDA bf16 (8 mantissa bits, unit roundoff 3.9e-3, every value stored so):
    /// about 5 units.
    #[arg(long, default_value_t = 2e-2, value_name = "R")]
    rtol_bf16: f64,
    /// Largest accepted fraction of (token, router) expert choices that differ from the CPU's
    /// (measured on an H200: none in f32, 2 to 5% in bf16).
    #[arg(long, default_value_t = 0.15, value_name = "F")]
    max_flipped: f64,
    /// Seed of the weights and inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// `--precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckPrecision {
    F32,
    Bf16,
    Both,
}

/// The verdicts so far.
#[derive(Debug, Default)]
struct Tally {
    passed: usize,
    failed: Vec<String>,
    skipped: Vec<String>,
}

fn check_paths(a: &Args) -> Result<Vec<PathBuf>> {
    if !a.cases.is_empty() {
        return Ok(a.cases.clone());
    }
    let dir = Path::new(FAMILIES);
    if !dir.is_dir() {
        return Err(miette!(
            "no case files given and `{FAMILIES}` is not here: run from the repository root or name case files"
        ));
    }
    cases::in_folder(dir)
}

/// One line per output, indented.
fn describe(c: &CrossCheck, rtol: f64) -> String {
    let mut s = String::new();
    for o in &c.outputs {
        let verdict = if o.passes(rtol) { "ok" } else { "DIFFERS" };
        match (&o.all, &o.kept) {
            (Ok(all), Ok(kept)) if o.rows_left_out > 0 => {
                let _ = writeln!(
                    s,
                    "    output {}: max abs {:.3e}, max rel {:.3e} on the {} of {} rows no routing flip reaches (all rows: {:.3e}) {verdict}",
                    o.name,
                    kept.max_abs,
                    kept.rel,
                    o.rows - o.rows_left_out,
                    o.rows,
                    all.rel
                );
            }
            (_, Ok(kept)) => {
                let _ = writeln!(
                    s,
                    "    output {}: max abs {:.3e}, max rel {:.3e} (scale {:.3e}) {verdict}",
                    o.name, kept.max_abs, kept.rel, kept.scale
                );
            }
            (_, Err(why)) => {
                let _ = writeln!(s, "    output {}: {why} {verdict}", o.name);
            }
        }
    }
    let _ = writeln!(
        s,
        "    routing: {} of {} (token, router) choices differ, in {} of {} sequences of {} tokens ({} attention)",
        c.flipped,
        c.choices,
        c.sequences_flipped,
        c.sequences,
        c.seq,
        if c.causal { "causal" } else { "full" }
    );
    s
}

fn check_case(a: &Args, case: &Case, precisions: &[(Precision, f64)], t: &mut Tally) -> Result<()> {
    for form in cases::forms(case, a.gpus) {
        let id = format!("{} / {}", case.name, form.label);
        let g = match &form.graph {
            Ok(g) => g,
            Err(why) => {
                write_output(None, &format!("{id}: skipped ({why})\n"))?;
                t.skipped.push(format!("{id}: {why}"));
                continue;
            }
        };
        for &(precision, rtol) in precisions {
            let opts = CrossCheckOptions {
                reference: RunOptions {
                    device: Device::Cpu,
                    precision: Precision::F32,
                    seed: a.seed,
                    micro_batches: None,
                    profile: false,
                },
                candidate: RunOptions {
                    device: Device::Cuda { gpus: a.gpus },
                    precision,
                    seed: a.seed,
                    micro_batches: None,
                    profile: false,
                },
                rtol,
                max_flipped: a.max_flipped,
            };
            let c = cross_check(g, &Weights::Seeded, &opts).map_err(|e| miette!("{id}: {e}"))?;
            let verdict = if c.passed { "ok" } else { "MISMATCH" };
            let mut out = format!(
                "{id}: cuda {} vs cpu f32 on {} ranks, rtol {rtol:e}: {verdict} (cpu {:.0} ms, cuda {:.0} ms)\n",
                precision.name(),
                g.mesh.ranks(),
                c.times[0].as_secs_f64() * 1e3,
                c.times[1].as_secs_f64() * 1e3
            );
            out.push_str(&describe(&c, rtol));
            if let Some(why) = &c.failure {
                let _ = writeln!(out, "    {why}");
                t.failed.push(format!("{id} ({}): {why}", precision.name()));
            } else {
                t.passed += 1;
            }
            write_output(None, &out)?;
        }
    }
    Ok(())
}

/// `--precision both`: this command again per precision, each in its own process (burn fixes a
/// GPU's float type at its first use in a process).
fn each_precision_in_its_own_process(a: &Args) -> Result<()> {
    let exe = std::env::current_exe()
        .into_diagnostic()
        .wrap_err("cannot find this program to run it once per precision")?;
    let mut failed = Vec::new();
    for p in ["f32", "bf16"] {
        let status = Command::new(&exe)
            .arg("check-gpu")
            .args(&a.cases)
            .args(["--precision", p])
            .args(["--gpus", &a.gpus.to_string()])
            .args(["--rtol-f32", &a.rtol_f32.to_string()])
            .args(["--rtol-bf16", &a.rtol_bf16.to_string()])
            .args(["--max-flipped", &a.max_flipped.to_string()])
            .args(["--seed", &a.seed.to_string()])
            .status()
            .into_diagnostic()
            .wrap_err_with(|| format!("cannot run `{} check-gpu`", exe.display()))?;
        if !status.success() {
            failed.push(p);
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(miette!("check-gpu failed in {}", failed.join(" and ")))
    }
}

pub fn run(a: Args) -> Result<()> {
    for (name, r) in [("--rtol-f32", a.rtol_f32), ("--rtol-bf16", a.rtol_bf16)] {
        if !(r.is_finite() && r >= 0.0) {
            return Err(miette!("{name} must be a non-negative number"));
        }
    }
    if !(0.0..=1.0).contains(&a.max_flipped) {
        return Err(miette!("--max-flipped must be a fraction between 0 and 1"));
    }
    let precisions: Vec<(Precision, f64)> = match a.precision {
        CheckPrecision::F32 => vec![(Precision::F32, a.rtol_f32)],
        CheckPrecision::Bf16 => vec![(Precision::Bf16, a.rtol_bf16)],
        CheckPrecision::Both => return each_precision_in_its_own_process(&a),
    };
    let paths = check_paths(&a)?;
    let mut tally = Tally::default();
    for p in &paths {
        let case = cases::read(p)?;
        check_case(&a, &case, &precisions, &mut tally)?;
    }
    let mut out = format!(
        "{} checks passed, {} failed, {} forms skipped (CUDA on {} GPU(s) against the CPU, seed {})\n",
        tally.passed,
        tally.failed.len(),
        tally.skipped.len(),
        a.gpus,
        a.seed
    );
    for f in &tally.failed {
        let _ = writeln!(out, "MISMATCH {f}");
    }
    write_output(None, &out)?;
    if tally.passed == 0 && tally.failed.is_empty() {
        return Err(miette!("no check ran: every form was skipped"));
    }
    if tally.failed.is_empty() {
        Ok(())
    } else {
        Err(miette!(
            "{} of {} checks differ beyond tolerance",
            tally.failed.len(),
            tally.failed.len() + tally.passed
        ))
    }
}
