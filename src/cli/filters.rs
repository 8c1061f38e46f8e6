//! What the CLI accepts for times (`--at`, `--since`, `--until`) and for
//! `audit --action-name`, checked before anything is sent: a typo is a usage
//! error that lists what is accepted, never a silently empty answer.

use crate::domain::Micros;

/// Every action the audit ledger records (`AuditEntry.action`).
pub(super) const AUDIT_ACTIONS: &[&str] = &[
    "publish",
    "promote",
    "rollback",
    "remove",
    "rotate_key",
    "prune",
    "enable_encryption",
    "token_create",
    "token_revoke",
    "attest",
    "attester_add",
    "attester_remove",
    "policy_set",
    "policy_delete",
    "freeze",
    "unfreeze",
    "request",
    "approve",
    "reject",
    "void",
    "expired",
];

/// `--action-name`: one of [`AUDIT_ACTIONS`].
pub(super) fn audit_action(raw: &str) -> Result<String, String> {
    if AUDIT_ACTIONS.contains(&raw) {
        Ok(raw.to_string())
    } else {
        Err(format!(
            "{raw:?} is not an audit action; use one of: {}",
            AUDIT_ACTIONS.join(", ")
        ))
    }
}

/// A point in time: an RFC 3339 time (`2026-12-02T14:05:00Z`), a date
/// (`2026-12-02`, midnight UTC), or a duration before `now` (`30m`, `1h`,
/// `7d`).
pub(super) fn parse_when(raw: &str, now: Micros) -> Result<Micros, String> {
    let raw = raw.trim();
    if let Ok(micros) = crate::time::parse_rfc3339(raw) {
        return Ok(micros);
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        if let Some(midnight) = date.and_hms_opt(0, 0, 0) {
            return Ok(midnight.and_utc().timestamp_micros());
        }
    }
    // A bare number is not a duration here: "2026" is more likely a
    // truncated date than 2026 seconds ago.
    if raw.ends_with(|c: char| c.is_ascii_alphabetic()) {
        if let Ok(ago) = crate::time::parse_duration(raw) {
            let ago = i64::try_from(ago.as_micros()).unwrap_or(i64::MAX);
            return Ok(now.saturating_sub(ago));
        }
    }
    Err(format!(
        "{raw:?} is not a time; write an RFC 3339 time (2026-12-02T14:05:00Z), \
         a date (2026-12-02, midnight UTC) or a duration before now (30m, 1h, 7d)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_dates_or_durations_ago() {
        let now = crate::time::parse_rfc3339("2026-12-02T10:00:00Z").unwrap();
        assert_eq!(
            parse_when("2026-12-02T09:00:00Z", now),
            parse_when("1h", now)
        );
        assert_eq!(
            parse_when("2026-12-02", now),
            crate::time::parse_rfc3339("2026-12-02T00:00:00Z")
        );
        assert_eq!(parse_when("30m", now), Ok(now - 30 * 60 * 1_000_000));
        for bad in ["yesterday", "2026", "", "2026-13-02"] {
            let error = parse_when(bad, now).unwrap_err();
            assert!(
                error.contains("RFC 3339") && error.contains("30m"),
                "{error}"
            );
        }
    }

    #[test]
    fn audit_actions_are_checked() {
        assert_eq!(audit_action("publish").as_deref(), Ok("publish"));
        let error = audit_action("publsh").unwrap_err();
        assert!(error.contains("publish, promote, rollback"), "{error}");
    }
}
