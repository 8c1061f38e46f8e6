//! The scenarios, and what they share: the options, a closed-loop load
//! runner for unary calls, and small helpers that set up prompts.

pub mod converge;
pub mod cost;
pub mod delivery;
pub mod etcd;
pub mod fanout;
pub mod memory;
pub mod resolve;
pub mod rollout;
pub mod storm;
pub mod write;

use crate::server::Conn;
use crate::stats::Samples;
use pb::registry_client::RegistryClient;
use promptreg::grpc::pb;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything a scenario may be told from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// Watch streams (fanout, converge, etcd fan-out).
    pub watchers: usize,
    /// HTTP/2 connections the watch streams are spread over.
    pub connections: usize,
    /// Promotes (label moves, or etcd Puts) in a fan-out run.
    pub promotes: usize,
    /// HTTP/2 connections for unary load (resolve, write, Range, Put).
    pub rpc_connections: usize,
    /// Concurrency levels for resolve, the empty RPC and Range.
    pub concurrencies: Vec<usize>,
    /// Concurrent writers for write and Put.
    pub writers: Vec<usize>,
    /// Measured time per load cell.
    pub duration: Duration,
    /// Unmeasured time before each load cell.
    pub warmup: Duration,
    /// Watchers per stream in the second fan-out run, promptreg (WatchMany)
    /// and etcd (watch ids) alike (0: skip it).
    pub shared_stream: usize,
    /// Pause between FleetStatus polls in `converge`.
    pub fleet_poll: Duration,
    /// Pause between the promotes of `storm`'s writer.
    pub storm_write_interval: Duration,
    pub server_bin: PathBuf,
    pub etcd_bin: String,
    /// Versions of 8 KiB published by `memory`.
    pub memory_versions: u64,
    pub quick: bool,
}

/// The outcome of a closed-loop load cell.
pub struct LoadResult {
    pub latency: Samples,
    pub errors: u64,
    pub first_error: Option<String>,
    pub qps: f64,
}

impl LoadResult {
    /// One result from consecutive parts of `measured` each: samples and
    /// errors summed, the rate over their total measured time.
    pub fn combine(parts: Vec<LoadResult>, measured: Duration) -> LoadResult {
        let total = measured.as_secs_f64() * parts.len().max(1) as f64;
        let mut all = LoadResult {
            latency: Samples::new(),
            errors: 0,
            first_error: None,
            qps: 0.0,
        };
        for part in parts {
            all.latency.extend(part.latency);
            all.errors += part.errors;
            if all.first_error.is_none() {
                all.first_error = part.first_error;
            }
        }
        all.qps = all.latency.len() as f64 / total;
        all
    }

    pub fn summary_json(&mut self) -> serde_json::Value {
        let mut v = self.latency.summary();
        v["qps"] = serde_json::json!(self.qps.round());
        v["errors"] = serde_json::json!(self.errors);
        if let Some(e) = &self.first_error {
            v["first_error"] = serde_json::json!(e);
        }
        v
    }
}

/// Runs `concurrency` tasks, each calling `op(task, iteration)` back to back
/// for `warmup + duration`; only calls started after the warm-up count.
pub async fn closed_loop<F, Fut>(
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    op: F,
) -> LoadResult
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    let measure_from = Instant::now() + warmup;
    let end = measure_from + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..concurrency {
        let op = op.clone();
        tasks.spawn(async move {
            let mut latency = Samples::new();
            let (mut errors, mut first_error) = (0u64, None::<String>);
            let mut i = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let result = op(task, i).await;
                i += 1;
                match result {
                    Ok(()) if t0 >= measure_from => latency.push(t0.elapsed()),
                    Ok(()) => {}
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                        // Do not spin on a dead server.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (latency, errors, first_error)
        });
    }
    let mut all = Samples::new();
    let (mut errors, mut first_error) = (0u64, None);
    while let Some(joined) = tasks.join_next().await {
        let (latency, e, first) = joined.expect("load task panicked");
        all.extend(latency);
        errors += e;
        if first_error.is_none() {
            first_error = first;
        }
    }
    let qps = all.len() as f64 / duration.as_secs_f64();
    LoadResult {
        latency: all,
        errors,
        first_error,
        qps,
    }
}

/// A prompt template of realistic size (about 1 KB, three variables).
pub fn template_text(variant: u32) -> String {
    format!(
        "You are the support triage assistant for {{{{product}}}} (build {variant}).\n\
         Read the customer's message below and answer with a JSON object holding: \
         `category` (one of billing, outage, bug, how-to, feedback, other), `urgency` \
         (1 to 5, where 5 means a production outage for the customer), `summary` (one \
         sentence, no more than 30 words, in the customer's language), and `next_step` \
         (what the on-call engineer should do first). Quote the customer when the message \
         contains an error text or a number. Never promise refunds, credits or dates. If \
         the message is abusive, set category to other and urgency to 1 and do not \
         summarise the abuse. If the customer mentions data loss, urgency is at least 4.\n\
         Customer tier: {{{{tier}}}}. Customer message follows between the markers.\n\
         ---\n{{{{message}}}}\n---\n\
         Answer with the JSON object only, without code fences, explanations or greetings. \
         Keep keys in the order given above and use double quotes for every string."
    )
}

/// A Watch of `label` on `names` from the start, as the agent `agent_id`
/// of the benchmark's SDK: what every acknowledging bench agent opens.
pub fn agent_watch(names: &[&str], label: &str, agent_id: &str) -> pb::WatchRequest {
    pb::WatchRequest {
        names: names.iter().map(|n| n.to_string()).collect(),
        labels: vec![label.to_string()],
        start_revision: 0,
        agent_id: agent_id.to_string(),
        agent: Some(pb::AgentInfo {
            host: "localhost".into(),
            sdk: "promptreg-bench".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Publishes `variant` of a benchmark prompt; returns (version, digest).
pub async fn publish(
    client: &mut RegistryClient<Conn>,
    name: &str,
    variant: u32,
) -> anyhow::Result<(u64, String)> {
    let response = client
        .publish_version(pb::PublishVersionRequest {
            name: name.to_string(),
            template: Some(pb::Template {
                kind: Some(pb::template::Kind::Text(template_text(variant))),
            }),
            variables: vec!["product".into(), "tier".into(), "message".into()],
            model_config_json: r#"{"model":"gpt-x","temperature":0.2}"#.into(),
            author: "promptreg-bench".into(),
            description: format!("benchmark variant {variant}"),
            tags: Default::default(),
        })
        .await?
        .into_inner();
    Ok((response.version, response.digest))
}

/// Moves `label` of `name` to `version`; returns the response.
pub async fn set_label(
    client: &mut RegistryClient<Conn>,
    name: &str,
    label: &str,
    version: u64,
) -> anyhow::Result<pb::LabelMoveResponse> {
    Ok(client
        .set_label(pb::SetLabelRequest {
            name: name.to_string(),
            label: label.to_string(),
            version,
            actor: "promptreg-bench".into(),
            reason: "benchmark".into(),
            expected_version: None,
        })
        .await?
        .into_inner())
}

/// Waits until `done()` holds, polling every `every`; fails after `timeout`.
pub async fn wait_until(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
    Ok(())
}
