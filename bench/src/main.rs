//! promptreg-bench: the load generator. It starts the release `promptreg`
//! binary (and etcd 3.4 for the comparison) as child processes on loopback,
//! drives one scenario or all of them, and prints JSON (one scenario) or the
//! markdown tables plus a JSON summary (`all`).
//!
//! `cargo run --release -p promptreg-bench -- SCENARIO [--watchers N]
//! [--connections C] [--promotes M] [--quick]`; see `bench/README.md`.

#![recursion_limit = "256"]

mod etcd;
mod procfs;
mod report;
mod scenarios;
mod server;
mod stats;

use clap::{Parser, ValueEnum};
use scenarios::Options;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// N watch streams, M promotes: delivery latency, memory per watch.
    Fanout,
    /// N acknowledging agents, one rollback: time until all are in sync.
    Converge,
    /// N watchers across a SIGKILL and a SIGTERM restart, writes going on:
    /// time until all resumed, no gap, no duplicate.
    Storm,
    /// GetVersion by label vs the empty Health/Check RPC.
    Resolve,
    /// Durable SetLabel with 1 and 64 writers.
    Write,
    /// ReportOutcome from N agents during a rollout at concurrency 1 and
    /// 64: reports/s, latency, server CPU per report; checked against
    /// GetRollout.
    Rollout,
    /// Unit costs for the README's Cost section: storage per version and
    /// per revision; memory, CPU and loopback bytes per connected agent, per
    /// promote and per resolve.
    Cost,
    /// The same fan-out, Range and Put work against etcd 3.4.
    Etcd,
    /// Resident memory after publishing and reading N versions of 8 KiB,
    /// with the default caches and with small ones.
    Memory,
    /// Everything, then the summary tables.
    All,
}

#[derive(Debug, Parser)]
#[command(
    name = "promptreg-bench",
    about = "Benchmarks promptreg side by side with etcd"
)]
struct Cli {
    scenario: Scenario,
    /// Watch streams / agents (default 10000; 200 with --quick).
    #[arg(long)]
    watchers: Option<usize>,
    /// HTTP/2 connections the watchers share (default 100; 20 with --quick).
    #[arg(long)]
    connections: Option<usize>,
    /// Promotes per fan-out run (default 20; 5 with --quick).
    #[arg(long)]
    promotes: Option<usize>,
    /// HTTP/2 connections for unary load (default 8).
    #[arg(long, default_value_t = 8)]
    rpc_connections: usize,
    /// Seconds measured per load cell (default 5; 2 with --quick).
    #[arg(long)]
    duration: Option<f64>,
    /// Milliseconds between FleetStatus polls in `converge`.
    #[arg(long, default_value_t = 2)]
    fleet_poll_ms: u64,
    /// Milliseconds between the promotes of `storm`'s writer (default: 30 µs
    /// per watcher, at least 20 ms, so the fan-out keeps up).
    #[arg(long)]
    storm_write_ms: Option<u64>,
    /// Watchers per stream in the second fan-out run of promptreg
    /// (WatchMany) and of etcd (0 or 1: skip it).
    #[arg(long, default_value_t = 100)]
    shared_stream: usize,
    /// Versions of 8 KiB that `memory` publishes (default 3000; 300 with
    /// --quick).
    #[arg(long)]
    memory_versions: Option<u64>,
    /// Small and fast: everything in under a minute.
    #[arg(long)]
    quick: bool,
    /// The promptreg binary (default: next to this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The etcd binary.
    #[arg(long, default_value = "etcd")]
    etcd_bin: String,
    /// Write the JSON result (the summary for `all`) here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// `all`, `rollout` and `cost` only: write the markdown tables here too.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

impl Cli {
    fn options(&self) -> Options {
        let q = self.quick;
        let duration = self.duration.unwrap_or(if q { 2.0 } else { 5.0 });
        let watchers = self.watchers.unwrap_or(if q { 200 } else { 10_000 });
        // Every promote is delivered to every watcher; at 30 µs per watcher
        // the fan-out of one promote takes well under the interval on two
        // cores (fanout measured about 20 µs of server CPU per delivery).
        let storm_write_interval = match self.storm_write_ms {
            Some(ms) => Duration::from_millis(ms),
            None => (Duration::from_micros(30) * watchers.min(1_000_000) as u32)
                .max(Duration::from_millis(20)),
        };
        Options {
            watchers,
            connections: self.connections.unwrap_or(if q { 20 } else { 100 }),
            promotes: self.promotes.unwrap_or(if q { 5 } else { 20 }),
            rpc_connections: self.rpc_connections,
            concurrencies: vec![1, 64, 256],
            writers: vec![1, 64],
            duration: Duration::from_secs_f64(duration),
            warmup: Duration::from_millis(if q { 300 } else { 1000 }),
            shared_stream: self.shared_stream,
            fleet_poll: Duration::from_millis(self.fleet_poll_ms),
            storm_write_interval,
            server_bin: self
                .server_bin
                .clone()
                .unwrap_or_else(server::default_server_bin),
            etcd_bin: self.etcd_bin.clone(),
            memory_versions: self.memory_versions.unwrap_or(if q { 300 } else { 3000 }),
            quick: q,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let opts = cli.options();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // The same runtime setting as the server (see its src/main.rs), for the
    // etcd runs too.
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    let runtime = builder.build()?;
    let mut output = runtime.block_on(run(cli.scenario, &opts))?;
    if cli.scenario != Scenario::All {
        output["run"] = report::run_info(&opts);
    }
    // Leave no stream task running against a stopped server.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if cli.scenario == Scenario::All {
        let table = report::markdown(&output);
        println!("{table}");
        if let Some(path) = &cli.markdown {
            std::fs::write(path, &table)?;
        }
    } else {
        println!("{}", serde_json::to_string_pretty(&output)?);
        match (cli.scenario, &cli.markdown) {
            (Scenario::Rollout, Some(path)) => {
                std::fs::write(path, report::rollout_table(&output))?
            }
            (Scenario::Cost, Some(path)) => std::fs::write(path, report::cost_table(&output))?,
            _ => {}
        }
    }
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&output)? + "\n")?;
    }
    Ok(())
}

