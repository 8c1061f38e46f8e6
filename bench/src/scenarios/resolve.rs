//! `resolve`: GetVersion by label (label → version with its ~1 KB content)
//! at each concurrency level, and in the same run the empty unary RPC of the
//! same stack (grpc.health.v1.Health/Check) as the ceiling.
//!
//! The two are measured interleaved: each cell's time is cut into one-second
//! slices run in the order E R R E E R …, and each side sums its slices. On
//! a shared two-core machine the throughput of either drifts by tens of
//! percent within a minute; a slice of each, side by side, sees the same
//! drift, so the ratio measures the two RPCs and not the moment.

use super::{closed_loop, publish, set_label, LoadResult, Options};
use crate::procfs::CpuMeter;
use crate::server::{Conn, ServerProcess};
use pb::registry_client::RegistryClient;
use promptreg::grpc::pb;
use serde_json::{json, Value};
use std::time::Duration;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const NAME: &str = "bench/resolve";
const LABEL: &str = "production";

/// How long one slice is measured, and its warm-up (the connections stay
/// open between slices; only the load tasks start again).
const SLICE: Duration = Duration::from_secs(1);
const SLICE_WARMUP: Duration = Duration::from_millis(150);

#[derive(Clone, Copy)]
enum Rpc {
    Empty,
    Resolve,
}

pub async fn run(opts: &Options) -> anyhow::Result<Value> {
    let server = ServerProcess::start(&opts.server_bin)?;
    let channels = server.channels(opts.rpc_connections).await?;
    let mut admin = RegistryClient::new(channels[0].clone());
    let (v1, _) = publish(&mut admin, NAME, 1).await?;
    set_label(&mut admin, NAME, LABEL, v1).await?;

    // Pairs of slices, at least one pair.
    let pairs = ((opts.duration.as_secs_f64() / SLICE.as_secs_f64()).round() as usize).max(1);
    let mut cells = Vec::new();
    let (mut best_resolve, mut best_empty) = (0.0f64, 0.0f64);
    for &c in &opts.concurrencies {
        // The connections warm up once per concurrency, as before.
        load(Rpc::Empty, c, &channels, opts.warmup, SLICE).await;
        load(Rpc::Resolve, c, &channels, opts.warmup, SLICE).await;
        let mut sides: [(Vec<LoadResult>, Vec<Value>); 2] = Default::default();
        for pair in 0..pairs {
            let order = if pair % 2 == 0 {
                [Rpc::Empty, Rpc::Resolve]
            } else {
                [Rpc::Resolve, Rpc::Empty]
            };
            for rpc in order {
                let meter = CpuMeter::start(Some(server.pid()));
                let result = load(rpc, c, &channels, SLICE_WARMUP, SLICE).await;
                let side = &mut sides[rpc as usize];
                side.1.push(meter.stop());
                side.0.push(result);
            }
        }
        let [(empty, empty_cpu), (resolve, resolve_cpu)] = sides;
        let mut empty = LoadResult::combine(empty, SLICE);
        let mut resolve = LoadResult::combine(resolve, SLICE);
        best_resolve = best_resolve.max(resolve.qps);
        best_empty = best_empty.max(empty.qps);
        let ratio = if empty.qps > 0.0 {
            resolve.qps / empty.qps
        } else {
            0.0
        };
        cells.push(json!({
            "concurrency": c,
            "slices": pairs,
            "resolve": resolve.summary_json(),
            "resolve_cpu": sum_cpu(&resolve_cpu),
            "empty_rpc": empty.summary_json(),
            "empty_rpc_cpu": sum_cpu(&empty_cpu),
            "ratio": crate::procfs::round3(ratio),
        }));
    }
    Ok(json!({
        "connections": channels.len(),
        "duration_s": SLICE.as_secs_f64() * pairs as f64,
        "cells": cells,
        "resolve_qps": best_resolve.round(),
        "empty_rpc_qps": best_empty.round(),
        "ratio": crate::procfs::round3(if best_empty > 0.0 { best_resolve / best_empty } else { 0.0 }),
    }))
}

/// `c` callers of `rpc` in a closed loop over `channels`.
async fn load(
    rpc: Rpc,
    c: usize,
    channels: &[Conn],
    warmup: Duration,
    measured: Duration,
) -> LoadResult {
    let chans = channels.to_vec();
    match rpc {
        Rpc::Empty => {
            closed_loop(c, warmup, measured, move |task, _| {
                let mut client = HealthClient::new(chans[task % chans.len()].clone());
                async move {
                    client
                        .check(HealthCheckRequest {
                            service: String::new(),
                        })
                        .await?;
                    Ok(())
                }
            })
            .await
        }
        Rpc::Resolve => {
            closed_loop(c, warmup, measured, move |task, _| {
                let mut client = RegistryClient::new(chans[task % chans.len()].clone());
                async move {
                    let v = client
                        .get_version(pb::GetVersionRequest {
                            name: NAME.into(),
                            selector: Some(pb::get_version_request::Selector::Label(LABEL.into())),
                            ..Default::default()
                        })
                        .await?
                        .into_inner();
                    anyhow::ensure!(
                        v.version.is_some_and(|v| v.template.is_some()),
                        "no content"
                    );
                    Ok(())
                }
            })
            .await
        }
    }
}

/// The CPU meters of one side's slices as one (see `CpuMeter::stop`).
fn sum_cpu(parts: &[Value]) -> Value {
    let total = |key: &str| parts.iter().filter_map(|p| p[key].as_f64()).sum::<f64>();
    let other = parts
        .iter()
        .filter_map(|p| Some(p["other_cores"].as_f64()? * p["wall_s"].as_f64()?))
        .sum();
    crate::procfs::cpu_json(
        total("wall_s"),
        total("harness_cpu_s"),
        total("server_cpu_s"),
        other,
    )
}
