//! The registry's clock: microseconds since the Unix epoch, UTC, and their
//! RFC 3339 form. (Their protobuf form is `grpc::timestamp`.)

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

/// Parses a duration such as `250ms`, `30s`, `5m`, `24h` or `7d`.
pub fn parse_duration(raw: &str) -> Result<std::time::Duration, String> {
    let raw = raw.trim();
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{raw:?} is not a duration; write e.g. 500ms, 30s, 5m, 24h or 7d"))?;
    let millis = match unit {
        "ms" => number,
        "s" | "" => number.saturating_mul(1000),
        "m" => number.saturating_mul(60_000),
        "h" => number.saturating_mul(3_600_000),
        "d" => number.saturating_mul(86_400_000),
        _ => {
            return Err(format!(
                "{raw:?} has an unknown unit {unit:?}; use ms, s, m, h or d"
            ))
        }
    };
    Ok(std::time::Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap().as_millis(), 250);
        assert_eq!(parse_duration("30s").unwrap().as_secs(), 30);
        assert_eq!(parse_duration("24h").unwrap().as_secs(), 86_400);
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5w").is_err());
    }

    #[test]
    fn rfc3339_round_trip() {
        let micros = parse_rfc3339("2026-11-22T14:05:00.25+01:00").unwrap();
        assert_eq!(format_micros(micros), "2026-11-22T13:05:00.250000Z");
    }
}
