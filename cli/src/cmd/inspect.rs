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

/// The keys of an HF config (after `sets`) its import does not read; `None` for graphs.
fn ignored_keys(text: &str, sets: &[String]) -> Option<Vec<moe_ir::hf::Ignored>> {
    let mut v: serde_json::Value = serde_json::from_str(text).ok()?;
    if !moe_ir::hf::looks_like_hf_config(&v) {
        return None;
    }
    for s in sets {
        moe_ir::hf::apply_set(&mut v, s).ok()?;
    }
    moe_ir::hf::parse_spec_reporting(&v).ok().map(|(_, i)| i)
}

pub fn run(a: Args) -> Result<()> {
    let text = read_input(&a.model)?;
    let g = load(&a.model, &text, &a.import)?;
    let s = Summary::of(&g);
    let ignored = ignored_keys(&text, &a.import.sets);
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
        if let (Some(ig), Some(obj)) = (&ignored, v.as_object_mut()) {
            let list = ig
                .iter()
                .map(|i| serde_json::json!({"key": i.key, "may_change_function": i.unknown}))
                .collect();
            obj.insert("ignored_config_keys".into(), serde_json::Value::Array(list));
        }
        let mut j = serde_json::to_string_pretty(&v).into_diagnostic()?;
        j.push('\n');
        j
    } else {
        let mut out = match &schedule {
            Some(r) => format!("{s}{r}"),
            None => s.to_string(),
        };
        if let Some(ig) = &ignored {
            let list = |unknown: bool| {
                let keys: Vec<&str> = ig
                    .iter()
                    .filter(|i| i.unknown == unknown)
                    .map(|i| i.key.as_str())
                    .collect();
                if keys.is_empty() {
                    "none".to_string()
                } else {
                    keys.join(", ")
                }
            };
            out.push_str(&format!(
                "config keys not modelled that may change the function: {}\n\
                 config keys ignored as inert (training, ids, bookkeeping): {}\n",
                list(true),
                list(false)
            ));
        }
        out
    };
    write_output(None, &out)
}
