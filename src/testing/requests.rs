//! Request validation's fuzz harness ([`requests`]): the bytes as a protobuf
//! request (the first byte picks the message), through the server's
//! validation and conversion: a value or INVALID_ARGUMENT with a bounded
//! message, and what the server stores can be published again unchanged.

use super::limits_for;
use crate::domain::{ChatMessage, ContentDigest, Limits, PromptName, TemplateBody, Version};
use crate::grpc::{content_of, convert, pb};
use prost::Message as _;
use tonic::{Code, Status};

/// A refusal is INVALID_ARGUMENT with a message that fits in HTTP/2
/// trailers.
fn check_refusal(refusal: crate::domain::ValidationError) {
    let status = Status::from(refusal);
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(!status.message().is_empty());
    assert!(
        status.message().len() <= 1024 + "… (truncated)".len(),
        "a status message of {} bytes",
        status.message().len()
    );
}

/// Decodes a request; what decodes encodes and decodes to the same value.
fn decode_request<T: prost::Message + Default + PartialEq + Clone>(bytes: &[u8]) -> Option<T> {
    let request = T::decode(bytes).ok()?;
    let again = T::decode(request.encode_to_vec().as_slice());
    assert!(
        again.as_ref() == Ok(&request),
        "a request re-encodes differently"
    );
    Some(request)
}

fn pb_template(template: &TemplateBody) -> pb::Template {
    pb::Template {
        kind: Some(match template {
            TemplateBody::Text(text) => pb::template::Kind::Text(text.clone()),
            TemplateBody::Chat(messages) => pb::template::Kind::Chat(pb::ChatTemplate {
                messages: messages
                    .iter()
                    .map(|m| pb::ChatMessage {
                        role: m.role.clone(),
                        content: m.content.clone(),
                    })
                    .collect(),
            }),
        }),
    }
}

/// Requests target. First byte: the request (low 3 bits) and tiny limits
/// (bit 7); the rest is the protobuf message (or, for 7, a `traceparent`).
pub fn requests(data: &[u8]) {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let limits = limits_for(which);
    match which & 7 {
        0 => publish_request(bytes, &limits),
        1 => {
            if let Some(req) = decode_request::<pb::SetLabelRequest>(bytes) {
                move_request(&req.name, &req.label, &limits);
            }
        }
        2 => {
            if let Some(req) = decode_request::<pb::RollbackRequest>(bytes) {
                move_request(&req.name, &req.label, &limits);
            }
        }
        3 => {
            if let Some(req) = decode_request::<pb::RemoveLabelRequest>(bytes) {
                move_request(&req.name, &req.label, &limits);
            }
        }
        4 | 5 => watch_request(bytes, &limits),
        6 => {
            if let Some(req) = decode_request::<pb::AckAppliedRequest>(bytes) {
                let _ = convert::prompt_name(&req.name, &limits).map_err(check_refusal);
                let _ = convert::label_name(&req.label).map_err(check_refusal);
                if let Ok(digest) = ContentDigest::parse("digest", &req.digest) {
                    assert_eq!(digest.to_string(), req.digest);
                }
            }
        }
        _ => trace_parent(bytes),
    }
}

/// PublishVersion: refused with INVALID_ARGUMENT or accepted; an accepted
/// version, served by GetVersion and published again by a client, is the
/// same content with the same digest, and a client recomputes that digest.
fn publish_request(bytes: &[u8], limits: &Limits) {
    let Some(req) = decode_request::<pb::PublishVersionRequest>(bytes) else {
        return;
    };
    let new = match convert::new_version(req.clone(), limits, None) {
        Ok(new) => new,
        Err(refusal) => return check_refusal(refusal),
    };
    assert_eq!(new.name.as_str(), req.name);
    let digest = new.content.digest();
    let served = convert::version(
        Version {
            name: new.name.clone(),
            number: 1,
            digest,
            content: new.content.clone(),
            author: new.author.clone(),
            description: new.description.clone(),
            tags: new.tags.clone(),
            created_at: 0,
            revision: 1,
            signature: None,
            pruned: false,
        },
        true,
    );
    let recomputed = content_of(&served).expect("a served version has its template");
    assert_eq!(recomputed.digest().to_string(), served.digest);
    let republished = pb::PublishVersionRequest {
        name: served.name.clone(),
        template: Some(pb_template(&recomputed.template)),
        variables: served.variables.clone(),
        model_config_json: served.model_config_json.clone(),
        author: served.author.clone(),
        description: served.description.clone(),
        tags: served.tags.clone(),
    };
    match convert::new_version(republished, limits, None) {
        Ok(again) => {
            assert_eq!(again.content, new.content);
            assert_eq!(again.content.digest(), digest);
        }
        Err(refusal) => {
            panic!("publishing the served form of an accepted version was refused: {refusal}")
        }
    }
}

