//! A config's RoPE scaling (`rope_scaling`, or `rope_parameters` in configs written by newer
//! transformers versions) as the attention op's [`RopeScaling`].
//!
//! Read for the families whose scaling the executor implements (DeepSeek-V2/V3): `yarn` with
//! DeepSeek's defaults (`original_max_position_embeddings` 4096, `beta_fast` 32, `beta_slow` 1,
//! `mscale` 1, `mscale_all_dim` 0) and `linear`. Any other type is refused, naming the key, rather
//! than ignored: a model run without its scaling computes something else.

use super::{Cfg, ImportError};
use crate::{RopeScaling, YarnScaling, F64};

/// The RoPE scaling of `cfg` (`None`: plain RoPE).
pub(super) fn rope_scaling(cfg: Cfg<'_>) -> Result<Option<RopeScaling>, ImportError> {
    let (sc, key) = match cfg.sub("rope_scaling", "rope_scaling.")? {
        Some(sc) => (sc, "rope_scaling"),
        None => match cfg.sub("rope_parameters", "rope_parameters.")? {
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
        "yarn" => {
            for k in ["attention_factor", "truncate"] {
                if sc.has(k) {
                    return Err(sc.invalid(
                        k,
                        "is not supported: YaRN is implemented as DeepSeek defines it \
                         (mscale and mscale_all_dim, truncated correction range)",
                    ));
                }
            }
            let mscale = |k: &str, default: f64| -> Result<F64, ImportError> {
                let v = sc.f64_or(k, default)?;
                if v.is_finite() {
                    Ok(F64(v))
                } else {
                    Err(sc.invalid(k, format!("must be a finite number, is {v}")))
                }
            };
            Ok(Some(RopeScaling::Yarn(YarnScaling {
                factor: factor()?,
                original_max_position_embeddings: sc
                    .opt_pos("original_max_position_embeddings")?
                    .unwrap_or(4096),
                beta_fast: positive(sc, "beta_fast", sc.f64_or("beta_fast", 32.0)?)?,
                beta_slow: positive(sc, "beta_slow", sc.f64_or("beta_slow", 1.0)?)?,
                mscale: mscale("mscale", 1.0)?,
                mscale_all_dim: mscale("mscale_all_dim", 0.0)?,
                truncate: true,
            })))
        }
        other => Err(sc.invalid(
            type_key,
            format!("`{other}` is not a supported RoPE scaling (yarn, linear)"),
        )),
    }
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
        rope_scaling(Cfg::root(&v).unwrap())
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
                json!({"rope_scaling": {"rope_type": "llama3", "factor": 8}}),
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
                json!({"rope_scaling": {"type": "yarn", "factor": 32, "truncate": false}}),
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
        ];
        for (v, key) in cases {
            let e = read(v.clone()).unwrap_err();
            assert!(e.to_string().contains(&format!("`{key}`")), "{v}: {e}");
        }
    }
}
