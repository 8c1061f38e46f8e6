//! Fuzz harnesses: one function per target, each taking arbitrary bytes and
//! panicking only when an invariant of the code under test is broken.
//!
//! The cargo-fuzz targets in `fuzz/fuzz_targets/` are one line each and call
//! these; `tests/fuzz_smoke.rs` runs them over the seed corpus and a few
//! thousand generated inputs on every `cargo test`. They live in the library,
//! hidden from the docs, because they reach crate-private code: the record
//! decoder of `store::records`, the data key behind sealing, and the request
//! conversions of `grpc::convert`. Nothing else uses this module.
//!
//! - [`template`]: the `{{variable}}` parser against a second tokenizer
//!   written for this purpose; parse → render → parse; escaping; validation
//!   of a parsed template.
//! - [`digest`]: content built from the bytes through the server's own
//!   validation; the normalised content is a fixed point; the canonical form
//!   is deterministic and decodes back to the content; equal content, equal
//!   digest.
//! - [`records`]: the on-disk record decoder (corrupt bytes are an error,
//!   never a panic), re-encoding as a fixed point, record → domain → record,
//!   sealing and the backup file format.
//! - [`requests`]: the bytes as a protobuf request (the first byte picks the
//!   message), through the server's validation and conversion: a value or
//!   INVALID_ARGUMENT with a bounded message, and what the server stores can
//!   be published again unchanged.
//!
//! Most harnesses split their input into text fields at `0xFF`, a byte that
//! never occurs in UTF-8, so the fuzzer can grow one field without moving
//! the others. A flag in the first byte picks `tiny_limits`, so that short
//! inputs also reach every "over the limit" branch.

use crate::domain::{
    placeholders, ChatMessage, Content, ContentDigest, Limits, PromptName, TemplateBody, Version,
};
use crate::grpc::{content_of, convert, pb};
use crate::store::backup;
use crate::store::records::{
    self, AuditRec, KeyRec, LabelRec, MoveRec, PromptRec, RevisionRec, VersionRec,
};
use crate::store::DataKey;
use prost::Message as _;
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeSet;
use tonic::{Code, Status};

/// The first 200 characters of `text`, for failure messages about large
/// inputs.
fn short(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{:?}… ({} bytes)", &text[..cut], text.len()),
        None => format!("{text:?}"),
    }
}

/// Splits fuzz input into text fields at `0xFF` (see the module docs).
fn fields(data: &[u8]) -> Vec<String> {
    data.split(|b| *b == 0xFF)
        .map(|field| String::from_utf8_lossy(field).into_owned())
        .collect()
}

/// Limits small enough that a fuzzer's short inputs cross each of them.
fn tiny_limits() -> Limits {
    Limits {
        max_name_bytes: 16,
        max_template_bytes: 48,
        max_chat_messages: 3,
        max_variables: 3,
        max_variable_name_bytes: 6,
        max_tags: 2,
        max_tag_value_bytes: 8,
        max_model_config_bytes: 40,
        max_actor_bytes: 8,
        max_text_bytes: 16,
        ..Limits::default()
    }
}

fn limits_for(flags: u8) -> Limits {
    if flags & 0x80 == 0 {
        Limits::default()
    } else {
        tiny_limits()
    }
}

// --- (a) the template and variable parser ----------------------------------------

/// One piece of a template, as [`tokenize`] sees it.
#[derive(Debug)]
enum Token<'a> {
    Literal(&'a str),
    Placeholder(&'a str),
}

/// A second reading of the template syntax documented on [`placeholders`],
/// written independently (by searching for `{{` instead of scanning byte by
/// byte), which also keeps the spans the parser does not return. The error
/// is the byte offset of the malformed `{{`.
fn tokenize(text: &str) -> Result<Vec<Token<'_>>, usize> {
    let mut tokens = Vec::new();
    let (mut literal_start, mut search_from) = (0, 0);
    while let Some(offset) = text[search_from..].find("{{") {
        let open = search_from + offset;
        if text[..open].ends_with('\\') {
            search_from = open + 2;
            continue;
        }
        let inside = text[open + 2..].trim_start_matches(' ');
        let name_len = inside
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        let name = &inside[..name_len];
        let after_name = inside[name_len..].trim_start_matches(' ');
        let starts_well = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
        if !starts_well || !after_name.starts_with("}}") {
            return Err(open);
        }
        let end = text.len() - after_name.len() + 2;
        tokens.push(Token::Literal(&text[literal_start..open]));
        tokens.push(Token::Placeholder(name));
        literal_start = end;
        search_from = end;
    }
    tokens.push(Token::Literal(&text[literal_start..]));
    Ok(tokens)
}

