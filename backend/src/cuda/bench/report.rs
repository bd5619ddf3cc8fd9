//! What the benchmarks measured, as plain data (the CLI prints it as a table or JSON).

use super::config::LayerConfig;
use super::timing::Stats;

/// The three forms of one MoE layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The dense backbone: a tensor-parallel MLP (F split over the GPUs) and an all-reduce.
    Dense,
    /// PPMoE: every GPU routes all tokens, selects by index the ones for its experts, runs
    /// them, combines into [N, H] and all-reduces.
    PpMoe,
    /// Expert parallelism: N/W tokens per GPU, capacity-padded dispatch, all-to-all, experts,
    /// all-to-all back, combine.
    AllToAll,
}

impl Form {
    /// Short key (JSON).
    pub fn key(self) -> &'static str {
        match self {
            Form::Dense => "dense",
            Form::PpMoe => "ppmoe",
            Form::AllToAll => "all_to_all",
        }
    }

    /// Table label.
    pub fn label(self) -> &'static str {
        match self {
            Form::Dense => "dense TP MLP",
            Form::PpMoe => "PPMoE (slice + all-reduce)",
            Form::AllToAll => "all-to-all EP (capacity)",
        }
    }
}

/// One form's timing.
#[derive(Debug, Clone, PartialEq)]
pub struct FormResult {
    /// Which form.
    pub form: Form,
    /// Step times.
    pub stats: Stats,
    /// Tokens per step (all GPUs).
    pub tokens: usize,
    /// Useful FLOPs per step (all GPUs): no padding.
    pub useful_flops: f64,
    /// FLOPs executed per step (all GPUs), capacity padding included.
    pub executed_flops: f64,
}

impl FormResult {
    /// Tokens per second at the median step time.
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / (self.stats.median_ms * 1e-3)
    }

    /// Useful TFLOP/s at the median step time (all GPUs together).
    pub fn tflops(&self) -> f64 {
        self.useful_flops / (self.stats.median_ms * 1e-3) / 1e12
    }

    /// Executed TFLOP/s (padding included).
    pub fn executed_tflops(&self) -> f64 {
        self.executed_flops / (self.stats.median_ms * 1e-3) / 1e12
    }
}

/// Whether the PPMoE and all-to-all forms computed the same output.
#[derive(Debug, Clone, PartialEq)]
pub struct Agreement {
    /// (token, expert) entries the all-to-all form dropped for lack of capacity (all GPUs).
    pub dropped: usize,
    /// Elements compared.
    pub compared: usize,
    /// Largest |PPMoE - all-to-all|.
    pub max_abs_diff: f64,
    /// Largest |PPMoE output|.
    pub max_abs: f64,
    /// Elements outside the bf16 tolerance.
    pub mismatched: usize,
}

impl Agreement {
    /// Relative tolerance per element (bf16 has 8 significant bits; the two forms group rows
    /// differently, so cuBLAS may pick kernels with different summation orders).
    pub const RTOL: f64 = 2e-2;
    /// Absolute tolerance, relative to the largest output.
    pub const ATOL: f64 = 1e-2;

    /// True when nothing was dropped and every element agrees.
    pub fn passed(&self) -> bool {
        self.dropped == 0 && self.mismatched == 0 && self.compared > 0
    }

    /// Compares `a` (PPMoE) with `b` (all-to-all) element by element, adding to `self`.
    pub fn add(&mut self, a: &[f32], b: &[f32]) {
        let scale = a.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
        self.max_abs = self.max_abs.max(scale);
        for (&x, &y) in a.iter().zip(b) {
            let (x, y) = (f64::from(x), f64::from(y));
            let d = (x - y).abs();
            if d.is_nan() || d > Self::ATOL * self.max_abs + Self::RTOL * x.abs() {
                self.mismatched += 1;
            }
            self.max_abs_diff = self
                .max_abs_diff
                .max(if d.is_nan() { f64::INFINITY } else { d });
        }
        self.compared += a.len().min(b.len());
    }
}

/// The layer benchmark's results.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerReport {
    /// GPU name, e.g. `NVIDIA H200`.
    pub device: String,
    /// The layer.
    pub config: LayerConfig,
    /// Dense, PPMoE, all-to-all, in that order.
    pub forms: Vec<FormResult>,
    /// Tokens routed to each expert (PPMoE routing of all N tokens).
    pub expert_load: Vec<usize>,
    /// PPMoE against all-to-all.
    pub agreement: Agreement,
    /// Whether GELU was fused into cuBLASLt's up-projection (chosen by timing).
    pub fused_gelu: bool,
    /// The dense up-projection's ms per call with GELU fused, and as GEMM + GELU kernel.
    pub gelu_ms: (f64, f64),
    /// How collectives ran (NCCL version, or why none ran).
    pub collectives: String,
}

