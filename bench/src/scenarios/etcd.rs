//! `etcd`: the same work against etcd 3.4, in the same harness: fan-out
//! (N watchers on one key over C connections, M Puts), Range at each
//! concurrency (the resolve analogue; etcd's default linearizable read) and
//! Put with 1 and 64 writers (the durable-write analogue).
//!
//! The fan-out runs twice on fresh etcd processes: once with one gRPC stream
//! per watcher (the same shape as the promptreg run) and, unless disabled,
//! once with `shared_stream` watchers multiplexed on each stream (etcd's
//! own watch-id multiplexing, its cheapest configuration).

use super::delivery::{analyse, receive_until_stopped, Delivery, Promote};
use super::{closed_loop, template_text, wait_until, Options};
use crate::etcd::EtcdProcess;
use crate::procfs::{rss_bytes, CpuMeter};
use etcd_client::Client;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

const KEY: &str = "/bench/fanout/production";
const RESOLVE_KEY: &str = "/bench/resolve/production";

pub async fn run(opts: &Options) -> anyhow::Result<Value> {
    let mut result = json!({});
    result["fanout"] = fanout(opts, 1).await?;
    if opts.shared_stream > 1 {
        result["fanout_shared_stream"] = fanout(opts, opts.shared_stream).await?;
    }
    let etcd = EtcdProcess::start(&opts.etcd_bin).await?;
    result["range"] = range(opts, &etcd).await?;
    result["put"] = put(opts, &etcd).await?;
    Ok(result)
}

