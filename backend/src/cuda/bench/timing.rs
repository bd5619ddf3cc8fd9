//! Step timing with CUDA events: per step, an event before and after on every GPU's stream; the
//! step's time is the slowest GPU's. Events measure the GPU's timeline, host stalls inside a step
//! (the PPMoE routing read-back) included.

use super::super::device::Gpu;
use super::super::error::{driver, Result};

/// Times of the timed steps, in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Median step time.
    pub median_ms: f64,
    /// Fastest step.
    pub min_ms: f64,
    /// Slowest step.
    pub max_ms: f64,
    /// Steps timed.
    pub samples: usize,
}

impl Stats {
    /// Summarises `ms` (at least one sample).
    pub fn of(mut ms: Vec<f64>) -> Self {
        ms.sort_by(f64::total_cmp);
        let n = ms.len();
        let median = if n == 0 {
            f64::NAN
        } else if n % 2 == 1 {
            ms[n / 2]
        } else {
            (ms[n / 2 - 1] + ms[n / 2]) / 2.0
        };
        Self {
            median_ms: median,
            min_ms: ms.first().copied().unwrap_or(f64::NAN),
            max_ms: ms.last().copied().unwrap_or(f64::NAN),
            samples: n,
        }
    }
}

/// Runs `step(ctx)` `warmup` times untimed, then `iters` times timed on the GPUs `gpus(ctx)`.
pub fn time_steps<T>(
    ctx: &mut T,
    gpus: fn(&T) -> Vec<&Gpu>,
    warmup: usize,
    iters: usize,
    step: fn(&mut T) -> Result<()>,
) -> Result<Stats> {
    for _ in 0..warmup {
        step(ctx)?;
    }
    for g in gpus(ctx) {
        g.sync()?;
    }
    let starts = gpus(ctx)
        .into_iter()
        .map(Gpu::event)
        .collect::<Result<Vec<_>>>()?;
    let ends = gpus(ctx)
        .into_iter()
        .map(Gpu::event)
        .collect::<Result<Vec<_>>>()?;
    let mut ms = Vec::with_capacity(iters);
    for _ in 0..iters {
        for (g, e) in gpus(ctx).into_iter().zip(&starts) {
            g.record(e)?;
        }
        step(ctx)?;
        for (g, e) in gpus(ctx).into_iter().zip(&ends) {
            g.record(e)?;
        }
        let mut slowest = 0.0f64;
        for (s, e) in starts.iter().zip(&ends) {
            e.synchronize().map_err(driver("cuEventSynchronize"))?;
            let t = s.elapsed_ms(e).map_err(driver("cuEventElapsedTime"))?;
            slowest = slowest.max(f64::from(t));
        }
        ms.push(slowest);
    }
    Ok(Stats::of(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Stats::of(vec![3.0, 1.0, 2.0]);
        assert_eq!(
            (s.median_ms, s.min_ms, s.max_ms, s.samples),
            (2.0, 1.0, 3.0, 3)
        );
        assert_eq!(Stats::of(vec![4.0, 1.0, 2.0, 3.0]).median_ms, 2.5);
        assert!(Stats::of(vec![]).median_ms.is_nan());
    }
}
