//! The audit ledger: one entry per change, each hashing its predecessor.

use super::put_str;
use crate::domain::Micros;
use sha2::{Digest, Sha256};

const AUDIT_TAG: &[u8] = b"promptreg.audit.v1\n";

/// One ledger entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub sequence: u64,
    pub revision: u64,
    pub time: Micros,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub reason: String,
    pub trace_id: String,
    pub detail: String,
    pub previous_hash: String,
    pub hash: String,
}

/// The newest entry's sequence and hash (0 and "" for an empty ledger).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerHead {
    pub sequence: u64,
    pub hash: String,
}

impl AuditEntry {
    /// The hash this entry should carry, over the documented canonical
    /// encoding of every other field.
    pub fn compute_hash(&self) -> String {
        let mut out = AUDIT_TAG.to_vec();
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.revision.to_be_bytes());
        out.extend_from_slice(&self.time.to_be_bytes());
        for field in [
            &self.actor,
            &self.action,
            &self.target,
            &self.reason,
            &self.trace_id,
            &self.detail,
            &self.previous_hash,
        ] {
            put_str(&mut out, field);
        }
        hex::encode(Sha256::digest(&out))
    }

    /// Chains a new entry after `head` and seals it with its hash.
    #[allow(clippy::too_many_arguments)]
    pub fn after(
        head: &LedgerHead,
        revision: u64,
        time: Micros,
        actor: &str,
        action: &str,
        target: String,
        reason: &str,
        detail: String,
    ) -> AuditEntry {
        let mut entry = AuditEntry {
            sequence: head.sequence + 1,
            revision,
            time,
            actor: actor.to_string(),
            action: action.to_string(),
            target,
            reason: reason.to_string(),
            trace_id: String::new(),
            detail,
            previous_hash: head.hash.clone(),
            hash: String::new(),
        };
        entry.hash = entry.compute_hash();
        entry
    }

    pub fn head(&self) -> LedgerHead {
        LedgerHead {
            sequence: self.sequence,
            hash: self.hash.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_chain_and_any_change_breaks_the_hash() {
        let first = AuditEntry::after(
            &LedgerHead::default(),
            1,
            10,
            "alice",
            "publish",
            "p@v1".into(),
            "why",
            "d".into(),
        );
        let second = AuditEntry::after(
            &first.head(),
            2,
            11,
            "bob",
            "promote",
            "p:prod".into(),
            "go",
            "- -> v1".into(),
        );
        assert_eq!(second.previous_hash, first.hash);
        assert_eq!(second.sequence, 2);
        assert_eq!(first.compute_hash(), first.hash);
        let mut altered = second.clone();
        altered.reason = "changed".into();
        assert_ne!(altered.compute_hash(), second.hash);
        assert_eq!(AUDIT_TAG.len(), 19);
    }
}
