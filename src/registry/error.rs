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
    #[error("the data directory {dir} is in use by another promptreg process ({holder}); stop it or choose another --data-dir")]
    DataDirLocked { dir: PathBuf, holder: String },
    #[error("cannot use the data directory {dir}: {source}")]
    DataDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] crate::provenance::KeyError),
    #[error(transparent)]
    DataKey(#[from] crate::store::DataKeyError),
    #[error("{0}")]
    Exhausted(String),
    #[error("the change could not be made durable and was not acknowledged: {0}")]
    NotDurable(String),
    /// The store refuses writes now (full disk, failing flushes, stuck
    /// storage); see [`disk::WriteHealth`].
    #[error("{0}")]
    Unwritable(String),
    #[error("the store in {dir} is damaged: {reason}. Run `promptreg check --data-dir {dir}` for a full report, and restore from a backup with `promptreg restore`")]
    Damaged { dir: PathBuf, reason: String },
}

pub type Result<T> = std::result::Result<T, RegistryError>;
