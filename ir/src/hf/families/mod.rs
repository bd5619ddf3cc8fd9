//! One parser per family: config keys -> [`ModelSpec`]. Shared readers live here.

mod mixtral;

use super::spec::*;
use super::{Cfg, ImportError};
use crate::{Activation, Mask};

/// Parses `cfg` as `family`.
pub(super) fn parse(family: Family, cfg: Cfg<'_>) -> Result<ModelSpec, ImportError> {
    match family {
        Family::Mixtral => mixtral::parse(cfg),
        other => Err(ImportError::Unsupported(format!(
            "model_type `{}` (parser not written yet)",
            other.name()
        ))),
    }
}

/// Checks that hold for every family (the parsers check key-specific facts with key names).
pub(super) fn check(spec: &ModelSpec) -> Result<(), ImportError> {
    if spec.layers.is_empty() {
        return Err(ImportError::Key {
            key: "num_hidden_layers".into(),
            why: "must be positive, is 0".into(),
        });
    }
    if spec.layers.iter().any(|l| l.moe) && spec.moe.is_none() {
        return Err(ImportError::Internal(
            "MoE layers without an MoE spec".into(),
        ));
    }
    Ok(())
}

/// `heads`, `kv_heads`, `head_dim` from the usual keys (`head_dim` defaults to hidden / heads).
pub(super) fn mha(
    cfg: Cfg<'_>,
    hidden: u64,
    heads_key: &str,
    kv_key: &str,
) -> Result<AttnKind, ImportError> {
    let heads = cfg.pos(heads_key)?;
    let kv_heads = cfg.opt_pos(kv_key)?.unwrap_or(heads);
    if heads % kv_heads != 0 {
        return Err(cfg.invalid(
            kv_key,
            format!("= {kv_heads} must divide {heads_key} = {heads}"),
        ));
    }
    let head_dim = match cfg.opt_pos("head_dim")? {
        Some(d) => d,
        None => {
            if hidden % heads != 0 {
                return Err(cfg.invalid(
                    heads_key,
                    format!(
                        "= {heads} must divide the hidden size {hidden} when head_dim is not given"
                    ),
                ));
            }
            hidden / heads
        }
    };
    Ok(AttnKind::Mha {
        heads,
        kv_heads,
        head_dim,
    })
}

/// Reads the expert count and top-k, checking 1 <= k <= experts.
pub(super) fn experts_topk(
    cfg: Cfg<'_>,
    experts_key: &str,
    k_key: &str,
) -> Result<(u64, u64), ImportError> {
    let e = cfg.pos(experts_key)?;
    let k = cfg.pos(k_key)?;
    if k > e {
        return Err(cfg.invalid(
            k_key,
            format!(
                "= {k} exceeds {} = {e}: a token cannot pick more experts than exist",
                cfg.path(experts_key)
            ),
        ));
    }
    Ok((e, k))
}

/// The activation named by `hidden_act` (and friends).
pub(super) fn activation(
    cfg: Cfg<'_>,
    key: &str,
    default: Activation,
) -> Result<Activation, ImportError> {
    Ok(match cfg.opt_str(key)? {
        None => default,
        Some("silu" | "swish") => Activation::Silu,
        Some("gelu" | "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast") => Activation::Gelu,
        Some("relu") => Activation::Relu,
        Some(other) => {
            return Err(cfg.invalid(
                key,
                format!("`{other}` is not a supported activation (silu, gelu, relu)"),
            ))
        }
    })
}

/// `n` decoder layers with causal masks and RoPE, MoE where `moe(i)`.
pub(super) fn decoder_layers(n: u64, moe: impl Fn(u64) -> bool) -> Vec<LayerSpec> {
    (0..n)
        .map(|i| LayerSpec {
            moe: moe(i),
            mask: Mask::Causal,
            rope: true,
            cross_attention: false,
        })
        .collect()
}

/// The usual RMSNorm.
pub(super) fn rms(cfg: Cfg<'_>, key: &str, default: f64) -> Result<NormSpec, ImportError> {
    Ok(NormSpec {
        layer_norm: false,
        bias: false,
        eps: cfg.f64_or(key, default)?,
    })
}
