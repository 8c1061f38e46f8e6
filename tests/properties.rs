//! Property tests over the public library API: the template parser, content
//! validation, the canonical digest form, names, and time parsing.
//!
//! The case count defaults to 256 per property so `cargo test` stays quick;
//! `PROPTEST_CASES=100000 cargo test --release --test properties` (see
//! `scripts/fuzz.sh`) runs the same properties much harder.

use promptreg::domain::{
    placeholders, ChatMessage, Content, ContentDigest, LabelName, Limits, PromptName, TemplateBody,
};
use promptreg::time::{format_micros, parse_duration, parse_rfc3339};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use serde_json::Value;
use std::collections::BTreeSet;

/// 256 cases unless `PROPTEST_CASES` says otherwise. Failures are printed
/// (with the minimal input) rather than persisted to a regressions file.
fn config() -> Config {
    let mut config = Config {
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 256;
    }
    config
}

// --- generators -----------------------------------------------------------

/// Arbitrary text biased towards the characters the parsers care about.
fn tricky_string() -> impl Strategy<Value = String> {
    let pieces = prop_oneof![
        Just("{{".to_string()),
        Just("}}".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just("\\".to_string()),
        Just(" ".to_string()),
        Just("/".to_string()),
        Just("..".to_string()),
        Just(".".to_string()),
        Just("-".to_string()),
        Just("_".to_string()),
        Just("sha256:".to_string()),
        Just("é".to_string()),
        Just("\u{0}".to_string()),
        Just("\u{202e}".to_string()),
        Just("😀".to_string()),
        "[a-zA-Z0-9]{1,4}",
        any::<char>().prop_map(String::from),
    ];
    prop_oneof![
        3 => prop::collection::vec(pieces, 0..24).prop_map(|v| v.concat()),
        1 => any::<String>(),
    ]
}

/// A placeholder name: `[A-Za-z_][A-Za-z0-9_]*`.
fn var_name() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_]{0,10}"
}

/// One piece of a well-formed template.
#[derive(Debug, Clone)]
enum Piece {
    /// Text with no `{` and no `\`, so it can neither open nor escape.
    Literal(String),
    /// `{{name}}` with optional spaces inside the braces.
    Placeholder {
        name: String,
        left: usize,
        right: usize,
    },
    /// `\{{name}}`: literal braces, declares nothing.
    Escaped(String),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        "[^{\\\\]{0,12}".prop_map(Piece::Literal),
        (var_name(), 0..3usize, 0..3usize).prop_map(|(name, left, right)| Piece::Placeholder {
            name,
            left,
            right
        }),
        var_name().prop_map(Piece::Escaped),
    ]
}

/// A well-formed template and the placeholder names it uses.
fn template() -> impl Strategy<Value = (String, BTreeSet<String>)> {
    prop::collection::vec(piece(), 1..12).prop_map(|pieces| {
        let mut text = String::new();
        let mut names = BTreeSet::new();
        for piece in pieces {
            match piece {
                Piece::Literal(s) => text.push_str(&s),
                Piece::Placeholder { name, left, right } => {
                    text.push_str("{{");
                    text.push_str(&" ".repeat(left));
                    text.push_str(&name);
                    text.push_str(&" ".repeat(right));
                    text.push_str("}}");
                    names.insert(name);
                }
                Piece::Escaped(name) => {
                    text.push_str("\\{{");
                    text.push_str(&name);
                    text.push_str("}}");
                }
            }
        }
        if text.is_empty() {
            text.push('x');
        }
        (text, names)
    })
}

