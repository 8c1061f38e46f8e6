//! The model config: a JSON object, checked and written in its normal form.
//!
//! The normal form is part of the canonical form a digest covers, so it is
//! public contract (`Version` in `proto/promptreg/v1/registry.proto`) and
//! must not change for content that was accepted before: it is serde_json's
//! compact writing of the parsed object (keys sorted, numbers as serde_json
//! writes them). What this module adds is refusing what that writing would
//! silently change: a number it cannot keep exactly, and a key that appears
//! twice (serde_json keeps the last one).

use super::{Limits, ValidationError};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use std::fmt;

const FIELD: &str = "model_config_json";

/// Parses the model config and re-serialises it with sorted keys and no
/// whitespace, so equal configs give equal digests. Refuses a config whose
/// normal form would not say what was sent.
pub(super) fn normalise(raw: &str, limits: &Limits) -> Result<String, ValidationError> {
    if raw.trim().is_empty() {
        return Ok("{}".to_string());
    }
    if raw.len() > limits.max_model_config_bytes {
        return Err(ValidationError::new(
            FIELD,
            format!(
                "is {} bytes; the limit is {} bytes",
                raw.len(),
                limits.max_model_config_bytes
            ),
        ));
    }
    // serde_json's default map is a BTreeMap: serialising sorts the keys.
    let value: serde_json::Value = serde_json::from_str(raw)
        .map_err(|e| ValidationError::new(FIELD, format!("is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ValidationError::new(FIELD, "must be a JSON object"));
    }
    check_nothing_is_lost(raw)?;
    let normalised = serde_json::to_string(&value)
        .map_err(|e| ValidationError::new(FIELD, format!("cannot be encoded: {e}")))?;
    // The normalised form can be longer than what was sent (`1e5` is
    // written `100000.0`). The limit holds for it too, so that the config
    // the server stores and serves can always be published again.
    if normalised.len() > limits.max_model_config_bytes {
        return Err(ValidationError::new(
            FIELD,
            format!(
                "is {} bytes once normalised (numbers written out, keys sorted); the limit is {} bytes",
                normalised.len(),
                limits.max_model_config_bytes
            ),
        ));
    }
    Ok(normalised)
}

/// Refuses a key that appears twice in one object, and a number whose
/// normal form is another number (more digits than a double holds, or an
/// integer beyond 64 bits). `raw` is valid JSON.
fn check_nothing_is_lost(raw: &str) -> Result<(), ValidationError> {
    let mut found = Found::default();
    let mut deserializer = serde_json::Deserializer::from_str(raw);
    let walked = Walker {
        path: String::new(),
        found: &mut found,
    }
    .deserialize(&mut deserializer);
    if let Some((key, path)) = found.duplicate {
        return Err(ValidationError::new(
            FIELD,
            format!(
                "key {key:?} appears twice in {}; each key of an object may appear once",
                describe(&path)
            ),
        ));
    }
    walked.map_err(|e| ValidationError::new(FIELD, format!("is not valid JSON: {e}")))?;
    // The walk meets numbers in document order, as the scan of the text does.
    for ((path, number), literal) in found.numbers.iter().zip(number_literals(raw)) {
        let written = number.to_string();
        if is_lost(literal, &written) {
            return Err(ValidationError::new(
                FIELD,
                format!(
                    "the number {literal} at {} cannot be kept exactly (it would be stored as \
                     {written}): integers are kept from -2^63 to 2^64-1, other numbers as \
                     IEEE-754 doubles (at most 17 significant digits); send it as a string",
                    describe(path)
                ),
            ));
        }
    }
    Ok(())
}

/// Whether writing `literal` as `written` loses what was sent. Any spelling
/// of a double with at most 17 significant digits (the most any double
/// needs: C's `%.17g`, Python's `repr`, JavaScript's `String(x)`) reads back
/// as the same double from `written`, so it is kept even when the digits
/// differ (`0.30000000000000001` is the double `0.3`). Lost are an integer
/// that becomes a float (beyond 64 bits), digits beyond what a double
/// holds, and a number that underflows to zero.
fn is_lost(literal: &str, written: &str) -> bool {
    let sent = decimal_value(literal);
    let kept = decimal_value(written);
    let float = |text: &str| text.contains(['.', 'e', 'E']);
    if !float(literal) {
        // An integer stays one (`-0` is the float `-0.0`, and zero).
        return float(written) && sent.is_some();
    }
    let digits = sent.as_ref().map_or(0, |(_, digits, _)| digits.len());
    sent != kept && (digits > 17 || kept.is_none())
}

fn describe(path: &str) -> String {
    if path.is_empty() {
        "the top-level object".to_string()
    } else {
        path.to_string()
    }
}

#[derive(Default)]
struct Found {
    /// Every number with its path (`.a.b[2]`), in document order.
    numbers: Vec<(String, serde_json::Number)>,
    /// The first key seen twice, and the path of its object.
    duplicate: Option<(String, String)>,
}

/// Walks a JSON document, noting its numbers and stopping at the first
/// duplicate key.
struct Walker<'a> {
    path: String,
    found: &'a mut Found,
}

impl<'de> DeserializeSeed<'de> for Walker<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walker<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, n: u64) -> Result<(), E> {
        self.found.numbers.push((self.path, n.into()));
        Ok(())
    }

    fn visit_i64<E>(self, n: i64) -> Result<(), E> {
        self.found.numbers.push((self.path, n.into()));
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<(), E> {
        // serde_json never produces a non-finite number from text.
        let number =
            serde_json::Number::from_f64(n).ok_or_else(|| E::custom("a number is not finite"))?;
        self.found.numbers.push((self.path, number));
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Walker { path, found } = self;
        let mut i = 0;
        while seq
            .next_element_seed(Walker {
                path: format!("{path}[{i}]"),
                found: &mut *found,
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Walker { path, found } = self;
        let mut seen = std::collections::BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                found.duplicate = Some((key, path));
                return Err(de::Error::custom("duplicate key"));
            }
            map.next_value_seed(Walker {
                path: format!("{path}.{key}"),
                found: &mut *found,
            })?;
        }
        Ok(())
    }
}

