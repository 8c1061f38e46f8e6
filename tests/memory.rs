//! Memory bounds: the decoded-version cache never holds more than its byte
//! bound, whatever is published and read, and the cache flags of `serve`
//! are validated. (Resident memory itself is measured by the benchmark's
//! memory scenario, not asserted here.)

mod support;

use promptreg::grpc::pb;
use support::*;

fn get_by_number(name: &str, number: u64) -> pb::GetVersionRequest {
    pb::GetVersionRequest {
        name: name.to_string(),
        selector: Some(pb::get_version_request::Selector::Version(number)),
        ..Default::default()
    }
}

/// 300 versions of 8 KiB through a 1 MiB cache: every read (by number and
/// by label) leaves the cache within its bound, evicted versions are read
/// again correctly, and the gauge-facing usage says what is held.
#[tokio::test]
async fn the_version_cache_stays_within_its_byte_bound() {
    const BOUND: usize = 1024 * 1024;
    let server = TestServer::start_with(|config| config.caches.version_bytes = BOUND).await;
    let mut client = server.client().await;
    let body = |n: u64| format!("{n:08} {}", "x".repeat(8 * 1024));
    for n in 1..=300 {
        publish(&mut client, "mem/big", &body(n)).await;
        let usage = server.registry().version_cache_usage();
        assert!(usage.bytes <= BOUND, "after publish {n}: {usage:?}");
    }
    for n in 1..=300 {
        let version = client
            .get_version(get_by_number("mem/big", n))
            .await
            .expect("get")
            .into_inner()
            .version
            .expect("version");
        let Some(pb::template::Kind::Text(text)) = version.template.and_then(|t| t.kind) else {
            panic!("v{n} has no text template");
        };
        assert_eq!(text, body(n), "v{n} read back");
        let usage = server.registry().version_cache_usage();
        assert!(usage.bytes <= BOUND, "after reading v{n}: {usage:?}");
        assert_eq!(usage.capacity, BOUND);
    }
    let full = server.registry().version_cache_usage();
    assert!(
        full.entries > 10 && full.entries < 300,
        "some, not all, of 300 versions of 8 KiB fit in 1 MiB: {full:?}"
    );
    // Each entry is charged at least its content twice (decoded and encoded).
    assert!(full.bytes >= full.entries * 2 * 8 * 1024, "{full:?}");
    // Reading the first versions again (evicted by now) still answers them.
    for n in 1..=5 {
        let version = client
            .get_version(get_by_number("mem/big", n))
            .await
            .expect("get evicted")
            .into_inner()
            .version
            .expect("version");
        assert_eq!(version.version, n);
    }
    assert!(server.registry().version_cache_usage().bytes <= BOUND);
    // The latest label resolves through the same cache.
    let latest = resolve(&mut client, "mem/big", "latest")
        .await
        .expect("latest");
    assert_eq!(latest.version, 300);
    assert!(server.registry().version_cache_usage().bytes <= BOUND);
}

/// A version charged more than the whole cache is served, not cached.
#[tokio::test]
async fn a_version_larger_than_the_cache_is_served_uncached() {
    let server = TestServer::start_with(|config| config.caches.version_bytes = 64 * 1024).await;
    let mut client = server.client().await;
    publish(&mut client, "mem/huge", &"y".repeat(100 * 1024)).await;
    let version = resolve(&mut client, "mem/huge", "latest")
        .await
        .expect("resolve");
    assert_eq!(version.version, 1);
    let usage = server.registry().version_cache_usage();
    assert_eq!(usage.entries, 0, "{usage:?}");
    assert_eq!(usage.bytes, 0, "{usage:?}");
}

/// `serve` refuses 0 and out-of-range cache sizes, from flags and from the
/// environment, naming the setting, before it listens.
#[test]
fn serve_refuses_nonsense_cache_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(binary());
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(args);
        for (key, value) in env {
            command.env(key, value);
        }
        let out = command.output().expect("runs");
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (args, env, needle) in [
        (
            &["--store-cache-mb", "0"][..],
            &[][..],
            "--store-cache-mb must be at least 1",
        ),
        (
            &["--version-cache-mb", "0"],
            &[],
            "--version-cache-mb must be at least 1",
        ),
        (
            &["--version-cache-mb", "99999999"],
            &[],
            "--version-cache-mb is 99999999 MiB",
        ),
        (&["--store-cache-mb", "lots"], &[], "--store-cache-mb"),
        (&["--version-cache-mb=-1"], &[], "--version-cache-mb"),
        (
            &[],
            &[("PROMPTREG_STORE_CACHE_MB", "0")],
            "--store-cache-mb must be at least 1",
        ),
    ] {
        let (status, stderr) = run(args, env);
        assert!(!status.success(), "{args:?} {env:?} was accepted");
        assert!(
            stderr.contains(needle),
            "{args:?} {env:?}: stderr {stderr:?} does not contain {needle:?}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Small caches are accepted and the server serves with them.
#[test]
fn serve_runs_with_one_mib_caches() {
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("t.txt");
    std::fs::write(&template, "hello").unwrap();
    let server = ServerProcess::start(
        &dir.path().join("data"),
        &["--store-cache-mb", "1", "--version-cache-mb", "1"],
    );
    let out = run_cli(
        &server.url,
        &[
            "publish",
            "mem/p",
            "--template-file",
            template.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
}
