//! Micro checks on GPU 0: the CUDA path's GEMMs against plain cuBLAS and burn's own `matmul`,
//! its gathers and combines against `cuMemcpyDtoD` and burn's `select`, each checked for
//! correctness; then the NCCL collectives over all GPUs ([`super::collectives`]).

use super::super::device::{Buf, CubeBf16, Elem, Gpu};
use super::super::error::{driver, CudaError, Result};
use super::super::gemm::{Epilogue, GemmShape};
use super::super::libs;
use super::collectives::run_collectives;
use super::layer::to_f32;
use super::rank::Rank;
use super::report::{CopyRow, GemmRow, MicroReport};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor};
use std::cell::RefCell;
use std::time::Instant;

/// What the micro checks run.
#[derive(Debug, Clone, PartialEq)]
pub struct MicroConfig {
    /// GPUs for the collectives (GEMMs and copies run on GPU 0).
    pub gpus: usize,
    /// Calls per timing.
    pub iters: usize,
    /// Seed of the random data.
    pub seed: u64,
}

impl Default for MicroConfig {
    fn default() -> Self {
        Self {
            gpus: 1,
            iters: 20,
            seed: 0,
        }
    }
}

/// Dense GEMM shapes, `M x K x N`.
pub const DENSE_SHAPES: [(usize, usize, usize); 5] = [
    (8192, 8192, 8192),
    (16384, 4096, 16384),
    (16384, 16384, 4096),
    (2048, 4096, 16384),
    (2048, 16384, 4096),
];

/// Expert GEMM groups: rows per expert of `[rows, 4096] x [4096, 16384]`.
pub fn expert_groups() -> Vec<(&'static str, Vec<usize>)> {
    vec![
        ("top-1, balanced", vec![2048; 8]),
        (
            "top-1, imbalanced",
            vec![1536, 2560, 1792, 2304, 2048, 2048, 1664, 2432],
        ),
        ("top-2, balanced", vec![4096; 8]),
    ]
}

/// Milliseconds per call of `iters` calls of `f` on `gpu`'s stream, between two events.
fn time_calls(gpu: &Gpu, iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let (s, e) = (gpu.event()?, gpu.event()?);
    gpu.record(&s)?;
    for _ in 0..iters {
        f()?;
    }
    gpu.record(&e)?;
    let ms = s.elapsed_ms(&e).map_err(driver("cuEventElapsedTime"))?;
    Ok(f64::from(ms) / iters as f64)
}

/// Best of four rounds of `a` and `b` in ABBA order (ms per call each), after one warm-up call
/// of each (which also makes the GEMM plans): the order keeps clock and power drift from
/// favouring either.
fn race(
    gpu: &Gpu,
    iters: usize,
    mut a: impl FnMut() -> Result<()>,
    mut b: impl FnMut() -> Result<()>,
) -> Result<(f64, f64)> {
    a()?;
    b()?;
    let (mut ta, mut tb) = (f64::INFINITY, f64::INFINITY);
    for round in 0..4 {
        if round % 2 == 0 {
            tb = tb.min(time_calls(gpu, iters, &mut b)?);
            ta = ta.min(time_calls(gpu, iters, &mut a)?);
        } else {
            ta = ta.min(time_calls(gpu, iters, &mut a)?);
            tb = tb.min(time_calls(gpu, iters, &mut b)?);
        }
    }
    Ok((ta, tb))
}

fn float2(buf: &Buf, rows: usize, cols: usize) -> Result<Tensor<CubeBf16, 2>> {
    buf.float_tensor()
        .map(|t| t.reshape([rows, cols]))
        .ok_or_else(|| CudaError::Invalid("not a float buffer".into()))
}

/// Max |a - b| / max |b| of two float tensors, computed by burn in f32.
fn rel_err(a: Tensor<CubeBf16, 2>, b: Tensor<CubeBf16, 2>) -> Result<f64> {
    let (a, b) = (a.cast(DType::F32), b.cast(DType::F32));
    let scalar = |t: Tensor<CubeBf16, 1>| -> Result<f64> {
        let v = t
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| CudaError::Burn(format!("read back: {e:?}")))?;
        Ok(f64::from(v.first().copied().unwrap_or(f32::NAN)))
    };
    let diff = scalar((a - b.clone()).abs().max())?;
    let scale = scalar(b.abs().max())?;
    Ok(diff / scale)
}

