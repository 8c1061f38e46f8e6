//! A full disk, for real: the real server on its own 8 MiB tmpfs, written
//! to until the disk is full. Writes are refused with UNAVAILABLE (never
//! INTERNAL, never a hang), acknowledged writes stay readable, health says
//! NOT_SERVING for writes, writes resume when space is freed (or the server
//! exits asking for a restart, and a restart serves everything), SIGTERM
//! stops the server in time, and the store left behind is sound.
//!
//! Needs root to mount the tmpfs (CI runs as root); without it the test
//! fails and says so. `FULL_DISK_SEED=N` replays a run.

mod support;

use promptreg::grpc::pb;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::rng::{seed_from_env, Rng};
use support::*;
use tonic::Code;
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};

/// Every RPC must answer within this: a hang is a failure.
const RPC_PATIENCE: Duration = Duration::from_secs(40);
/// From SIGTERM to exit (the server's stop deadline is 20 s).
const STOP_PATIENCE: Duration = Duration::from_secs(30);
const WRITE_HEALTH: &str = "promptreg.v1.Registry.writes";
const RUNS: u64 = 6;
const WRITERS: usize = 3;

/// A tmpfs mounted for the test, unmounted when dropped (also when the
/// test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("temporary directory");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts an {size} tmpfs to fill a real disk and needs root (CI runs as root); \
             `mount -t tmpfs` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// How a run frees space and what it expects.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Variant {
    /// The free-space check refuses writes; deleting the filler resumes them.
    Resume,
    /// The same, but SIGTERM while writes are refused, and the resume is
    /// seen after a restart.
    StopWhileFull,
    /// No free-space margin (`--min-free-space 0`): sled itself hits
    /// ENOSPC. Once space is freed the server exits asking for a restart.
    StorageFails,
}

fn client(url: &str) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("url")
        .connect_timeout(Duration::from_secs(5))
        .timeout(RPC_PATIENCE)
        .connect_lazy();
    client_with(channel, token_for(url).as_deref())
}

/// Runs an RPC with the test's patience: a hang fails the test.
async fn within<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(RPC_PATIENCE + Duration::from_secs(5), call)
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer within {RPC_PATIENCE:?}"))
}

async fn write_health(url: &str) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("url")
        .timeout(RPC_PATIENCE)
        .connect_lazy();
    let mut health = HealthClient::new(channel);
    let answer = within(
        "health check",
        health.check(tonic_health::pb::HealthCheckRequest {
            service: WRITE_HEALTH.into(),
        }),
    )
    .await
    .expect("the health service answers while the disk is full");
    ServingStatus::try_from(answer.into_inner().status).expect("a known status")
}

