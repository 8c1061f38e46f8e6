//! Every read: versions, lists, label history, resolve-at, diff and backup,
//! the lookups that answer NOT_FOUND, and running reads off the runtime.

use super::page::{decode_token, next_token, page_size_of, parse_number_token};
use super::{disk, Page, Registry, RegistryError, Result, SharedVersion};
use crate::domain::validate;
use crate::domain::{
    ContentDigest, LabelMove, LabelName, LabelTarget, Micros, PromptName, PromptSummary, Version,
    VersionDiff,
};
use std::sync::Arc;

/// Which version to read.
#[derive(Debug, Clone)]
pub enum VersionSelector {
    Number(u64),
    Digest(ContentDigest),
    Label(LabelName),
}

/// A point in the past for [`Registry::resolve_at`].
#[derive(Debug, Clone, Copy)]
pub enum PointInTime {
    Revision(u64),
    Time(Micros),
}

impl Registry {
    /// Runs a read on a blocking thread, so that a store call that hangs
    /// (sled on a full disk) never holds an async worker; UNAVAILABLE when
    /// it does not answer within [`disk::WRITE_PATIENCE`].
    pub async fn off_runtime<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Registry) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        let task = tokio::task::spawn_blocking(move || read(&this));
        match tokio::time::timeout(disk::WRITE_PATIENCE, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(RegistryError::Unwritable(format!(
                "the read failed: {join}"
            ))),
            Err(_) => Err(RegistryError::Unwritable(format!(
                "the store did not answer within {} s (storage is not answering)",
                disk::WRITE_PATIENCE.as_secs()
            ))),
        }
    }

    /// A version by number, digest or label. The answer is shared (see
    /// [`Encodable`]); it dereferences to the [`Version`].
    pub fn get_version(
        &self,
        name: &PromptName,
        selector: &VersionSelector,
    ) -> Result<Arc<SharedVersion>> {
        match selector {
            VersionSelector::Number(number) => self.shared_version(name, *number),
            VersionSelector::Digest(digest) => {
                self.existing_prompt(name)?;
                let number = self
                    .store()
                    .version_by_digest(name, digest)?
                    .ok_or_else(|| {
                        RegistryError::NotFound(format!(
                            "{name} has no version with digest {digest}"
                        ))
                    })?;
                self.shared_version(name, number)
            }
            // The resolve hot path: one label read, then the version from
            // the cache. The prompt is looked up only to explain a miss.
            VersionSelector::Label(label) => match self.label_target(name, label)? {
                Some(target) => self.shared_version(name, target.version),
                None => {
                    self.existing_prompt(name)?;
                    Err(RegistryError::NotFound(format!(
                        "label {label} is not set on {name}"
                    )))
                }
            },
        }
    }

    pub fn list_prompts(
        &self,
        prefix: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<PromptSummary>> {
        let after = match page_token {
            "" => None,
            token => Some(decode_token(token)?),
        };
        let size = page_size_of(page_size);
        let mut items = self
            .store()
            .list_prompts(prefix, after.as_deref(), size + 1)?;
        let next_page_token = next_token(&mut items, size, |p| hex::encode(p.name.as_str()));
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// Versions newest first, without needing their content.
    pub fn list_versions(
        &self,
        name: &PromptName,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<Version>> {
        self.existing_prompt(name)?;
        let below = parse_number_token(page_token)?;
        let size = page_size_of(page_size);
        let mut items = self.store().list_versions(name, below, size + 1)?;
        let next_page_token = next_token(&mut items, size, |v| v.number.to_string());
        Ok(Page {
            items,
            next_page_token,
        })
    }

    pub fn list_labels(&self, name: &PromptName) -> Result<Vec<LabelTarget>> {
        self.existing_prompt(name)?;
        Ok(self.store().labels(name)?)
    }

    /// Every move of a label, newest first.
    pub fn label_history(
        &self,
        name: &PromptName,
        label: &LabelName,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page<LabelMove>> {
        self.existing_prompt(name)?;
        let below = parse_number_token(page_token)?;
        let size = page_size_of(page_size);
        let mut items = self.store().history(name, label, below, size + 1)?;
        if items.is_empty() && below.is_none() {
            return Err(RegistryError::NotFound(format!(
                "label {label} of {name} has never been set"
            )));
        }
        let next_page_token = next_token(&mut items, size, |m| m.revision.to_string());
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// What `label` pointed to at a revision or time, and the move that put
    /// it there.
    pub fn resolve_at(
        &self,
        name: &PromptName,
        label: &LabelName,
        at: PointInTime,
    ) -> Result<(Version, LabelMove)> {
        self.existing_prompt(name)?;
        let found = match at {
            PointInTime::Revision(revision) => {
                validate::revision_in_past("revision", revision, self.committed_head())?;
                self.store().move_at_revision(name, label, revision)?
            }
            // Revision times never decrease, so the newest move at or before
            // `time` is the first one found walking back.
            PointInTime::Time(time) => self.find_move_at_time(name, label, time)?,
        };
        let at_text = match at {
            PointInTime::Revision(r) => format!("revision {r}"),
            PointInTime::Time(t) => format!("time {}", crate::time::format_micros(t)),
        };
        let mv = found.ok_or_else(|| {
            RegistryError::NotFound(format!("label {label} of {name} was not set at {at_text}"))
        })?;
        let Some(version) = mv.to_version else {
            return Err(RegistryError::NotFound(format!(
                "label {label} of {name} was not set at {at_text}: removed at revision {} by {} ({})",
                mv.revision, mv.actor, mv.reason
            )));
        };
        Ok((self.existing_version(name, version)?, mv))
    }

    fn find_move_at_time(
        &self,
        name: &PromptName,
        label: &LabelName,
        time: Micros,
    ) -> Result<Option<LabelMove>> {
        let mut below = None;
        loop {
            let page = self.store().history(name, label, below, 256)?;
            let Some(last) = page.last() else {
                return Ok(None);
            };
            below = Some(last.revision);
            if let Some(found) = page.into_iter().find(|m| m.time <= time) {
                return Ok(Some(found));
            }
        }
    }

    pub fn diff(
        &self,
        name: &PromptName,
        from: u64,
        to: u64,
    ) -> Result<(Version, Version, VersionDiff)> {
        let old = self.existing_version(name, from)?;
        let new = self.existing_version(name, to)?;
        // A pruned version has no content left: a diff against it would be
        // invented. Its digest is kept, so say so instead.
        if let Some(pruned) = [&old, &new].into_iter().find(|v| v.pruned) {
            return Err(RegistryError::FailedPrecondition(format!(
                "{name} v{} was pruned: its content is gone, so there is nothing to diff \
                 (its digest {} is kept: compare digests with GetVersion)",
                pruned.number, pruned.digest
            )));
        }
        let diff = VersionDiff::between(&old, &new);
        Ok((old, new, diff))
    }

    pub(super) fn existing_version_count(&self, name: &PromptName) -> Result<u64> {
        Ok(self.existing_prompt(name)?.latest_version)
    }

    pub(super) fn existing_prompt(&self, name: &PromptName) -> Result<PromptSummary> {
        self.store()
            .prompt(name)?
            .ok_or_else(|| RegistryError::NotFound(format!("prompt {name} does not exist")))
    }

    pub(super) fn existing_version(&self, name: &PromptName, number: u64) -> Result<Version> {
        let shared = self.shared_version(name, number)?;
        Ok(Version::clone(&shared))
    }

    /// The label's target, after checking the prompt exists.
    pub(super) fn existing_label_target(
        &self,
        name: &PromptName,
        label: &LabelName,
    ) -> Result<Option<LabelTarget>> {
        self.existing_prompt(name)?;
        Ok(self.store().label(name, label)?)
    }
}

impl Registry {
    /// A consistent copy of the whole store as a backup file, and the
    /// revision it is consistent at. Writers wait while the entries are
    /// copied (in memory: prompt stores are small), then the copy is
    /// encoded without any lock.
    pub async fn backup(&self) -> Result<(u64, Vec<u8>)> {
        let (revision, entries) = self
            .off_runtime(|this| {
                let writer = this.lock_writer();
                Ok((writer.head, this.store().export_entries()?))
            })
            .await?;
        self.wait_durable(revision).await?;
        let header = crate::store::backup::BackupHeader {
            format: crate::store::backup::FORMAT.to_string(),
            version: crate::store::backup::VERSION,
            schema: crate::store::SCHEMA_VERSION,
            revision,
            entries: entries.len() as u64,
            encryption_key_id: self.store().encryption_key_id(),
            created_at: crate::time::format_micros(crate::time::now_micros()),
        };
        Ok((revision, crate::store::backup::encode(&header, &entries)))
    }
}