/// A JSON value with awkward numbers and strings, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        prop_oneof![
            Just(0.1f64),
            Just(0.2),
            Just(1e-300),
            Just(5e-324),
            Just(1.7976931348623157e308),
            Just(-0.0),
            Just(123_456_789.123_456_79),
        ]
        .prop_map(Value::from),
        tricky_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(tricky_string(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON object in some spelling: compact or pretty.
fn model_config() -> impl Strategy<Value = (Value, String)> {
    (
        prop::collection::btree_map(tricky_string(), json_value(), 0..6),
        any::<bool>(),
    )
        .prop_map(|(map, pretty)| {
            let value = Value::Object(map.into_iter().collect());
            let text = if pretty {
                serde_json::to_string_pretty(&value).unwrap()
            } else {
                serde_json::to_string(&value).unwrap()
            };
            (value, text)
        })
}

fn chat_message() -> impl Strategy<Value = ChatMessage> {
    ("[a-z][a-z0-9_]{0,8}", tricky_string())
        .prop_map(|(role, content)| ChatMessage { role, content })
}

/// Any template body, valid or not.
fn any_body() -> impl Strategy<Value = TemplateBody> {
    prop_oneof![
        tricky_string().prop_map(TemplateBody::Text),
        prop::collection::vec(
            prop_oneof![
                chat_message(),
                (tricky_string(), tricky_string())
                    .prop_map(|(role, content)| ChatMessage { role, content }),
            ],
            0..5
        )
        .prop_map(TemplateBody::Chat),
    ]
}

/// Content built directly (not validated): every field free.
fn any_content() -> impl Strategy<Value = Content> {
    (
        any_body(),
        prop::collection::vec(tricky_string(), 0..4),
        tricky_string(),
    )
        .prop_map(|(template, variables, model_config_json)| Content {
            template,
            variables,
            model_config_json,
        })
}

// --- reference rules, written from the documentation ------------------------

/// README: segments matching `[a-z0-9][a-z0-9._-]*` joined by `/`, at most
/// `max` bytes, no empty segment, no `..`.
fn is_documented_prompt_name(raw: &str, max: usize) -> bool {
    !raw.is_empty()
        && raw.len() <= max
        && !raw.contains("..")
        && raw.split('/').all(|segment| {
            let mut chars = segment.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && chars.all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
                })
        })
}

/// README: labels match `[a-z0-9][a-z0-9_-]{0,62}`.
fn is_documented_label(raw: &str) -> bool {
    let mut chars = raw.chars();
    raw.len() <= 63
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
}

fn validate_text(
    text: &str,
    vars: &[String],
    config: &str,
) -> Result<Content, promptreg::domain::ValidationError> {
    Content::validate(
        TemplateBody::Text(text.to_string()),
        vars,
        config,
        &Limits::default(),
    )
}

/// Changes exactly one field of a content (a different value guaranteed).
fn mutate(content: &Content, which: u8, extra: &str) -> Content {
    let mut out = content.clone();
    let bump = |s: &str| format!("{s}{extra}");
    match which % 7 {
        0 => {
            out.template = match &content.template {
                TemplateBody::Text(t) => TemplateBody::Text(bump(t)),
                TemplateBody::Chat(m) => {
                    let mut m = m.clone();
                    m.push(ChatMessage {
                        role: "user".into(),
                        content: extra.into(),
                    });
                    TemplateBody::Chat(m)
                }
            }
        }
        // Text and chat with the "same" strings.
        1 => {
            out.template = match &content.template {
                TemplateBody::Text(t) => TemplateBody::Chat(vec![ChatMessage {
                    role: "text".into(),
                    content: t.clone(),
                }]),
                TemplateBody::Chat(m) => TemplateBody::Text(
                    m.iter()
                        .map(|m| format!("{}{}", m.role, m.content))
                        .collect(),
                ),
            }
        }
        2 => out.variables.push(extra.to_string()),
        3 => match out.variables.first_mut() {
            Some(first) => *first = bump(first),
            None => out.variables.push(String::new()),
        },
        4 => out.model_config_json = bump(&content.model_config_json),
        // Move bytes between two adjacent fields: only the length prefixes
        // tell these apart.
        5 => match &mut out.template {
            TemplateBody::Text(t) => {
                out.model_config_json = format!("{t}{}", content.model_config_json);
                t.clear();
            }
            TemplateBody::Chat(m) => match m.first_mut() {
                Some(first) => {
                    first.content = format!("{}{}", first.role, first.content);
                    first.role.clear();
                }
                None => m.push(ChatMessage {
                    role: String::new(),
                    content: String::new(),
                }),
            },
        },
        _ => match out.variables.pop() {
            Some(last) => out.model_config_json = format!("{last}{}", content.model_config_json),
            None => out.variables.push(String::new()),
        },
    }
    if out == *content {
        // The bump was empty and produced the same value: change for sure.
        out.model_config_json.push('!');
    }
    out
}

