//! Damage: one flipped byte in the files of a stopped store.
//!
//! A store of about 300 acknowledged revisions (publishes and label moves)
//! is built through the real server binary and stopped cleanly. Then, for
//! each trial, a copy of it gets one byte flipped at a random offset of a
//! random file of the data directory (sled's `db`, `conf`, `snap.*`, the
//! durable-head file, the lock file, ...), and:
//!
//! - `promptreg check` on the copy exits 0 (the store is really intact) or
//!   1 with a finding, never 101 and never with a panic message, and leaves
//!   the directory byte for byte as it was;
//! - `promptreg serve` on the copy either refuses to start with a clear
//!   message (a non-zero exit naming the problem; missing acknowledged
//!   writes point at `check` and `restore`), or serves every acknowledged
//!   write exactly: every version with its digest and content, every label
//!   at its target, and the head revision. Silently serving an older store
//!   is the failure this test is for.
//!
//! `PROMPTREG_DAMAGE_TRIALS` sets the number of trials (default 60);
//! `PROMPTREG_DAMAGE_SEED` replays a run (the seed is printed);
//! `PROMPTREG_DAMAGE_VERBOSE=1` prints what check and the server said.

mod support;

use promptreg::grpc::pb;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use support::rng::{seed_from_env, Rng};
use support::{binary, publish_text, set_label, Client, ServerProcess};

const PROMPTS: usize = 5;
const PUBLISHES_PER_PROMPT: u64 = 32;
const LABELS: [&str; 3] = ["production", "staging", "canary"];

