//! The decoded-version cache: versions by (name, number), bounded in bytes,
//! least recently used out first.
//!
//! Versions are immutable, so an entry never goes stale; it only costs
//! memory. A version can be large (a 256 KiB template, 16 KiB of model
//! config), so the bound is in bytes, not entries: each entry is charged
//! an estimate of what it holds on the heap, see [`charge`].

use super::SharedVersion;
use crate::domain::{PromptName, TemplateBody, Version};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

type Key = (PromptName, u64);

/// What a cache holds now, for tests, `/metrics` and operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheUsage {
    pub entries: usize,
    /// The estimated bytes held (for the label cache: entries only, 0 here).
    pub bytes: usize,
    /// The bound on `bytes` (for the label cache: on `entries`).
    pub capacity: usize,
}

struct Entry {
    version: Arc<SharedVersion>,
    bytes: usize,
    /// The tick of the last use; the key of this entry in `by_use`.
    used: u64,
}

/// Never holds more than `capacity` charged bytes. A version charged more
/// than the whole capacity is not cached at all (it is served, just read
/// from the store each time).
pub(super) struct VersionCache {
    capacity: usize,
    bytes: usize,
    entries: HashMap<Key, Entry>,
    /// Entries by last use, oldest first: the eviction order.
    by_use: BTreeMap<u64, Key>,
    tick: u64,
}

impl VersionCache {
    pub(super) fn new(capacity: usize) -> VersionCache {
        VersionCache {
            capacity,
            bytes: 0,
            entries: HashMap::new(),
            by_use: BTreeMap::new(),
            tick: 0,
        }
    }

    /// The cached version, marked as just used.
    pub(super) fn get(&mut self, key: &Key) -> Option<Arc<SharedVersion>> {
        self.tick += 1;
        let entry = self.entries.get_mut(key)?;
        self.by_use.remove(&entry.used);
        entry.used = self.tick;
        self.by_use.insert(self.tick, key.clone());
        Some(entry.version.clone())
    }

    /// Caches `version`, evicting the least recently used entries until it
    /// fits.
    pub(super) fn insert(&mut self, key: Key, version: Arc<SharedVersion>) {
        let bytes = charge(&version);
        if bytes > self.capacity {
            return;
        }
        self.remove(&key);
        while self.bytes + bytes > self.capacity {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            if let Some(evicted) = self.entries.remove(&oldest) {
                self.bytes -= evicted.bytes;
            }
        }
        self.tick += 1;
        self.by_use.insert(self.tick, key.clone());
        self.bytes += bytes;
        self.entries.insert(
            key,
            Entry {
                version,
                bytes,
                used: self.tick,
            },
        );
    }

    pub(super) fn remove(&mut self, key: &Key) {
        if let Some(entry) = self.entries.remove(key) {
            self.by_use.remove(&entry.used);
            self.bytes -= entry.bytes;
        }
    }

    pub(super) fn usage(&self) -> CacheUsage {
        CacheUsage {
            entries: self.entries.len(),
            bytes: self.bytes,
            capacity: self.capacity,
        }
    }
}

/// Bookkeeping per entry beyond the version's own fields: the map and
/// eviction-order slots, the key's copy of the name, the `Arc`.
const ENTRY_OVERHEAD: usize = 160;

/// The bytes an entry is charged: the version's fixed size, every string
/// and list it owns, and the same variable-length bytes once more for the
/// wire encoding the first resolve stores beside it (see
/// [`super::Encodable`]). An estimate (allocator slack is not counted), but
/// a deterministic one, so the bound can be tested exactly.
pub(super) fn charge(version: &Version) -> usize {
    const STRING: usize = std::mem::size_of::<String>();
    let template = match &version.content.template {
        TemplateBody::Text(text) => text.len(),
        TemplateBody::Chat(messages) => messages
            .iter()
            .map(|m| 2 * STRING + m.role.len() + m.content.len())
            .sum(),
    };
    let variables: usize = version
        .content
        .variables
        .iter()
        .map(|v| STRING + v.len())
        .sum();
    // A BTreeMap node slot per tag, roughly.
    let tags: usize = version
        .tags
        .iter()
        .map(|(k, v)| 2 * STRING + 16 + k.len() + v.len())
        .sum();
    let signature = version
        .signature
        .as_ref()
        .map_or(0, |s| s.key_id.len() + s.bytes.len());
    let owned = 2 * version.name.as_str().len()
        + template
        + variables
        + version.content.model_config_json.len()
        + version.author.len()
        + version.description.len()
        + tags
        + signature;
    std::mem::size_of::<SharedVersion>() + ENTRY_OVERHEAD + 2 * owned
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Content, ContentDigest};

    fn version(name: &str, number: u64, template_bytes: usize) -> Arc<SharedVersion> {
        Arc::new(SharedVersion::new(Version {
            name: PromptName::parse("name", name, 128).unwrap(),
            number,
            digest: ContentDigest([0; 32]),
            content: Content {
                template: TemplateBody::Text("x".repeat(template_bytes)),
                variables: vec![],
                model_config_json: "{}".into(),
            },
            author: "ann".into(),
            description: String::new(),
            tags: Default::default(),
            created_at: 0,
            revision: number,
            signature: None,
            pruned: false,
        }))
    }

    fn key(v: &SharedVersion) -> Key {
        (v.name.clone(), v.number)
    }

    /// The charged bytes never pass the capacity, however many versions go
    /// in, and the newest stay.
    #[test]
    fn holds_at_most_its_capacity_in_bytes() {
        let one = charge(&version("p", 1, 8 * 1024));
        assert!(one > 16 * 1024, "8 KiB is charged for content and encoding");
        let mut cache = VersionCache::new(10 * one);
        for number in 1..=3000 {
            let v = version("p", number, 8 * 1024);
            cache.insert(key(&v), v);
            let usage = cache.usage();
            assert!(usage.bytes <= usage.capacity, "{usage:?}");
        }
        assert_eq!(cache.usage().entries, 10);
        assert_eq!(cache.usage().bytes, 10 * one);
        let name = PromptName::parse("name", "p", 128).unwrap();
        assert!(cache.get(&(name.clone(), 3000)).is_some());
        assert!(cache.get(&(name, 2990)).is_none());
    }

    /// A version read recently survives the eviction of older ones.
    #[test]
    fn evicts_the_least_recently_used_first() {
        let v1 = version("p", 1, 1000);
        let one = charge(&v1);
        let mut cache = VersionCache::new(3 * one);
        for number in 1..=3 {
            let v = version("p", number, 1000);
            cache.insert(key(&v), v);
        }
        assert!(cache.get(&key(&v1)).is_some());
        let v4 = version("p", 4, 1000);
        cache.insert(key(&v4), v4);
        assert!(cache.get(&key(&v1)).is_some(), "v1 was used last");
        assert!(cache.get(&key(&version("p", 2, 1000))).is_none());
        assert_eq!(cache.usage().entries, 3);
    }

    /// A version bigger than the whole cache is not cached, and does not
    /// empty the cache on its way.
    #[test]
    fn a_version_over_the_capacity_is_not_cached() {
        let small = version("p", 1, 100);
        let mut cache = VersionCache::new(charge(&small) * 2);
        cache.insert(key(&small), small.clone());
        let big = version("p", 2, 64 * 1024);
        cache.insert(key(&big), big.clone());
        assert!(cache.get(&key(&big)).is_none());
        assert!(cache.get(&key(&small)).is_some());
        cache.remove(&key(&small));
        assert_eq!(cache.usage().bytes, 0);
        assert_eq!(cache.usage().entries, 0);
    }
}