/// burn's matmul on the same buffers: TFLOP/s (wall clock, synchronised, after two warm-up
/// calls that include burn's autotuning) and its result.
fn burn_matmul(
    gpu: &Gpu,
    a: &Buf,
    b: &Buf,
    (m, k, n): (usize, usize, usize),
    iters: usize,
) -> Result<(f64, Tensor<CubeBf16, 2>)> {
    gpu.sync()?;
    let (ta, tb) = (float2(a, m, k)?, float2(b, k, n)?);
    let sync = || CubeBf16::sync(gpu.device()).map_err(|e| CudaError::Burn(format!("{e:?}")));
    let out = ta.clone().matmul(tb.clone());
    let _ = ta.clone().matmul(tb.clone());
    sync()?;
    let t0 = Instant::now();
    for _ in 0..iters {
        let _ = ta.clone().matmul(tb.clone());
    }
    sync()?;
    let s = t0.elapsed().as_secs_f64() / iters as f64;
    gpu.bind()?;
    Ok((GemmShape::new(m, n, k).flops() / s / 1e12, out))
}

/// The dense GEMM rows.
fn dense_gemms(r: &mut Rank, cfg: &MicroConfig) -> Result<Vec<GemmRow>> {
    let mut rows = Vec::new();
    for (i, &(m, k, n)) in DENSE_SHAPES.iter().enumerate() {
        let s = GemmShape::new(m, n, k);
        let a = r.random(m * k, cfg.seed + 10 + i as u64, 0, 1.0)?;
        let b = r.random(k * n, cfg.seed + 20 + i as u64, 0, 1.0 / (k as f32).sqrt())?;
        let c = r.alloc(Elem::Bf16, m * n)?;
        let c_ref = r.alloc(Elem::Bf16, m * n)?;
        r.gpu.after_burn()?;
        let iters = cfg.iters;
        let (aa, bb, cc, cr) = (a.addr(), b.addr(), c.addr(), c_ref.addr());
        // Both closures use the one engine; `race` calls them one after the other.
        let gemm = RefCell::new(&mut r.gemm);
        let (ours, reference) = race(
            &r.gpu,
            iters,
            || gemm.borrow_mut().matmul(s, Epilogue::None, aa, bb, cc),
            || gemm.borrow().reference(s, aa, bb, cr),
        )?;
        let (burn_tflops, burn_out) = burn_matmul(&r.gpu, &a, &b, (m, k, n), 5)?;
        r.gpu.sync()?;
        let err = rel_err(float2(&c, m, n)?, burn_out)?;
        r.gpu.bind()?;
        rows.push(GemmRow {
            label: format!("{m}x{k} @ {k}x{n}"),
            flops: s.flops(),
            ours_tflops: s.flops() / (ours * 1e-3) / 1e12,
            cublas_tflops: s.flops() / (reference * 1e-3) / 1e12,
            burn_tflops: Some(burn_tflops),
            max_rel_err: Some(err),
            err_against: "burn matmul",
        });
        if i == 1 {
            // One untimed call each first: it makes (and tunes) the plan.
            r.gemm.matmul(s, Epilogue::Gelu, aa, bb, cc)?;
            let gelu = time_calls(&r.gpu, iters, || {
                r.gemm.matmul(s, Epilogue::Gelu, aa, bb, cc)
            })?;
            rows.push(GemmRow {
                label: format!("{m}x{k} @ {k}x{n} + fused GELU (vs plain cuBLAS)"),
                flops: s.flops(),
                ours_tflops: s.flops() / (gelu * 1e-3) / 1e12,
                cublas_tflops: s.flops() / (reference * 1e-3) / 1e12,
                burn_tflops: None,
                max_rel_err: None,
                err_against: "-",
            });
            let separate = time_calls(&r.gpu, iters, || {
                r.gemm.matmul(s, Epilogue::None, aa, bb, cc)?;
                r.k.gelu_inplace(cc, m * n)
            })?;
            rows.push(GemmRow {
                label: format!("{m}x{k} @ {k}x{n} then GELU kernel (vs plain cuBLAS)"),
                flops: s.flops(),
                ours_tflops: s.flops() / (separate * 1e-3) / 1e12,
                cublas_tflops: s.flops() / (reference * 1e-3) / 1e12,
                burn_tflops: None,
                max_rel_err: None,
                err_against: "-",
            });
        }
        r.gpu.sync()?;
    }
    Ok(rows)
}

