//! `promptreg watch`: a resilient watcher, and with `--ack` a minimal agent.
//!
//! It keeps the last revision it has fully seen; after any break it
//! reconnects with exponential backoff and full jitter and resumes from that
//! revision + 1, so it prints every change once, with no gap. When its
//! revision has been compacted away it takes a fresh snapshot.
//!
//! As an agent (`--ack`) it applies a version only when the content hashes
//! to the digest and the signature verifies with the server's published
//! key, exactly as `promptreg verify` checks; it prints one line per
//! version applied or rejected and acknowledges the outcome.

use super::client::{connect, Failure};
use super::json::{emit, kind_name, to_json, version_or_null};
use super::text::short_digest;
use super::{exit, WatchArgs};
use crate::grpc::access::Client;
use crate::grpc::pb::{self, watch_response::Event};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;
use tonic::Code;

/// What an agent runs: (prompt, label) → (version, digest, revision).
type Applied = BTreeMap<(String, String), (u64, String, u64)>;

/// One line of `watch --output json`, its kind under `type`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Line<'a> {
    Snapshot {
        revision: u64,
        name: &'a str,
        label: &'a str,
        version: u64,
        digest: &'a str,
    },
    LabelMoved {
        revision: u64,
        kind: &'static str,
        name: &'a str,
        label: &'a str,
        /// The version the label now points to (`to_version`), `null` when removed.
        version: Option<u64>,
        from_version: Option<u64>,
        to_version: Option<u64>,
        digest: &'a str,
        actor: &'a str,
        reason: &'a str,
    },
    VersionPublished {
        revision: u64,
        name: &'a str,
        version: u64,
        digest: &'a str,
        author: &'a str,
    },
    Progress {
        revision: u64,
    },
    /// An agent (`--ack`) applied a version.
    Applied(Outcome<'a>),
    /// An agent (`--ack`) refused a version; `reason` says why.
    Rejected(Outcome<'a>),
}

#[derive(Serialize)]
struct Outcome<'a> {
    revision: u64,
    name: &'a str,
    label: &'a str,
    version: u64,
    digest: &'a str,
    reason: &'a str,
}

/// The server's public signing keys, read again when a version names a key
/// that is not among them (after a rotation).
type Keys = Vec<pb::SigningKey>;

pub(super) async fn run_watch(args: WatchArgs) -> Result<(), Failure> {
    let agent_id = match (&args.agent_id, args.ack) {
        (Some(id), _) => id.clone(),
        (None, true) => format!("{}-cli-{}", super::local_user(), std::process::id()),
        (None, false) => String::new(),
    };
    // 0 until something was seen: take a snapshot first.
    let mut next = args.from_revision.unwrap_or(0);
    let mut applied = Applied::new();
    let mut keys = Keys::new();
    let mut backoff = Backoff::new(args.max_backoff);
    loop {
        let once = stream_events(
            &args,
            &agent_id,
            &mut next,
            &mut applied,
            &mut keys,
            &mut backoff,
        );
        // One connection runs until the stream breaks, and says how it ended.
        let end = match once.await {
            Ok(()) => End::Retry("the stream ended".into()),
            Err(end) => end,
        };
        match end {
            End::Fatal(failure) => return Err(failure),
            End::Compacted(message) => {
                eprintln!("watch: {message}; taking a fresh snapshot");
                next = 0;
            }
            End::Retry(message) => {
                let pause = backoff.next_pause();
                let from = if next == 0 {
                    "a snapshot".to_string()
                } else {
                    format!("revision {next}")
                };
                eprintln!("watch: {message}; reconnecting in {pause:?} from {from}");
                tokio::time::sleep(pause).await;
            }
        }
    }
}

enum End {
    Retry(String),
    Compacted(String),
    Fatal(Failure),
}

