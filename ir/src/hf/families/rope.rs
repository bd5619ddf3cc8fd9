//! A config's RoPE scaling (`rope_scaling`, or `rope_parameters` in configs written by newer
//! transformers versions) as the attention op's [`RopeScaling`].
//!
//! Types read: `linear`, `yarn` and `llama3` (transformers' `_compute_linear_scaling_rope_parameters`,
//! `_compute_yarn_parameters` and `_compute_llama3_parameters`), and `default` (none). Any other
//! type (`dynamic`, `longrope`, ...) is refused, naming the key, rather than ignored: a model run
//! without its scaling computes something else. How `yarn` reads its keys depends on the family
//! ([`Yarn`]): DeepSeek's attention also rescales the softmax, other families' does not.

use super::{Cfg, ImportError};
use crate::{Llama3Scaling, RopeScaling, YarnScaling, F64};

/// Whose YaRN a config's `yarn` scaling is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Yarn {
    /// DeepSeek-V2/V3 (`DeepseekV3YarnRotaryEmbedding` and attention): `mscale` (default 1) and
    /// `mscale_all_dim` (default 0) scale cos/sin by `m(mscale) / m(mscale_all_dim)` and the
    /// softmax by `m(mscale_all_dim)^2`; `original_max_position_embeddings` defaults to 4096.
    DeepSeek,
    /// transformers' generic YaRN for a family whose attention leaves the softmax scale alone
    /// (GPT-OSS, Qwen, Mixtral, OLMoE, Llama 4): cos/sin times `m(1) = 0.1 ln(factor) + 1`;
    /// `original_max_position_embeddings` defaults to the config's `max_position_embeddings`.
    /// `mscale`, `mscale_all_dim` and `attention_factor` are refused (the IR ties DeepSeek's
    /// softmax rescale to them).
    Transformers,
}

/// The RoPE scaling of `cfg` (`None`: plain RoPE), its `yarn` read as `yarn` says.
pub(super) fn rope_scaling(cfg: Cfg<'_>, yarn: Yarn) -> Result<Option<RopeScaling>, ImportError> {
    let (scaling, parameters) = prefixes(cfg);
    let (sc, key) = match cfg.sub("rope_scaling", scaling)? {
        Some(sc) => (sc, "rope_scaling"),
        None => match cfg.sub("rope_parameters", parameters)? {
            Some(rp) => (rp, "rope_parameters"),
            None => return Ok(None),
        },
    };
    // transformers reads `rope_type`, and `type` in older configs.
    let type_key = super::alias(sc, &["rope_type", "type"])?;
    let kind = match sc.opt_str(type_key)? {
        Some(t) => t,
        // `rope_parameters` may only carry `rope_theta`.
        None if key == "rope_parameters" => return Ok(None),
        None => return Err(sc.invalid(type_key, "is missing (the scaling's type, e.g. yarn)")),
    };
    let factor = || -> Result<F64, ImportError> {
        let f = sc
            .opt_f64("factor")?
            .ok_or_else(|| sc.invalid("factor", "is missing"))?;
        positive(sc, "factor", f)
    };
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear { factor: factor()? })),
        "yarn" => yarn_scaling(cfg, sc, yarn, factor()?).map(|y| Some(RopeScaling::Yarn(y))),
        "llama3" => {
            let required = |k: &str| -> Result<f64, ImportError> {
                sc.opt_f64(k)?
                    .ok_or_else(|| sc.invalid(k, "is missing (llama3 scaling needs it)"))
            };
            let low = positive(sc, "low_freq_factor", required("low_freq_factor")?)?;
            let high = required("high_freq_factor")?;
            if !(high.is_finite() && high > low.0) {
                return Err(sc.invalid(
                    "high_freq_factor",
                    format!("must be a number above low_freq_factor = {low}, is {high}"),
                ));
            }
            let original = sc
                .opt_pos("original_max_position_embeddings")?
                .ok_or_else(|| {
                    sc.invalid(
                        "original_max_position_embeddings",
                        "is missing (llama3 scaling needs it)",
                    )
                })?;
            Ok(Some(RopeScaling::Llama3(Llama3Scaling {
                factor: factor()?,
                low_freq_factor: low,
                high_freq_factor: F64(high),
                original_max_position_embeddings: original,
            })))
        }
        other => Err(sc.invalid(
            type_key,
            format!("`{other}` is not a supported RoPE scaling (yarn, linear, llama3)"),
        )),
    }
}

/// The key paths (for error messages) of `cfg`'s `rope_scaling.` and `rope_parameters.`: `cfg`
/// is a config's root or, for Llama 4, its `text_config`.
pub(super) fn prefixes(cfg: Cfg<'_>) -> (&'static str, &'static str) {
    if cfg.path("") == "text_config." {
        ("text_config.rope_scaling.", "text_config.rope_parameters.")
    } else {
        ("rope_scaling.", "rope_parameters.")
    }
}

