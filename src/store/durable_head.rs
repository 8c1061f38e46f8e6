//! The durable head: a small file beside the store recording how far the
//! store was known to be durable, where sled's recovery cannot roll it back.
//!
//! sled recovers from a damaged file by dropping the damaged tail of its log,
//! and the result is a store that is consistent but *older*: acknowledged
//! revisions are gone and nothing inside the store can tell. So every
//! successful [`super::Store::flush`] also records, in this file, the head
//! revision and ledger head it made durable, and start-up and `promptreg
//! check` refuse a store that is behind what the file says.
//!
//! The file holds two fixed-size slots written alternately in place, each
//! with a counter and a checksum, and `fdatasync`ed after each write. A write
//! torn by a crash damages only the slot being written; the other still holds
//! the value before it, which the store has reached. So an update costs one
//! small write and one `fdatasync`, with no rename and no new disk space (a
//! full disk does not stop it).

use crate::provenance::LedgerHead;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;

/// The file's name in the data directory.
pub const FILE_NAME: &str = "DURABLE_HEAD";

const MAGIC: &[u8; 4] = b"PRDH";
const SLOT_BYTES: usize = 192;
/// magic, counter, revision, ledger sequence, hash length.
const FIXED_BYTES: usize = 4 + 8 + 8 + 8 + 1;
const CHECKSUM_BYTES: usize = 8;
const MAX_HASH_BYTES: usize = SLOT_BYTES - FIXED_BYTES - CHECKSUM_BYTES;

/// What a flush made durable: the head revision and the ledger head.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DurableHead {
    pub revision: u64,
    pub ledger: LedgerHead,
}

impl DurableHead {
    /// Whether `self` is at or past `other` in both the change log and the
    /// ledger.
    fn covers(&self, other: &DurableHead) -> bool {
        self.revision >= other.revision && self.ledger.sequence >= other.ledger.sequence
    }
}

/// The open file, with what it says now.
pub struct DurableHeadFile {
    file: File,
    state: Mutex<Written>,
}

struct Written {
    head: DurableHead,
    /// The counter of the newest valid slot (0: none written yet).
    counter: u64,
}

impl DurableHeadFile {
    /// Opens the file in `dir`, creating it (empty) when it is missing.
    /// `Ok(None)` inside: the file says nothing yet (new, or from a build
    /// before it existed).
    pub fn open(dir: &Path) -> std::io::Result<(DurableHeadFile, Option<DurableHead>)> {
        let path = dir.join(FILE_NAME);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let mut bytes = vec![0u8; 2 * SLOT_BYTES];
        let read = read_up_to(&file, &mut bytes)?;
        let newest = bytes[..read]
            .chunks(SLOT_BYTES)
            .filter_map(decode_slot)
            .max_by_key(|(counter, _)| *counter);
        let (counter, head) = match newest {
            Some((counter, head)) => (counter, Some(head)),
            None => (0, None),
        };
        let state = Written {
            head: head.clone().unwrap_or_default(),
            counter,
        };
        Ok((
            DurableHeadFile {
                file,
                state: Mutex::new(state),
            },
            head,
        ))
    }

    /// Records `head` as durable, unless the file already says as much.
    /// Never moves backwards: a store found behind the file is refused
    /// before anything flushes, and concurrent flushes may finish out of
    /// order. After this returns, `head` survives a crash.
    pub fn advance(&self, head: &DurableHead) -> std::io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.counter > 0 && (state.head.covers(head) || !head.covers(&state.head)) {
            return Ok(());
        }
        let counter = state.counter + 1;
        let slot = encode_slot(counter, head);
        self.file
            .write_all_at(&slot, (counter % 2) * SLOT_BYTES as u64)?;
        self.file.sync_data()?;
        state.counter = counter;
        state.head = head.clone();
        Ok(())
    }
}

fn read_up_to(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn checksum(bytes: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let digest = Sha256::digest(bytes);
    let mut out = [0u8; CHECKSUM_BYTES];
    out.copy_from_slice(&digest[..CHECKSUM_BYTES]);
    out
}

fn encode_slot(counter: u64, head: &DurableHead) -> Vec<u8> {
    let hash = head.ledger.hash.as_bytes();
    // Ledger hashes are 64 hex digits; a longer one is cut rather than
    // refused (it then never matches, and start-up says so).
    let hash = &hash[..hash.len().min(MAX_HASH_BYTES)];
    let mut slot = Vec::with_capacity(SLOT_BYTES);
    slot.extend_from_slice(MAGIC);
    slot.extend_from_slice(&counter.to_be_bytes());
    slot.extend_from_slice(&head.revision.to_be_bytes());
    slot.extend_from_slice(&head.ledger.sequence.to_be_bytes());
    slot.push(hash.len() as u8);
    slot.extend_from_slice(hash);
    slot.resize(SLOT_BYTES - CHECKSUM_BYTES, 0);
    let sum = checksum(&slot);
    slot.extend_from_slice(&sum);
    slot
}

fn decode_slot(slot: &[u8]) -> Option<(u64, DurableHead)> {
    if slot.len() != SLOT_BYTES || &slot[..4] != MAGIC {
        return None;
    }
    let (body, sum) = slot.split_at(SLOT_BYTES - CHECKSUM_BYTES);
    if checksum(body) != sum {
        return None;
    }
    let number = |at: usize| u64::from_be_bytes(body[at..at + 8].try_into().unwrap_or_default());
    let hash_len = usize::from(body[28]);
    let hash = body.get(FIXED_BYTES..FIXED_BYTES + hash_len)?;
    Some((
        number(4),
        DurableHead {
            revision: number(12),
            ledger: LedgerHead {
                sequence: number(20),
                hash: String::from_utf8(hash.to_vec()).ok()?,
            },
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(revision: u64, sequence: u64) -> DurableHead {
        DurableHead {
            revision,
            ledger: LedgerHead {
                sequence,
                hash: format!("{:064x}", revision * 1000 + sequence),
            },
        }
    }

    fn reopen(dir: &Path) -> Option<DurableHead> {
        DurableHeadFile::open(dir).expect("open").1
    }

    #[test]
    fn a_new_file_says_nothing_and_an_advanced_one_says_the_newest_head() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (file, found) = DurableHeadFile::open(dir.path()).expect("open");
        assert_eq!(found, None);
        for n in 1..=5 {
            file.advance(&head(n, n + 1)).expect("advance");
        }
        drop(file);
        assert_eq!(reopen(dir.path()), Some(head(5, 6)));
    }

    #[test]
    fn the_head_never_moves_backwards() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (file, _) = DurableHeadFile::open(dir.path()).expect("open");
        file.advance(&head(10, 10)).expect("advance");
        file.advance(&head(9, 12)).expect("advance");
        file.advance(&head(12, 9)).expect("advance");
        file.advance(&head(10, 10)).expect("advance");
        drop(file);
        assert_eq!(reopen(dir.path()), Some(head(10, 10)));
    }

    #[test]
    fn a_torn_slot_falls_back_to_the_one_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (file, _) = DurableHeadFile::open(dir.path()).expect("open");
        file.advance(&head(1, 1)).expect("advance");
        file.advance(&head(2, 2)).expect("advance");
        drop(file);
        // Counter 2 lives in slot 0: damage it as a torn write would.
        let path = dir.path().join(FILE_NAME);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[40] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        assert_eq!(reopen(dir.path()), Some(head(1, 1)));
    }
}
