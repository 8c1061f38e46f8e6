//! Check results as signed statements: the message the server signs for a
//! result, and the verification of a DSSE envelope (an in-toto Statement
//! v1 about a version's digest) signed by a registered attester key.
//! Both layouts are public contract, specified in the proto.

use super::{put_str, verify_signature};
use crate::domain::release::CheckResult;
use crate::domain::ContentDigest;
use base64::Engine as _;
use sha2::{Digest, Sha256};

const CHECK_TAG: &[u8] = b"promptreg.check.v1\n";
/// The DSSE payload type of an in-toto statement.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The statement type this registry accepts.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The predicate type of a promptreg check result.
pub const CHECK_PREDICATE_TYPE: &str = "https://promptreg.dev/check/v1";

/// The message the server signs for a check result.
pub fn check_message(result: &CheckResult) -> Vec<u8> {
    let mut out = CHECK_TAG.to_vec();
    put_str(&mut out, result.name.as_str());
    out.extend_from_slice(&result.version.to_be_bytes());
    put_str(&mut out, &result.digest.to_string());
    put_str(&mut out, &result.check);
    put_str(&mut out, result.outcome());
    match result.score {
        None => out.push(0),
        Some(score) => {
            out.push(1);
            out.extend_from_slice(&score.to_bits().to_be_bytes());
        }
    }
    put_str(&mut out, &result.url);
    put_str(
        &mut out,
        &hex::encode(Sha256::digest(result.details.as_bytes())),
    );
    put_str(&mut out, &result.attester);
    put_str(&mut out, &result.envelope_key);
    out.extend_from_slice(&result.time.to_be_bytes());
    out.extend_from_slice(&result.sequence.to_be_bytes());
    out
}

/// DSSE's pre-authentication encoding: what the envelope's signatures sign.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// What a verified envelope says.
#[derive(Debug, Clone, PartialEq)]
pub struct AttestedCheck {
    /// The registered key whose signature held.
    pub key: String,
    pub check: String,
    pub passed: bool,
    pub score: Option<f64>,
    pub url: String,
}

/// Why an envelope was refused; each names what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("is not a DSSE envelope (JSON with payloadType, payload, signatures): {0}")]
    Shape(String),
    #[error("payloadType is {0:?}; must be {IN_TOTO_PAYLOAD_TYPE:?}")]
    PayloadType(String),
    #[error("the payload is not base64: {0}")]
    Base64(String),
    #[error("the payload is not an in-toto Statement v1 ({STATEMENT_TYPE}) with predicateType {CHECK_PREDICATE_TYPE}: {0}")]
    Statement(String),
    #[error("no subject of the statement has digest sha256 {0}, the version's digest")]
    Subject(String),
    #[error("no signature is by a registered attester key with a valid signature (keyids: {0})")]
    Signature(String),
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload_type: String,
    payload: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(serde::Deserialize)]
