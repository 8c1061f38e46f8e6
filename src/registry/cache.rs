//! The label-target cache, and the resolve path through both caches (the
//! decoded-version cache itself is `version_cache.rs`).

use super::{CacheUsage, Registry, RegistryError, Result, SharedVersion, VersionSelector};
use crate::domain::{Change, LabelName, LabelTarget, PromptName, Revision};
use std::sync::Arc;

/// Label targets kept in memory; the cache starts over when full. An entry
/// is a label name (at most 63 bytes), a digest and three numbers, about
/// 200 bytes with its map slot, so the cache stays under ~20 MB even with
/// the longest names (a few MB for typical ones). Not a flag: it is a
/// small, fixed cost, unlike the version cache.
const LABEL_CACHE_ENTRIES: usize = 100_000;

/// Where labels point, as last read from the store: a resolve then costs
/// no store read and no record decoding. Every commit that moves a label
/// drops that label's entry and bumps `generation` (after applying the
/// revision), and a read caches what it read only if the generation did not
/// change meanwhile, so an entry is never older than the store.
#[derive(Debug, Default)]
pub(super) struct LabelCache {
    generation: u64,
    targets:
        std::collections::HashMap<PromptName, std::collections::HashMap<LabelName, LabelTarget>>,
    entries: usize,
}

impl Registry {
    /// What the decoded-version cache holds now (bytes are its estimate).
    pub fn version_cache_usage(&self) -> CacheUsage {
        self.inner
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .usage()
    }

    /// What the label-target cache holds now (entries; it has no byte count).
    pub fn label_cache_usage(&self) -> CacheUsage {
        let cache = self.inner.labels.read().unwrap_or_else(|p| p.into_inner());
        CacheUsage {
            entries: cache.entries,
            bytes: 0,
            capacity: LABEL_CACHE_ENTRIES,
        }
    }

    /// What [`Registry::get_version`] answers when memory alone has it:
    /// the label target and the decoded version both cached. The resolve
    /// hot path answers from here on the async worker; `None` means the
    /// store is needed (run `get_version` off the runtime).
    pub fn cached_version(
        &self,
        name: &PromptName,
        selector: &VersionSelector,
    ) -> Option<Arc<SharedVersion>> {
        let number = match selector {
            VersionSelector::Number(number) => *number,
            VersionSelector::Label(label) => self.cached_label_target(name, label)?.version,
            VersionSelector::Digest(_) => return None,
        };
        self.inner
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(name.clone(), number))
    }

    /// Where a label points now, when the cache has it (no storage call).
    pub(super) fn cached_label_target(
        &self,
        name: &PromptName,
        label: &LabelName,
    ) -> Option<LabelTarget> {
        let cache = self.inner.labels.read().unwrap_or_else(|p| p.into_inner());
        cache.targets.get(name)?.get(label).cloned()
    }

    /// Where a label points now: from the cache, or read from the store and
    /// cached.
    pub(super) fn label_target(
        &self,
        name: &PromptName,
        label: &LabelName,
    ) -> Result<Option<LabelTarget>> {
        let generation = {
            let cache = self.inner.labels.read().unwrap_or_else(|p| p.into_inner());
            if let Some(target) = cache.targets.get(name).and_then(|labels| labels.get(label)) {
                return Ok(Some(target.clone()));
            }
            cache.generation
        };
        let target = self.store().label(name, label)?;
        if let Some(target) = &target {
            let mut cache = self.inner.labels.write().unwrap_or_else(|p| p.into_inner());
            // A label moved since the read began: what was read may be old.
            if cache.generation == generation {
                if cache.entries >= LABEL_CACHE_ENTRIES {
                    cache.targets.clear();
                    cache.entries = 0;
                }
                let labels = cache.targets.entry(name.clone()).or_default();
                if labels.insert(label.clone(), target.clone()).is_none() {
                    cache.entries += 1;
                }
            }
        }
        Ok(target)
    }

    /// Drops the cached targets of the labels a revision moved. Called
    /// after the revision is applied to the store, so a read that began
    /// before it either sees the new generation (and does not cache) or
    /// cached before this, and its entry is dropped here.
    pub(super) fn forget_moved_labels(&self, revision: &Revision) {
        let moved = revision.changes.iter().filter_map(|change| match change {
            Change::LabelMoved(mv) => Some(mv),
            Change::VersionPublished { .. } => None,
        });
        let mut cache = None;
        for mv in moved {
            let cache = cache.get_or_insert_with(|| {
                let mut cache = self.inner.labels.write().unwrap_or_else(|p| p.into_inner());
                cache.generation += 1;
                cache
            });
            let removed = cache
                .targets
                .get_mut(&mv.name)
                .and_then(|labels| labels.remove(&mv.label));
            if removed.is_some() {
                cache.entries -= 1;
            }
        }
    }

    /// A version from the cache, or read from the store and cached.
    pub(super) fn shared_version(
        &self,
        name: &PromptName,
        number: u64,
    ) -> Result<Arc<SharedVersion>> {
        let key = (name.clone(), number);
        if let Some(cached) = self
            .inner
            .versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(cached);
        }
        match self.store().version(name, number)? {
            Some(version) => {
                let mut cache = self
                    .inner
                    .versions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let shared = Arc::new(SharedVersion::new(version));
                cache.insert(key, shared.clone());
                Ok(shared)
            }
            None => {
                let latest = self.existing_prompt(name)?.latest_version;
                Err(RegistryError::NotFound(format!(
                    "{name} has no version {number} (its newest is {latest})"
                )))
            }
        }
    }
}
