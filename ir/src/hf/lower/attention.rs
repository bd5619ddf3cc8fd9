//! Lowering one attention sublayer: the q/k/v projections (MHA/GQA with optional q/k norms and
//! biases, or DeepSeek's MLA), the `attention` op with its position attributes (RoPE, T5's
//! relative bias table per stack, clipping, scale) and the output projection.

use super::Lower;
use crate::hf::spec::*;
use crate::hf::ImportError;
use crate::{AttentionAttrs, Mask, Op, RelativeBias, RopePairs, Value, F64};

impl Lower<'_> {
    /// Self- or cross-attention over `kv_src` (= `x` for self-attention).
    pub(super) fn attention(
        &mut self,
        p: &str,
        m: &ModelSpec,
        layer: &LayerSpec,
        x: Value,
        kv_src: Value,
        cross: bool,
    ) -> Result<Value, ImportError> {
        let a = m.attention;
        let h = m.hidden;
        let seq = self.opts.seq;
        let mask = if cross { Mask::Full } else { layer.mask };
        let theta = F64(a.rope_theta);
        let qk_eps = m.norm.eps;
        let rms = NormSpec {
            layer_norm: false,
            bias: false,
            eps: qk_eps,
        };
        let (q, k, v, attrs, extra) = match a.kind {
            AttnKind::Mha {
                heads,
                kv_heads,
                head_dim,
            } => {
                let mut q =
                    self.linear(&format!("{p}.q_proj"), x, h, heads * head_dim, a.qkv_bias)?;
                let mut k = self.linear(
                    &format!("{p}.k_proj"),
                    kv_src,
                    h,
                    kv_heads * head_dim,
                    a.qkv_bias,
                )?;
                let v = self.linear(
                    &format!("{p}.v_proj"),
                    kv_src,
                    h,
                    kv_heads * head_dim,
                    a.qkv_bias,
                )?;
                match a.qk_norm {
                    QkNorm::None => {}
                    QkNorm::PerHead => {
                        q = self.norm(&format!("{p}.q_norm"), q, head_dim, rms)?;
                        k = self.norm(&format!("{p}.k_norm"), k, head_dim, rms)?;
                    }
                    QkNorm::Full => {
                        q = self.norm(&format!("{p}.q_norm"), q, heads * head_dim, rms)?;
                        k = self.norm(&format!("{p}.k_norm"), k, kv_heads * head_dim, rms)?;
                    }
                }
                let rope_dim = if layer.rope && !cross { head_dim } else { 0 };
                let roped = rope_dim > 0;
                let attrs = AttentionAttrs {
                    heads,
                    kv_heads,
                    head_dim,
                    v_head_dim: head_dim,
                    rope_dim,
                    shared_k_dim: 0,
                    rope_theta: theta,
                    rope_pairs: if roped {
                        a.rope_pairs
                    } else {
                        RopePairs::Halves
                    },
                    rope_scaling: a.rope_scaling.filter(|_| roped),
                    qk_norm_eps: a.rope_qk_norm.filter(|_| roped).map(F64),
                    query_temperature: a.nope_temperature.filter(|_| !layer.rope && !cross),
                    clip_qkv: a.clip_qkv.map(F64),
                    softmax_scale: a.softmax_scale.map(F64),
                    position_bias: None,
                    seq,
                    kv_seq: seq,
                    mask,
                    sinks: a.sinks,
                };
                (q, k, v, attrs, Vec::new())
            }
            AttnKind::Mla {
                heads,
                q_lora_rank,
                kv_lora_rank,
                qk_nope_dim,
                qk_rope_dim,
                v_head_dim,
            } => {
                let qk = qk_nope_dim + qk_rope_dim;
                let q = match q_lora_rank {
                    Some(r) => {
                        let c = self.linear(&format!("{p}.q_a_proj"), x, h, r, false)?;
                        let c = self.norm(&format!("{p}.q_a_layernorm"), c, r, rms)?;
                        self.linear(&format!("{p}.q_b_proj"), c, r, heads * qk, false)?
                    }
                    None => self.linear(&format!("{p}.q_proj"), x, h, heads * qk, false)?,
                };
                let c = self.linear(&format!("{p}.kv_a_proj"), x, h, kv_lora_rank, false)?;
                let k_pe = self.linear(&format!("{p}.k_rope_proj"), x, h, qk_rope_dim, false)?;
                let c = self.norm(&format!("{p}.kv_a_layernorm"), c, kv_lora_rank, rms)?;
                let k = self.linear(
                    &format!("{p}.k_b_proj"),
                    c,
                    kv_lora_rank,
                    heads * qk_nope_dim,
                    false,
                )?;
                let v = self.linear(
                    &format!("{p}.v_b_proj"),
                    c,
                    kv_lora_rank,
                    heads * v_head_dim,
                    false,
                )?;
                let attrs = AttentionAttrs {
                    heads,
                    kv_heads: heads,
                    head_dim: qk,
                    v_head_dim,
                    rope_dim: qk_rope_dim,
                    shared_k_dim: qk_rope_dim,
                    rope_theta: theta,
                    rope_pairs: a.rope_pairs,
                    rope_scaling: a.rope_scaling,
                    qk_norm_eps: a.rope_qk_norm.map(F64),
                    query_temperature: a.nope_temperature.filter(|_| !layer.rope && !cross),
                    clip_qkv: a.clip_qkv.map(F64),
                    softmax_scale: a.softmax_scale.map(F64),
                    position_bias: None,
                    seq,
                    kv_seq: seq,
                    mask,
                    sinks: a.sinks,
                };
                (q, k, v, attrs, vec![k_pe])
            }
        };
        let mut ins = vec![q, k, v];
        ins.extend(extra);
        if a.sinks {
            ins.push(self.weight(&format!("{p}.sinks"), &[attrs.heads])?);
        }
        let mut attrs = attrs;
        if let (Some((buckets, max_distance)), false) = (a.relative_bias, cross) {
            // One table per stack: the decoder's layers are those with cross-attention.
            let stack = usize::from(layer.cross_attention);
            let table = match self.bias_tables[stack] {
                Some(t) => t,
                None => {
                    let name = ["encoder", "decoder"][stack];
                    let t = self.weight(
                        &format!("{name}.relative_attention_bias"),
                        &[buckets, attrs.heads],
                    )?;
                    self.bias_tables[stack] = Some(t);
                    t
                }
            };
            attrs.position_bias = Some(RelativeBias {
                buckets,
                max_distance,
                bidirectional: mask == Mask::Full,
            });
            ins.push(table);
        }
        let o = self.op(&format!("{p}.sdpa"), Op::Attention(Box::new(attrs)), &ins)?;
        self.linear(
            &format!("{p}.o_proj"),
            o,
            attrs.heads * attrs.v_head_dim,
            h,
            a.o_bias,
        )
    }
}
