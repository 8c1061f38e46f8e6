//! gRPC-level fuzzing: a few hundred random and deliberately malformed
//! requests for every RPC of `promptreg.v1.Registry` against a running
//! server. Every answer must be OK or a deliberate status (INVALID_ARGUMENT,
//! NOT_FOUND, FAILED_PRECONDITION, OUT_OF_RANGE, RESOURCE_EXHAUSTED,
//! ALREADY_EXISTS): never INTERNAL, UNKNOWN or DATA_LOSS, never a dropped
//! connection (UNAVAILABLE). Afterwards the server must still publish and
//! read, and its audit ledger must verify. `WatchMany` gets a seeded random
//! sequence of opens, cancels and empty requests on one call: each bad one
//! ends only its own watch, with a documented code in `WatchEnded`. And
//! every RPC, found in the service's descriptor, gets bytes that are not a
//! message at all: INVALID_ARGUMENT, never INTERNAL.
//!
//! `PROMPTREG_FUZZ_SEED` replays a run (the seed is printed);
//! `PROMPTREG_FUZZ_ROUNDS` sets the requests per RPC (default 300).

mod support;

use pb::watch_many_request::Request as WatchCommand;
use pb::watch_many_response::Event as WatchOut;
use pb::watch_response::Event as WatchEvent;
use promptreg::grpc::pb;
use std::collections::BTreeMap;
use std::time::Duration;
use support::rng::Rng;
use support::*;
use tonic::Code;

/// Prompts that exist, so that random requests also reach the code behind
/// validation.
const NAMES: &[&str] = &["fuzz/a", "fuzz/b", "fuzz/c.v2"];
const LABELS: &[&str] = &["production", "staging", "latest", "canary"];

/// What the generators know about the registry's real state.
struct World {
    digests: Vec<String>,
}

fn huge(rng: &mut Rng) -> String {
    // Over the default 4 MiB gRPC message limit.
    let unit = rng.pick(&["a", "é", "{{", "/", "\u{0}"]);
    unit.repeat(5 * 1024 * 1024 / unit.len() + 1)
}

fn big(rng: &mut Rng) -> String {
    // Under the gRPC limit, over every application limit, and far over
    // what fits in an HTTP/2 header if a server echoed it in a status.
    let sizes = [300, 5_000, 70_000, 1_000_000, 3_500_000];
    let unit = rng.pick(&["a", "é", "x/", "{{"]);
    unit.repeat(rng.pick(&sizes) / unit.len())
}

fn random_unicode(rng: &mut Rng, len: usize) -> String {
    (0..len)
        .map(|_| loop {
            let raw = match rng.below(4) {
                0 => rng.below(0x80) as u32,
                1 => rng.below(0x800) as u32,
                2 => rng.below(0x1_0000) as u32,
                _ => rng.below(0x11_0000) as u32,
            };
            if let Some(c) = char::from_u32(raw) {
                break c;
            }
        })
        .collect()
}

/// Any string: valid names, near misses, control characters, unicode,
/// `..`, template syntax, and now and then a very large one.
fn string(rng: &mut Rng) -> String {
    if rng.chance(600) {
        return huge(rng);
    }
    if rng.chance(150) {
        return big(rng);
    }
    match rng.below(26) {
        0 => String::new(),
        1..=4 => rng.pick(NAMES).to_string(),
        5 => rng.pick(LABELS).to_string(),
        6 => rng
            .pick(&["a/../b", "..", "../../etc/passwd", "a/./b", "a..b", "./a"])
            .into(),
        7 => rng.pick(&["/a", "a/", "a//b", "/", "//"]).into(),
        8 => rng
            .pick(&["пример/имя", "名前", "é", "a\u{301}", "😀/🔥", "ｆｕｚｚ"])
            .into(),
        9 => rng
            .pick(&[
                "a\u{0}b",
                "a\nb",
                "\t",
                "\r\n",
                "\u{7f}",
                "\u{1b}[31m",
                "a\u{85}",
            ])
            .into(),
        10 => rng
            .pick(&["\u{202e}evil", "\u{feff}a", "\u{200b}", "\u{fffd}"])
            .into(),
        11 => "a".repeat(rng.pick(&[63, 64, 128, 129, 257, 4097])),
        12 => {
            let len = rng.below(40) as usize;
            random_unicode(rng, len)
        }
        13 => rng
            .pick(&[
                "{{", "}}", "{{x}}", "\\{{", "{{ }}", "{{1}}", "{{a b}}", "{{x",
            ])
            .into(),
        14 => rng.pick(&[" ", "   ", "\u{3000}"]).into(),
        15 => "Upper/Case".into(),
        16 => rng
            .pick(&["-a", "_a", ".a", "a b", "a\\b", "a:b", "a%2Fb"])
            .into(),
        17 => format!("fuzz/{}", rng.below(1_000)),
        18 => "x/".repeat(rng.below(80) as usize) + "y",
        _ => {
            let len = rng.below(24) as usize;
            (0..len)
                .map(|_| {
                    let alphabet = b"abcz09._-/ A{}\\";
                    alphabet[rng.below(alphabet.len() as u64) as usize] as char
                })
                .collect()
        }
    }
}

/// Half the time an existing prompt, so that the other fields get checked.
fn any_name(rng: &mut Rng) -> String {
    if rng.chance(2) {
        rng.pick(NAMES).into()
    } else {
        string(rng)
    }
}

fn any_label(rng: &mut Rng) -> String {
    if rng.chance(2) {
        rng.pick(LABELS).into()
    } else {
        string(rng)
    }
}

/// An actor, author, reason or description.
fn any_text(rng: &mut Rng) -> String {
    if rng.chance(2) {
        "fuzz".into()
    } else {
        string(rng)
    }
}

fn strings(rng: &mut Rng, max: u64) -> Vec<String> {
    (0..rng.below(max + 1)).map(|_| string(rng)).collect()
}

fn number(rng: &mut Rng) -> u64 {
    match rng.below(10) {
        0 => 0,
        1 => u64::MAX,
        2 => u64::MAX - 1,
        3 => i64::MAX as u64,
        4 => i64::MAX as u64 + 1,
        5 => u32::MAX as u64 + 1,
        6 => rng.next(),
        _ => rng.below(12),
    }
}

fn page_size(rng: &mut Rng) -> u32 {
    let random = rng.next() as u32;
    rng.pick(&[0, 1, 2, 999, 1000, 1001, u32::MAX, random])
}

fn page_token(rng: &mut Rng) -> String {
    match rng.below(12) {
        0..=2 => String::new(),
        3 => "18446744073709551615".into(),
        4 => "18446744073709551616".into(),
        5 => rng
            .pick(&["0", "-1", "1", "+1", " 1", "1e3", "0x10"])
            .into(),
        6 => hex::encode(rng.pick(NAMES)),
        7 => hex::encode("\u{0}\u{ff}"),
        8 => hex::encode([0xff, 0xfe, 0x80]),
        9 => "zz-not-a-token".into(),
        10 => rng.next().to_string(),
        _ => string(rng),
    }
}

fn digest(rng: &mut Rng, world: &World) -> String {
    let hex64: String = (0..4).map(|_| format!("{:016x}", rng.next())).collect();
    match rng.below(12) {
        0 if !world.digests.is_empty() => rng.pick(&world.digests),
        1 => format!("sha256:{hex64}"),
        2 => format!("sha256:{}", &hex64[..63]),
        3 => format!("sha256:{hex64}0"),
        4 => format!("sha256:{}", hex64.to_uppercase()),
        5 => format!("sha512:{hex64}"),
        6 => hex64,
        7 => "sha256:".into(),
        8 => format!("sha256:{}", "g".repeat(64)),
        9 => format!("sha256:{}", "é".repeat(32)),
        10 => String::new(),
        _ => string(rng),
    }
}

fn model_config(rng: &mut Rng) -> String {
    match rng.below(20) {
        0 | 1 => String::new(),
        2 => "{}".into(),
        3 => r#"{"model":"gpt-x","temperature":0.2}"#.into(),
        4 => "[".repeat(10_000),
        5 => "{\"a\":".repeat(3_000),
        6 => format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)),
        7 => format!("{{\"a\":{}1{}}}", "[".repeat(127), "]".repeat(127)),
        8 => format!("{{\"a\":{}1{}}}", "[".repeat(129), "]".repeat(129)),
        9 => rng
            .pick(&[
                r#"{"a":1e400}"#,
                r#"{"a":-1e400}"#,
                r#"{"a":NaN}"#,
                r#"{"a":Infinity}"#,
                r#"{"a":18446744073709551616}"#,
                r#"{"a":-9223372036854775809}"#,
                r#"{"a":1.8045062573841701e-87}"#,
            ])
            .into(),
        10 => rng
            .pick(&["null", "[1,2]", "\"text\"", "42", "true"])
            .into(),
        11 => rng
            .pick(&[
                r#"{"a":1,"a":2}"#,
                r#"{"a":"\u0000"}"#,
                r#"{"a":"\ud800"}"#,
                r#"{"\u00e9":"é"}"#,
            ])
            .into(),
        12 => format!("{{\"a\":\"{}\"}}", "x".repeat(17_000)),
        13 => "{".into(),
        14 => "{\"a\":1,}".into(),
        15 => format!("{{\"a\":{}}}", rng.next()),
        _ => string(rng),
    }
}