impl From<tonic::Status> for End {
    fn from(status: tonic::Status) -> End {
        match status.code() {
            Code::OutOfRange => End::Compacted(status.message().to_string()),
            Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted => End::Retry(format!("{}: {}", status.code(), status.message())),
            _ => End::Fatal(Failure::from(status)),
        }
    }
}

async fn stream_events(
    args: &WatchArgs,
    agent_id: &str,
    next: &mut u64,
    applied: &mut Applied,
    keys: &mut Keys,
    backoff: &mut Backoff,
) -> Result<(), End> {
    let mut client = match connect(&args.client).await {
        Ok(client) => client,
        Err(failure) if failure.code == exit::UNREACHABLE => {
            return Err(End::Retry(failure.message))
        }
        Err(failure) => return Err(End::Fatal(failure)),
    };
    let request = pb::WatchRequest {
        names: args.names.clone(),
        prefixes: args.prefix.clone(),
        labels: args.label.clone(),
        include_versions: args.include_versions,
        start_revision: *next,
        agent_id: agent_id.to_string(),
        agent: Some(pb::AgentInfo {
            host: std::env::var("HOSTNAME").unwrap_or_default(),
            sdk: "promptreg-cli".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        }),
    };
    let mut stream = client.watch(request).await?.into_inner();
    let out = &args.client;
    while let Some(message) = stream.message().await? {
        match message.event {
            Some(Event::Created(created)) => {
                backoff.reset();
                eprintln!("watch: connected at revision {}", created.revision);
                // After a reconnect, tell the registry again what this agent runs.
                if args.ack {
                    for ((name, label), (version, digest, revision)) in applied.iter() {
                        ack(
                            &mut client,
                            agent_id,
                            name,
                            label,
                            *version,
                            digest,
                            *revision,
                            None,
                        )
                        .await?;
                    }
                }
            }
            Some(Event::Snapshot(snapshot)) => {
                for state in &snapshot.labels {
                    emit(
                        out,
                        || {
                            format!(
                                "revision {}\tsnapshot\t{} {} -> v{}\t{}",
                                snapshot.revision,
                                state.name,
                                state.label,
                                state.version,
                                short_digest(&state.digest)
                            )
                        },
                        Line::Snapshot {
                            revision: snapshot.revision,
                            name: &state.name,
                            label: &state.label,
                            version: state.version,
                            digest: &state.digest,
                        },
                    );
                    if args.ack {
                        let seen = Seen {
                            name: &state.name,
                            label: &state.label,
                            version: state.version,
                            digest: &state.digest,
                            revision: snapshot.revision,
                        };
                        apply(&mut client, out, agent_id, applied, keys, seen).await?;
                    }
                }
                if snapshot.complete {
                    *next = snapshot.revision + 1;
                }
            }
            Some(Event::Changes(batch)) => {
                for change in &batch.changes {
                    match &change.kind {
                        Some(pb::change::Kind::LabelMoved(m)) => {
                            emit(
                                out,
                                || {
                                    let to = if m.to_version == 0 {
                                        "removed".to_string()
                                    } else {
                                        format!("v{}", m.to_version)
                                    };
                                    format!(
                                        "revision {}\t{}\t{} {} -> {to}\t{}\t{}\t{}",
                                        batch.revision,
                                        kind_name(m.kind),
                                        m.name,
                                        m.label,
                                        short_digest(&m.digest),
                                        m.actor,
                                        m.reason
                                    )
                                },
                                Line::LabelMoved {
                                    revision: batch.revision,
                                    kind: kind_name(m.kind),
                                    name: &m.name,
                                    label: &m.label,
                                    version: version_or_null(m.to_version),
                                    from_version: version_or_null(m.from_version),
                                    to_version: version_or_null(m.to_version),
                                    digest: &m.digest,
                                    actor: &m.actor,
                                    reason: &m.reason,
                                },
                            );
                            if args.ack && m.to_version != 0 {
                                let seen = Seen {
                                    name: &m.name,
                                    label: &m.label,
                                    version: m.to_version,
                                    digest: &m.digest,
                                    revision: batch.revision,
                                };
                                apply(&mut client, out, agent_id, applied, keys, seen).await?;
                            }
                        }
                        Some(pb::change::Kind::VersionPublished(v)) => emit(
                            out,
                            || {
                                format!(
                                    "revision {}\tpublished\t{} v{}\t{}\t{}",
                                    batch.revision,
                                    v.name,
                                    v.version,
                                    short_digest(&v.digest),
                                    v.author
                                )
                            },
                            Line::VersionPublished {
                                revision: batch.revision,
                                name: &v.name,
                                version: v.version,
                                digest: &v.digest,
                                author: &v.author,
                            },
                        ),
                        None => {}
                    }
                }
                *next = batch.revision + 1;
            }
            Some(Event::Progress(progress)) => {
                *next = (*next).max(progress.revision + 1);
                if matches!(out.output, super::OutputFormat::Json) {
                    println!(
                        "{}",
                        to_json(Line::Progress {
                            revision: progress.revision
                        })
                    );
                }
            }
            None => {}
        }
    }
    Ok(())
}

