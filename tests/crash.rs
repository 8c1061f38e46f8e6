//! Crash safety: the real server binary is killed with SIGKILL at random
//! moments while publishers and promoters write, and restarted on the same
//! data directory. After every restart:
//!
//! - every acknowledged publish is readable with the same digest, revision
//!   and content, and `latest` is the newest version;
//! - every acknowledged label move is in the label's history with its
//!   revision and target; histories are strictly ordered by revision;
//! - every label target is an existing version with that version's digest;
//! - the change log replayed from revision 1 is dense (1, 2, ... head) and
//!   agrees with the versions and label histories both ways: no record
//!   without its change, no change without its record;
//! - the audit ledger verifies;
//! - a watcher that resumes from its last delivered revision + 1 after each
//!   restart sees strictly increasing revisions, never one twice, only
//!   changes that survived the crash, and in the end exactly the moves of
//!   its label, including every acknowledged one.
//!
//! `PROMPTREG_CRASH_CYCLES` sets the number of kill/restart cycles (default
//! 20); `PROMPTREG_CRASH_SEED` replays the random kill moments of a run
//! (the seed is printed). `scripts/crash-soak.sh` runs hundreds of cycles.

mod support;

use promptreg::grpc::pb::{self, watch_response::Event};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::rng::Rng;
use support::{publish_text, Client, ServerProcess};
use tonic::Code;

/// Generous: a loaded 2-core machine is slow, but what never comes must
/// still fail the test.
const PATIENCE: Duration = Duration::from_secs(60);
const SHARED: &str = "crash/shared";
/// Versions of SHARED the promoters move labels between.
const SHARED_VERSIONS: u64 = 5;
const PUBLISHERS: usize = 2;
const PROMOTERS: usize = 2;
const PROMPTS_PER_PUBLISHER: usize = 3;
/// The label the watcher follows (owned by promoter 0).
const WATCHED: &str = "l0";

#[derive(Debug, Clone)]
struct AckedPublish {
    name: String,
    version: u64,
    digest: String,
    revision: u64,
    template: String,
}

#[derive(Debug, Clone)]
struct AckedMove {
    name: String,
    label: String,
    revision: u64,
    /// 0 when the move removed the label.
    to_version: u64,
    what: &'static str,
}

/// What the watcher has seen, across all its streams.
#[derive(Debug, Default)]
struct WatcherState {
    /// The last revision delivered (batch, complete snapshot or progress).
    last: u64,
    /// The revision of the first snapshot: moves after it must all arrive.
    snapshot: Option<u64>,
    /// Revision -> target of every move of WATCHED it received.
    delivered: BTreeMap<u64, u64>,
    streams: u64,
}

/// Everything the writers and the watcher record, shared with the checker.
#[derive(Default)]
struct Ledger {
    publishes: Mutex<Vec<AckedPublish>>,
    moves: Mutex<Vec<AckedMove>>,
    watcher: Mutex<WatcherState>,
    /// Broken guarantees noticed while running; checked after every cycle.
    violations: Mutex<Vec<String>>,
    /// Errors the writers got, by code (expected: connection errors while
    /// the server is down, FAILED_PRECONDITION for rollbacks with nowhere
    /// to go, NOT_FOUND for a rollback or removal of a label never set).
    errors: Mutex<BTreeMap<String, u64>>,
    stop: AtomicBool,
    /// Writers wait while the checker reads everything back, so that the
    /// store grows only while the server is being killed.
    paused: AtomicBool,
}

impl Ledger {
    /// Waits while paused; false once the test stops.
    async fn keep_going(&self) -> bool {
        while self.paused.load(Ordering::Relaxed) && !self.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        !self.stop.load(Ordering::Relaxed)
    }

    fn violation(&self, text: String) {
        eprintln!("VIOLATION: {text}");
        self.violations.lock().unwrap().push(text);
    }

