//! `memory`: resident memory as the data grows. Publishes N versions of
//! 8 KiB (3,000; 300 with `--quick`) over ten prompts to a fresh server,
//! reads every one back by number (which fills the decoded-version cache),
//! and reads the server's `VmRSS` and `VmHWM` from /proc at each step:
//! once with the default caches and once with small ones
//! (`--store-cache-mb 4 --version-cache-mb 2`), and, for comparison, with
//! caches as large as they were before they had flags. With bounded caches
//! the figures level off instead of following the data.

use super::Options;
use crate::procfs::{hwm_bytes, rss_bytes};
use crate::server::ServerProcess;
use pb::registry_client::RegistryClient;
use promptreg::grpc::pb;
use serde_json::{json, Value};

const PROMPTS: u64 = 10;
const VERSION_BYTES: usize = 8 * 1024;
/// Concurrent publishers and readers.
const TASKS: u64 = 8;

/// The cache settings compared: a name and the `serve` flags.
/// `unbounded` is how the server was before the cache flags: sled's cache
/// at 128 MiB and a version cache larger than the data.
const SETTINGS: &[(&str, &[&str])] = &[
    ("default", &[]),
    (
        "small",
        &["--store-cache-mb", "4", "--version-cache-mb", "2"],
    ),
    (
        "unbounded",
        &["--store-cache-mb", "128", "--version-cache-mb", "1024"],
    ),
];

pub async fn run(opts: &Options) -> anyhow::Result<Value> {
    let versions = opts.memory_versions.max(PROMPTS);
    let mut runs = Vec::new();
    for (name, flags) in SETTINGS {
        let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
        let mut run = one(opts, versions, &flags).await?;
        run["caches"] = json!(name);
        run["flags"] = json!(flags.join(" "));
        runs.push(run);
    }
    Ok(json!({
        "versions": versions,
        "version_bytes": VERSION_BYTES,
        "prompts": PROMPTS,
        "runs": runs,
    }))
}

/// A unique template of exactly `VERSION_BYTES` bytes for version `i`.
fn template(i: u64) -> String {
    let mut text = String::with_capacity(VERSION_BYTES + 16);
    let mut j = 0u64;
    while text.len() < VERSION_BYTES {
        text.push_str(&format!("{i:06}-{j:05} "));
        j += 1;
    }
    text.truncate(VERSION_BYTES);
    text
}

fn mib(bytes: u64) -> f64 {
    crate::procfs::round3(bytes as f64 / (1024.0 * 1024.0))
}

async fn one(opts: &Options, versions: u64, flags: &[String]) -> anyhow::Result<Value> {
    let server = ServerProcess::start_with_args(&opts.server_bin, flags)?;
    let channels = server.channels(TASKS as usize).await?;
    let pid = server.pid();
    let started_rss = rss_bytes(pid)?;

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let mut client = RegistryClient::new(channels[task as usize].clone());
        tasks.push(tokio::spawn(async move {
            for i in (task..versions).step_by(TASKS as usize) {
                client
                    .publish_version(pb::PublishVersionRequest {
                        name: format!("bench/memory/p{}", i % PROMPTS),
                        template: Some(pb::Template {
                            kind: Some(pb::template::Kind::Text(template(i))),
                        }),
                        variables: vec![],
                        model_config_json: String::new(),
                        author: "promptreg-bench".into(),
                        description: format!("memory scenario version {i}"),
                        tags: Default::default(),
                    })
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let published_rss = rss_bytes(pid)?;

    read_all(&channels, versions).await?;
    let read_rss = rss_bytes(pid)?;
    read_all(&channels, versions).await?;
    let again_rss = rss_bytes(pid)?;
    let hwm = hwm_bytes(pid)?;
    Ok(json!({
        "started_rss_mib": mib(started_rss),
        "published_rss_mib": mib(published_rss),
        "read_rss_mib": mib(read_rss),
        "read_again_rss_mib": mib(again_rss),
        "hwm_mib": mib(hwm),
    }))
}

/// Reads every version once by number, `TASKS` readers at a time.
async fn read_all(channels: &[crate::server::Conn], versions: u64) -> anyhow::Result<()> {
    let per_prompt = (versions / PROMPTS).max(1);
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let mut client = RegistryClient::new(channels[task as usize].clone());
        tasks.push(tokio::spawn(async move {
            for i in (task..versions).step_by(TASKS as usize) {
                let version = client
                    .get_version(pb::GetVersionRequest {
                        name: format!("bench/memory/p{}", i % PROMPTS),
                        selector: Some(pb::get_version_request::Selector::Version(
                            1 + (i / PROMPTS) % per_prompt,
                        )),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                anyhow::ensure!(version.version.is_some(), "GetVersion returned no version");
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}
