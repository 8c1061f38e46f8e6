//! Small pieces of the CLI's text output: short digests, relative ages,
//! counted nouns. JSON output never goes through these: it keeps full
//! digests and absolute times.

use crate::time::{format_micros, from_timestamp, now_micros};

/// How many hex digits of a digest text output shows.
pub(super) const SHORT_DIGEST_HEX: usize = 12;

/// `sha256:` and the first 12 hex digits: enough to tell versions apart by
/// eye, and a prefix `whois` and `get --digest` accept.
pub(super) fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((algorithm, hex)) if hex.len() > SHORT_DIGEST_HEX => {
            format!("{algorithm}:{}", &hex[..SHORT_DIGEST_HEX])
        }
        _ => digest.to_string(),
    }
}

/// "1 agent", "3 agents".
pub(super) fn counted(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// How long ago a time was, for a person: "3 s ago", "5 min ago", "2 h ago",
/// "4 d ago" ("never" when unset).
pub(super) fn ago(ts: &Option<prost_types::Timestamp>) -> String {
    let Some(ts) = ts else {
        return "never".to_string();
    };
    let micros = from_timestamp(ts);
    let seconds = (now_micros() - micros).max(0) / 1_000_000;
    match seconds {
        s if s < 120 => format!("{s} s ago"),
        s if s < 2 * 3600 => format!("{} min ago", s / 60),
        s if s < 2 * 86_400 => format!("{} h ago", s / 3600),
        s => format!("{} d ago ({})", s / 86_400, format_micros(micros)),
    }
}

/// A version number for text, `-` for none.
pub(super) fn version_text(version: u64) -> String {
    if version == 0 {
        "-".to_string()
    } else {
        format!("v{version}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_digests_keep_the_algorithm_and_twelve_hex_digits() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(short_digest(&digest), "sha256:abababababab");
        assert_eq!(short_digest(""), "");
        assert_eq!(short_digest("sha256:abc"), "sha256:abc");
    }

    #[test]
    fn counted_nouns_agree_with_their_number() {
        assert_eq!(counted(1u32, "agent"), "1 agent");
        assert_eq!(counted(0u32, "agent"), "0 agents");
        assert_eq!(counted(3u32, "agent"), "3 agents");
    }
}
