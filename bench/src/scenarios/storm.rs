//! `storm`: a reconnect storm. N watchers (over C connections) follow one
//! prompt's `production` label while a writer keeps promoting it. The server
//! is killed (SIGKILL) and restarted on the same address and data directory,
//! later stopped gracefully (SIGTERM) and restarted again. Each time every
//! stream breaks at once, and every watcher re-issues its Watch on its own
//! channel from the last revision it saw + 1, pausing between attempts as
//! `promptreg watch` does (`promptreg::cli::Backoff`). Measures how long
//! until every watcher is back and has the first promote made after the
//! restart, how many attempts that took, the writes' outage and the CPU on
//! both sides; checks that every watcher saw every committed promote exactly
//! once, in order.
//!
//! What counts as committed: the label's history (LabelHistory), read once
//! the writer has stopped. It holds every acknowledged promote (the check
//! fails if one is missing: acknowledged means durable) and may hold a
//! promote whose answer the crash swallowed; such a promote is durable, so
//! watchers must receive it too. A promote the crash lost before it was
//! durable is in neither the history nor any stream.

use super::delivery::check_sequences;
use super::{publish, set_label, wait_until, Options};
use crate::procfs::{round3, CpuMeter};
use crate::server::Conn;
use crate::server::{Restarted, ServerProcess, Stop};
use crate::stats::Samples;
use pb::registry_client::RegistryClient;
use pb::watch_response::Event;
use promptreg::cli::Backoff;
use promptreg::grpc::pb;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::{Code, Status};

const NAME: &str = "bench/storm";
const LABEL: &str = "production";
/// The CLI's default `--max-backoff`: the watchers and the writer reconnect
/// exactly as `promptreg watch` does out of the box.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long any one wait may take before the run fails. Generous on
/// purpose: a loaded two-core CI machine must not make the scenario flaky,
/// and it asserts no speed.
const PATIENCE: Duration = Duration::from_secs(120);
/// A SetLabel without an answer after this long counts as failed and is
/// retried (the server may have died with the request in flight).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The restarts, in order.
const RESTARTS: [Stop; 2] = [Stop::Kill, Stop::Graceful];

/// An acknowledged promote: (revision, sent, answered).
type Ack = (u64, Instant, Instant);

/// What one watcher did and received.
#[derive(Debug, Default)]
struct WatcherLog {
    /// The revision of its snapshot; changes follow from the next one.
    snapshot: u64,
    /// Every label move received after the snapshot: (revision, when).
    moves: Vec<(u64, Instant)>,
    /// When each `created` arrived; the first is the initial open.
    created: Vec<Instant>,
    /// Every Watch call: when it was made, and whether it got as far as
    /// `created` (the first is the initial open).
    calls: Vec<(Instant, bool)>,
}

/// What the writer did.
#[derive(Debug, Default)]
struct WriterLog {
    /// Acknowledged promotes, in order.
    acked: Vec<Ack>,
    /// Revisions of promotes whose answer was lost, found committed by the
    /// retry (SetLabel answers `changed: false` with the label's last move).
    confirmed_on_retry: Vec<u64>,
    /// SetLabel calls that failed or timed out.
    failed: u64,
    first_error: Option<String>,
}

/// One restart as the driver saw it.
struct RestartRecord {
    how: Stop,
    times: Restarted,
    /// The first promote sent after the old process had exited, so made
    /// by the new one: (revision, sent, answered).
    first_write: Ack,
    /// When the driver saw every watcher holding `first_write`.
    all_caught_up: Instant,
    cpu: Value,
}