    fn error(&self, what: &str, status: &tonic::Status) {
        let key = format!("{what} {:?}", status.code());
        *self.errors.lock().unwrap().entry(key).or_default() += 1;
        // Losing the connection to a killed server is expected; a refusal
        // of a well-formed request, or an internal error, is not.
        let expected = matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
        ) || (status.code() == Code::FailedPrecondition && what != "publish")
            || (status.code() == Code::NotFound && (what == "remove" || what == "rollback"));
        let transport = status.message().contains("transport")
            || status.message().contains("h2 protocol")
            || status.message().contains("connection")
            || status.message().contains("shutting down")
            || status.message().contains("broken pipe")
            || status.message().contains("reset")
            || status.message().contains("closed");
        if !expected || (status.code() == Code::Unknown && !transport) {
            self.violation(format!("{what} failed unexpectedly: {status:?}"));
        }
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// `promptreg serve` at a fixed address, retrying while the address or the
/// data directory is still held by the server that was just killed.
fn start_server(data_dir: &Path, addr: &str) -> ServerProcess {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match ServerProcess::start_at(data_dir, addr, &["--progress-interval", "1s"]) {
            Ok(server) => return server,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(log) => panic!("server did not start on {addr}; stderr:\n{log}"),
        }
    }
}

/// A client on its own connection that reconnects by itself after a
/// restart (requests fail with UNAVAILABLE while the server is down).
fn client(url: &str) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .expect("url")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect_lazy();
    support::client_with(channel, support::token_for(url).as_deref())
}

