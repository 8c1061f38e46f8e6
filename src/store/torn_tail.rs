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

use super::engine::Batch;
use super::keys::{read_u64, LedgerHeadRec, KEY_HEAD, KEY_LEDGER};
use super::records::{decode, encode, LabelRec, MoveRec, PromptRec, VersionRec};
use super::{Result, Store};
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
        let mut batch = Batch::default();
        let mut gone: HashSet<Vec<u8>> = HashSet::new();
        let mut remove = |batch: &mut Batch, key: &[u8]| {
            batch.delete(key);
            gone.insert(key.to_vec());
        };
        for (key, _) in self.entries(b"r/")? {
            if trailing_u64(&key).is_some_and(|rev| rev > kept) {
                remove(&mut batch, &key);
            }
        }
        self.scan(b"v/", |key, raw| {
            if decode::<VersionRec>(key, raw).is_ok_and(|rec| rec.revision > kept) {
                remove(&mut batch, key);
            }
            Ok(())
        })?;
        for (key, _) in self.entries(b"h/")? {
            if trailing_u64(&key).is_some_and(|rev| rev > kept) {
                remove(&mut batch, &key);
            }
        }
        let version_exists = |gone: &HashSet<Vec<u8>>, version_key: &[u8]| -> Result<bool> {
            Ok(!gone.contains(version_key) && self.engine.get(version_key)?.is_some())
        };
        let version_key =
            |name: &[u8], number: u64| [b"v/", name, b"\0", &number.to_be_bytes()].concat();
        // The digest indexes of versions that are gone.
        for (key, raw) in self.entries(b"d/")? {
            let Some(name) = key.len().checked_sub(33).map(|end| &key[2..end.max(2)]) else {
                continue;
            };
            let number = read_u64(&key, &raw)?;
            if !version_exists(&gone, &version_key(name, number))? {
                batch.delete(key);
            }
        }
        for (key, _) in self.entries(b"x/")? {
            if key.len() < 34 + 9 {
                continue;
            }
            let name = &key[34..key.len() - 9];
            let Some(number) = trailing_u64(&key) else {
                continue;
            };
            if !version_exists(&gone, &version_key(name, number))? {
                batch.delete(key);
            }
        }
        // Labels moved after the durable head go back to their last move
        // at or before it.
        for (key, raw) in self.entries(b"l/")? {
            if !decode::<LabelRec>(&key, &raw).is_ok_and(|rec| rec.revision > kept) {
                continue;
            }
            let history = [b"h/", &key[2..], b"\0"].concat();
            let mut last = None;
            for (move_key, raw) in self.entries(&history)?.into_iter().rev() {
                if !gone.contains(&move_key) {
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
                    batch.put(key, encode(&rec));
                }
                None => batch.delete(key),
            }
        }
        // Prompts whose newest version is gone get the newest that remains.
        for (key, raw) in self.entries(b"p/")? {
            let name = &key[2..];
            let newest_exists = decode::<PromptRec>(&key, &raw)
                .is_ok_and(|rec| !gone.contains(&version_key(name, rec.latest_version)))
                && self
                    .engine
                    .get(&version_key(
                        name,
                        decode::<PromptRec>(&key, &raw)?.latest_version,
                    ))?
                    .is_some();
            if newest_exists {
                continue;
            }
            let mut newest = None;
            for (version_key, raw) in self
                .entries(&[b"v/", name, b"\0"].concat())?
                .into_iter()
                .rev()
            {
                if !gone.contains(&version_key) {
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
                    batch.put(key, encode(&prompt));
                }
                None => batch.delete(key),
            }
        }
        for (key, _) in self.entries(b"a/")? {
            if trailing_u64(&key).is_some_and(|seq| seq > durable.ledger.sequence) {
                batch.delete(key);
            }
        }
        batch.put(
            KEY_LEDGER,
            encode(&LedgerHeadRec::from(durable.ledger.clone())),
        );
        batch.put(KEY_HEAD, kept.to_be_bytes());
        self.engine.apply(batch)?;
        self.engine.flush()?;
        Ok(Some(head))
    }
}
