//! The cluster engine: [`Engine`] on an etcd v3 cluster (etcd 3.4 or later),
//! every key under one prefix (`--etcd-prefix`, default `/promptreg/`).
//!
//! - **A batch is one etcd transaction**: its guards are the transaction's
//!   compares (a value compare, or `version == 0` for an absent key), its
//!   operations the success branch. etcd applies it atomically and returns
//!   only once the quorum committed it, so [`Engine::flush`] has nothing to
//!   do. A transaction whose compares fail is [`StoreError::Conflict`].
//! - **Registry revisions are the store's own gapless counter** (`meta/rev`,
//!   advanced and compared by every revision's transaction), not etcd's
//!   revision: etcd's revision also moves for writes that are not registry
//!   revisions (a token, a compaction batch), and a backup restored into
//!   etcd keeps its revision numbers.
//! - **Limits**: etcd refuses a request over `--max-request-bytes` (1.5 MiB
//!   by default) and a transaction over `--max-txn-ops` (128). A batch over
//!   either is refused here with a message naming the limit before it is
//!   sent; the largest revision (one version at the default template limit)
//!   is far below both.
//! - **Failures**: an endpoint that cannot be reached, a cluster without a
//!   leader or a quorum, and a request that runs past `--etcd-timeout` are
//!   [`StoreError::Unavailable`]. The engine tries every endpoint in turn
//!   until the deadline; a transaction that timed out may still commit later,
//!   which the registry finds when it next reads the head (its writes are
//!   guarded on it, so none lands twice).
//! - **Reads** are linearizable. When the cluster cannot serve one (no
//!   quorum), the read is served serializable from any member that answers,
//!   so what was committed stays readable while writes are refused.
//!
//! The engine is synchronous, as the contract is; it owns a small tokio
//! runtime for its gRPC connections and blocks the calling thread for the
//! round trip (the registry calls storage from blocking threads).

mod client;

pub use client::{pb, EtcdConfig, EtcdTls, Followed};

use super::engine::{prefix_end, Batch, Engine, Entry, Op};
use super::{DataKey, Result, StoreError};
use client::Cluster;
use std::sync::Arc;

impl Followed {
    /// Whether the change may have moved the head revision (a revision was
    /// committed).
    pub fn moves_head(&self) -> bool {
        match self {
            Followed::Key(key) => key == super::keys::KEY_HEAD,
            Followed::Anything => true,
        }
    }

    /// Whether the change may have created, revoked or altered a token.
    pub fn touches_tokens(&self) -> bool {
        match self {
            Followed::Key(key) => key.starts_with(b"t/"),
            Followed::Anything => true,
        }
    }
}

/// etcd's default `--max-request-bytes`.
pub const MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;
/// Entries fetched per range request.
const PAGE: usize = 128;

pub struct EtcdEngine {
    cluster: Cluster,
    prefix: Vec<u8>,
}

impl EtcdEngine {
    /// Connects to the cluster (lazily: the first request connects) and
    /// checks that one of its members answers.
    pub fn open(config: &EtcdConfig) -> Result<EtcdEngine> {
        let cluster = Cluster::connect(config)?;
        let engine = EtcdEngine {
            cluster,
            prefix: config.prefix.as_bytes().to_vec(),
        };
        engine.cluster.status()?;
        Ok(engine)
    }

    fn full_key(&self, key: &[u8]) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(&self.prefix);
        full.extend_from_slice(key);
        full
    }

    /// The end of the whole key space of this engine (the prefix's end).
    fn space_end(&self) -> Vec<u8> {
        // etcd's "\0" range end means "to the end of all keys".
        prefix_end(&self.prefix).unwrap_or_else(|| vec![0])
    }

    fn strip(&self, key: Vec<u8>) -> Vec<u8> {
        key[self.prefix.len().min(key.len())..].to_vec()
    }
}

impl EtcdEngine {
    /// Every change under the engine's prefix, as it is committed (see
    /// [`Cluster::follow`]).
    pub fn follow(&self) -> tokio::sync::mpsc::UnboundedReceiver<Followed> {
        self.cluster
            .follow(self.prefix.clone(), self.space_end(), self.prefix.len())
    }
}