pub async fn run(opts: &Options) -> anyhow::Result<Value> {
    let mut server = ServerProcess::start(&opts.server_bin)?;
    let channels = server.channels(opts.connections).await?;
    // The writer has a connection of its own, as a separate client would.
    let writer_channel = server.channels(1).await?.remove(0);
    let mut admin = RegistryClient::new(writer_channel.clone());
    let (v1, _) = publish(&mut admin, NAME, 1).await?;
    let (v2, _) = publish(&mut admin, NAME, 2).await?;
    let start = set_label(&mut admin, NAME, LABEL, v1).await?.revision;

    // Open the watchers; `through[i]` is the last revision watcher i has
    // (its snapshot's, then each move's), 0 before its snapshot.
    let n = opts.watchers;
    let through: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let (stop_watchers, stop_rx) = watch::channel(false);
    let opened = Instant::now();
    let mut watchers = Vec::with_capacity(n);
    for i in 0..n {
        let client = RegistryClient::new(channels[i % channels.len()].clone());
        watchers.push(tokio::spawn(watcher(
            i,
            client,
            through.clone(),
            stop_rx.clone(),
        )));
    }
    all_through(&through, &mut watchers, start, "every watcher's snapshot").await?;
    let open_s = opened.elapsed().as_secs_f64();

    // The writer, then the restarts while it writes.
    let meter = CpuMeter::start_at(server.cpu_seconds());
    let (last_ack_tx, mut last_ack) = watch::channel(None::<Ack>);
    let (stop_writer, stop_writer_rx) = watch::channel(false);
    let writer = tokio::spawn(writer(
        RegistryClient::new(writer_channel),
        [v2, v1],
        opts.storm_write_interval,
        last_ack_tx,
        stop_writer_rx,
    ));
    tokio::time::sleep(opts.warmup).await;
    let mut restarts = Vec::new();
    for how in RESTARTS {
        let restart_meter = CpuMeter::start_at(server.cpu_seconds());
        eprintln!("promptreg-bench: storm: {} restart", how.name());
        let times = tokio::task::block_in_place(|| server.restart(how))?;
        // Every watcher must come back and receive the first promote the
        // new process made. A promote sent before the old one had exited
        // may have been answered by it (SIGTERM drains requests in flight).
        let first_write = tokio::time::timeout(
            PATIENCE,
            last_ack.wait_for(|ack| ack.is_some_and(|(_, sent, _)| sent >= times.exited)),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no write succeeded within {PATIENCE:?} of the restart"))??
        .ok_or_else(|| anyhow::anyhow!("the writer published no promote"))?;
        all_through(
            &through,
            &mut watchers,
            first_write.0,
            "every watcher to resume and catch up",
        )
        .await?;
        restarts.push(RestartRecord {
            how,
            times,
            first_write,
            all_caught_up: Instant::now(),
            cpu: restart_meter.stop_at(server.cpu_seconds()),
        });
        // Writes go on with every watcher live again.
        tokio::time::sleep(opts.duration).await;
    }
    stop_writer.send(true)?;
    let writes = writer.await?;

    // The ground truth, then every watcher must hold its last revision.
    let history = committed_moves(&mut admin, start).await?;
    let head = history.last().copied().unwrap_or(start);
    all_through(
        &through,
        &mut watchers,
        head,
        "every watcher to reach the head",
    )
    .await?;
    let cpu = meter.stop_at(server.cpu_seconds());
    stop_watchers.send(true)?;
    let mut logs = Vec::with_capacity(n);
    for w in watchers {
        logs.push(w.await??);
    }

    let mut result = analyse(start, &history, &logs, &writes, &restarts);
    result["watchers"] = json!(n);
    result["connections"] = json!(channels.len());
    result["open_s"] = json!(round3(open_s));
    result["write_interval_ms"] = json!(opts.storm_write_interval.as_millis() as u64);
    result["cpu"] = cpu;
    Ok(result)
}

/// Waits until every watcher holds `revision`; fails when one ends (with
/// its error) or after `PATIENCE`.
async fn all_through(
    through: &[AtomicU64],
    watchers: &mut [JoinHandle<anyhow::Result<WatcherLog>>],
    revision: u64,
    what: &str,
) -> anyhow::Result<()> {
    let behind = || {
        through
            .iter()
            .filter(|t| t.load(Ordering::Relaxed) < revision)
            .count()
    };
    wait_until(what, PATIENCE, Duration::from_millis(5), || {
        behind() == 0 || watchers.iter().any(|w| w.is_finished())
    })
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}: {} watchers still behind revision {revision}",
            behind()
        )
    })?;
    if let Some(ended) = watchers.iter_mut().find(|w| w.is_finished()) {
        match ended.await {
            Ok(Err(e)) => anyhow::bail!("{e:#}"),
            Ok(Ok(_)) => anyhow::bail!("a watcher stopped before it was told to"),
            Err(e) => anyhow::bail!("a watcher panicked: {e}"),
        }
    }
    Ok(())
}