/// The number literals of a valid JSON text, in document order.
fn number_literals(raw: &str) -> Vec<&str> {
    let bytes = raw.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip the string, escapes included.
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            // Outside strings only numbers start with these (`true` and
            // `false` hold an `e`, but never start with one).
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                out.push(&raw[start..i]);
            }
            _ => i += 1,
        }
    }
    out
}

/// The exact decimal value of a JSON number literal: sign, significant
/// digits without leading or trailing zeros, and the power of ten of the
/// last digit. Every zero (`0`, `-0.0`, `0e7`) is the same value.
fn decimal_value(literal: &str) -> Option<(bool, String, i64)> {
    let (negative, rest) = match literal.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, literal),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, "0"),
    };
    let (exponent_negative, exponent_digits) = match exponent.as_bytes().first() {
        Some(b'-') => (true, &exponent[1..]),
        Some(b'+') => (false, &exponent[1..]),
        _ => (false, exponent),
    };
    // Saturating: a huge exponent only comes with a zero mantissa (anything
    // else is out of range for serde_json), and zero ignores it.
    let mut exponent = exponent_digits.bytes().fold(0i64, |n, d| {
        n.saturating_mul(10).saturating_add(i64::from(d - b'0'))
    });
    if exponent_negative {
        exponent = -exponent;
    }
    let (integer, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits: String = format!("{integer}{fraction}")
        .trim_start_matches('0')
        .to_string();
    let fraction_len = i64::try_from(fraction.len()).unwrap_or(i64::MAX);
    exponent = exponent.saturating_sub(fraction_len);
    while digits.ends_with('0') {
        digits.pop();
        exponent = exponent.saturating_add(1);
    }
    if digits.is_empty() {
        return None;
    }
    Some((negative, digits, exponent))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Result<String, ValidationError> {
        normalise(raw, &Limits::default())
    }

    #[test]
    fn numbers_that_are_kept_keep_their_old_normal_form() {
        // These normal forms are covered by existing digests: they must not
        // change.
        for (raw, normal) in [
            (r#"{"t": 0.2}"#, r#"{"t":0.2}"#),
            (r#"{"t": 1e5}"#, r#"{"t":100000.0}"#),
            (r#"{"t": 1.50}"#, r#"{"t":1.5}"#),
            (r#"{"t": 2E-7}"#, r#"{"t":2e-7}"#),
            (r#"{"t": 1e16}"#, r#"{"t":1e+16}"#),
            (r#"{"t": -0}"#, r#"{"t":-0.0}"#),
            (r#"{"t": -0.0}"#, r#"{"t":-0.0}"#),
            (r#"{"t": 0e999999999999999999999}"#, r#"{"t":0.0}"#),
            (
                r#"{"n": 18446744073709551615}"#,
                r#"{"n":18446744073709551615}"#,
            ),
            (
                r#"{"n": -9223372036854775808}"#,
                r#"{"n":-9223372036854775808}"#,
            ),
            (r#"{"n": 123456789012345}"#, r#"{"n":123456789012345}"#),
            // Spellings of a double in up to 17 digits: the same double.
            (r#"{"x": 0.30000000000000001}"#, r#"{"x":0.3}"#),
            (r#"{"x": 1e23}"#, r#"{"x":1e+23}"#),
            (
                r#"{"x": -1.80450625738417e-87}"#,
                r#"{"x":-1.80450625738417e-87}"#,
            ),
            (
                r#"{"x": -1.8045062573841701e-87}"#,
                r#"{"x":-1.8045062573841701e-87}"#,
            ),
            (r#"{"x": 5e-324}"#, r#"{"x":5e-324}"#),
            (r#"{"x": 0.123456789012345}"#, r#"{"x":0.123456789012345}"#),
            (
                r#"{"x": 1.2345678901234568e29}"#,
                r#"{"x":1.2345678901234568e+29}"#,
            ),
            (
                r#"{"s": "1e5 \"2\" 3", "a": [1, {"b": true}]}"#,
                r#"{"a":[1,{"b":true}],"s":"1e5 \"2\" 3"}"#,
            ),
        ] {
            assert_eq!(norm(raw).as_deref(), Ok(normal), "{raw}");
            // Exactly what serde_json alone wrote before these checks.
            let plain: serde_json::Value = serde_json::from_str(raw).unwrap();
            assert_eq!(serde_json::to_string(&plain).unwrap(), normal);
        }
    }

    #[test]
    fn the_documented_normal_form() {
        // The examples of MODEL CONFIG NORMAL FORM in registry.proto.
        for (raw, normal) in [
            (
                "{\"s\": \"\\u00e9 / \\n \\u001f \\\" \\\\\"}",
                "{\"s\":\"é / \\n \\u001f \\\" \\\\\"}",
            ),
            (
                r#"{"b": 1, "a": {"d": [3, 1], "c": null}}"#,
                r#"{"a":{"c":null,"d":[3,1]},"b":1}"#,
            ),
            (r#"{"t": 0.250}"#, r#"{"t":0.25}"#),
            (r#"{"t": 1e-5}"#, r#"{"t":0.00001}"#),
            (r#"{"t": 1e-6}"#, r#"{"t":1e-6}"#),
            (r#"{"t": 1e16}"#, r#"{"t":1e+16}"#),
            (r#"{"t": 0.0001}"#, r#"{"t":0.0001}"#),
            (
                r#"{"t": 9999999999999998.0}"#,
                r#"{"t":9999999999999998.0}"#,
            ),
        ] {
            assert_eq!(norm(raw).as_deref(), Ok(normal), "{raw}");
        }
    }

    #[test]
    fn numbers_that_would_change_are_refused_naming_them() {
        for (raw, literal, at) in [
            (
                r#"{"n": 123456789012345678901234567890}"#,
                "123456789012345678901234567890",
                ".n",
            ),
            (
                r#"{"n": 18446744073709551616}"#,
                "18446744073709551616",
                ".n",
            ),
            (
                r#"{"n": -9223372036854775809}"#,
                "-9223372036854775809",
                ".n",
            ),
            (
                r#"{"a": {"b": [1, 0.300000000000000001]}}"#,
                "0.300000000000000001",
                ".a.b[1]",
            ),
            (
                r#"{"x": 3.14159265358979323846}"#,
                "3.14159265358979323846",
                ".x",
            ),
            (
                r#"{"x": 100000000000000000000000}"#,
                "100000000000000000000000",
                ".x",
            ),
            (r#"{"x": 1e-400}"#, "1e-400", ".x"),
        ] {
            let error = norm(raw).unwrap_err();
            assert_eq!(error.field, "model_config_json");
            assert!(
                error.rule.contains(&format!(
                    "the number {literal} at {at} cannot be kept exactly"
                )),
                "{raw}: {error:?}"
            );
        }
    }

    #[test]
    fn duplicate_keys_are_refused_naming_the_key() {
        let error = norm(r#"{"model": "a", "model": "b"}"#).unwrap_err();
        assert_eq!(error.field, "model_config_json");
        assert!(
            error
                .rule
                .contains(r#"key "model" appears twice in the top-level object"#),
            "{error:?}"
        );
        let error = norm(r#"{"a": [{"k": 1, "\u006b": 2}]}"#).unwrap_err();
        assert!(
            error.rule.contains(r#"key "k" appears twice in .a[0]"#),
            "{error:?}"
        );
        // The same key in different objects is fine.
        assert_eq!(
            norm(r#"{"a": {"k": 1}, "b": {"k": 1}}"#).as_deref(),
            Ok(r#"{"a":{"k":1},"b":{"k":1}}"#)
        );
    }
}
