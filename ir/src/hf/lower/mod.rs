//! Lowering a [`ModelSpec`] to the standard expert-parallel (DPMoE) graph.
//!
//! Tokens are split over the data-like mesh axes (`dp`, `ep`, in mesh order); experts over `ep`;
//! every other weight is replicated. Each MoE layer is
//! `router -> dispatch -> all_to_all(ep) -> expert_ffn -> all_to_all(ep) -> combine`
//! (plus shared experts beside it). Weight names follow the pattern `l{i}.{block}.{weight}`.

mod attention;

use super::spec::*;
use super::{ImportError, ImportOptions};
use crate::{
    Activation, DType, FfnLayout, Graph, Mesh, Op, RouterAttrs, Scope, TensorType, Value, F64,
};

/// Axes an imported graph may have.
const TOKEN_AXES: &[&str] = &["dp", "ep"];

/// The mesh used when none is given: `ep` = the largest of 8, 4, 2, 1 dividing the experts.
pub fn default_mesh(spec: &ModelSpec, gpus_per_node: u64) -> Mesh {
    let experts = spec.moe.map_or(1, |m| m.experts);
    let ep = [8u64, 4, 2, 1]
        .into_iter()
        .find(|n| experts % n == 0)
        .unwrap_or(1);
    Mesh::parse(&format!("ep={ep}"), gpus_per_node).expect("a one-axis mesh parses")
}

/// Checks that `mesh` suits the expert-parallel form of `spec`.
fn check_mesh(spec: &ModelSpec, mesh: &Mesh) -> Result<(), ImportError> {
    for a in &mesh.axes {
        if !TOKEN_AXES.contains(&a.name.as_str()) {
            return Err(ImportError::MeshAxis {
                axis: a.name.clone(),
            });
        }
    }
    let ep = mesh.axis("ep").ok_or(ImportError::NoEpAxis)?;
    if let Some(m) = spec.moe {
        if m.experts % u64::from(ep.size) != 0 {
            return Err(ImportError::EpDoesNotDivide {
                ep: ep.size,
                experts: m.experts,
            });
        }
    }
    Ok(())
}

/// Appends nodes to the graph of one model, in one scope at a time.
struct Lower<'a> {
    g: Graph,
    dtype: DType,
    scope: Scope,
    opts: &'a ImportOptions,
    /// Axes splitting the token dim.
    tokens: Vec<String>,
    /// Tokens one rank holds per micro-batch.
    local_tokens: u64,
    /// Tokens of the whole graph.
    global_tokens: u64,
    /// T5's relative position bias table of each stack (encoder, decoder), made on first use.
    bias_tables: [Option<Value>; 2],
}

