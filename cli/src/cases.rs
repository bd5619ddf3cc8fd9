//! Small model cases for checks: a TOML file naming a bundled Hugging Face config and the `--set`
//! overrides that cut it small (the format of `backend/tests/families/*.toml`), and the program
//! forms built from it: the imported expert-parallel original, its PPMoE rewrite (`rewrite --tp`)
//! and the PPMoE rewrite cut into two pipeline stages (`rewrite --tp --pp 2`).

use miette::{miette, IntoDiagnostic, Result, WrapErr};
use moe_ir::hf::ImportOptions;
use moe_ir::{DType, Graph, Mesh};
use moe_passes::pipeline::PipelinePartition;
use moe_passes::rewrite::DispatchRewrite;
use moe_passes::{Pipeline, TensorParallel};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The folder of the bundled cases, relative to the repository root.
pub const FAMILIES: &str = "backend/tests/families";

/// One case file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// The HF config, relative to the repository root.
    pub config: String,
    /// The mesh of the original (e.g. `ep=8`).
    pub mesh: String,
    /// Tokens per sequence.
    pub seq: u64,
    /// Tensor-parallel group of the PPMoE rewrite.
    pub tp: u64,
    /// `--set` overrides.
    pub set: Vec<String>,
    /// The file's stem.
    #[serde(skip)]
    pub name: String,
    /// The config's text.
    #[serde(skip)]
    pub text: String,
}

/// The case files of `dir`, sorted by name.
pub fn in_folder(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot list `{}`", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    Ok(paths)
}

/// Reads a case file and its config (found relative to the current folder, else to the case
/// file's folder or one above it).
pub fn read(path: &Path) -> Result<Case> {
    let text = std::fs::read_to_string(path)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read `{}`", path.display()))?;
    let mut case: Case = toml::from_str(&text).map_err(|e| miette!("{}: {e}", path.display()))?;
    case.name = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let config = Path::new(&case.config);
    let found = std::iter::once(PathBuf::from(config))
        .chain(path.ancestors().skip(1).map(|a| a.join(config)))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            miette!(
                "{}: config `{}` not found (relative to this folder or the case file's)",
                path.display(),
                case.config
            )
        })?;
    case.text = std::fs::read_to_string(&found)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read `{}`", found.display()))?;
    Ok(case)
}

impl Case {
    /// The case imported on `mesh` (f32, one sequence of `seq` tokens per rank).
    pub fn import(&self, mesh: &str) -> std::result::Result<Graph, String> {
        let opts = ImportOptions {
            mesh: Some(Mesh::parse(mesh, 8).map_err(|e| format!("mesh {mesh}: {e}"))?),
            seq: self.seq,
            micro_batch: 1,
            dtype: DType::F32,
            ..Default::default()
        };
        moe_ir::hf::import(&self.text, &self.set, &opts).map_err(|e| format!("import: {e}"))
    }
}

/// The PPMoE rewrite of `g` on tensor-parallel groups of `tp`, cut into `pp` pipeline stages when
/// `pp > 1` (1F1B over `2 * pp` micro-batches; the graph is one micro-batch's program).
pub fn rewrite(g: &Graph, tp: u64, pp: u32) -> std::result::Result<Graph, String> {
    let mut p = Pipeline::new()
        .with(TensorParallel {
            tp,
            gpus_per_node: 8,
        })
        .with(DispatchRewrite::default());
    if pp > 1 {
        p = p.with(PipelinePartition::new(pp, 2 * pp));
    }
    let what = if pp > 1 {
        format!("rewrite --tp {tp} --pp {pp}")
    } else {
        format!("rewrite --tp {tp}")
    };
    p.run(g.clone())
        .map(|(out, _)| out)
        .map_err(|e| format!("{what}: {e}"))
}

/// One program of a case: its label and the graph, or why it could not be built.
#[derive(Debug)]
pub struct Form {
    pub label: String,
    pub graph: std::result::Result<Graph, String>,
}

/// The forms checked on `gpus` GPUs. One GPU hosts any mesh: the case's own mesh, its PPMoE
/// rewrite on `tp`, and the PPMoE rewrite on tp 2 cut into 2 stages. W GPUs run meshes of W
/// ranks: the original on `ep=W`, its rewrite on tp W, and (W even) the original on `ep=W/2`
/// rewritten on tp W/2 and cut into 2 stages.
pub fn forms(case: &Case, gpus: usize) -> Vec<Form> {
    let w = gpus as u64;
    let (mesh, tp, pp_mesh, pp_tp) = if w <= 1 {
        (case.mesh.clone(), case.tp, Some(case.mesh.clone()), 2)
    } else {
        let half = (w % 2 == 0).then(|| format!("ep={}", w / 2));
        (format!("ep={w}"), w, half, w / 2)
    };
    let original = case.import(&mesh);
    let mut out = vec![
        Form {
            label: format!("original {mesh}"),
            graph: original.clone(),
        },
        Form {
            label: format!("ppmoe tp={tp}"),
            graph: original.and_then(|g| rewrite(&g, tp, 1)),
        },
    ];
    out.push(Form {
        label: format!("ppmoe tp={pp_tp} pp=2"),
        graph: match pp_mesh {
            Some(m) => case.import(&m).and_then(|g| rewrite(&g, pp_tp, 2)),
            None => Err(format!(
                "{gpus} GPUs: two pipeline stages of equal tensor-parallel groups need an even count"
            )),
        },
    });
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_path_buf()
    }

    #[test]
    fn bundled_cases_read_and_build_every_form_for_one_and_four_gpus() {
        let paths = in_folder(&root().join(FAMILIES)).unwrap();
        assert!(paths.len() >= 10);
        let case = read(&root().join(FAMILIES).join("mixtral-8x7b.toml")).unwrap();
        assert_eq!(case.name, "mixtral-8x7b");
        let one = forms(&case, 1);
        let labels: Vec<&str> = one.iter().map(|f| f.label.as_str()).collect();
        assert_eq!(labels, ["original ep=8", "ppmoe tp=4", "ppmoe tp=2 pp=2"]);
        assert!(one.iter().all(|f| f.graph.is_ok()));
        assert_eq!(one[2].graph.as_ref().unwrap().mesh.ranks(), 16);
        for f in forms(&case, 4) {
            let g = f.graph.unwrap_or_else(|e| panic!("{}: {e}", f.label));
            assert_eq!(g.mesh.ranks(), 4, "{}", f.label);
        }
        assert!(forms(&case, 3)[2].graph.is_err());
    }

    #[test]
    fn a_case_naming_a_missing_config_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.toml");
        std::fs::write(
            &p,
            "config = \"no/such.json\"\nmesh = \"ep=2\"\nseq = 4\ntp = 2\nset = []\n",
        )
        .unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("no/such.json"), "{e}");
        std::fs::write(&p, "config = 3\n").unwrap();
        assert!(read(&p).is_err());
    }
}