/// SetLabel, Rollback, RemoveLabel: the prompt name and a movable label.
fn move_request(name: &str, label: &str, limits: &Limits) {
    match convert::prompt_name(name, limits) {
        Ok(parsed) => assert_eq!(parsed.as_str(), name),
        Err(refusal) => check_refusal(refusal),
    }
    match convert::movable_label(label) {
        Ok(parsed) => {
            assert_eq!(parsed.as_str(), label);
            assert_ne!(label, crate::domain::LATEST_LABEL);
        }
        Err(refusal) => check_refusal(refusal),
    }
}

/// Watch: refused, or a selector that selects exactly what was asked for.
fn watch_request(bytes: &[u8], limits: &Limits) {
    let Some(req) = decode_request::<pb::WatchRequest>(bytes) else {
        return;
    };
    let watch = match convert::watch_request(req.clone(), limits) {
        Ok(watch) => watch,
        Err(refusal) => return check_refusal(refusal),
    };
    let selector = &watch.selector;
    assert_eq!(watch.start_revision, req.start_revision);
    assert_eq!(selector.include_versions, req.include_versions);
    assert_eq!(selector.prefixes, req.prefixes);
    assert!(selector
        .names
        .iter()
        .all(|n| req.names.contains(&n.to_string())));
    assert!(selector
        .labels
        .iter()
        .all(|l| req.labels.contains(&l.to_string())));
    assert_eq!(watch.agent.is_some(), !req.agent_id.is_empty());
    for name in &req.names {
        let name = PromptName::parse("name", name, limits.max_name_bytes).expect("accepted");
        assert!(selector.matches_prompt(&name));
    }
}

/// A `traceparent` header: a trace id is 32 lowercase hex digits, not all
/// zero, taken from the header.
fn trace_parent(bytes: &[u8]) {
    let header = String::from_utf8_lossy(bytes);
    let mut request = tonic::Request::new(());
    let Ok(value) = header.parse() else { return };
    request.metadata_mut().insert("traceparent", value);
    if let Some(trace_id) = convert::trace_id(&request) {
        assert_eq!(trace_id.len(), 32);
        assert!(trace_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert!(trace_id.bytes().any(|b| b != b'0'));
        assert!(header.contains(&trace_id));
    }
}

/// Seed inputs of [`requests`]: one of each request kind, encoded with the
/// generated messages.
pub(super) fn seeds() -> Vec<Vec<u8>> {
    let with_kind = |kind: u8, bytes: Vec<u8>| [vec![kind], bytes].concat();
    let publish = pb::PublishVersionRequest {
        name: "support/triage".into(),
        template: Some(pb_template(&TemplateBody::Text("Hi {{name}}".into()))),
        variables: vec!["name".into()],
        model_config_json: r#"{"temperature": 0.2}"#.into(),
        author: "ci".into(),
        description: "seed".into(),
        tags: [("team".to_string(), "support".to_string())].into(),
    };
    let chat = pb::PublishVersionRequest {
        template: Some(pb_template(&TemplateBody::Chat(vec![
            ChatMessage {
                role: "system".into(),
                content: "You are {{persona}}".into(),
            },
            ChatMessage {
                role: "user".into(),
                content: "{{q}}".into(),
            },
        ]))),
        variables: vec!["q".into(), "persona".into()],
        model_config_json: String::new(),
        ..publish.clone()
    };
    let set_label = pb::SetLabelRequest {
        name: "support/triage".into(),
        label: "production".into(),
        version: 2,
        actor: "ops".into(),
        reason: "ship".into(),
        expected_version: Some(1),
    };
    let watch = pb::WatchRequest {
        names: vec!["support/triage".into()],
        prefixes: vec!["support/".into()],
        labels: vec!["production".into()],
        include_versions: true,
        start_revision: 7,
        agent_id: "agent-1".into(),
        agent: Some(pb::AgentInfo {
            host: "h".into(),
            sdk: "python".into(),
            version: "1".into(),
            ..Default::default()
        }),
    };
    let ack = pb::AckAppliedRequest {
        agent_id: "agent-1".into(),
        name: "support/triage".into(),
        label: "production".into(),
        version: 2,
        digest: ContentDigest([1; 32]).to_string(),
        revision: 3,
        outcome: pb::ApplyOutcome::Applied.into(),
        reason: String::new(),
    };
    vec![
        with_kind(0, publish.encode_to_vec()),
        with_kind(0x80, chat.encode_to_vec()),
        with_kind(1, set_label.encode_to_vec()),
        with_kind(
            2,
            pb::RollbackRequest {
                name: "a".into(),
                label: "staging".into(),
                to_version: Some(1),
                actor: "ops".into(),
                reason: String::new(),
                expected_version: None,
                emergency: false,
            }
            .encode_to_vec(),
        ),
        with_kind(
            3,
            pb::RemoveLabelRequest {
                name: "a/b".into(),
                label: "latest".into(),
                actor: "ops".into(),
                reason: String::new(),
            }
            .encode_to_vec(),
        ),
        with_kind(4, watch.encode_to_vec()),
        with_kind(6, ack.encode_to_vec()),
        with_kind(
            7,
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_vec(),
        ),
    ]
}
