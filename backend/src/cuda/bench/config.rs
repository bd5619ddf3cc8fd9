//! What `moe-opt bench --backend cuda` measures: the layer's sizes and the derived quantities
//! (per-rank shares, capacity, FLOPs, memory), checked before anything touches a GPU.

use super::super::error::{CudaError, Result};
use super::super::kernels::{sort_chunks, MAX_TOPK, VEC};

/// One MoE layer and how to time it.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerConfig {
    /// GPUs (ranks) W.
    pub gpus: usize,
    /// Hidden size H.
    pub hidden: usize,
    /// FFN width F of the dense MLP and of each expert.
    pub ffn: usize,
    /// Experts E.
    pub experts: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Tokens per step N (all ranks together).
    pub tokens: usize,
    /// Timed steps per form (the median is reported).
    pub iters: usize,
    /// Untimed steps per form before timing.
    pub warmup: usize,
    /// All-to-all capacity factor: slots per expert = ceil(factor * tokens per rank * k / E).
    pub capacity_factor: f64,
    /// Seed of the random inputs and weights.
    pub seed: u64,
}

impl Default for LayerConfig {
    /// The reference layer: H=4096, F=16384, E=8, top-1, 16384 tokens, one GPU.
    fn default() -> Self {
        Self {
            gpus: 1,
            hidden: 4096,
            ffn: 16384,
            experts: 8,
            top_k: 1,
            tokens: 16384,
            iters: 20,
            warmup: 5,
            capacity_factor: 1.25,
            seed: 0,
        }
    }
}

fn invalid(msg: String) -> CudaError {
    CudaError::Invalid(msg)
}

impl LayerConfig {
    /// Checks every size; the error names the option to change.
    pub fn validate(&self) -> Result<()> {
        let w = self.gpus;
        if w == 0 {
            return Err(invalid("--gpus must be at least 1".into()));
        }
        if self.hidden == 0 || self.hidden % VEC != 0 {
            return Err(invalid(format!(
                "--hidden {}: must be a positive multiple of {VEC} (16-byte rows)",
                self.hidden
            )));
        }
        if self.ffn == 0 || self.ffn % (VEC * w) != 0 {
            return Err(invalid(format!(
                "--ffn {}: must be a positive multiple of {} (split over {w} GPUs in rows of {VEC})",
                self.ffn,
                VEC * w
            )));
        }
        if self.experts == 0 || self.experts % w != 0 {
            return Err(invalid(format!(
                "--experts {}: must be a positive multiple of --gpus {w}",
                self.experts
            )));
        }
        if self.top_k == 0 || self.top_k > MAX_TOPK.min(self.experts) {
            return Err(invalid(format!(
                "--top-k {}: must be between 1 and {}",
                self.top_k,
                MAX_TOPK.min(self.experts)
            )));
        }
        if self.tokens == 0 || self.tokens % w != 0 {
            return Err(invalid(format!(
                "--tokens {}: must be a positive multiple of --gpus {w}",
                self.tokens
            )));
        }
        if self.iters == 0 {
            return Err(invalid("--iters must be at least 1".into()));
        }
        if !(self.capacity_factor.is_finite() && self.capacity_factor > 0.0) {
            return Err(invalid(format!(
                "--capacity-factor {}: must be a positive number",
                self.capacity_factor
            )));
        }
        let limit = i32::MAX as usize;
        let entries = self.tokens.checked_mul(self.top_k);
        let slots = self.capacity().checked_mul(self.experts);
        let counts = self
            .experts
            .checked_mul(sort_chunks(entries.unwrap_or(usize::MAX)));
        for (v, what) in [
            (entries, "tokens x top-k"),
            (slots, "experts x capacity"),
            (counts, "experts x sort blocks"),
        ] {
            if v.is_none_or(|v| v > limit) {
                return Err(invalid(format!(
                    "{what} exceeds {limit}: make the layer smaller"
                )));
            }
        }
        Ok(())
    }

    /// Experts per rank E/W.
    pub fn local_experts(&self) -> usize {
        self.experts / self.gpus
    }

    /// FFN columns per rank of the dense tensor-parallel MLP, F/W.
    pub fn local_ffn(&self) -> usize {
        self.ffn / self.gpus
    }

    /// Tokens per rank in the all-to-all form, N/W.
    pub fn tokens_per_rank(&self) -> usize {
        self.tokens / self.gpus
    }

    /// All-to-all slots per expert per source rank: ceil(factor * N/W * k / E).
    pub fn capacity(&self) -> usize {
        let exact = self.capacity_factor * (self.tokens_per_rank() * self.top_k) as f64
            / self.experts as f64;
        (exact - 1e-9).ceil().max(1.0) as usize
    }

    /// FLOPs of the dense MLP over all ranks: two GEMMs, 4 N H F.
    pub fn dense_flops(&self) -> f64 {
        4.0 * self.tokens as f64 * self.hidden as f64 * self.ffn as f64
    }

    /// FLOPs of the gate GEMM over all tokens: 2 N H E.
    pub fn gate_flops(&self) -> f64 {
        2.0 * self.tokens as f64 * self.hidden as f64 * self.experts as f64
    }