/// One watcher: follows the label, and after any break re-issues its Watch
/// on the same channel (which reconnects by itself) from the last revision
/// it has + 1, pausing `Backoff::next_pause` before each new attempt, until
/// told to stop. Ends with an error only on a status that retrying cannot
/// fix.
async fn watcher(
    i: usize,
    mut client: RegistryClient<Conn>,
    through: Arc<Vec<AtomicU64>>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<WatcherLog> {
    let mut log = WatcherLog::default();
    let mut backoff = Backoff::new(MAX_BACKOFF);
    // 0 until the snapshot is complete: take a snapshot first.
    let mut next = 0u64;
    let stopped = stop.wait_for(|stopping| *stopping);
    tokio::pin!(stopped);
    loop {
        let created_before = log.created.len();
        let call = log.calls.len();
        log.calls.push((Instant::now(), false));
        let ended = tokio::select! {
            ended = follow(&mut client, &mut next, &mut log, &mut backoff, &through[i]) => Some(ended),
            _ = &mut stopped => None,
        };
        if log.created.len() > created_before {
            log.calls[call].1 = true;
        }
        match ended {
            None => return Ok(log),
            // The server closed the stream cleanly: reconnect all the same.
            Some(Ok(())) => {}
            Some(Err(status)) if retryable(status.code()) => {}
            Some(Err(status)) => anyhow::bail!("watcher {i}: {status}"),
        }
        let pause = backoff.next_pause();
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = &mut stopped => return Ok(log),
        }
    }
}

/// One Watch call, read until the stream ends.
async fn follow(
    client: &mut RegistryClient<Conn>,
    next: &mut u64,
    log: &mut WatcherLog,
    backoff: &mut Backoff,
    through: &AtomicU64,
) -> Result<(), Status> {
    let request = pb::WatchRequest {
        names: vec![NAME.into()],
        labels: vec![LABEL.into()],
        start_revision: *next,
        ..Default::default()
    };
    let mut stream = client.watch(request).await?.into_inner();
    while let Some(message) = stream.message().await? {
        match message.event {
            Some(Event::Created(_)) => {
                log.created.push(Instant::now());
                // As the CLI does: a stream that opens ends the backoff.
                backoff.reset();
            }
            Some(Event::Snapshot(s)) if s.complete => {
                log.snapshot = s.revision;
                *next = s.revision + 1;
                through.store(s.revision, Ordering::Relaxed);
            }
            Some(Event::Changes(batch)) => {
                let at = Instant::now();
                for change in &batch.changes {
                    if let Some(pb::change::Kind::LabelMoved(_)) = change.kind {
                        log.moves.push((batch.revision, at));
                    }
                }
                *next = batch.revision + 1;
                through.store(batch.revision, Ordering::Relaxed);
            }
            Some(Event::Progress(p)) => *next = (*next).max(p.revision + 1),
            Some(Event::Snapshot(_)) | None => {}
        }
    }
    Ok(())
}

/// The codes `promptreg watch` retries (see `src/cli/watch.rs`), plus
/// RESOURCE_EXHAUSTED: the initial opens may find every snapshot slot taken.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::ResourceExhausted
    )
}

/// Promotes the label back and forth between `versions` every `interval`
/// until told to stop, retrying a failed promote (the same target) with
/// backoff. Publishes each acknowledged revision on `last_ack`.
async fn writer(
    mut client: RegistryClient<Conn>,
    versions: [u64; 2],
    interval: Duration,
    last_ack: watch::Sender<Option<Ack>>,
    mut stop: watch::Receiver<bool>,
) -> WriterLog {
    let mut log = WriterLog::default();
    let mut backoff = Backoff::new(MAX_BACKOFF);
    let mut target = 0;
    while !*stop.borrow_and_update() {
        let sent = Instant::now();
        let outcome = tokio::time::timeout(
            CALL_TIMEOUT,
            set_label(&mut client, NAME, LABEL, versions[target]),
        )
        .await;
        let pause = match outcome {
            Ok(Ok(moved)) => {
                let answered = Instant::now();
                if moved.changed {
                    log.acked.push((moved.revision, sent, answered));
                    last_ack.send_replace(Some((moved.revision, sent, answered)));
                } else {
                    // The previous attempt was committed but its answer was
                    // lost with the connection.
                    log.confirmed_on_retry.push(moved.revision);
                }
                target = 1 - target;
                backoff.reset();
                interval
            }
            Ok(Err(e)) => {
                log.failed += 1;
                log.first_error.get_or_insert_with(|| format!("{e:#}"));
                backoff.next_pause()
            }
            Err(_) => {
                log.failed += 1;
                log.first_error
                    .get_or_insert_with(|| format!("no answer within {CALL_TIMEOUT:?}"));
                backoff.next_pause()
            }
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stop.changed() => {}
        }
    }
    log
}

