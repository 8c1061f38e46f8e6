//! The `{{variable}}` template syntax.

use super::ValidationError;
use std::collections::BTreeSet;

/// The placeholder names a template uses, in byte order.
///
/// Syntax: `{{name}}` with `name` matching `[A-Za-z_][A-Za-z0-9_]*`, spaces
/// allowed inside the braces. A backslash right before `{{` makes it literal.
/// Any other `{{` that does not open a well-formed placeholder is an error
/// naming its byte offset.
pub fn placeholders(field: &str, text: &str) -> Result<BTreeSet<String>, ValidationError> {
    let bytes = text.as_bytes();
    let mut found = BTreeSet::new();
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] != b'{' || bytes[i + 1] != b'{' {
            i += 1;
            continue;
        }
        if i > 0 && bytes[i - 1] == b'\\' {
            i += 2;
            continue;
        }
        let start = i;
        let mut j = i + 2;
        while j < bytes.len() && bytes[j] == b' ' {
            j += 1;
        }
        let name_start = j;
        while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
            j += 1;
        }
        let name = &text[name_start..j];
        while j < bytes.len() && bytes[j] == b' ' {
            j += 1;
        }
        let closed = j + 1 < bytes.len() && bytes[j] == b'}' && bytes[j + 1] == b'}';
        let name_ok = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
        if !closed || !name_ok {
            return Err(ValidationError::new(
                field,
                format!(
                    "malformed placeholder at byte {start}: expected {{{{name}}}} with name \
                     matching [A-Za-z_][A-Za-z0-9_]* (write \\{{{{ for a literal '{{{{')"
                ),
            ));
        }
        found.insert(name.to_string());
        i = j + 2;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str) -> Vec<String> {
        placeholders("t", text).unwrap().into_iter().collect()
    }

    #[test]
    fn finds_placeholders() {
        assert_eq!(
            names("Hi {{name}}, {{ topic }} {{name}}"),
            ["name", "topic"]
        );
        assert_eq!(names("no vars { } }} {"), Vec::<String>::new());
        assert_eq!(names("{{_a1}}"), ["_a1"]);
    }

    #[test]
    fn escaped_braces_are_literal() {
        assert_eq!(names(r"literal \{{x}} and {{y}}"), ["y"]);
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["{{", "{{}}", "{{1x}}", "{{a b}}", "x {{name}", "{{na-me}}"] {
            let err = placeholders("template.text", bad).unwrap_err();
            assert_eq!(err.field, "template.text");
            assert!(err.rule.contains("malformed placeholder"), "{bad}: {err}");
        }
    }
}
