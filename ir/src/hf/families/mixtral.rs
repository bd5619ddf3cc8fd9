//! Mixtral (`mixtral`): every layer MoE, softmax top-k renormalized, SwiGLU experts of
//! `intermediate_size`, GQA, optional sliding window. transformers: `models/mixtral/configuration_mixtral.py`.

use super::*;
use crate::Score;

pub(super) fn parse(cfg: Cfg<'_>) -> Result<ModelSpec, ImportError> {
    let hidden = cfg.pos("hidden_size")?;
    let layers = layer_count(cfg, "num_hidden_layers")?;
    let (experts, top_k) = experts_topk(cfg, "num_local_experts", "num_experts_per_tok")?;
    let width = cfg.pos("intermediate_size")?;
    let act = activation(cfg, "hidden_act", Activation::Silu)?;
    let mut layer_specs = decoder_layers(layers, |_| true);
    if let Some(w) = cfg.opt_pos("sliding_window")? {
        for l in &mut layer_specs {
            l.mask = Mask::Sliding(w);
        }
    }
    decoder_only(
        cfg,
        Decoder {
            family: Family::Mixtral,
            hidden,
            tie_embeddings: cfg.bool_or("tie_word_embeddings", false)?,
            norm: rms(cfg, "rms_norm_eps", 1e-5)?,
            attention: AttentionSpec {
                kind: mha(cfg, hidden, "num_attention_heads", "num_key_value_heads")?,
                rope_theta: rope_theta(cfg, 1e6)?,
                rope_pairs: crate::RopePairs::Halves,
                rope_scaling: rope::rope_scaling(cfg, rope::Yarn::Transformers)?,
                rope_qk_norm: None,
                nope_temperature: None,
                qk_norm: QkNorm::None,
                qkv_bias: false,
                o_bias: false,
                sinks: false,
                clip_qkv: None,
                softmax_scale: None,
                relative_bias: None,
            },
            layers: layer_specs,
            dense_width: width,
            act,
            routed: Routed {
                experts,
                top_k,
                expert_width: width,
                router: RouterSpec {
                    score: Score::Softmax,
                    normalize: true,
                    scale: 1.0,
                    groups: None,
                    select_bias: false,
                    bias: false,
                    scale_input: false,
                },
                shared: None,
            },
        },
    )
}
