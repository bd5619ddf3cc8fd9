//! What `run` and `verify` share: execution options, loading a model at a token count, reading
//! weights from files.

use crate::load::ImportArgs;
use clap::{Args as ClapArgs, ValueEnum};
use miette::{miette, IntoDiagnostic, Result, WrapErr};
use moe_backend::{Checkpoint, Device, Precision, RunOptions, Weights};
use moe_ir::hf;
use moe_ir::{Graph, Op};
use std::path::{Path, PathBuf};

/// Where graphs execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// burn-ndarray on the CPU, every rank of the mesh simulated in this process.
    Cpu,
    /// NVIDIA GPUs through burn-cuda (a build with `--features cuda`): `--gpus 1` puts every
    /// rank on GPU 0, `--gpus W` with W the mesh's ranks puts rank r on GPU r (NCCL).
    Cuda,
}

/// Float precision of the computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrecisionArg {
    F32,
    F64,
    /// bfloat16 (CUDA only).
    Bf16,
}

/// Execution options (shared by `run` and `verify`).
#[derive(Debug, Clone, ClapArgs)]
pub struct ExecArgs {
    /// Where to execute.
    #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
    pub backend: BackendArg,
    /// Tokens of the whole batch (all ranks). For an HF config it sets the imported token count
    /// (tokens per rank = tokens / ranks; a sequence is `--seq` or, when longer, a rank's tokens);
    /// a model.json graph must already have this many.
    #[arg(long, value_name = "N")]
    pub tokens: Option<u64>,
    /// Weights: a safetensors file, or an HF checkpoint folder (`model.safetensors.index.json`
    /// or `model.safetensors`). Default: seeded initialisation.
    #[arg(long, value_name = "PATH")]
    pub weights: Option<PathBuf>,
    /// Seed of the inputs and of seeded weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Float precision of the computation (any declared dtype computes in it).
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    pub precision: PrecisionArg,
    /// Micro-batches to run, each a forward pass of the graph on its own inputs (a pipelined
    /// graph's stages run them in its schedule's order). Default: the pipeline's micro-batches
    /// (for `verify`, the larger of the two graphs'), else 1.
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u32).range(1..))]
    pub micro_batches: Option<u32>,
    /// GPUs of `--backend cuda`: 1 (every rank on GPU 0) or the mesh's rank count (rank r on
    /// GPU r).
    #[arg(long, value_name = "W")]
    pub gpus: Option<usize>,
    /// Token ids to run instead of seeded ones: `.npy` or `.safetensors` integers `[batch, seq]`,
    /// or JSON `[[ids], ...]` (an encoder-decoder takes `input_ids` and `decoder_input_ids` by
    /// name). An HF config is imported with `seq`-token sequences, one per rank per micro-batch.
    #[arg(long, value_name = "FILE", conflicts_with = "prompt")]
    pub input: Option<PathBuf>,
    /// Text to run, as one sequence of the ids `--tokenizer` encodes it to (`run` then prints the
    /// top next tokens decoded).
    #[arg(long, value_name = "TEXT")]
    pub prompt: Option<String>,
    /// The Hugging Face tokenizer.json of `--prompt` (default: tokenizer.json in the checkpoint
    /// folder given as the model).
    #[arg(long, value_name = "FILE", requires = "prompt")]
    pub tokenizer: Option<PathBuf>,
    /// Run even when the estimated peak memory exceeds the memory available.
    #[arg(long)]
    pub allow_over_memory: bool,
}

impl ExecArgs {
    /// The backend's run options.
    pub fn options(&self) -> Result<RunOptions> {
        let device = match self.backend {
            BackendArg::Cpu if self.gpus.is_some() => {
                return Err(miette!("--gpus applies to --backend cuda"))
            }
            BackendArg::Cpu => Device::Cpu,
            BackendArg::Cuda => Device::Cuda {
                gpus: self.gpus.unwrap_or(1),
            },
        };
        let precision = match self.precision {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::F64 => Precision::F64,
            PrecisionArg::Bf16 => Precision::Bf16,
        };
        Ok(RunOptions {
            device,
            precision,
            seed: self.seed,
            micro_batches: self.micro_batches,
            profile: false,
        })
    }

    /// Where the weights are read from: `--weights`, else the model's checkpoint `folder`.
    pub fn weights_path<'a>(&'a self, folder: Option<&'a Path>) -> Option<&'a Path> {
        self.weights.as_deref().or(folder)
    }

    /// The weights: read from [`Self::weights_path`], else seeded.
    pub fn weights(&self, folder: Option<&Path>) -> Result<Weights> {
        match self.weights_path(folder) {
            None => Ok(Weights::Seeded),
            Some(p) => read_checkpoint(p).map(Weights::Checkpoint),
        }
    }

