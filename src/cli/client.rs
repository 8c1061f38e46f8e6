//! The client subcommands: one request (or a few pages), printed as text or
//! JSON. Errors print one line on stderr and map to the documented exit code.

use super::text::{self, ago, counted, short_digest, table, Listing};
use super::{exit, local_user, ClientOptions, Command, OutputFormat};
use crate::grpc::pb::{self, registry_client::RegistryClient};
use crate::grpc::timestamp::from_timestamp;
use crate::time::format_micros;
use serde_json::{json, Value};
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;

/// A failed client command: what to print and the exit code.
pub(super) struct Failure {
    pub(super) code: i32,
    pub(super) message: String,
}

impl Failure {
    pub(super) fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: exit::USAGE,
            message: message.into(),
        }
    }
}

impl From<tonic::Status> for Failure {
    /// A status made on this side from a transport error (no answer came)
    /// is "cannot reach", exit 3; every status the server answered with,
    /// UNAVAILABLE included, is a refusal, exit 1.
    fn from(status: tonic::Status) -> Failure {
        if let Some(source) = std::error::Error::source(&status) {
            return Failure {
                code: exit::UNREACHABLE,
                message: format!(
                    "cannot reach the registry: {}",
                    why_unreachable(source, status.message())
                ),
            };
        }
        let kind = match status.code() {
            Code::NotFound => "not found",
            Code::InvalidArgument => "invalid argument",
            Code::FailedPrecondition => "failed precondition",
            Code::Unavailable => "unavailable",
            _ => "refused",
        };
        Failure {
            code: exit::REFUSED,
            message: format!("{kind}: {}", status.message()),
        }
    }
}

/// Why a connection failed, in the words an operator searches for first:
/// connection refused, name not resolved, timed out, TLS; then the
/// innermost error's own words.
pub(super) fn why_unreachable(error: &(dyn std::error::Error + 'static), context: &str) -> String {
    let mut messages = vec![context.to_string()];
    let mut io_kind = None;
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            io_kind.get_or_insert(io.kind());
        }
        messages.push(e.to_string());
        current = e.source();
    }
    let all = messages.join(": ").to_lowercase();
    let innermost = messages
        .iter()
        .rev()
        .find(|m| !m.is_empty())
        .cloned()
        .unwrap_or_default();
    use std::io::ErrorKind;
    let why = if all.contains("dns error")
        || all.contains("failed to lookup address")
        || all.contains("name or service not known")
        || all.contains("no address associated")
    {
        "name not resolved"
    } else if io_kind == Some(ErrorKind::ConnectionRefused) || all.contains("connection refused") {
        "connection refused (is the server running on that address?)"
    } else if io_kind == Some(ErrorKind::TimedOut)
        || all.contains("timed out")
        || all.contains("elapsed")
    {
        "timed out"
    } else if all.contains("tls") || all.contains("certificate") || all.contains("handshake") {
        "TLS handshake failed"
    } else if io_kind == Some(ErrorKind::ConnectionReset) || all.contains("connection reset") {
        "connection reset"
    } else if all.contains("unreachable") {
        "network unreachable"
    } else {
        "transport error"
    };
    format!("{why} ({innermost})")
}

/// `--server` as an endpoint URI: `HOST:PORT` means `http://HOST:PORT`;
/// `https://` is refused while the server has no TLS (it would otherwise
/// talk plaintext to an address that promised encryption).
pub(super) fn server_uri(raw: &str) -> Result<String, Failure> {
    let raw = raw.trim();
    match raw.split_once("://") {
        None => Ok(format!("http://{raw}")),
        Some(("http", _)) => Ok(raw.to_string()),
        Some(("https", _)) => Err(Failure::usage(format!(
            "--server {raw}: https:// is not supported yet: promptreg serves plaintext gRPC only \
             (no TLS); use HOST:PORT or http://HOST:PORT, over a network you trust"
        ))),
        Some((scheme, _)) => Err(Failure::usage(format!(
            "--server {raw}: unknown scheme {scheme}://; use HOST:PORT or http://HOST:PORT"
        ))),
    }
}

/// Runs one client subcommand; returns the process exit code.
pub async fn run_client(command: Command) -> i32 {
    match dispatch(command).await {
        Ok(()) => 0,
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            failure.code
        }
    }
}

