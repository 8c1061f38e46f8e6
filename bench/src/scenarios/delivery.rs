//! Fan-out bookkeeping shared by promptreg and etcd runs: what each watcher
//! received and when, checked against the promotes that were sent (every
//! watcher must see every promote exactly once, in revision order), and
//! turned into latency figures.

use crate::stats::Samples;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::Instant;
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt as _};

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

/// How the revisions each watcher received compare with the revisions it
/// should have received (each exactly once, in revision order).
#[derive(Debug, Default)]
pub struct SequenceCheck {
    pub watchers: usize,
    /// Watchers whose sequence differs from the expected one.
    pub bad_watchers: usize,
    /// Expected revisions a watcher never received (summed over watchers).
    pub missing: usize,
    /// Revisions received that were not expected, plus repeats.
    pub duplicate_or_unknown: usize,
    /// Pairs of consecutive deliveries whose revision did not increase.
    pub out_of_order: usize,
    /// The first bad watcher, expected against received.
    pub example: Option<String>,
}

impl SequenceCheck {
    pub fn correct(&self) -> bool {
        self.bad_watchers == 0
    }
}

/// Hands every message of `stream` to `on_message` until the stream ends
/// or `stop` turns true: the receive loop of every fan-out watcher,
/// promptreg's and etcd's alike.
pub async fn receive_until_stopped<S, T, E>(
    stream: &mut S,
    stop: &mut watch::Receiver<bool>,
    mut on_message: impl FnMut(T) -> anyhow::Result<()>,
) -> anyhow::Result<()>
where
    S: Stream<Item = Result<T, E>> + Unpin,
    E: std::error::Error + Send + Sync + 'static,
{
    // One registration for the whole loop: a fresh `changed()` per message
    // would lock the channel's waiter list once per delivery.
    let stopped = stop.wait_for(|stopping| *stopping);
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            message = stream.next() => match message {
                Some(message) => on_message(message?)?,
                None => return Ok(()),
            },
            _ = &mut stopped => return Ok(()),
        }
    }
}

/// Compares every watcher's received revisions with `expected`: the check
/// behind "every watcher saw every promote exactly once, in order".
pub fn check_sequences<'a>(
    expected: &[u64],
    watchers: impl IntoIterator<Item = &'a [u64]>,
) -> SequenceCheck {
    let wanted: HashSet<u64> = expected.iter().copied().collect();
    let mut check = SequenceCheck::default();
    for (w, revisions) in watchers.into_iter().enumerate() {
        check.watchers += 1;
        if revisions == expected {
            continue;
        }
        check.bad_watchers += 1;
        let unknown = revisions.iter().filter(|r| !wanted.contains(r)).count();
        let mut seen = HashSet::new();
        let dups = revisions.iter().filter(|r| !seen.insert(**r)).count();
        check.duplicate_or_unknown += unknown + dups;
        check.missing += expected.iter().filter(|r| !seen.contains(r)).count();
        check.out_of_order += revisions.windows(2).filter(|p| p[1] <= p[0]).count();
        check.example.get_or_insert_with(|| {
            format!("watcher {w}: expected revisions {expected:?}, got {revisions:?}")
        });
    }
    check
}

/// Checks the deliveries and computes: per-delivery latency (`delivery`),
/// per-promote completion, i.e. the last watcher (`last_watcher`), and the
/// promote's own round trip (`promote_rpc`).
pub fn analyse(promotes: &[Promote], watchers: &[Vec<Delivery>]) -> Value {
    let sent: HashMap<u64, Instant> = promotes.iter().map(|p| (p.revision, p.sent)).collect();
    let expected: Vec<u64> = promotes.iter().map(|p| p.revision).collect();
    let received: Vec<Vec<u64>> = watchers
        .iter()
        .map(|got| got.iter().map(|d| d.revision).collect())
        .collect();
    let check = check_sequences(&expected, received.iter().map(Vec::as_slice));
    let mut per_delivery = Samples::new();
    let mut last: HashMap<u64, Instant> = HashMap::new();
    for got in watchers {
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
        "correct": check.correct(),
        "check": {
            "watchers": check.watchers,
            "promotes": promotes.len(),
            "deliveries": per_delivery.len(),
            "watchers_with_errors": check.bad_watchers,
            "missing": check.missing,
            "duplicate_or_unknown": check.duplicate_or_unknown,
            "out_of_order": check.out_of_order,
            "example": check.example,
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