impl LayerReport {
    fn median(&self, f: Form) -> f64 {
        self.forms
            .iter()
            .find(|r| r.form == f)
            .map_or(f64::NAN, |r| r.stats.median_ms)
    }

    /// PPMoE throughput over the dense backbone's (same tokens: dense time / PPMoE time).
    pub fn ppmoe_over_dense_throughput(&self) -> f64 {
        self.median(Form::Dense) / self.median(Form::PpMoe)
    }

    /// All-to-all step time over PPMoE's (above 1: PPMoE is faster).
    pub fn all_to_all_over_ppmoe_time(&self) -> f64 {
        self.median(Form::AllToAll) / self.median(Form::PpMoe)
    }
}

/// One GEMM measurement: the CUDA path against cuBLAS (and burn) on the same shape.
#[derive(Debug, Clone, PartialEq)]
pub struct GemmRow {
    /// What was multiplied, e.g. `16384x4096 @ 4096x16384`.
    pub label: String,
    /// FLOPs per call (all groups).
    pub flops: f64,
    /// The CUDA path (cuBLASLt plans), TFLOP/s.
    pub ours_tflops: f64,
    /// Plain `cublasGemmEx`, TFLOP/s.
    pub cublas_tflops: f64,
    /// burn-cuda's own `matmul` (plain CubeBackend), TFLOP/s, where measured.
    pub burn_tflops: Option<f64>,
    /// Max |ours - burn| / max |burn| (or against cuBLAS where burn was not run).
    pub max_rel_err: Option<f64>,
    /// What `max_rel_err` compares against.
    pub err_against: &'static str,
}

/// One gather / combine measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyRow {
    /// What moved, e.g. `gather 16384 of 16384 rows x 4096 (permutation)`.
    pub label: String,
    /// Bytes read plus written per call.
    pub bytes: f64,
    /// The CUDA path's kernel, GB/s.
    pub ours_gbs: f64,
    /// `cuMemcpyDtoD` of as many bytes, GB/s (read + write counted).
    pub memcpy_gbs: f64,
    /// burn-cuda's `select` on the same rows, GB/s, where measured.
    pub burn_gbs: Option<f64>,
    /// Sampled rows against a host computation: max |error| / max |value|.
    pub max_rel_err: f64,
}

/// One collective check.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectiveRow {
    /// Which collective and size.
    pub label: String,
    /// Whether the result equals the host's expectation.
    pub correct: bool,
    /// Time per call, where timed.
    pub ms: Option<f64>,
    /// Algorithm bandwidth (bytes / time), GB/s, where timed.
    pub alg_gbs: Option<f64>,
    /// Bus bandwidth (NCCL's convention), GB/s, where timed.
    pub bus_gbs: Option<f64>,
}

/// The micro checks' results.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MicroReport {
    /// GPU name.
    pub device: String,
    /// GEMMs.
    pub gemms: Vec<GemmRow>,
    /// Gathers and combines.
    pub copies: Vec<CopyRow>,
    /// Collectives.
    pub collectives: Vec<CollectiveRow>,
    /// NCCL's version code.
    pub nccl_version: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_counts_elements_outside_the_tolerance() {
        let mut a = Agreement {
            dropped: 0,
            compared: 0,
            max_abs_diff: 0.0,
            max_abs: 0.0,
            mismatched: 0,
        };
        a.add(&[1.0, 2.0, -4.0], &[1.0, 2.01, -4.5]);
        assert_eq!(a.mismatched, 1);
        assert_eq!(a.compared, 3);
        assert!((a.max_abs_diff - 0.5).abs() < 1e-9);
        assert!(!a.passed());
        a.add(&[f32::NAN], &[0.0]);
        assert_eq!(a.mismatched, 2);
    }

    #[test]
    fn ratios_use_median_times() {
        let form = |form, ms| FormResult {
            form,
            stats: Stats::of(vec![ms]),
            tokens: 1000,
            useful_flops: 1e12,
            executed_flops: 1e12,
        };
        let r = LayerReport {
            device: "x".into(),
            config: LayerConfig::default(),
            forms: vec![
                form(Form::Dense, 6.0),
                form(Form::PpMoe, 8.0),
                form(Form::AllToAll, 10.0),
            ],
            expert_load: vec![],
            agreement: Agreement {
                dropped: 0,
                compared: 1,
                max_abs_diff: 0.0,
                max_abs: 1.0,
                mismatched: 0,
            },
            fused_gelu: true,
            gelu_ms: (1.0, 1.1),
            collectives: String::new(),
        };
        assert_eq!(r.ppmoe_over_dense_throughput(), 0.75);
        assert_eq!(r.all_to_all_over_ppmoe_time(), 1.25);
        assert_eq!(r.forms[0].tflops(), 1e12 / 6e-3 / 1e12);
        assert_eq!(r.forms[1].tokens_per_s(), 1000.0 / 8e-3);
    }
}