/// The template with every placeholder replaced by `fill(name)`.
fn render(tokens: &[Token<'_>], fill: impl Fn(&str) -> String) -> String {
    tokens
        .iter()
        .map(|token| match token {
            Token::Literal(text) => (*text).to_string(),
            Token::Placeholder(name) => fill(name),
        })
        .collect()
}

fn as_placeholder(name: &str) -> String {
    format!("{{{{{name}}}}}")
}

/// Template target: the bytes (as UTF-8, lossily) are one template text.
pub fn template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parsed = placeholders("template.text", &text);
    let tokens = tokenize(&text);
    let names = match (parsed, &tokens) {
        (Ok(names), Ok(tokens)) => {
            let expected: BTreeSet<String> = tokens
                .iter()
                .filter_map(|token| match token {
                    Token::Placeholder(name) => Some(name.to_string()),
                    Token::Literal(_) => None,
                })
                .collect();
            assert_eq!(names, expected, "placeholders of {text:?}");
            names
        }
        (Err(error), Err(at)) => {
            assert_eq!(error.field, "template.text");
            assert!(
                error.rule.contains(&format!("at byte {at}:")),
                "{text:?}: {error}, but the malformed placeholder is at byte {at}"
            );
            return check_escaping(&text);
        }
        (parsed, tokens) => {
            panic!("{text:?}: the parser says {parsed:?}, the reference reading {tokens:?}")
        }
    };
    check_escaping(&text);
    let Ok(tokens) = tokens else { return };
    for name in &names {
        let mut bytes = name.bytes();
        assert!(bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_'));
        assert!(bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        assert!(text.contains(name.as_str()));
    }

    // Parse → render → parse: writing every placeholder as `{{name}}` keeps
    // the names, and doing it twice changes nothing more.
    let normalised = render(&tokens, as_placeholder);
    assert_eq!(
        placeholders("template.text", &normalised).as_ref(),
        Ok(&names),
        "{text:?} normalised to {normalised:?}"
    );
    let renormalised = tokenize(&normalised).map(|t| render(&t, as_placeholder));
    assert_eq!(renormalised.as_ref(), Ok(&normalised));

    // Filling in some variables (with text that cannot open a placeholder)
    // leaves exactly the others.
    let filled = |name: &str| name.len().is_multiple_of(2);
    let partly = render(&tokens, |name| {
        if filled(name) {
            format!("<{name}>")
        } else {
            as_placeholder(name)
        }
    });
    let left: BTreeSet<String> = names.iter().filter(|n| !filled(n)).cloned().collect();
    assert_eq!(
        placeholders("template.text", &partly),
        Ok(left),
        "{text:?} partly filled as {partly:?}"
    );

    check_template_validation(&text, &names);
}

/// A backslash before every `{{` makes any text a template without
/// placeholders, never an error.
fn check_escaping(text: &str) {
    let escaped = text.replace("{{", "\\{{");
    assert_eq!(
        placeholders("template.text", &escaped),
        Ok(BTreeSet::new()),
        "{text:?} escaped as {escaped:?}"
    );
}

/// A well-formed template validates exactly when it is within the limits and
/// declares the variables it uses, whether it is a text or a chat message.
fn check_template_validation(text: &str, names: &BTreeSet<String>) {
    let limits = Limits::default();
    let within_limits = !text.is_empty()
        && text.len() <= limits.max_template_bytes
        && names.len() <= limits.max_variables
        && names
            .iter()
            .all(|name| name.len() <= limits.max_variable_name_bytes);
    let declared: Vec<String> = names.iter().rev().cloned().collect();
    let bodies = [
        TemplateBody::Text(text.to_string()),
        TemplateBody::Chat(vec![ChatMessage {
            role: "user".into(),
            content: text.to_string(),
        }]),
    ];
    for body in bodies {
        let validated = Content::validate(body.clone(), &declared, "", &limits);
        assert_eq!(
            validated.is_ok(),
            within_limits,
            "{body:?} declaring {declared:?}: {validated:?}"
        );
        let Ok(content) = validated else { continue };
        assert!(content.variables.iter().eq(names.iter()));
        if names.len() < limits.max_variables {
            let unused = (0..)
                .map(|i| format!("_{i}"))
                .find(|candidate| !names.contains(candidate))
                .unwrap_or_default();
            let mut too_many = declared.clone();
            too_many.push(unused);
            let error = Content::validate(body, &too_many, "", &limits)
                .expect_err("a declared variable the template never uses");
            assert!(error.rule.contains("never uses"), "{error}");
        }
    }
}

// --- (b) the canonical content encoding and its digest ---------------------------

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

// --- (c) the on-disk record decoder ----------------------------------------------

/// The key every record is decoded under; errors must name it.
const RECORD_KEY: &[u8] = b"v/fuzz/prompt\0\0\0\0\0\0\0\0\x01";

/// The data key of [`records`]' sealing checks.
fn fuzz_data_key() -> DataKey {
    DataKey::from_bytes(&[7; 32]).expect("32 bytes make a data key")
}

/// Decodes a record: an error names the key; a value re-encodes to bytes
/// that decode to the same value (the encoding is a fixed point).
fn decode_record<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    let record = match records::decode::<T>(RECORD_KEY, bytes) {
        Ok(record) => record,
        Err(error) => {
            assert_eq!(
                error.key,
                String::from_utf8_lossy(RECORD_KEY).replace('\0', "/")
            );
            return None;
        }
    };
    let encoded = records::encode(&record);
    let again: T = records::decode(RECORD_KEY, &encoded)
        .unwrap_or_else(|e| panic!("a re-encoded record does not decode: {e}"));
    assert_eq!(records::encode(&again), encoded, "re-encoding changed it");
    Some(record)
}

/// Records target. The first byte picks the record type (or sealing, or a
/// backup file); the rest are the stored bytes (format byte and JSON).
pub fn records(data: &[u8]) {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 9 {
        0 => {
            if let Some(version) =
                decode_record::<VersionRec>(bytes).and_then(|r| r.into_domain().ok())
            {
                let written = records::encode(&VersionRec::from(&version));
                let read = decode_record::<VersionRec>(&written)
                    .map(|r| r.into_domain())
                    .expect("a record written from a version decodes");
                assert_eq!(read.as_ref(), Ok(&version));
            }
        }
        1 => {
            let _ = decode_record::<LabelRec>(bytes).map(|r| r.into_domain("production"));
        }
        2 => {
            let _ = decode_record::<PromptRec>(bytes).map(|r| r.into_domain("fuzz/prompt"));
        }
        3 => {
            if let Some(moved) = decode_record::<MoveRec>(bytes).and_then(|r| r.into_domain().ok())
            {
                let written = records::encode(&MoveRec::from(&moved));
                let read = decode_record::<MoveRec>(&written).map(|r| r.into_domain());
                assert_eq!(read, Some(Ok(moved)));
            }
        }
        4 => {
            if let Some(revision) =
                decode_record::<RevisionRec>(bytes).and_then(|r| r.into_domain().ok())
            {
                let written = records::encode(&RevisionRec::from(&revision));
                let read = decode_record::<RevisionRec>(&written).map(|r| r.into_domain());
                assert_eq!(read, Some(Ok(revision)));
            }
        }
        5 => {
            if let Some(key) = decode_record::<KeyRec>(bytes) {
                let _ = hex::decode(&key.public_key);
            }
        }
        6 => {
            if let Some(audit) = decode_record::<AuditRec>(bytes) {
                let written = records::encode(&audit);
                let entry = crate::provenance::AuditEntry::from(audit);
                assert_eq!(records::encode(&AuditRec::from(&entry)), written);
            }
        }
        7 => check_sealing(bytes),
        _ => check_backup(bytes),
    }
}

/// A stored version's sealed content opens only with its data key under its
/// own record key, and opening gives back what was sealed; whatever is
/// stored, or decrypted, opening is an error or a value.
fn check_sealing(bytes: &[u8]) {
    let data_key = fuzz_data_key();
    if decode_record::<VersionRec>(bytes).is_none() {
        // Arbitrary plaintext behind a valid seal: what a data key opens is
        // still read as untrusted bytes.
        let mut rec = VersionRec {
            name: "fuzz/prompt".into(),
            version: 1,
            digest: ContentDigest([0; 32]).to_string(),
            template: None,
            variables: Vec::new(),
            model_config_json: None,
            sealed: Some(data_key.seal(RECORD_KEY, bytes)),
            author: String::new(),
            description: String::new(),
            tags: Default::default(),
            created_at: 0,
            revision: 1,
            signature: None,
            signing_key_id: None,
            pruned: false,
        };
        if rec.unseal(Some(&data_key), RECORD_KEY).is_ok() {
            assert!(rec.template.is_some() && rec.model_config_json.is_some());
        }
        return;
    }
    // The stored bytes with a sealed blob of their own: opened with no key
    // or with the fuzz key (whose id a seed carries).
    let decoded = || decode_record::<VersionRec>(bytes).expect("decoded once already");
    let _ = decoded().unseal(None, RECORD_KEY);
    let _ = decoded().unseal(Some(&data_key), RECORD_KEY);

    let mut plain = decoded();
    plain.sealed = None;
    let before = records::encode(&plain);
    let has_content = plain.template.is_some() && plain.model_config_json.is_some();
    plain.seal(&data_key, RECORD_KEY);
    assert_eq!(plain.sealed.is_some(), has_content);
    let sealed = records::encode(&plain);
    let read = || records::decode::<VersionRec>(RECORD_KEY, &sealed).expect("a sealed record");
    if has_content {
        assert!(
            read().unseal(Some(&data_key), b"v/another/record").is_err(),
            "sealed content opened under another record's key"
        );
        assert!(
            read().unseal(None, RECORD_KEY).is_err(),
            "sealed content opened without the data key"
        );
    }
    let mut opened = read();
    opened
        .unseal(Some(&data_key), RECORD_KEY)
        .expect("sealed content opens with its own key");
    assert_eq!(records::encode(&opened), before);
}

/// A backup file (the bytes, with their checksum appended so that the
/// framing is reached) reads back or is refused; what reads back writes
/// and reads again unchanged. Without the right checksum it is refused.
fn check_backup(bytes: &[u8]) {
    let _ = backup::decode(bytes);
    let mut file = bytes.to_vec();
    file.extend_from_slice(&Sha256::digest(bytes));
    let Ok((header, entries)) = backup::decode(&file) else {
        return;
    };
    let stored: Vec<(Vec<u8>, Vec<u8>)> = entries
        .iter()
        .map(|(key, value)| (key.as_slice().into(), value.as_slice().into()))
        .collect();
    let written = backup::encode(&header, &stored);
    assert_eq!(backup::decode(&written), Ok((header, entries)));
    if let Some(last) = file.last_mut() {
        *last ^= 1;
        assert!(backup::decode(&file).is_err(), "an altered backup was read");
    }
}

// --- (d) request validation ------------------------------------------------------

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

/// Seed inputs per target, built with the real encoders so they follow the
/// current formats: `tests/fuzz_smoke.rs` mutates them, and the files in
/// `fuzz/corpus/` started as these.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "template" => [
            "Hello {{name}}, welcome to {{ place }}.",
            "literal \\{{x}} and {{y}} and {{_z1}}",
            "{{a}}{{b}}{{ c }}",
            "{{",
            "x {{name}",
            "{{1x}}",
            "\\{{{{a}}}",
            "é {{ ünï }} 😀",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect(),
        "digest" => {
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
        "records" => records_seeds(),
        "requests" => request_seeds(),
        _ => Vec::new(),
    }
}