/// The grouped expert GEMM rows: `[rows_e, 4096] x [4096, 16384]` per expert.
fn expert_gemms(r: &mut Rank, cfg: &MicroConfig) -> Result<Vec<GemmRow>> {
    let (k, n) = (4096usize, 16384usize);
    let w = r.random(8 * k * n, cfg.seed + 30, 0, 1.0 / (k as f32).sqrt())?;
    let stride = (k * n * 2) as u64;
    let mut rows = Vec::new();
    for (i, (name, groups)) in expert_groups().into_iter().enumerate() {
        let m: usize = groups.iter().sum();
        let a = r.random(m * k, cfg.seed + 40 + i as u64, 0, 1.0)?;
        let c = r.alloc(Elem::Bf16, m * n)?;
        let c_ref = r.alloc(Elem::Bf16, m * n)?;
        r.gpu.after_burn()?;
        let (aa, ww, cc, cr) = (a.addr(), w.addr(), c.addr(), c_ref.addr());
        let g = &groups;
        let gemm = RefCell::new(&mut r.gemm);
        let (ours, reference) = race(
            &r.gpu,
            cfg.iters,
            || {
                gemm.borrow_mut()
                    .grouped(g, n, k, Epilogue::None, aa, ww, stride, cc)
            },
            || gemm.borrow().grouped_reference(g, n, k, aa, ww, stride, cr),
        )?;
        r.gpu.sync()?;
        let err = rel_err(float2(&c, m, n)?, float2(&c_ref, m, n)?)?;
        r.gpu.bind()?;
        let flops = 2.0 * (m * k * n) as f64;
        rows.push(GemmRow {
            label: format!("experts {name}: {groups:?} x [{k}, {n}]"),
            flops,
            ours_tflops: flops / (ours * 1e-3) / 1e12,
            cublas_tflops: flops / (reference * 1e-3) / 1e12,
            burn_tflops: None,
            max_rel_err: Some(err),
            err_against: "cublasGemmEx",
        });
    }
    Ok(rows)
}

/// A seeded permutation of `0..n` (Fisher-Yates over SplitMix64).
pub fn permutation(n: usize, seed: u64) -> Vec<i32> {
    let mut s = seed;
    let mut next = move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut v: Vec<i32> = (0..n as i32).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// Rows checked on the host: the first and last 64 and every 97th.
fn sample_rows(rows: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..rows.min(64)).collect();
    v.extend(rows.saturating_sub(64)..rows);
    v.extend((0..rows).step_by(97));
    v.sort_unstable();
    v.dedup();
    v
}

/// Host reference of `out[t] = sum_j w[t*k+j] * src[slot[t*k+j]]` on sampled rows; returns
/// max |error| / max |value|.
fn combine_error(src: &[f32], out: &[f32], slot: &[i32], w: &[f32], k: usize, h: usize) -> f64 {
    let rows = out.len() / h;
    let (mut err, mut scale) = (0.0f64, 0.0f64);
    for t in sample_rows(rows) {
        for c in 0..h {
            let mut acc = 0.0f32;
            for j in 0..k {
                let s = slot[t * k + j];
                if s >= 0 {
                    acc += w[t * k + j] * src[s as usize * h + c];
                }
            }
            let expect = to_f32(&[bf16_bits(acc)])[0];
            err = err.max(f64::from((out[t * h + c] - expect).abs()));
            scale = scale.max(f64::from(expect.abs()));
        }
    }
    err / scale.max(f64::MIN_POSITIVE)
}

