//! The storage engine contract: an ordered key/value space with atomic,
//! guarded batches. [`super::Store`] keeps every record in one such space
//! (the key layout is in `store/mod.rs`) and is the only user of this trait;
//! `store/sled/` implements it on sled, and a distributed store implements it
//! on an etcd cluster (see "The Store contract" in ARCHITECTURE.md for how
//! each method maps onto etcd's API).
//!
//! # The contract
//!
//! - **Keys and order.** Keys and values are byte strings. Ranges are in
//!   unsigned byte order of the keys, the order etcd and sled both use.
//! - **Atomic batches.** [`Engine::apply`] applies every operation of a
//!   [`Batch`] or none of them, and only when every [`Guard`] of the batch
//!   holds at the moment it applies (a compare-and-set on those keys). A
//!   reader sees a batch whole or not at all, on every key, in every later
//!   read. One registry revision is one batch: a backend must be able to
//!   apply the largest batch the registry writes (one version, at most
//!   `--max-content-bytes` of content, plus a few hundred bytes of indexes)
//!   in one transaction.
//! - **Visibility and durability.** Once `apply` returns `Ok`, every read
//!   (from any thread) sees the batch. It is durable once a later
//!   [`Engine::flush`] has returned `Ok`: after that it survives a crash of
//!   the process and a power loss on a disk that honours fsync. A backend
//!   whose `apply` is already durable (an etcd transaction is committed by
//!   the quorum when it returns) makes `flush` a no-op. A failed `apply`
//!   changed nothing; a failed `flush` may leave batches applied but not
//!   durable (the registry then refuses writes until a flush succeeds, and
//!   `store/torn_tail.rs` repairs what a crash left of them).
//! - **Reads.** [`Engine::get`] and [`Engine::range`] read the newest
//!   applied state. Two reads are not one snapshot: a caller that needs
//!   several keys to agree reads a key that every batch advances (the head
//!   revision) before and after, as `registry/watch/snapshot.rs` does. Reads *as of*
//!   an older registry revision are not an engine feature: the store keeps
//!   history records (label moves keyed by revision, immutable versions, the
//!   change log) and answers them from the newest state.
//! - **Errors.** An engine reports I/O failures as [`super::StoreError::Io`]
//!   (the request may be retried; a full disk is one), files it cannot make
//!   sense of as [`super::StoreError::Damaged`], and a guard that did not
//!   hold as [`super::StoreError::Conflict`]. It never panics on damaged
//!   data it has already opened.

use super::Result;

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

/// A precondition of a batch: the key holds exactly `value` (`None`: the key
/// is absent) when the batch applies. In etcd terms, a transaction compare
/// on the key's value (or on its version being 0 for `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// Writes applied together, when their guards hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub ops: Vec<Op>,
    pub guards: Vec<Guard>,
}

impl Batch {
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put {
            key: key.into(),
            value: value.into(),
        });
    }

    pub fn delete(&mut self, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete { key: key.into() });
    }

    /// Applies the batch only while `key` still holds `value`.
    pub fn guard(&mut self, key: impl Into<Vec<u8>>, value: Option<Vec<u8>>) {
        self.guards.push(Guard {
            key: key.into(),
            value,
        });
    }
}

/// One stored key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// The storage engine under [`super::Store`]. See the module documentation
/// for the contract every implementation keeps.
pub trait Engine: Send + Sync + 'static {
    /// The value of `key` in the newest applied state.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Entries with `start <= key < end` (`end: None`: to the end of the key
    /// space), in key order, or in reverse key order when `reverse`; at most
    /// `limit` of them, taken from the first end of that order.
    fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Entry>>;

    /// Applies `batch` atomically if every guard holds; see the contract.
    fn apply(&self, batch: Batch) -> Result<()>;

    /// Makes every batch applied before the call durable.
    fn flush(&self) -> Result<()>;

    /// Bytes the engine's files take on disk (or in the cluster).
    fn size_on_disk(&self) -> Result<u64>;
}

/// The first key after every key that starts with `prefix` (`None`: there
/// is none, the prefix is all 0xff bytes), as etcd computes a prefix's
/// `range_end`.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn a_prefix_ends_at_the_next_key_that_does_not_start_with_it() {
        assert_eq!(prefix_end(b"v/"), Some(b"v0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