fn records_seeds() -> Vec<Vec<u8>> {
    let digest = ContentDigest([0x5a; 32]);
    let name = PromptName::parse("name", "fuzz/prompt", 128).expect("a valid name");
    let label = crate::domain::LabelName::parse("label", "production").expect("a valid label");
    let version = Version {
        name: name.clone(),
        number: 3,
        digest,
        content: Content {
            template: TemplateBody::Chat(vec![ChatMessage {
                role: "system".into(),
                content: "Hi {{name}}".into(),
            }]),
            variables: vec!["name".into()],
            model_config_json: r#"{"t":0.5}"#.into(),
        },
        author: "ci".into(),
        description: "seed".into(),
        tags: [("team".to_string(), "a".to_string())].into(),
        created_at: 1_700_000_000_000_000,
        revision: 9,
        signature: Some(crate::domain::VersionSignature {
            key_id: "k1".into(),
            bytes: vec![1, 2, 3],
        }),
        pruned: false,
    };
    let moved = crate::domain::LabelMove {
        name: name.clone(),
        label: label.clone(),
        revision: 10,
        time: 1_700_000_000_000_001,
        kind: crate::domain::MoveKind::Rollback,
        from_version: Some(3),
        to_version: Some(2),
        digest: Some(digest),
        actor: "ops".into(),
        reason: "bad".into(),
        trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
    };
    let revision = crate::domain::Revision {
        revision: 10,
        time: 1_700_000_000_000_001,
        changes: vec![
            crate::domain::Change::VersionPublished {
                name,
                version: 3,
                digest,
                author: "ci".into(),
            },
            crate::domain::Change::LabelMoved(moved.clone()),
        ],
        trace_id: None,
    };
    let mut sealed = VersionRec::from(&version);
    sealed.seal(&fuzz_data_key(), RECORD_KEY);
    let header = backup::BackupHeader {
        format: backup::FORMAT.into(),
        version: backup::VERSION,
        schema: 1,
        revision: 10,
        entries: 1,
        encryption_key_id: None,
        created_at: "2026-01-01T00:00:00Z".into(),
    };
    let mut backup_file = backup::encode(
        &header,
        &[(
            b"meta/rev".as_slice().into(),
            10u64.to_be_bytes().as_slice().into(),
        )],
    );
    backup_file.truncate(backup_file.len() - 32);
    let with_kind = |kind: u8, bytes: Vec<u8>| [vec![kind], bytes].concat();
    vec![
        with_kind(0, records::encode(&VersionRec::from(&version))),
        with_kind(
            1,
            records::encode(&LabelRec {
                version: 3,
                digest: digest.to_string(),
                revision: 10,
                updated_at: 5,
            }),
        ),
        with_kind(
            2,
            records::encode(&PromptRec {
                latest_version: 3,
                latest_digest: digest.to_string(),
                updated_at: 5,
            }),
        ),
        with_kind(3, records::encode(&MoveRec::from(&moved))),
        with_kind(4, records::encode(&RevisionRec::from(&revision))),
        with_kind(
            5,
            records::encode(&KeyRec {
                public_key: "00ff".repeat(16),
                created_at: 1,
                revision: 1,
            }),
        ),
        with_kind(7, records::encode(&sealed)),
        with_kind(
            7,
            br#"{"template":{"kind":"text","text":"x"},"model_config_json":"{}"}"#.to_vec(),
        ),
        with_kind(8, backup_file),
    ]
}

fn request_seeds() -> Vec<Vec<u8>> {
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
