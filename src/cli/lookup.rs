//! The lookups of an incident: `resolve` (what a label points to, and who
//! set it), `get` and `whois` (by number, label or digest; a digest may be a
//! unique prefix of at least 8 hex digits, as seen in a log line).
//!
//! A digest prefix is resolved on this side, from the version listings
//! (ListVersions of one prompt for `get`, of every prompt for `whois`): the
//! server's lookups take full digests only.

use super::client::{connect, Failure};
use super::json::{emit, time_text, LabelPeriodJson, MoveJson, VersionJson};
use super::text::{move_text, short_digest, table, version_details};
use super::{exit, GetArgs, ResolveArgs, WhoisArgs};
use crate::grpc::access::Client;
use crate::grpc::pb;
use serde::Serialize;

/// The fewest hex digits a digest prefix may have.
const MIN_PREFIX_HEX: usize = 8;
const FULL_HEX: usize = 64;

/// A digest as typed: the full `sha256:<64 hex>`, or a prefix of it.
#[derive(Debug, PartialEq, Eq)]
enum DigestQuery {
    Full(String),
    /// `sha256:` and 8 to 63 lowercase hex digits.
    Prefix(String),
}

fn digest_query(flag: &str, raw: &str) -> Result<DigestQuery, Failure> {
    let hex = raw.trim().strip_prefix("sha256:").unwrap_or(raw.trim());
    let hex = hex.to_ascii_lowercase();
    if !hex.chars().all(|c| c.is_ascii_hexdigit()) || hex.len() > FULL_HEX {
        return Err(Failure::usage(format!(
            "{flag} {raw:?} is not a digest: write sha256:<hex>, all 64 hex digits or a unique \
             prefix of at least {MIN_PREFIX_HEX}"
        )));
    }
    if hex.len() < MIN_PREFIX_HEX {
        return Err(Failure::usage(format!(
            "{flag} {raw:?} is too short: a digest prefix needs at least {MIN_PREFIX_HEX} hex digits"
        )));
    }
    let digest = format!("sha256:{hex}");
    Ok(if hex.len() == FULL_HEX {
        DigestQuery::Full(digest)
    } else {
        DigestQuery::Prefix(digest)
    })
}

/// Every version of `name` (all pages), without content.
async fn versions_of(client: &mut Client, name: &str) -> Result<Vec<pb::Version>, Failure> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let request = pb::ListVersionsRequest {
            name: name.to_string(),
            page_size: 1000,
            page_token: token,
            ..Default::default()
        };
        let page = client.list_versions(request).await?.into_inner();
        all.extend(page.versions);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        token = page.next_page_token;
    }
}

/// Every prompt's name (all pages).
async fn prompt_names(client: &mut Client) -> Result<Vec<String>, Failure> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let request = pb::ListPromptsRequest {
            prefix: String::new(),
            page_size: 1000,
            page_token: token,
        };
        let page = client.list_prompts(request).await?.into_inner();
        all.extend(page.prompts.into_iter().map(|p| p.name));
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        token = page.next_page_token;
    }
}

