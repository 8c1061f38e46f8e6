//! The content digest, recomputed by an implementation written from the
//! proto documentation alone (message `Version`), not from the server's code.

mod support;

use promptreg::grpc::pb;
use sha2::{Digest, Sha256};
use support::*;

/// The canonical form exactly as `registry.proto` documents it.
fn documented_digest(v: &pb::Version) -> String {
    fn str_(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    let mut out = b"promptreg.content.v1\n".to_vec();
    match v
        .template
        .as_ref()
        .and_then(|t| t.kind.as_ref())
        .expect("content")
    {
        pb::template::Kind::Text(text) => {
            str_(&mut out, "text");
            str_(&mut out, text);
        }
        pb::template::Kind::Chat(chat) => {
            str_(&mut out, "chat");
            out.extend_from_slice(&(chat.messages.len() as u32).to_be_bytes());
            for m in &chat.messages {
                str_(&mut out, &m.role);
                str_(&mut out, &m.content);
            }
        }
    }
    let mut vars = v.variables.clone();
    vars.sort();
    out.extend_from_slice(&(vars.len() as u32).to_be_bytes());
    for var in &vars {
        str_(&mut out, var);
    }
    str_(&mut out, &v.model_config_json);
    let hash = Sha256::digest(&out);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

async fn fetch(client: &mut Client, name: &str, version: u64) -> pb::Version {
    client
        .get_version(pb::GetVersionRequest {
            name: name.into(),
            selector: Some(pb::get_version_request::Selector::Version(version)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap()
}

#[tokio::test]
async fn digests_match_the_documented_canonical_form() {
    let server = TestServer::start().await;
    let mut client = server.client().await;

    let mut text_request = publish_text(
        "docs/text",
        "Hi {{ name }}, about {{topic}}: ünïcode ✓ \\{{literal}}",
        &["topic", "name"],
    );
    text_request.model_config_json = r#"{ "temperature": 0.2, "model": "gpt-x", "stop": ["\n"], "nested": {"b": 1, "a": [true, null]} }"#.into();
    let text_published = client
        .publish_version(text_request)
        .await
        .unwrap()
        .into_inner();

    let chat_request = pb::PublishVersionRequest {
        name: "docs/chat".into(),
        template: Some(pb::Template {
            kind: Some(pb::template::Kind::Chat(pb::ChatTemplate {
                messages: vec![
                    pb::ChatMessage {
                        role: "system".into(),
                        content: "You triage {{product}} tickets.".into(),
                    },
                    pb::ChatMessage {
                        role: "user".into(),
                        content: "{{ticket}}".into(),
                    },
                ],
            })),
        }),
        variables: vec!["ticket".into(), "product".into()],
        model_config_json: String::new(),
        author: "alice".into(),
        description: String::new(),
        tags: Default::default(),
    };
    let chat_published = client
        .publish_version(chat_request)
        .await
        .unwrap()
        .into_inner();

    let text_version = fetch(&mut client, "docs/text", 1).await;
    assert_eq!(
        text_version.variables,
        ["name", "topic"],
        "variables come back sorted"
    );
    assert_eq!(
        text_version.model_config_json,
        r#"{"model":"gpt-x","nested":{"a":[true,null],"b":1},"stop":["\n"],"temperature":0.2}"#
    );
    assert_eq!(documented_digest(&text_version), text_published.digest);
    assert_eq!(text_version.digest, text_published.digest);

    let chat_version = fetch(&mut client, "docs/chat", 1).await;
    assert_eq!(chat_version.model_config_json, "{}");
    assert_eq!(documented_digest(&chat_version), chat_published.digest);
}

#[test]
fn the_documented_example_bytes() {
    // The worked example in registry.proto, byte for byte.
    let mut expected = b"promptreg.content.v1\n".to_vec();
    expected.extend_from_slice(&[0, 0, 0, 4]);
    expected.extend_from_slice(b"text");
    expected.extend_from_slice(&[0, 0, 0, 0x0b]);
    expected.extend_from_slice(b"Hi {{name}}");
    expected.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 4]);
    expected.extend_from_slice(b"name");
    expected.extend_from_slice(&[0, 0, 0, 2]);
    expected.extend_from_slice(b"{}");
    let content = promptreg::domain::Content::validate(
        promptreg::domain::TemplateBody::Text("Hi {{name}}".into()),
        &["name".to_string()],
        "",
        &promptreg::domain::Limits::default(),
    )
    .unwrap();
    assert_eq!(content.canonical_bytes(), expected);
}
