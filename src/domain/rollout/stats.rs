//! The numbers a rollout is judged on: outcome counts, Wilson score
//! intervals for a rate, Newcombe's hybrid score interval for the
//! difference of two rates, and the latency quantile of a histogram.

/// Latency bucket upper bounds in ms (the last bucket is +Inf), as the
/// proto documents for `ReportOutcomeRequest.latency_buckets`.
pub const LATENCY_BOUNDS_MS: [f64; 11] = [
    5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];
/// Buckets of a histogram: the bounds and +Inf.
pub const BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// Outcome counts summed over reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
    pub safety_violations: u64,
    pub policy_violations: u64,
    pub latency_ms_sum: f64,
    /// Requests per latency bucket (all zero when no report had one).
    pub latency_buckets: [u64; BUCKETS],
}

impl Counts {
    /// Adds one report's counts.
    pub fn add(&mut self, other: &Counts) {
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        self.safety_violations = self
            .safety_violations
            .saturating_add(other.safety_violations);
        self.policy_violations = self
            .policy_violations
            .saturating_add(other.policy_violations);
        self.latency_ms_sum += other.latency_ms_sum;
        for (mine, theirs) in self.latency_buckets.iter_mut().zip(other.latency_buckets) {
            *mine = mine.saturating_add(theirs);
        }
    }

    /// `count / requests` (NaN without requests).
    pub fn rate(&self, count: u64) -> f64 {
        if self.requests == 0 {
            return f64::NAN;
        }
        count as f64 / self.requests as f64
    }

    /// The upper bound of the bucket holding quantile `q` (NaN without a
    /// histogram; +Inf when it falls in the last bucket).
    pub fn latency_quantile_ms(&self, q: f64) -> f64 {
        let total: u64 = self.latency_buckets.iter().sum();
        if total == 0 {
            return f64::NAN;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, count) in self.latency_buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return LATENCY_BOUNDS_MS.get(i).copied().unwrap_or(f64::INFINITY);
            }
        }
        f64::INFINITY
    }

    /// The bucket a latency falls in.
    pub fn bucket_of(latency_ms: f64) -> usize {
        LATENCY_BOUNDS_MS
            .iter()
            .position(|bound| latency_ms <= *bound)
            .unwrap_or(BUCKETS - 1)
    }
}

/// An estimate with its interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
}

/// The Wilson score interval of `k` successes in `n` at two-sided
/// confidence `level` (NaN without trials).
pub fn wilson(k: u64, n: u64, level: f64) -> Interval {
    if n == 0 {
        return Interval {
            estimate: f64::NAN,
            low: f64::NAN,
            high: f64::NAN,
        };
    }
    let z = normal_quantile(1.0 - (1.0 - level) / 2.0);
    let (n, p) = (n as f64, k as f64 / n as f64);
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Interval {
        estimate: p,
        low: (centre - half).max(0.0),
        high: (centre + half).min(1.0),
    }
}

/// Newcombe's hybrid score interval (his method 10) for p1 - p2, from the
/// Wilson intervals of each rate at `level`.
pub fn rate_difference(k1: u64, n1: u64, k2: u64, n2: u64, level: f64) -> Interval {
    let (a, b) = (wilson(k1, n1, level), wilson(k2, n2, level));
    let d = a.estimate - b.estimate;
    Interval {
        estimate: d,
        low: d - ((a.estimate - a.low).powi(2) + (b.high - b.estimate).powi(2)).sqrt(),
        high: d + ((a.high - a.estimate).powi(2) + (b.estimate - b.low).powi(2)).sqrt(),
    }
}

/// The standard normal quantile, by bisection on the CDF (erfc from
/// Numerical Recipes' Chebyshev fit, |error| < 1.2e-7).
pub fn normal_quantile(p: f64) -> f64 {
    let (mut lo, mut hi) = (-10.0_f64, 10.0_f64);
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if normal_cdf(mid) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    (lo + hi) / 2.0
}

fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_normal_quantile_matches_tables() {
        assert!((normal_quantile(0.975) - 1.959_964).abs() < 1e-4);
        assert!((normal_quantile(0.995) - 2.575_829).abs() < 1e-4);
        assert!((normal_quantile(0.5)).abs() < 1e-6);
    }

    #[test]
    fn wilson_matches_a_worked_example() {
        // 81 of 263 at 95%: 0.2553..0.3662 (Newcombe 1998, table I).
        let i = wilson(81, 263, 0.95);
        assert!((i.low - 0.2553).abs() < 5e-4, "{i:?}");
        assert!((i.high - 0.3662).abs() < 5e-4, "{i:?}");
        // No successes still has an upper end above zero.
        let zero = wilson(0, 200, 0.95);
        assert_eq!(zero.low, 0.0);
        assert!(zero.high > 0.01 && zero.high < 0.03, "{zero:?}");
        assert!(wilson(0, 0, 0.95).low.is_nan());
    }

    #[test]
    fn newcombe_matches_a_worked_example() {
        // 56/70 - 48/80 at 95%: 0.0524..0.3339 (Newcombe 1998, method 10).
        let d = rate_difference(56, 70, 48, 80, 0.95);
        assert!((d.low - 0.0524).abs() < 5e-4, "{d:?}");
        assert!((d.high - 0.3339).abs() < 5e-4, "{d:?}");
    }

    #[test]
    fn latency_quantiles_read_the_bucket_bounds() {
        let mut counts = Counts::default();
        assert!(counts.latency_quantile_ms(0.95).is_nan());
        counts.latency_buckets[Counts::bucket_of(40.0)] = 95;
        counts.latency_buckets[Counts::bucket_of(900.0)] = 5;
        assert_eq!(counts.latency_quantile_ms(0.95), 50.0);
        counts.latency_buckets[Counts::bucket_of(900.0)] = 6;
        assert_eq!(counts.latency_quantile_ms(0.95), 1000.0);
        assert_eq!(Counts::bucket_of(1e9), BUCKETS - 1);
    }
}
