//! The registry's error and result types.

use crate::domain::ValidationError;
use crate::store::StoreError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A new signing key could not be made (key rotation).
    #[error(transparent)]
    Key(#[from] crate::provenance::KeyError),
    /// The principal may not do this; the message names what it needed.
    #[error(transparent)]
    Denied(#[from] crate::domain::access::Denied),
    #[error("{0}")]
    Exhausted(String),
    #[error("the change could not be made durable and was not acknowledged: {0}")]
    NotDurable(String),
    /// The store refuses writes now (full disk, failing flushes, stuck
    /// storage); see [`disk::WriteHealth`].
    #[error("{0}")]
    Unwritable(String),
}

pub type Result<T> = std::result::Result<T, RegistryError>;

/// Why the registry did not start (`Registry::open`), or an offline check
/// could not run (`check_offline`). Kept apart from [`RegistryError`], the
/// errors of requests: none of these can happen to a request, and each
/// says what the operator does about it.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the data directory {dir} is in use by another promptreg process ({holder}); stop it or choose another --data-dir")]
    DataDirLocked { dir: PathBuf, holder: String },
    #[error("cannot use the data directory {dir}: {source}")]
    DataDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("the store in {dir} is damaged: {reason}. Run `promptreg check --data-dir {dir}` for a full report, and restore from a backup with `promptreg restore`")]
    Damaged { dir: PathBuf, reason: String },
    /// The signing key cannot be used as configured; the message says how
    /// to fix it.
    #[error("{0}")]
    SigningKey(String),
    #[error(transparent)]
    Key(#[from] crate::provenance::KeyError),
    #[error(transparent)]
    DataKey(#[from] crate::store::DataKeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the data directory {dir} is in use by a running promptreg server ({holder}): check works on a stopped server's directory; stop the server first, or check a copy restored from `promptreg backup`")]
    CheckWhileServing { dir: PathBuf, holder: String },
    #[error("{} holds no promptreg store", .0.display())]
    NoStore(PathBuf),
}
