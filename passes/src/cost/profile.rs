//! Cost profiles (`--profile FILE`, TOML): the rates the roofline prices ops with, by class,
//! each marked `measured` (with its source) or `assumed` (with why). A profile overrides the
//! cluster file's single GEMM rate and HBM bandwidth per op class, and its collective rates
//! override the cluster's links. `moe-opt calibrate` writes one from micro-benchmarks run through
//! the executor; `examples/profiles/h200.toml` holds FACTS.md's H200 figures.
//!
//! ```toml
//! [rates]
//! gemm_tflops = { value = 675.0, measured = "FACTS.md: cuBLAS bf16 in a dense FFN layer" }
//! grouped_gemm_tflops = { value = 300.0, assumed = "cuBLAS grouped GEMM, about half of Hopper's" }
//! ```

use super::Cluster;
use moe_ir::Op;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use thiserror::Error;

/// One rate and where it comes from: exactly one of `measured` and `assumed`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub value: f64,
    /// How it was measured (command, machine, date or document).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<String>,
    /// Why this value is assumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assumed: Option<String>,
}

impl Rate {
    pub fn measured(value: f64, how: impl Into<String>) -> Rate {
        Rate {
            value,
            measured: Some(how.into()),
            assumed: None,
        }
    }
}

/// The rates, every one optional (absent: the cluster file's figure).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rates {
    /// Dense GEMMs of at least 2^30 multiply-adds (`matmul`, `batch_matmul`, padded experts), TFLOP/s.
    pub gemm_tflops: Option<Rate>,
    /// Smaller dense GEMMs, TFLOP/s.
    pub gemm_small_tflops: Option<Rate>,
    /// Grouped expert GEMMs over routed rows (`expert_ffn` grouped), TFLOP/s.
    pub grouped_gemm_tflops: Option<Rate>,
    /// `attention`, TFLOP/s of its QK^T and PV products.
    pub attention_tflops: Option<Rate>,
    /// Memory-bound ops (norms, activations, adds...), GB/s of bytes read plus written.
    pub hbm_gbps: Option<Rate>,
    /// Row gathers (`index_select`, `dispatch`), GB/s.
    pub gather_gbps: Option<Rate>,
    /// Row scatters and weighted sums (`index_add`, `combine`), GB/s.
    pub combine_gbps: Option<Rate>,
    /// Collectives inside a node: bus bandwidth GB/s per GPU and per-step latency µs.
    pub intra_node_gbps: Option<Rate>,
    pub intra_node_latency_us: Option<Rate>,
    /// Collectives across nodes.
    pub inter_node_gbps: Option<Rate>,
    pub inter_node_latency_us: Option<Rate>,
}

/// A cost profile file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// What the profile describes (`H200, burn-cuda 0.21 + cuBLAS`).
    #[serde(default)]
    pub device: String,
    pub rates: Rates,
}

/// A profile that cannot be used.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ProfileError {
    #[error("profile: {0}")]
    Parse(String),
    #[error("profile: rate `{0}` must be positive and finite (latencies may be 0)")]
    NotPositive(&'static str),
    #[error("profile: rate `{0}` must say either `measured = \"how\"` or `assumed = \"why\"`, not both or neither")]
    Source(&'static str),
}

/// The op classes a profile prices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Gemm,
    GroupedGemm,
    Attention,
    Gather,
    Combine,
    Memory,
}

/// The class of a local op (collectives, leaves and pipeline transfers have none).
pub fn class_of(op: &Op) -> Option<Class> {
    use moe_ir::FfnLayout;
    Some(match op {
        Op::Matmul | Op::BatchMatmul => Class::Gemm,
        Op::ExpertFfn {
            layout: FfnLayout::Grouped,
            ..
        } => Class::GroupedGemm,
        Op::ExpertFfn {
            layout: FfnLayout::Padded,
            ..
        } => Class::Gemm,
        Op::Attention(_) => Class::Attention,
        Op::IndexSelect | Op::Dispatch { .. } => Class::Gather,
        Op::IndexAdd { .. } | Op::Combine { .. } => Class::Combine,
        Op::Input(_) | Op::Weight(_) | Op::Send { .. } | Op::Recv { .. } => return None,
        op if op.communicates() => return None,
        _ => Class::Memory,
    })
}

impl Profile {
    /// Reads a profile's TOML text (no I/O).
    pub fn from_toml(text: &str) -> Result<Profile, ProfileError> {
        let p: Profile = toml::from_str(text).map_err(|e| ProfileError::Parse(e.to_string()))?;
        p.check()?;
        Ok(p)
    }