/// `yarn`'s keys in `sc` (the scaling object of `cfg`), as `flavour` reads them.
fn yarn_scaling(
    cfg: Cfg<'_>,
    sc: Cfg<'_>,
    flavour: Yarn,
    factor: F64,
) -> Result<YarnScaling, ImportError> {
    if sc.has("attention_factor") {
        return Err(sc.invalid(
            "attention_factor",
            "is not supported: the cos/sin factor of YaRN is derived from factor (and DeepSeek's \
             mscale, mscale_all_dim)",
        ));
    }
    let (original, mscale, mscale_all_dim) = match flavour {
        Yarn::DeepSeek => {
            let finite = |k: &str, default: f64| -> Result<F64, ImportError> {
                let v = sc.f64_or(k, default)?;
                if v.is_finite() {
                    Ok(F64(v))
                } else {
                    Err(sc.invalid(k, format!("must be a finite number, is {v}")))
                }
            };
            (
                sc.opt_pos("original_max_position_embeddings")?
                    .unwrap_or(4096),
                finite("mscale", 1.0)?,
                finite("mscale_all_dim", 0.0)?,
            )
        }
        Yarn::Transformers => {
            for k in ["mscale", "mscale_all_dim"] {
                if sc.has(k) {
                    return Err(sc.invalid(
                        k,
                        "is read for DeepSeek only: this family's attention does not rescale \
                         the softmax as DeepSeek's does",
                    ));
                }
            }
            let original = match sc.opt_pos("original_max_position_embeddings")? {
                Some(o) => o,
                None => cfg.opt_pos("max_position_embeddings")?.ok_or_else(|| {
                    sc.invalid(
                        "original_max_position_embeddings",
                        "is missing, and so is max_position_embeddings (YaRN needs the \
                         pre-training context)",
                    )
                })?,
            };
            (original, F64(1.0), F64(0.0))
        }
    };
    Ok(YarnScaling {
        factor,
        original_max_position_embeddings: original,
        beta_fast: positive(sc, "beta_fast", sc.f64_or("beta_fast", 32.0)?)?,
        beta_slow: positive(sc, "beta_slow", sc.f64_or("beta_slow", 1.0)?)?,
        mscale,
        mscale_all_dim,
        truncate: sc.bool_or("truncate", true)?,
    })
}