pub(super) async fn connect(options: &ClientOptions) -> Result<RegistryClient<Channel>, Failure> {
    let uri = server_uri(&options.server)?;
    let endpoint = tonic::transport::Endpoint::from_shared(uri)
        .map_err(|e| {
            Failure::usage(format!(
                "--server {:?} is not an address: {e}",
                options.server
            ))
        })?
        .connect_timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.map_err(|e| Failure {
        code: exit::UNREACHABLE,
        message: format!(
            "cannot reach the registry at {}: {}",
            options.server,
            why_unreachable(&e, "")
        ),
    })?;
    Ok(RegistryClient::new(channel))
}

/// Prints one result: text as given, or the JSON object on one line.
pub(super) fn emit(options: &ClientOptions, text: impl FnOnce() -> String, json: Value) {
    match options.output {
        OutputFormat::Text => println!("{}", text()),
        OutputFormat::Json => println!("{json}"),
    }
}

async fn dispatch(command: Command) -> Result<(), Failure> {
    match command {
        Command::Serve(_) => unreachable!("serve is dispatched by main"),
        Command::Watch(args) => return super::watch::run_watch(args).await,
        Command::Keys(args) => return super::provenance::keys(args).await,
        Command::Verify(args) => return super::provenance::verify(args).await,
        Command::Audit(args) => return super::provenance::audit(args).await,
        Command::Prune(args) => return super::provenance::prune(args).await,
        Command::Backup(args) => return super::backup::backup(args).await,
        Command::Restore(args) => return super::backup::restore(args),
        Command::Check(args) => return super::backup::check(args),
        Command::Completion(args) => {
            use std::io::Write as _;
            let written = std::io::stdout().lock().write_all(&args.script());
            return match written {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(Failure::usage(format!("cannot write the script: {e}")))
                }
                _ => Ok(()),
            };
        }
        Command::Whois(args) => return super::lookup::whois(args).await,
        Command::Get(args) => return super::lookup::get(args).await,
        Command::Resolve(args) => return super::lookup::resolve(args).await,
        Command::Fleet(args) => {
            let mut client = connect(&args.client).await?;
            let request = pb::FleetStatusRequest {
                name: args.name.clone(),
                label: args.label.clone(),
                summary_only: false,
            };
            let status = client.fleet_status(request).await?.into_inner();
            let summary = status.summary.unwrap_or_default();
            if args.client.output == OutputFormat::Text {
                let agents = u64::from(summary.in_sync + summary.stale + summary.disconnected);
                println!(
                    "{} {}: {}: {} in sync, {} stale, {} disconnected",
                    args.name,
                    args.label,
                    counted(agents, "agent"),
                    summary.in_sync,
                    summary.stale,
                    summary.disconnected
                );
                let header = &[
                    "AGENT",
                    "STATE",
                    "APPLIED",
                    "TARGET",
                    "LAST SEEN",
                    "REJECTED",
                ];
                let rows: Vec<Vec<String>> = status.agents.iter().map(fleet_row).collect();
                if !rows.is_empty() {
                    println!("{}", table(header, &rows));
                }
            } else {
                let object = json!({"name": args.name, "label": args.label,
                       "agents": status.agents.iter().map(|a| json!({
                           "agent_id": a.agent_id, "connected": a.connected,
                           "applied_version": version_or_null(a.applied_version), "applied_digest": a.applied_digest,
                           "target_version": version_or_null(a.target_version), "in_sync": a.in_sync,
                           "last_seen": time_text(&a.last_seen),
                           "host": a.agent.as_ref().map(|i| i.host.clone()).unwrap_or_default(),
                           "sdk": a.agent.as_ref().map(|i| i.sdk.clone()).unwrap_or_default(),
                           "rejected_version": version_or_null(a.rejected_version), "rejected_reason": a.rejected_reason,
                       })).collect::<Vec<_>>(),
                       "summary": {"in_sync": summary.in_sync, "stale": summary.stale, "disconnected": summary.disconnected}});
                println!("{object}");
            }
        }
        Command::Publish(args) => {
            let template = read_template(&args)?;
            let model_config_json = read_model_config(&args)?;
            let mut tags = std::collections::HashMap::new();
            for tag in &args.tags {
                let (k, v) = tag
                    .split_once('=')
                    .ok_or_else(|| Failure::usage(format!("--tag {tag:?} is not KEY=VALUE")))?;
                tags.insert(k.to_string(), v.to_string());
            }
            let mut client = connect(&args.client).await?;
            let request = pb::PublishVersionRequest {
                name: args.name.clone(),
                template: Some(template),
                variables: args.vars.clone(),
                model_config_json,
                author: args.author.clone().unwrap_or_else(local_user),
                description: args.description.clone(),
                tags,
            };
            let r = client.publish_version(request).await?.into_inner();
            emit(
                &args.client,
                || {
                    let what = if r.created {
                        "published"
                    } else {
                        "already existed as"
                    };
                    format!(
                        "{} {what} version {} ({}) at revision {}",
                        args.name,
                        r.version,
                        short_digest(&r.digest),
                        r.revision
                    )
                },
                json!({"name": args.name, "version": r.version, "digest": r.digest, "revision": r.revision, "created": r.created}),
            );
        }
        Command::List(args) => {
            let mut client = connect(&args.client).await?;
            let mut listing = Listing::new(
                &args.client,
                &["NAME", "LATEST", "DIGEST", "UPDATED"],
                "no prompts",
            );
            let mut token = String::new();
            loop {
                let request = pb::ListPromptsRequest {
                    prefix: args.prefix.clone(),
                    page_size: 1000,
                    page_token: token,
                };
                let page = client.list_prompts(request).await?.into_inner();
                for p in &page.prompts {
                    let updated = p
                        .updated_at
                        .as_ref()
                        .map(|t| format_micros(from_timestamp(t)))
                        .unwrap_or_default();
                    listing.row(
                        || {
                            vec![
                                p.name.clone(),
                                format!("v{}", p.latest_version),
                                short_digest(&p.latest_digest),
                                updated.clone(),
                            ]
                        },
                        json!({"name": p.name, "version": p.latest_version, "digest": p.latest_digest, "updated_at": updated}),
                    );
                }
                if page.next_page_token.is_empty() {
                    listing.finish();
                    break;
                }
                token = page.next_page_token;
            }
        }
        Command::Versions(args) => {
            let mut client = connect(&args.client).await?;
            let mut listing = Listing::new(
                &args.client,
                &["VERSION", "DIGEST", "CREATED", "AUTHOR", "DESCRIPTION"],
                "no versions",
            );
            let mut token = String::new();
            loop {
                let request = pb::ListVersionsRequest {
                    name: args.name.clone(),
                    page_size: 1000,
                    page_token: token,
                };
                let page = client.list_versions(request).await?.into_inner();
                for v in &page.versions {
                    let created = time_text(&v.created_at);
                    listing.row(
                        || {
                            vec![
                                format!("v{}", v.version),
                                short_digest(&v.digest),
                                created.clone(),
                                v.author.clone(),
                                v.description.clone(),
                            ]
                        },
                        json!({"name": v.name, "version": v.version, "digest": v.digest, "revision": v.revision,
                               "author": v.author, "description": v.description, "created_at": created}),
                    );
                }
                if page.next_page_token.is_empty() {
                    listing.finish();
                    break;
                }
                token = page.next_page_token;
            }
        }
        Command::Labels(args) => {
            let mut client = connect(&args.client).await?;
            let response = client
                .list_labels(pb::ListLabelsRequest {
                    name: args.name.clone(),
                })
                .await?
                .into_inner();
            let mut listing = Listing::new(
                &args.client,
                &["LABEL", "VERSION", "DIGEST", "REVISION", "UPDATED"],
                "no labels",
            );
            for l in &response.labels {
                let updated = time_text(&l.updated_at);
                listing.row(
                    || {
                        vec![
                            l.label.clone(),
                            format!("v{}", l.version),
                            short_digest(&l.digest),
                            l.revision.to_string(),
                            updated.clone(),
                        ]
                    },
                    json!({"name": args.name, "label": l.label, "version": l.version, "digest": l.digest,
                           "revision": l.revision, "updated_at": updated}),
                );
            }
            listing.finish();
        }
        Command::Promote(args) => return super::moves::promote(args).await,
        Command::Rollback(args) => return super::moves::rollback(args).await,
        Command::Unlabel(args) => return super::moves::unlabel(args).await,
        Command::History(args) => {
            let mut client = connect(&args.client).await?;
            let mut listing = Listing::new(
                &args.client,
                &[
                    "REVISION", "TIME", "KIND", "MOVE", "DIGEST", "ACTOR", "TRACE", "REASON",
                ],
                "no moves",
            );
            let mut token = String::new();
            loop {
                let request = pb::LabelHistoryRequest {
                    name: args.name.clone(),
                    label: args.label.clone(),
                    page_size: 1000,
                    page_token: token,
                };
                let page = client.label_history(request).await?.into_inner();
                for m in &page.moves {
                    listing.row(|| move_row(m), move_json(m));
                }
                if page.next_page_token.is_empty() {
                    listing.finish();
                    break;
                }
                token = page.next_page_token;
            }
        }
        Command::Diff(args) => {
            let mut client = connect(&args.client).await?;
            let request = pb::DiffVersionsRequest {
                name: args.name.clone(),
                from_version: args.from,
                to_version: args.to,
            };
            let d = client.diff_versions(request).await?.into_inner();
            emit(
                &args.client,
                || diff_text(&args.name, args.from, args.to, &d),
                json!({"name": args.name, "from_version": args.from, "to_version": args.to,
                       "from_digest": d.from_digest, "to_digest": d.to_digest,
                       "template_diff": d.template_diff, "variables_added": d.variables_added,
                       "variables_removed": d.variables_removed, "model_config_diff": d.model_config_diff,
                       "tags_changed": d.tags_changed}),
            );
        }
    }
    Ok(())
}

