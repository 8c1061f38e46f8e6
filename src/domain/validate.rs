//! Field rules that are not a type's own constructor: free text, tags,
//! version numbers, agent identities, retention counts. Every rule returns a
//! [`ValidationError`] naming the field; callers that nest a message under
//! another field (WatchMany's `watch.`) prefix the path with
//! [`ValidationError::within`], never by editing the text.

use super::{Limits, ValidationError};
use std::collections::BTreeMap;

/// Agent ids and the agent's self-description (host, sdk, version) are at
/// most this many bytes; the fleet view keeps them per agent.
pub const MAX_AGENT_FIELD_BYTES: usize = 256;

/// Text that must be present (not only white space) and at most `limit`
/// bytes: author, actor, reason of a move.
pub fn required_text(field: &str, value: &str, limit: usize) -> Result<(), ValidationError> {
    if value.trim().is_empty() {
        return Err(ValidationError::new(field, "is required"));
    }
    optional_text(field, value, limit)
}

/// Text that may be empty, at most `limit` bytes.
pub fn optional_text(field: &str, value: &str, limit: usize) -> Result<(), ValidationError> {
    if value.len() > limit {
        return Err(ValidationError::new(
            field,
            format!("is {} bytes; the limit is {limit}", value.len()),
        ));
    }
    Ok(())
}

/// Who made a change to a label or to retention, and why: both required,
/// within the actor and text limits.
pub fn actor_and_reason(actor: &str, reason: &str, limits: &Limits) -> Result<(), ValidationError> {
    required_text("actor", actor, limits.max_actor_bytes)?;
    required_text("reason", reason, limits.max_text_bytes)
}

/// A version's tags: at most `max_tags`, keys `[a-z0-9][a-z0-9._/-]{0,62}`,
/// values at most `max_tag_value_bytes` with no control characters.
pub fn tags(tags: &BTreeMap<String, String>, limits: &Limits) -> Result<(), ValidationError> {
    if tags.len() > limits.max_tags {
        return Err(ValidationError::new(
            "tags",
            format!("{} tags; the limit is {}", tags.len(), limits.max_tags),
        ));
    }
    for (key, value) in tags {
        let key_ok = key.len() <= 63
            && key
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && key.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'.' | b'_' | b'/' | b'-')
            });
        if !key_ok {
            return Err(ValidationError::new(
                "tags",
                format!("key {key:?} is not valid; keys match [a-z0-9][a-z0-9._/-]{{0,62}}"),
            ));
        }
        if value.len() > limits.max_tag_value_bytes || value.chars().any(char::is_control) {
            return Err(ValidationError::new(
                format!("tags[{key}]"),
                format!(
                    "values are at most {} bytes with no control characters",
                    limits.max_tag_value_bytes
                ),
            ));
        }
    }
    Ok(())
}

/// A version number a request names: 1 or more.
pub fn version_number(field: &str, version: u64) -> Result<u64, ValidationError> {
    if version == 0 {
        return Err(ValidationError::new(
            field,
            "must be a version number (1 or more)",
        ));
    }
    Ok(version)
}