async fn run(scenario: Scenario, opts: &Options) -> anyhow::Result<Value> {
    let harness0 = procfs::cpu_seconds(None);
    let one = |name: &str| {
        eprintln!(
            "promptreg-bench: {name} ({} watchers, {} connections)",
            opts.watchers, opts.connections
        )
    };
    Ok(match scenario {
        Scenario::Fanout => scenarios::fanout::run(opts).await?,
        Scenario::Converge => scenarios::converge::run(opts).await?,
        Scenario::Storm => scenarios::storm::run(opts).await?,
        Scenario::Resolve => scenarios::resolve::run(opts).await?,
        Scenario::Write => scenarios::write::run(opts).await?,
        Scenario::Rollout => scenarios::rollout::run(opts).await?,
        Scenario::Cost => scenarios::cost::run(opts).await?,
        Scenario::Etcd => scenarios::etcd::run(opts).await?,
        Scenario::Memory => scenarios::memory::run(opts).await?,
        Scenario::All => {
            let mut results = json!({});
            one("fanout");
            results["fanout"] = scenarios::fanout::run(opts).await?;
            one("converge");
            results["converge"] = scenarios::converge::run(opts).await?;
            one("storm");
            results["storm"] = scenarios::storm::run(opts).await?;
            one("resolve");
            results["resolve"] = scenarios::resolve::run(opts).await?;
            one("write");
            results["write"] = scenarios::write::run(opts).await?;
            one("rollout");
            results["rollout"] = scenarios::rollout::run(opts).await?;
            one("cost");
            results["cost"] = scenarios::cost::run(opts).await?;
            one("etcd");
            results["etcd"] = scenarios::etcd::run(opts).await?;
            one("memory");
            results["memory"] = scenarios::memory::run(opts).await?;
            report::summary(opts, &results, procfs::cpu_seconds(None) - harness0)
        }
    })
}