/// f32 to bf16 bits, rounding to nearest even (as the kernels do).
pub fn bf16_bits(f: f32) -> u16 {
    let u = f.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return 0x7fc0;
    }
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// Gathers and combines of `rows` rows of `h` bf16.
fn copies(r: &mut Rank, cfg: &MicroConfig, rows: usize, h: usize) -> Result<Vec<CopyRow>> {
    let mut out = Vec::new();
    let gpu = &r.gpu;
    // Sources: `2 rows` rows, enough for top-2.
    let src = r.random(2 * rows * h, cfg.seed + 50, 0, 1.0)?;
    let dst = r.alloc(Elem::Bf16, 2 * rows * h)?;
    let idx = r.alloc(Elem::I32, 2 * rows)?;
    let weight = r.alloc(Elem::F32, 2 * rows)?;
    gpu.after_burn()?;
    let host_src = to_f32(&gpu.download::<u16>(src.addr(), 2 * rows * h)?);
    let memcpy_gbs = |bytes: usize| -> Result<f64> {
        let ms = time_calls(gpu, cfg.iters, || {
            // SAFETY: both buffers hold at least `bytes` bytes.
            unsafe {
                cudarc::driver::result::memcpy_dtod_async(
                    dst.addr(),
                    src.addr(),
                    bytes,
                    gpu.raw_stream(),
                )
            }
            .map_err(driver("cuMemcpyDtoDAsync"))
        })?;
        Ok(2.0 * bytes as f64 / (ms * 1e-3) / 1e9)
    };
    // Gathers: a permutation of `rows` rows (top-1 dispatch), and `2 rows` rows with every
    // source row taken twice in random order (top-2 dispatch).
    for (label, n_out, index) in [
        (
            format!("gather {rows} rows x {h} (permutation, top-1 dispatch)"),
            rows,
            permutation(rows, cfg.seed + 1),
        ),
        (
            format!(
                "gather {} rows x {h} from {rows} (top-2 dispatch)",
                2 * rows
            ),
            2 * rows,
            permutation(2 * rows, cfg.seed + 2)
                .into_iter()
                .map(|i| i % rows as i32)
                .collect(),
        ),
    ] {
        gpu.upload(idx.addr(), &index)?;
        let ms = time_calls(gpu, cfg.iters, || {
            r.k.gather_rows(dst.addr(), src.addr(), idx.addr(), n_out, h)
        })?;
        let got = to_f32(&gpu.download::<u16>(dst.addr(), n_out * h)?);
        let mut err = 0.0f64;
        for t in sample_rows(n_out) {
            let s = index[t] as usize;
            for c in 0..h {
                err = err.max(f64::from((got[t * h + c] - host_src[s * h + c]).abs()));
            }
        }
        let bytes = 2.0 * (n_out * h * 2) as f64;
        let burn_gbs = burn_select(gpu, &src, rows, h, &index, cfg.iters)?.map(|s| bytes / s / 1e9);
        gpu.bind()?;
        out.push(CopyRow {
            label,
            bytes,
            ours_gbs: bytes / (ms * 1e-3) / 1e9,
            memcpy_gbs: memcpy_gbs(n_out * h * 2)?,
            burn_gbs,
            max_rel_err: err,
        });
    }
    // Combines: top-1 (a weighted permutation) and top-2 (gather two rows, weighted sum).
    for k in [1usize, 2] {
        let slot = permutation(k * rows, cfg.seed + 3 + k as u64);
        let w: Vec<f32> = permutation(k * rows, cfg.seed + 5)
            .iter()
            .map(|&p| 0.25 + p as f32 / (2 * k * rows) as f32)
            .collect();
        gpu.upload(idx.addr(), &slot)?;
        gpu.upload(weight.addr(), &w)?;
        let ms = time_calls(gpu, cfg.iters, || {
            r.k.combine_rows(
                dst.addr(),
                src.addr(),
                idx.addr(),
                weight.addr(),
                rows,
                k,
                h,
            )
        })?;
        let got = to_f32(&gpu.download::<u16>(dst.addr(), rows * h)?);
        let err = combine_error(&host_src, &got, &slot, &w, k, h);
        let bytes = ((k + 1) * rows * h * 2 + rows * k * 8) as f64;
        out.push(CopyRow {
            label: format!("combine top-{k}: {rows} rows x {h} from {} rows", k * rows),
            bytes,
            ours_gbs: bytes / (ms * 1e-3) / 1e9,
            memcpy_gbs: memcpy_gbs(rows * h * 2)?,
            burn_gbs: None,
            max_rel_err: err,
        });
    }
    Ok(out)
}

