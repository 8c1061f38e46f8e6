//! Reads: every record the registry asks for, decoded into domain types.
//! Each is one `get` or one bounded `range` on the engine, except the full
//! scans (`scan`, used by the checks, backups and the offline check), which
//! page through the key space.

use super::engine::{prefix_end, Entry};
use super::keys::*;
use super::records::{
    decode, AuditRec, KeyRec, LabelRec, MoveRec, PromptRec, RevisionRec, TokenRec,
};
use super::{PublicKey, Result, Store};
use crate::domain::access::Token;
use crate::domain::{
    ContentDigest, LabelMove, LabelName, LabelTarget, PromptName, PromptSummary, Revision, Version,
};
use crate::provenance::{AuditEntry, LedgerHead};
use std::collections::BTreeSet;

/// Entries read per engine call by a full scan.
const SCAN_PAGE: usize = 512;

impl Store {
    /// Calls `visit` with every entry whose key starts with `prefix`, in key
    /// order, reading a page at a time.
    pub(super) fn scan(
        &self,
        prefix: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let end = prefix_end(prefix);
        let mut start = prefix.to_vec();
        loop {
            let page = self
                .engine
                .range(&start, end.as_deref(), false, SCAN_PAGE)?;
            for (key, value) in &page {
                visit(key, value)?;
            }
            match page.last() {
                Some((last, _)) if page.len() == SCAN_PAGE => {
                    start = [last.as_slice(), b"\0"].concat();
                }
                _ => return Ok(()),
            }
        }
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub(super) fn entries(&self, prefix: &[u8]) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        self.scan(prefix, |key, value| {
            out.push((key.to_vec(), value.to_vec()));
            Ok(())
        })?;
        Ok(out)
    }

    /// Every key and value of the store, for a backup. The caller makes it
    /// consistent by holding the writer lock.
    pub fn export_entries(&self) -> Result<Vec<Entry>> {
        self.entries(b"")
    }

    fn get_decoded<T>(
        &self,
        key: &[u8],
        into: impl FnOnce(&[u8], &[u8]) -> Result<T>,
    ) -> Result<Option<T>> {
        self.engine.get(key)?.map(|raw| into(key, &raw)).transpose()
    }

    /// The newest committed revision (0 for an empty store).
    pub fn head_revision(&self) -> Result<u64> {
        Ok(self.get_decoded(KEY_HEAD, read_u64)?.unwrap_or(0))
    }

    pub fn version(&self, name: &PromptName, number: u64) -> Result<Option<Version>> {
        self.get_decoded(&version_key(name, number), |key, raw| {
            self.decode_version(key, raw)
        })
    }

    pub fn version_by_digest(
        &self,
        name: &PromptName,
        digest: &ContentDigest,
    ) -> Result<Option<u64>> {
        self.get_decoded(&digest_key(name, digest), read_u64)
    }

    pub fn prompt(&self, name: &PromptName) -> Result<Option<PromptSummary>> {
        self.get_decoded(&prompt_key(name), |key, raw| {
            decode::<PromptRec>(key, raw)?
                .into_domain(name.as_str())
                .map_err(|e| corrupt(key, e))
        })
    }

    pub fn label(&self, name: &PromptName, label: &LabelName) -> Result<Option<LabelTarget>> {
        self.get_decoded(&label_key(name, label), |key, raw| {
            decode::<LabelRec>(key, raw)?
                .into_domain(label.as_str())
                .map_err(|e| corrupt(key, e))
        })
    }

    /// Every label of a prompt, in name order.
    pub fn labels(&self, name: &PromptName) -> Result<Vec<LabelTarget>> {
        let prefix = label_key_prefix(name);
        self.entries(&prefix)?
            .into_iter()
            .map(|(key, raw)| {
                let label = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                decode::<LabelRec>(&key, &raw)?
                    .into_domain(&label)
                    .map_err(|e| corrupt(&key, e))
            })
            .collect()
    }

