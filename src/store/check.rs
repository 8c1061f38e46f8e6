//! The store's own checks: the quick start-up check of its heads against
//! each other and against the durable-head file, and the full consistency
//! scan of every record a read relies on.

use super::durable_head;
use super::records::{decode, PromptRec, RevisionRec};
use super::{Result, Store, StoreError};
use crate::domain::PromptName;

impl Store {
    /// The check at start-up: [`Store::check_heads`], then every record a
    /// read relies on ([`Store::check_consistency`]): a flipped byte can
    /// make the engine drop one record in the middle of the store, which
    /// the heads alone do not show. A store that fails it is refused
    /// before anything is served; the first problem is named.
    pub fn check_startup(&self) -> Result<()> {
        self.check_heads()?;
        let problems = self.check_consistency()?;
        match problems.as_slice() {
            [] => Ok(()),
            [only] => Err(StoreError::Inconsistent(only.clone())),
            [first, rest @ ..] => Err(StoreError::Inconsistent(format!(
                "{first} (and {} more problems)",
                rest.len()
            ))),
        }
    }

    /// The quick part of the start-up check: the store is not behind its
    /// durable head, and the head revision's record and the ledger head's
    /// entry exist and agree with the metadata.
    pub fn check_heads(&self) -> Result<()> {
        self.check_durable_head()?;
        let head = self.head_revision()?;
        if head > 0 {
            match self.revision(head) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(StoreError::Inconsistent(format!(
                        "the head revision {head} has no change-log record"
                    )))
                }
                Err(e) => {
                    return Err(StoreError::Inconsistent(format!(
                        "the head revision {head} is unreadable: {e}"
                    )))
                }
            }
            if self.revision(head + 1)?.is_some() {
                return Err(StoreError::Inconsistent(format!(
                    "a change-log record exists beyond the head revision {head}"
                )));
            }
        }
        let ledger = self.ledger_head()?;
        if ledger.sequence > 0 {
            let entry = self.audit_entries(ledger.sequence, 1)?;
            match entry.first() {
                Some(e) if e.sequence == ledger.sequence && e.hash == ledger.hash => {}
                _ => {
                    return Err(StoreError::Inconsistent(format!(
                        "the audit ledger head (entry {}) is missing or differs",
                        ledger.sequence
                    )))
                }
            }
        }
        Ok(())
    }

    /// The store must hold everything the durable-head file says was made
    /// durable: a store behind it lost acknowledged writes (sled's recovery
    /// drops a damaged tail without a word).
    fn check_durable_head(&self) -> Result<()> {
        let Some(recorded) = &self.recorded_head else {
            return Ok(());
        };
        let file = durable_head::FILE_NAME;
        let head = self.head_revision()?;
        if head < recorded.revision {
            let missing = if head + 1 == recorded.revision {
                format!("revision {}", recorded.revision)
            } else {
                format!("revisions {} to {}", head + 1, recorded.revision)
            };
            return Err(StoreError::Inconsistent(format!(
                "acknowledged writes are missing: {file} records revision {} as durable but the store's head is {head} ({missing} lost)",
                recorded.revision
            )));
        }
        let ledger = self.ledger_head()?;
        let wanted = &recorded.ledger;
        if ledger.sequence < wanted.sequence {
            return Err(StoreError::Inconsistent(format!(
                "acknowledged audit entries are missing: {file} records ledger entry {} as durable but the ledger ends at entry {}",
                wanted.sequence, ledger.sequence
            )));
        }
        if wanted.sequence > 0 {
            let entry = self.audit_entries(wanted.sequence, 1)?;
            if !entry
                .first()
                .is_some_and(|e| e.sequence == wanted.sequence && e.hash == wanted.hash)
            {
                return Err(StoreError::Inconsistent(format!(
                    "ledger entry {} is not the one {file} records as durable (hash {})",
                    wanted.sequence, wanted.hash
                )));
            }
        }
        Ok(())
    }

    /// Every structural inconsistency in the store: labels pointing at
    /// missing versions, history that disagrees with labels, a change log
    /// that disagrees with the head, indexes that disagree with versions.
    /// (Digests, signatures and the ledger chain are checked by
    /// `Registry::verify_audit`.)
    pub fn check_consistency(&self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let head = self.head_revision()?;
        let compact = self.compact_revision()?;
        // The change log: contiguous from compact + 1 to head.
        let mut expected = compact + 1;
        self.scan(b"r/", |key, raw| {
            match decode::<RevisionRec>(key, raw) {
                Ok(rec) if rec.revision == expected => expected += 1,
                Ok(rec) if rec.revision <= compact => problems.push(format!(
                    "change-log record {} is below the compact revision {compact}",
                    rec.revision
                )),
                Ok(rec) => {
                    problems.push(format!(
                        "the change log jumps from revision {} to {}",
                        expected - 1,
                        rec.revision
                    ));
                    expected = rec.revision + 1;
                }
                Err(e) => problems.push(format!("unreadable change-log record: {e}")),
            }
            Ok(())
        })?;
        if head > compact && expected != head + 1 {
            problems.push(format!(
                "the change log ends at revision {} but the head revision is {head}",
                expected - 1
            ));
        }
        // Prompts and their versions.
        self.scan(b"p/", |key, raw| {
            let name = String::from_utf8_lossy(&key[2..]).into_owned();
            let Ok(name) = PromptName::parse("name", &name, 4096) else {
                problems.push(format!("prompt key {name:?} is not a valid name"));
                return Ok(());
            };
            let summary = match decode::<PromptRec>(key, raw) {
                Ok(rec) => rec,
                Err(e) => {
                    problems.push(format!("unreadable prompt record: {e}"));
                    return Ok(());
                }
            };
            for number in 1..=summary.latest_version {
                match self.version(&name, number) {
                    Ok(Some(v)) if v.revision > head => problems.push(format!(
                        "{name} v{number} claims revision {} beyond the head {head}",
                        v.revision
                    )),
                    Ok(Some(v)) => {
                        if self.version_by_digest(&name, &v.digest)? != Some(number) && !v.pruned {
                            problems.push(format!(
                                "{name} v{number}: the digest index does not point back to it"
                            ));
                        }
                    }
                    Ok(None) => problems.push(format!(
                        "{name} v{number} is missing (the prompt's newest is v{})",
                        summary.latest_version
                    )),
                    Err(e) => problems.push(format!("{name} v{number} is unreadable: {e}")),
                }
            }
            // Labels: each target exists and matches the label's last move.
            for label in self.labels(&name)? {
                if self.version(&name, label.version)?.is_none() {
                    problems.push(format!(
                        "label {} of {name} points to missing version {}",
                        label.label, label.version
                    ));
                }
                match self.history(&name, &label.label, None, 1)?.first() {
                    Some(last)
                        if last.to_version == Some(label.version)
                            && last.revision == label.revision => {}
                    _ => problems.push(format!(
                        "label {} of {name} disagrees with its history",
                        label.label
                    )),
                }
            }
            Ok(())
        })?;
        Ok(problems)
    }
}