/// burn-cuda's `select` of `index` rows from the first `rows` rows of `src`: seconds per call
/// (wall clock, synchronised).
fn burn_select(
    gpu: &Gpu,
    src: &Buf,
    rows: usize,
    h: usize,
    index: &[i32],
    iters: usize,
) -> Result<Option<f64>> {
    gpu.sync()?;
    let t = float2(src, 2 * rows, h)?;
    let data = burn::tensor::TensorData::new(index.to_vec(), [index.len()]);
    let idx = Tensor::<CubeBf16, 1, Int>::from_data(data, (gpu.device(), DType::I32));
    let sync = || CubeBf16::sync(gpu.device()).map_err(|e| CudaError::Burn(format!("{e:?}")));
    let _ = t.clone().select(0, idx.clone());
    sync()?;
    let t0 = Instant::now();
    for _ in 0..iters {
        let _ = t.clone().select(0, idx.clone());
    }
    sync()?;
    Ok(Some(t0.elapsed().as_secs_f64() / iters as f64))
}

/// Runs every micro check.
pub fn run_micro(cfg: &MicroConfig) -> Result<MicroReport> {
    if cfg.gpus == 0 || cfg.iters == 0 {
        return Err(CudaError::Invalid(
            "--gpus and --iters must be at least 1".into(),
        ));
    }
    libs::probe()?;
    let mut ranks = Rank::open_all(cfg.gpus)?;
    let mut report = MicroReport {
        device: ranks[0].gpu.name(),
        ..Default::default()
    };
    {
        let r0 = &mut ranks[0];
        report.gemms = dense_gemms(r0, cfg)?;
        report.gemms.extend(expert_gemms(r0, cfg)?);
        report.copies = copies(r0, cfg, 16384, 4096)?;
    }
    let (rows, version) = run_collectives(&ranks, cfg.iters)?;
    report.collectives = rows;
    report.nccl_version = version;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_are_permutations_and_seeded() {
        let p = permutation(1000, 7);
        let mut s = p.clone();
        s.sort_unstable();
        assert_eq!(s, (0..1000).collect::<Vec<_>>());
        assert_eq!(p, permutation(1000, 7));
        assert_ne!(p, permutation(1000, 8));
    }

    #[test]
    fn bf16_rounding_matches_the_kernel_rule() {
        assert_eq!(bf16_bits(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between two bf16 values: ties go to even (1.0).
        assert_eq!(bf16_bits(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16_bits(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(bf16_bits(f32::NAN), 0x7fc0);
    }

    #[test]
    fn host_combine_reference() {
        // Two rows of 8; out[0] = 0.5 src[1] + 0.25 src[0]; out[1] has no entry: zeros.
        let src: Vec<f32> = (0..16).map(|v| v as f32).collect();
        let out: Vec<f32> = (0..8)
            .map(|c| 0.5 * (8 + c) as f32 + 0.25 * c as f32)
            .chain([0.0; 8])
            .collect();
        let err = combine_error(&src, &out, &[1, 0, -1, -1], &[0.5, 0.25, 0.0, 0.0], 2, 8);
        assert_eq!(err, 0.0);
    }

    #[test]
    fn sampled_rows_are_in_range() {
        let s = sample_rows(1000);
        assert!(s.iter().all(|&r| r < 1000));
        assert!(s.contains(&0) && s.contains(&999));
        assert_eq!(sample_rows(10).len(), 10);
    }
}