/// The revisions of every move of the label after `after`, oldest first,
/// from LabelHistory (retried: the writer's channel may still be
/// reconnecting).
async fn committed_moves(
    client: &mut RegistryClient<Conn>,
    after: u64,
) -> anyhow::Result<Vec<u64>> {
    let deadline = Instant::now() + PATIENCE;
    let mut backoff = Backoff::new(MAX_BACKOFF);
    loop {
        match label_history(client).await {
            Ok(mut revisions) => {
                revisions.retain(|r| *r > after);
                revisions.sort_unstable();
                return Ok(revisions);
            }
            Err(status) if retryable(status.code()) && Instant::now() < deadline => {
                tokio::time::sleep(backoff.next_pause()).await;
            }
            Err(status) => anyhow::bail!("LabelHistory: {status}"),
        }
    }
}

async fn label_history(client: &mut RegistryClient<Conn>) -> Result<Vec<u64>, Status> {
    let mut revisions = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .label_history(pb::LabelHistoryRequest {
                name: NAME.into(),
                label: LABEL.into(),
                page_size: 1000,
                page_token,
            })
            .await?
            .into_inner();
        revisions.extend(page.moves.iter().map(|m| m.revision));
        if page.next_page_token.is_empty() {
            return Ok(revisions);
        }
        page_token = page.next_page_token;
    }
}

