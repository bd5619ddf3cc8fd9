//! What `run` and `verify` read besides the model: a checkpoint folder given as the model, token
//! ids (`--input`), the memory preflight, and the logits file they write (`-o`).

use crate::exec::ExecArgs;
use crate::load::ImportArgs;
use miette::{miette, IntoDiagnostic, Result, WrapErr};
use moe_backend::inputs::parse;
use moe_backend::{estimate_memory, HostTensor, Inputs, TokenIds};
use moe_ir::hf;
use moe_ir::units::bytes as human;
use moe_ir::{Graph, Mesh};
use std::path::{Path, PathBuf};

/// A model argument: a config or graph file (or `-`), or a checkpoint folder holding
/// `config.json` and its safetensors.
#[derive(Debug)]
pub struct Model {
    pub name: String,
    pub text: String,
    /// The checkpoint folder, when the model was given as one.
    pub folder: Option<PathBuf>,
}

/// Reads the model argument.
pub fn read_model(arg: &str) -> Result<Model> {
    let path = Path::new(arg);
    if arg != "-" && path.is_dir() {
        let config = path.join("config.json");
        let text = std::fs::read_to_string(&config)
            .into_diagnostic()
            .wrap_err_with(|| format!("`{arg}` is a folder without a readable config.json"))?;
        return Ok(Model {
            name: config.display().to_string(),
            text,
            folder: Some(path.to_path_buf()),
        });
    }
    Ok(Model {
        name: arg.to_string(),
        text: crate::io::read_input(arg)?,
        folder: None,
    })
}

/// Token ids from `path`: `.npy` ([batch, seq] integers), `.safetensors` (integer tensors; one
/// feeds every input, several feed the inputs they name) or `.json` (`[[ids]]`, or an object by
/// input name).
pub fn read_ids(path: &Path) -> Result<Vec<(Option<String>, TokenIds)>> {
    let what = path.display().to_string();
    let bytes = std::fs::read(path)
        .into_diagnostic()
        .wrap_err_with(|| format!("cannot read `{what}`"))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let e = |e: moe_backend::InputError| miette!("{e}");
    match ext {
        "npy" => Ok(vec![(
            None,
            parse::ids_of(parse::npy(&bytes, &what).map_err(e)?, &what).map_err(e)?,
        )]),
        "safetensors" => {
            let mut all = parse::safetensors_ids(&bytes, &what).map_err(e)?;
            if all.len() == 1 {
                return Ok(vec![(None, all.remove(0).1)]);
            }
            Ok(all.into_iter().map(|(n, t)| (Some(n), t)).collect())
        }
        "json" => {
            let text = String::from_utf8(bytes).map_err(|_| miette!("{what}: not UTF-8 text"))?;
            parse::json_ids(&text, &what).map_err(e)
        }
        _ => Err(miette!(
            "{what}: token ids are read from .npy, .safetensors or .json files"
        )),
    }
}

/// Loads `model` for ids of `batch` sequences of `seq` tokens: an HF config is imported with
/// `seq`-token sequences, one per rank per micro-batch, on `--mesh` or the largest `ep` of 8, 4,
/// 2, 1 that divides both the experts and `batch`; a graph is loaded as it is (its shape is
/// checked against the ids after).
pub fn load_for_ids(m: &Model, import: &ImportArgs, batch: usize, seq: usize) -> Result<Graph> {
    let value: Option<serde_json::Value> = serde_json::from_str(&m.text).ok();
    let Some(config) = value.filter(hf::looks_like_hf_config) else {
        return crate::load::load(&m.name, &m.text, import);
    };
    let name = &m.name;
    let spec = crate::load::spec_of(name, config, &import.sets)?;
    let mut opts = import.options()?;
    if opts.mesh.is_none() {
        let experts = spec.moe.map_or(1, |x| x.experts);
        let ep = [8u64, 4, 2, 1]
            .into_iter()
            .find(|&n| experts % n == 0 && batch as u64 % n == 0)
            .unwrap_or(1);
        opts.mesh = Some(
            Mesh::parse(&format!("ep={ep}"), opts.gpus_per_node)
                .map_err(|e| miette!("--mesh: {e}"))?,
        );
    }
    opts.seq = seq as u64;
    opts.micro_batch = 1;
    hf::lower(&spec, &opts).map_err(|e| miette!("{name}: {e}"))
}

/// Token ids given on the command line, named for messages: `--input FILE`'s, or `--prompt`
/// encoded by its tokenizer (returned too, to decode the top next tokens).
#[derive(Debug)]
pub struct Given {
    pub what: String,
    pub ids: Vec<(Option<String>, TokenIds)>,
    pub tokenizer: Option<crate::prompt::Tok>,
}

