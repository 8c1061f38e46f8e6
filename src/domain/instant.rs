//! A point in time a client names: seconds and nanoseconds since the Unix
//! epoch, as in `google.protobuf.Timestamp`, held to that type's own rules.

use super::{Micros, ValidationError};

/// `0001-01-01T00:00:00Z`, the earliest time RFC 3339 can write.
pub const EARLIEST_SECONDS: i64 = -62_135_596_800;
/// `9999-12-31T23:59:59Z`, the latest.
pub const LATEST_SECONDS: i64 = 253_402_300_799;

/// The time `seconds` + `nanos` in the registry's unit, or why it is not a
/// time: `nanos` must be 0 to 999,999,999 (a negative time counts its
/// seconds down and its nanoseconds up), and the time must lie in the years
/// 1 to 9999. Sub-microsecond digits are dropped.
pub fn instant_micros(field: &str, seconds: i64, nanos: i32) -> Result<Micros, ValidationError> {
    if !(0..1_000_000_000).contains(&nanos) {
        return Err(ValidationError::new(
            format!("{field}.nanos"),
            format!("is {nanos}; must be 0 to 999999999"),
        ));
    }
    if !(EARLIEST_SECONDS..=LATEST_SECONDS).contains(&seconds) {
        return Err(ValidationError::new(
            format!("{field}.seconds"),
            format!(
                "is {seconds}, outside the years 1 to 9999 \
                 ({EARLIEST_SECONDS} to {LATEST_SECONDS}, 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z)"
            ),
        ));
    }
    // In range: at most about 2.5e17 microseconds, far from overflow.
    Ok(seconds * 1_000_000 + i64::from(nanos) / 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_within_the_years_1_to_9999_with_proper_nanos_are_accepted() {
        assert_eq!(instant_micros("t", 0, 0), Ok(0));
        assert_eq!(instant_micros("t", 1, 999_999_999), Ok(1_999_999));
        assert_eq!(instant_micros("t", -1, 500_000_000), Ok(-500_000));
        assert_eq!(
            instant_micros("t", EARLIEST_SECONDS, 0),
            Ok(EARLIEST_SECONDS * 1_000_000)
        );
        assert!(instant_micros("t", LATEST_SECONDS, 999_999_999).is_ok());
    }

    #[test]
    fn out_of_range_parts_are_refused_naming_the_field() {
        for nanos in [-1, 1_000_000_000, i32::MIN, i32::MAX] {
            let error = instant_micros("since", 0, nanos).unwrap_err();
            assert_eq!(error.field, "since.nanos", "{error}");
        }
        // The year 0 and the year 10000.
        for seconds in [EARLIEST_SECONDS - 1, LATEST_SECONDS + 1, i64::MIN, i64::MAX] {
            let error = instant_micros("time", seconds, 0).unwrap_err();
            assert_eq!(error.field, "time.seconds", "{error}");
        }
    }
}