/// The agent id of an acknowledgement: required, at most
/// [`MAX_AGENT_FIELD_BYTES`].
pub fn agent_id(field: &str, raw: &str) -> Result<(), ValidationError> {
    if raw.trim().is_empty() {
        return Err(ValidationError::new(field, "is required"));
    }
    if raw.len() > MAX_AGENT_FIELD_BYTES {
        return Err(ValidationError::new(
            field,
            format!("is longer than {MAX_AGENT_FIELD_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// The agent's id and self-description on a watch: optional, each at most
/// [`MAX_AGENT_FIELD_BYTES`].
pub fn agent_field(field: &str, raw: &str) -> Result<(), ValidationError> {
    optional_text(field, raw, MAX_AGENT_FIELD_BYTES)
}

/// Most attributes an agent may declare.
pub const MAX_AGENT_ATTRIBUTES: usize = 16;
/// Longest attribute key or value, in bytes.
pub const MAX_ATTRIBUTE_BYTES: usize = 64;

/// An agent's attributes (what a rollout may assign it by): at most 16,
/// keys 1 to 64 printable ASCII characters without spaces, values at most
/// 64 bytes of text.
pub fn agent_attributes<'a>(
    field: &str,
    attributes: impl IntoIterator<Item = (&'a String, &'a String)> + Clone,
) -> Result<(), ValidationError> {
    let count = attributes.clone().into_iter().count();
    if count > MAX_AGENT_ATTRIBUTES {
        return Err(ValidationError::new(
            field,
            format!("has {count} attributes; at most {MAX_AGENT_ATTRIBUTES}"),
        ));
    }
    for (key, value) in attributes {
        let fine = !key.is_empty()
            && key.len() <= MAX_ATTRIBUTE_BYTES
            && key.bytes().all(|b| b.is_ascii_graphic());
        if !fine {
            return Err(ValidationError::new(
                format!("{field}[{key:?}]"),
                format!("the key must be 1 to {MAX_ATTRIBUTE_BYTES} printable ASCII characters, no spaces"),
            ));
        }
        optional_text(&format!("{field}[{key:?}]"), value, MAX_ATTRIBUTE_BYTES)?;
    }
    Ok(())
}

/// The reason an agent gives when it rejects a version: required.
pub fn rejection_reason(field: &str, reason: &str) -> Result<(), ValidationError> {
    if reason.trim().is_empty() {
        return Err(ValidationError::new(
            field,
            "is required when the outcome is rejected",
        ));
    }
    Ok(())
}

/// How many newest versions retention keeps: at least one.
pub fn keep_last(field: &str, keep_last: usize) -> Result<usize, ValidationError> {
    if keep_last == 0 {
        return Err(ValidationError::new(field, "must be at least 1"));
    }
    Ok(keep_last)
}

/// A revision to read at: at most the registry's `head`; a later one has
/// not happened yet.
pub fn revision_in_past(field: &str, revision: u64, head: u64) -> Result<u64, ValidationError> {
    if revision > head {
        return Err(ValidationError::new(
            field,
            format!("{revision} is ahead of the registry's head revision {head}"),
        ));
    }
    Ok(revision)
}

/// The revision a watch starts from. A watch resumes from the revision
/// after the last one it received, at most `head` + 1; a later start would
/// skip the revisions in between without a word. Refused like a read at a
/// future revision.
pub fn start_revision(field: &str, start: u64, head: u64) -> Result<u64, ValidationError> {
    if start > head.saturating_add(1) {
        return Err(ValidationError::new(
            field,
            format!(
                "{start} is ahead of the registry's head revision {head}; resume from at most \
                 {} (the revision after the last change received), or 0 for a snapshot",
                head + 1
            ),
        ));
    }
    Ok(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn required_text_needs_something_but_not_too_much() {
        let err = required_text("actor", "  ", 8).unwrap_err();
        assert_eq!(err.to_string(), "actor: is required");
        let err = required_text("actor", "123456789", 8).unwrap_err();
        assert_eq!(err.to_string(), "actor: is 9 bytes; the limit is 8");
        assert!(required_text("actor", "ana", 8).is_ok());
        assert!(optional_text("description", "", 8).is_ok());
    }

    #[test]
    fn tags_name_the_offending_key() {
        let limits = Limits::default();
        assert!(tags(&map(&[("team", "search")]), &limits).is_ok());
        let err = tags(&map(&[("Team", "x")]), &limits).unwrap_err();
        assert_eq!(err.field, "tags");
        let err = tags(&map(&[("team", "a\nb")]), &limits).unwrap_err();
        assert_eq!(err.field, "tags[team]");
    }

    #[test]
    fn agent_ids_are_bounded() {
        assert_eq!(
            agent_id("agent_id", "").unwrap_err().to_string(),
            "agent_id: is required"
        );
        assert_eq!(
            agent_id("agent_id", &"a".repeat(257))
                .unwrap_err()
                .to_string(),
            "agent_id: is longer than 256 bytes"
        );
        assert!(agent_field("agent.host", &"h".repeat(256)).is_ok());
        assert!(agent_field("agent.host", &"h".repeat(257)).is_err());
    }

    #[test]
    fn revisions_are_not_in_the_future() {
        assert!(revision_in_past("revision", 5, 5).is_ok());
        assert_eq!(
            revision_in_past("revision", 6, 5).unwrap_err().to_string(),
            "revision: 6 is ahead of the registry's head revision 5"
        );
        assert!(start_revision("start_revision", 6, 5).is_ok());
        assert!(start_revision("start_revision", 0, 0).is_ok());
        assert!(start_revision("start_revision", 7, 5).is_err());
    }

    #[test]
    fn a_nested_field_is_prefixed_not_rewritten() {
        let err = version_number("version", 0).unwrap_err().within("watch");
        assert_eq!(err.field, "watch.version");
        assert_eq!(
            err.to_string(),
            "watch.version: must be a version number (1 or more)"
        );
    }
}
