//! Provenance: the server's signing keys, the signed messages that bind a
//! version to its digest, the hash-chained audit ledger, and the form of
//! bearer token secrets (and the hash they are stored as).
//!
//! The byte layouts here are public contract, specified in
//! `proto/promptreg/v1/registry.proto` so that another language can verify
//! signatures and recompute ledger hashes. Change them only with a new
//! domain-separation tag.

mod attest;
mod ledger;
mod signing;
mod token;

pub use attest::{
    check_message, pae, verify_envelope, AttestedCheck, EnvelopeError, CHECK_PREDICATE_TYPE,
    IN_TOTO_PAYLOAD_TYPE, STATEMENT_TYPE,
};
pub use ledger::{AuditEntry, LedgerHead};
pub use signing::{key_id_of, secure_keys_dir, verify_signature, KeyError, SigningKey};
pub use token::{generate_token, is_well_formed, token_hash, TOKEN_LEN, TOKEN_PREFIX};

use crate::domain::{ContentDigest, Micros, PromptName};

const SIGNATURE_TAG: &[u8] = b"promptreg.signature.v1\n";
const CHECKPOINT_TAG: &[u8] = b"promptreg.checkpoint.v1\n";

/// Appends `str(s)`: a u32 big-endian byte length, then the UTF-8 bytes.
pub(crate) fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Writes a new secret file (a key) readable by its owner only (mode 0600),
/// synced to disk. Never overwrites an existing file.
#[cfg(unix)]
pub(crate) fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(not(unix))]
pub(crate) fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// The message the server signs for a version.
pub fn version_message(
    name: &PromptName,
    version: u64,
    digest: &ContentDigest,
    created_at: Micros,
) -> Vec<u8> {
    let mut out = SIGNATURE_TAG.to_vec();
    put_str(&mut out, name.as_str());
    out.extend_from_slice(&version.to_be_bytes());
    put_str(&mut out, &digest.to_string());
    out.extend_from_slice(&created_at.to_be_bytes());
    out
}

/// The message the server signs for a ledger checkpoint.
pub fn checkpoint_message(sequence: u64, head_hash: &str, time: Micros) -> Vec<u8> {
    let mut out = CHECKPOINT_TAG.to_vec();
    out.extend_from_slice(&sequence.to_be_bytes());
    put_str(&mut out, head_hash);
    out.extend_from_slice(&time.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_have_the_documented_lengths() {
        assert_eq!(SIGNATURE_TAG.len(), 23);
        assert_eq!(CHECKPOINT_TAG.len(), 24);
    }

    #[test]
    fn version_message_layout() {
        let name = PromptName::parse("n", "p", 128).unwrap();
        let digest = ContentDigest([0xab; 32]);
        let message = version_message(&name, 2, &digest, 5);
        let mut expected = b"promptreg.signature.v1\n\x00\x00\x00\x01p".to_vec();
        expected.extend_from_slice(&2u64.to_be_bytes());
        expected.extend_from_slice(&71u32.to_be_bytes());
        expected.extend_from_slice(digest.to_string().as_bytes());
        expected.extend_from_slice(&5i64.to_be_bytes());
        assert_eq!(message, expected);
    }
}