impl Lower<'_> {
    fn op(&mut self, name: &str, op: Op, inputs: &[Value]) -> Result<Value, ImportError> {
        let id = self
            .g
            .add(name, op, inputs, self.scope)
            .map_err(|e| match e {
                crate::BuildError::Type {
                    node,
                    source: crate::TypeError::TooLarge(source),
                    ..
                } => ImportError::TooLarge { node, source },
                e => ImportError::Internal(e.to_string()),
            })?;
        Ok(id.into())
    }

    fn weight(&mut self, name: &str, shape: &[u64]) -> Result<Value, ImportError> {
        self.op(name, Op::Weight(TensorType::new(self.dtype, shape)), &[])
    }

    fn expert_weight(&mut self, name: &str, shape: &[u64]) -> Result<Value, ImportError> {
        self.op(
            name,
            Op::Weight(TensorType::new(self.dtype, shape).with_split(0, &["ep"])),
            &[],
        )
    }

    fn token_input(&mut self, name: &str) -> Result<Value, ImportError> {
        let axes: Vec<&str> = self.tokens.iter().map(String::as_str).collect();
        self.op(
            name,
            Op::Input(TensorType::new(DType::I32, [self.global_tokens]).with_split(0, &axes)),
            &[],
        )
    }

    /// `x @ w (+ b)`.
    fn linear(
        &mut self,
        p: &str,
        x: Value,
        k: u64,
        n: u64,
        bias: bool,
    ) -> Result<Value, ImportError> {
        let w = self.weight(&format!("{p}.weight"), &[k, n])?;
        let y = self.op(p, Op::Matmul, &[x, w])?;
        if bias {
            let b = self.weight(&format!("{p}.bias"), &[n])?;
            return self.op(&format!("{p}.add_bias"), Op::Add, &[y, b]);
        }
        Ok(y)
    }

    fn norm(
        &mut self,
        p: &str,
        x: Value,
        width: u64,
        spec: NormSpec,
    ) -> Result<Value, ImportError> {
        let w = self.weight(&format!("{p}.weight"), &[width])?;
        let eps = F64(spec.eps);
        if spec.layer_norm {
            let mut ins = vec![x, w];
            if spec.bias {
                ins.push(self.weight(&format!("{p}.bias"), &[width])?);
            }
            self.op(
                p,
                Op::LayerNorm {
                    eps,
                    bias: spec.bias,
                },
                &ins,
            )
        } else {
            self.op(p, Op::RmsNorm { eps }, &[x, w])
        }
    }

    /// A dense MLP of `spec.width`.
    fn mlp(&mut self, p: &str, x: Value, hidden: u64, spec: MlpSpec) -> Result<Value, ImportError> {
        let f = spec.width;
        let up = self.linear(&format!("{p}.up_proj"), x, hidden, f, false)?;
        let h = if spec.gated {
            let gate = self.linear(&format!("{p}.gate_proj"), x, hidden, f, false)?;
            match spec.act {
                Activation::Silu => self.op(&format!("{p}.swiglu"), Op::Swiglu, &[gate, up])?,
                act => {
                    let a = self.op(&format!("{p}.act"), act_op(act)?, &[gate])?;
                    self.op(&format!("{p}.mul"), Op::Mul, &[a, up])?
                }
            }
        } else {
            self.op(&format!("{p}.act"), act_op(spec.act)?, &[up])?
        };
        self.linear(&format!("{p}.down_proj"), h, f, hidden, false)
    }

    /// The routed experts in the expert-parallel form, plus shared experts.
    ///
    /// With `scale_input` (Llama 4) the router's weight scales the expert's input: top-1 only
    /// (each token's one expert then sees `x * w`); the router that dispatch and combine use
    /// normalizes its one weight to exactly 1, and a second router on the same logits, unnormalized,
    /// gives the scale `w` (`{p}.router_scale`, the same choice: same logits, same ties).
    fn moe(&mut self, p: &str, x: Value, hidden: u64, m: MoeSpec) -> Result<Value, ImportError> {
        let e = m.experts;
        let r = m.router;
        if r.scale_input && m.top_k != 1 {
            return Err(ImportError::Unsupported(format!(
                "routed experts whose input the router weight scales (Llama 4) with {} experts per                  token (num_experts_per_tok): only top-1 is modelled",
                m.top_k
            )));
        }
        let logits = self.linear(&format!("{p}.gate"), x, hidden, e, r.bias)?;
        let mut rin = vec![logits];
        if r.select_bias {
            rin.push(self.weight(&format!("{p}.e_score_correction_bias"), &[e])?);
        }
        let attrs = RouterAttrs {
            experts: e,
            k: m.top_k,
            score: r.score,
            normalize: r.normalize || r.scale_input,
            scale: F64(r.scale),
            groups: r.groups,
            select_bias: r.select_bias,
        };
        let routes = self.op(&format!("{p}.router"), Op::Router(attrs), &rin)?;
        let routed_in = if r.scale_input {
            let unit = RouterAttrs {
                normalize: false,
                ..attrs
            };
            let s = self.op(&format!("{p}.router_scale"), Op::Router(unit), &rin)?;
            let w = Value {
                node: s.node,
                output: 1,
            };
            self.op(&format!("{p}.scaled_input"), Op::Mul, &[x, w])?
        } else {
            x
        };
        let idx = Value {
            node: routes.node,
            output: 0,
        };
        let wts = Value {
            node: routes.node,
            output: 1,
        };
        let t = self.local_tokens;
        if matches!(m.capacity, CapacitySpec::Slots(_)) && self.opts.micro_batch > 1 {
            return Err(ImportError::CapacityPerSequence {
                micro_batch: self.opts.micro_batch,
            });
        }
        let capacity = match m.capacity {
            CapacitySpec::Dropless => t,
            CapacitySpec::Slots(c) => c,
            CapacitySpec::Factor(f) => {
                ((f * t.saturating_mul(m.top_k) as f64 / e as f64).ceil() as u64).clamp(1, t)
            }
        };
        let ranks = self.global_tokens / t;
        if capacity
            .checked_mul(ranks)
            .is_none_or(|slots| slots >= MAX_ELEMENTS)
        {
            return Err(ImportError::Unsupported(format!(
                "{capacity} slots per expert on each of {ranks} ranks are too many to count"
            )));
        }
        let d = self.op(
            &format!("{p}.dispatch"),
            Op::Dispatch {
                experts: e,
                capacity,
            },
            &[routed_in, idx],
        )?;
        let a = self.op(
            &format!("{p}.a2a_dispatch"),
            Op::AllToAll {
                axis: "ep".into(),
                split_dim: 0,
                concat_dim: 1,
            },
            &[d],
        )?;
        let f = m.expert_width;
        let w_up = self.expert_weight(&format!("{p}.experts.up_proj"), &[e, hidden, f])?;
        let mut ws = vec![a, w_up];
        if m.gated {
            ws.push(self.expert_weight(&format!("{p}.experts.gate_proj"), &[e, hidden, f])?);
        }
        ws.push(self.expert_weight(&format!("{p}.experts.down_proj"), &[e, f, hidden])?);
        if m.expert_bias {
            ws.push(self.expert_weight(&format!("{p}.experts.up_bias"), &[e, f])?);
            if m.gated {
                ws.push(self.expert_weight(&format!("{p}.experts.gate_bias"), &[e, f])?);
            }
            ws.push(self.expert_weight(&format!("{p}.experts.down_bias"), &[e, hidden])?);
        }
        let h = self.op(
            &format!("{p}.experts"),
            Op::ExpertFfn {
                layout: FfnLayout::Padded,
                act: m.act,
                gated: m.gated,
                bias: m.expert_bias,
            },
            &ws,
        )?;
        let b = self.op(
            &format!("{p}.a2a_combine"),
            Op::AllToAll {
                axis: "ep".into(),
                split_dim: 1,
                concat_dim: 0,
            },
            &[h],
        )?;
        let y = self.op(
            &format!("{p}.combine"),
            Op::Combine {
                experts: e,
                capacity,
            },
            &[b, idx, wts],
        )?;
        let Some(s) = m.shared else { return Ok(y) };
        let mlp = MlpSpec {
            width: s.width,
            gated: m.gated,
            act: m.act,
        };
        let mut sy = self.mlp(&format!("{p}.shared_experts"), x, hidden, mlp)?;
        if s.gate {
            let g = self.linear(&format!("{p}.shared_expert_gate"), x, hidden, 1, false)?;
            let g = self.op(
                &format!("{p}.shared_expert_gate.sigmoid"),
                Op::Sigmoid,
                &[g],
            )?;
            sy = self.op(&format!("{p}.shared_experts.gated"), Op::Mul, &[sy, g])?;
        }
        self.op(&format!("{p}.add_shared"), Op::Add, &[y, sy])
    }

    /// One pre-norm transformer layer.
    fn layer(
        &mut self,
        i: usize,
        m: &ModelSpec,
        x: Value,
        enc_out: Option<Value>,
    ) -> Result<Value, ImportError> {
        let l = m.layers[i];
        let p = format!("l{i}");
        let h = m.hidden;
        let n1 = self.norm(&format!("{p}.input_layernorm"), x, h, m.norm)?;
        let a = self.attention(&format!("{p}.self_attn"), m, &l, n1, n1, false)?;
        let mut x = self.op(&format!("{p}.residual_attn"), Op::Add, &[x, a])?;
        if l.cross_attention {
            let enc = enc_out.ok_or_else(|| {
                ImportError::Internal(format!("{p}: cross-attention without an encoder"))
            })?;
            let nc = self.norm(&format!("{p}.cross_layernorm"), x, h, m.norm)?;
            let c = self.attention(&format!("{p}.cross_attn"), m, &l, nc, enc, true)?;
            x = self.op(&format!("{p}.residual_cross"), Op::Add, &[x, c])?;
        }
        let n2 = self.norm(&format!("{p}.post_attention_layernorm"), x, h, m.norm)?;
        let f = match (l.moe, m.moe) {
            (true, Some(moe)) => self.moe(&format!("{p}.moe"), n2, h, moe)?,
            _ => self.mlp(&format!("{p}.mlp"), n2, h, m.dense_mlp)?,
        };
        self.op(&format!("{p}.residual_mlp"), Op::Add, &[x, f])
    }
}