fn read_template(args: &super::PublishArgs) -> Result<pb::Template, Failure> {
    let read = |path: &std::path::Path, flag: &str| read_file_or_stdin(path, flag);
    let kind = if let Some(text) = &args.template {
        pb::template::Kind::Text(text.clone())
    } else if let Some(path) = &args.template_file {
        pb::template::Kind::Text(read(path, "--template-file")?)
    } else if let Some(path) = &args.chat_file {
        let raw = read(path, "--chat-file")?;
        pb::template::Kind::Chat(
            parse_chat(&raw)
                .map_err(|e| Failure::usage(format!("--chat-file {}: {e}", path.display())))?,
        )
    } else {
        return Err(Failure::usage(
            "one of --template, --template-file, --chat-file is required",
        ));
    };
    Ok(pb::Template { kind: Some(kind) })
}

/// Reads a file named by a flag; `-` is standard input.
fn read_file_or_stdin(path: &std::path::Path, flag: &str) -> Result<String, Failure> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| Failure::usage(format!("{flag} -: reading standard input: {e}")))?;
        return Ok(text);
    }
    std::fs::read_to_string(path)
        .map_err(|e| Failure::usage(format!("{flag} {}: {e}", path.display())))
}

/// `--model-config JSON` or `--model-config-file F` (`-`: standard input);
/// empty when neither is given.
fn read_model_config(args: &super::PublishArgs) -> Result<String, Failure> {
    match (&args.model_config, &args.model_config_file) {
        (Some(json), _) => Ok(json.clone()),
        (None, Some(path)) => read_file_or_stdin(path, "--model-config-file"),
        (None, None) => Ok(String::new()),
    }
}

