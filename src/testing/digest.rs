//! The canonical content encoding's fuzz harness ([`digest`]): content built
//! from the bytes through the server's own validation; the normalised content
//! is a fixed point; the canonical form is deterministic and decodes back to
//! the content; equal content, equal digest.

use super::{fields, limits_for, short};
use crate::domain::{placeholders, ChatMessage, Content, ContentDigest, TemplateBody};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeSet;

/// Reads a canonical form back (the layout documented in `registry.proto`):
/// `None` unless the bytes are exactly one content's canonical form.
fn parse_canonical(bytes: &[u8]) -> Option<Content> {
    fn length(rest: &mut &[u8]) -> Option<usize> {
        let (n, tail) = rest.split_first_chunk::<4>()?;
        *rest = tail;
        usize::try_from(u32::from_be_bytes(*n)).ok()
    }
    fn string(rest: &mut &[u8]) -> Option<String> {
        let n = length(rest)?;
        if rest.len() < n {
            return None;
        }
        let (text, tail) = rest.split_at(n);
        *rest = tail;
        String::from_utf8(text.to_vec()).ok()
    }
    let mut rest = bytes.strip_prefix(b"promptreg.content.v1\n".as_slice())?;
    let template = match string(&mut rest)?.as_str() {
        "text" => TemplateBody::Text(string(&mut rest)?),
        "chat" => {
            let count = length(&mut rest)?;
            let messages = (0..count)
                .map(|_| {
                    Some(ChatMessage {
                        role: string(&mut rest)?,
                        content: string(&mut rest)?,
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            TemplateBody::Chat(messages)
        }
        _ => return None,
    };
    let count = length(&mut rest)?;
    let variables = (0..count)
        .map(|_| string(&mut rest))
        .collect::<Option<Vec<_>>>()?;
    let model_config_json = string(&mut rest)?;
    rest.is_empty().then_some(Content {
        template,
        variables,
        model_config_json,
    })
}

/// The canonical form of any content (validated or not, as a client
/// recomputes it for content it fetched) is deterministic and decodes back to
/// exactly that content, so two contents never share a form or a digest.
fn check_canonical_form(content: &Content) {
    let bytes = content.canonical_bytes();
    assert_eq!(bytes, content.clone().canonical_bytes());
    assert_eq!(
        parse_canonical(&bytes).as_ref(),
        Some(content),
        "the canonical form of {content:?} reads back differently"
    );
    let digest = content.digest();
    assert_eq!(digest.0, <[u8; 32]>::from(Sha256::digest(&bytes)));
    assert_eq!(
        ContentDigest::parse("digest", &digest.to_string()),
        Ok(digest)
    );
}

/// Digest target. First byte: bit 0 chat (else text), bit 1 declare the
/// variables the template uses (else field 1, comma-separated), bit 7 tiny
/// limits. Then fields: model config, variables, and the template text or
/// chat role/content pairs. The last field is also parsed as a digest text.
pub fn digest(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let limits = limits_for(flags);
    let fields = fields(rest);
    let field = |i: usize| fields.get(i).cloned().unwrap_or_default();
    let template = if flags & 1 == 0 {
        TemplateBody::Text(field(2))
    } else {
        TemplateBody::Chat(
            fields
                .get(2..)
                .unwrap_or_default()
                .chunks(2)
                .map(|pair| ChatMessage {
                    role: pair[0].clone(),
                    content: pair.get(1).cloned().unwrap_or_default(),
                })
                .collect(),
        )
    };
    let declared: Vec<String> = if flags & 2 == 0 {
        field(1)
            .split(',')
            .filter(|name| !name.is_empty())
            .map(str::to_string)
            .collect()
    } else {
        let texts: Vec<&str> = match &template {
            TemplateBody::Text(text) => vec![text.as_str()],
            TemplateBody::Chat(messages) => messages.iter().map(|m| m.content.as_str()).collect(),
        };
        let used: BTreeSet<String> = texts
            .iter()
            .flat_map(|text| placeholders("t", text).unwrap_or_default())
            .collect();
        used.into_iter().rev().collect()
    };
    let model_config = field(0);

    if let Some(raw) = fields.last() {
        if let Ok(digest) = ContentDigest::parse("digest", raw) {
            assert_eq!(&digest.to_string(), raw);
        }
    }
    check_canonical_form(&Content {
        template: template.clone(),
        variables: declared.clone(),
        model_config_json: model_config.clone(),
    });

    let Ok(content) = Content::validate(template, &declared, &model_config, &limits) else {
        return;
    };
    assert!(content.variables.windows(2).all(|w| w[0] < w[1]));
    let value: serde_json::Value =
        serde_json::from_str(&content.model_config_json).unwrap_or_else(|e| {
            panic!(
                "the normalised config is not JSON ({e}): {}",
                short(&content.model_config_json)
            )
        });
    assert!(value.is_object());
    check_canonical_form(&content);

    // What the server stores is a fixed point of validation: publishing the
    // content GetVersion returned finds the same version.
    let again = Content::validate(
        content.template.clone(),
        &content.variables,
        &content.model_config_json,
        &limits,
    );
    assert_eq!(
        again.as_ref(),
        Ok(&content),
        "re-validating the stored form of {} (declared {declared:?}) changed it",
        short(&model_config)
    );

    // Equal content, equal digest: the order of declaration and the
    // spelling of the config do not matter.
    let reversed: Vec<String> = declared.iter().rev().cloned().collect();
    let same = Content::validate(content.template.clone(), &reversed, &model_config, &limits);
    assert_eq!(same.map(|c| c.digest()), Ok(content.digest()));
    if let Ok(pretty) = serde_json::to_string_pretty(&value) {
        if pretty.len() <= limits.max_model_config_bytes {
            let respelled =
                Content::validate(content.template.clone(), &reversed, &pretty, &limits);
            assert_eq!(
                respelled.map(|c| c.digest()),
                Ok(content.digest()),
                "{} and {} are one config",
                short(&pretty),
                short(&model_config)
            );
        }
    }
}

/// Seed inputs of [`digest`], in the layout documented there.
pub(super) fn seeds() -> Vec<Vec<u8>> {
    // Fields are separated by 0xFF (see `fields`).
    let join = |flags: u8, parts: &[&str]| {
        let mut out = vec![flags];
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                out.push(0xFF);
            }
            out.extend_from_slice(part.as_bytes());
        }
        out
    };
    vec![
        join(
            0,
            &[r#"{"temperature":0.2,"model":"m"}"#, "name", "Hi {{name}}"],
        ),
        join(
            2,
            &[
                r#"{ "b": [1, 2.5e10, null], "a": {"x": "y"} }"#,
                "",
                "{{b}} {{a}}",
            ],
        ),
        join(
            3,
            &[
                "",
                "",
                "system",
                "You are {{role}}.",
                "user",
                "{{question}}",
            ],
        ),
        join(0x80, &[r#"{"t":1e5}"#, "", "tiny"]),
        join(
            0x82,
            &[
                r#"{"k":"v"}"#,
                "",
                "{{a}}{{b}}",
                &ContentDigest([0xab; 32]).to_string(),
            ],
        ),
    ]
}
