//! The cluster description (`--cluster FILE`, TOML) with H200 defaults from measurements.

use moe_ir::Level;
use serde::Deserialize;
use thiserror::Error;

/// One GPU's speeds and memory.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    pub name: String,
    /// Dense bf16 matrix throughput, TFLOP/s (achieved, not the datasheet peak).
    pub bf16_tflops: f64,
    /// Memory, GB (10^9 bytes).
    pub memory_gb: f64,
    /// Memory bandwidth, GB/s.
    #[serde(default = "default_hbm")]
    pub hbm_gbps: f64,
}

fn default_hbm() -> f64 {
    4300.0
}

/// A cluster of `nodes` nodes of `gpus_per_node` GPUs. Bandwidths are per GPU, in GB/s
/// (gigabytes per second), as collective "bus bandwidth"; latencies in microseconds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub nodes: u64,
    pub gpus_per_node: u64,
    /// Bus bandwidth of collectives inside a node (NVLink), GB/s per GPU.
    pub intra_node_gbps: f64,
    /// Bus bandwidth of collectives across nodes (network), GB/s per GPU.
    pub inter_node_gbps: f64,
    /// Per-step latency inside a node, µs.
    #[serde(default = "default_intra_latency")]
    pub intra_node_latency_us: f64,
    /// Per-step latency across nodes, µs.
    #[serde(default = "default_inter_latency")]
    pub inter_node_latency_us: f64,
    pub gpu: Gpu,
    /// Routing imbalance the cost model prices (`--skew F`: the hottest expert gets F times its
    /// share; 1 is balanced). Not in the cluster file.
    #[serde(skip, default = "balanced")]
    pub skew: f64,
    /// Per-class rates from a cost profile (`--profile`; never in the cluster file).
    #[serde(skip)]
    pub profile: Option<Box<super::profile::Profile>>,
}

fn balanced() -> f64 {
    1.0
}

fn default_intra_latency() -> f64 {
    5.0
}
fn default_inter_latency() -> f64 {
    15.0
}

/// A cluster file that cannot be used.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ClusterError {
    #[error("cluster file: {0}")]
    Parse(String),
    #[error("cluster file: `{key}` must be positive and finite, is {value}")]
    NotPositive { key: &'static str, value: f64 },
}

impl Default for Cluster {
    /// One node of 8 H200s. NVLink bus bandwidth 290 GB/s: NCCL all-reduce of 134 MB through burn
    /// on 4 H200s (FACTS.md; PyTorch: 323 GB/s). Network 50 GB/s per GPU (400 Gb/s InfiniBand, the
    /// ~10x gap to NVLink FACTS.md describes). 675 TFLOP/s: cuBLAS bf16 in a dense FFN layer.
    fn default() -> Cluster {
        Cluster {
            nodes: 1,
            gpus_per_node: 8,
            intra_node_gbps: 290.0,
            inter_node_gbps: 50.0,
            intra_node_latency_us: default_intra_latency(),
            inter_node_latency_us: default_inter_latency(),
            gpu: Gpu {
                name: "H200".into(),
                bf16_tflops: 675.0,
                memory_gb: 141.0,
                hbm_gbps: default_hbm(),
            },
            skew: 1.0,
            profile: None,
        }
    }
}

impl Cluster {
    /// Reads a cluster file's TOML text (no I/O: the caller reads the file).
    pub fn from_toml(text: &str) -> Result<Cluster, ClusterError> {
        let c: Cluster = toml::from_str(text).map_err(|e| ClusterError::Parse(e.to_string()))?;
        c.check()?;
        Ok(c)
    }

    /// Checks that every size and speed is positive.
    pub fn check(&self) -> Result<(), ClusterError> {
        let fields = [
            ("nodes", self.nodes as f64),
            ("gpus_per_node", self.gpus_per_node as f64),
            ("intra_node_gbps", self.intra_node_gbps),
            ("inter_node_gbps", self.inter_node_gbps),
            ("gpu.bf16_tflops", self.gpu.bf16_tflops),
            ("gpu.memory_gb", self.gpu.memory_gb),
            ("gpu.hbm_gbps", self.gpu.hbm_gbps),
        ];
        for (key, value) in fields {
            if !(value.is_finite() && value > 0.0) {
                return Err(ClusterError::NotPositive { key, value });
            }
        }
        for (key, value) in [
            ("intra_node_latency_us", self.intra_node_latency_us),
            ("inter_node_latency_us", self.inter_node_latency_us),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(ClusterError::NotPositive { key, value });
            }
        }
        Ok(())
    }

    /// Bandwidth in bytes/s and per-step latency in seconds of links at `level`.
    pub fn link(&self, level: Level) -> (f64, f64) {
        match level {
            Level::IntraNode => (
                self.intra_node_gbps * 1e9,
                self.intra_node_latency_us * 1e-6,
            ),
            Level::InterNode => (
                self.inter_node_gbps * 1e9,
                self.inter_node_latency_us * 1e-6,
            ),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_two_node_file() {
        let c = Cluster::from_toml(
            "nodes = 2\ngpus_per_node = 8\nintra_node_gbps = 300\ninter_node_gbps = 25\n\
             [gpu]\nname = \"H200\"\nbf16_tflops = 700\nmemory_gb = 141\n",
        )
        .unwrap();
        assert_eq!(c.nodes, 2);
        assert_eq!(c.link(Level::InterNode).0, 25e9);
        assert_eq!(c.gpu.hbm_gbps, 4300.0);
    }

    #[test]
    fn refuses_unknown_keys_and_non_positive_speeds() {
        let e = Cluster::from_toml("nodes = 1\ngpus_per_node = 8\nintra_node_gbps = 300\ninter_node_gbps = 0\nspeed = 3\n[gpu]\nname = \"x\"\nbf16_tflops = 1\nmemory_gb = 1\n");
        assert!(e.unwrap_err().to_string().contains("speed"));
        let e = Cluster::from_toml("nodes = 1\ngpus_per_node = 8\nintra_node_gbps = 300\ninter_node_gbps = 0\n[gpu]\nname = \"x\"\nbf16_tflops = 1\nmemory_gb = 1\n");
        assert!(e.unwrap_err().to_string().contains("inter_node_gbps"));
    }
}