impl Engine for EtcdEngine {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let request = pb::RangeRequest {
            key: self.full_key(key),
            ..Default::default()
        };
        let response = self.cluster.range(request)?;
        Ok(response.kvs.into_iter().next().map(|kv| kv.value))
    }

    fn range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Entry>> {
        if end.is_some_and(|end| start >= end) || limit == 0 {
            return Ok(Vec::new());
        }
        let mut low = self.full_key(start);
        let mut high = match end {
            Some(end) => self.full_key(end),
            None => self.space_end(),
        };
        let mut entries = Vec::new();
        while entries.len() < limit {
            let want = (limit - entries.len()).min(PAGE);
            let request = pb::RangeRequest {
                key: low.clone(),
                range_end: high.clone(),
                limit: want as i64,
                sort_order: if reverse {
                    pb::range_request::SortOrder::Descend
                } else {
                    pb::range_request::SortOrder::Ascend
                } as i32,
                sort_target: pb::range_request::SortTarget::Key as i32,
                ..Default::default()
            };
            let response = self.cluster.range(request)?;
            let got = response.kvs.len();
            let Some(last) = response.kvs.last().map(|kv| kv.key.clone()) else {
                break;
            };
            if reverse {
                high = last;
            } else {
                low = last;
                low.push(0);
            }
            entries.extend(
                response
                    .kvs
                    .into_iter()
                    .map(|kv| (self.strip(kv.key), kv.value)),
            );
            if got < want || !response.more {
                break;
            }
        }
        Ok(entries)
    }

    fn apply(&self, batch: Batch) -> Result<()> {
        let operations = batch.ops.len() + batch.guards.len();
        if batch.ops.len().max(batch.guards.len()) > MAX_TXN_OPS {
            return Err(StoreError::Precondition(format!(
                "this write needs {operations} operations in one etcd transaction; etcd allows \
                 {MAX_TXN_OPS} by default (raise the cluster's --max-txn-ops)"
            )));
        }
        // The guarded keys, for the message of a failed compare.
        let guarded = batch
            .guards
            .iter()
            .map(|guard| String::from_utf8_lossy(&guard.key).replace('\0', "/"))
            .collect::<Vec<_>>();
        let compare = batch
            .guards
            .into_iter()
            .map(|guard| {
                use pb::compare::{CompareResult, CompareTarget, TargetUnion};
                let (target, union) = match guard.value {
                    Some(value) => (CompareTarget::Value, TargetUnion::Value(value)),
                    None => (CompareTarget::Version, TargetUnion::Version(0)),
                };
                pb::Compare {
                    result: CompareResult::Equal as i32,
                    target: target as i32,
                    key: self.full_key(&guard.key),
                    target_union: Some(union),
                }
            })
            .collect::<Vec<_>>();
        let success = batch
            .ops
            .into_iter()
            .map(|op| {
                use pb::request_op::Request;
                let request = match op {
                    Op::Put { key, value } => Request::RequestPut(pb::PutRequest {
                        key: self.full_key(&key),
                        value,
                        lease: 0,
                    }),
                    Op::Delete { key } => Request::RequestDeleteRange(pb::DeleteRangeRequest {
                        key: self.full_key(&key),
                        range_end: Vec::new(),
                    }),
                };
                pb::RequestOp {
                    request: Some(request),
                }
            })
            .collect::<Vec<_>>();

        let request = pb::TxnRequest {
            compare,
            success,
            failure: Vec::new(),
        };
        let size = prost::Message::encoded_len(&request);
        if size > MAX_REQUEST_BYTES {
            return Err(StoreError::Precondition(format!(
                "this write is {size} bytes in one etcd transaction; etcd allows \
                 {MAX_REQUEST_BYTES} by default (lower --max-template-bytes, or raise the \
                 cluster's --max-request-bytes)"
            )));
        }
        if self.cluster.txn(request)?.succeeded {
            Ok(())
        } else {
            Err(StoreError::Conflict(guarded.join(", ")))
        }
    }

    fn flush(&self) -> Result<()> {
        // An etcd transaction is committed by the quorum when it returns.
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64> {
        Ok(self.cluster.status()?.db_size.max(0) as u64)
    }
}

impl super::Store {
    /// Opens (or creates) the store on an etcd cluster, under its prefix.
    /// The same checks as [`Store::open`]: the schema, and the data key the
    /// store was encrypted with (kept in the cluster, not in a local file).
    pub fn open_etcd(config: &EtcdConfig, data_key: Option<DataKey>) -> Result<super::Store> {
        let engine = Arc::new(EtcdEngine::open(config)?);
        let store = super::Store {
            engine: engine.clone(),
            data_key: data_key.map(Arc::new),
            #[cfg(feature = "testkit")]
            failing_flushes: Default::default(),
            durable_head: None,
            recorded_head: None,
            dir: None,
            cluster: Some(engine),
        };
        store.check_opened()?;
        Ok(store)
    }

    /// Whether the store lives on a cluster engine rather than in a local
    /// data directory.
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// On a cluster engine, every key that changes in the store, whoever
    /// wrote it; None on an embedded one (this process is its only writer).
    pub fn follow(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Followed>> {
        self.cluster.as_ref().map(|engine| engine.follow())
    }

    /// Applies the batch of one revision. On a cluster engine, a write
    /// that ran out of time may have been committed all the same, and one
    /// retried on another member after it was committed finds its own guard
    /// moved: in both cases the revision's log record says whether this
    /// write landed (a revision number is written once, by one batch).
    pub(super) fn apply_revision(
        &self,
        batch: super::Batch,
        revision: &crate::domain::Revision,
    ) -> Result<()> {
        match self.engine.apply(batch) {
            Err(error @ (StoreError::Unavailable(_) | StoreError::Conflict(_)))
                if self.is_cluster() =>
            {
                match self.revision(revision.revision) {
                    Ok(Some(stored)) if &stored == revision => Ok(()),
                    _ => Err(error),
                }
            }
            other => other,
        }
    }
}
