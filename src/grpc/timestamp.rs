//! The registry's clock unit (microseconds since the Unix epoch, UTC) as a
//! protobuf `Timestamp` and back. Here, not in `time`, because only `grpc/`
//! knows protobuf.

use crate::domain::Micros;

pub fn to_timestamp(micros: Micros) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// A timestamp from an answer, saturating; requests are held to the
/// domain's rule instead (`convert::instant`).
pub fn from_timestamp(ts: &prost_types::Timestamp) -> Micros {
    ts.seconds
        .saturating_mul(1_000_000)
        .saturating_add(i64::from(ts.nanos) / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        let micros = crate::time::parse_rfc3339("2026-11-22T14:05:00.25+01:00").unwrap();
        assert_eq!(from_timestamp(&to_timestamp(micros)), micros);
        assert_eq!(from_timestamp(&to_timestamp(-1)), -1);
    }
}