/// A chat file is a JSON array of `{"role", "content"}` objects, or an object
/// with such an array under `messages`.
fn parse_chat(raw: &str) -> Result<pb::ChatTemplate, String> {
    let value: Value = serde_json::from_str(raw).map_err(|e| format!("not JSON: {e}"))?;
    let list = match &value {
        Value::Array(list) => list,
        Value::Object(o) => match o.get("messages") {
            Some(Value::Array(list)) => list,
            _ => return Err("expected an array of messages, or {\"messages\": [...]}".into()),
        },
        _ => return Err("expected an array of messages".into()),
    };
    let messages = list
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let field = |name: &str| {
                m.get(name)
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| format!("message {i}: \"{name}\" must be a string"))
            };
            Ok(pb::ChatMessage {
                role: field("role")?,
                content: field("content")?,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(pb::ChatTemplate { messages })
}

/// One agent of `fleet`, as table cells.
fn fleet_row(a: &pb::AgentStatus) -> Vec<String> {
    let state = match (a.connected, a.in_sync) {
        (false, _) => "disconnected",
        (true, true) => "in sync",
        (true, false) => "stale",
    };
    let rejected = if a.rejected_reason.is_empty() {
        String::new()
    } else {
        format!(
            "{}: {}",
            text::version_text(a.rejected_version),
            a.rejected_reason
        )
    };
    vec![
        a.agent_id.clone(),
        state.to_string(),
        text::version_text(a.applied_version),
        text::version_text(a.target_version),
        ago(&a.last_seen),
        rejected,
    ]
}

pub(super) fn time_text(ts: &Option<prost_types::Timestamp>) -> String {
    ts.as_ref()
        .map(|t| format_micros(from_timestamp(t)))
        .unwrap_or_default()
}

pub(super) fn version_or_null(version: u64) -> Value {
    if version == 0 {
        Value::Null
    } else {
        json!(version)
    }
}

pub(super) fn kind_name(kind: i32) -> &'static str {
    match pb::MoveKind::try_from(kind) {
        Ok(pb::MoveKind::Promote) => "promote",
        Ok(pb::MoveKind::Rollback) => "rollback",
        Ok(pb::MoveKind::Remove) => "remove",
        _ => "unknown",
    }
}