    /// Describes the weights for a report line.
    pub fn weights_label(&self, folder: Option<&Path>) -> String {
        match self.weights_path(folder) {
            None => format!("seeded weights (seed {})", self.seed),
            Some(p) => format!("weights {}", p.display()),
        }
    }
}

/// The token count of each graph input: its first dim (token ids `[T]`, activations `[T, H]`).
fn token_inputs(g: &Graph) -> impl Iterator<Item = (&str, u64)> {
    g.nodes().filter_map(|(_, n)| match &n.op {
        Op::Input(t) if t.rank() >= 1 => Some((n.name.as_str(), t.shape[0])),
        _ => None,
    })
}

/// Whether `text` is a Hugging Face config (rather than a model.json graph).
pub fn is_hf_config(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text).is_ok_and(|v| hf::looks_like_hf_config(&v))
}

/// Loads `text` (named `name`): an HF config imported with `tokens` tokens when given, or a
/// model.json or text-form graph (which must have `tokens` tokens when given).
pub fn load_at(name: &str, text: &str, import: &ImportArgs, tokens: Option<u64>) -> Result<Graph> {
    let Some(tokens) = tokens else {
        return crate::load::load(name, text, import);
    };
    let value: Option<serde_json::Value> = serde_json::from_str(text).ok();
    if !value.as_ref().is_some_and(hf::looks_like_hf_config) {
        let g = crate::load::load(name, text, import)?;
        let kind = if crate::load::is_text_form(text) {
            "text-form"
        } else {
            "model.json"
        };
        if let Some((input, n)) = token_inputs(&g).find(|&(_, n)| n != tokens) {
            return Err(miette!(
                "{name}: this {kind} graph has {n} tokens (input `{input}`), not --tokens {tokens}; \
                 a graph's token count is fixed at import: re-import the config with --tokens {tokens} \
                 (or --seq/--micro-batch) and rewrite it again"
            ));
        }
        return Ok(g);
    }
    let spec = crate::load::spec_of(name, value.unwrap_or_default(), &import.sets)?;
    let mut opts = import.options()?;
    let mesh = opts
        .mesh
        .clone()
        .unwrap_or_else(|| hf::default_mesh(&spec, opts.gpus_per_node));
    let ranks = mesh.ranks();
    if tokens == 0 || tokens % ranks != 0 {
        return Err(miette!(
            "--tokens {tokens}: must be a positive multiple of the {ranks} ranks of the mesh ({mesh})"
        ));
    }
    let local = tokens / ranks;
    if opts.seq >= local {
        opts.seq = local;
        opts.micro_batch = 1;
    } else if local % opts.seq == 0 {
        opts.micro_batch = local / opts.seq;
    } else {
        return Err(miette!(
            "--tokens {tokens}: {local} tokens per rank are not a whole number of --seq {} sequences",
            opts.seq
        ));
    }
    opts.mesh = Some(mesh);
    hf::lower(&spec, &opts).map_err(|e| miette!("{name}: {e}"))
}

/// Reads a safetensors file, or the files of an HF checkpoint folder.
fn read_checkpoint(path: &Path) -> Result<Checkpoint> {
    let mut files: Vec<PathBuf> = Vec::new();
    if path.is_dir() {
        let index = path.join("model.safetensors.index.json");
        if index.is_file() {
            let text = std::fs::read_to_string(&index)
                .into_diagnostic()
                .wrap_err_with(|| format!("cannot read `{}`", index.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .into_diagnostic()
                .wrap_err_with(|| format!("`{}` is not JSON", index.display()))?;
            let map = v
                .get("weight_map")
                .and_then(serde_json::Value::as_object)
                .ok_or_else(|| miette!("`{}` has no `weight_map` object", index.display()))?;
            let mut names: Vec<&str> = map.values().filter_map(serde_json::Value::as_str).collect();
            names.sort_unstable();
            names.dedup();
            files.extend(names.into_iter().map(|n| path.join(n)));
        } else if path.join("model.safetensors").is_file() {
            files.push(path.join("model.safetensors"));
        } else {
            return Err(miette!(
                "`{}` has neither model.safetensors.index.json nor model.safetensors",
                path.display()
            ));
        }
    } else {
        files.push(path.to_path_buf());
    }
    let mut c = Checkpoint::new();
    for f in files {
        let bytes = std::fs::read(&f)
            .into_diagnostic()
            .wrap_err_with(|| format!("cannot read `{}`", f.display()))?;
        c.add_file(f.display().to_string(), bytes)
            .map_err(|e| miette!("{e}"))?;
    }
    Ok(c)
}
