//! The `{{variable}}` template parser's fuzz harness ([`template`]): the
//! parser against a second tokenizer written for this purpose; parse →
//! render → parse; escaping; validation of a parsed template.

use crate::domain::{placeholders, ChatMessage, Content, Limits, TemplateBody};
use std::collections::BTreeSet;

/// One piece of a template, as [`tokenize`] sees it.
#[derive(Debug)]
enum Token<'a> {
    Literal(&'a str),
    Placeholder(&'a str),
}

/// A second reading of the template syntax documented on [`placeholders`],
/// written independently (by searching for `{{` instead of scanning byte by
/// byte), which also keeps the spans the parser does not return. The error
/// is the byte offset of the malformed `{{`.
fn tokenize(text: &str) -> Result<Vec<Token<'_>>, usize> {
    let mut tokens = Vec::new();
    let (mut literal_start, mut search_from) = (0, 0);
    while let Some(offset) = text[search_from..].find("{{") {
        let open = search_from + offset;
        if text[..open].ends_with('\\') {
            search_from = open + 2;
            continue;
        }
        let inside = text[open + 2..].trim_start_matches(' ');
        let name_len = inside
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        let name = &inside[..name_len];
        let after_name = inside[name_len..].trim_start_matches(' ');
        let starts_well = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
        if !starts_well || !after_name.starts_with("}}") {
            return Err(open);
        }
        let end = text.len() - after_name.len() + 2;
        tokens.push(Token::Literal(&text[literal_start..open]));
        tokens.push(Token::Placeholder(name));
        literal_start = end;
        search_from = end;
    }
    tokens.push(Token::Literal(&text[literal_start..]));
    Ok(tokens)
}

/// The template with every placeholder replaced by `fill(name)`.
fn render(tokens: &[Token<'_>], fill: impl Fn(&str) -> String) -> String {
    tokens
        .iter()
        .map(|token| match token {
            Token::Literal(text) => (*text).to_string(),
            Token::Placeholder(name) => fill(name),
        })
        .collect()
}

fn as_placeholder(name: &str) -> String {
    format!("{{{{{name}}}}}")
}

/// Template target: the bytes (as UTF-8, lossily) are one template text.
pub fn template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let parsed = placeholders("template.text", &text);
    let tokens = tokenize(&text);
    let names = match (parsed, &tokens) {
        (Ok(names), Ok(tokens)) => {
            let expected: BTreeSet<String> = tokens
                .iter()
                .filter_map(|token| match token {
                    Token::Placeholder(name) => Some(name.to_string()),
                    Token::Literal(_) => None,
                })
                .collect();
            assert_eq!(names, expected, "placeholders of {text:?}");
            names
        }
        (Err(error), Err(at)) => {
            assert_eq!(error.field, "template.text");
            assert!(
                error.rule.contains(&format!("at byte {at}:")),
                "{text:?}: {error}, but the malformed placeholder is at byte {at}"
            );
            return check_escaping(&text);
        }
        (parsed, tokens) => {
            panic!("{text:?}: the parser says {parsed:?}, the reference reading {tokens:?}")
        }
    };
    check_escaping(&text);
    let Ok(tokens) = tokens else { return };
    for name in &names {
        let mut bytes = name.bytes();
        assert!(bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_'));
        assert!(bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        assert!(text.contains(name.as_str()));
    }

    // Parse → render → parse: writing every placeholder as `{{name}}` keeps
    // the names, and doing it twice changes nothing more.
    let normalised = render(&tokens, as_placeholder);
    assert_eq!(
        placeholders("template.text", &normalised).as_ref(),
        Ok(&names),
        "{text:?} normalised to {normalised:?}"
    );
    let renormalised = tokenize(&normalised).map(|t| render(&t, as_placeholder));
    assert_eq!(renormalised.as_ref(), Ok(&normalised));

    // Filling in some variables (with text that cannot open a placeholder)
    // leaves exactly the others.
    let filled = |name: &str| name.len().is_multiple_of(2);
    let partly = render(&tokens, |name| {
        if filled(name) {
            format!("<{name}>")
        } else {
            as_placeholder(name)
        }
    });
    let left: BTreeSet<String> = names.iter().filter(|n| !filled(n)).cloned().collect();
    assert_eq!(
        placeholders("template.text", &partly),
        Ok(left),
        "{text:?} partly filled as {partly:?}"
    );

    check_template_validation(&text, &names);
}

/// A backslash before every `{{` makes any text a template without
/// placeholders, never an error.
fn check_escaping(text: &str) {
    let escaped = text.replace("{{", "\\{{");
    assert_eq!(
        placeholders("template.text", &escaped),
        Ok(BTreeSet::new()),
        "{text:?} escaped as {escaped:?}"
    );
}

/// A well-formed template validates exactly when it is within the limits and
/// declares the variables it uses, whether it is a text or a chat message.
fn check_template_validation(text: &str, names: &BTreeSet<String>) {
    let limits = Limits::default();
    let within_limits = !text.is_empty()
        && text.len() <= limits.max_template_bytes
        && names.len() <= limits.max_variables
        && names
            .iter()
            .all(|name| name.len() <= limits.max_variable_name_bytes);
    let declared: Vec<String> = names.iter().rev().cloned().collect();
    let bodies = [
        TemplateBody::Text(text.to_string()),
        TemplateBody::Chat(vec![ChatMessage {
            role: "user".into(),
            content: text.to_string(),
        }]),
    ];
    for body in bodies {
        let validated = Content::validate(body.clone(), &declared, "", &limits);
        assert_eq!(
            validated.is_ok(),
            within_limits,
            "{body:?} declaring {declared:?}: {validated:?}"
        );
        let Ok(content) = validated else { continue };
        assert!(content.variables.iter().eq(names.iter()));
        if names.len() < limits.max_variables {
            let unused = (0..)
                .map(|i| format!("_{i}"))
                .find(|candidate| !names.contains(candidate))
                .unwrap_or_default();
            let mut too_many = declared.clone();
            too_many.push(unused);
            let error = Content::validate(body, &too_many, "", &limits)
                .expect_err("a declared variable the template never uses");
            assert!(error.rule.contains("never uses"), "{error}");
        }
    }
}

/// Seed inputs of [`template`]: one template text each.
pub(super) fn seeds() -> Vec<Vec<u8>> {
    [
        "Hello {{name}}, welcome to {{ place }}.",
        "literal \\{{x}} and {{y}} and {{_z1}}",
        "{{a}}{{b}}{{ c }}",
        "{{",
        "x {{name}",
        "{{1x}}",
        "\\{{{{a}}}",
        "é {{ ünï }} 😀",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}
