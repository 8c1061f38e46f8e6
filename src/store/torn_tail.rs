//! Discarding a torn, unacknowledged tail: what revisions after the
//! durable head left behind when their flush failed.
//!
//! sled keeps a batch atomic across a crash, but not across a failed write:
//! on a full disk part of a revision's batch can reach the disk and part not
//! (the head revision without its change-log record, a label pointing to a
//! version that is missing). Such revisions were never acknowledged: a write
//! is answered only after a flush covered it, and every successful flush
//! advances the durable-head file. So when the store is inconsistent and its
//! head is past the durable head, everything after the durable head is
//! removed, and the indexes those revisions touched are put back as they
//! were at it (from the label history and the versions that remain).

use super::records::{decode, encode, LabelRec, MoveRec, PromptRec, VersionRec};
use super::{read_u64, LedgerHeadRec, Result, Store, KEY_HEAD, KEY_LEDGER};
use std::collections::HashSet;

/// The last 8 bytes of a key, as the big-endian number they hold.
fn trailing_u64(key: &[u8]) -> Option<u64> {
    let tail = key.len().checked_sub(8).map(|start| &key[start..])?;
    <[u8; 8]>::try_from(tail).ok().map(u64::from_be_bytes)
}

impl Store {
    /// When the store is inconsistent and its head is past the durable
    /// head, removes every revision after the durable head (see the module
    /// comment). Returns the head it had, when it discarded anything.
    pub fn discard_torn_tail(&self) -> Result<Option<u64>> {
        let Some(durable) = self.recorded_head.clone() else {
            return Ok(None);
        };
        let head = self.head_revision()?;
        if head <= durable.revision
            || (self.check_heads().is_ok() && self.check_consistency()?.is_empty())
        {
            return Ok(None);
        }
        let kept = durable.revision;
        let mut batch = sled::Batch::default();
        let mut gone: HashSet<Vec<u8>> = HashSet::new();
        let mut remove = |batch: &mut sled::Batch, key: &[u8]| {
            batch.remove(key);
            gone.insert(key.to_vec());
        };
        for item in self.db.scan_prefix(b"r/") {
            let (key, _) = item?;
            if trailing_u64(&key).is_some_and(|rev| rev > kept) {
                remove(&mut batch, &key);
            }
        }
        for item in self.db.scan_prefix(b"v/") {
            let (key, raw) = item?;
            if decode::<VersionRec>(&key, &raw).is_ok_and(|rec| rec.revision > kept) {
                remove(&mut batch, &key);
            }
        }
        for item in self.db.scan_prefix(b"h/") {
            let (key, _) = item?;
            if trailing_u64(&key).is_some_and(|rev| rev > kept) {
                remove(&mut batch, &key);
            }
        }
        let version_exists = |gone: &HashSet<Vec<u8>>, version_key: &[u8]| -> Result<bool> {
            Ok(!gone.contains(version_key) && self.db.contains_key(version_key)?)
        };
        let version_key =
            |name: &[u8], number: u64| [b"v/", name, b"\0", &number.to_be_bytes()].concat();
        // The digest indexes of versions that are gone.
        for item in self.db.scan_prefix(b"d/") {
            let (key, raw) = item?;
            let Some(name) = key.len().checked_sub(33).map(|end| &key[2..end.max(2)]) else {
                continue;
            };
            let number = read_u64(&key, &raw)?;
            if !version_exists(&gone, &version_key(name, number))? {
                batch.remove(key);
            }
        }
        for item in self.db.scan_prefix(b"x/") {
            let (key, _) = item?;
            if key.len() < 34 + 9 {
                continue;
            }
            let name = &key[34..key.len() - 9];
            let Some(number) = trailing_u64(&key) else {
                continue;
            };
            if !version_exists(&gone, &version_key(name, number))? {
                batch.remove(key);
            }
        }
        // Labels moved after the durable head go back to their last move
        // at or before it.
        for item in self.db.scan_prefix(b"l/") {
            let (key, raw) = item?;
            if !decode::<LabelRec>(&key, &raw).is_ok_and(|rec| rec.revision > kept) {
                continue;
            }
            let history = [b"h/", &key[2..], b"\0"].concat();
            let mut last = None;
            for item in self.db.scan_prefix(&history).rev() {
                let (move_key, raw) = item?;
                if !gone.contains(move_key.as_ref()) {
                    last = Some(decode::<MoveRec>(&move_key, &raw)?);
                    break;
                }
            }
            match last.and_then(|mv| Some((mv.to_version?, mv.digest?, mv.revision, mv.time))) {
                Some((version, digest, revision, updated_at)) => {
                    let rec = LabelRec {
                        version,
                        digest,
                        revision,
                        updated_at,
                    };
                    batch.insert(key, encode(&rec));
                }
                None => batch.remove(key),
            }
        }
        // Prompts whose newest version is gone get the newest that remains.
        for item in self.db.scan_prefix(b"p/") {
            let (key, raw) = item?;
            let name = &key[2..];
            let newest_exists = decode::<PromptRec>(&key, &raw)
                .is_ok_and(|rec| !gone.contains(&version_key(name, rec.latest_version)))
                && self.db.contains_key(version_key(
                    name,
                    decode::<PromptRec>(&key, &raw)?.latest_version,
                ))?;
            if newest_exists {
                continue;
            }
            let mut newest = None;
            for item in self.db.scan_prefix([b"v/", name, b"\0"].concat()).rev() {
                let (version_key, raw) = item?;
                if !gone.contains(version_key.as_ref()) {
                    newest = Some(decode::<VersionRec>(&version_key, &raw)?);
                    break;
                }
            }
            match newest {
                Some(rec) => {
                    let prompt = PromptRec {
                        latest_version: rec.version,
                        latest_digest: rec.digest,
                        updated_at: rec.created_at,
                    };
                    batch.insert(key, encode(&prompt));
                }
                None => batch.remove(key),
            }
        }
        for item in self.db.scan_prefix(b"a/") {
            let (key, _) = item?;
            if trailing_u64(&key).is_some_and(|seq| seq > durable.ledger.sequence) {
                batch.remove(key);
            }
        }
        batch.insert(
            KEY_LEDGER,
            encode(&LedgerHeadRec::from(durable.ledger.clone())),
        );
        batch.insert(KEY_HEAD, &kept.to_be_bytes());
        self.db.apply_batch(batch)?;
        self.db.flush()?;
        Ok(Some(head))
    }
}
