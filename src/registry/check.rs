//! `promptreg check`: an offline check of a stopped server's data directory.
//!
//! sled has no read-only mode: opening a store writes to it (the lock, the
//! main file, a new snapshot), and a damaged file can make it panic. So the
//! check copies the data directory to a private scratch directory, checks
//! the copy, and deletes it: the directory checked is left byte for byte as
//! it was. A panic inside the storage engine is contained and reported as a
//! finding. A data directory a running server holds is refused rather than
//! copied while it changes.

use super::{provenance, OpenError};
use crate::store::Store;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Every problem found, one sentence each; empty when the store is sound.
/// `Err` when the check could not run at all (no store there, a server
/// holds it, the key file or the scratch copy failed).
pub fn check_offline(
    dir: &Path,
    encryption_key_file: Option<&Path>,
) -> Result<Vec<String>, OpenError> {
    if !crate::store::exists_in(dir) {
        return Err(OpenError::NoStore(dir.to_path_buf()));
    }
    let io_err = |source| OpenError::DataDir {
        dir: dir.to_path_buf(),
        source,
    };
    // Held while copying, so that no server starts on the directory then.
    let _lock = hold_unused(dir)?;
    let data_key = match encryption_key_file {
        Some(path) => Some(crate::store::DataKey::load(path)?),
        None => None,
    };
    let scratch = Scratch::new().map_err(io_err)?;
    copy_store(dir, &scratch.0).map_err(|e| OpenError::DataDir {
        dir: dir.to_path_buf(),
        source: std::io::Error::new(
            e.kind(),
            format!("cannot copy it to {} to check: {e}", scratch.0.display()),
        ),
    })?;
    let copy = scratch.0.clone();
    let active_key = Arc::new(Mutex::new(None));
    let found = active_key.clone();
    let mut problems = contain_panics(move || check_copy(&copy, data_key, &found));
    let active_key = active_key.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(id) = active_key {
        problems.extend(check_signing_key(dir, &id));
    }
    Ok(problems)
}

/// The active signing key's file in `DATA_DIR/keys/`, when there is one (a
/// server started with `--signing-key FILE` keeps it elsewhere), must load
/// and be that key: a server refuses to start otherwise.
fn check_signing_key(dir: &Path, id: &str) -> Option<String> {
    let path = dir.join("keys").join(format!("{id}.pk8"));
    if !path.exists() {
        return None;
    }
    match crate::provenance::SigningKey::load(&path) {
        Ok(key) if key.key_id == id => None,
        Ok(key) => Some(format!(
            "{} holds signing key {}, not the active key {id} its name says",
            path.display(),
            key.key_id
        )),
        Err(e) => Some(format!("the active signing key cannot be used: {e}")),
    }
}

/// Checks the scratch copy. Anything that goes wrong reading it is a
/// finding, not an error. The active signing key's id goes to `active_key`.
fn check_copy(
    copy: &Path,
    data_key: Option<crate::store::DataKey>,
    active_key: &Mutex<Option<String>>,
) -> Vec<String> {
    let store = match Store::open(copy, data_key) {
        Ok(store) => store,
        Err(error @ crate::store::StoreError::Engine(_)) => return vec![error.to_string()],
        Err(error) => return vec![format!("the store cannot be opened: {error}")],
    };
    // As a start would: a torn tail that was never acknowledged is not a
    // problem, it is discarded (from the copy).
    if let Err(error) = super::open::discard_torn_tail(&store) {
        return vec![format!(
            "the store's unacknowledged tail cannot be discarded: {error}"
        )];
    }
    let mut problems = Vec::new();
    match store.active_key_id() {
        Ok(id) => *active_key.lock().unwrap_or_else(|e| e.into_inner()) = id,
        Err(e) => problems.push(format!("reading the active signing key's id failed: {e}")),
    }
    // The start-up check's quick part; its full part is the consistency
    // scan below, which lists every problem rather than the first.
    if let Err(reason) = store.check_heads() {
        problems.push(reason.to_string());
    }
    match store.check_consistency() {
        Ok(found) => problems.extend(found),
        Err(e) => problems.push(format!("reading the store failed: {e}")),
    }
    match provenance::verify_store(&store, None) {
        Ok(report) => problems.extend(report.problems),
        Err(e) => problems.push(format!("reading the audit ledger failed: {e}")),
    }
    problems
}

/// Runs `check` on its own thread and turns a panic there (or in a thread
/// the storage engine started meanwhile) into a finding, without the
/// default hook's message and backtrace on stderr.
fn contain_panics(check: impl FnOnce() -> Vec<String> + Send + 'static) -> Vec<String> {
    let (joined, panics) = crate::store::engine_panics::capturing_all(|| {
        std::thread::Builder::new()
            .name("check".to_string())
            .spawn(check)
            .map(|thread| thread.join())
    });
    let mut problems = match joined {
        Ok(Ok(problems)) => problems,
        Ok(Err(_)) => Vec::new(),
        Err(e) => vec![format!("cannot start the check: {e}")],
    };
    for message in panics {
        problems.push(format!(
            "the storage engine could not open the store: it failed with \"{message}\""
        ));
    }
    problems
}

/// Takes the data directory's lock without changing anything: the lock
/// file is opened read-only (and not created when missing: a server makes
/// it before it opens the store). A server holding it is named.
fn hold_unused(dir: &Path) -> Result<Option<File>, OpenError> {
    let path = dir.join("LOCK");
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(OpenError::DataDir {
                dir: dir.to_path_buf(),
                source,
            })
        }
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = match holder.trim() {
                "" => "pid unknown".to_string(),
                pid => format!("pid {pid}"),
            };
            Err(OpenError::CheckWhileServing {
                dir: dir.to_path_buf(),
                holder,
            })
        }
        Err(std::fs::TryLockError::Error(source)) => Err(OpenError::DataDir {
            dir: dir.to_path_buf(),
            source,
        }),
    }
}

/// A private directory (mode 0700) under the system's temporary directory
/// (`TMPDIR`), removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> std::io::Result<Scratch> {
        let base = std::env::temp_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt as _;
            builder.mode(0o700);
        }
        for attempt in 0..100u32 {
            let path = base.join(format!(
                "promptreg-check-{}-{nanos}-{attempt}",
                std::process::id()
            ));
            match builder.create(&path) {
                Ok(()) => return Ok(Scratch(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("no free scratch directory name in {}", base.display()),
        ))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies what the check reads: everything but the lock file and the
/// private signing keys (`keys/`), which the check does not need.
fn copy_store(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == "LOCK" || name == "keys" {
            continue;
        }
        copy_tree(&entry.path(), &to.join(name))?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let kind = std::fs::symlink_metadata(from)?.file_type();
    if kind.is_dir() {
        std::fs::create_dir(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else if kind.is_file() {
        std::fs::copy(from, to)?;
    }
    Ok(())
}
