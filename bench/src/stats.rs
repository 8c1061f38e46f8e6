//! Latency samples and their percentiles (nearest-rank on sorted samples;
//! the sample counts here are small enough to keep them all).

use serde_json::{json, Value};
use std::time::Duration;

/// A set of latency samples.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    micros: Vec<u64>,
    sorted: bool,
}

impl Samples {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, d: Duration) {
        self.micros.push(d.as_micros() as u64);
        self.sorted = false;
    }

    pub fn extend(&mut self, other: Samples) {
        self.micros.extend(other.micros);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.micros.len()
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.micros.sort_unstable();
            self.sorted = true;
        }
    }

    /// The `p`-th percentile (0 < p <= 100) in milliseconds; 0 when empty.
    pub fn percentile_ms(&mut self, p: f64) -> f64 {
        self.sort();
        if self.micros.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * self.micros.len() as f64).ceil() as usize;
        let idx = rank.clamp(1, self.micros.len()) - 1;
        ms(self.micros[idx])
    }

    pub fn max_ms(&mut self) -> f64 {
        self.sort();
        self.micros.last().copied().map(ms).unwrap_or(0.0)
    }

    pub fn mean_ms(&self) -> f64 {
        if self.micros.is_empty() {
            return 0.0;
        }
        ms(self.micros.iter().sum::<u64>() / self.micros.len() as u64)
    }

    /// `{count, p50_ms, p99_ms, max_ms, mean_ms}`.
    pub fn summary(&mut self) -> Value {
        json!({
            "count": self.len(),
            "p50_ms": self.percentile_ms(50.0),
            "p99_ms": self.percentile_ms(99.0),
            "max_ms": self.max_ms(),
            "mean_ms": self.mean_ms(),
        })
    }
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s = Samples::new();
        for i in 1..=100u64 {
            s.push(Duration::from_millis(i));
        }
        assert_eq!(s.percentile_ms(50.0), 50.0);
        assert_eq!(s.percentile_ms(99.0), 99.0);
        assert_eq!(s.max_ms(), 100.0);
        let mut one = Samples::new();
        one.push(Duration::from_micros(1500));
        assert_eq!(one.percentile_ms(99.0), 1.5);
        assert_eq!(Samples::new().percentile_ms(50.0), 0.0);
    }
}
