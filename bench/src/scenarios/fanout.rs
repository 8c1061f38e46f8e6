//! `fanout`: N Watch streams over C connections, all on one prompt's
//! `production` label; M promotes one after another (alternating between two
//! versions so each one moves the label). For each promote, the time from
//! sending SetLabel to each watcher receiving the event. Also the server's
//! resident memory before and after opening the watchers.
//!
//! It runs twice, each time on a fresh server: once with one Watch stream
//! per watcher, and (unless `shared_stream` is 0 or 1) once with
//! `shared_stream` watchers on each WatchMany stream, the shape of etcd's
//! shared-stream run.

use super::delivery::{analyse, receive_until_stopped, Delivery, Promote};
use super::{publish, set_label, wait_until, Options};
use crate::procfs::{rss_bytes, CpuMeter};
use crate::server::ServerProcess;
use pb::registry_client::RegistryClient;
use promptreg::grpc::pb;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_stream::StreamExt as _;

const NAME: &str = "bench/fanout";
const LABEL: &str = "production";

pub async fn run(opts: &Options) -> anyhow::Result<Value> {
    let mut result = measure(opts, 1).await?;
    if opts.shared_stream > 1 {
        result["shared_stream"] = measure(opts, opts.shared_stream).await?;
    }
    Ok(result)
}

/// N watchers, `per_stream` of them on each stream (Watch for 1, WatchMany
/// otherwise), streams spread over the connections.
async fn measure(opts: &Options, per_stream: usize) -> anyhow::Result<Value> {
    let server = ServerProcess::start(&opts.server_bin)?;
    let channels = server.channels(opts.connections).await?;
    let mut admin = RegistryClient::new(channels[0].clone());
    let (v1, _) = publish(&mut admin, NAME, 1).await?;
    let (v2, _) = publish(&mut admin, NAME, 2).await?;
    set_label(&mut admin, NAME, LABEL, v1).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_bytes(server.pid())?;

    // Open the watchers; each reports when its snapshot is complete.
    let open_meter = CpuMeter::start(Some(server.pid()));
    let opened = Instant::now();
    let ready = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let n = opts.watchers;
    let streams = n.div_ceil(per_stream);
    let mut tasks = Vec::with_capacity(streams);
    for s in 0..streams {
        let client = RegistryClient::new(channels[s % channels.len()].clone());
        let (ready, received, stop) = (ready.clone(), received.clone(), stop_rx.clone());
        tasks.push(if per_stream == 1 {
            tokio::spawn(async move { Ok(vec![watcher(client, ready, received, stop).await?]) })
        } else {
            let k = per_stream.min(n - s * per_stream);
            tokio::spawn(shared_stream(client, k, ready, received, stop))
        });
    }
    wait_until(
        "every watcher's snapshot",
        Duration::from_secs(120),
        Duration::from_millis(5),
        || ready.load(Ordering::Relaxed) >= n || tasks.iter().any(|t| t.is_finished()),
    )
    .await?;
    if tasks.iter().any(|t| t.is_finished()) {
        let failed = tasks
            .into_iter()
            .find(|t| t.is_finished())
            .expect("a finished task");
        anyhow::bail!("a watcher ended while opening: {:?}", failed.await?.err());
    }
    let open_s = opened.elapsed().as_secs_f64();
    let open_cpu = open_meter.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_bytes(server.pid())?;

    // The promotes.
    let meter = CpuMeter::start(Some(server.pid()));
    let mut promotes = Vec::with_capacity(opts.promotes);
    for m in 0..opts.promotes {
        let version = if m % 2 == 0 { v2 } else { v1 };
        let sent = Instant::now();
        let moved = set_label(&mut admin, NAME, LABEL, version).await?;
        let acked = Instant::now();
        anyhow::ensure!(moved.changed, "promote {m} did not move the label");
        promotes.push(Promote {
            revision: moved.revision,
            sent,
            acked,
        });
        let want = n * (m + 1);
        wait_until(
            "every watcher's event",
            Duration::from_secs(60),
            Duration::from_micros(500),
            || received.load(Ordering::Relaxed) >= want,
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!("{e}: {} of {want} events", received.load(Ordering::Relaxed))
        })?;
        // A short gap so one promote's tail does not overlap the next.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Anything late or duplicated would arrive now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu = meter.stop();
    stop_tx.send(true)?;
    let mut watchers = Vec::with_capacity(n);
    for t in tasks {
        watchers.extend(t.await??);
    }
    let mut result = analyse(&promotes, &watchers);
    result["watchers"] = json!(n);
    result["watchers_per_stream"] = json!(per_stream);
    result["connections"] = json!(channels.len());
    result["open_s"] = json!(crate::procfs::round3(open_s));
    result["open_cpu"] = open_cpu;
    result["rss_before_bytes"] = json!(rss_before);
    result["rss_after_bytes"] = json!(rss_after);
    result["bytes_per_watch"] = json!((rss_after.saturating_sub(rss_before)) / n.max(1) as u64);
    result["cpu"] = cpu;
    Ok(result)
}