fn template_json(template: &Option<pb::Template>) -> Value {
    match template.as_ref().and_then(|t| t.kind.as_ref()) {
        Some(pb::template::Kind::Text(text)) => json!({"text": text}),
        Some(pb::template::Kind::Chat(chat)) => json!({"chat": chat.messages.iter()
            .map(|m| json!({"role": m.role, "content": m.content})).collect::<Vec<_>>()}),
        None => Value::Null,
    }
}

pub(super) fn version_json(v: &pb::Version) -> Value {
    let model_config: Value = serde_json::from_str(&v.model_config_json).unwrap_or(Value::Null);
    json!({"name": v.name, "version": v.version, "digest": v.digest, "revision": v.revision,
           "published_revision": v.revision, "template": template_json(&v.template), "variables": v.variables, "model_config": model_config,
           "author": v.author, "description": v.description, "tags": v.tags, "created_at": time_text(&v.created_at)})
}

pub(super) fn version_text(v: &pb::Version) -> String {
    let mut out = format!(
        "{} v{} {}\nauthor: {}\ncreated: {}\nrevision: {}\n",
        v.name,
        v.version,
        short_digest(&v.digest),
        v.author,
        time_text(&v.created_at),
        v.revision
    );
    if !v.description.is_empty() {
        out.push_str(&format!("description: {}\n", v.description));
    }
    if !v.variables.is_empty() {
        out.push_str(&format!("variables: {}\n", v.variables.join(", ")));
    }
    out.push_str(&format!("model config: {}\n", v.model_config_json));
    let mut tags: Vec<_> = v.tags.iter().collect();
    tags.sort();
    for (k, val) in tags {
        out.push_str(&format!("tag: {k}={val}\n"));
    }
    out.push_str("---\n");
    match v.template.as_ref().and_then(|t| t.kind.as_ref()) {
        Some(pb::template::Kind::Text(text)) => out.push_str(text),
        Some(pb::template::Kind::Chat(chat)) => {
            for m in &chat.messages {
                out.push_str(&format!("[{}]\n{}\n", m.role, m.content));
            }
        }
        None => {}
    }
    out.trim_end().to_string()
}

pub(super) fn move_json(m: &pb::LabelMove) -> Value {
    json!({"name": m.name, "label": m.label, "revision": m.revision, "kind": kind_name(m.kind),
           "from_version": version_or_null(m.from_version), "to_version": version_or_null(m.to_version),
           "digest": m.digest, "actor": m.actor, "reason": m.reason, "time": time_text(&m.time), "trace_id": m.trace_id})
}

/// One move of `history`, as table cells.
fn move_row(m: &pb::LabelMove) -> Vec<String> {
    vec![
        m.revision.to_string(),
        time_text(&m.time),
        kind_name(m.kind).to_string(),
        format!(
            "{} -> {}",
            text::version_text(m.from_version),
            text::version_text(m.to_version)
        ),
        short_digest(&m.digest),
        m.actor.clone(),
        m.trace_id.clone(),
        m.reason.clone(),
    ]
}

pub(super) fn move_text(m: &pb::LabelMove) -> String {
    let side = |v: u64| {
        if v == 0 {
            "-".to_string()
        } else {
            format!("v{v}")
        }
    };
    let mut line = format!(
        "revision {}\t{}\t{}\t{} -> {}\t{}\t{}",
        m.revision,
        time_text(&m.time),
        kind_name(m.kind),
        side(m.from_version),
        side(m.to_version),
        m.actor,
        m.reason
    );
    if !m.trace_id.is_empty() {
        line.push_str(&format!("\ttrace {}", m.trace_id));
    }
    line
}

fn diff_text(name: &str, from: u64, to: u64, d: &pb::DiffVersionsResponse) -> String {
    let mut out = format!(
        "{name} v{from} ({}) -> v{to} ({})\n",
        short_digest(&d.from_digest),
        short_digest(&d.to_digest)
    );
    if d.template_diff.is_empty() {
        out.push_str("template: unchanged\n");
    } else {
        out.push_str(&d.template_diff);
    }
    for v in &d.variables_added {
        out.push_str(&format!("variable added: {v}\n"));
    }
    for v in &d.variables_removed {
        out.push_str(&format!("variable removed: {v}\n"));
    }
    if !d.model_config_diff.is_empty() {
        out.push_str("model config:\n");
        out.push_str(&d.model_config_diff);
    }
    for t in &d.tags_changed {
        out.push_str(&format!("tag {t}\n"));
    }
    out.trim_end().to_string()
}
