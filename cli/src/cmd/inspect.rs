//! `moe-opt inspect MODEL`.

use crate::io::{read_input, write_output};
use crate::load::{load, ImportArgs};
use miette::{miette, IntoDiagnostic, Result};
use moe_ir::Summary;
use moe_passes::cost::{Cluster, Roofline};
use moe_passes::pipeline::schedule::ScheduleReport;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// model.json or Hugging Face config.json (`-` for stdin).
    model: String,
    /// Print JSON (stable keys: format, layers, moe_layers, nodes, params, ops, collectives, mesh,
    /// stages, ...; `schedule` for a partitioned graph).
    #[arg(long)]
    json: bool,
    /// Cluster file pricing the pipeline schedule of a partitioned graph (default: one node of 8
    /// H200s).
    #[arg(long, value_name = "FILE")]
    cluster: Option<PathBuf>,
    #[command(flatten)]
    import: ImportArgs,
}

pub fn run(a: Args) -> Result<()> {
    let text = read_input(&a.model)?;
    let g = load(&a.model, &text, &a.import)?;
    let s = Summary::of(&g);
    let cluster = match &a.cluster {
        Some(p) => {
            let text = read_input(&p.to_string_lossy())?;
            Cluster::from_toml(&text).map_err(|e| miette!("{}: {e}", p.display()))?
        }
        None => Cluster::default(),
    };
    let memory = Some(cluster.gpu.memory_gb * 1e9);
    let schedule = ScheduleReport::of(&g, &Roofline { cluster }, memory)
        .transpose()
        .map_err(|e| miette!("{}: schedule: {e}", a.model))?;
    let out = if a.json {
        let mut v = serde_json::to_value(&s).into_diagnostic()?;
        if let (Some(r), Some(obj)) = (&schedule, v.as_object_mut()) {
            obj.insert(
                "schedule".into(),
                serde_json::to_value(r).into_diagnostic()?,
            );
        }
        let mut j = serde_json::to_string_pretty(&v).into_diagnostic()?;
        j.push('\n');
        j
    } else {
        match &schedule {
            Some(r) => format!("{s}{r}"),
            None => s.to_string(),
        }
    };
    write_output(None, &out)
}
