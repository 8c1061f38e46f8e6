//! Prompt names and label names: what they may look like.

use super::ValidationError;
use std::fmt;

/// The label the registry keeps on every prompt's newest version.
pub const LATEST_LABEL: &str = "latest";

/// A valid prompt name: `/`-separated segments matching `[a-z0-9][a-z0-9._-]*`,
/// no empty segment, no `..`, at most `max_bytes` bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PromptName(String);

impl PromptName {
    pub fn parse(field: &str, raw: &str, max_bytes: usize) -> Result<PromptName, ValidationError> {
        const RULE: &str = "segments matching [a-z0-9][a-z0-9._-]* joined by '/'";
        let err = |rule: String| Err(ValidationError::new(field, rule));
        if raw.is_empty() {
            return err("must not be empty".into());
        }
        if raw.len() > max_bytes {
            return err(format!("is {} bytes; the limit is {max_bytes}", raw.len()));
        }
        for segment in raw.split('/') {
            if segment.is_empty() {
                return err(format!("{raw:?} has an empty segment; a name is {RULE}"));
            }
            if segment.contains("..") {
                return err(format!("{raw:?} contains '..'; a name is {RULE}"));
            }
            let mut bytes = segment.bytes();
            let first_ok = bytes
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            let rest_ok = bytes.all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            });
            if !first_ok || !rest_ok {
                return err(format!("{raw:?} is not valid; a name is {RULE}"));
            }
        }
        Ok(PromptName(raw.to_string()))
    }

    /// Checks a name prefix (`WatchRequest.prefixes`, `ListPromptsRequest.prefix`):
    /// it must be the start of some valid name, so that it can match one. That
    /// is a valid name, or a valid name followed by `/` (`support/`, `support/tri`).
    pub fn check_prefix(field: &str, raw: &str, max_bytes: usize) -> Result<(), ValidationError> {
        if raw.len() > max_bytes {
            return Err(ValidationError::new(
                field,
                format!(
                    "is {} bytes, longer than any prompt name (at most {max_bytes})",
                    raw.len()
                ),
            ));
        }
        let whole = raw.strip_suffix('/').unwrap_or(raw);
        PromptName::parse(field, whole, max_bytes).map_err(|_| {
            ValidationError::new(
                field,
                format!(
                    "{raw:?} is not the start of any prompt name; a name is segments matching \
                     [a-z0-9][a-z0-9._-]* joined by '/', and a prefix is a name or a name and '/'"
                ),
            )
        })?;
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PromptName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A valid label name: `[a-z0-9][a-z0-9_-]{0,62}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelName(String);

impl LabelName {
    pub fn parse(field: &str, raw: &str) -> Result<LabelName, ValidationError> {
        let mut bytes = raw.bytes();
        let first_ok = bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let rest_ok =
            bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'));
        if raw.is_empty() || raw.len() > 63 || !first_ok || !rest_ok {
            return Err(ValidationError::new(
                field,
                format!("{raw:?} is not a label name; labels match [a-z0-9][a-z0-9_-]{{0,62}}"),
            ));
        }
        Ok(LabelName(raw.to_string()))
    }

    /// Like [`LabelName::parse`], and also refuses `latest`, which only the
    /// registry moves.
    pub fn parse_movable(field: &str, raw: &str) -> Result<LabelName, ValidationError> {
        let label = LabelName::parse(field, raw)?;
        if label.is_latest() {
            return Err(ValidationError::new(
                field,
                "'latest' follows the newest version by itself and cannot be moved by hand",
            ));
        }
        Ok(label)
    }

    pub fn latest() -> LabelName {
        LabelName(LATEST_LABEL.to_string())
    }

    pub fn is_latest(&self) -> bool {
        self.0 == LATEST_LABEL
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LabelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_name(raw: &str, ok: bool) {
        assert_eq!(PromptName::parse("name", raw, 128).is_ok(), ok, "{raw:?}");
    }

    #[test]
    fn prompt_names() {
        for good in ["a", "support/triage", "x1/y_2/z-3.v4", "0"] {
            check_name(good, true);
        }
        for bad in [
            "", "/a", "a/", "a//b", "A", "a/../b", "a..b", "-a", ".a", "a b", "é",
        ] {
            check_name(bad, false);
        }
        check_name(&"a".repeat(128), true);
        check_name(&"a".repeat(129), false);
    }

    #[test]
    fn name_prefixes_are_the_start_of_a_valid_name() {
        for good in [
            "a",
            "support/",
            "support/tri",
            "a.",
            "a-",
            "x1/y_2/",
            "a/b/c",
        ] {
            assert!(
                PromptName::check_prefix("prefixes[0]", good, 128).is_ok(),
                "{good:?}"
            );
        }
        for bad in [
            "", "/", "/a", "a//", "A", "Support/", "a/../", "a..", "-a", "a/.", "a b", "é",
        ] {
            let err = PromptName::check_prefix("prefixes[0]", bad, 128).unwrap_err();
            assert_eq!(err.field, "prefixes[0]", "{bad:?}");
        }
        assert!(PromptName::check_prefix("prefix", &"a".repeat(128), 128).is_ok());
        assert!(PromptName::check_prefix("prefix", &"a".repeat(129), 128).is_err());
    }

    #[test]
    fn label_names() {
        assert!(LabelName::parse("label", "production").is_ok());
        assert!(LabelName::parse("label", &"a".repeat(63)).is_ok());
        assert!(LabelName::parse("label", &"a".repeat(64)).is_err());
        assert!(LabelName::parse("label", "Prod").is_err());
        assert!(LabelName::parse("label", "_x").is_err());
        assert!(LabelName::parse("label", "a.b").is_err());
        let err = LabelName::parse_movable("label", "latest").unwrap_err();
        assert!(err.to_string().contains("latest"), "{err}");
    }
}
