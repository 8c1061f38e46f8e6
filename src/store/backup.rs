//! The backup file format: a JSON header line, length-prefixed key/value
//! records, and a SHA-256 trailer over everything before it. Values are the
//! stored bytes as they are (sealed content stays sealed).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

pub const FORMAT: &str = "promptreg-backup";
pub const VERSION: u32 = 1;

/// The first line of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupHeader {
    pub format: String,
    pub version: u32,
    pub schema: u32,
    pub revision: u64,
    pub entries: u64,
    pub encryption_key_id: Option<String>,
    pub created_at: String,
}

/// Writes a complete backup into memory.
pub fn encode(header: &BackupHeader, entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = serde_json::to_vec(header).expect("header serialises");
    out.push(b'\n');
    for (key, value) in entries {
        for part in [key.as_slice(), value.as_slice()] {
            out.extend_from_slice(&u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    let checksum = Sha256::digest(&out);
    out.extend_from_slice(&checksum);
    out
}

/// Raw key/value records of a backup.
pub type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// Reads and checks a backup: format, version, checksum, record framing.
pub fn decode(bytes: &[u8]) -> Result<(BackupHeader, Records), String> {
    if bytes.len() < 32 {
        return Err("the file is too short to be a backup".into());
    }
    let (body, checksum) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != checksum {
        return Err("the checksum does not match: the file is truncated or altered".into());
    }
    let newline = body
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("no header line")?;
    let header: BackupHeader = serde_json::from_slice(&body[..newline])
        .map_err(|e| format!("the header is not a promptreg backup header: {e}"))?;
    if header.format != FORMAT || header.version != VERSION {
        return Err(format!(
            "unsupported backup {} version {}",
            header.format, header.version
        ));
    }
    let mut rest = &body[newline + 1..];
    let take = |rest: &mut &[u8]| -> Result<Vec<u8>, String> {
        if rest.len() < 4 {
            return Err("a record is cut short".into());
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if rest.len() < 4 + len {
            return Err("a record is cut short".into());
        }
        let part = rest[4..4 + len].to_vec();
        *rest = &rest[4 + len..];
        Ok(part)
    };
    let mut entries = Vec::new();
    while !rest.is_empty() {
        let key = take(&mut rest)?;
        let value = take(&mut rest)?;
        entries.push((key, value));
    }
    if entries.len() as u64 != header.entries {
        return Err(format!(
            "the header promises {} records, the file has {}",
            header.entries,
            entries.len()
        ));
    }
    Ok((header, entries))
}

/// Writes a decoded backup into `dir`, which must be empty or missing.
pub fn restore_into(
    dir: &Path,
    header: &BackupHeader,
    entries: Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<(), String> {
    if dir.exists() {
        let mut listing =
            std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        if listing.next().is_some() {
            return Err(format!(
                "{} is not empty; restore only into an empty or new directory",
                dir.display()
            ));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let engine = super::sled::SledEngine::open(dir, super::DEFAULT_CACHE_BYTES)
        .map_err(|e| format!("cannot create the store: {e}"))?;
    let mut batch = super::Batch::default();
    for (key, value) in entries {
        batch.put(key, value);
    }
    use super::Engine as _;
    engine
        .apply(batch)
        .map_err(|e| format!("writing the store failed: {e}"))?;
    engine
        .flush()
        .map_err(|e| format!("flushing the store failed: {e}"))?;
    if let Some(id) = &header.encryption_key_id {
        std::fs::write(dir.join(super::ENCRYPTION_MARKER), format!("{id}\n"))
            .map_err(|e| format!("cannot write the encryption marker: {e}"))?;
    }
    Ok(())
}

/// Writes a decoded backup under an etcd prefix, which must be empty.
///
/// A backup is larger than one etcd transaction, so it goes in batches of
/// at most 100 records and 1 MiB; the schema stamp and the head revision go
/// in the last one, so a server refuses a prefix whose restore did not end
/// (it finds records but no schema: restore again into an emptied prefix).
pub fn restore_into_etcd(
    config: &super::etcd::EtcdConfig,
    entries: Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<(), String> {
    use super::keys::{KEY_HEAD, KEY_SCHEMA};
    use super::Engine as _;
    let engine = super::etcd::EtcdEngine::open(config)
        .map_err(|e| format!("cannot reach the etcd cluster: {e}"))?;
    let held = engine
        .range(b"", None, false, 1)
        .map_err(|e| format!("cannot read the etcd prefix: {e}"))?;
    if !held.is_empty() {
        return Err(format!(
            "the etcd prefix {:?} is not empty; restore only into an empty prefix \
             (after a restore that did not finish: etcdctl del --prefix {:?})",
            config.prefix, config.prefix
        ));
    }
    let (last, rest): (Vec<_>, Vec<_>) = entries
        .into_iter()
        .partition(|(key, _)| key == KEY_HEAD || key == KEY_SCHEMA);
    let write = |batch: super::Batch| {
        engine
            .apply(batch)
            .map_err(|e| format!("writing to etcd failed: {e}"))
    };
    // Every batch is guarded on the schema stamp's absence: nothing else
    // may have started on the prefix meanwhile.
    let fresh = || {
        let mut batch = super::Batch::default();
        batch.guard(KEY_SCHEMA, None);
        batch
    };
    let mut batch = fresh();
    let mut bytes = 0;
    for (key, value) in rest {
        if batch.ops.len() >= 100 || bytes + key.len() + value.len() > 1024 * 1024 {
            write(std::mem::replace(&mut batch, fresh()))?;
            bytes = 0;
        }
        bytes += key.len() + value.len();
        batch.put(key, value);
    }
    if !batch.ops.is_empty() {
        write(batch)?;
    }
    let mut batch = fresh();
    for (key, value) in last {
        batch.put(key, value);
    }
    write(batch)
}