/// The one full digest among `versions` that starts with `prefix`; an
/// ambiguous prefix lists the versions it matches.
fn unique_digest(prefix: &str, versions: &[pb::Version]) -> Result<String, Failure> {
    let matching: Vec<&pb::Version> = versions
        .iter()
        .filter(|v| v.digest.starts_with(prefix))
        .collect();
    let mut digests: Vec<&str> = matching.iter().map(|v| v.digest.as_str()).collect();
    digests.sort_unstable();
    digests.dedup();
    match digests.as_slice() {
        [] => Err(Failure {
            code: exit::REFUSED,
            message: format!("not found: no version has a digest starting with {prefix}"),
        }),
        [one] => Ok(one.to_string()),
        _ => Err(Failure {
            code: exit::REFUSED,
            message: format!(
                "ambiguous: {prefix} matches {} digests: {}; give more hex digits",
                digests.len(),
                matching
                    .iter()
                    .map(|v| format!("{} v{} ({})", v.name, v.version, v.digest))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

pub(super) async fn whois(args: WhoisArgs) -> Result<(), Failure> {
    let query = digest_query("whois", &args.digest)?;
    let mut client = connect(&args.client).await?;
    let digest = match query {
        DigestQuery::Full(digest) => digest,
        DigestQuery::Prefix(prefix) => {
            let mut versions = Vec::new();
            for name in prompt_names(&mut client).await? {
                versions.extend(versions_of(&mut client, &name).await?);
            }
            unique_digest(&prefix, &versions)?
        }
    };
    let request = pb::FindByDigestRequest {
        digest: digest.clone(),
    };
    let matches = client.find_by_digest(request).await?.into_inner().matches;
    if matches.is_empty() {
        return Err(Failure {
            code: exit::REFUSED,
            message: format!("not found: no version has digest {digest}"),
        });
    }
    #[derive(Serialize)]
    struct Owner<'a> {
        name: &'a str,
        version: u64,
        digest: &'a str,
        revision: u64,
        published_revision: u64,
        labels: Vec<LabelPeriodJson<'a>>,
    }
    for m in &matches {
        let v = m.version.clone().unwrap_or_default();
        emit(
            &args.client,
            || whois_text(&v, &m.labels),
            Owner {
                name: &v.name,
                version: v.version,
                digest: &v.digest,
                revision: v.revision,
                published_revision: v.revision,
                labels: m.labels.iter().map(LabelPeriodJson::from).collect(),
            },
        );
    }
    Ok(())
}

fn whois_text(v: &pb::Version, labels: &[pb::LabelPeriod]) -> String {
    let mut text = format!(
        "{} v{} ({}), published {} by {}",
        v.name,
        v.version,
        short_digest(&v.digest),
        time_text(&v.created_at),
        v.author
    );
    if labels.is_empty() {
        text.push_str("\nno label other than its own history ever pointed to it");
        return text;
    }
    let rows: Vec<Vec<String>> = labels
        .iter()
        .map(|p| {
            let (until, until_revision) = if p.until_revision == 0 {
                ("now".to_string(), String::new())
            } else {
                (time_text(&p.until), p.until_revision.to_string())
            };
            vec![
                p.label.clone(),
                time_text(&p.from),
                p.from_revision.to_string(),
                until,
                until_revision,
                p.actor.clone(),
                p.trace_id.clone(),
                p.reason.clone(),
            ]
        })
        .collect();
    text.push('\n');
    text.push_str(&table(
        &[
            "LABEL",
            "FROM",
            "FROM REVISION",
            "UNTIL",
            "UNTIL REVISION",
            "SET BY",
            "TRACE",
            "REASON",
        ],
        &rows,
    ));
    text
}

pub(super) async fn get(args: GetArgs) -> Result<(), Failure> {
    use pb::get_version_request::Selector;
    let query = args
        .digest
        .as_deref()
        .map(|d| digest_query("--digest", d))
        .transpose()?;
    let mut client = connect(&args.client).await?;
    let selector = match (args.version, query, &args.label) {
        (Some(v), _, _) => Some(Selector::Version(v)),
        (_, Some(DigestQuery::Full(d)), _) => Some(Selector::Digest(d)),
        (_, Some(DigestQuery::Prefix(prefix)), _) => {
            let versions = versions_of(&mut client, &args.name).await?;
            Some(Selector::Digest(unique_digest(&prefix, &versions)?))
        }
        (_, _, Some(l)) => Some(Selector::Label(l.clone())),
        _ => None,
    };
    let request = pb::GetVersionRequest {
        name: args.name.clone(),
        selector,
        agent_id: args.agent_id.clone().unwrap_or_default(),
        ..Default::default()
    };
    let response = client.get_version(request).await?.into_inner();
    let arm = arm_line(&args, &response);
    let version = response.version.unwrap_or_default();
    // Check results need the reader role; an agent's token sees none.
    let checks = match client
        .list_checks(pb::ListChecksRequest {
            name: version.name.clone(),
            version: version.version,
            history: false,
        })
        .await
    {
        Ok(answer) => answer.into_inner().results,
        Err(status) if status.code() == tonic::Code::PermissionDenied => Vec::new(),
        Err(status) => return Err(status.into()),
    };
    let mut json = super::json::to_json(VersionJson::from(&version));
    json["checks"] = checks
        .iter()
        .map(|c| super::json::to_json(super::release::CheckJson::of(c)))
        .collect();
    if args.agent_id.is_some() || response.rollout_id != 0 {
        json["rollout_id"] = serde_json::json!(super::json::version_or_null(response.rollout_id));
        json["arm"] = serde_json::json!(super::json::arm_of(response.arm).map(|a| a.as_str()));
    }
    emit(
        &args.client,
        || {
            let mut text = version_details(&version);
            text.push_str(&format!(
                "\nchecks: {}",
                super::release::checks_summary(&checks, version.version)
            ));
            if let Some(arm) = &arm {
                text.push('\n');
                text.push_str(arm);
            }
            text
        },
        json,
    );
    Ok(())
}

/// What `get` by label says of a rollout: the agent's arm, or that the
/// version is the stable one everybody without an agent id gets.
fn arm_line(args: &GetArgs, r: &pb::GetVersionResponse) -> Option<String> {
    let arm = super::rollout::arm_text(r.arm);
    match (&args.agent_id, r.rollout_id) {
        (Some(agent), 0) => Some(format!(
            "arm: - (no rollout runs on the label: agent {agent} gets its target)"
        )),
        (Some(agent), id) => Some(format!("arm: {arm} (rollout {id}, agent {agent})")),
        (None, 0) => None,
        (None, id) => Some(format!(
            "arm: {arm} (rollout {id}; without --agent-id, the stable version)"
        )),
    }
}

/// `resolve`: the version and the move that set the label there, now or at
/// a time or revision. In JSON, `revision` is that move's revision (as in
/// `labels` and `history`) and `published_revision` the version's.
pub(super) async fn resolve(args: ResolveArgs) -> Result<(), Failure> {
    if let Some(agent_id) = args.agent_id {
        return get(super::GetArgs {
            name: args.name,
            version: None,
            digest: None,
            label: Some(args.label),
            agent_id: Some(agent_id),
            client: args.client,
        })
        .await;
    }
    let at = match (&args.at, args.revision) {
        (Some(at), _) => Some(pb::resolve_at_request::At::Time(
            crate::grpc::timestamp::to_timestamp(
                super::filters::parse_when(at, crate::time::now_micros())
                    .map_err(|e| Failure::usage(format!("--at: {e}")))?,
            ),
        )),
        (None, Some(revision)) => Some(pb::resolve_at_request::At::Revision(revision)),
        (None, None) => None,
    };
    let mut client = connect(&args.client).await?;
    let (version, mv) = match at {
        Some(at) => {
            let request = pb::ResolveAtRequest {
                name: args.name.clone(),
                label: args.label.clone(),
                at: Some(at),
            };
            let r = client.resolve_at(request).await?.into_inner();
            (r.version.unwrap_or_default(), r.r#move)
        }
        None => resolve_now(&mut client, &args.name, &args.label).await?,
    };
    #[derive(Serialize)]
    struct Resolved<'a> {
        name: &'a str,
        label: &'a str,
        version: u64,
        digest: &'a str,
        revision: Option<u64>,
        published_revision: u64,
        #[serde(rename = "move", skip_serializing_if = "Option::is_none")]
        set_by: Option<MoveJson<'a>>,
        content: VersionJson<'a>,
    }
    let object = Resolved {
        name: &version.name,
        label: &args.label,
        version: version.version,
        digest: &version.digest,
        revision: mv.as_ref().map(|m| m.revision),
        published_revision: version.revision,
        set_by: mv.as_ref().map(MoveJson::from),
        content: VersionJson::from(&version),
    };
    emit(
        &args.client,
        || {
            let mut text = format!(
                "{} {} -> v{} ({})",
                args.name,
                args.label,
                version.version,
                short_digest(&version.digest)
            );
            if let Some(m) = &mv {
                text.push_str(&format!("\nset by: {}", move_text(m)));
            }
            text
        },
        object,
    );
    Ok(())
}

/// The label's target now and the move that put it there: the version, then
/// the newest move of the label's history, read again if a move came in
/// between.
async fn resolve_now(
    client: &mut Client,
    name: &str,
    label: &str,
) -> Result<(pb::Version, Option<pb::LabelMove>), Failure> {
    let mut attempt = 0;
    loop {
        let request = pb::GetVersionRequest {
            name: name.to_string(),
            selector: Some(pb::get_version_request::Selector::Label(label.to_string())),
            ..Default::default()
        };
        let version = super::client::get_version(client, request).await?;
        let request = pb::LabelHistoryRequest {
            name: name.to_string(),
            label: label.to_string(),
            page_size: 1,
            page_token: String::new(),
        };
        let newest = client
            .label_history(request)
            .await?
            .into_inner()
            .moves
            .into_iter()
            .next();
        attempt += 1;
        if newest
            .as_ref()
            .is_some_and(|m| m.to_version == version.version)
            || attempt >= 5
        {
            return Ok((version, newest));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_full_or_prefixes_of_at_least_eight_hex_digits() {
        let full = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            digest_query("d", &full).ok(),
            Some(DigestQuery::Full(full.clone()))
        );
        assert_eq!(
            digest_query("d", "sha256:1475EB76").ok(),
            Some(DigestQuery::Prefix("sha256:1475eb76".into()))
        );
        assert_eq!(
            digest_query("d", "1475eb76").ok(),
            Some(DigestQuery::Prefix("sha256:1475eb76".into()))
        );
        for bad in ["sha256:1475eb7", "sha256:xyz12345", "md5:12345678"] {
            assert!(digest_query("d", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_ambiguous_prefix_lists_its_matches() {
        let version = |name: &str, number: u64, digest: &str| pb::Version {
            name: name.into(),
            version: number,
            digest: digest.into(),
            ..Default::default()
        };
        let a = format!("sha256:1475eb76{}", "a".repeat(56));
        let b = format!("sha256:1475eb76{}", "b".repeat(56));
        let versions = [
            version("p", 1, &a),
            version("p", 2, &b),
            version("q", 1, &a),
        ];
        let failure = unique_digest("sha256:1475eb76", &versions).err().unwrap();
        assert!(failure.message.contains("ambiguous"), "{}", failure.message);
        assert!(
            failure.message.contains(&format!("p v2 ({b})")),
            "{}",
            failure.message
        );
        // The same content under two prompts is one digest: not ambiguous.
        assert_eq!(unique_digest("sha256:1475eb76a", &versions).ok(), Some(a));
        assert!(unique_digest("sha256:00000000", &versions).is_err());
    }
}