/// A label target the stream showed: what `--ack` applies.
struct Seen<'a> {
    name: &'a str,
    label: &'a str,
    version: u64,
    digest: &'a str,
    /// The revision that showed it.
    revision: u64,
}

/// Fetches a version, checks its digest against the documented canonical
/// form and its signature against the server's published key, and
/// acknowledges it: applied when both hold, rejected (with the reason) when
/// not. Prints one line either way.
async fn apply(
    client: &mut Client,
    out: &super::ClientOptions,
    agent_id: &str,
    applied: &mut Applied,
    keys: &mut Keys,
    seen: Seen<'_>,
) -> Result<(), End> {
    let Seen {
        name,
        label,
        version,
        digest,
        revision,
    } = seen;
    let key = (name.to_string(), label.to_string());
    if applied
        .get(&key)
        .is_some_and(|(v, d, _)| *v == version && d == digest)
    {
        return Ok(());
    }
    let request = pb::GetVersionRequest {
        name: name.to_string(),
        selector: Some(pb::get_version_request::Selector::Version(version)),
        ..Default::default()
    };
    let fetched = super::client::get_version(client, request).await?;
    if !keys.iter().any(|k| k.key_id == fetched.signing_key_id) {
        *keys = client
            .list_signing_keys(pb::ListSigningKeysRequest {})
            .await?
            .into_inner()
            .keys;
    }
    let check = super::provenance::check_version(&fetched, keys);
    let rejected = if !(check.digest_ok && fetched.digest == digest) {
        Some(format!(
            "digest mismatch: the event says {digest}, the server says {}, and {}",
            fetched.digest, check.digest_note
        ))
    } else if !check.signature_ok {
        Some(format!("signature: {}", check.signature_note))
    } else {
        None
    };
    emit(
        out,
        || match &rejected {
            None => format!(
                "applied\t{name} {label} v{version} ({})\tdigest ok, {}",
                short_digest(digest),
                check.signature_note
            ),
            Some(reason) => format!("rejected\t{name} {label} v{version}: {reason}"),
        },
        {
            let outcome = Outcome {
                revision,
                name,
                label,
                version,
                digest,
                reason: rejected.as_deref().unwrap_or_default(),
            };
            if rejected.is_some() {
                Line::Rejected(outcome)
            } else {
                Line::Applied(outcome)
            }
        },
    );
    if rejected.is_none() {
        applied.insert(key, (version, digest.to_string(), revision));
    }
    ack(
        client, agent_id, name, label, version, digest, revision, rejected,
    )
    .await
}