/// What the server acknowledged.
#[derive(Debug, Default)]
struct Acked {
    /// (name, version) -> (digest, template).
    versions: BTreeMap<(String, u64), (String, String)>,
    /// (name, label) -> version.
    labels: BTreeMap<(String, String), u64>,
    head: u64,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn connect(url: &str) -> Client {
    support::connect(url).await
}

/// Publishes and moves labels, one acknowledged revision at a time.
async fn build(url: &str, rng: &mut Rng) -> Acked {
    let mut client = connect(url).await;
    let mut acked = Acked::default();
    for round in 1..=PUBLISHES_PER_PROMPT {
        for p in 0..PROMPTS {
            let name = format!("damage/p{p}");
            let template = format!("prompt {p} round {round}: {{{{what}}}} {}", rng.next());
            let answer = client
                .publish_version(publish_text(&name, &template, &["what"]))
                .await
                .expect("publish")
                .into_inner();
            assert!(answer.revision > acked.head, "{answer:?}");
            acked.head = answer.revision;
            acked
                .versions
                .insert((name.clone(), answer.version), (answer.digest, template));
            let label = rng.pick(&LABELS);
            let version = 1 + rng.below(answer.version);
            let moved = client
                .set_label(set_label(&name, label, version, None))
                .await
                .expect("set label")
                .into_inner();
            if moved.changed {
                assert!(moved.revision > acked.head, "{moved:?}");
                acked.head = moved.revision;
            }
            acked.labels.insert((name, label.to_string()), version);
        }
    }
    acked
}

/// Every way the served store differs from what was acknowledged.
async fn differences(url: &str, acked: &Acked) -> Vec<String> {
    let mut client = connect(url).await;
    let mut found = Vec::new();
    for ((name, number), (digest, template)) in &acked.versions {
        let got = client
            .get_version(pb::GetVersionRequest {
                name: name.clone(),
                selector: Some(pb::get_version_request::Selector::Version(*number)),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().version.unwrap_or_default());
        match got {
            Ok(v) if &v.digest == digest && v.template == support::text(template) => {}
            Ok(v) => found.push(format!("{name} v{number} is served as {v:?}")),
            Err(status) => found.push(format!("{name} v{number}: {status:?}")),
        }
    }
    for p in 0..PROMPTS {
        let name = format!("damage/p{p}");
        let labels = client
            .list_labels(pb::ListLabelsRequest { name: name.clone() })
            .await
            .map(|r| r.into_inner().labels);
        let labels = match labels {
            Ok(labels) => labels,
            Err(status) => {
                found.push(format!("labels of {name}: {status:?}"));
                continue;
            }
        };
        let served: BTreeMap<String, u64> = labels
            .iter()
            .filter(|l| LABELS.contains(&l.label.as_str()))
            .map(|l| (l.label.clone(), l.version))
            .collect();
        let wanted: BTreeMap<String, u64> = acked
            .labels
            .iter()
            .filter(|((n, _), _)| *n == name)
            .map(|((_, l), v)| (l.clone(), *v))
            .collect();
        if served != wanted {
            found.push(format!(
                "labels of {name}: served {served:?}, acknowledged {wanted:?}"
            ));
        }
    }
    match head_revision(&mut client).await {
        Ok(head) if head == acked.head => {}
        Ok(head) => found.push(format!(
            "the head revision is {head}, acknowledged {}",
            acked.head
        )),
        Err(status) => found.push(format!("the head revision: {status:?}")),
    }
    found
}

/// The head revision, as a new watch reports it.
async fn head_revision(client: &mut Client) -> Result<u64, tonic::Status> {
    let mut stream = client
        .watch(pb::WatchRequest::default())
        .await?
        .into_inner();
    match stream.message().await? {
        Some(pb::WatchResponse {
            event: Some(pb::watch_response::Event::Created(created)),
        }) => Ok(created.revision),
        other => Err(tonic::Status::internal(format!(
            "first watch message: {other:?}"
        ))),
    }
}

/// Every file under `dir` with its contents, by path relative to `dir`.
fn contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let entry = entry.expect("entry");
            let path = entry.path();
            let relative = path.strip_prefix(root).expect("relative").to_path_buf();
            if entry.file_type().expect("type").is_dir() {
                out.insert(relative.join(""), Vec::new());
                walk(root, &path, out);
            } else {
                out.insert(relative, std::fs::read(&path).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}

/// Flips one byte of a random non-empty file under `dir`; says which kind
/// of file (`sled/snap.*`, `keys/*`, `DURABLE_HEAD`, ...) and where.
fn flip_one_byte(dir: &Path, rng: &mut Rng) -> (String, String) {
    let files: Vec<(PathBuf, usize)> = contents(dir)
        .into_iter()
        .filter(|(_, bytes)| !bytes.is_empty())
        // The admin token is the client's credential, which the server
        // never reads: damaging it only locks the test out.
        .filter(|(path, _)| path != Path::new("admin.token"))
        .map(|(path, bytes)| (path, bytes.len()))
        .collect();
    // The main file holds the log that sled's recovery truncates: half the
    // trials damage it, the other half any file.
    let (file, len) = match files.iter().find(|(f, _)| f == Path::new("sled/db")) {
        Some(db) if rng.chance(2) => db.clone(),
        _ => rng.pick(&files),
    };
    let offset = rng.index(len);
    let mask = 1 + rng.below(255) as u8;
    let path = dir.join(&file);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[offset] ^= mask;
    std::fs::write(&path, &bytes).expect("write");
    let name = file.display().to_string();
    let kind = match name.split_once('/') {
        Some(("keys", _)) => "keys/*".to_string(),
        Some(("sled", rest)) if rest.starts_with("snap.") => "sled/snap.*".to_string(),
        _ => name.clone(),
    };
    (
        kind,
        format!("{name} (of {len} bytes) at offset {offset} xor {mask:#04x}"),
    )
}

/// Runs `promptreg check --output json` on `dir`.
fn check(dir: &Path) -> std::process::Output {
    Command::new(binary())
        .args(["check", "--output", "json", "--data-dir"])
        .arg(dir)
        .output()
        .expect("run promptreg check")
}

/// Whether `check` said the store is sound, after asserting that it behaved.
#[track_caller]
fn checked_sound(dir: &Path, what: &str) -> bool {
    let before = contents(dir);
    let out = check(dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stderr.contains("panicked") && !stdout.contains("panicked"),
        "{what}: check panicked:\n{stderr}"
    );
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{what}: check exited {:?}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let after = contents(dir);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "{what}: check changed the file list"
    );
    for (path, bytes) in &before {
        assert!(
            after[path] == *bytes,
            "{what}: check changed {}",
            path.display()
        );
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: check printed no JSON ({e}): {stdout} {stderr}"));
    let sound = json["sound"].as_bool().expect("sound");
    assert_eq!(
        sound,
        out.status.code() == Some(0),
        "{what}: exit code and verdict disagree: {json}"
    );
    if !sound {
        assert!(
            json["problems"].as_array().is_some_and(|p| !p.is_empty()),
            "{what}: unsound without a finding: {json}"
        );
    }
    if verbose() {
        eprintln!("{what}: check: {}", json["problems"]);
    }
    sound
}

/// `PROMPTREG_DAMAGE_VERBOSE=1` prints what check and the server said in
/// every trial.
fn verbose() -> bool {
    std::env::var_os("PROMPTREG_DAMAGE_VERBOSE").is_some()
}

#[test]
fn a_flipped_byte_is_refused_or_harmless_and_check_says_which() {
    let seed = seed_from_env("PROMPTREG_DAMAGE_SEED");
    let trials: u64 = std::env::var("PROMPTREG_DAMAGE_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    eprintln!("damage test: PROMPTREG_DAMAGE_SEED={seed} PROMPTREG_DAMAGE_TRIALS={trials}");
    let mut rng = Rng::new(seed);
    let runtime = runtime();
    let temp = tempfile::tempdir().expect("temp dir");
    let store = temp.path().join("store");

    let server = ServerProcess::start(&store, &[]);
    let acked = runtime.block_on(build(&server.url, &mut rng));
    assert!(server.terminate().success());
    assert!(acked.head >= 280, "head {}", acked.head);

    // The intact store: sound, served exactly, and left as it was.
    let intact = temp.path().join("intact");
    copy_tree(&store, &intact);
    assert!(checked_sound(&intact, "the intact store"));
    let server = ServerProcess::start(&intact, &[]);
    let found = runtime.block_on(differences(&server.url, &acked));
    assert!(found.is_empty(), "the intact store: {found:#?}");
    server.kill();

    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut failures = Vec::new();
    for trial in 0..trials {
        let copy = temp.path().join(format!("trial{trial}"));
        copy_tree(&store, &copy);
        let (kind, damage) = flip_one_byte(&copy, &mut rng);
        let what = format!("trial {trial} (seed {seed}): {damage}");
        let sound = checked_sound(&copy, &what);
        match ServerProcess::start_or_exit(&copy, &[]) {
            Ok(server) => {
                let found = runtime.block_on(differences(&server.url, &acked));
                server.kill();
                if found.is_empty() {
                    let check = if sound { "sound" } else { "problems" };
                    *outcomes
                        .entry(format!("{kind}: served exactly, check {check}"))
                        .or_default() += 1;
                } else {
                    let more = found.len().saturating_sub(5);
                    failures.push(format!(
                        "{what}: served differently ({} differences, {more} not shown): {:#?}",
                        found.len(),
                        &found[..found.len() - more]
                    ));
                    continue;
                }
            }
            Err((status, log)) => {
                if verbose() {
                    eprintln!("{what}: serve refused ({status:?}): {}", log.trim());
                }
                *outcomes.entry(format!("{kind}: refused")).or_default() += 1;
                let clear = status.is_some_and(|s| !s.success() && s.code() != Some(101))
                    && log.contains("error")
                    && !log.contains("panicked");
                // Damage to the store's own files is named as such, with
                // the way out.
                let store_file = kind.starts_with("sled/") || kind == "DURABLE_HEAD";
                let points_the_way = !(store_file
                    || log.contains("acknowledged writes are missing"))
                    || (log.contains("is damaged")
                        && log.contains("promptreg check")
                        && log.contains("promptreg restore"));
                if !clear || !points_the_way {
                    failures.push(format!("{what}: refused unclearly ({status:?}):\n{log}"));
                }
                if sound {
                    failures.push(format!(
                        "{what}: check said sound but the server refused:\n{log}"
                    ));
                }
            }
        }
        std::fs::remove_dir_all(&copy).expect("remove the copy");
    }
    eprintln!("damage test: {outcomes:#?}");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `check` does not read a directory a running server is writing: it says
/// so, and a check after the server stopped finds the store sound.
#[test]
fn check_refuses_a_directory_a_running_server_holds() {
    let temp = tempfile::tempdir().expect("temp dir");
    let store = temp.path().join("store");
    let server = ServerProcess::start(&store, &[]);
    let out = check(&store);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stderr.contains("in use by a running promptreg server")
            && stderr.contains(&format!("pid {}", server.child.id()))
            && stderr.contains("stop the server first"),
        "{stderr}"
    );
    assert!(server.terminate().success());
    assert!(checked_sound(&store, "the stopped store"));
}