/// N watchers, `per_stream` of them on each gRPC stream, streams spread
/// over `connections` clients; M Puts alternating two values.
async fn fanout(opts: &Options, per_stream: usize) -> anyhow::Result<Value> {
    let etcd = EtcdProcess::start(&opts.etcd_bin).await?;
    let clients = etcd.clients(opts.connections).await?;
    let mut admin = clients[0].clone();
    admin.put(KEY, "v1", None).await?;
    // Make sure every client has its connection before measuring memory.
    for c in &clients {
        c.clone().get(KEY, None).await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_bytes(etcd.pid())?;

    let n = opts.watchers;
    let streams = n.div_ceil(per_stream);
    let open_meter = CpuMeter::start(Some(etcd.pid()));
    let opened = Instant::now();
    let ready = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(streams);
    for s in 0..streams {
        let k = per_stream.min(n - s * per_stream);
        let client = clients[s % clients.len()].clone();
        tasks.push(tokio::spawn(stream_task(
            client,
            k,
            ready.clone(),
            received.clone(),
            stop_rx.clone(),
        )));
    }
    wait_until(
        "every etcd watcher created",
        Duration::from_secs(120),
        Duration::from_millis(5),
        || ready.load(Ordering::Relaxed) >= n || tasks.iter().any(|t| t.is_finished()),
    )
    .await?;
    if let Some(i) = tasks.iter().position(|t| t.is_finished()) {
        anyhow::bail!(
            "an etcd watch stream ended while opening: {:?}",
            tasks.remove(i).await?.err()
        );
    }
    let open_s = opened.elapsed().as_secs_f64();
    let open_cpu = open_meter.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_bytes(etcd.pid())?;

    let meter = CpuMeter::start(Some(etcd.pid()));
    let mut promotes = Vec::with_capacity(opts.promotes);
    for m in 0..opts.promotes {
        let value = if m % 2 == 0 { "v2" } else { "v1" };
        let sent = Instant::now();
        let put = admin.put(KEY, value, None).await?;
        let acked = Instant::now();
        let revision = put.header().map(|h| h.revision()).unwrap_or_default() as u64;
        promotes.push(Promote {
            revision,
            sent,
            acked,
        });
        let want = n * (m + 1);
        wait_until(
            "every etcd watcher's event",
            Duration::from_secs(60),
            Duration::from_micros(500),
            || received.load(Ordering::Relaxed) >= want,
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!("{e}: {} of {want} events", received.load(Ordering::Relaxed))
        })?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    result["connections"] = json!(clients.len());
    result["open_s"] = json!(crate::procfs::round3(open_s));
    result["open_cpu"] = open_cpu;
    result["rss_before_bytes"] = json!(rss_before);
    result["rss_after_bytes"] = json!(rss_after);
    result["bytes_per_watch"] = json!(rss_after.saturating_sub(rss_before) / n.max(1) as u64);
    result["cpu"] = cpu;
    Ok(result)
}

/// One gRPC watch stream carrying `k` watchers of the same key; returns
/// each watcher's deliveries.
async fn stream_task(
    mut client: Client,
    k: usize,
    ready: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<Vec<Delivery>>> {
    let mut stream = client.watch(KEY, None).await?;
    for _ in 1..k {
        stream.watch(KEY, None).await?;
    }
    let mut index: HashMap<i64, usize> = HashMap::with_capacity(k);
    while index.len() < k {
        let message = stream
            .message()
            .await?
            .ok_or_else(|| anyhow::anyhow!("etcd watch stream ended while creating"))?;
        if message.created() {
            let next = index.len();
            index.insert(message.watch_id(), next);
            ready.fetch_add(1, Ordering::Relaxed);
        }
    }
    let mut got = vec![Vec::new(); k];
    receive_until_stopped(&mut stream, &mut stop, |message| {
        let at = Instant::now();
        if let Some(&w) = index.get(&message.watch_id()) {
            for event in message.events() {
                if let Some(kv) = event.kv() {
                    got[w].push(Delivery {
                        revision: kv.mod_revision() as u64,
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

/// Range (Get) of one ~1 KB value at each concurrency: the resolve analogue.
async fn range(opts: &Options, etcd: &EtcdProcess) -> anyhow::Result<Value> {
    let clients = etcd.clients(opts.rpc_connections).await?;
    clients[0]
        .clone()
        .put(RESOLVE_KEY, template_text(1), None)
        .await?;
    let mut cells = Vec::new();
    let mut best = 0.0f64;
    for &c in &opts.concurrencies {
        let kvs: Vec<_> = clients.iter().map(|c| c.kv_client()).collect();
        let meter = CpuMeter::start(Some(etcd.pid()));
        let mut result = closed_loop(c, opts.warmup, opts.duration, move |task, _| {
            let mut kv = kvs[task % kvs.len()].clone();
            async move {
                let got = kv.get(RESOLVE_KEY, None).await?;
                anyhow::ensure!(got.kvs().len() == 1, "no value");
                Ok(())
            }
        })
        .await;
        best = best.max(result.qps);
        let mut cell = result.summary_json();
        cell["concurrency"] = json!(c);
        cell["cpu"] = meter.stop();
        cells.push(cell);
    }
    Ok(json!({ "connections": clients.len(), "cells": cells, "range_qps": best.round() }))
}

/// Put with 1 and 64 writers, each on its own key: the durable-write analogue.
async fn put(opts: &Options, etcd: &EtcdProcess) -> anyhow::Result<Value> {
    let clients = etcd.clients(opts.rpc_connections).await?;
    let mut cells = Vec::new();
    for &w in &opts.writers {
        let kvs: Vec<_> = clients.iter().map(|c| c.kv_client()).collect();
        let meter = CpuMeter::start(Some(etcd.pid()));
        let mut result = closed_loop(w, opts.warmup, opts.duration, move |task, i| {
            let mut kv = kvs[task % kvs.len()].clone();
            async move {
                let value = if i % 2 == 0 { "v1" } else { "v2" };
                kv.put(format!("/bench/write/w{w}-{task}"), value, None)
                    .await?;
                Ok(())
            }
        })
        .await;
        let mut cell = result.summary_json();
        cell["writers"] = json!(w);
        cell["cpu"] = meter.stop();
        cells.push(cell);
    }
    Ok(json!({ "connections": clients.len(), "cells": cells }))
}
