//! Prompt content, its validation, and the canonical form its digest covers.
//!
//! The canonical form is part of the public contract: it is specified in
//! `proto/promptreg/v1/registry.proto` (message `Version`) and recomputed by
//! clients in other languages. Change it only with a new domain tag.

use super::{placeholders, Limits, ValidationError};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeSet;
use std::fmt;

/// The first bytes of every canonical form.
const CANONICAL_TAG: &[u8] = b"promptreg.content.v1\n";

/// A template body: one text, or chat messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateBody {
    Text(String),
    Chat(Vec<ChatMessage>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl TemplateBody {
    /// The template as lines for a diff: chat messages as `[role]` then content.
    pub fn render_for_diff(&self) -> String {
        let mut out = match self {
            TemplateBody::Text(text) => text.clone(),
            TemplateBody::Chat(messages) => messages
                .iter()
                .map(|m| format!("[{}]\n{}", m.role, m.content))
                .collect::<Vec<_>>()
                .join("\n"),
        };
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out
    }
}

/// What an agent executes: template, declared variables (sorted), and the
/// normalised model config. The digest covers exactly this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    pub template: TemplateBody,
    /// Declared variables in ascending byte order, no duplicates.
    pub variables: Vec<String>,
    /// A JSON object, keys sorted, no insignificant whitespace.
    pub model_config_json: String,
}

impl Content {
    /// Validates raw content against the template rules and `limits`:
    /// placeholders well formed, every used variable declared and every
    /// declared one used, model config a JSON object.
    pub fn validate(
        template: TemplateBody,
        declared: &[String],
        model_config_json: &str,
        limits: &Limits,
    ) -> Result<Content, ValidationError> {
        let used = used_variables(&template, limits)?;

        if declared.len() > limits.max_variables {
            return Err(ValidationError::new(
                "variables",
                format!(
                    "{} declared; the limit is {}",
                    declared.len(),
                    limits.max_variables
                ),
            ));
        }
        let mut variables = BTreeSet::new();
        for (i, var) in declared.iter().enumerate() {
            let field = format!("variables[{i}]");
            let well_formed = var
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !well_formed {
                return Err(ValidationError::new(
                    field,
                    format!("{var:?} is not a variable name; names match [A-Za-z_][A-Za-z0-9_]*"),
                ));
            }
            if var.len() > limits.max_variable_name_bytes {
                return Err(ValidationError::new(
                    field,
                    format!(
                        "is {} bytes; the limit is {}",
                        var.len(),
                        limits.max_variable_name_bytes
                    ),
                ));
            }
            if !variables.insert(var.clone()) {
                return Err(ValidationError::new(
                    field,
                    format!("{var:?} is declared twice"),
                ));
            }
        }
        if let Some(undeclared) = used.difference(&variables).next() {
            return Err(ValidationError::new(
                "variables",
                format!("the template uses {{{{{undeclared}}}}} but does not declare it"),
            ));
        }
        if let Some(unused) = variables.difference(&used).next() {
            return Err(ValidationError::new(
                "variables",
                format!("{unused:?} is declared but the template never uses it"),
            ));
        }

        Ok(Content {
            template,
            variables: variables.into_iter().collect(),
            model_config_json: super::model_config::normalise(model_config_json, limits)?,
        })
    }

    /// The canonical byte form the digest covers (see the module docs).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.model_config_json.len());
        out.extend_from_slice(CANONICAL_TAG);
        match &self.template {
            TemplateBody::Text(text) => {
                put_str(&mut out, "text");
                put_str(&mut out, text);
            }
            TemplateBody::Chat(messages) => {
                put_str(&mut out, "chat");
                put_u32(&mut out, messages.len());
                for message in messages {
                    put_str(&mut out, &message.role);
                    put_str(&mut out, &message.content);
                }
            }
        }
        put_u32(&mut out, self.variables.len());
        for var in &self.variables {
            put_str(&mut out, var);
        }
        put_str(&mut out, &self.model_config_json);
        out
    }

    pub fn digest(&self) -> ContentDigest {
        ContentDigest(Sha256::digest(self.canonical_bytes()).into())
    }
}

fn used_variables(
    template: &TemplateBody,
    limits: &Limits,
) -> Result<BTreeSet<String>, ValidationError> {
    match template {
        TemplateBody::Text(text) => {
            check_template_size("template.text", text.len(), limits)?;
            placeholders("template.text", text)
        }
        TemplateBody::Chat(messages) => {
            if messages.is_empty() {
                return Err(ValidationError::new(
                    "template.chat.messages",
                    "must hold at least one message",
                ));
            }
            if messages.len() > limits.max_chat_messages {
                return Err(ValidationError::new(
                    "template.chat.messages",
                    format!(
                        "{} messages; the limit is {}",
                        messages.len(),
                        limits.max_chat_messages
                    ),
                ));
            }
            let total: usize = messages.iter().map(|m| m.content.len()).sum();
            check_template_size("template.chat.messages", total, limits)?;
            let mut used = BTreeSet::new();
            for (i, message) in messages.iter().enumerate() {
                let role_ok = message
                    .role
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_lowercase())
                    && message.role.len() <= 32
                    && message
                        .role
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                if !role_ok {
                    return Err(ValidationError::new(
                        format!("template.chat.messages[{i}].role"),
                        format!(
                            "{:?} is not a role; roles match [a-z][a-z0-9_]{{0,31}}",
                            message.role
                        ),
                    ));
                }
                used.extend(placeholders(
                    &format!("template.chat.messages[{i}].content"),
                    &message.content,
                )?);
            }
            Ok(used)
        }
    }
}