struct EnvelopeSignature {
    #[serde(default)]
    keyid: String,
    sig: String,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Statement {
    #[serde(rename = "_type")]
    kind: String,
    subject: Vec<Subject>,
    predicate_type: String,
    predicate: Predicate,
}

#[derive(serde::Deserialize)]
struct Subject {
    #[serde(default)]
    digest: std::collections::BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct Predicate {
    check: String,
    result: String,
    #[serde(default)]
    score: Option<f64>,
    #[serde(default)]
    url: String,
}

fn base64_any(raw: &str) -> Result<Vec<u8>, String> {
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let mut last = String::new();
    for engine in engines {
        match engine.decode(raw) {
            Ok(bytes) => return Ok(bytes),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// Verifies `envelope` for `digest`: its type, a signature by one of
/// `keys` (name → raw Ed25519 public key, the attesters in force), the
/// statement's subject, and its predicate. Returns what it attests.
pub fn verify_envelope(
    envelope: &str,
    digest: &ContentDigest,
    keys: &[(String, Vec<u8>)],
) -> Result<AttestedCheck, EnvelopeError> {
    let envelope: Envelope =
        serde_json::from_str(envelope).map_err(|e| EnvelopeError::Shape(e.to_string()))?;
    if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE {
        return Err(EnvelopeError::PayloadType(envelope.payload_type));
    }
    let payload = base64_any(&envelope.payload).map_err(EnvelopeError::Base64)?;
    let signed = pae(&envelope.payload_type, &payload);
    let key = envelope
        .signatures
        .iter()
        .find(|s| {
            let Some((_, public)) = keys.iter().find(|(name, _)| *name == s.keyid) else {
                return false;
            };
            base64_any(&s.sig).is_ok_and(|sig| verify_signature(public, &signed, &sig))
        })
        .map(|s| s.keyid.clone())
        .ok_or_else(|| {
            let ids: Vec<&str> = envelope
                .signatures
                .iter()
                .map(|s| s.keyid.as_str())
                .collect();
            EnvelopeError::Signature(format!("{ids:?}"))
        })?;
    let statement: Statement =
        serde_json::from_slice(&payload).map_err(|e| EnvelopeError::Statement(e.to_string()))?;
    if statement.kind != STATEMENT_TYPE || statement.predicate_type != CHECK_PREDICATE_TYPE {
        return Err(EnvelopeError::Statement(format!(
            "_type {:?}, predicateType {:?}",
            statement.kind, statement.predicate_type
        )));
    }
    let hex_digest = hex::encode(digest.0);
    if !statement
        .subject
        .iter()
        .any(|s| s.digest.get("sha256") == Some(&hex_digest))
    {
        return Err(EnvelopeError::Subject(hex_digest));
    }
    let passed = match statement.predicate.result.as_str() {
        "pass" => true,
        "fail" => false,
        other => {
            return Err(EnvelopeError::Statement(format!(
                "predicate.result is {other:?}; must be \"pass\" or \"fail\""
            )))
        }
    };
    Ok(AttestedCheck {
        key,
        check: statement.predicate.check,
        passed,
        score: statement.predicate.score,
        url: statement.predicate.url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    fn key() -> Ed25519KeyPair {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn envelope(pair: &Ed25519KeyPair, keyid: &str, subject_hex: &str) -> String {
        let statement = serde_json::json!({
            "_type": STATEMENT_TYPE,
            "subject": [{"name": "support/triage", "digest": {"sha256": subject_hex}}],
            "predicateType": CHECK_PREDICATE_TYPE,
            "predicate": {"check": "eval", "result": "pass", "score": 0.93},
        });
        let payload = serde_json::to_vec(&statement).unwrap();
        let sig = pair.sign(&pae(IN_TOTO_PAYLOAD_TYPE, &payload));
        let b64 = base64::engine::general_purpose::STANDARD;
        serde_json::json!({
            "payloadType": IN_TOTO_PAYLOAD_TYPE,
            "payload": b64.encode(&payload),
            "signatures": [{"keyid": keyid, "sig": b64.encode(sig.as_ref())}],
        })
        .to_string()
    }

    #[test]
    fn pae_is_the_dsse_encoding() {
        // The example of the DSSE specification (protocol.md).
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn an_envelope_verifies_only_with_its_key_and_subject() {
        let pair = key();
        let digest = ContentDigest([7; 32]);
        let keys = vec![("ci".to_string(), pair.public_key().as_ref().to_vec())];
        let good = envelope(&pair, "ci", &hex::encode(digest.0));
        let attested = verify_envelope(&good, &digest, &keys).unwrap();
        assert_eq!(attested.key, "ci");
        assert_eq!(attested.check, "eval");
        assert!(attested.passed);
        assert_eq!(attested.score, Some(0.93));

        let wrong_subject = envelope(&pair, "ci", &hex::encode([8u8; 32]));
        assert!(matches!(
            verify_envelope(&wrong_subject, &digest, &keys),
            Err(EnvelopeError::Subject(_))
        ));
        let other = key();
        let forged = envelope(&other, "ci", &hex::encode(digest.0));
        assert!(matches!(
            verify_envelope(&forged, &digest, &keys),
            Err(EnvelopeError::Signature(_))
        ));
        let unknown = envelope(&pair, "someone", &hex::encode(digest.0));
        assert!(matches!(
            verify_envelope(&unknown, &digest, &keys),
            Err(EnvelopeError::Signature(_))
        ));
        assert!(matches!(
            verify_envelope("{", &digest, &keys),
            Err(EnvelopeError::Shape(_))
        ));
    }

    #[test]
    fn the_check_tag_has_the_documented_length() {
        assert_eq!(CHECK_TAG.len(), 19);
    }
}