// --- properties -----------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn placeholders_never_panics_and_names_are_well_formed(text in tricky_string()) {
        if let Ok(names) = placeholders("template.text", &text) {
            for name in names {
                let mut bytes = name.bytes();
                prop_assert!(bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_'), "{name:?}");
                prop_assert!(bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_'), "{name:?}");
                prop_assert!(text.contains(&name));
            }
        }
    }

    #[test]
    fn placeholders_finds_exactly_the_declared_names((text, names) in template()) {
        let found = placeholders("template.text", &text);
        prop_assert_eq!(found, Ok(names), "template {:?}", text);
    }

    #[test]
    fn validate_never_panics(
        body in any_body(),
        vars in prop::collection::vec(prop_oneof![var_name(), tricky_string()], 0..5),
        config in prop_oneof![
            tricky_string(),
            model_config().prop_map(|(_, text)| text),
            (1usize..2000).prop_map(|n| "[".repeat(n)),
            (1usize..2000).prop_map(|n| "{\"a\":".repeat(n)),
        ],
    ) {
        if let Ok(content) = Content::validate(body, &vars, &config, &Limits::default()) {
            // What validation accepts is sorted, unique, and a JSON object.
            prop_assert!(content.variables.windows(2).all(|w| w[0] < w[1]));
            let value: Value = serde_json::from_str(&content.model_config_json).unwrap();
            prop_assert!(value.is_object());
        }
    }

    #[test]
    fn validating_a_validated_content_changes_nothing(
        (text, names) in template(),
        (value, config_text) in model_config(),
    ) {
        let declared: Vec<String> = names.iter().rev().cloned().collect();
        let first = match validate_text(&text, &declared, &config_text) {
            Ok(content) => content,
            Err(e) => {
                // Only the size limit may refuse a well-formed config.
                prop_assert!(e.rule.contains("limit"), "{e}");
                return Ok(());
            }
        };
        prop_assert_eq!(&first.variables, &names.iter().cloned().collect::<Vec<_>>());
        let again = validate_text(&text, &first.variables, &first.model_config_json).unwrap();
        prop_assert_eq!(
            &again.model_config_json, &first.model_config_json,
            "re-validating the server's own normalised config changed it"
        );
        prop_assert_eq!(again.digest(), first.digest());
        // And the other spelling of the same object gives the same digest.
        let compact = validate_text(&text, &declared, &serde_json::to_string(&value).unwrap()).unwrap();
        prop_assert_eq!(compact.digest(), first.digest());
    }

    /// Normalisation may change spelling, never meaning: the config the
    /// server stores (and signs, and hands to agents) is the JSON value the
    /// publisher sent, every number the same f64.
    #[test]
    fn normalising_a_model_config_keeps_its_value((value, config_text) in model_config()) {
        let Ok(content) = validate_text("x", &[], &config_text) else {
            return Ok(());
        };
        // Keys sorted, no whitespace, every number in its shortest
        // round-trip spelling: exactly serde_json's compact form of the
        // value that was sent.
        let expected = serde_json::to_string(&value).unwrap();
        prop_assert_eq!(
            &content.model_config_json, &expected,
            "the normalised config is not the JSON that was sent: {}", config_text
        );
    }

    #[test]
    fn contents_differing_in_one_field_have_different_canonical_forms(
        content in any_content(),
        which in any::<u8>(),
        extra in tricky_string(),
    ) {
        let other = mutate(&content, which, &extra);
        prop_assert_ne!(&other, &content);
        prop_assert_ne!(
            content.canonical_bytes(), other.canonical_bytes(),
            "{:?} and {:?} share a canonical form", content, other
        );
        prop_assert_ne!(content.digest(), other.digest());
    }

    #[test]
    fn canonical_form_is_injective_on_any_two_contents(a in any_content(), b in any_content()) {
        prop_assert_eq!(a == b, a.canonical_bytes() == b.canonical_bytes());
    }

    #[test]
    fn canonical_form_starts_with_its_tag_and_is_deterministic(content in any_content()) {
        let bytes = content.canonical_bytes();
        prop_assert!(bytes.starts_with(b"promptreg.content.v1\n"));
        prop_assert_eq!(&bytes, &content.clone().canonical_bytes());
        prop_assert_eq!(content.digest(), content.digest());
    }

    #[test]
    fn digest_round_trips_through_its_text_form(bytes in any::<[u8; 32]>()) {
        let digest = ContentDigest(bytes);
        let text = digest.to_string();
        prop_assert!(text.starts_with("sha256:") && text.len() == 71);
        prop_assert!(text[7..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        prop_assert_eq!(ContentDigest::parse("digest", &text), Ok(digest));
    }

    #[test]
    fn digest_parse_never_panics_and_accepts_only_the_canonical_text(
        raw in prop_oneof![
            tricky_string(),
            "sha256:[0-9a-fA-F]{0,70}",
            "sha256:[0-9a-f]{64}",
            "(sha256|SHA256|sha512|md5)?:?[0-9a-zA-Z]{60,68}",
        ]
    ) {
        if let Ok(digest) = ContentDigest::parse("digest", &raw) {
            prop_assert_eq!(digest.to_string(), raw);
        }
    }

    #[test]
    fn prompt_names_are_accepted_exactly_by_the_documented_rule(
        raw in prop_oneof![
            tricky_string(),
            "[a-z0-9][a-z0-9._-]{0,20}(/[a-z0-9][a-z0-9._-]{0,20}){0,6}",
            "[a-zA-Z0-9._/ -]{0,140}",
        ],
        max in prop_oneof![Just(128usize), 0usize..200],
    ) {
        let parsed = PromptName::parse("name", &raw, max);
        prop_assert_eq!(parsed.is_ok(), is_documented_prompt_name(&raw, max), "{:?} (max {})", raw, max);
        if let Ok(name) = parsed {
            prop_assert_eq!(name.as_str(), raw.as_str());
        }
    }

    #[test]
    fn label_names_are_accepted_exactly_by_the_documented_rule(
        raw in prop_oneof![
            tricky_string(),
            "[a-z0-9][a-z0-9_-]{0,70}",
            "[a-zA-Z0-9._ -]{0,70}",
        ],
    ) {
        let parsed = LabelName::parse("label", &raw);
        prop_assert_eq!(parsed.is_ok(), is_documented_label(&raw), "{:?}", raw);
        let movable = LabelName::parse_movable("label", &raw);
        prop_assert_eq!(movable.is_ok(), is_documented_label(&raw) && raw != "latest");
    }

    #[test]
    fn parse_duration_never_panics(raw in prop_oneof![
        tricky_string(),
        "[0-9]{0,25}(ms|s|m|h|d|w|µs|)",
        " *[0-9]{1,5}[a-zé]{0,2} *",
    ]) {
        let _ = parse_duration(&raw);
    }

    #[test]
    fn parse_duration_reads_what_it_documents(n in 0u64..=u64::MAX, unit in 0usize..6) {
        let (suffix, millis_per) = [("ms", 1u64), ("s", 1000), ("", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)][unit];
        let parsed = parse_duration(&format!("{n}{suffix}")).unwrap();
        prop_assert_eq!(parsed.as_millis(), u128::from(n.saturating_mul(millis_per)));
    }

    #[test]
    fn parse_rfc3339_never_panics(raw in prop_oneof![
        tricky_string(),
        "[0-9]{4,6}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,12})?(Z|[+-][0-9]{2}:[0-9]{2})",
        "[+-]?[0-9]{1,6}-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-6][0-9](\\.[0-9]{0,9})?[+-][0-9]{2}:[0-9]{2}",
    ]) {
        let _ = parse_rfc3339(&raw);
    }

    #[test]
    fn rfc3339_round_trips_through_format_micros(
        micros in -62_135_596_800_000_000i64..=253_402_300_799_999_999, // years 1 to 9999
    ) {
        prop_assert_eq!(parse_rfc3339(&format_micros(micros)), Ok(micros));
    }
}

/// The smallest failing inputs the property above found, checked every run:
/// each is the shortest round-trip spelling of one f64 (as written by Rust's
/// own formatter, Python's `repr`, JavaScript's `String(x)`), and the server
/// must keep that f64. Fails while `model_config_json` numbers are parsed
/// without correct rounding (serde_json without `float_roundtrip`).
#[test]
fn model_config_numbers_survive_normalisation_exactly() {
    for number in [
        -2.622408859920759e-182f64,
        4.0303578607887012e31,
        0.1,
        0.2,
        1e-300,
        5e-324,
        1.7976931348623157e308,
    ] {
        let sent = format!("{{\"t\":{number:e}}}");
        let content = validate_text("x", &[], &sent).expect("a valid config");
        // Read the stored number with Rust's correctly rounded parser.
        let kept: f64 = content
            .model_config_json
            .strip_prefix("{\"t\":")
            .and_then(|rest| rest.strip_suffix('}'))
            .and_then(|n| n.parse().ok())
            .expect("a number");
        assert!(
            kept.to_bits() == number.to_bits(),
            "model_config_json {sent} was stored as {} ({kept:e} is not {number:e})",
            content.model_config_json
        );
    }
}

/// The server's normalised config must be a fixed point of normalisation:
/// publishing the `model_config_json` that GetVersion returned must find the
/// same version (`created: false`), not make a new one. These configs
/// oscillated between two spellings (and two digests) when found.
#[test]
fn normalised_model_config_is_a_fixed_point() {
    for sent in [
        r#"{"t":-1.8045062573841701e-87}"#,
        r#"{"t":-1.80450625738417e-87}"#,
        r#"{"t":123456789.12345679}"#,
    ] {
        let first = validate_text("x", &[], sent).expect("a valid config");
        let second = validate_text("x", &[], &first.model_config_json).expect("still valid");
        assert_eq!(
            second.model_config_json, first.model_config_json,
            "{sent} normalises to {}, which normalises to {}: two digests for one config",
            first.model_config_json, second.model_config_json
        );
        assert_eq!(second.digest(), first.digest());
    }
}