/// One watcher: open, read the snapshot, then record every label move until
/// told to stop.
async fn watcher(
    mut client: RegistryClient<crate::server::Conn>,
    ready: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<Delivery>> {
    let mut stream = client
        .watch(pb::WatchRequest {
            names: vec![NAME.into()],
            labels: vec![LABEL.into()],
            start_revision: 0,
            ..Default::default()
        })
        .await?
        .into_inner();
    use pb::watch_response::Event;
    loop {
        match stream.message().await? {
            Some(pb::WatchResponse {
                event: Some(Event::Snapshot(s)),
            }) if s.complete => break,
            Some(_) => {}
            None => anyhow::bail!("the stream ended before its snapshot"),
        }
    }
    ready.fetch_add(1, Ordering::Relaxed);
    let mut got = Vec::new();
    receive_until_stopped(&mut stream, &mut stop, |message| {
        if let pb::WatchResponse {
            event: Some(Event::Changes(batch)),
        } = message
        {
            let at = Instant::now();
            for change in batch.changes {
                if let Some(pb::change::Kind::LabelMoved(_)) = change.kind {
                    got.push(Delivery {
                        revision: batch.revision,
                        at,
                    });
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    })
    .await?;
    Ok(got)
}

/// One WatchMany stream carrying `k` watchers of the label: open them all,
/// read their snapshots, then record every label move for each watcher the
/// message names, until told to stop.
async fn shared_stream(
    mut client: RegistryClient<crate::server::Conn>,
    k: usize,
    ready: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<Vec<Delivery>>> {
    use pb::watch_many_response::Event as Many;
    use pb::watch_response::Event;
    let opens = (1..=k as u64).map(|watch_id| pb::WatchManyRequest {
        request: Some(pb::watch_many_request::Request::Open(pb::WatchOpen {
            watch_id,
            watch: Some(pb::WatchRequest {
                names: vec![NAME.into()],
                labels: vec![LABEL.into()],
                start_revision: 0,
                ..Default::default()
            }),
        })),
    });
    // The sending side stays open (a closed one would still be fine).
    let requests = tokio_stream::iter(opens.collect::<Vec<_>>()).chain(tokio_stream::pending());
    let mut stream = client.watch_many(requests).await?.into_inner();
    let watcher = |id: u64| -> anyhow::Result<usize> {
        match id as usize {
            w @ 1.. if w <= k => Ok(w - 1),
            _ => anyhow::bail!("a message for unknown watch {id}"),
        }
    };
    let mut snapshots = 0;
    while snapshots < k {
        let message = stream
            .message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("the stream ended before its snapshots"))?;
        match message.event {
            Some(Many::Response(pb::WatchResponse {
                event: Some(Event::Snapshot(s)),
            })) if s.complete => {
                snapshots += message.watch_ids.len();
                ready.fetch_add(message.watch_ids.len(), Ordering::Relaxed);
            }
            Some(Many::Ended(ended)) => {
                anyhow::bail!("watch {:?} ended: {ended:?}", message.watch_ids)
            }
            _ => {}
        }
    }
    let mut got = vec![Vec::new(); k];
    receive_until_stopped(&mut stream, &mut stop, |message| match message {
        pb::WatchManyResponse {
            watch_ids,
            event:
                Some(Many::Response(pb::WatchResponse {
                    event: Some(Event::Changes(batch)),
                })),
        } => {
            let at = Instant::now();
            let moves = batch
                .changes
                .iter()
                .filter(|c| matches!(c.kind, Some(pb::change::Kind::LabelMoved(_))))
                .count();
            for id in &watch_ids {
                let w = watcher(*id)?;
                for _ in 0..moves {
                    got[w].push(Delivery {
                        revision: batch.revision,
                        at,
                    });
                }
            }
            received.fetch_add(moves * watch_ids.len(), Ordering::Relaxed);
            Ok(())
        }
        pb::WatchManyResponse {
            watch_ids,
            event: Some(Many::Ended(ended)),
        } => anyhow::bail!("watch {watch_ids:?} ended: {ended:?}"),
        _ => Ok(()),
    })
    .await?;
    Ok(got)
}