async fn wait_for_write_health(url: &str, wanted: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = write_health(url).await;
        if status == wanted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "write health stayed {status:?}, expected {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An acknowledged publish.
#[derive(Debug, Clone)]
struct Acked {
    name: String,
    version: u64,
    digest: String,
}

/// Publishes until the first refusal, which must be UNAVAILABLE.
async fn writer(url: String, id: usize, seed: u64) -> Vec<Acked> {
    let mut rng = Rng::new(seed);
    let mut client = client(&url);
    let mut acked = Vec::new();
    for n in 0..5000 {
        let name = format!("w{id}/p{}", rng.below(20));
        // Random text barely compresses: each write costs its size on disk.
        let size = 2_000 + rng.index(14_000);
        let body: String = rng
            .bytes(size)
            .iter()
            .map(|b| char::from(b'a' + b % 26))
            .collect();
        let answer = within(
            "publish",
            client.publish_version(publish_text(&name, &format!("{n} {body}"), &[])),
        )
        .await;
        match answer {
            Ok(published) => {
                let published = published.into_inner();
                acked.push(Acked {
                    name,
                    version: published.version,
                    digest: published.digest,
                });
            }
            Err(status) => {
                assert_eq!(
                    status.code(),
                    Code::Unavailable,
                    "a full disk is UNAVAILABLE: {status:?}"
                );
                return acked;
            }
        }
    }
    panic!("writer {id}: 5000 writes of up to 16 KB fitted on an 8 MiB disk: nothing was refused");
}

/// Every acknowledged write reads back with its digest. With `may_refuse`,
/// a read may instead be UNAVAILABLE (a store whose storage failed), but
/// never wrong, never another error, never a hang.
async fn check_reads(url: &str, acked: &[Acked], may_refuse: bool) {
    let mut client = client(url);
    for a in acked {
        let request = pb::GetVersionRequest {
            name: a.name.clone(),
            selector: Some(pb::get_version_request::Selector::Version(a.version)),
            ..Default::default()
        };
        match within("get_version", client.get_version(request)).await {
            Ok(answer) => {
                let version = answer.into_inner().version.expect("a version");
                assert_eq!(version.digest, a.digest, "{} v{}", a.name, a.version);
            }
            Err(status) if may_refuse && status.code() == Code::Unavailable => {}
            Err(status) => panic!("{} v{} is acknowledged: {status:?}", a.name, a.version),
        }
    }
}

/// A write after space was freed; retried while the server still refuses.
async fn wait_for_write(url: &str, name: &str) -> Acked {
    let mut client = client(url);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        n += 1;
        let answer = within(
            "publish",
            client.publish_version(publish_text(name, &format!("after {n}"), &[])),
        )
        .await;
        match answer {
            Ok(published) => {
                let published = published.into_inner();
                return Acked {
                    name: name.to_string(),
                    version: published.version,
                    digest: published.digest,
                };
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(
                    Instant::now() < deadline,
                    "writes did not resume after space was freed: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn start(data_dir: &Path, min_free: &str) -> ServerProcess {
    ServerProcess::start(data_dir, &["--min-free-space", min_free])
}

/// SIGTERM; the server must exit within [`STOP_PATIENCE`].
fn stop(server: ServerProcess) {
    let pid = server.child.id().to_string();
    let stderr = server.stderr.clone();
    let started = Instant::now();
    let mut server = server;
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    loop {
        if let Some(status) = server.child.try_wait().expect("wait") {
            assert!(
                status.success(),
                "a stop exits 0: {status:?}\n{}",
                stderr.lock().unwrap()
            );
            return;
        }
        assert!(
            started.elapsed() < STOP_PATIENCE,
            "SIGTERM did not stop the server within {STOP_PATIENCE:?}; log:\n{}",
            stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn check_sound(data_dir: &Path) {
    let out = std::process::Command::new(binary())
        .args(["check", "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("run promptreg check");
    assert!(
        out.status.success(),
        "promptreg check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sound"));
}

fn fill(path: &Path, bytes: usize) {
    std::fs::write(path, vec![0x5a; bytes]).expect("write the filler file");
}

async fn one_run(run: u64, seed: u64) {
    let variant = match run % 3 {
        0 => Variant::Resume,
        1 => Variant::StorageFails,
        _ => Variant::StopWhileFull,
    };
    let mut rng = Rng::new(seed);
    eprintln!("run {run}: {variant:?}");
    let disk = Tmpfs::mount("8m");
    let data_dir: PathBuf = disk.path().join("data");
    // Deleted to free space later. At least 2 MiB, so that freeing it is
    // "space back" whatever the margin.
    let filler = disk.path().join("filler");
    fill(&filler, 2 * 1024 * 1024 + rng.index(1024 * 1024));
    let min_free = match variant {
        Variant::StorageFails => "0",
        Variant::Resume | Variant::StopWhileFull => "1MiB",
    };
    let server = start(&data_dir, min_free);
    let url = server.url.clone();
    assert_eq!(write_health(&url).await, ServingStatus::Serving);

    let writers: Vec<_> = (0..WRITERS)
        .map(|id| tokio::spawn(writer(url.clone(), id, rng.next())))
        .collect();
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("writer"));
    }
    assert!(!acked.is_empty(), "nothing fitted on the disk");

    // Writes are refused; health answers and says so; reads are served.
    wait_for_write_health(&url, ServingStatus::NotServing).await;
    let refused = within(
        "publish",
        client(&url).publish_version(publish_text("late", "no room", &[])),
    )
    .await;
    assert_status(refused, Code::Unavailable, "");
    check_reads(&url, &acked, variant == Variant::StorageFails).await;

    let server = match variant {
        Variant::Resume => {
            std::fs::remove_file(&filler).expect("free space");
            acked.push(wait_for_write(&url, "after/resume").await);
            wait_for_write_health(&url, ServingStatus::Serving).await;
            check_reads(&url, &acked, false).await;
            server
        }
        Variant::StopWhileFull => {
            stop(server);
            check_sound(&data_dir);
            std::fs::remove_file(&filler).expect("free space");
            let server = start(&data_dir, min_free);
            acked.push(wait_for_write(&server.url, "after/restart").await);
            server
        }
        Variant::StorageFails => {
            std::fs::remove_file(&filler).expect("free space");
            let mut server = server;
            let status = wait_with_timeout(&mut server.child, Duration::from_secs(60));
            let log = server.stderr.lock().unwrap().clone();
            assert!(!status.success(), "exits non-zero: {status:?}");
            assert!(log.contains("restart the server"), "{log}");
            drop(server);
            check_sound(&data_dir);
            let server = start(&data_dir, min_free);
            acked.push(wait_for_write(&server.url, "after/restart").await);
            server
        }
    };
    stop(server);
    check_sound(&data_dir);

    // Everything acknowledged is there after a restart, and the ledger
    // verifies.
    let server = start(&data_dir, min_free);
    check_reads(&server.url, &acked, false).await;
    let report = within(
        "verify_audit",
        client(&server.url).verify_audit(pb::VerifyAuditRequest::default()),
    )
    .await
    .expect("verify_audit")
    .into_inner();
    assert!(report.intact, "{:?}", report.problems);
    stop(server);
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_serves_reads_and_recovers() {
    let seed = seed_from_env("FULL_DISK_SEED");
    eprintln!("FULL_DISK_SEED={seed}");
    let mut rng = Rng::new(seed);
    for run in 0..RUNS {
        one_run(run, rng.next()).await;
    }
}
