//! The catalog: `publish` a version, and read what is there: `list`,
//! `versions`, `labels`, `diff`. `publish` builds the one `pb::Template` the
//! CLI sends, from `--template`, `--template-file` or `--chat-file`.

use super::client::{connect, Failure};
use super::json::{emit, time_text};
use super::text::{short_digest, Listing};
use super::{local_user, DiffArgs, ListArgs, NameArgs, PublishArgs, VersionsArgs};
use crate::grpc::pb;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;

pub(super) async fn publish(args: PublishArgs) -> Result<(), Failure> {
    let template = read_template(&args)?;
    let model_config_json = read_model_config(&args)?;
    let mut tags = HashMap::new();
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
    #[derive(Serialize)]
    struct Published<'a> {
        name: &'a str,
        version: u64,
        digest: &'a str,
        revision: u64,
        created: bool,
    }
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
        Published {
            name: &args.name,
            version: r.version,
            digest: &r.digest,
            revision: r.revision,
            created: r.created,
        },
    );
    Ok(())
}

pub(super) async fn list(args: ListArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let mut listing = Listing::new(
        &args.client,
        &["NAME", "LATEST", "DIGEST", "UPDATED"],
        "no prompts",
    );
    #[derive(Serialize)]
    struct Prompt<'a> {
        name: &'a str,
        version: u64,
        digest: &'a str,
        updated_at: &'a str,
    }
    let mut token = String::new();
    loop {
        let request = pb::ListPromptsRequest {
            prefix: args.prefix.clone(),
            page_size: 1000,
            page_token: token,
        };
        let page = client.list_prompts(request).await?.into_inner();
        for p in &page.prompts {
            let updated = time_text(&p.updated_at);
            listing.row(
                || {
                    vec![
                        p.name.clone(),
                        format!("v{}", p.latest_version),
                        short_digest(&p.latest_digest),
                        updated.clone(),
                    ]
                },
                Prompt {
                    name: &p.name,
                    version: p.latest_version,
                    digest: &p.latest_digest,
                    updated_at: &updated,
                },
            );
        }
        if page.next_page_token.is_empty() {
            listing.finish();
            return Ok(());
        }
        token = page.next_page_token;
    }
}

pub(super) async fn versions(args: VersionsArgs) -> Result<(), Failure> {
    let mut tags = HashMap::new();
    for tag in &args.tags {
        let Some((key, value)) = tag.split_once('=') else {
            return Err(Failure::usage(format!(
                "--tag {tag:?} is not KEY=VALUE (e.g. --tag runtime=agent-v3)"
            )));
        };
        tags.insert(key.to_string(), value.to_string());
    }
    let mut client = connect(&args.client).await?;
    let mut listing = Listing::new(
        &args.client,
        &[
            "VERSION",
            "DIGEST",
            "CREATED",
            "AUTHOR",
            "CHECKS",
            "DESCRIPTION",
        ],
        "no versions",
    );
    #[derive(Serialize)]
    struct Listed<'a> {
        name: &'a str,
        version: u64,
        digest: &'a str,
        revision: u64,
        author: &'a str,
        description: &'a str,
        created_at: &'a str,
        checks: Vec<super::release::CheckJson<'a>>,
    }
    let mut token = String::new();
    let mut left = args.limit.map_or(u64::MAX, u64::from);
    loop {
        let request = pb::ListVersionsRequest {
            name: args.name.clone(),
            page_size: left.min(1000) as u32,
            page_token: token,
            tags: tags.clone(),
            passing: args.passing.clone(),
            eligible_for: args.eligible_for.clone().unwrap_or_default(),
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
                        super::release::checks_summary(&page.checks, v.version),
                        v.description.clone(),
                    ]
                },
                Listed {
                    name: &v.name,
                    version: v.version,
                    digest: &v.digest,
                    revision: v.revision,
                    author: &v.author,
                    description: &v.description,
                    created_at: &created,
                    checks: page
                        .checks
                        .iter()
                        .filter(|c| c.version == v.version)
                        .map(super::release::CheckJson::of)
                        .collect(),
                },
            );
        }
        left = left.saturating_sub(page.versions.len() as u64);
        if page.next_page_token.is_empty() || left == 0 {
            listing.finish();
            return Ok(());
        }
        token = page.next_page_token;
    }
}

pub(super) async fn labels(args: NameArgs) -> Result<(), Failure> {
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
    #[derive(Serialize)]
    struct Label<'a> {
        name: &'a str,
        label: &'a str,
        version: u64,
        digest: &'a str,
        revision: u64,
        updated_at: &'a str,
    }
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
            Label {
                name: &args.name,
                label: &l.label,
                version: l.version,
                digest: &l.digest,
                revision: l.revision,
                updated_at: &updated,
            },
        );
    }
    listing.finish();
    Ok(())
}

pub(super) async fn diff(args: DiffArgs) -> Result<(), Failure> {
    let mut client = connect(&args.client).await?;
    let request = pb::DiffVersionsRequest {
        name: args.name.clone(),
        from_version: args.from,
        to_version: args.to,
    };
    let d = client.diff_versions(request).await?.into_inner();
    #[derive(Serialize)]
    struct Diff<'a> {
        name: &'a str,
        from_version: u64,
        to_version: u64,
        from_digest: &'a str,
        to_digest: &'a str,
        template_diff: &'a str,
        variables_added: &'a [String],
        variables_removed: &'a [String],
        model_config_diff: &'a str,
        tags_changed: &'a [String],
    }
    emit(
        &args.client,
        || diff_text(&args.name, args.from, args.to, &d),
        Diff {
            name: &args.name,
            from_version: args.from,
            to_version: args.to,
            from_digest: &d.from_digest,
            to_digest: &d.to_digest,
            template_diff: &d.template_diff,
            variables_added: &d.variables_added,
            variables_removed: &d.variables_removed,
            model_config_diff: &d.model_config_diff,
            tags_changed: &d.tags_changed,
        },
    );
    Ok(())
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