    /// Useful FLOPs of the MoE layer: the gate plus every routed token's expert FFN, 4 N k H F.
    pub fn moe_flops(&self) -> f64 {
        self.gate_flops()
            + 4.0 * (self.tokens * self.top_k) as f64 * self.hidden as f64 * self.ffn as f64
    }

    /// FLOPs the all-to-all form executes, padding included: every rank runs its E/W experts on
    /// W * capacity rows.
    pub fn all_to_all_executed_flops(&self) -> f64 {
        let rows = (self.experts * self.gpus * self.capacity()) as f64;
        self.gate_flops() + 4.0 * rows * self.hidden as f64 * self.ffn as f64
    }

    /// Rows of the FFN activation buffer, shared by the PPMoE and all-to-all forms.
    pub fn activation_rows(&self) -> usize {
        (self.tokens * self.top_k).max(self.experts * self.capacity())
    }

    /// Device memory one rank needs, in bytes (buffers of all three forms plus the cuBLASLt
    /// workspace; burn's pools round this up).
    pub fn bytes_per_rank(&self) -> usize {
        let (n, h, f, e) = (self.tokens, self.hidden, self.ffn, self.experts);
        let (el, fl, t, k) = (
            self.local_experts(),
            self.local_ffn(),
            self.tokens_per_rank(),
            self.top_k,
        );
        let slots = e * self.capacity();
        let bf = 2;
        let ints = |entries: usize| 4 * (6 * entries + 2 * e * sort_chunks(entries) + e + 2);
        let mut b = bf * n * h // x
            + bf * (h * e + n * e) // gate weight, logits
            + bf * (2 * h * fl + n * fl + n * h) // dense: weights, activation, output
            + bf * 2 * el * h * f // experts
            + ints(n * k)
            + bf * (2 * n * k * h + n * h) // PPMoE: gathered rows, expert outputs, output
            + bf * self.activation_rows() * f // shared FFN activation
            + ints(t * k) + 4 * slots
            + bf * (2 * slots * h + t * h); // all-to-all: dispatch, expert outputs, output
        if self.gpus > 1 {
            b += bf * 2 * slots * h; // receive and return buffers
        }
        b + super::super::gemm::WORKSPACE_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(f: impl FnOnce(&mut LayerConfig)) -> LayerConfig {
        let mut c = LayerConfig::default();
        f(&mut c);
        c
    }

    #[test]
    fn the_reference_layer_is_valid() {
        LayerConfig::default().validate().expect("valid");
        cfg(|c| {
            c.gpus = 4;
            c.top_k = 2;
        })
        .validate()
        .expect("valid");
    }

    #[test]
    fn each_bad_size_names_its_option() {
        let cases: [(LayerConfig, &str); 8] = [
            (cfg(|c| c.gpus = 0), "--gpus"),
            (cfg(|c| c.hidden = 4100), "--hidden"),
            (cfg(|c| c.ffn = 100), "--ffn"),
            (cfg(|c| c.experts = 0), "--experts"),
            (cfg(|c| c.top_k = 9), "--top-k"),
            (cfg(|c| c.top_k = 0), "--top-k"),
            (
                cfg(|c| {
                    c.gpus = 4;
                    c.tokens = 10;
                }),
                "--tokens",
            ),
            (cfg(|c| c.capacity_factor = f64::NAN), "--capacity-factor"),
        ];
        for (c, option) in cases {
            let e = c.validate().expect_err("invalid").to_string();
            assert!(e.contains(option), "{option}: {e}");
        }
        let gpus = cfg(|c| c.gpus = 3).validate().expect_err("F/3").to_string();
        assert!(gpus.contains("--ffn"), "{gpus}");
        let huge = cfg(|c| c.tokens = 1 << 40);
        assert!(huge.validate().is_err());
    }

    #[test]
    fn capacity_is_the_rounded_up_fair_share() {
        assert_eq!(LayerConfig::default().capacity(), 2560);
        assert_eq!(cfg(|c| c.top_k = 2).capacity(), 5120);
        assert_eq!(cfg(|c| c.gpus = 4).capacity(), 640);
        assert_eq!(cfg(|c| c.tokens = 10).capacity(), 2);
    }

    #[test]
    fn flops_of_the_reference_layer() {
        let c = LayerConfig::default();
        let dense = 4.0 * 16384.0 * 4096.0 * 16384.0;
        assert_eq!(c.dense_flops(), dense);
        assert_eq!(c.moe_flops(), dense + 2.0 * 16384.0 * 4096.0 * 8.0);
        // Capacity padding: 8 * 2560 rows instead of 16384.
        assert!((c.all_to_all_executed_flops() - c.gate_flops()) / dense - 1.25 < 1e-12);
    }

    #[test]
    fn the_reference_layer_fits_an_h200() {
        let top2 = cfg(|c| c.top_k = 2);
        assert!(
            top2.bytes_per_rank() < 20 << 30,
            "{}",
            top2.bytes_per_rank()
        );
        assert!(top2.bytes_per_rank() > 4 << 30);
    }
}