impl Given {
    /// The ids of `exec` (none when neither `--input` nor `--prompt` is given); the tokenizer
    /// defaults to `tokenizer.json` in the model's checkpoint `folder`.
    pub fn read(exec: &ExecArgs, folder: Option<&Path>) -> Result<Option<Given>> {
        if exec.tokens.is_some() && (exec.input.is_some() || exec.prompt.is_some()) {
            return Err(miette!(
                "--tokens with --input or --prompt: the ids set the tokens"
            ));
        }
        if let Some(p) = &exec.input {
            return Ok(Some(Given {
                what: p.display().to_string(),
                ids: read_ids(p)?,
                tokenizer: None,
            }));
        }
        let Some(text) = &exec.prompt else {
            return Ok(None);
        };
        let path = match (&exec.tokenizer, folder) {
            (Some(t), _) => t.clone(),
            (None, Some(f)) => f.join("tokenizer.json"),
            (None, None) => {
                return Err(miette!(
                    "--prompt needs --tokenizer tokenizer.json (or a checkpoint folder holding one as the model)"
                ))
            }
        };
        let tok = crate::prompt::Tok::load(&path)?;
        Ok(Some(Given {
            what: format!("--prompt (tokenized by {})", path.display()),
            ids: vec![(None, tok.encode(text)?)],
            tokenizer: Some(tok),
        }))
    }

    /// Sequences and their length.
    pub fn batch_seq(&self) -> (usize, usize) {
        self.ids.first().map_or((0, 0), |(_, t)| (t.batch, t.seq))
    }

    /// The ids laid out for `g`, with their source named in errors.
    pub fn inputs_for(&self, g: &Graph) -> Result<Inputs> {
        Inputs::for_graph(g, &self.ids).map_err(|e| miette!("{}: {e}", self.what))
    }
}

/// The memory available to this process: `MemAvailable` of /proc/meminfo, when readable.
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The size of the checkpoint files `exec` will read (they are held in memory during a run).
fn checkpoint_bytes(weights: Option<&Path>) -> u64 {
    let Some(p) = weights else { return 0 };
    let files: Vec<PathBuf> = if p.is_dir() {
        std::fs::read_dir(p)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| f.extension().is_some_and(|x| x == "safetensors"))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        vec![p.to_path_buf()]
    };
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum()
}

/// Refuses a CPU run of `graphs` whose estimated peak memory exceeds what is available (unless
/// `--allow-over-memory`), before anything is allocated.
pub fn check_memory(
    graphs: &[&Graph],
    exec: &ExecArgs,
    weights: Option<&Path>,
    micro: u32,
) -> Result<()> {
    if exec.allow_over_memory || exec.backend != crate::exec::BackendArg::Cpu {
        return Ok(());
    }
    let Some(available) = mem_available() else {
        return Ok(());
    };
    let precision = exec.options()?.precision;
    let ckpt = checkpoint_bytes(weights);
    // Graphs run one after the other; the largest one's peak counts, plus the checkpoint bytes.
    let (est, g) = graphs
        .iter()
        .map(|g| (estimate_memory(g, precision, micro), *g))
        .max_by_key(|(e, _)| e.total())
        .ok_or_else(|| miette!("no graph to run"))?;
    let total = est.total().saturating_add(ckpt);
    if total <= available {
        return Ok(());
    }
    Err(miette!(
        "`{}` would need about {} of memory on the CPU ({} weights, {} checkpoint files, {} values \
         of {} ranks, {} largest op's temporaries), and {} is available (MemAvailable in \
         /proc/meminfo); make the model smaller (--set), or pass --allow-over-memory to run anyway",
        g.name,
        human(total),
        human(est.weights.saturating_add(est.load)),
        human(ckpt),
        human(est.values),
        g.mesh.ranks(),
        human(est.workspace),
        human(available)
    ))
}

/// A safetensors file of f32 tensors (logits `[batch, seq, vocab]` when they cover `ids`).
pub fn safetensors_of(
    tensors: &[(String, HostTensor)],
    batch_seq: Option<(usize, usize)>,
) -> Result<Vec<u8>> {
    use safetensors::tensor::TensorView;
    let mut shapes = Vec::new();
    let mut data = Vec::new();
    for (_, t) in tensors {
        let mut shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        if let (Some((b, s)), [rows, rest @ ..]) = (batch_seq, shape.as_slice()) {
            if *rows == b * s {
                shape = [b, s].into_iter().chain(rest.iter().copied()).collect();
            }
        }
        shapes.push(shape);
        data.push(
            t.data
                .iter()
                .flat_map(|&v| (v as f32).to_le_bytes())
                .collect::<Vec<u8>>(),
        );
    }
    let views = tensors
        .iter()
        .zip(shapes.into_iter().zip(&data))
        .map(|((n, _), (s, d))| {
            TensorView::new(safetensors::Dtype::F32, s, d)
                .map(|v| (n.clone(), v))
                .map_err(|e| miette!("tensor `{n}`: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, None).map_err(|e| miette!("{e}"))
}

/// The `k` largest logits of the last position of each sequence: (sequence, [(id, logit)]).
pub fn top_next(logits: &HostTensor, batch: usize, seq: usize, k: usize) -> Vec<Vec<(usize, f64)>> {
    let vocab = logits.shape.last().copied().unwrap_or(0) as usize;
    (0..batch)
        .map(|b| {
            let row = (b * seq + seq - 1) * vocab;
            let Some(last) = logits.data.get(row..row + vocab) else {
                return Vec::new();
            };
            let mut idx: Vec<usize> = (0..vocab).collect();
            idx.sort_by(|&x, &y| last[y].total_cmp(&last[x]).then(x.cmp(&y)));
            idx.into_iter().take(k).map(|i| (i, last[i])).collect()
        })
        .collect()
}