#[allow(clippy::too_many_arguments)]
async fn ack(
    client: &mut Client,
    agent_id: &str,
    name: &str,
    label: &str,
    version: u64,
    digest: &str,
    revision: u64,
    rejected: Option<String>,
) -> Result<(), End> {
    let outcome = if rejected.is_some() {
        pb::ApplyOutcome::Rejected
    } else {
        pb::ApplyOutcome::Applied
    };
    let request = pb::AckAppliedRequest {
        agent_id: agent_id.to_string(),
        name: name.to_string(),
        label: label.to_string(),
        version,
        digest: digest.to_string(),
        revision,
        outcome: outcome.into(),
        reason: rejected.unwrap_or_default(),
    };
    client.ack_applied(request).await?;
    Ok(())
}

/// Exponential backoff with full jitter: each pause is a random time between
/// 0 and a ceiling that doubles from 100 ms up to the maximum.
///
/// This is how `promptreg watch` reconnects, and what the Watch contract asks
/// of every client: the jitter spreads a fleet's reconnections after a server
/// restart instead of letting them arrive in lockstep. Call `next_pause`
/// before each new attempt and `reset` once a connection works again (the
/// watcher does so when its stream says `created`). Public so the
/// benchmark's reconnect storm uses exactly this policy.
#[derive(Debug, Clone)]
pub struct Backoff {
    ceiling: Duration,
    max: Duration,
    seed: u64,
}

impl Backoff {
    const START: Duration = Duration::from_millis(100);

    /// A backoff whose ceiling starts at 100 ms and doubles up to `max`
    /// (at least 100 ms). The jitter is seeded from the clock's nanoseconds
    /// and the process id.
    pub fn new(max: Duration) -> Backoff {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        // Many backoffs made at once in one process (a fleet simulator, the
        // benchmark) must not pause in lockstep: each takes its own number.
        static MADE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nth = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let seed = (u64::from(nanos) ^ (u64::from(std::process::id()) << 32))
            .wrapping_add(nth.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        Backoff {
            ceiling: Self::START,
            max: max.max(Self::START),
            seed: seed | 1,
        }
    }

    /// Back to the 100 ms ceiling, after a successful connection.
    pub fn reset(&mut self) {
        self.ceiling = Self::START;
    }

    /// Picks the next pause and doubles the ceiling.
    pub fn next_pause(&mut self) -> Duration {
        // xorshift64: jitter needs spread, not cryptographic quality.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let fraction = (self.seed % 10_000) as f64 / 10_000.0;
        let pause = self.ceiling.mul_f64(fraction);
        self.ceiling = (self.ceiling * 2).min(self.max);
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::{to_json, Backoff, Line, Outcome};
    use std::time::Duration;

    #[test]
    fn watch_lines_carry_their_kind_under_type() {
        assert_eq!(
            to_json(Line::Progress { revision: 7 }).to_string(),
            r#"{"revision":7,"type":"progress"}"#
        );
        let outcome = Outcome {
            revision: 3,
            name: "p",
            label: "prod",
            version: 2,
            digest: "sha256:ab",
            reason: "signature: unsigned",
        };
        assert_eq!(
            to_json(Line::Rejected(outcome)).to_string(),
            r#"{"digest":"sha256:ab","label":"prod","name":"p","reason":"signature: unsigned","revision":3,"type":"rejected","version":2}"#
        );
        let published = Line::VersionPublished {
            revision: 4,
            name: "p",
            version: 5,
            digest: "sha256:cd",
            author: "alice",
        };
        assert_eq!(
            to_json(published).to_string(),
            r#"{"author":"alice","digest":"sha256:cd","name":"p","revision":4,"type":"version_published","version":5}"#
        );
    }

    #[test]
    fn backoff_grows_to_its_ceiling_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_secs(2));
        let pauses: Vec<Duration> = (0..20).map(|_| backoff.next_pause()).collect();
        assert!(pauses.iter().all(|p| *p <= Duration::from_secs(2)));
        assert!(pauses[0] <= Duration::from_millis(100));
        assert_eq!(backoff.ceiling, Duration::from_secs(2));
        backoff.reset();
        assert!(backoff.next_pause() <= Duration::from_millis(100));
    }
}