fn positive(cfg: Cfg<'_>, key: &str, v: f64) -> Result<F64, ImportError> {
    if v.is_finite() && v > 0.0 {
        Ok(F64(v))
    } else {
        Err(cfg.invalid(key, format!("must be a positive number, is {v}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(v: serde_json::Value) -> Result<Option<RopeScaling>, ImportError> {
        rope_scaling(Cfg::root(&v).unwrap(), Yarn::DeepSeek)
    }

    fn read_hf(v: serde_json::Value) -> Result<Option<RopeScaling>, ImportError> {
        rope_scaling(Cfg::root(&v).unwrap(), Yarn::Transformers)
    }

    #[test]
    fn yarn_reads_deepseek_keys_and_defaults() {
        let v = json!({"rope_scaling": {"type": "yarn", "factor": 40, "beta_fast": 32,
            "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707,
            "original_max_position_embeddings": 4096}});
        let want = YarnScaling {
            factor: F64(40.0),
            original_max_position_embeddings: 4096,
            beta_fast: F64(32.0),
            beta_slow: F64(1.0),
            mscale: F64(0.707),
            mscale_all_dim: F64(0.707),
            truncate: true,
        };
        assert_eq!(read(v).unwrap(), Some(RopeScaling::Yarn(want)));
        let v = json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}});
        let want = YarnScaling {
            factor: F64(4.0),
            original_max_position_embeddings: 4096,
            beta_fast: F64(32.0),
            beta_slow: F64(1.0),
            mscale: F64(1.0),
            mscale_all_dim: F64(0.0),
            truncate: true,
        };
        assert_eq!(read(v).unwrap(), Some(RopeScaling::Yarn(want)));
        // transformers v5 spelling.
        let v = json!({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}});
        assert_eq!(read(v).unwrap(), Some(RopeScaling::Yarn(want)));
        // DeepSeek's YaRN through transformers honours `truncate` too.
        let v = json!({"rope_scaling": {"type": "yarn", "factor": 4.0, "truncate": false}});
        assert_eq!(
            read(v).unwrap(),
            Some(RopeScaling::Yarn(YarnScaling {
                truncate: false,
                ..want
            }))
        );
    }

    #[test]
    fn yarn_reads_gpt_oss_keys_as_transformers_does() {
        // gpt-oss-20b's `rope_scaling`, verbatim.
        let v = json!({"max_position_embeddings": 131072, "rope_scaling": {"beta_fast": 32.0,
            "beta_slow": 1.0, "factor": 32.0, "original_max_position_embeddings": 4096,
            "rope_type": "yarn", "truncate": false}});
        let want = YarnScaling {
            factor: F64(32.0),
            original_max_position_embeddings: 4096,
            beta_fast: F64(32.0),
            beta_slow: F64(1.0),
            // get_mscale(factor): cos and sin times 0.1 ln 32 + 1, softmax unchanged.
            mscale: F64(1.0),
            mscale_all_dim: F64(0.0),
            truncate: false,
        };
        assert_eq!(read_hf(v).unwrap(), Some(RopeScaling::Yarn(want)));
        // Without original_max_position_embeddings: the config's max_position_embeddings.
        let v = json!({"max_position_embeddings": 2048,
            "rope_scaling": {"rope_type": "yarn", "factor": 4.0}});
        let Some(RopeScaling::Yarn(y)) = read_hf(v).unwrap() else {
            panic!("not yarn")
        };
        assert_eq!(
            (y.original_max_position_embeddings, y.truncate),
            (2048, true)
        );
        let v = json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}});
        let e = read_hf(v).unwrap_err().to_string();
        assert!(
            e.contains("`rope_scaling.original_max_position_embeddings`"),
            "{e}"
        );
    }

    #[test]
    fn llama3_reads_its_four_keys() {
        // Llama 4 Scout's `rope_scaling`, verbatim.
        let v = json!({"rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0,
            "low_freq_factor": 1.0, "original_max_position_embeddings": 8192,
            "rope_type": "llama3"}});
        let want = Llama3Scaling {
            factor: F64(8.0),
            low_freq_factor: F64(1.0),
            high_freq_factor: F64(4.0),
            original_max_position_embeddings: 8192,
        };
        assert_eq!(read_hf(v.clone()).unwrap(), Some(RopeScaling::Llama3(want)));
        assert_eq!(read(v).unwrap(), Some(RopeScaling::Llama3(want)));
    }

    #[test]
    fn errors_name_the_nested_path() {
        let v = json!({"text_config": {"rope_scaling": {"rope_type": "dynamic", "factor": 2}}});
        let root = Cfg::root(&v).unwrap();
        let text = root.sub("text_config", "text_config.").unwrap().unwrap();
        let e = rope_scaling(text, Yarn::Transformers)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`text_config.rope_scaling.rope_type`"), "{e}");
    }

    #[test]
    fn linear_default_and_absent() {
        let v = json!({"rope_scaling": {"type": "linear", "factor": 2}});
        assert_eq!(
            read(v).unwrap(),
            Some(RopeScaling::Linear { factor: F64(2.0) })
        );
        assert_eq!(read(json!({"rope_scaling": null})).unwrap(), None);
        assert_eq!(read(json!({})).unwrap(), None);
        let v = json!({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}});
        assert_eq!(read(v).unwrap(), None);
        assert_eq!(
            read(json!({"rope_parameters": {"rope_theta": 1e4}})).unwrap(),
            None
        );
    }

    #[test]
    fn unknown_or_bad_scalings_name_the_key() {
        let cases = [
            (
                json!({"rope_scaling": {"type": "dynamic", "factor": 2}}),
                "rope_scaling.type",
            ),
            (
                json!({"rope_scaling": {"rope_type": "longrope", "factor": 8}}),
                "rope_scaling.rope_type",
            ),
            (
                json!({"rope_scaling": {"factor": 8}}),
                "rope_scaling.rope_type",
            ),
            (
                json!({"rope_scaling": {"type": "yarn", "factor": 0}}),
                "rope_scaling.factor",
            ),
            (
                json!({"rope_scaling": {"type": "linear"}}),
                "rope_scaling.factor",
            ),
            (
                json!({"rope_scaling": {"type": "yarn", "factor": 32, "attention_factor": 1}}),
                "rope_scaling.attention_factor",
            ),
            (
                json!({"rope_scaling": {"type": "yarn", "factor": 32, "truncate": "no"}}),
                "rope_scaling.truncate",
            ),
            (
                json!({"rope_scaling": {"type": "yarn", "factor": 32, "beta_slow": -1}}),
                "rope_scaling.beta_slow",
            ),
            (
                json!({"rope_scaling": {"type": "yarn", "rope_type": "linear", "factor": 2}}),
                "rope_scaling.type",
            ),
            (
                json!({"rope_scaling": {"rope_type": "llama3", "factor": 8,
                    "high_freq_factor": 4, "original_max_position_embeddings": 8192}}),
                "rope_scaling.low_freq_factor",
            ),
            (
                json!({"rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 4,
                    "high_freq_factor": 4, "original_max_position_embeddings": 8192}}),
                "rope_scaling.high_freq_factor",
            ),
            (
                json!({"rope_scaling": {"rope_type": "llama3", "factor": 8, "low_freq_factor": 1,
                    "high_freq_factor": 4}}),
                "rope_scaling.original_max_position_embeddings",
            ),
        ];
        for (v, key) in cases {
            let e = read(v.clone()).unwrap_err();
            assert!(e.to_string().contains(&format!("`{key}`")), "{v}: {e}");
        }
        // Outside DeepSeek, DeepSeek's mscale keys are refused.
        for key in ["mscale", "mscale_all_dim"] {
            let v = json!({"max_position_embeddings": 4096,
                "rope_scaling": {"rope_type": "yarn", "factor": 4, key: 1.0}});
            let e = read_hf(v).unwrap_err().to_string();
            assert!(e.contains(&format!("`rope_scaling.{key}`")), "{e}");
        }
    }
}
