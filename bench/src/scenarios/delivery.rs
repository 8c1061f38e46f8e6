//! Fan-out bookkeeping shared by promptreg and etcd runs: what each watcher
//! received and when, checked against the promotes that were sent (every
//! watcher must see every promote exactly once, in revision order), and
//! turned into latency figures.

use crate::stats::Samples;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Instant;

/// One promote (label move or etcd Put) as the driver sent it.
#[derive(Debug, Clone, Copy)]
pub struct Promote {
    /// The revision the server gave it.
    pub revision: u64,
    /// When the request was sent.
    pub sent: Instant,
    /// When the server acknowledged it (durable).
    pub acked: Instant,
}

/// One event as a watcher received it.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub revision: u64,
    pub at: Instant,
}

/// Checks the deliveries and computes: per-delivery latency (`delivery`),
/// per-promote completion, i.e. the last watcher (`last_watcher`), and the
/// promote's own round trip (`promote_rpc`).
pub fn analyse(promotes: &[Promote], watchers: &[Vec<Delivery>]) -> Value {
    let sent: HashMap<u64, Instant> = promotes.iter().map(|p| (p.revision, p.sent)).collect();
    let expected: Vec<u64> = promotes.iter().map(|p| p.revision).collect();
    let mut per_delivery = Samples::new();
    let mut last: HashMap<u64, Instant> = HashMap::new();
    let (mut bad_watchers, mut missing, mut extra, mut out_of_order) =
        (0usize, 0usize, 0usize, 0usize);
    let mut example = None;
    for (w, got) in watchers.iter().enumerate() {
        let revisions: Vec<u64> = got.iter().map(|d| d.revision).collect();
        if revisions != expected {
            bad_watchers += 1;
            let unknown = revisions.iter().filter(|r| !sent.contains_key(r)).count();
            let mut seen = std::collections::HashSet::new();
            let dups = revisions.iter().filter(|r| !seen.insert(**r)).count();
            extra += unknown + dups;
            missing += expected.iter().filter(|r| !revisions.contains(r)).count();
            out_of_order += revisions.windows(2).filter(|p| p[1] <= p[0]).count();
            example.get_or_insert_with(|| {
                format!("watcher {w}: expected revisions {expected:?}, got {revisions:?}")
            });
        }
        for d in got {
            if let Some(s) = sent.get(&d.revision) {
                per_delivery.push(d.at.saturating_duration_since(*s));
                let entry = last.entry(d.revision).or_insert(d.at);
                if d.at > *entry {
                    *entry = d.at;
                }
            }
        }
    }
    let mut completion = Samples::new();
    let mut promote_rpc = Samples::new();
    for p in promotes {
        if let Some(l) = last.get(&p.revision) {
            completion.push(l.saturating_duration_since(p.sent));
        }
        promote_rpc.push(p.acked.saturating_duration_since(p.sent));
    }
    json!({
        "correct": bad_watchers == 0,
        "check": {
            "watchers": watchers.len(),
            "promotes": promotes.len(),
            "deliveries": per_delivery.len(),
            "watchers_with_errors": bad_watchers,
            "missing": missing,
            "duplicate_or_unknown": extra,
            "out_of_order": out_of_order,
            "example": example,
        },
        "delivery": per_delivery.summary(),
        "last_watcher": completion.summary(),
        "promote_rpc": promote_rpc.summary(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn flags_missing_duplicate_and_reordered_events() {
        let t0 = Instant::now();
        let p = |r, ms| Promote {
            revision: r,
            sent: t0 + Duration::from_millis(ms),
            acked: t0 + Duration::from_millis(ms + 1),
        };
        let d = |r, ms| Delivery {
            revision: r,
            at: t0 + Duration::from_millis(ms),
        };
        let promotes = [p(5, 0), p(6, 100)];
        let good = vec![vec![d(5, 3), d(6, 104)], vec![d(5, 9), d(6, 102)]];
        let v = analyse(&promotes, &good);
        assert_eq!(v["correct"], true);
        assert_eq!(v["last_watcher"]["max_ms"], 9.0);
        assert_eq!(v["delivery"]["count"], 4);

        let bad = vec![
            vec![d(6, 104), d(5, 3)],
            vec![d(5, 9), d(5, 10)],
            vec![d(5, 1)],
        ];
        let v = analyse(&promotes, &bad);
        assert_eq!(v["correct"], false);
        assert_eq!(v["check"]["watchers_with_errors"], 3);
        assert_eq!(v["check"]["missing"], 2);
        assert_eq!(v["check"]["duplicate_or_unknown"], 1);
    }
}