    /// Prompts whose name starts with `prefix`, in byte order, strictly after
    /// `after` when given; at most `limit`.
    pub fn list_prompts(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<PromptSummary>> {
        let scan_prefix = key(&[b"p/", prefix.as_bytes()]);
        let start = match after {
            Some(after) => key(&[b"p/", after.as_bytes(), b"\0"]).max(scan_prefix.clone()),
            None => scan_prefix.clone(),
        };
        let end = prefix_end(&scan_prefix);
        self.engine
            .range(&start, end.as_deref(), false, limit)?
            .into_iter()
            .map(|(key, raw)| {
                let name = String::from_utf8_lossy(&key[2..]).into_owned();
                decode::<PromptRec>(&key, &raw)?
                    .into_domain(&name)
                    .map_err(|e| corrupt(&key, e))
            })
            .collect()
    }

    /// Versions of a prompt, newest first, strictly below `below` when given;
    /// at most `limit`.
    pub fn list_versions(
        &self,
        name: &PromptName,
        below: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Version>> {
        let low = version_key(name, 0);
        let high = version_key(name, below.unwrap_or(u64::MAX));
        self.engine
            .range(&low, Some(&high), true, limit)?
            .into_iter()
            .map(|(key, raw)| self.decode_version(&key, &raw))
            .collect()
    }

    /// Moves of one label, newest first, with revision strictly below `below`
    /// when given; at most `limit`.
    pub fn history(
        &self,
        name: &PromptName,
        label: &LabelName,
        below: Option<u64>,
        limit: usize,
    ) -> Result<Vec<LabelMove>> {
        self.history_range(name, label, below.unwrap_or(u64::MAX), limit)
    }

    /// The newest move of a label with revision at most `revision`.
    pub fn move_at_revision(
        &self,
        name: &PromptName,
        label: &LabelName,
        revision: u64,
    ) -> Result<Option<LabelMove>> {
        Ok(self
            .history_range(name, label, revision.saturating_add(1), 1)?
            .pop())
    }

    fn history_range(
        &self,
        name: &PromptName,
        label: &LabelName,
        below: u64,
        limit: usize,
    ) -> Result<Vec<LabelMove>> {
        let low = history_key(name, label, 0);
        let high = history_key(name, label, below);
        self.engine
            .range(&low, Some(&high), true, limit)?
            .into_iter()
            .map(|(key, raw)| decode_move(&key, &raw))
            .collect()
    }

    /// Change-log records with revision >= `from`, in order; at most `limit`.
    pub fn revisions(&self, from: u64, limit: usize) -> Result<Vec<Revision>> {
        self.engine
            .range(
                &revision_key(from),
                Some(&revision_key(u64::MAX)),
                false,
                limit,
            )?
            .into_iter()
            .map(|(key, raw)| decode_revision(&key, &raw))
            .collect()
    }

    /// One change-log record.
    pub fn revision(&self, revision: u64) -> Result<Option<Revision>> {
        self.get_decoded(&revision_key(revision), decode_revision)
    }

    /// Every label of every prompt whose name starts with `prefix`, in
    /// (name, label) order.
    pub fn labels_under(&self, prefix: &str) -> Result<Vec<(PromptName, LabelTarget)>> {
        self.entries(&key(&[b"l/", prefix.as_bytes()]))?
            .into_iter()
            .map(|(key, raw)| {
                let rest = &key[2..];
                let split = rest
                    .iter()
                    .position(|b| *b == 0)
                    .ok_or_else(|| corrupt(&key, "label key without a separator"))?;
                let name = String::from_utf8_lossy(&rest[..split]).into_owned();
                let label = String::from_utf8_lossy(&rest[split + 1..]).into_owned();
                let name = PromptName::parse("name", &name, 4096)
                    .map_err(|e| corrupt(&key, e.to_string()))?;
                let target = decode::<LabelRec>(&key, &raw)?
                    .into_domain(&label)
                    .map_err(|e| corrupt(&key, e))?;
                Ok((name, target))
            })
            .collect()
    }

    /// Revisions at or below the compact revision have been removed from the
    /// change log (0: nothing has been compacted).
    pub fn compact_revision(&self) -> Result<u64> {
        Ok(self.get_decoded(KEY_COMPACT, read_u64)?.unwrap_or(0))
    }

    /// The oldest change-log record still present.
    pub fn oldest_revision(&self) -> Result<Option<Revision>> {
        Ok(self.revisions(0, 1)?.pop())
    }

    /// Every (prompt, version) whose content has `digest`, pruned or not,
    /// in (name, number) order.
    ///
    /// Stores written before the index kept one key per version hold
    /// `x/{digest}{name}` → the newest version published with the digest,
    /// which forgot an older (pruned) version once the same content was
    /// published again. For a prompt found under such a key, its versions
    /// are scanned for the digest, so that those are found too.
    pub fn versions_with_digest(&self, digest: &ContentDigest) -> Result<Vec<(PromptName, u64)>> {
        let prefix = key(&[b"x/", &digest.0]);
        let parse_name = |key: &[u8], raw: &[u8]| {
            PromptName::parse("name", &String::from_utf8_lossy(raw), 4096)
                .map_err(|e| corrupt(key, e.to_string()))
        };
        let mut found = BTreeSet::new();
        let mut legacy = BTreeSet::new();
        self.scan(&prefix, |key, raw| {
            let rest = &key[prefix.len()..];
            match rest.iter().position(|b| *b == 0) {
                Some(split) => {
                    let name = parse_name(key, &rest[..split])?;
                    found.insert((name, read_u64(key, &rest[split + 1..])?));
                }
                None => {
                    let name = parse_name(key, rest)?;
                    found.insert((name.clone(), read_u64(key, raw)?));
                    legacy.insert(name);
                }
            }
            Ok(())
        })?;
        for name in legacy {
            for version in self.list_versions(&name, None, usize::MAX)? {
                if version.digest == *digest {
                    found.insert((name.clone(), version.number));
                }
            }
        }
        Ok(found.into_iter().collect())
    }

    /// Every move of every label of a prompt, ordered by label then revision.
    pub fn prompt_history(&self, name: &PromptName) -> Result<Vec<LabelMove>> {
        self.entries(&history_prefix(name))?
            .into_iter()
            .map(|(key, raw)| decode_move(&key, &raw))
            .collect()
    }

    /// Version numbers that any label other than `latest` ever pointed to.
    pub fn labelled_versions(&self, name: &PromptName) -> Result<BTreeSet<u64>> {
        let mut out = BTreeSet::new();
        self.scan(&history_prefix(name), |key, raw| {
            let mv = decode::<MoveRec>(key, raw)?;
            if mv.label != crate::domain::LATEST_LABEL {
                out.extend(mv.to_version);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The audit ledger's newest entry (sequence 0 when empty).
    pub fn ledger_head(&self) -> Result<LedgerHead> {
        Ok(self
            .get_decoded(KEY_LEDGER, |key, raw| {
                Ok(decode::<LedgerHeadRec>(key, raw)?.into())
            })?
            .unwrap_or_default())
    }

    /// Ledger entries with sequence >= `from`, oldest first; at most `limit`.
    pub fn audit_entries(&self, from: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        self.engine
            .range(&audit_key(from), Some(&audit_key(u64::MAX)), false, limit)?
            .into_iter()
            .map(|(key, raw)| Ok(decode::<AuditRec>(&key, &raw)?.into()))
            .collect()
    }

    /// Every public signing key, oldest first.
    pub fn signing_keys(&self) -> Result<Vec<PublicKey>> {
        let mut keys = self
            .entries(b"k/")?
            .into_iter()
            .map(|(key, raw)| {
                let rec: KeyRec = decode(&key, &raw)?;
                Ok(PublicKey {
                    key_id: String::from_utf8_lossy(&key[2..]).into_owned(),
                    public_key: hex::decode(&rec.public_key)
                        .map_err(|e| corrupt(&key, e.to_string()))?,
                    created_at: rec.created_at,
                    revision: rec.revision,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        keys.sort_by_key(|k| k.revision);
        Ok(keys)
    }

    /// Every token, revoked ones too, by name.
    pub fn tokens(&self) -> Result<Vec<Token>> {
        self.entries(b"t/")?
            .into_iter()
            .map(|(key, raw)| {
                let rec: TokenRec = decode(&key, &raw)?;
                let name = String::from_utf8_lossy(&key[2..]).into_owned();
                rec.into_domain(&name).map_err(|e| corrupt(&key, e))
            })
            .collect()
    }

    /// The id of the key that signs new versions.
    pub fn active_key_id(&self) -> Result<Option<String>> {
        self.get_decoded(KEY_SIGNING, |_, raw| {
            Ok(String::from_utf8_lossy(raw).into_owned())
        })
    }

    /// Calls `visit` with every stored version (or the error decoding it),
    /// in (name, number) order.
    pub fn scan_versions(&self, mut visit: impl FnMut(Result<Version>)) -> Result<()> {
        self.scan(b"v/", |key, raw| {
            visit(self.decode_version(key, raw));
            Ok(())
        })
    }

    /// The store's size on disk in bytes.
    pub fn size_on_disk(&self) -> Result<u64> {
        self.engine.size_on_disk()
    }
}

fn decode_move(key: &[u8], raw: &[u8]) -> Result<LabelMove> {
    decode::<MoveRec>(key, raw)?
        .into_domain()
        .map_err(|e| corrupt(key, e))
}

fn decode_revision(key: &[u8], raw: &[u8]) -> Result<Revision> {
    decode::<RevisionRec>(key, raw)?
        .into_domain()
        .map_err(|e| corrupt(key, e))
}
