//! The registry's clock: microseconds since the Unix epoch, UTC, and their
//! RFC 3339 form.

use crate::domain::Micros;
use chrono::{DateTime, SecondsFormat, Utc};

pub fn now_micros() -> Micros {
    Utc::now().timestamp_micros()
}

/// RFC 3339 in UTC with microseconds: `2026-11-22T20:33:55.123456Z`.
pub fn format_micros(micros: Micros) -> String {
    match DateTime::<Utc>::from_timestamp_micros(micros) {
        Some(time) => time.to_rfc3339_opts(SecondsFormat::Micros, true),
        None => format!("{micros}µs"),
    }
}

/// Parses an RFC 3339 time with any offset.
pub fn parse_rfc3339(raw: &str) -> Result<Micros, String> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc).timestamp_micros())
        .map_err(|e| {
            format!("{raw:?} is not an RFC 3339 time ({e}); write e.g. 2026-11-22T14:05:00Z")
        })
}

pub fn to_timestamp(micros: Micros) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

pub fn from_timestamp(ts: &prost_types::Timestamp) -> Micros {
    ts.seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(ts.nanos) / 1000)
}
