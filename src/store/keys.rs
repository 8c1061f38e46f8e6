//! The store's keys (the layout is in `store/mod.rs`) and the small
//! decoding helpers every part of the store shares.

use super::{CorruptRecord, Result, StoreError};
use crate::domain::{ContentDigest, LabelName, PromptName};
use crate::provenance::LedgerHead;
use serde::{Deserialize, Serialize};

pub(super) const KEY_SCHEMA: &[u8] = b"meta/schema";
pub(super) const KEY_HEAD: &[u8] = b"meta/rev";
pub(super) const KEY_COMPACT: &[u8] = b"meta/compact";
pub(super) const KEY_LEDGER: &[u8] = b"meta/ledger";
pub(super) const KEY_SIGNING: &[u8] = b"meta/signing_key";
pub(super) const KEY_ENCRYPTION: &[u8] = b"meta/encryption";

pub(super) fn corrupt(key: &[u8], reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt(CorruptRecord {
        key: String::from_utf8_lossy(key).replace('\0', "/"),
        reason: reason.into(),
    })
}

pub(super) fn read_u64(key: &[u8], raw: &[u8]) -> Result<u64> {
    <[u8; 8]>::try_from(raw)
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt(key, "expected 8 bytes"))
}

pub(super) fn key(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

pub(super) fn prompt_key(name: &PromptName) -> Vec<u8> {
    key(&[b"p/", name.as_str().as_bytes()])
}

pub(super) fn version_key_prefix(name: &PromptName) -> Vec<u8> {
    key(&[b"v/", name.as_str().as_bytes(), b"\0"])
}

pub(super) fn version_key(name: &PromptName, version: u64) -> Vec<u8> {
    key(&[&version_key_prefix(name), &version.to_be_bytes()])
}

pub(super) fn digest_key(name: &PromptName, digest: &ContentDigest) -> Vec<u8> {
    key(&[b"d/", name.as_str().as_bytes(), b"\0", &digest.0])
}

/// One version in the digest index: the digest first, so that a prefix
/// scan finds every version with it across prompts. Names never hold a
/// 0 byte, which separates the name from the number.
pub(super) fn digest_index_key(digest: &ContentDigest, name: &PromptName, version: u64) -> Vec<u8> {
    key(&[
        b"x/",
        &digest.0,
        name.as_str().as_bytes(),
        b"\0",
        &version.to_be_bytes(),
    ])
}

pub(super) fn label_key_prefix(name: &PromptName) -> Vec<u8> {
    key(&[b"l/", name.as_str().as_bytes(), b"\0"])
}

pub(super) fn label_key(name: &PromptName, label: &LabelName) -> Vec<u8> {
    key(&[&label_key_prefix(name), label.as_str().as_bytes()])
}

pub(super) fn history_prefix(name: &PromptName) -> Vec<u8> {
    key(&[b"h/", name.as_str().as_bytes(), b"\0"])
}

pub(super) fn history_key(name: &PromptName, label: &LabelName, revision: u64) -> Vec<u8> {
    key(&[
        &history_prefix(name),
        label.as_str().as_bytes(),
        b"\0",
        &revision.to_be_bytes(),
    ])
}

pub(super) fn audit_key(sequence: u64) -> Vec<u8> {
    key(&[b"a/", &sequence.to_be_bytes()])
}

pub(super) fn key_key(key_id: &str) -> Vec<u8> {
    key(&[b"k/", key_id.as_bytes()])
}

pub(super) fn token_key(name: &str) -> Vec<u8> {
    key(&[b"t/", name.as_bytes()])
}

pub(super) fn revision_key(revision: u64) -> Vec<u8> {
    key(&[b"r/", &revision.to_be_bytes()])
}

/// The stored form of the ledger head.
#[derive(Serialize, Deserialize)]
pub(super) struct LedgerHeadRec {
    pub sequence: u64,
    pub hash: String,
}

impl From<LedgerHead> for LedgerHeadRec {
    fn from(head: LedgerHead) -> Self {
        LedgerHeadRec {
            sequence: head.sequence,
            hash: head.hash,
        }
    }
}

impl From<LedgerHeadRec> for LedgerHead {
    fn from(rec: LedgerHeadRec) -> Self {
        LedgerHead {
            sequence: rec.sequence,
            hash: rec.hash,
        }
    }
}
