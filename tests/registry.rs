//! The registry over gRPC: publish, read, labels, history, as-of queries,
//! validation, restart, concurrency.

mod support;

use promptreg::domain::Limits;
use promptreg::grpc::pb;
use std::collections::HashSet;
use support::*;
use tonic::Code;

#[tokio::test]
async fn publish_get_list_and_page() {
    let server = TestServer::start().await;
    let mut client = server.client().await;

    let first = client
        .publish_version(publish_text("support/triage", "Hi {{name}}", &["name"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.version, first.revision, first.created), (1, 1, true));
    assert!(first.digest.starts_with("sha256:") && first.digest.len() == 71);
    let second = publish(&mut client, "support/triage", "v2 text").await;
    assert_eq!((second.version, second.revision), (2, 2));

    // By number, by digest, by label, and latest by default.
    let by_number = client
        .get_version(pb::GetVersionRequest {
            name: "support/triage".into(),
            selector: Some(pb::get_version_request::Selector::Version(1)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap();
    assert_eq!(by_number.template, text("Hi {{name}}"));
    assert_eq!(by_number.variables, ["name"]);
    // The token's name: the request's author is not believed.
    assert_eq!(by_number.author, "admin");
    let by_digest = client
        .get_version(pb::GetVersionRequest {
            name: "support/triage".into(),
            selector: Some(pb::get_version_request::Selector::Digest(
                first.digest.clone(),
            )),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap();
    assert_eq!(by_digest.version, 1);
    let latest = client
        .get_version(pb::GetVersionRequest {
            name: "support/triage".into(),
            selector: None,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap();
    assert_eq!(latest.version, 2);
    assert_eq!(
        resolve(&mut client, "support/triage", "latest")
            .await
            .unwrap()
            .version,
        2
    );

    // Versions newest first, paged.
    for i in 3..=5 {
        publish(&mut client, "support/triage", &format!("text {i}")).await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_versions(pb::ListVersionsRequest {
                name: "support/triage".into(),
                page_size: 2,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.versions.len() <= 2);
        seen.extend(page.versions.iter().map(|v| v.version));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, [5, 4, 3, 2, 1]);

    // Prompts by prefix, paged.
    for name in ["support/billing", "sales/intro", "support/zeta"] {
        publish(&mut client, name, "x").await;
    }
    let mut names = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_prompts(pb::ListPromptsRequest {
                prefix: "support/".into(),
                page_size: 1,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        names.extend(page.prompts.iter().map(|p| p.name.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(names, ["support/billing", "support/triage", "support/zeta"]);
    let bad_token = client
        .list_prompts(pb::ListPromptsRequest {
            prefix: String::new(),
            page_size: 1,
            page_token: "zz-not-a-token".into(),
        })
        .await;
    assert_status(bad_token, Code::InvalidArgument, "page_token");
}

#[tokio::test]
async fn identical_content_returns_the_existing_version() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let first = client
        .publish_version(publish_text("p", "Hi {{name}}", &["name"]))
        .await
        .unwrap()
        .into_inner();
    let mut again = publish_text("p", "Hi {{name}}", &["name"]);
    again.description = "a different rationale does not make new content".into();
    let second = client.publish_version(again).await.unwrap().into_inner();
    assert!(!second.created);
    assert_eq!(
        (second.version, second.digest.as_str(), second.revision),
        (1, first.digest.as_str(), 1)
    );
    // Normalised model config: the same content in another spelling.
    let mut a = publish_text("q", "x", &[]);
    a.model_config_json = r#"{"temperature": 0.2, "model": "m"}"#.into();
    let mut b = publish_text("q", "x", &[]);
    b.model_config_json = r#"{"model":"m","temperature":0.2}"#.into();
    let a = client.publish_version(a).await.unwrap().into_inner();
    let b = client.publish_version(b).await.unwrap().into_inner();
    assert_eq!((a.version, b.version, b.created), (1, 1, false));
    let versions = client
        .list_versions(pb::ListVersionsRequest {
            name: "p".into(),
            page_size: 0,
            page_token: String::new(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(versions.versions.len(), 1);
}

#[tokio::test]
async fn every_validation_rule_names_its_field() {
    let limits = Limits {
        max_template_bytes: 64,
        max_variables: 2,
        max_tags: 1,
        max_name_bytes: 16,
        ..Limits::default()
    };
    let server = TestServer::start_with_limits(limits).await;
    let mut client = server.client().await;

    let cases: Vec<(pb::PublishVersionRequest, &str)> = vec![
        (publish_text("", "x", &[]), "name: must not be empty"),
        (
            publish_text("Upper", "x", &[]),
            "name: \"Upper\" is not valid",
        ),
        (publish_text("a//b", "x", &[]), "empty segment"),
        (publish_text("a/../b", "x", &[]), "'..'"),
        (publish_text("a/b/", "x", &[]), "empty segment"),
        (
            publish_text("abcdefghijklmnopq", "x", &[]),
            "name: is 17 bytes; the limit is 16",
        ),
        (
            publish_text("p", "", &[]),
            "template.text: must not be empty",
        ),
        (
            publish_text("p", &"x".repeat(65), &[]),
            "template.text: is 65 bytes; the limit is 64 bytes",
        ),
        (
            publish_text("p", "Hi {{name}}", &[]),
            "variables: the template uses {{name}} but does not declare it",
        ),
        (
            publish_text("p", "Hi", &["name"]),
            "\"name\" is declared but the template never uses it",
        ),
        (
            publish_text("p", "{{a}}{{b}}{{c}}", &["a", "b", "c"]),
            "variables: 3 declared; the limit is 2",
        ),
        (
            publish_text("p", "{{a}}", &["a", "a"]),
            "variables[1]: \"a\" is declared twice",
        ),
        (publish_text("p", "{{a}}", &["a-b"]), "variables[0]"),
        (
            publish_text("p", "Hi {{ bad name }}", &[]),
            "template.text: malformed placeholder at byte 3",
        ),
        (publish_text("p", "Hi {{", &[]), "malformed placeholder"),
    ];
    for (request, needle) in cases {
        let result = client.publish_version(request.clone()).await;
        assert_status(result, Code::InvalidArgument, needle);
    }

    let mut no_template = publish_text("p", "x", &[]);
    no_template.template = None;
    assert_status(
        client.publish_version(no_template).await,
        Code::InvalidArgument,
        "template: is required",
    );
    // `author` and `actor` are ignored (the principal is recorded), so an
    // empty one is no error.
    let mut no_author = publish_text("p", "x", &[]);
    no_author.author = " ".into();
    client
        .publish_version(no_author)
        .await
        .expect("author is ignored");
    let mut bad_config = publish_text("p", "x", &[]);
    bad_config.model_config_json = "[1, 2]".into();
    assert_status(
        client.publish_version(bad_config).await,
        Code::InvalidArgument,
        "model_config_json: must be a JSON object",
    );
    let mut not_json = publish_text("p", "x", &[]);
    not_json.model_config_json = "{model: x}".into();
    assert_status(
        client.publish_version(not_json).await,
        Code::InvalidArgument,
        "model_config_json: is not valid JSON",
    );
    let mut tags = publish_text("p", "x", &[]);
    tags.tags = [
        ("a".to_string(), "1".to_string()),
        ("b".to_string(), "2".to_string()),
    ]
    .into();
    assert_status(
        client.publish_version(tags).await,
        Code::InvalidArgument,
        "tags: 2 tags; the limit is 1",
    );
    let mut bad_tag = publish_text("p", "x", &[]);
    bad_tag.tags = [("Bad Key".to_string(), "1".to_string())].into();
    assert_status(
        client.publish_version(bad_tag).await,
        Code::InvalidArgument,
        "tags: key \"Bad Key\"",
    );
    let mut chat = publish_text("p", "x", &[]);
    chat.template = Some(pb::Template {
        kind: Some(pb::template::Kind::Chat(pb::ChatTemplate {
            messages: vec![pb::ChatMessage {
                role: "System Prompt".into(),
                content: "x".into(),
            }],
        })),
    });
    assert_status(
        client.publish_version(chat).await,
        Code::InvalidArgument,
        "template.chat.messages[0].role",
    );
    let mut empty_chat = publish_text("p", "x", &[]);
    empty_chat.template = Some(pb::Template {
        kind: Some(pb::template::Kind::Chat(pb::ChatTemplate {
            messages: vec![],
        })),
    });
    assert_status(
        client.publish_version(empty_chat).await,
        Code::InvalidArgument,
        "template.chat.messages: must hold at least one message",
    );

    // Labels and moves.
    publish(&mut client, "p", "x").await;
    assert_status(
        client.set_label(set_label("p", "Prod", 1, None)).await,
        Code::InvalidArgument,
        "label: \"Prod\" is not a label name",
    );
    assert_status(
        client
            .set_label(set_label("p", &"a".repeat(64), 1, None))
            .await,
        Code::InvalidArgument,
        "label:",
    );
    assert_status(
        client.set_label(set_label("p", "latest", 1, None)).await,
        Code::InvalidArgument,
        "cannot be moved by hand",
    );
    assert_status(
        client.set_label(set_label("p", "prod", 0, None)).await,
        Code::InvalidArgument,
        "version: must be a version number",
    );
    let mut no_reason = set_label("p", "prod", 1, None);
    no_reason.reason = String::new();
    assert_status(
        client.set_label(no_reason).await,
        Code::InvalidArgument,
        "reason: is required",
    );
    assert_status(
        client.set_label(set_label("p", "prod", 9, None)).await,
        Code::NotFound,
        "p has no version 9 (its newest is 1)",
    );
    assert_status(
        client.set_label(set_label("nope", "prod", 1, None)).await,
        Code::NotFound,
        "prompt nope does not exist",
    );
    let bad_digest = client
        .get_version(pb::GetVersionRequest {
            name: "p".into(),
            selector: Some(pb::get_version_request::Selector::Digest(
                "sha256:xyz".into(),
            )),
            ..Default::default()
        })
        .await;
    assert_status(
        bad_digest,
        Code::InvalidArgument,
        "digest: \"sha256:xyz\" is not a digest",
    );
    let no_at = client
        .resolve_at(pb::ResolveAtRequest {
            name: "p".into(),
            label: "prod".into(),
            at: None,
        })
        .await;
    assert_status(no_at, Code::InvalidArgument, "at: is required");

    // Nothing invalid was stored.
    let prompts = client
        .list_prompts(pb::ListPromptsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        prompts
            .prompts
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["p"]
    );
}

#[tokio::test]
async fn compare_and_set_names_the_current_version() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for t in ["a", "b", "c"] {
        publish(&mut client, "p", t).await;
    }
    let first = client
        .set_label(set_label("p", "production", 1, Some(0)))
        .await
        .unwrap()
        .into_inner();
    assert!(first.changed);
    assert_eq!((first.from_version, first.to_version), (0, 1));
    assert_status(
        client
            .set_label(set_label("p", "production", 3, Some(2)))
            .await,
        Code::FailedPrecondition,
        "points to version 1, not the expected version 2",
    );
    assert_status(
        client
            .set_label(set_label("p", "staging", 3, Some(2)))
            .await,
        Code::FailedPrecondition,
        "points to nothing (it is not set), not the expected version 2",
    );
    let moved = client
        .set_label(set_label("p", "production", 3, Some(1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (moved.changed, moved.from_version, moved.to_version),
        (true, 1, 3)
    );

    // Setting a label where it already points: a reported no-op, no revision.
    let again = client
        .set_label(set_label("p", "production", 3, None))
        .await
        .unwrap()
        .into_inner();
    assert!(!again.changed);
    assert_eq!(again.revision, moved.revision);
    let history = label_history(&mut client, "p", "production").await;
    assert_eq!(history.len(), 2);
}

async fn label_history(client: &mut Client, name: &str, label: &str) -> Vec<pb::LabelMove> {
    client
        .label_history(pb::LabelHistoryRequest {
            name: name.into(),
            label: label.into(),
            page_size: 0,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .moves
}

#[tokio::test]
async fn rollback_twice_walks_back_two_steps() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for (i, t) in ["a", "b", "c"].iter().enumerate() {
        publish(&mut client, "p", t).await;
        client
            .set_label(set_label("p", "production", i as u64 + 1, None))
            .await
            .unwrap();
    }
    let r1 = client
        .rollback(rollback("p", "production", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r1.from_version, r1.to_version), (3, 2));
    let r2 = client
        .rollback(rollback("p", "production", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r2.from_version, r2.to_version), (2, 1));
    assert!(r2.revision > r1.revision);
    assert_eq!(
        resolve(&mut client, "p", "production")
            .await
            .unwrap()
            .version,
        1
    );
    assert_status(
        client.rollback(rollback("p", "production", None)).await,
        Code::FailedPrecondition,
        "nothing to roll back to",
    );
    // A label that was never set is unknown, as everywhere: NOT_FOUND, with
    // or without an explicit target (and nothing is written).
    for to in [None, Some(1)] {
        assert_status(
            client.rollback(rollback("p", "staging", to)).await,
            Code::NotFound,
            "label staging of p has never been set",
        );
    }
    let labels = client
        .list_labels(pb::ListLabelsRequest { name: "p".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(
        labels.labels.iter().all(|l| l.label != "staging"),
        "{labels:?}"
    );
    // An explicit target.
    let explicit = client
        .rollback(rollback("p", "production", Some(3)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((explicit.from_version, explicit.to_version), (1, 3));

    let history = label_history(&mut client, "p", "production").await;
    let kinds: Vec<(i32, u64, u64)> = history
        .iter()
        .map(|m| (m.kind, m.from_version, m.to_version))
        .collect();
    let promote = pb::MoveKind::Promote as i32;
    let rollback_kind = pb::MoveKind::Rollback as i32;
    assert_eq!(
        kinds,
        [
            (rollback_kind, 1, 3),
            (rollback_kind, 2, 1),
            (rollback_kind, 3, 2),
            (promote, 2, 3),
            (promote, 1, 2),
            (promote, 0, 1),
        ]
    );
    assert!(history
        .iter()
        .all(|m| m.actor == "admin" && !m.reason.is_empty()));
    assert!(history.windows(2).all(|w| w[0].revision > w[1].revision));
}

#[tokio::test]
async fn removed_label_stops_resolving_and_rollback_restores_it() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, "p", "a").await;
    client
        .set_label(set_label("p", "production", 1, None))
        .await
        .unwrap();
    let removed = client
        .remove_label(pb::RemoveLabelRequest {
            name: "p".into(),
            label: "production".into(),
            actor: "sre".into(),
            reason: "incident 42".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (removed.changed, removed.from_version, removed.to_version),
        (true, 1, 0)
    );
    assert_status(
        resolve(&mut client, "p", "production").await,
        Code::NotFound,
        "label production is not set on p",
    );
    let again = client
        .remove_label(pb::RemoveLabelRequest {
            name: "p".into(),
            label: "production".into(),
            actor: "sre".into(),
            reason: "again".into(),
        })
        .await;
    assert_status(again, Code::NotFound, "not set");
    let history = label_history(&mut client, "p", "production").await;
    assert_eq!(history[0].kind, pb::MoveKind::Remove as i32);
    assert_eq!(history[0].reason, "incident 42");
    let restored = client
        .rollback(rollback("p", "production", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((restored.from_version, restored.to_version), (0, 1));
    assert_eq!(
        resolve(&mut client, "p", "production")
            .await
            .unwrap()
            .version,
        1
    );
}

#[tokio::test]
async fn resolve_at_time_and_revision() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, "p", "one").await; // r1
    publish(&mut client, "p", "two").await; // r2
    let m1 = client
        .set_label(set_label("p", "production", 1, None))
        .await
        .unwrap()
        .into_inner(); // r3
    let m2 = client
        .set_label(set_label("p", "production", 2, None))
        .await
        .unwrap()
        .into_inner(); // r4
    let rm = client
        .remove_label(pb::RemoveLabelRequest {
            name: "p".into(),
            label: "production".into(),
            actor: "sre".into(),
            reason: "pause".into(),
        })
        .await
        .unwrap()
        .into_inner(); // r5
    assert_eq!((m1.revision, m2.revision, rm.revision), (3, 4, 5));

    let at_revision = |revision: u64| pb::ResolveAtRequest {
        name: "p".into(),
        label: "production".into(),
        at: Some(pb::resolve_at_request::At::Revision(revision)),
    };
    assert_status(
        client.resolve_at(at_revision(2)).await,
        Code::NotFound,
        "was not set at revision 2",
    );
    let r3 = client
        .resolve_at(at_revision(3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r3.version.as_ref().unwrap().version, 1);
    assert_eq!(r3.version.unwrap().template, text("one"));
    assert_eq!(r3.r#move.unwrap().revision, 3);
    assert_eq!(
        client
            .resolve_at(at_revision(4))
            .await
            .unwrap()
            .into_inner()
            .version
            .unwrap()
            .version,
        2
    );
    assert_status(
        client.resolve_at(at_revision(5)).await,
        Code::NotFound,
        "removed at revision 5 by admin (pause)",
    );
    assert_status(
        client.resolve_at(at_revision(99)).await,
        Code::InvalidArgument,
        "revision: 99 is ahead",
    );

    // By time: the move times from the history, and the instants between them.
    let history = label_history(&mut client, "p", "production").await;
    let time_of = |revision: u64| {
        history
            .iter()
            .find(|m| m.revision == revision)
            .unwrap()
            .time
            .unwrap()
    };
    let at_time = |time: prost_types::Timestamp| pb::ResolveAtRequest {
        name: "p".into(),
        label: "production".into(),
        at: Some(pb::resolve_at_request::At::Time(time)),
    };
    let at_m2 = client
        .resolve_at(at_time(time_of(4)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(at_m2.version.unwrap().version, 2);
    let at_m1 = client
        .resolve_at(at_time(time_of(3)))
        .await
        .unwrap()
        .into_inner();
    // Moves within the same microsecond resolve to the newest of them.
    let expected = if time_of(3) == time_of(4) { 2 } else { 1 };
    assert_eq!(at_m1.version.unwrap().version, expected);
    let before = prost_types::Timestamp {
        seconds: time_of(3).seconds - 3600,
        nanos: 0,
    };
    assert_status(
        client.resolve_at(at_time(before)).await,
        Code::NotFound,
        "was not set at time",
    );
}

#[tokio::test]
async fn restart_keeps_everything() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    publish(&mut client, "p", "one").await;
    publish(&mut client, "p", "two").await;
    client
        .set_label(set_label("p", "production", 1, None))
        .await
        .unwrap();
    client
        .set_label(set_label("p", "production", 2, None))
        .await
        .unwrap();
    client
        .rollback(rollback("p", "production", None))
        .await
        .unwrap();
    let before_history = label_history(&mut client, "p", "production").await;
    drop(client);

    let server = server.restart().await;
    let mut client = server.client().await;
    assert_eq!(
        resolve(&mut client, "p", "production")
            .await
            .unwrap()
            .version,
        1
    );
    assert_eq!(
        label_history(&mut client, "p", "production").await,
        before_history
    );
    // Revisions continue from where they were, and rollback history survives.
    let next = publish(&mut client, "p", "three").await;
    assert_eq!((next.version, next.revision), (3, 6));
    // The undo stack survives too: v1 -> v2 was rolled back, so a rollback
    // now has nothing earlier; a new promote then rolls back to v1.
    assert_status(
        client.rollback(rollback("p", "production", None)).await,
        Code::FailedPrecondition,
        "nothing to roll back to",
    );
    client
        .set_label(set_label("p", "production", 3, None))
        .await
        .unwrap();
    let r = client
        .rollback(rollback("p", "production", None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.from_version, r.to_version), (3, 1));
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let server = TestServer::start().await;
    let _client = server.client().await;
    let config = promptreg::registry::RegistryConfig::new(server.data_dir());
    let error = promptreg::registry::Registry::open(config)
        .err()
        .expect("second open is refused");
    assert!(
        error
            .to_string()
            .contains("in use by another promptreg process"),
        "{error}"
    );
}

#[tokio::test]
async fn concurrent_promoters_with_compare_and_set_lose_no_update() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for i in 1..=16 {
        publish(&mut client, "p", &format!("text {i}")).await;
    }
    client
        .set_label(set_label("p", "production", 1, None))
        .await
        .unwrap();

    // 16 promoters, each moving the label from whatever it reads to its own
    // version, retrying on a lost compare-and-set until it has moved once.
    let mut tasks = Vec::new();
    for mine in 1..=16u64 {
        // Each promoter its own deployer token: the history names each one.
        let name = format!("promoter-{mine}");
        let mut client = server.client_as(&name, pb::Role::Deployer, &[], &[]).await;
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            loop {
                let current = resolve(&mut client, "p", "production")
                    .await
                    .unwrap()
                    .version;
                let target = if current == mine {
                    (mine % 16) + 1
                } else {
                    mine
                };
                let mut request = set_label("p", "production", target, Some(current));
                request.actor = "someone-else".into();
                match client.set_label(request).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        assert!(r.changed);
                        assert_eq!(r.from_version, current);
                        return (r.revision, current, target, conflicts);
                    }
                    Err(status) => {
                        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
                        conflicts += 1;
                    }
                }
            }
        }));
    }
    let mut moves = Vec::new();
    for task in tasks {
        moves.push(task.await.unwrap());
    }
    let revisions: HashSet<u64> = moves.iter().map(|m| m.0).collect();
    assert_eq!(revisions.len(), 16, "every move got its own revision");

    // History: the initial promote and the 16 moves, each starting where the
    // previous one ended: no lost update.
    let history = label_history(&mut client, "p", "production").await;
    assert_eq!(history.len(), 17);
    let mut oldest_first = history.clone();
    oldest_first.reverse();
    for pair in oldest_first.windows(2) {
        assert!(pair[1].revision > pair[0].revision);
        assert_eq!(
            pair[1].from_version, pair[0].to_version,
            "a move started from a stale target"
        );
    }
    let actors: HashSet<&str> = history
        .iter()
        .map(|m| m.actor.as_str())
        .filter(|a| a.starts_with("promoter-"))
        .collect();
    assert_eq!(actors.len(), 16);
}

#[tokio::test]
async fn diff_versions_shows_every_kind_of_change() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut v1 = publish_text("p", "Hello {{name}}\nBe brief.\n", &["name"]);
    v1.model_config_json = r#"{"model":"m1","temperature":0.2}"#.into();
    v1.tags = [
        ("runtime".to_string(), "agent-v2".to_string()),
        ("team".to_string(), "a".to_string()),
    ]
    .into();
    let mut v2 = publish_text(
        "p",
        "Hello {{name}}\nBe thorough about {{topic}}.\n",
        &["name", "topic"],
    );
    v2.model_config_json = r#"{"model":"m2","temperature":0.2}"#.into();
    v2.tags = [("runtime".to_string(), "agent-v3".to_string())].into();
    client.publish_version(v1).await.unwrap();
    client.publish_version(v2).await.unwrap();
    let diff = client
        .diff_versions(pb::DiffVersionsRequest {
            name: "p".into(),
            from_version: 1,
            to_version: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        diff.template_diff.contains("-Be brief."),
        "{}",
        diff.template_diff
    );
    assert!(
        diff.template_diff.contains("+Be thorough about {{topic}}."),
        "{}",
        diff.template_diff
    );
    assert_eq!(diff.variables_added, ["topic"]);
    assert!(diff.variables_removed.is_empty());
    assert!(
        diff.model_config_diff.contains("-  \"model\": \"m1\""),
        "{}",
        diff.model_config_diff
    );
    assert_eq!(
        diff.tags_changed,
        ["runtime: agent-v2 -> agent-v3", "team: a -> (none)"]
    );
    let same = client
        .diff_versions(pb::DiffVersionsRequest {
            name: "p".into(),
            from_version: 2,
            to_version: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(same.template_diff.is_empty() && same.model_config_diff.is_empty());
    let missing = client
        .diff_versions(pb::DiffVersionsRequest {
            name: "p".into(),
            from_version: 1,
            to_version: 7,
        })
        .await;
    assert_status(missing, Code::NotFound, "no version 7");
}

#[tokio::test]
async fn health_and_reflection_answer() {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let server = TestServer::start().await;
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(HealthCheckRequest {
            service: "promptreg.v1.Registry".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // What `grpcurl -plaintext 127.0.0.1:50051 list` asks.
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"promptreg.v1.Registry".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

#[tokio::test]
async fn model_config_keeps_numbers_exactly_and_refuses_duplicate_keys() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let with_config = |config: &str| {
        let mut request = publish_text("p", "x", &[]);
        request.model_config_json = config.into();
        request
    };
    assert_status(
        client
            .publish_version(with_config(
                r#"{"model": "m", "seed": 123456789012345678901234567890}"#,
            ))
            .await,
        Code::InvalidArgument,
        "model_config_json: the number 123456789012345678901234567890 at .seed cannot be kept exactly",
    );
    assert_status(
        client
            .publish_version(with_config(r#"{"model": "a", "model": "b"}"#))
            .await,
        Code::InvalidArgument,
        r#"model_config_json: key "model" appears twice"#,
    );
    // What can be kept is kept, in the documented normal form.
    let published = client
        .publish_version(with_config(
            r#"{"seed": 18446744073709551615, "t": 0.25, "big": 1e5, "s": "123456789012345678901234567890"}"#,
        ))
        .await
        .unwrap()
        .into_inner();
    let stored = client
        .get_version(pb::GetVersionRequest {
            name: "p".into(),
            selector: Some(pb::get_version_request::Selector::Version(
                published.version,
            )),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap();
    assert_eq!(
        stored.model_config_json,
        r#"{"big":100000.0,"s":"123456789012345678901234567890","seed":18446744073709551615,"t":0.25}"#
    );
    // The stored form publishes as the same version.
    let again = client
        .publish_version(with_config(&stored.model_config_json))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.version, again.created), (published.version, false));
}