fn chat_message(rng: &mut Rng) -> pb::ChatMessage {
    pb::ChatMessage {
        role: match rng.below(4) {
            0 => rng.pick(&["system", "user", "assistant", "tool"]).into(),
            1 => rng
                .pick(&[
                    "",
                    "USER",
                    "1user",
                    "user role",
                    "a".repeat(33).as_str(),
                    "über",
                ])
                .into(),
            _ => string(rng),
        },
        content: match rng.below(3) {
            0 => "Hello {{name}}".into(),
            _ => string(rng),
        },
    }
}

fn template(rng: &mut Rng) -> Option<pb::Template> {
    match rng.below(8) {
        0 => None,
        1 => Some(pb::Template { kind: None }),
        2 => Some(pb::Template {
            kind: Some(pb::template::Kind::Chat(pb::ChatTemplate {
                messages: Vec::new(),
            })),
        }),
        3 => Some(pb::Template {
            kind: Some(pb::template::Kind::Chat(pb::ChatTemplate {
                messages: (0..rng.pick(&[1usize, 2, 256, 257, 2000]))
                    .map(|_| pb::ChatMessage {
                        role: "user".into(),
                        content: "x".into(),
                    })
                    .collect(),
            })),
        }),
        4 | 5 => Some(pb::Template {
            kind: Some(pb::template::Kind::Chat(pb::ChatTemplate {
                messages: (0..rng.below(4) + 1).map(|_| chat_message(rng)).collect(),
            })),
        }),
        _ => text(&match rng.below(3) {
            0 => format!("Hi {{{{name}}}} #{}", rng.next()),
            _ => string(rng),
        }),
    }
}

fn variables(rng: &mut Rng) -> Vec<String> {
    match rng.below(6) {
        0 => vec!["name".into()],
        1 => vec!["name".into(), "name".into()],
        2 => (0..65).map(|i| format!("v{i}")).collect(),
        3 => Vec::new(),
        _ => strings(rng, 3),
    }
}

fn tags(rng: &mut Rng) -> std::collections::HashMap<String, String> {
    match rng.below(5) {
        0 => (0..33).map(|i| (format!("k{i}"), "v".into())).collect(),
        1 => [("runtime".to_string(), "agent-v3".to_string())].into(),
        _ => (0..rng.below(3))
            .map(|_| (string(rng), string(rng)))
            .collect(),
    }
}

fn timestamp(rng: &mut Rng) -> Option<prost_types::Timestamp> {
    if rng.chance(8) {
        return None;
    }
    let (random_seconds, random_nanos) = (rng.next() as i64, rng.next() as i32);
    Some(prost_types::Timestamp {
        seconds: rng.pick(&[
            i64::MIN,
            i64::MAX,
            i64::MIN + 1,
            0,
            -1,
            1,
            253_402_300_800,
            -62_135_596_801,
            4_102_444_800,
            random_seconds,
        ]),
        nanos: rng.pick(&[
            i32::MIN,
            -1,
            0,
            1,
            999_999_999,
            1_000_000_000,
            i32::MAX,
            random_nanos,
        ]),
    })
}

fn enum_value(rng: &mut Rng) -> i32 {
    rng.pick(&[0, 1, 2, 3, 77, 99, -1, i32::MAX, i32::MIN])
}

/// A valid publish with up to three fields replaced by random ones.
fn publish_request(rng: &mut Rng) -> pb::PublishVersionRequest {
    let mut req = pb::PublishVersionRequest {
        name: rng.pick(NAMES).into(),
        template: text(&format!("Hi {{{{name}}}} #{}", rng.below(1_000_000))),
        variables: vec!["name".into()],
        model_config_json: r#"{"model":"gpt-x"}"#.into(),
        author: "fuzz".into(),
        description: String::new(),
        tags: Default::default(),
    };
    if rng.chance(4) {
        return req;
    }
    for _ in 0..rng.below(3) + 1 {
        match rng.below(7) {
            0 => req.name = string(rng),
            1 => req.template = template(rng),
            2 => req.variables = variables(rng),
            3 => req.model_config_json = model_config(rng),
            4 => req.author = string(rng),
            5 => req.description = string(rng),
            _ => req.tags = tags(rng),
        }
    }
    req
}

/// Answers that are a deliberate refusal of a bad request.
const DELIBERATE: &[Code] = &[
    Code::InvalidArgument,
    Code::NotFound,
    Code::FailedPrecondition,
    Code::OutOfRange,
    Code::ResourceExhausted,
    Code::AlreadyExists,
];

/// A deliberate status code that really came from the server: an HTTP/2
/// error (a reset stream, a refused header block) is mapped by the client to
/// codes like RESOURCE_EXHAUSTED or CANCELLED, and is never deliberate.
fn is_deliberate(status: &tonic::Status) -> bool {
    DELIBERATE.contains(&status.code())
        && !status.message().starts_with("h2 protocol error")
        && !status.message().starts_with("transport error")
}

#[derive(Default)]
struct Tally {
    codes: BTreeMap<(&'static str, String), u64>,
    /// One status message per (RPC, code) of the rarer refusals.
    examples: BTreeMap<(&'static str, String), String>,
    failures: Vec<String>,
    /// Wall time per RPC (each call is timed from the previous record).
    time: BTreeMap<&'static str, Duration>,
    last: Option<std::time::Instant>,
}

impl Tally {
    fn record<T>(
        &mut self,
        rpc: &'static str,
        request: &dyn std::fmt::Debug,
        answer: &Result<T, tonic::Status>,
    ) {
        let code = match answer {
            Ok(_) => "Ok".to_string(),
            Err(status) => format!("{:?}", status.code()),
        };
        let now = std::time::Instant::now();
        *self.time.entry(rpc).or_default() += now - self.last.unwrap_or(now);
        self.last = Some(now);
        *self.codes.entry((rpc, code.clone())).or_default() += 1;
        if let Err(status) = answer {
            if !matches!(status.code(), Code::InvalidArgument | Code::NotFound) {
                self.examples
                    .entry((rpc, code))
                    .or_insert_with(|| shorten(status.message(), 120));
            }
            if !is_deliberate(status) {
                let request = shorten(&format!("{request:?}"), 400);
                let message = shorten(status.message(), 300);
                self.failures.push(format!(
                    "{rpc}: {:?} {message:?}\n    request: {request}",
                    status.code()
                ));
            }
        }
    }
}

fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes)", &text[..cut], text.len())
}

/// Answers must arrive; a hang is as bad as a crash.
async fn answer<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(Duration::from_secs(60), call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded("no answer within 60 s")),
    }
}