    fn named(&self) -> [(&'static str, &Option<Rate>, bool); 11] {
        let r = &self.rates;
        [
            ("gemm_tflops", &r.gemm_tflops, false),
            ("gemm_small_tflops", &r.gemm_small_tflops, false),
            ("grouped_gemm_tflops", &r.grouped_gemm_tflops, false),
            ("attention_tflops", &r.attention_tflops, false),
            ("hbm_gbps", &r.hbm_gbps, false),
            ("gather_gbps", &r.gather_gbps, false),
            ("combine_gbps", &r.combine_gbps, false),
            ("intra_node_gbps", &r.intra_node_gbps, false),
            ("intra_node_latency_us", &r.intra_node_latency_us, true),
            ("inter_node_gbps", &r.inter_node_gbps, false),
            ("inter_node_latency_us", &r.inter_node_latency_us, true),
        ]
    }

    /// Every rate positive (latencies non-negative) and sourced.
    pub fn check(&self) -> Result<(), ProfileError> {
        for (name, rate, zero_ok) in self.named() {
            let Some(r) = rate else { continue };
            let ok = r.value.is_finite() && (r.value > 0.0 || (zero_ok && r.value == 0.0));
            if !ok {
                return Err(ProfileError::NotPositive(name));
            }
            if r.measured.is_some() == r.assumed.is_some() {
                return Err(ProfileError::Source(name));
            }
        }
        Ok(())
    }

    /// `cluster` with this profile's collective rates on its links and the profile attached
    /// (the roofline reads the compute rates from it).
    pub fn apply(&self, cluster: &Cluster) -> Cluster {
        let mut c = cluster.clone();
        let r = &self.rates;
        let set = |slot: &mut f64, rate: &Option<Rate>| {
            if let Some(rate) = rate {
                *slot = rate.value;
            }
        };
        set(&mut c.intra_node_gbps, &r.intra_node_gbps);
        set(&mut c.intra_node_latency_us, &r.intra_node_latency_us);
        set(&mut c.inter_node_gbps, &r.inter_node_gbps);
        set(&mut c.inter_node_latency_us, &r.inter_node_latency_us);
        c.profile = Some(Box::new(self.clone()));
        c
    }

    /// Seconds of a local op of `class` with `flops` and `bytes`, under this profile; `None`
    /// when the profile has no rate for the class (the cluster's figures apply).
    pub fn seconds(&self, class: Class, flops: f64, bytes: f64) -> Option<f64> {
        let r = &self.rates;
        let tflops = |rate: &Option<Rate>| rate.as_ref().map(|x| x.value * 1e12);
        let gbps = |rate: &Option<Rate>| rate.as_ref().map(|x| x.value * 1e9);
        let hbm = gbps(&r.hbm_gbps);
        let (peak, bw) = match class {
            Class::Gemm => {
                let small = flops < 2.0 * (1u64 << 30) as f64;
                let p = if small {
                    tflops(&r.gemm_small_tflops).or(tflops(&r.gemm_tflops))
                } else {
                    tflops(&r.gemm_tflops)
                };
                (p, hbm)
            }
            Class::GroupedGemm => (
                tflops(&r.grouped_gemm_tflops).or(tflops(&r.gemm_tflops)),
                hbm,
            ),
            Class::Attention => (tflops(&r.attention_tflops).or(tflops(&r.gemm_tflops)), hbm),
            Class::Gather => (None, gbps(&r.gather_gbps).or(hbm)),
            Class::Combine => (None, gbps(&r.combine_gbps).or(hbm)),
            Class::Memory => (None, hbm),
        };
        if peak.is_none() && bw.is_none() {
            return None;
        }
        let t_flops = peak.map_or(0.0, |p| flops / p);
        let t_bytes = bw.map_or(0.0, |b| bytes / b);
        Some(t_flops.max(t_bytes))
    }

    /// The profile as TOML (what `calibrate` writes).
    pub fn to_toml(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# moe-opt cost profile: rates by op class, each measured or assumed."
        );
        let _ = writeln!(s, "device = {}", quote(&self.device));
        let _ = writeln!(s, "\n[rates]");
        for (name, rate, _) in self.named() {
            let Some(r) = rate else { continue };
            let (k, v) = match (&r.measured, &r.assumed) {
                (Some(m), _) => ("measured", m),
                (None, Some(a)) => ("assumed", a),
                (None, None) => continue,
            };
            let _ = writeln!(
                s,
                "{name} = {{ value = {:?}, {k} = {} }}",
                r.value,
                quote(v)
            );
        }
        s
    }
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_h200_profile_reads_and_round_trips() {
        let p = Profile::from_toml(include_str!("../../../examples/profiles/h200.toml")).unwrap();
        assert!(p.rates.gemm_tflops.as_ref().unwrap().measured.is_some());
        assert_eq!(Profile::from_toml(&p.to_toml()).unwrap(), p);
    }

    #[test]
    fn a_rate_needs_one_source_and_a_positive_value() {
        let e = Profile::from_toml("[rates]\ngemm_tflops = { value = 1.0 }\n").unwrap_err();
        assert!(e.to_string().contains("gemm_tflops"), "{e}");
        let e = Profile::from_toml("[rates]\nhbm_gbps = { value = -1.0, assumed = \"x\" }\n")
            .unwrap_err();
        assert!(e.to_string().contains("hbm_gbps"), "{e}");
        let e =
            Profile::from_toml("[rates]\nspeed = { value = 1.0, assumed = \"x\" }\n").unwrap_err();
        assert!(e.to_string().contains("speed"), "{e}");
    }

    #[test]
    fn classes_price_with_their_own_rate() {
        let p = Profile::from_toml(
            "[rates]\ngemm_tflops = { value = 100.0, assumed = \"t\" }\ngrouped_gemm_tflops = { value = 50.0, assumed = \"t\" }\ngather_gbps = { value = 500.0, assumed = \"t\" }\n",
        )
        .unwrap();
        let f = 1e13;
        assert_eq!(p.seconds(Class::Gemm, f, 0.0), Some(0.1));
        assert_eq!(p.seconds(Class::GroupedGemm, f, 0.0), Some(0.2));
        assert_eq!(p.seconds(Class::Gather, 0.0, 5e11), Some(1.0));
        assert_eq!(p.seconds(Class::Memory, 0.0, 1.0), None);
    }
}