fn act_op(a: Activation) -> Result<Op, ImportError> {
    Ok(match a {
        Activation::Silu => Op::Silu,
        Activation::Gelu => Op::Gelu,
        Activation::Relu => Op::Relu,
        Activation::OaiSwiglu => {
            return Err(ImportError::Unsupported(
                "the clamped SwiGLU activation outside expert FFNs".into(),
            ))
        }
    })
}

/// Builds the expert-parallel graph of `spec`.
pub fn lower(spec: &ModelSpec, opts: &ImportOptions) -> Result<Graph, ImportError> {
    let mesh = match &opts.mesh {
        Some(m) => m.clone(),
        None => default_mesh(spec, opts.gpus_per_node),
    };
    check_mesh(spec, &mesh)?;
    if opts.seq == 0 || opts.micro_batch == 0 {
        return Err(ImportError::NoTokens);
    }
    let tokens: Vec<String> = mesh.axes.iter().map(|a| a.name.clone()).collect();
    let (local_tokens, global_tokens) = opts
        .seq
        .checked_mul(opts.micro_batch)
        .and_then(|l| Some((l, l.checked_mul(mesh.product(&tokens))?)))
        .filter(|&(_, g)| g < MAX_ELEMENTS)
        .ok_or(ImportError::TooManyTokens)?;
    let mut g = Graph::new(spec.name.clone(), mesh);
    let meta = &mut g.meta;
    meta.insert("family".into(), spec.family.name().into());
    meta.insert("hidden".into(), spec.hidden.into());
    meta.insert("seq".into(), opts.seq.into());
    meta.insert("micro_batch".into(), opts.micro_batch.into());
    if let Some(m) = spec.moe {
        meta.insert("experts".into(), m.experts.into());
        meta.insert("top_k".into(), m.top_k.into());
    }
    let mut lw = Lower {
        g,
        dtype: opts.dtype,
        scope: Scope::Embed,
        opts,
        tokens,
        local_tokens,
        global_tokens,
        bias_tables: [None, None],
    };
    let h = spec.hidden;
    let table = lw.weight("embed_tokens.weight", &[spec.vocab, h])?;
    let enc_dec = spec.encoder_layers > 0;
    let ids = lw.token_input(if enc_dec {
        "encoder_input_ids"
    } else {
        "input_ids"
    })?;
    let mut x = lw.op("embed_tokens", Op::Embedding, &[ids, table])?;
    let mut enc_out = None;
    for i in 0..spec.layers.len() {
        lw.scope = Scope::Layer(i as u32);
        if enc_dec && i as u64 == spec.encoder_layers {
            // The encoder's last layer ends with its final norm; the decoder starts from its own tokens.
            lw.scope = Scope::Layer(i as u32 - 1);
            enc_out = Some(lw.norm("encoder.final_layer_norm", x, h, spec.norm)?);
            lw.scope = Scope::Layer(i as u32);
            let dids = lw.token_input("decoder_input_ids")?;
            x = lw.op("decoder.embed_tokens", Op::Embedding, &[dids, table])?;
        }
        x = lw.layer(i, spec, x, enc_out)?;
    }
    lw.scope = Scope::Head;
    let mut x = lw.norm("norm", x, h, spec.norm)?;
    if let Some(factor) = spec.head_scale {
        x = lw.op(
            "lm_head.scale",
            Op::Scale {
                factor: F64(factor),
            },
            &[x],
        )?;
    }
    let head = if spec.tie_embeddings {
        lw.op("lm_head.tied", Op::Transpose, &[table])?
    } else {
        lw.weight("lm_head.weight", &[h, spec.vocab])?
    };
    let logits = lw.op("lm_head", Op::Matmul, &[x, head])?;
    lw.g.add_output("logits", logits);
    check_sizes(&lw.g)?;
    crate::validate(&lw.g).map_err(|e| ImportError::Internal(e.to_string()))?;
    Ok(lw.g)
}

/// The most elements all tensors of an imported graph may hold together (2^53): element and
/// byte counts of any tensor, and their sums, then fit in a `u64` (and exactly in an `f64`).
const MAX_ELEMENTS: u64 = 1 << 53;

/// Refuses graphs whose tensors are too large to count (absurd sizes in a config).
fn check_sizes(g: &Graph) -> Result<(), ImportError> {
    let mut total: u128 = 0;
    for (_, n) in g.nodes() {
        for t in &n.outputs {
            let numel = t
                .shape
                .iter()
                .try_fold(1u128, |acc, &d| acc.checked_mul(u128::from(d)));
            total = total.saturating_add(numel.unwrap_or(u128::MAX));
            if total > u128::from(MAX_ELEMENTS) {
                return Err(ImportError::Unsupported(format!(
                    "the sizes in this config make tensors of more than 2^53 elements in all \
                     (`{}` has shape {:?})",
                    n.name, t.shape
                )));
            }
        }
    }
    Ok(())
}