fn check_template_size(field: &str, size: usize, limits: &Limits) -> Result<(), ValidationError> {
    if size == 0 {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if size > limits.max_template_bytes {
        return Err(ValidationError::new(
            field,
            format!(
                "is {size} bytes; the limit is {} bytes",
                limits.max_template_bytes
            ),
        ));
    }
    Ok(())
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    // Every length is bounded by the limits far below u32::MAX.
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    out.extend_from_slice(&n.to_be_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// A SHA-256 content digest, written `sha256:<64 lowercase hex>`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContentDigest(pub [u8; 32]);

impl ContentDigest {
    pub fn parse(field: &str, raw: &str) -> Result<ContentDigest, ValidationError> {
        let err = || {
            ValidationError::new(
                field,
                format!("{raw:?} is not a digest; digests are sha256:<64 lowercase hex>"),
            )
        };
        let hex_part = raw.strip_prefix("sha256:").ok_or_else(err)?;
        if hex_part.len() != 64 || hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(err());
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| err())?;
        Ok(ContentDigest(bytes))
    }
}

impl fmt::Display for ContentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // By hand: `hex::encode` goes through an iterator of chars, and
        // digests are formatted on every resolve and every watch delivery.
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 64];
        for (i, byte) in self.0.iter().enumerate() {
            text[2 * i] = DIGITS[usize::from(byte >> 4)];
            text[2 * i + 1] = DIGITS[usize::from(byte & 0x0f)];
        }
        f.write_str("sha256:")?;
        // Only ASCII hex digits were written.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for ContentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(t: &str, vars: &[&str], config: &str) -> Result<Content, ValidationError> {
        let vars: Vec<String> = vars.iter().map(|v| v.to_string()).collect();
        Content::validate(
            TemplateBody::Text(t.into()),
            &vars,
            config,
            &Limits::default(),
        )
    }

    #[test]
    fn canonical_form_matches_the_documented_example() {
        let content = text("Hi {{name}}", &["name"], "").unwrap();
        let mut expected = b"promptreg.content.v1\n".to_vec();
        expected.extend_from_slice(b"\x00\x00\x00\x04text\x00\x00\x00\x0bHi {{name}}");
        expected.extend_from_slice(b"\x00\x00\x00\x01\x00\x00\x00\x04name\x00\x00\x00\x02{}");
        assert_eq!(content.canonical_bytes(), expected);
        assert_eq!(CANONICAL_TAG.len(), 21);
    }

    #[test]
    fn model_config_is_normalised() {
        let a = text("x", &[], r#"{ "temperature": 0.2, "model": "m" }"#).unwrap();
        let b = text("x", &[], r#"{"model":"m","temperature":0.2}"#).unwrap();
        assert_eq!(a.model_config_json, r#"{"model":"m","temperature":0.2}"#);
        assert_eq!(a.digest(), b.digest());
        assert!(text("x", &[], "[1]").unwrap_err().rule.contains("object"));
        assert!(text("x", &[], "{").unwrap_err().rule.contains("JSON"));
    }

    #[test]
    fn variables_must_match_the_template() {
        let err = text("{{a}} {{b}}", &["a"], "").unwrap_err();
        assert_eq!(err.field, "variables");
        assert!(err.rule.contains("{{b}}"), "{err}");
        let err = text("{{a}}", &["a", "c"], "").unwrap_err();
        assert!(
            err.rule.contains("\"c\"") && err.rule.contains("never uses"),
            "{err}"
        );
        let err = text("{{a}}", &["a", "a"], "").unwrap_err();
        assert_eq!(err.field, "variables[1]");
        let ok = text("{{b}} {{a}}", &["b", "a"], "").unwrap();
        assert_eq!(ok.variables, ["a", "b"]);
    }

    #[test]
    fn digest_round_trips_through_text() {
        let digest = text("x", &[], "").unwrap().digest();
        assert_eq!(
            ContentDigest::parse("d", &digest.to_string()).unwrap(),
            digest
        );
        assert!(ContentDigest::parse("d", "sha256:00").is_err());
        assert!(ContentDigest::parse("d", &digest.to_string().to_uppercase()).is_err());
    }
}
