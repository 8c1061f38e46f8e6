//! Giving freed heap back to the system after a burst of watches.
//!
//! A fleet connecting, or reconnecting after a restart, opens thousands of
//! watches at once. Each holds state of its own until its snapshot is sent
//! and it merges with the others of its stream; then most of that state is
//! freed. glibc keeps freed memory in its arenas, so without this the
//! process stays at the burst's peak: 3,600 resident bytes per watch (100
//! per stream) settled, against 1,500 once trimmed (`bench/run.sh`, the
//! shared fan-out run). So when watches have stopped opening, ending and
//! finishing snapshots for a moment, the heap is trimmed once
//! (`malloc_trim`, which returns every whole free page in the arenas), on
//! a blocking thread. Elsewhere than glibc the trim does nothing.

use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long watches must be quiet before the heap is trimmed.
pub const QUIET: Duration = Duration::from_millis(200);
/// The least time between two trims, so that steady churn costs at most
/// one trim per this.
pub const MIN_GAP: Duration = Duration::from_secs(2);

/// Counts watch events; the trimmer waits for them to stop.
pub struct HeapTrim(watch::Sender<u64>);

impl HeapTrim {
    /// The counter, and the trimmer that follows it (ends when the counter
    /// is dropped).
    pub fn new() -> (
        HeapTrim,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let (sender, receiver) = watch::channel(0);
        (HeapTrim(sender), run(receiver, QUIET, MIN_GAP, trim))
    }

    /// A watch opened or ended, or its snapshot finished.
    pub fn touch(&self) {
        self.0.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Waits for activity, then for `quiet` without any, then trims (at most
/// once per `min_gap`).
async fn run(
    mut events: watch::Receiver<u64>,
    quiet: Duration,
    min_gap: Duration,
    trim: impl Fn() + Send + Sync + Copy + 'static,
) {
    let mut last_trim: Option<Instant> = None;
    while events.changed().await.is_ok() {
        loop {
            let seen = *events.borrow_and_update();
            let earliest = last_trim.map_or_else(Instant::now, |t| t + min_gap);
            tokio::time::sleep_until(earliest.max(Instant::now() + quiet)).await;
            if *events.borrow() == seen {
                break;
            }
        }
        if tokio::task::spawn_blocking(trim).await.is_err() {
            return;
        }
        last_trim = Some(Instant::now());
    }
}

fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and shrinks glibc's own arenas under
    // their locks; it takes no pointer of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static TRIMS: AtomicUsize = AtomicUsize::new(0);

    fn count() {
        TRIMS.fetch_add(1, Ordering::SeqCst);
    }

    #[tokio::test]
    async fn trims_once_after_a_burst_and_not_while_it_lasts() {
        // Long times, so that a loaded machine cannot make a burst look
        // quiet; no trim can come twice within the hour-long gap.
        let quiet = Duration::from_secs(2);
        let (sender, receiver) = watch::channel(0u64);
        let heap = HeapTrim(sender);
        let task = tokio::spawn(run(receiver, quiet, Duration::from_secs(3600), count));
        for _ in 0..50 {
            heap.touch();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(TRIMS.load(Ordering::SeqCst), 0, "no trim during the burst");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TRIMS.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(TRIMS.load(Ordering::SeqCst), 1, "one trim after it");

        heap.touch();
        tokio::time::sleep(quiet + Duration::from_secs(1)).await;
        assert_eq!(TRIMS.load(Ordering::SeqCst), 1, "not again within the gap");
        task.abort();
    }
}