/// The seed (`PROMPTREG_FUZZ_SEED`, else from the clock) and the requests
/// per RPC (`PROMPTREG_FUZZ_ROUNDS`, default 300).
fn fuzz_settings() -> (u64, u64) {
    let seed = support::rng::seed_from_env("PROMPTREG_FUZZ_SEED");
    let rounds = std::env::var("PROMPTREG_FUZZ_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    (seed, rounds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_deliberate_statuses_and_the_server_keeps_serving() {
    let (seed, rounds) = fuzz_settings();
    println!("grpc fuzz: seed {seed} (PROMPTREG_FUZZ_SEED={seed} replays it), {rounds} rounds");
    let mut rng = Rng::new(seed);

    let server = TestServer::start().await;
    let mut client = server.client().await;
    // Large messages are the point: let the client send them.
    client = client.max_encoding_message_size(usize::MAX);

    // Real prompts with versions and labels, so that some random requests
    // pass validation and reach the registry.
    let mut world = World {
        digests: Vec::new(),
    };
    for name in NAMES {
        for i in 1..=3 {
            let published = client
                .publish_version(publish_text(name, &format!("{name} text {i}"), &[]))
                .await
                .expect("seed publish")
                .into_inner();
            world.digests.push(published.digest);
        }
        client
            .set_label(set_label(name, "production", 2, None))
            .await
            .expect("seed label");
    }

    let mut tally = Tally::default();
    let started = std::time::Instant::now();
    for round in 0..rounds {
        let c = &mut client;
        let r = &mut rng;

        let req = publish_request(r);
        let a = answer(c.publish_version(req.clone())).await;
        if let Ok(published) = &a {
            world.digests.push(published.digest.clone());
        }
        tally.record("PublishVersion", &req, &a);

        use pb::get_version_request::Selector;
        let req = pb::GetVersionRequest {
            name: any_name(r),
            selector: match r.below(4) {
                0 => None,
                1 => Some(Selector::Version(number(r))),
                2 => Some(Selector::Digest(digest(r, &world))),
                _ => Some(Selector::Label(string(r))),
            },
            ..Default::default()
        };
        let a = answer(c.get_version(req.clone())).await;
        tally.record("GetVersion", &req, &a);

        let req = pb::ListPromptsRequest {
            prefix: string(r),
            page_size: page_size(r),
            page_token: page_token(r),
        };
        let a = answer(c.list_prompts(req.clone())).await;
        tally.record("ListPrompts", &req, &a);

        let req = pb::ListVersionsRequest {
            name: any_name(r),
            page_size: page_size(r),
            page_token: page_token(r),
            tags: if r.chance(3) {
                tags(r)
            } else {
                Default::default()
            },
            passing: if r.chance(3) {
                strings(r, 3)
            } else {
                Vec::new()
            },
            eligible_for: if r.chance(3) {
                any_label(r)
            } else {
                String::new()
            },
        };
        let a = answer(c.list_versions(req.clone())).await;
        tally.record("ListVersions", &req, &a);

        let req = pb::SetLabelRequest {
            name: any_name(r),
            label: any_label(r),
            version: number(r),
            actor: any_text(r),
            reason: any_text(r),
            expected_version: r.chance(2).then(|| number(r)),
        };
        let a = answer(c.set_label(req.clone())).await;
        tally.record("SetLabel", &req, &a);

        let req = pb::RollbackRequest {
            name: any_name(r),
            label: any_label(r),
            to_version: r.chance(2).then(|| number(r)),
            actor: any_text(r),
            reason: any_text(r),
            expected_version: r.chance(2).then(|| number(r)),
            ..Default::default()
        };
        let a = answer(c.rollback(req.clone())).await;
        tally.record("Rollback", &req, &a);

        let req = pb::RemoveLabelRequest {
            name: any_name(r),
            label: any_label(r),
            actor: any_text(r),
            reason: any_text(r),
        };
        let a = answer(c.remove_label(req.clone())).await;
        tally.record("RemoveLabel", &req, &a);

        let req = pb::ListLabelsRequest { name: string(r) };
        let a = answer(c.list_labels(req.clone())).await;
        tally.record("ListLabels", &req, &a);

        let req = pb::LabelHistoryRequest {
            name: any_name(r),
            label: any_label(r),
            page_size: page_size(r),
            page_token: page_token(r),
        };
        let a = answer(c.label_history(req.clone())).await;
        tally.record("LabelHistory", &req, &a);

        use pb::resolve_at_request::At;
        let req = pb::ResolveAtRequest {
            name: any_name(r),
            label: any_label(r),
            at: match r.below(3) {
                0 => None,
                1 => Some(At::Revision(number(r))),
                _ => timestamp(r).map(At::Time),
            },
        };
        let a = answer(c.resolve_at(req.clone())).await;
        tally.record("ResolveAt", &req, &a);

        let req = pb::DiffVersionsRequest {
            name: any_name(r),
            from_version: number(r),
            to_version: number(r),
        };
        let a = answer(c.diff_versions(req.clone())).await;
        tally.record("DiffVersions", &req, &a);

        let req = pb::WatchRequest {
            names: strings(r, 3),
            prefixes: strings(r, 2),
            labels: strings(r, 2),
            include_versions: r.chance(2),
            start_revision: number(r),
            agent_id: if r.chance(2) {
                String::new()
            } else {
                string(r)
            },
            agent: r.chance(2).then(|| pb::AgentInfo {
                host: string(r),
                sdk: string(r),
                version: string(r),
                ..Default::default()
            }),
        };
        let a = watch_first_messages(c, req.clone()).await;
        tally.record("Watch", &req, &a);

        let req = pb::AckAppliedRequest {
            agent_id: string(r),
            name: any_name(r),
            label: any_label(r),
            version: number(r),
            digest: digest(r, &world),
            revision: number(r),
            outcome: enum_value(r),
            reason: any_text(r),
        };
        let a = answer(c.ack_applied(req.clone())).await;
        tally.record("AckApplied", &req, &a);

        let req = pb::FleetStatusRequest {
            name: any_name(r),
            label: any_label(r),
            summary_only: r.chance(2),
        };
        let a = answer(c.fleet_status(req.clone())).await;
        tally.record("FleetStatus", &req, &a);

        let req = pb::ListSigningKeysRequest {};
        let a = answer(c.list_signing_keys(req)).await;
        tally.record("ListSigningKeys", &req, &a);

        // A rotation that passes validation writes a key: do it rarely.
        let req = pb::RotateSigningKeyRequest {
            actor: if r.chance(10) {
                any_text(r)
            } else {
                r.pick(&["", " ", "\t\n"]).into()
            },
            reason: any_text(r),
        };
        let a = answer(c.rotate_signing_key(req.clone())).await;
        tally.record("RotateSigningKey", &req, &a);

        let req = pb::ListAuditRequest {
            name: if r.chance(2) {
                String::new()
            } else {
                string(r)
            },
            actor: any_text(r),
            action: string(r),
            since: timestamp(r),
            until: timestamp(r),
            page_size: page_size(r),
            page_token: page_token(r),
        };
        let a = answer(c.list_audit(req.clone())).await;
        tally.record("ListAudit", &req, &a);

        // VerifyAudit checks the whole ledger and every version: its cost
        // grows with the store, so it runs every fifth round.
        if round % 5 == 0 {
            let req = pb::VerifyAuditRequest {
                checkpoint: r.chance(2).then(|| pb::Checkpoint {
                    sequence: number(r),
                    head_hash: string(r),
                    time: timestamp(r),
                    key_id: string(r),
                    signature: (0..r.pick(&[0usize, 1, 63, 64, 65, 1000]))
                        .map(|_| r.next() as u8)
                        .collect(),
                }),
            };
            let a = answer(c.verify_audit(req.clone())).await;
            if let Ok(report) = &a {
                // A bad checkpoint may be reported, but never as a broken chain.
                assert_eq!(
                    report.first_broken_sequence, 0,
                    "the ledger broke during fuzzing: {report:?}"
                );
            }
            tally.record("VerifyAudit", &req, &a);
        }

        let req = pb::CreateCheckpointRequest {};
        let a = answer(c.create_checkpoint(req)).await;
        tally.record("CreateCheckpoint", &req, &a);

        let req = pb::PruneVersionsRequest {
            name: any_name(r),
            keep_last: {
                let random = r.next() as u32;
                r.pick(&[0, 1, 2, u32::MAX, random])
            },
            older_than_seconds: number(r),
            dry_run: r.chance(2),
            actor: any_text(r),
            reason: any_text(r),
        };
        let a = answer(c.prune_versions(req.clone())).await;
        tally.record("PruneVersions", &req, &a);

        let req = pb::FindByDigestRequest {
            digest: digest(r, &world),
        };
        let a = answer(c.find_by_digest(req.clone())).await;
        tally.record("FindByDigest", &req, &a);

        release_round(c, r, &mut tally).await;
    }

    println!(
        "grpc fuzz: {} requests in {:.1} s; answers by RPC and code:",
        tally.codes.values().sum::<u64>(),
        started.elapsed().as_secs_f64()
    );
    let mut by_rpc: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ((rpc, code), count) in &tally.codes {
        by_rpc
            .entry(rpc)
            .or_default()
            .push(format!("{code} {count}"));
    }
    for (rpc, codes) in by_rpc {
        let time = tally.time.get(rpc).copied().unwrap_or_default();
        println!(
            "  {rpc:<17} {:>6.2} s  {}",
            time.as_secs_f64(),
            codes.join(", ")
        );
    }
    for ((rpc, code), message) in &tally.examples {
        println!("  e.g. {rpc} {code}: {message}");
    }

    // The server still works: a normal publish and get, and an intact
    // ledger.
    let published = client
        .publish_version(publish_text("fuzz/after", "still {{here}}", &["here"]))
        .await
        .expect("publish after fuzzing")
        .into_inner();
    let version = client
        .get_version(pb::GetVersionRequest {
            name: "fuzz/after".into(),
            selector: Some(pb::get_version_request::Selector::Digest(
                published.digest.clone(),
            )),
            ..Default::default()
        })
        .await
        .expect("get after fuzzing")
        .into_inner()
        .version
        .expect("version");
    assert_eq!(version.template, text("still {{here}}"));
    let report = client
        .verify_audit(pb::VerifyAuditRequest { checkpoint: None })
        .await
        .expect("verify audit")
        .into_inner();
    assert!(report.intact, "audit ledger after fuzzing: {report:?}");

    if !tally.failures.is_empty() {
        let mut shown: BTreeMap<String, (usize, String)> = BTreeMap::new();
        for failure in &tally.failures {
            let key = failure.split('"').next().unwrap_or_default().to_string();
            shown.entry(key).or_insert((0, failure.clone())).0 += 1;
        }
        let listing: Vec<String> = shown
            .values()
            .map(|(count, example)| format!("{count} x {example}"))
            .collect();
        panic!(
            "{} answers were not deliberate statuses (seed {seed}); one example per RPC and code:\n{}",
            tally.failures.len(),
            listing.join("\n")
        );
    }
}

/// One random request for each release-policy RPC.
async fn release_round(c: &mut Client, r: &mut Rng, tally: &mut Tally) {
    let outcome = r.pick(&[0, 1, 2, 3, -1]);
    let req = pb::AttestVersionRequest {
        name: any_name(r),
        version: number(r),
        check: string(r),
        result: outcome,
        score: r.chance(2).then(|| f64::from_bits(r.next())),
        url: any_text(r),
        details: any_text(r),
        envelope: if r.chance(4) {
            string(r)
        } else {
            String::new()
        },
    };
    let a = answer(c.attest_version(req.clone())).await;
    tally.record("AttestVersion", &req, &a);

    let req = pb::ListChecksRequest {
        name: any_name(r),
        version: number(r),
        history: r.chance(2),
    };
    let a = answer(c.list_checks(req.clone())).await;
    tally.record("ListChecks", &req, &a);

    let req = pb::AddAttesterRequest {
        name: string(r),
        public_key: (0..r.pick(&[0usize, 31, 32, 33]))
            .map(|_| r.next() as u8)
            .collect(),
    };
    let a = answer(c.add_attester(req.clone())).await;
    tally.record("AddAttester", &req, &a);

    let req = pb::RemoveAttesterRequest {
        name: string(r),
        reason: any_text(r),
    };
    let a = answer(c.remove_attester(req.clone())).await;
    tally.record("RemoveAttester", &req, &a);

    let req = pb::SetPolicyRequest {
        prefix: string(r),
        label: any_label(r),
        approvals: r.pick(&[0, 1, 2, 11, u32::MAX]),
        require: strings(r, 4),
        allow_emergency_rollback: r.chance(2).then(|| r.chance(2)),
        request_ttl_seconds: number(r),
        reason: any_text(r),
    };
    let a = answer(c.set_policy(req.clone())).await;
    tally.record("SetPolicy", &req, &a);

    let req = pb::GetPolicyRequest {
        name: any_name(r),
        label: any_label(r),
    };
    let a = answer(c.get_policy(req.clone())).await;
    tally.record("GetPolicy", &req, &a);

    let req = pb::ListPoliciesRequest {};
    let a = answer(c.list_policies(req)).await;
    tally.record("ListPolicies", &req, &a);

    let req = pb::DeletePolicyRequest {
        prefix: string(r),
        label: any_label(r),
        reason: any_text(r),
    };
    let a = answer(c.delete_policy(req.clone())).await;
    tally.record("DeletePolicy", &req, &a);

    let req = pb::FreezeLabelRequest {
        prefix: string(r),
        label: any_label(r),
        until: timestamp(r),
        reason: any_text(r),
    };
    let a = answer(c.freeze_label(req.clone())).await;
    tally.record("FreezeLabel", &req, &a);

    let req = pb::UnfreezeLabelRequest {
        prefix: string(r),
        label: any_label(r),
        reason: any_text(r),
    };
    let a = answer(c.unfreeze_label(req.clone())).await;
    tally.record("UnfreezeLabel", &req, &a);

    let req = pb::ListFreezesRequest {};
    let a = answer(c.list_freezes(req)).await;
    tally.record("ListFreezes", &req, &a);

    let req = pb::ListRequestsRequest {
        name: if r.chance(2) {
            any_name(r)
        } else {
            String::new()
        },
        label: if r.chance(2) {
            any_label(r)
        } else {
            String::new()
        },
        pending: r.chance(2),
    };
    let a = answer(c.list_requests(req.clone())).await;
    tally.record("ListRequests", &req, &a);

    let req = pb::ApproveRequestRequest {
        id: number(r),
        reason: any_text(r),
    };
    let a = answer(c.approve_request(req.clone())).await;
    tally.record("ApproveRequest", &req, &a);

    let req = pb::RejectRequestRequest {
        id: number(r),
        reason: any_text(r),
    };
    let a = answer(c.reject_request(req.clone())).await;
    tally.record("RejectRequest", &req, &a);
}

/// Opens a watch and reads its first message (and, briefly, a second):
/// either a status or `created` must come.
async fn watch_first_messages(
    client: &mut Client,
    request: pb::WatchRequest,
) -> Result<(), tonic::Status> {
    let mut stream = answer(client.watch(request)).await?;
    match tokio::time::timeout(Duration::from_secs(60), stream.message()).await {
        Err(_) => {
            return Err(tonic::Status::deadline_exceeded(
                "no first watch message within 60 s",
            ))
        }
        Ok(Err(status)) => return Err(status),
        Ok(Ok(None)) => {
            return Err(tonic::Status::unknown(
                "the watch stream ended without a status",
            ))
        }
        Ok(Ok(Some(first))) => {
            if !matches!(first.event, Some(pb::watch_response::Event::Created(_))) {
                return Err(tonic::Status::unknown(format!(
                    "the first watch message was not `created`: {first:?}"
                )));
            }
        }
    }
    match tokio::time::timeout(Duration::from_millis(50), stream.message()).await {
        Ok(Err(status)) => Err(status),
        Ok(Ok(None)) => Err(tonic::Status::unknown(
            "the watch stream ended without a status",
        )),
        Ok(Ok(Some(_))) | Err(_) => Ok(()),
    }
}

/// Every string field of every RPC, one at a time, holding 70 KB (35 000
/// two-byte characters) in an otherwise valid request: under the gRPC
/// message limit, over every application limit. Each must be refused (or
/// served) with a deliberate status that reaches the client intact: a
/// server that quotes the whole value back in its status message produces
/// a header block no HTTP/2 peer accepts, and the client sees a reset
/// stream instead of INVALID_ARGUMENT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_fields_get_a_status_that_reaches_the_client() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let mut seed = client.clone();
    let published = seed
        .publish_version(publish_text("big/p", "Hi {{name}}", &["name"]))
        .await
        .expect("publish")
        .into_inner();
    seed.set_label(set_label("big/p", "production", 1, None))
        .await
        .expect("label");
    let big = "é".repeat(35_000);
    let digest = published.digest.clone();

    let publish = |change: &dyn Fn(&mut pb::PublishVersionRequest)| {
        let mut req = publish_text("big/p", "Hi {{name}} 2", &["name"]);
        change(&mut req);
        req
    };
    let chat = |role: &str, content: &str| {
        Some(pb::Template {
            kind: Some(pb::template::Kind::Chat(pb::ChatTemplate {
                messages: vec![pb::ChatMessage {
                    role: role.into(),
                    content: content.into(),
                }],
            })),
        })
    };
    let ack = |change: &dyn Fn(&mut pb::AckAppliedRequest)| {
        let mut req = pb::AckAppliedRequest {
            agent_id: "agent".into(),
            name: "big/p".into(),
            label: "production".into(),
            version: 1,
            digest: digest.clone(),
            revision: 0,
            outcome: pb::ApplyOutcome::Rejected as i32,
            reason: "bad digest".into(),
        };
        change(&mut req);
        req
    };
    let watch = |change: &dyn Fn(&mut pb::WatchRequest)| {
        let mut req = pb::WatchRequest {
            names: vec!["big/p".into()],
            labels: vec!["production".into()],
            ..Default::default()
        };
        change(&mut req);
        req
    };
    let get = |selector| pb::GetVersionRequest {
        name: "big/p".into(),
        selector: Some(selector),
        ..Default::default()
    };
    use pb::get_version_request::Selector;

    // A connection of its own for every case, so that one broken
    // connection cannot fail the cases after it.
    let c = || {
        let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
            .expect("url")
            .connect_lazy();
        client_with(channel, token_for(&server.url).as_deref())
    };
    let mut answers: Vec<(&str, Result<(), tonic::Status>)> = Vec::new();
    macro_rules! check {
        ($what:expr, $call:expr) => {
            answers.push(($what, answer($call).await.map(drop)));
        };
    }
    check!(
        "PublishVersion.name",
        c().publish_version(publish(&|r| r.name = big.clone()))
    );
    check!(
        "PublishVersion.template.text",
        c().publish_version(publish(&|r| r.template = text(&big)))
    );
    check!(
        "PublishVersion.variables",
        c().publish_version(publish(&|r| r.variables = vec![big.clone()]))
    );
    check!(
        "PublishVersion.chat.role",
        c().publish_version(publish(&|r| {
            r.template = chat(&big, "x");
            r.variables.clear();
        }))
    );
    check!(
        "PublishVersion.chat.content",
        c().publish_version(publish(&|r| {
            r.template = chat("user", &big);
            r.variables.clear();
        }))
    );
    check!(
        "PublishVersion.model_config_json",
        c().publish_version(publish(
            &|r| r.model_config_json = format!("{{\"{big}\":1}}")
        ))
    );
    check!(
        "PublishVersion.model_config_json (not JSON)",
        c().publish_version(publish(&|r| r.model_config_json = big.clone()))
    );
    check!(
        "PublishVersion.author",
        c().publish_version(publish(&|r| r.author = big.clone()))
    );
    check!(
        "PublishVersion.description",
        c().publish_version(publish(&|r| r.description = big.clone()))
    );
    check!(
        "PublishVersion.tags key",
        c().publish_version(publish(&|r| r.tags = [(big.clone(), "v".into())].into()))
    );
    check!(
        "PublishVersion.tags value",
        c().publish_version(publish(&|r| r.tags = [("k".into(), big.clone())].into()))
    );
    check!(
        "GetVersion.name",
        c().get_version(pb::GetVersionRequest {
            name: big.clone(),
            selector: None,
            ..Default::default()
        })
    );
    check!(
        "GetVersion.digest",
        c().get_version(get(Selector::Digest(big.clone())))
    );
    check!(
        "GetVersion.label",
        c().get_version(get(Selector::Label(big.clone())))
    );
    check!(
        "ListPrompts.prefix",
        c().list_prompts(pb::ListPromptsRequest {
            prefix: big.clone(),
            ..Default::default()
        })
    );
    check!(
        "ListPrompts.page_token",
        c().list_prompts(pb::ListPromptsRequest {
            page_token: big.clone(),
            ..Default::default()
        })
    );
    check!(
        "ListVersions.page_token",
        c().list_versions(pb::ListVersionsRequest {
            name: "big/p".into(),
            page_token: big.clone(),
            ..Default::default()
        })
    );
    check!(
        "SetLabel.label",
        c().set_label(pb::SetLabelRequest {
            label: big.clone(),
            ..set_label("big/p", "x", 1, None)
        })
    );
    check!(
        "SetLabel.actor",
        c().set_label(pb::SetLabelRequest {
            actor: big.clone(),
            ..set_label("big/p", "staging", 1, None)
        })
    );
    check!(
        "SetLabel.reason",
        c().set_label(pb::SetLabelRequest {
            reason: big.clone(),
            ..set_label("big/p", "staging", 1, None)
        })
    );
    check!(
        "Rollback.label",
        c().rollback(pb::RollbackRequest {
            label: big.clone(),
            ..rollback("big/p", "x", None)
        })
    );
    check!(
        "RemoveLabel.label",
        c().remove_label(pb::RemoveLabelRequest {
            name: "big/p".into(),
            label: big.clone(),
            actor: "a".into(),
            reason: "r".into()
        })
    );
    check!(
        "ListLabels.name",
        c().list_labels(pb::ListLabelsRequest { name: big.clone() })
    );
    check!(
        "LabelHistory.label",
        c().label_history(pb::LabelHistoryRequest {
            name: "big/p".into(),
            label: big.clone(),
            ..Default::default()
        })
    );
    check!(
        "LabelHistory.page_token",
        c().label_history(pb::LabelHistoryRequest {
            name: "big/p".into(),
            label: "production".into(),
            page_token: big.clone(),
            ..Default::default()
        })
    );
    check!(
        "ResolveAt.label",
        c().resolve_at(pb::ResolveAtRequest {
            name: "big/p".into(),
            label: big.clone(),
            at: Some(pb::resolve_at_request::At::Revision(1))
        })
    );
    answers.push((
        "Watch.names",
        watch_first_messages(&mut c(), watch(&|r| r.names = vec![big.clone()])).await,
    ));
    answers.push((
        "Watch.prefixes",
        watch_first_messages(&mut c(), watch(&|r| r.prefixes = vec![big.clone()])).await,
    ));
    answers.push((
        "Watch.labels",
        watch_first_messages(&mut c(), watch(&|r| r.labels = vec![big.clone()])).await,
    ));
    answers.push((
        "Watch.agent_id",
        watch_first_messages(&mut c(), watch(&|r| r.agent_id = big.clone())).await,
    ));
    check!(
        "AckApplied.agent_id",
        c().ack_applied(ack(&|r| r.agent_id = big.clone()))
    );
    check!(
        "AckApplied.label",
        c().ack_applied(ack(&|r| r.label = big.clone()))
    );
    check!(
        "AckApplied.digest",
        c().ack_applied(ack(&|r| r.digest = big.clone()))
    );
    check!(
        "AckApplied.reason",
        c().ack_applied(ack(&|r| r.reason = big.clone()))
    );
    check!(
        "FleetStatus.label",
        c().fleet_status(pb::FleetStatusRequest {
            name: "big/p".into(),
            label: big.clone(),
            summary_only: false
        })
    );
    check!(
        "RotateSigningKey.actor",
        c().rotate_signing_key(pb::RotateSigningKeyRequest {
            actor: big.clone(),
            reason: "r".into()
        })
    );
    check!(
        "RotateSigningKey.reason",
        c().rotate_signing_key(pb::RotateSigningKeyRequest {
            actor: "a".into(),
            reason: big.clone()
        })
    );
    check!(
        "ListAudit.name",
        c().list_audit(pb::ListAuditRequest {
            name: big.clone(),
            ..Default::default()
        })
    );
    check!(
        "ListAudit.actor",
        c().list_audit(pb::ListAuditRequest {
            actor: big.clone(),
            ..Default::default()
        })
    );
    check!(
        "ListAudit.page_token",
        c().list_audit(pb::ListAuditRequest {
            page_token: big.clone(),
            ..Default::default()
        })
    );
    check!(
        "VerifyAudit.checkpoint",
        c().verify_audit(pb::VerifyAuditRequest {
            checkpoint: Some(pb::Checkpoint {
                sequence: 1,
                head_hash: big.clone(),
                time: None,
                key_id: big.clone(),
                signature: vec![7; 64]
            })
        })
    );
    check!(
        "PruneVersions.actor",
        c().prune_versions(pb::PruneVersionsRequest {
            name: "big/p".into(),
            keep_last: 1,
            actor: big.clone(),
            reason: "r".into(),
            ..Default::default()
        })
    );
    check!(
        "PruneVersions.reason",
        c().prune_versions(pb::PruneVersionsRequest {
            name: "big/p".into(),
            keep_last: 1,
            actor: "a".into(),
            reason: big.clone(),
            ..Default::default()
        })
    );
    check!(
        "FindByDigest.digest",
        c().find_by_digest(pb::FindByDigestRequest {
            digest: big.clone()
        })
    );

    let mut bad = Vec::new();
    for (what, result) in &answers {
        let shown = match result {
            Ok(()) => "Ok".to_string(),
            Err(status) => format!(
                "{:?} ({} bytes of message)",
                status.code(),
                status.message().len()
            ),
        };
        println!("  {what:<45} {shown}");
        if let Err(status) = result {
            if !is_deliberate(status) {
                bad.push(format!(
                    "{what}: {:?} {:?}",
                    status.code(),
                    shorten(status.message(), 100)
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} oversized fields did not get a deliberate status through to the client:\n{}",
        bad.len(),
        answers.len(),
        bad.join("\n")
    );
}

/// ListAudit pages by sequence: the token `N` means "entries after N". The
/// largest token must give an empty last page (or be refused), never a
/// panic in the server (debug builds: `after + 1` overflows and the stream
/// is reset) and never the ledger from its start again (release builds: it
/// wraps to 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_audit_after_the_largest_sequence_is_empty() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, "audit/p", "x").await;
    for token in [u64::MAX, u64::MAX - 1, 1 << 63] {
        let answer = answer(client.list_audit(pb::ListAuditRequest {
            page_token: token.to_string(),
            ..Default::default()
        }))
        .await;
        match answer {
            Ok(page) => assert!(
                page.entries.is_empty() && page.next_page_token.is_empty(),
                "entries after sequence {token}: {page:?}"
            ),
            Err(status) => assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "page_token {token}: {status:?}"
            ),
        }
    }
}

/// Timestamps outside what `google.protobuf.Timestamp` allows: nanos
/// below 0 or of a whole second and more, the year 0, the year 10000.
fn out_of_range_times() -> Vec<(prost_types::Timestamp, &'static str)> {
    let t = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
    vec![
        (t(1_700_000_000, -1), "nanos"),
        (t(1_700_000_000, 1_000_000_000), "nanos"),
        (t(1_700_000_000, i32::MIN), "nanos"),
        // 0000-12-31T23:59:59Z and 10000-01-01T00:00:00Z.
        (t(-62_135_596_801, 0), "seconds"),
        (t(253_402_300_800, 0), "seconds"),
        (t(i64::MIN, 0), "seconds"),
        (t(i64::MAX, 999_999_999), "seconds"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_timestamps_are_invalid_argument_naming_the_field() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, "time/p", "x").await;
    client
        .set_label(set_label("time/p", "production", 1, None))
        .await
        .expect("promote");
    for (time, part) in out_of_range_times() {
        let at = answer(client.resolve_at(pb::ResolveAtRequest {
            name: "time/p".into(),
            label: "production".into(),
            at: Some(pb::resolve_at_request::At::Time(time)),
        }))
        .await;
        assert_status(at, Code::InvalidArgument, &format!("time.{part}:"));
        for field in ["since", "until"] {
            let mut request = pb::ListAuditRequest::default();
            if field == "since" {
                request.since = Some(time);
            } else {
                request.until = Some(time);
            }
            let listed = answer(client.list_audit(request)).await;
            assert_status(listed, Code::InvalidArgument, &format!("{field}.{part}:"));
        }
        let verified = answer(client.verify_audit(pb::VerifyAuditRequest {
            checkpoint: Some(pb::Checkpoint {
                time: Some(time),
                ..Default::default()
            }),
        }))
        .await;
        assert_status(
            verified,
            Code::InvalidArgument,
            &format!("checkpoint.time.{part}:"),
        );
    }
    // The edges themselves are times.
    let edges = [(-62_135_596_800, 0), (253_402_300_799, 999_999_999)];
    for (seconds, nanos) in edges {
        let time = prost_types::Timestamp { seconds, nanos };
        let listed = answer(client.list_audit(pb::ListAuditRequest {
            since: Some(time),
            ..Default::default()
        }))
        .await;
        assert!(listed.is_ok(), "{time:?}: {listed:?}");
    }
}

// ---------------------------------------------------------------------------
// Bytes that are not a message
// ---------------------------------------------------------------------------

/// A codec that sends its bytes as they are, framed as one gRPC message, and
/// hands back the answer's bytes undecoded: the client of another language
/// (or a broken one) that the generated client cannot imitate.
#[derive(Debug, Clone, Default)]
struct RawCodec;

#[derive(Debug, Clone, Default)]
struct RawBytes;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }

    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl tonic::codec::Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        buf.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf as _;
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

/// Bytes that no message of `promptreg.v1` decodes from, whatever its
/// fields: a varint key longer than ten bytes (the issue's twelve 0xff), a
/// field number 0, the wire type 7 that does not exist, and a group that
/// never ends.
const UNDECODABLE: &[(&str, &[u8])] = &[
    ("twelve 0xff bytes", &[0xff; 12]),
    ("field number 0", &[0x00, 0x01]),
    ("wire type 7", &[0x0f]),
    ("an unterminated group", &[0x0b]),
];

/// Every RPC of `promptreg.v1.Registry`, from the descriptor the server
/// publishes for reflection, so that an RPC added later is covered too:
/// (name, client streams, server streams).
fn every_rpc() -> Vec<(String, bool, bool)> {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(promptreg::grpc::FILE_DESCRIPTOR_SET)
        .expect("the descriptor set decodes");
    let service = set
        .file
        .iter()
        .filter(|f| f.package() == "promptreg.v1")
        .flat_map(|f| f.service.iter())
        .find(|s| s.name() == "Registry")
        .expect("the Registry service");
    service
        .method
        .iter()
        .map(|m| {
            (
                m.name().to_string(),
                m.client_streaming(),
                m.server_streaming(),
            )
        })
        .collect()
}

/// `request` with the bearer token.
fn authorized<T>(mut request: tonic::Request<T>, token: &str) -> tonic::Request<T> {
    let value = format!("Bearer {token}").parse().expect("an ASCII token");
    request.metadata_mut().insert("authorization", value);
    request
}

/// Sends `bytes` as the one request message of `rpc` and returns the
/// status the call ends with (OK if it ended without one).
async fn send_raw(
    channel: &tonic::transport::Channel,
    token: &str,
    (rpc, client_streams, server_streams): &(String, bool, bool),
    bytes: &[u8],
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("the channel is ready");
    let path: http::uri::PathAndQuery = format!("/promptreg.v1.Registry/{rpc}")
        .parse()
        .expect("a path");
    let call = async {
        let opened = match (client_streams, server_streams) {
            (false, false) => {
                return grpc
                    .unary(
                        authorized(tonic::Request::new(bytes.to_vec()), token),
                        path,
                        RawCodec,
                    )
                    .await
                    .err()
            }
            (false, true) => {
                grpc.server_streaming(
                    authorized(tonic::Request::new(bytes.to_vec()), token),
                    path,
                    RawCodec,
                )
                .await
            }
            (true, _) => {
                let once = tokio_stream::iter(vec![bytes.to_vec()]);
                grpc.streaming(authorized(tonic::Request::new(once), token), path, RawCodec)
                    .await
            }
        };
        let mut stream = match opened {
            Ok(response) => response.into_inner(),
            Err(status) => return Some(status),
        };
        // A streaming answer may start before the bad request is read.
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    };
    let ended = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .unwrap_or_else(|_| Some(tonic::Status::deadline_exceeded("no answer within 60 s")));
    ended.unwrap_or_else(|| tonic::Status::ok("the call ended without a status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_requests_are_invalid_argument_on_every_rpc() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, "raw/p", "x").await;
    let channel = tonic::transport::Channel::from_shared(server.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connects");
    let rpcs = every_rpc();
    assert!(rpcs.len() >= 21, "every RPC of the service: {rpcs:?}");
    let mut wrong = Vec::new();
    for rpc in &rpcs {
        for (what, bytes) in UNDECODABLE {
            let status = send_raw(&channel, &server.admin_token(), rpc, bytes).await;
            let named = status.message().contains("could not be decoded");
            if status.code() != Code::InvalidArgument || !named {
                wrong.push(format!(
                    "{} sent {what}: {:?} {:?}",
                    rpc.0,
                    status.code(),
                    status.message()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "undecodable requests must be INVALID_ARGUMENT saying so:\n{}",
        wrong.join("\n")
    );
    // And the server goes on serving.
    let resolved = resolve(&mut client, "raw/p", "latest")
        .await
        .expect("the server still answers");
    assert_eq!(resolved.version, 1);
}

/// Request bodies whose gRPC framing is broken before any message decoder
/// sees them (all ASCII, so that a `String` body carries them).
const BROKEN_FRAMES: &[(&str, &str)] = &[
    (
        "a compressed flag without grpc-encoding",
        "\u{1}\0\0\0\u{3}abc",
    ),
    ("compression flag 7", "\u{7}\0\0\0\u{3}abc"),
    ("a message cut short", "\0\0\0\0\u{a}abc"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_framing_is_invalid_argument_on_every_rpc() {
    use tower::Service as _;
    let server = TestServer::start().await;
    let mut channel = tonic::transport::Channel::from_shared(server.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connects");
    let mut wrong = Vec::new();
    // A WatchMany call answers after its headers, in trailers; its bad
    // frames are covered by tests/watch_many.rs.
    let unary_requests = every_rpc().into_iter().filter(|(_, client, _)| !client);
    for (rpc, _, _) in unary_requests {
        for (what, body) in BROKEN_FRAMES {
            let request = http::Request::builder()
                .method("POST")
                .uri(format!("{}/promptreg.v1.Registry/{rpc}", server.url))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("authorization", format!("Bearer {}", server.admin_token()))
                .body(tonic::body::Body::new(body.to_string()))
                .expect("a request");
            std::future::poll_fn(|cx| channel.poll_ready(cx))
                .await
                .expect("ready");
            let response = tokio::time::timeout(Duration::from_secs(60), channel.call(request))
                .await
                .expect("an answer within 60 s")
                .expect("an HTTP answer");
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            };
            if header("grpc-status").as_deref() != Some("3") {
                wrong.push(format!(
                    "{rpc} sent {what}: grpc-status {:?} {:?}",
                    header("grpc-status"),
                    header("grpc-message")
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "broken framing must be INVALID_ARGUMENT:\n{}",
        wrong.join("\n")
    );
}

// ---------------------------------------------------------------------------
// WatchMany
// ---------------------------------------------------------------------------

/// The codes a `WatchEnded` may carry for a bad open or cancel (see
/// `WatchEnded` in the proto; UNAVAILABLE only comes with a stop).
const WATCH_ENDED_CODES: &[Code] = &[
    Code::InvalidArgument,
    Code::AlreadyExists,
    Code::NotFound,
    Code::Cancelled,
    Code::OutOfRange,
    Code::ResourceExhausted,
];

/// A `WatchEnded` message is bounded: the server cuts it at 1 KiB and marks
/// the cut, whatever the request held.
const MAX_ENDED_MESSAGE: usize = 1100;

/// A watch id the generators never produce: the fuzz run's last, normal
/// watch.
const SENTINEL: u64 = u64::MAX - 1;

/// The most watches open at once in the WatchMany fuzz server, so that
/// opens also meet `--max-watchers`.
const FUZZ_MAX_WATCHERS: usize = 16;

/// A string for a watch selector or an agent field: like `string`, but
/// small enough that a request never nears the gRPC message limit (that
/// ends the whole call at the transport, before the server sees a watch).
fn watch_string(rng: &mut Rng) -> String {
    loop {
        let s = string(rng);
        if s.len() <= 5_000 {
            return s;
        }
    }
}

/// Far over every application limit, still under the gRPC message limit.
fn watch_big_string(rng: &mut Rng) -> String {
    let unit = rng.pick(&["a", "é", "x/", "{{"]);
    unit.repeat(rng.pick(&[300, 5_000, 70_000, 1_000_000]) / unit.len())
}

/// A watch id: mostly the small range the stream reuses, 0, the extremes,
/// one of `open` (a duplicate), or any number; never `SENTINEL`.
fn watch_id(rng: &mut Rng, open: &[u64]) -> u64 {
    let id = match rng.below(10) {
        0 => 0,
        1 | 2 if !open.is_empty() => rng.pick(open),
        3 => u64::MAX,
        4 => rng.next(),
        _ => 1 + rng.below(24),
    };
    if id == SENTINEL {
        1
    } else {
        id
    }
}

/// A watch of one real prompt's `production` label (from a snapshot or a
/// revision that exists) with up to three fields replaced by random,
/// invalid or huge ones.
fn watch_open_request(rng: &mut Rng, head: u64) -> pb::WatchRequest {
    let mut req = pb::WatchRequest {
        names: vec![rng.pick(NAMES).into()],
        labels: vec!["production".into()],
        start_revision: if rng.chance(2) {
            0
        } else {
            1 + rng.below(head.max(1))
        },
        ..Default::default()
    };
    if rng.chance(3) {
        req.agent_id = format!("fuzz-agent-{}", rng.below(8));
        req.agent = Some(pb::AgentInfo {
            host: "fuzz-host".into(),
            sdk: "fuzz".into(),
            version: "1".into(),
            ..Default::default()
        });
    }
    if rng.chance(3) {
        return req;
    }
    for _ in 0..rng.below(3) + 1 {
        match rng.below(11) {
            0 => req.names = (0..rng.below(4)).map(|_| watch_string(rng)).collect(),
            1 => req.names.push(rng.pick(NAMES).into()),
            2 => {
                req.prefixes = (0..rng.below(3))
                    .map(|_| match rng.below(4) {
                        0 => "fuzz/".into(),
                        1 => String::new(),
                        2 => "x".repeat(rng.pick(&[256, 257, 4097])),
                        _ => watch_string(rng),
                    })
                    .collect()
            }
            3 => req.labels = (0..rng.below(3)).map(|_| watch_string(rng)).collect(),
            4 => req.start_revision = number(rng),
            5 => req.include_versions = rng.chance(2),
            6 => req.agent_id = watch_string(rng),
            7 => {
                req.agent = Some(pb::AgentInfo {
                    host: watch_string(rng),
                    sdk: watch_string(rng),
                    version: watch_string(rng),
                    ..Default::default()
                })
            }
            8 => {
                // One field far over its limit.
                let big = watch_big_string(rng);
                match rng.below(5) {
                    0 => req.names = vec![big],
                    1 => req.prefixes = vec![big],
                    2 => req.labels = vec![big],
                    3 => req.agent_id = big,
                    _ => {
                        req.agent_id = "fuzz-agent-big".into();
                        req.agent = Some(pb::AgentInfo {
                            host: big,
                            ..Default::default()
                        });
                    }
                }
            }
            9 => req.labels.clear(),
            _ => {
                // Every prompt.
                req.names.clear();
                req.prefixes.clear();
            }
        }
    }
    req
}

/// One random client message: an open (bad ids, bad or missing watches),
/// a cancel (open and unknown ids) or no request at all.
fn watch_many_request(rng: &mut Rng, open: &[u64], head: u64) -> pb::WatchManyRequest {
    let request = match rng.below(12) {
        0 => None,
        1..=3 => Some(WatchCommand::Cancel(pb::WatchCancel {
            watch_id: if !open.is_empty() && rng.chance(2) {
                rng.pick(open)
            } else {
                watch_id(rng, open)
            },
        })),
        _ => Some(WatchCommand::Open(pb::WatchOpen {
            watch_id: watch_id(rng, open),
            watch: if rng.chance(10) {
                None
            } else {
                Some(watch_open_request(rng, head))
            },
        })),
    };
    pb::WatchManyRequest { request }
}

/// A watch whose every change is known: one real prompt's `production`
/// label, no versions.
fn simple_watch(request: &pb::WatchRequest) -> Option<String> {
    let simple = request.names.len() == 1
        && NAMES.contains(&request.names[0].as_str())
        && request.prefixes.is_empty()
        && request.labels == ["production"]
        && !request.include_versions;
    simple.then(|| request.names[0].clone())
}

/// One open watch, as the client saw it.
struct OpenWatch {
    /// For a simple watch: its prompt and the first revision it must
    /// deliver.
    simple: Option<(String, u64)>,
    /// The revisions of the change batches it received.
    revisions: Vec<u64>,
}

/// What a WatchMany client can check on every message, whatever it sent.
struct WatchChecker {
    /// Watches that received `created` and have not ended.
    open: BTreeMap<u64, OpenWatch>,
    /// Every `production` move: (prompt, revision), in order.
    moves: Vec<(String, u64)>,
    /// `WatchEnded` answers by code.
    ended: BTreeMap<String, u64>,
    /// Messages that were not `WatchEnded`, by kind.
    responses: BTreeMap<&'static str, u64>,
    /// Change batches checked against the known moves.
    checked_changes: u64,
}

/// What a message was, for the caller's own expectations.
enum Seen {
    Created(u64),
    Ended(u64, Code, String),
    Other,
}

impl WatchChecker {
    /// The revisions a simple watch of `name` from `from` must deliver.
    fn expected(&self, name: &str, from: u64) -> Vec<u64> {
        self.moves
            .iter()
            .filter(|(n, r)| n == name && *r >= from)
            .map(|(_, r)| *r)
            .collect()
    }

    fn open_ids(&self) -> Vec<u64> {
        self.open.keys().copied().collect()
    }

    /// Checks one message. `opening` is the open being answered (its id
    /// and request), when the caller knows it.
    fn observe(
        &mut self,
        message: pb::WatchManyResponse,
        opening: Option<(u64, &pb::WatchRequest)>,
    ) -> Result<Seen, String> {
        let ids = message.watch_ids;
        if ids.is_empty() {
            return Err(format!("a message for no watch: {:?}", message.event));
        }
        let event = match message.event {
            Some(WatchOut::Ended(ended)) => {
                let code = Code::from_i32(ended.code);
                *self.ended.entry(format!("{code:?}")).or_default() += 1;
                if !WATCH_ENDED_CODES.contains(&code) {
                    return Err(format!(
                        "ended {ids:?} with an undocumented code: {ended:?}"
                    ));
                }
                if ended.message.trim().is_empty() || ended.message.len() > MAX_ENDED_MESSAGE {
                    return Err(format!(
                        "ended {ids:?} with an empty or unbounded message ({} bytes): {:?}",
                        ended.message.len(),
                        shorten(&ended.message, 200)
                    ));
                }
                // Every answer to an open or a cancel names one watch.
                let [id] = ids[..] else {
                    return Err(format!("one ended for several watches {ids:?}: {ended:?}"));
                };
                match code {
                    // The open watch goes on.
                    Code::AlreadyExists => {
                        if !self.open.contains_key(&id) && opening.is_some() {
                            return Err(format!("ALREADY_EXISTS for watch {id}, not open"));
                        }
                    }
                    Code::NotFound if self.open.contains_key(&id) => {
                        return Err(format!("NOT_FOUND for watch {id}, which is open"));
                    }
                    _ => {
                        self.open.remove(&id);
                    }
                }
                return Ok(Seen::Ended(id, code, ended.message));
            }
            Some(WatchOut::Response(pb::WatchResponse { event: Some(event) })) => event,
            other => return Err(format!("a message with no event for {ids:?}: {other:?}")),
        };
        if let WatchEvent::Created(created) = &event {
            *self.responses.entry("created").or_default() += 1;
            let [id] = ids[..] else {
                return Err(format!("one created for several watches {ids:?}"));
            };
            if self.open.contains_key(&id) {
                return Err(format!("a second created for open watch {id}"));
            }
            let simple = opening
                .filter(|(opening, _)| *opening == id)
                .and_then(|(_, request)| {
                    let name = simple_watch(request)?;
                    let from = match request.start_revision {
                        0 => created.revision + 1,
                        start => start,
                    };
                    Some((name, from))
                });
            self.open.insert(
                id,
                OpenWatch {
                    simple,
                    revisions: Vec::new(),
                },
            );
            return Ok(Seen::Created(id));
        }
        for id in &ids {
            let Some(watch) = self.open.get_mut(id) else {
                return Err(format!(
                    "a message for watch {id}, which is not open: {event:?}"
                ));
            };
            match &event {
                WatchEvent::Changes(batch) => {
                    if watch
                        .revisions
                        .last()
                        .is_some_and(|last| *last >= batch.revision)
                    {
                        return Err(format!(
                            "watch {id}: revision {} after {:?}",
                            batch.revision, watch.revisions
                        ));
                    }
                    watch.revisions.push(batch.revision);
                }
                WatchEvent::Snapshot(snapshot) => {
                    if !watch.revisions.is_empty() {
                        return Err(format!("watch {id}: a snapshot after changes"));
                    }
                    if let Some((name, _)) = &watch.simple {
                        if let Some(other) = snapshot
                            .labels
                            .iter()
                            .find(|l| l.name != *name || l.label != "production")
                        {
                            return Err(format!(
                                "watch {id} of {name}/production got {other:?} in its snapshot"
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        *self
            .responses
            .entry(match &event {
                WatchEvent::Snapshot(_) => "snapshot",
                WatchEvent::Changes(_) => "changes",
                WatchEvent::Progress(_) => "progress",
                WatchEvent::Created(_) => "created",
            })
            .or_default() += 1;
        // Simple watches: in order and without a gap, exactly what moved,
        // and a progress of R means everything up to R has come.
        for id in &ids {
            let watch = &self.open[id];
            let Some((name, from)) = &watch.simple else {
                continue;
            };
            let expected = self.expected(name, *from);
            if matches!(event, WatchEvent::Changes(_)) {
                self.checked_changes += 1;
            }
            let upto = match &event {
                WatchEvent::Progress(progress) => progress.revision,
                _ => 0,
            };
            let complete: Vec<u64> = expected.iter().copied().filter(|r| *r <= upto).collect();
            if !expected.starts_with(&watch.revisions) || !watch.revisions.starts_with(&complete) {
                return Err(format!(
                    "watch {id} of {name}/production from revision {from} received {:?} \
                     (after {event:?}); the moves were {expected:?}",
                    watch.revisions
                ));
            }
        }
        Ok(Seen::Other)
    }
}

/// One WatchMany call under fuzzing.
struct FuzzedWatchMany {
    seed: u64,
    send: tokio::sync::mpsc::Sender<pb::WatchManyRequest>,
    stream: tonic::Streaming<pb::WatchManyResponse>,
    checker: WatchChecker,
}

impl FuzzedWatchMany {
    /// The next message, checked. The stream never fails, never ends and
    /// never goes silent while an answer is due.
    async fn next(&mut self, opening: Option<(u64, &pb::WatchRequest)>, doing: &str) -> Seen {
        let seed = self.seed;
        let message =
            match tokio::time::timeout(Duration::from_secs(60), self.stream.message()).await {
                Err(_) => panic!("WatchMany (seed {seed}): no message within 60 s while {doing}"),
                Ok(Err(status)) => {
                    panic!("WatchMany (seed {seed}): the call failed while {doing}: {status:?}")
                }
                Ok(Ok(None)) => panic!("WatchMany (seed {seed}): the call ended while {doing}"),
                Ok(Ok(Some(message))) => message,
            };
        self.checker
            .observe(message, opening)
            .unwrap_or_else(|e| panic!("WatchMany (seed {seed}) while {doing}: {e}"))
    }

    async fn send(&self, request: pb::WatchManyRequest) {
        self.send.send(request).await.expect("the call is open");
    }

    /// Sends `request` and reads until its answer, checking the answer
    /// against what the client knows.
    async fn exchange(&mut self, request: pb::WatchManyRequest) -> Seen {
        let doing = format!("answering {}", shorten(&format!("{request:?}"), 300));
        let seed = self.seed;
        // The answer this request must get: (id, exact code), or None for
        // an open that may succeed.
        let (id, expected, opening) = match &request.request {
            None => (0, Some(Code::InvalidArgument), None),
            Some(WatchCommand::Cancel(cancel)) => {
                let code = if self.checker.open.contains_key(&cancel.watch_id) {
                    Code::Cancelled
                } else {
                    Code::NotFound
                };
                (cancel.watch_id, Some(code), None)
            }
            Some(WatchCommand::Open(open)) => {
                let id = open.watch_id;
                match &open.watch {
                    _ if id == 0 => (0, Some(Code::InvalidArgument), None),
                    _ if self.checker.open.contains_key(&id) => {
                        (id, Some(Code::AlreadyExists), None)
                    }
                    None => (id, Some(Code::InvalidArgument), None),
                    Some(watch) => (id, None, Some((id, watch.clone()))),
                }
            }
        };
        self.send(request).await;
        loop {
            let seen = self
                .next(opening.as_ref().map(|(id, w)| (*id, w)), &doing)
                .await;
            match seen {
                Seen::Other => {}
                Seen::Created(created) if opening.is_some() && created == id => return seen,
                Seen::Created(other) => {
                    panic!("WatchMany (seed {seed}): created for watch {other} while {doing}")
                }
                Seen::Ended(ended, code, ref message) => {
                    if ended != id {
                        panic!(
                            "WatchMany (seed {seed}): watch {ended} ended ({code:?} {message:?}) \
                             while {doing}"
                        );
                    }
                    match expected {
                        Some(expected) => assert_eq!(
                            code, expected,
                            "WatchMany (seed {seed}): {message:?} while {doing}"
                        ),
                        None => {
                            assert!(
                                matches!(
                                    code,
                                    Code::InvalidArgument
                                        | Code::OutOfRange
                                        | Code::ResourceExhausted
                                ),
                                "WatchMany (seed {seed}): {code:?} {message:?} while {doing}"
                            );
                            // A refused selector names its field.
                            if code == Code::InvalidArgument {
                                assert!(
                                    message.starts_with("watch."),
                                    "WatchMany (seed {seed}): {message:?} names no field \
                                     while {doing}"
                                );
                            }
                        }
                    }
                    return seen;
                }
            }
        }
    }
}

/// Moves a random prompt's `production` label to another version and
/// records the move.
async fn watch_fuzz_promote(client: &mut Client, rng: &mut Rng, checker: &mut WatchChecker) {
    let name = rng.pick(NAMES);
    let moved = client
        .set_label(set_label(name, "production", 1 + rng.below(3), None))
        .await
        .expect("promote")
        .into_inner();
    if moved.changed {
        checker.moves.push((name.to_string(), moved.revision));
    }
}

/// A seeded random sequence of WatchMany opens (bad, duplicate and zero
/// ids; invalid, huge and missing selectors; huge start revisions),
/// cancels (open and unknown ids) and empty requests on one call, first one
/// at a time, then as a burst. The call never fails; every bad open or
/// cancel gets a `WatchEnded` with a documented code and a bounded message;
/// watches that are served stay in order without a gap, also when they are
/// merged; and afterwards the same call serves a normal watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_many_survives_random_opens_and_cancels() {
    let (seed, rounds) = fuzz_settings();
    println!(
        "WatchMany fuzz: seed {seed} (PROMPTREG_FUZZ_SEED={seed} replays it), {rounds} rounds"
    );
    let mut rng = Rng::new(seed);

    let server = TestServer::start_with(|config| {
        config.watch.max_watchers = FUZZ_MAX_WATCHERS;
        config.watch.progress_interval = Duration::from_millis(100);
    })
    .await;
    let mut client = server.client().await;
    client = client.max_encoding_message_size(usize::MAX);
    let mut checker = WatchChecker {
        open: BTreeMap::new(),
        moves: Vec::new(),
        ended: BTreeMap::new(),
        responses: BTreeMap::new(),
        checked_changes: 0,
    };
    for name in NAMES {
        for i in 1..=3 {
            client
                .publish_version(publish_text(name, &format!("{name} text {i}"), &[]))
                .await
                .expect("seed publish");
        }
    }
    for _ in 0..6 {
        watch_fuzz_promote(&mut client, &mut rng, &mut checker).await;
    }
    let head = checker.moves.last().map_or(1, |(_, r)| *r) + 1;

    let (send, receive) = tokio::sync::mpsc::channel(64);
    let stream = client
        .clone()
        .watch_many(tokio_stream::wrappers::ReceiverStream::new(receive))
        .await
        .expect("WatchMany opens")
        .into_inner();
    let mut many = FuzzedWatchMany {
        seed,
        send,
        stream,
        checker,
    };
    let started = std::time::Instant::now();

    // One request at a time: each answer is known exactly.
    for round in 0..rounds {
        if round % 8 == 0 {
            watch_fuzz_promote(&mut client, &mut rng, &mut many.checker).await;
        }
        let request = watch_many_request(&mut rng, &many.checker.open_ids(), head);
        many.exchange(request).await;
    }

    // A burst, sent while the answers are read: every cancel and every
    // empty request is answered, whatever the order.
    let open = many.checker.open_ids();
    let mut burst: Vec<pb::WatchManyRequest> = (0..rounds)
        .map(|_| watch_many_request(&mut rng, &open, head))
        .collect();
    // Last, a request without a watch: once it is answered, every request
    // of the burst has been handled.
    burst.push(pb::WatchManyRequest { request: None });
    let cancels = burst
        .iter()
        .filter(|r| matches!(r.request, Some(WatchCommand::Cancel(_))))
        .count();
    let zero_ids = burst
        .iter()
        .filter(|r| match &r.request {
            None => true,
            Some(WatchCommand::Open(open)) => open.watch_id == 0,
            Some(WatchCommand::Cancel(_)) => false,
        })
        .count();
    let mut ids: Vec<u64> = burst
        .iter()
        .filter_map(|r| match &r.request {
            Some(WatchCommand::Open(open)) if open.watch_id != 0 => Some(open.watch_id),
            _ => None,
        })
        .chain(open.iter().copied())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let sender = many.send.clone();
    let sending = tokio::spawn(async move {
        for request in burst {
            sender.send(request).await.expect("the call is open");
        }
    });
    let (mut cancels_answered, mut zero_ids_answered) = (0, 0);
    let mut read = 0u64;
    while cancels_answered < cancels || zero_ids_answered < zero_ids {
        read += 1;
        if read.is_multiple_of(32) {
            watch_fuzz_promote(&mut client, &mut rng, &mut many.checker).await;
        }
        if let Seen::Ended(id, code, _) = many.next(None, "reading the burst's answers").await {
            match code {
                Code::Cancelled | Code::NotFound => cancels_answered += 1,
                Code::InvalidArgument if id == 0 => zero_ids_answered += 1,
                _ => {}
            }
        }
    }
    assert_eq!(
        (cancels_answered, zero_ids_answered),
        (cancels, zero_ids),
        "seed {seed}: one answer for every cancel and every request without a watch id"
    );
    sending.await.expect("the burst is sent");

    // Cancel everything: every membership is released.
    for id in ids {
        let doing = format!("cancelling watch {id} after the burst");
        many.send(pb::WatchManyRequest {
            request: Some(WatchCommand::Cancel(pb::WatchCancel { watch_id: id })),
        })
        .await;
        loop {
            match many.next(None, &doing).await {
                Seen::Ended(ended, code, _) if ended == id => match code {
                    Code::Cancelled | Code::NotFound => break,
                    // A late answer to an open of the burst, refused while
                    // its watcher started.
                    Code::ResourceExhausted | Code::OutOfRange => {}
                    _ => panic!("seed {seed}: {code:?} while {doing}"),
                },
                // The burst's last opens may still be answered.
                Seen::Ended(..) | Seen::Created(_) | Seen::Other => {}
            }
        }
    }
    assert!(
        many.checker.open.is_empty(),
        "seed {seed}: watches still open after cancelling every id: {:?}",
        many.checker.open_ids()
    );
    let registry = server.registry();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let open = registry
            .watch_stats()
            .open_streams
            .load(std::sync::atomic::Ordering::SeqCst);
        let fleet = client
            .fleet_status(pb::FleetStatusRequest::default())
            .await
            .expect("fleet status")
            .into_inner();
        let connected: Vec<&str> = fleet
            .agents
            .iter()
            .filter(|a| a.connected)
            .map(|a| a.agent_id.as_str())
            .collect();
        if open == 0 && connected.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "seed {seed}: after every watch was cancelled, {open} watches still count \
             and agents {connected:?} are still connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The same call still serves a normal watch.
    let normal = pb::WatchRequest {
        names: vec!["fuzz/a".into()],
        labels: vec!["production".into()],
        agent_id: "fuzz-sentinel".into(),
        ..Default::default()
    };
    let seen = many
        .exchange(pb::WatchManyRequest {
            request: Some(WatchCommand::Open(pb::WatchOpen {
                watch_id: SENTINEL,
                watch: Some(normal),
            })),
        })
        .await;
    assert!(
        matches!(seen, Seen::Created(SENTINEL)),
        "seed {seed}: a normal watch opens"
    );
    let moved = client
        .set_label(set_label("fuzz/a", "production", 1, None))
        .await
        .expect("promote")
        .into_inner();
    let moved = if moved.changed {
        moved
    } else {
        client
            .set_label(set_label("fuzz/a", "production", 2, None))
            .await
            .expect("promote")
            .into_inner()
    };
    many.checker
        .moves
        .push(("fuzz/a".to_string(), moved.revision));
    while !many.checker.open[&SENTINEL]
        .revisions
        .contains(&moved.revision)
    {
        many.next(None, "waiting for the normal watch's change")
            .await;
    }
    let fleet = client
        .fleet_status(pb::FleetStatusRequest {
            name: "fuzz/a".into(),
            label: "production".into(),
            summary_only: false,
        })
        .await
        .expect("fleet status")
        .into_inner();
    assert!(
        fleet
            .agents
            .iter()
            .any(|a| a.agent_id == "fuzz-sentinel" && a.connected),
        "seed {seed}: the normal watch's agent is connected: {fleet:?}"
    );

    println!(
        "WatchMany fuzz: {} requests in {:.1} s; ended by code {:?}; responses {:?}; \
         {} change batches checked against the moves",
        2 * rounds + 1,
        started.elapsed().as_secs_f64(),
        many.checker.ended,
        many.checker.responses,
        many.checker.checked_changes
    );
}