/// Checks the deliveries against the history and computes the figures.
fn analyse(
    start: u64,
    history: &[u64],
    logs: &[WatcherLog],
    writes: &WriterLog,
    restarts: &[RestartRecord],
) -> Value {
    // Every watcher's snapshot was taken before the first promote, at
    // `start`; a different one would make its expected sequence differ.
    let other_snapshots = logs.iter().filter(|l| l.snapshot != start).count();
    let received: Vec<Vec<u64>> = logs
        .iter()
        .map(|l| l.moves.iter().map(|(r, _)| *r).collect())
        .collect();
    let check = check_sequences(history, received.iter().map(Vec::as_slice));
    let committed: std::collections::HashSet<u64> = history.iter().copied().collect();
    let acked_missing = writes
        .acked
        .iter()
        .filter(|(r, _, _)| !committed.contains(r))
        .count();
    let known: std::collections::HashSet<u64> = writes
        .acked
        .iter()
        .map(|(r, _, _)| *r)
        .chain(writes.confirmed_on_retry.iter().copied())
        .collect();
    let never_answered = history.iter().filter(|r| !known.contains(r)).count();

    let mut restart_results = Vec::new();
    for (k, r) in restarts.iter().enumerate() {
        let from = r.times.signalled;
        // The next restart's signal, or the end: this restart's window.
        let until = restarts.get(k + 1).map(|n| n.times.signalled);
        let in_window = |t: &Instant| *t >= from && until.is_none_or(|u| *t < u);
        let mut reconnected = Samples::new();
        let mut caught_up = Samples::new();
        let (mut not_reconnected, mut calls, mut max_calls) = (0usize, 0usize, 0usize);
        for l in logs {
            match l.created.iter().find(|t| **t >= from) {
                Some(t) => reconnected.push(*t - from),
                None => not_reconnected += 1,
            }
            if let Some((_, t)) = l.moves.iter().find(|(rev, _)| *rev >= r.first_write.0) {
                caught_up.push(t.saturating_duration_since(from));
            }
            let mine = l.calls.iter().filter(|(t, _)| in_window(t)).count();
            calls += mine;
            max_calls = max_calls.max(mine);
        }
        let writes_while_reconnecting = writes
            .acked
            .iter()
            .filter(|(_, _, at)| *at >= from && *at <= r.all_caught_up)
            .count();
        let ms = |d: Duration| round3(d.as_secs_f64() * 1000.0);
        restart_results.push(json!({
            "stop": r.how.name(),
            "stop_ms": ms(r.times.exited - from),
            "down_ms": ms(r.times.serving - from),
            "first_write_ms": ms(r.first_write.2.saturating_duration_since(from)),
            "first_write_revision": r.first_write.0,
            "reconnected_ms": reconnected.max_ms(),
            "reconnected": reconnected.summary(),
            "not_reconnected": not_reconnected,
            "caught_up_ms": caught_up.max_ms(),
            "caught_up": caught_up.summary(),
            "watch_calls": calls,
            "max_watch_calls_per_watcher": max_calls,
            "writes_acked_until_caught_up": writes_while_reconnecting,
            "cpu": r.cpu,
        }));
    }

    // Writes: how many were answered during the storm (from the first
    // restart's signal on), and the longest wait between two answers.
    let storm_from = restarts.first().map(|r| r.times.signalled);
    let acked_during_storm = writes
        .acked
        .iter()
        .filter(|(_, _, at)| storm_from.is_some_and(|f| *at >= f))
        .count();
    let longest_gap = writes
        .acked
        .windows(2)
        .map(|p| p[1].2.saturating_duration_since(p[0].2))
        .max()
        .unwrap_or_default();
    let mut write_rpc = Samples::new();
    for (_, sent, answered) in &writes.acked {
        write_rpc.push(answered.saturating_duration_since(*sent));
    }

    let initial = logs.len();
    let calls: usize = logs.iter().map(|l| l.calls.len()).sum();
    let failed_calls: usize = logs
        .iter()
        .map(|l| l.calls.iter().filter(|(_, opened)| !opened).count())
        .sum();
    let max_reconnects = logs
        .iter()
        .map(|l| l.calls.len().saturating_sub(1))
        .max()
        .unwrap_or(0);
    let all_reconnected = restart_results
        .iter()
        .all(|r| r["not_reconnected"] == json!(0));
    let correct = check.correct() && acked_missing == 0 && other_snapshots == 0 && all_reconnected;
    json!({
        "correct": correct,
        "check": {
            "watchers": check.watchers,
            "committed_promotes": history.len(),
            "watchers_with_errors": check.bad_watchers,
            "missing": check.missing,
            "duplicate_or_unknown": check.duplicate_or_unknown,
            "out_of_order": check.out_of_order,
            "example": check.example,
            "snapshots_not_at_start": other_snapshots,
            "acked_missing_from_history": acked_missing,
        },
        "restarts": restart_results,
        "reconnect_attempts": calls.saturating_sub(initial),
        "failed_attempts": failed_calls,
        "max_reconnects_per_watcher": max_reconnects,
        "writes": {
            "acked": writes.acked.len(),
            "acked_during_storm": acked_during_storm,
            "confirmed_on_retry": writes.confirmed_on_retry.len(),
            "committed_never_answered": never_answered,
            "failed_attempts": writes.failed,
            "first_error": writes.first_error,
            "longest_gap_ms": round3(longest_gap.as_secs_f64() * 1000.0),
            "rpc": write_rpc.summary(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn committed_promotes_are_expected_even_unanswered_and_acked_ones_must_be_committed() {
        let t0 = Instant::now();
        // Revision 5 was committed but its answer was lost in the crash.
        let history = [4, 5, 6];
        let mut writes = WriterLog {
            acked: vec![(4, ms(t0, 0), ms(t0, 1)), (6, ms(t0, 50), ms(t0, 60))],
            ..Default::default()
        };
        let watcher = |moves: &[(u64, u64)]| WatcherLog {
            snapshot: 3,
            moves: moves.iter().map(|(r, at)| (*r, ms(t0, *at))).collect(),
            created: vec![t0, ms(t0, 30)],
            calls: vec![(t0, true), (ms(t0, 25), false), (ms(t0, 28), true)],
        };
        let restarts = [RestartRecord {
            how: Stop::Kill,
            times: Restarted {
                signalled: ms(t0, 10),
                exited: ms(t0, 11),
                serving: ms(t0, 20),
            },
            first_write: writes.acked[1],
            all_caught_up: ms(t0, 70),
            cpu: Value::Null,
        }];
        let all = [watcher(&[(4, 2), (5, 31), (6, 62)])];
        let v = analyse(3, &history, &all, &writes, &restarts);
        assert_eq!(v["correct"], true, "{v}");
        assert_eq!(v["writes"]["committed_never_answered"], 1);
        assert_eq!(v["restarts"][0]["reconnected_ms"], 20.0);
        assert_eq!(v["restarts"][0]["caught_up_ms"], 52.0);
        assert_eq!(v["restarts"][0]["watch_calls"], 2);
        assert_eq!(v["reconnect_attempts"], 2);
        assert_eq!(v["failed_attempts"], 1);

        // A watcher that skipped the unanswered revision has a gap.
        let gap = [watcher(&[(4, 2), (6, 62)])];
        let v = analyse(3, &history, &gap, &writes, &restarts);
        assert_eq!(v["correct"], false);
        assert_eq!(v["check"]["missing"], 1);

        // An acknowledged promote must be in the history.
        writes.acked.push((7, ms(t0, 80), ms(t0, 81)));
        let v = analyse(3, &history, &all, &writes, &restarts);
        assert_eq!(v["correct"], false);
        assert_eq!(v["check"]["acked_missing_from_history"], 1);
    }
}