/// Publishes new content to its prompts in a loop, recording every answer.
async fn publisher(url: String, id: usize, ledger: Arc<Ledger>) {
    let mut client = client(&url);
    let mut last_revision = 0;
    let mut n = 0u64;
    while ledger.keep_going().await {
        n += 1;
        let name = format!("crash/pub{id}/p{}", n % PROMPTS_PER_PUBLISHER as u64);
        let template = format!("publisher {id} writes {{{{what}}}} #{n}");
        match client
            .publish_version(publish_text(&name, &template, &["what"]))
            .await
        {
            Ok(answer) => {
                // Keep the store small enough to check after every kill.
                tokio::time::sleep(Duration::from_millis(20 + n * 7919 % 60)).await;
                let answer = answer.into_inner();
                if !answer.created {
                    ledger.violation(format!("new content was not created: {answer:?}"));
                }
                if answer.revision <= last_revision {
                    ledger.violation(format!(
                        "publisher {id}: acknowledged revision {} after {last_revision}: a revision was reused",
                        answer.revision
                    ));
                }
                last_revision = answer.revision;
                ledger.publishes.lock().unwrap().push(AckedPublish {
                    name,
                    version: answer.version,
                    digest: answer.digest,
                    revision: answer.revision,
                    template,
                });
            }
            Err(status) => {
                ledger.error("publish", &status);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Moves its own labels of SHARED: promote (sometimes with compare-and-set),
/// roll back, remove; records every acknowledged move.
async fn promoter(url: String, id: usize, seed: u64, ledger: Arc<Ledger>) {
    let mut client = client(&url);
    let mut rng = Rng::new(seed | 1);
    let mut last_revision = 0;
    let labels = [format!("l{}", 2 * id), format!("l{}", 2 * id + 1)];
    let mut known: BTreeMap<String, u64> = BTreeMap::new();
    while ledger.keep_going().await {
        let label = labels[rng.below(2) as usize].clone();
        let dice = rng.below(10);
        let (what, answer) = if dice < 7 {
            let version = rng.below(SHARED_VERSIONS) + 1;
            let expected = if rng.below(3) == 0 {
                Some(known.get(&label).copied().unwrap_or(0))
            } else {
                None
            };
            let mut request = support::set_label(SHARED, &label, version, expected);
            request.actor = format!("promoter-{id}");
            ("set_label", client.set_label(request).await)
        } else if dice < 9 {
            let mut request = support::rollback(SHARED, &label, None);
            request.actor = format!("promoter-{id}");
            ("rollback", client.rollback(request).await)
        } else {
            let request = pb::RemoveLabelRequest {
                name: SHARED.into(),
                label: label.clone(),
                actor: format!("promoter-{id}"),
                reason: "crash test".into(),
            };
            ("remove", client.remove_label(request).await)
        };
        match answer {
            Ok(answer) => {
                tokio::time::sleep(Duration::from_millis(20 + rng.below(60))).await;
                let answer = answer.into_inner();
                known.insert(label.clone(), answer.to_version);
                if !answer.changed {
                    continue;
                }
                if answer.revision <= last_revision {
                    ledger.violation(format!(
                        "promoter {id}: acknowledged revision {} after {last_revision}: a revision was reused",
                        answer.revision
                    ));
                }
                last_revision = answer.revision;
                ledger.moves.lock().unwrap().push(AckedMove {
                    name: SHARED.into(),
                    label,
                    revision: answer.revision,
                    to_version: answer.to_version,
                    what,
                });
            }
            Err(status) => {
                ledger.error(what, &status);
                if status.code() == Code::FailedPrecondition {
                    // The label is not where we thought (a move we did not
                    // see acknowledged happened): forget what we knew.
                    known.remove(&label);
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// Follows WATCHED of SHARED with one stream at a time; after any error it
/// resumes from the last delivered revision + 1.
async fn watcher(url: String, ledger: Arc<Ledger>) {
    let mut client = client(&url);
    while !ledger.stop.load(Ordering::Relaxed) {
        let start = {
            let state = ledger.watcher.lock().unwrap();
            if state.snapshot.is_none() {
                0
            } else {
                state.last + 1
            }
        };
        let request = pb::WatchRequest {
            names: vec![SHARED.into()],
            labels: vec![WATCHED.into()],
            start_revision: start,
            ..Default::default()
        };
        let mut stream = match client.watch(request).await {
            Ok(stream) => stream.into_inner(),
            Err(status) => {
                if status.code() == Code::OutOfRange {
                    ledger.violation(format!("resuming at {start} was refused: {status:?}"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        ledger.watcher.lock().unwrap().streams += 1;
        loop {
            let message = match stream.message().await {
                Ok(Some(message)) => message,
                Ok(None) => {
                    ledger.violation("a watch stream ended without a status".into());
                    break;
                }
                Err(status) => {
                    if !matches!(
                        status.code(),
                        Code::Unavailable | Code::Unknown | Code::Cancelled
                    ) {
                        ledger.violation(format!("the watch stream ended with {status:?}"));
                    }
                    break;
                }
            };
            let mut state = ledger.watcher.lock().unwrap();
            match message.event {
                Some(Event::Created(created)) => {
                    if start > 0 && created.compact_revision >= start {
                        ledger.violation(format!("resume at {start} is below {created:?}"));
                    }
                    if start > 0 && created.revision < start - 1 {
                        ledger.violation(format!(
                            "the watcher was sent revision {} but the restarted server is at {created:?}",
                            start - 1
                        ));
                    }
                }
                Some(Event::Snapshot(snapshot)) => {
                    if start != 0 {
                        ledger.violation(format!("a snapshot when resuming at {start}"));
                    }
                    if snapshot.complete {
                        state.snapshot = Some(snapshot.revision);
                        state.last = snapshot.revision;
                    }
                }
                Some(Event::Changes(batch)) => {
                    if batch.revision <= state.last {
                        ledger.violation(format!(
                            "revision {} delivered after {} (resumed at {start})",
                            batch.revision, state.last
                        ));
                    }
                    if state.delivered.contains_key(&batch.revision) {
                        ledger.violation(format!("revision {} delivered twice", batch.revision));
                    }
                    for change in &batch.changes {
                        match &change.kind {
                            Some(pb::change::Kind::LabelMoved(moved))
                                if moved.name == SHARED && moved.label == WATCHED =>
                            {
                                if moved.revision != batch.revision {
                                    ledger.violation(format!(
                                        "a move of revision {} in batch {}",
                                        moved.revision, batch.revision
                                    ));
                                }
                                state.delivered.insert(batch.revision, moved.to_version);
                            }
                            other => ledger
                                .violation(format!("a change the selector excludes: {other:?}")),
                        }
                    }
                    state.last = state.last.max(batch.revision);
                }
                Some(Event::Progress(progress)) => {
                    if progress.revision < state.last {
                        ledger.violation(format!(
                            "progress {} after revision {} was delivered",
                            progress.revision, state.last
                        ));
                    }
                    state.last = state.last.max(progress.revision);
                }
                None => ledger.violation("a watch message without an event".into()),
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every page of a paged listing.
async fn all_pages<T, F, Fut>(mut page: F) -> Result<Vec<T>, tonic::Status>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let (mut got, next) = page(token).await?;
        items.append(&mut got);
        if next.is_empty() {
            return Ok(items);
        }
        token = next;
    }
}

async fn versions_of(client: &Client, name: &str) -> Result<Vec<pb::Version>, tonic::Status> {
    all_pages(|token| {
        let mut client = client.clone();
        let name = name.to_string();
        async move {
            let page = client
                .list_versions(pb::ListVersionsRequest {
                    name,
                    page_size: 1000,
                    page_token: token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            Ok((page.versions, page.next_page_token))
        }
    })
    .await
}

/// Every move of a label, newest first; empty when it was never set.
async fn history_of(
    client: &Client,
    name: &str,
    label: &str,
) -> Result<Vec<pb::LabelMove>, tonic::Status> {
    let moves = all_pages(|token| {
        let mut client = client.clone();
        let (name, label) = (name.to_string(), label.to_string());
        async move {
            let page = client
                .label_history(pb::LabelHistoryRequest {
                    name,
                    label,
                    page_size: 1000,
                    page_token: token,
                })
                .await?
                .into_inner();
            Ok((page.moves, page.next_page_token))
        }
    })
    .await;
    match moves {
        Err(status) if status.code() == Code::NotFound => Ok(Vec::new()),
        other => other,
    }
}

/// Runs `read` for every key at once (the reads are independent) and
/// returns the answers with their keys.
async fn in_parallel<K, T, F, Fut>(keys: Vec<K>, read: F) -> Vec<(K, T)>
where
    K: Clone + Send + 'static,
    T: Send + 'static,
    F: Fn(K) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let mut reads = tokio::task::JoinSet::new();
    for key in keys {
        let answer = read(key.clone());
        reads.spawn(async move { (key, answer.await) });
    }
    let mut answers = Vec::new();
    while let Some(answer) = reads.join_next().await {
        answers.push(answer.expect("read task"));
    }
    answers
}

/// The registry as read back after a restart.
struct Observed {
    /// prompt -> version -> (digest, revision)
    versions: BTreeMap<String, BTreeMap<u64, (String, u64)>>,
    /// (prompt, label) -> revision -> to_version, from LabelHistory
    history: BTreeMap<(String, String), BTreeMap<u64, u64>>,
}

/// Reads everything back and checks it against what was acknowledged.
/// Returns the number of problems found (each printed).
async fn check(url: &str, ledger: &Ledger, checked_publishes: &mut usize) -> Vec<String> {
    let mut problems = Vec::new();
    let mut client = client(url);
    let publishes = ledger.publishes.lock().unwrap().clone();
    let moves = ledger.moves.lock().unwrap().clone();
    let (watcher_delivered, watcher_last) = {
        let state = ledger.watcher.lock().unwrap();
        (state.delivered.clone(), state.last)
    };

    // 1. The change log from revision 1 up to the head when the watch opens.
    let mut stream = client
        .watch(pb::WatchRequest {
            include_versions: true,
            start_revision: 1,
            ..Default::default()
        })
        .await
        .expect("replay watch opens")
        .into_inner();
    let mut head = None;
    let mut log_versions: BTreeMap<(String, u64), (String, u64)> = BTreeMap::new();
    let mut log_moves: BTreeMap<(String, String, u64), u64> = BTreeMap::new();
    let mut expected_revision = 1;
    loop {
        if head.is_some_and(|h| expected_revision > h) {
            break;
        }
        let message = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("replay message within the timeout")
            .expect("replay stream healthy")
            .expect("replay stream open");
        match message.event.expect("event") {
            Event::Created(created) => {
                assert_eq!(created.compact_revision, 0, "nothing should be compacted");
                head = Some(created.revision);
            }
            Event::Changes(batch) => {
                if batch.revision != expected_revision {
                    problems.push(format!(
                        "change log: revision {} follows {} (gap or disorder)",
                        batch.revision,
                        expected_revision - 1
                    ));
                }
                expected_revision = batch.revision + 1;
                if batch.changes.is_empty() {
                    problems.push(format!(
                        "change log: revision {} has no change",
                        batch.revision
                    ));
                }
                for change in batch.changes {
                    match change.kind.expect("change") {
                        pb::change::Kind::VersionPublished(v) => {
                            log_versions.insert((v.name, v.version), (v.digest, batch.revision));
                        }
                        pb::change::Kind::LabelMoved(m) => {
                            log_moves.insert((m.name, m.label, m.revision), m.to_version);
                        }
                    }
                }
            }
            Event::Progress(_) => {}
            Event::Snapshot(_) => problems.push("a snapshot in a replay from revision 1".into()),
        }
    }
    drop(stream);
    let head = head.expect("created");
    if watcher_last > head {
        problems.push(format!(
            "the watcher was sent revision {watcher_last}, the head is now {head}"
        ));
    }
    for acked in &publishes {
        if acked.revision > head {
            problems.push(format!(
                "head revision {head} is below acknowledged {acked:?}"
            ));
        }
    }

    // 2. Labels first, then versions and histories, so that everything a
    //    label names was written before the versions are read.
    let mut prompts: Vec<String> = (0..PUBLISHERS)
        .flat_map(|p| (0..PROMPTS_PER_PUBLISHER).map(move |k| format!("crash/pub{p}/p{k}")))
        .collect();
    prompts.push(SHARED.into());
    let mut labels: BTreeMap<String, Vec<pb::Label>> = BTreeMap::new();
    let read = in_parallel(prompts.clone(), |name| {
        let mut client = client.clone();
        async move { client.list_labels(pb::ListLabelsRequest { name }).await }
    })
    .await;
    for (name, answer) in read {
        match answer {
            Ok(answer) => {
                labels.insert(name, answer.into_inner().labels);
            }
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => problems.push(format!("ListLabels {name}: {status:?}")),
        }
    }
    let mut observed = Observed {
        versions: BTreeMap::new(),
        history: BTreeMap::new(),
    };
    let mut label_names: BTreeSet<(String, String)> = labels
        .iter()
        .flat_map(|(name, ls)| ls.iter().map(move |l| (name.clone(), l.label.clone())))
        .collect();
    for m in &moves {
        label_names.insert((m.name.clone(), m.label.clone()));
    }
    for (name, label, _) in log_moves.keys() {
        label_names.insert((name.clone(), label.clone()));
    }
    let (versions_read, histories_read) = tokio::join!(
        in_parallel(prompts.clone(), |name| {
            let client = client.clone();
            async move { versions_of(&client, &name).await }
        }),
        in_parallel(label_names.into_iter().collect(), |(name, label)| {
            let client = client.clone();
            async move { history_of(&client, &name, &label).await }
        }),
    );
    for (name, list) in versions_read {
        let list = match list {
            Ok(list) => list,
            Err(status) if status.code() == Code::NotFound => Vec::new(),
            Err(status) => {
                problems.push(format!("ListVersions {name}: {status:?}"));
                Vec::new()
            }
        };
        let versions = observed.versions.entry(name).or_default();
        for v in list {
            versions.insert(v.version, (v.digest, v.revision));
        }
    }
    for ((name, label), moves_read) in histories_read {
        let moves_read = match moves_read {
            Ok(moves) => moves,
            Err(status) => {
                problems.push(format!("LabelHistory {name}:{label}: {status:?}"));
                Vec::new()
            }
        };
        if moves_read
            .windows(2)
            .any(|w| w[0].revision <= w[1].revision)
        {
            problems.push(format!(
                "history of {name}:{label} is not strictly ordered by revision: {:?}",
                moves_read.iter().map(|m| m.revision).collect::<Vec<_>>()
            ));
        }
        let history = observed.history.entry((name, label)).or_default();
        for m in moves_read {
            history.insert(m.revision, m.to_version);
        }
    }

    // 3. Acknowledged publishes: same digest and revision; new ones also
    //    by digest with their content.
    for acked in &publishes {
        match observed
            .versions
            .get(&acked.name)
            .and_then(|v| v.get(&acked.version))
        {
            Some((digest, revision)) if *digest == acked.digest && *revision == acked.revision => {}
            other => problems.push(format!(
                "acknowledged publish {acked:?} reads back as {other:?}"
            )),
        }
    }
    let new_ones = publishes[(*checked_publishes).min(publishes.len())..].to_vec();
    let read = in_parallel(new_ones, |acked| {
        let mut client = client.clone();
        async move {
            client
                .get_version(pb::GetVersionRequest {
                    name: acked.name,
                    selector: Some(pb::get_version_request::Selector::Digest(acked.digest)),
                    ..Default::default()
                })
                .await
        }
    })
    .await;
    for (acked, got) in read {
        match got.map(|a| a.into_inner().version) {
            Ok(Some(v))
                if v.version == acked.version && v.template == support::text(&acked.template) => {}
            other => problems.push(format!(
                "acknowledged publish {acked:?} by digest: {other:?}"
            )),
        }
    }
    *checked_publishes = publishes.len();

    // 4. Acknowledged moves are in the history with their target.
    for acked in &moves {
        let found = observed
            .history
            .get(&(acked.name.clone(), acked.label.clone()))
            .and_then(|h| h.get(&acked.revision));
        if found != Some(&acked.to_version) {
            problems.push(format!(
                "acknowledged {} {acked:?} is in the history as {found:?}",
                acked.what
            ));
        }
    }

    // 5. Label targets exist with their digest; `latest` is the newest
    //    version; the current target is the newest move in the history.
    for (name, ls) in &labels {
        let versions = observed.versions.get(name).cloned().unwrap_or_default();
        for label in ls {
            match versions.get(&label.version) {
                Some((digest, _)) if *digest == label.digest => {}
                other => problems.push(format!(
                    "label {name}:{} points to v{} ({}), which reads as {other:?}",
                    label.label, label.version, label.digest
                )),
            }
            if label.label == "latest" {
                // Published in the same revision that moved `latest`, and
                // nothing newer existed at that revision.
                let published_at = versions.get(&label.version).map(|(_, r)| *r);
                let newer = versions
                    .iter()
                    .find(|(v, (_, r))| **v > label.version && *r <= label.revision);
                if published_at != Some(label.revision) || newer.is_some() {
                    problems.push(format!(
                        "{name}: latest is v{} at revision {}, but v{} was published at {published_at:?} (newer: {newer:?})",
                        label.version, label.revision, label.version
                    ));
                }
            }
            let moved = observed
                .history
                .get(&(name.clone(), label.label.clone()))
                .and_then(|h| h.get(&label.revision));
            if moved != Some(&label.version) {
                problems.push(format!(
                    "label {name}:{} is v{} since revision {}, its history has {moved:?} there",
                    label.label, label.version, label.revision
                ));
            }
        }
    }

    // 6. The change log and the state agree, up to the replayed head.
    for ((name, version), (digest, revision)) in &log_versions {
        match observed.versions.get(name).and_then(|v| v.get(version)) {
            Some((d, r)) if d == digest && r == revision => {}
            other => problems.push(format!(
                "change log: {name} v{version} published at {revision} ({digest}) reads as {other:?}"
            )),
        }
    }
    for (name, versions) in &observed.versions {
        for (version, (_, revision)) in versions {
            if *revision <= head && !log_versions.contains_key(&(name.clone(), *version)) {
                problems.push(format!(
                    "{name} v{version} (revision {revision}) has no change-log record"
                ));
            }
        }
    }
    for ((name, label, revision), to) in &log_moves {
        let found = observed
            .history
            .get(&(name.clone(), label.clone()))
            .and_then(|h| h.get(revision));
        if found != Some(to) {
            problems.push(format!(
                "change log: move of {name}:{label} at {revision} to v{to} is in the history as {found:?}"
            ));
        }
    }
    for ((name, label), history) in &observed.history {
        for (revision, to) in history {
            if *revision <= head
                && log_moves.get(&(name.clone(), label.clone(), *revision)) != Some(to)
            {
                problems.push(format!(
                    "history of {name}:{label} at {revision} (v{to}) has no matching change-log record"
                ));
            }
        }
    }

    // 7. What the watcher was sent survived: watchers only see durable
    //    changes.
    let watched = observed
        .history
        .get(&(SHARED.to_string(), WATCHED.to_string()))
        .cloned()
        .unwrap_or_default();
    for (revision, to) in &watcher_delivered {
        if watched.get(revision) != Some(to) {
            problems.push(format!(
                "the watcher was sent {WATCHED} -> v{to} at revision {revision}, the history has {:?}",
                watched.get(revision)
            ));
        }
    }

    // 8. The audit ledger.
    match client
        .verify_audit(pb::VerifyAuditRequest { checkpoint: None })
        .await
    {
        Ok(report) => {
            let report = report.into_inner();
            if !report.intact {
                problems.push(format!("the audit ledger does not verify: {report:?}"));
            }
        }
        Err(status) => problems.push(format!("VerifyAudit: {status:?}")),
    }
    problems
}

async fn spawn_server(data_dir: PathBuf, addr: String) -> ServerProcess {
    tokio::task::spawn_blocking(move || start_server(&data_dir, &addr))
        .await
        .expect("start task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let cycles: u64 = std::env::var("PROMPTREG_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed = support::rng::seed_from_env("PROMPTREG_CRASH_SEED");
    println!("crash: {cycles} cycles, seed {seed} (PROMPTREG_CRASH_SEED={seed} replays the kill moments)");
    let mut rng = Rng::new(seed | 1);
    let temp = tempfile::tempdir().expect("temp dir");
    let data_dir = temp.path().join("data");
    let addr = format!("127.0.0.1:{}", free_port());
    let url = format!("http://{addr}");
    let started = Instant::now();

    let mut server = spawn_server(data_dir.clone(), addr.clone()).await;
    {
        let mut client = client(&url);
        for v in 1..=SHARED_VERSIONS {
            let answer = client
                .publish_version(publish_text(SHARED, &format!("shared v{v}"), &[]))
                .await
                .expect("seed publish")
                .into_inner();
            assert_eq!(answer.version, v);
        }
    }

    let ledger = Arc::new(Ledger::default());
    let mut tasks = Vec::new();
    for id in 0..PUBLISHERS {
        tasks.push(tokio::spawn(publisher(url.clone(), id, ledger.clone())));
    }
    for id in 0..PROMOTERS {
        tasks.push(tokio::spawn(promoter(
            url.clone(),
            id,
            rng.next(),
            ledger.clone(),
        )));
    }
    tasks.push(tokio::spawn(watcher(url.clone(), ledger.clone())));

    let mut checked_publishes = 0;
    for cycle in 1..=cycles {
        // Let the writers make progress, then kill at a random moment.
        let acks_before =
            ledger.publishes.lock().unwrap().len() + ledger.moves.lock().unwrap().len();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let acks = ledger.publishes.lock().unwrap().len() + ledger.moves.lock().unwrap().len();
            if acks > acks_before || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.below(600))).await;
        tokio::task::spawn_blocking(move || server.kill())
            .await
            .expect("kill");
        let acked = ledger.publishes.lock().unwrap().len() + ledger.moves.lock().unwrap().len();
        // Sometimes restart at once, sometimes after the writers have been
        // refused for a while.
        tokio::time::sleep(Duration::from_millis(rng.below(200))).await;
        let restarting = Instant::now();
        server = spawn_server(data_dir.clone(), addr.clone()).await;
        let restart_time = restarting.elapsed();

        ledger.paused.store(true, Ordering::Relaxed);
        let checking = Instant::now();
        let problems = check(&url, &ledger, &mut checked_publishes).await;
        let check_time = checking.elapsed();
        ledger.paused.store(false, Ordering::Relaxed);
        let violations = std::mem::take(&mut *ledger.violations.lock().unwrap());
        let watcher = {
            let w = ledger.watcher.lock().unwrap();
            format!("watcher at {} after {} streams", w.last, w.streams)
        };
        println!(
            "cycle {cycle}/{cycles}: {acked} writes acknowledged before the kill; restart {:.1} s, \
             check {:.1} s; {watcher}; {:.1} s",
            restart_time.as_secs_f64(),
            check_time.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        assert!(
            problems.is_empty() && violations.is_empty(),
            "after kill {cycle} (seed {seed}):\n{}\nserver stderr:\n{}",
            problems
                .iter()
                .chain(&violations)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n"),
            server.stderr.lock().unwrap()
        );
    }

    // Stop writing; the watcher must catch up with everything and have
    // received exactly the moves of its label since its first snapshot.
    ledger.stop.store(true, Ordering::Relaxed);
    let (writers, watcher_task) = tasks.split_at(tasks.len() - 1);
    for task in writers {
        while !task.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut client = client(&url);
    let head = client
        .get_version(pb::GetVersionRequest {
            name: SHARED.into(),
            selector: Some(pb::get_version_request::Selector::Version(1)),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner()
        .revision;
    let deadline = Instant::now() + PATIENCE;
    while ledger.watcher.lock().unwrap().last < head {
        assert!(
            Instant::now() < deadline,
            "the watcher did not reach revision {head}: {:?}",
            ledger.watcher.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watcher_task[0].abort();
    let state = std::mem::take(&mut *ledger.watcher.lock().unwrap());
    let snapshot = state.snapshot.expect("the watcher took a snapshot");
    let history: BTreeMap<u64, u64> = history_of(&client, SHARED, WATCHED)
        .await
        .expect("history")
        .into_iter()
        .filter(|m| m.revision > snapshot && m.revision <= state.last)
        .map(|m| (m.revision, m.to_version))
        .collect();
    assert_eq!(
        state.delivered, history,
        "the watcher (resumed {} times) received other moves than the history holds after its snapshot at {snapshot}",
        state.streams - 1
    );
    let moves = ledger.moves.lock().unwrap().clone();
    let acked_watched: Vec<&AckedMove> = moves
        .iter()
        .filter(|m| m.label == WATCHED && m.revision > snapshot)
        .collect();
    for acked in &acked_watched {
        assert_eq!(
            state.delivered.get(&acked.revision),
            Some(&acked.to_version),
            "acknowledged {acked:?} never reached the watcher"
        );
    }
    let violations = ledger.violations.lock().unwrap().clone();
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    let publishes = ledger.publishes.lock().unwrap().len();
    println!(
        "crash: {cycles} kills survived in {:.1} s: {publishes} publishes and {} label moves acknowledged, \
         watcher received {} moves of {WATCHED} over {} streams; writer errors: {:?}",
        started.elapsed().as_secs_f64(),
        moves.len(),
        state.delivered.len(),
        state.streams,
        ledger.errors.lock().unwrap()
    );
    server.kill();
}
