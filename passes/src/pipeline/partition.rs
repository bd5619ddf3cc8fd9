//! Cutting a sequence of layers into contiguous pipeline stages.
//!
//! [`balanced`] is the classic linear-partition dynamic programme: `best[k][j]` is the smallest
//! possible slowest-stage cost when the first `j` layers form `k` stages, and
//! `best[k][j] = min over i of max(best[k-1][i], cost(k-1, i..j))`. It is exact (a brute-force
//! property test checks it), `O(parts * n^2)` cost evaluations, and honours a memory predicate: a
//! stage that does not `fit` is never chosen.

/// Cuts `n` layers into `parts` non-empty contiguous runs minimising the largest
/// `cost(part, a, b)` (layers `a..b` as part `part`), using only runs with `fits(part, a, b)`.
/// Returns the run lengths, or `None` when `parts` is 0 or larger than `n`, or no cut fits. Ties go
/// to the cut whose earlier stages are shortest.
pub fn balanced(
    n: usize,
    parts: usize,
    cost: impl Fn(usize, usize, usize) -> f64,
    fits: impl Fn(usize, usize, usize) -> bool,
) -> Option<Vec<u32>> {
    if parts == 0 || parts > n {
        return None;
    }
    const NONE: usize = usize::MAX;
    // best[k][j], with the start of the last run in from[k][j].
    let mut best = vec![vec![f64::INFINITY; n + 1]; parts + 1];
    let mut from = vec![vec![NONE; n + 1]; parts + 1];
    best[0][0] = 0.0;
    for k in 1..=parts {
        // The last part must end at n; earlier parts leave one layer per later part.
        let (lo, hi) = if k == parts {
            (n, n)
        } else {
            (k, n - (parts - k))
        };
        for j in lo..=hi {
            for i in (k - 1)..j {
                let prev = best[k - 1][i];
                if !prev.is_finite() || !fits(k - 1, i, j) {
                    continue;
                }
                let c = prev.max(cost(k - 1, i, j));
                if c < best[k][j] {
                    best[k][j] = c;
                    from[k][j] = i;
                }
            }
        }
    }
    if !best[parts][n].is_finite() {
        return None;
    }
    let mut lens = vec![0u32; parts];
    let mut j = n;
    for k in (1..=parts).rev() {
        let i = from[k][j];
        lens[k - 1] = (j - i) as u32;
        j = i;
    }
    Some(lens)
}

/// The equal-layer split Megatron uses: `n / parts` layers per stage, the first `n % parts`
/// stages one more.
pub fn equal_split(n: usize, parts: usize) -> Vec<u32> {
    let parts = parts.max(1);
    (0..parts)
        .map(|k| (n / parts + usize::from(k < n % parts)) as u32)
        .collect()
}

/// The largest `cost(part, a, b)` over the runs of `lens`.
pub fn slowest(lens: &[u32], cost: impl Fn(usize, usize, usize) -> f64) -> f64 {
    let mut a = 0usize;
    let mut worst = 0f64;
    for (k, &l) in lens.iter().enumerate() {
        let b = a + l as usize;
        worst = worst.max(cost(k, a, b));
        a = b;
    }
    worst
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sum_cost(w: &[f64]) -> impl Fn(usize, usize, usize) -> f64 + '_ {
        move |_, a, b| w[a..b].iter().sum()
    }

    /// Every composition of `n` into `parts` positive runs.
    fn compositions(n: usize, parts: usize) -> Vec<Vec<u32>> {
        if parts == 1 {
            return vec![vec![n as u32]];
        }
        let mut out = Vec::new();
        for first in 1..=n.saturating_sub(parts - 1) {
            for mut rest in compositions(n - first, parts - 1) {
                rest.insert(0, first as u32);
                out.push(rest);
            }
        }
        out
    }

    #[test]
    fn a_heavy_layer_gets_a_stage_of_its_own() {
        let w = [1.0, 1.0, 1.0, 6.0, 1.0, 1.0];
        let lens = balanced(6, 3, sum_cost(&w), |_, _, _| true).unwrap();
        assert_eq!(slowest(&lens, sum_cost(&w)), 6.0);
        assert_eq!(lens.iter().sum::<u32>(), 6);
    }

    #[test]
    fn impossible_requests_are_none() {
        let w = [1.0; 3];
        assert_eq!(balanced(3, 4, sum_cost(&w), |_, _, _| true), None);
        assert_eq!(balanced(3, 0, sum_cost(&w), |_, _, _| true), None);
        // Nothing longer than one layer fits, so 3 layers need 3 stages.
        assert_eq!(balanced(3, 2, sum_cost(&w), |_, a, b| b - a <= 1), None);
        assert_eq!(
            balanced(3, 3, sum_cost(&w), |_, a, b| b - a <= 1),
            Some(vec![1, 1, 1])
        );
    }

    #[test]
    fn equal_split_is_megatrons() {
        assert_eq!(equal_split(56, 4), vec![14, 14, 14, 14]);
        assert_eq!(equal_split(61, 16).iter().sum::<u32>(), 61);
        assert_eq!(equal_split(10, 4), vec![3, 3, 2, 2]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// The DP's slowest stage is the brute-force optimum (well within 1%), and never worse
        /// than equal-layer splitting; with stage-dependent costs (embedding on the first, head on
        /// the last) too.
        #[test]
        fn dp_matches_brute_force(
            w in prop::collection::vec(0.1f64..10.0, 1..10),
            parts in 1usize..5,
            embed in 0.0f64..5.0,
            head in 0.0f64..5.0,
            cap in 5.0f64..60.0,
        ) {
            let n = w.len();
            prop_assume!(parts <= n);
            let cost = |k: usize, a: usize, b: usize| {
                let mut c: f64 = w[a..b].iter().sum();
                if k == 0 { c += embed; }
                if k + 1 == parts { c += head; }
                c
            };
            let fits = |k: usize, a: usize, b: usize| cost(k, a, b) <= cap;
            let brute = compositions(n, parts)
                .into_iter()
                .filter(|l| {
                    let mut a = 0;
                    l.iter().enumerate().all(|(k, &x)| {
                        let b = a + x as usize;
                        let ok = fits(k, a, b);
                        a = b;
                        ok
                    })
                })
                .map(|l| slowest(&l, cost))
                .fold(f64::INFINITY, f64::min);
            match balanced(n, parts, cost, fits) {
                None => prop_assert!(brute.is_infinite()),
                Some(lens) => {
                    prop_assert_eq!(lens.len(), parts);
                    prop_assert_eq!(lens.iter().sum::<u32>() as usize, n);
                    prop_assert!(lens.iter().all(|&l| l > 0));
                    let dp = slowest(&lens, cost);
                    prop_assert!(dp <= brute * 1.01 + 1e-12, "dp {} brute {}", dp, brute);
                    prop_assert!((dp - brute).abs() <= 1e-9 * brute.max(1.0));
                    let eq = equal_split(n, parts);
                    let mut a = 0;
                    let eq_fits = eq.iter().enumerate().all(|(k, &x)| {
                        let b = a + x as usize;
                        let ok = fits(k, a, b);
                        a = b;
                        ok
                    });
                    if eq_fits {
                        prop_assert!(dp <= slowest(&eq, cost) + 1e-12);
                    }
                }
            }
        }
    }
}
