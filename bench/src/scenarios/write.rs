//! `write`: durable promotes (SetLabel, answered after the flush that covers
//! it) with 1 and 64 concurrent writers. Each writer moves its own label
//! between two versions, so there are no compare-and-set conflicts and every
//! call is a real change (a new revision).

use super::{closed_loop, publish, Options};
use crate::procfs::CpuMeter;
use crate::server::ServerProcess;
use pb::registry_client::RegistryClient;
use promptreg::grpc::pb;
use serde_json::{json, Value};

const NAME: &str = "bench/write";

pub async fn run(opts: &Options) -> anyhow::Result<Value> {
    let server = ServerProcess::start(&opts.server_bin)?;
    let channels = server.channels(opts.rpc_connections).await?;
    let mut admin = RegistryClient::new(channels[0].clone());
    let (v1, _) = publish(&mut admin, NAME, 1).await?;
    let (v2, _) = publish(&mut admin, NAME, 2).await?;

    let mut cells = Vec::new();
    for &w in &opts.writers {
        let chans = channels.clone();
        let meter = CpuMeter::start(Some(server.pid()));
        let mut result = closed_loop(w, opts.warmup, opts.duration, move |task, i| {
            let mut client = RegistryClient::new(chans[task % chans.len()].clone());
            async move {
                let moved = client
                    .set_label(pb::SetLabelRequest {
                        name: NAME.into(),
                        label: format!("w{w}-{task}"),
                        version: if i % 2 == 0 { v1 } else { v2 },
                        actor: "promptreg-bench".into(),
                        reason: "benchmark write".into(),
                        expected_version: None,
                    })
                    .await?
                    .into_inner();
                anyhow::ensure!(moved.changed, "SetLabel did not change the label");
                Ok(())
            }
        })
        .await;
        let mut cell = result.summary_json();
        cell["writers"] = json!(w);
        cell["cpu"] = meter.stop();
        cells.push(cell);
    }
    Ok(json!({ "connections": channels.len(), "cells": cells }))
}
