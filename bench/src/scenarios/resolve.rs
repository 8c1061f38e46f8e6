//! `resolve`: GetVersion by label (label → version with its ~1 KB content)
//! at each concurrency level, and in the same run the empty unary RPC of the
//! same stack (grpc.health.v1.Health/Check) as the ceiling. Cells alternate
//! (health, resolve) per concurrency so drift affects both alike.

use super::{closed_loop, publish, set_label, Options};
use crate::procfs::CpuMeter;
use crate::server::ServerProcess;
use pb::registry_client::RegistryClient;
use promptreg::grpc::pb;
use serde_json::{json, Value};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const NAME: &str = "bench/resolve";
const LABEL: &str = "production";

pub async fn run(opts: &Options) -> anyhow::Result<Value> {
    let server = ServerProcess::start(&opts.server_bin)?;
    let channels = server.channels(opts.rpc_connections).await?;
    let mut admin = RegistryClient::new(channels[0].clone());
    let (v1, _) = publish(&mut admin, NAME, 1).await?;
    set_label(&mut admin, NAME, LABEL, v1).await?;

    let mut cells = Vec::new();
    let (mut best_resolve, mut best_empty) = (0.0f64, 0.0f64);
    for &c in &opts.concurrencies {
        let chans = channels.clone();
        let meter = CpuMeter::start(Some(server.pid()));
        let mut empty = closed_loop(c, opts.warmup, opts.duration, move |task, _| {
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
        .await;
        let empty_cpu = meter.stop();

        let chans = channels.clone();
        let meter = CpuMeter::start(Some(server.pid()));
        let mut resolve = closed_loop(c, opts.warmup, opts.duration, move |task, _| {
            let mut client = RegistryClient::new(chans[task % chans.len()].clone());
            async move {
                let v = client
                    .get_version(pb::GetVersionRequest {
                        name: NAME.into(),
                        selector: Some(pb::get_version_request::Selector::Label(LABEL.into())),
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
        .await;
        let resolve_cpu = meter.stop();
        best_resolve = best_resolve.max(resolve.qps);
        best_empty = best_empty.max(empty.qps);
        let ratio = if empty.qps > 0.0 {
            resolve.qps / empty.qps
        } else {
            0.0
        };
        cells.push(json!({
            "concurrency": c,
            "resolve": resolve.summary_json(),
            "resolve_cpu": resolve_cpu,
            "empty_rpc": empty.summary_json(),
            "empty_rpc_cpu": empty_cpu,
            "ratio": crate::procfs::round3(ratio),
        }));
    }
    Ok(json!({
        "connections": channels.len(),
        "duration_s": opts.duration.as_secs_f64(),
        "cells": cells,
        "resolve_qps": best_resolve.round(),
        "empty_rpc_qps": best_empty.round(),
        "ratio": crate::procfs::round3(if best_empty > 0.0 { best_resolve / best_empty } else { 0.0 }),
    }))
}
