//! Encryption at rest: AES-256-GCM (ring) for the content of versions.
//!
//! Each sealed record gets a fresh random 96-bit nonce, and the record's key
//! is the associated data, so a ciphertext cannot be moved to another record
//! unnoticed. The data key never leaves its file; the store keeps only its
//! id, so a wrong key is recognised before anything is read or written.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Why a data key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DataKeyError {
    #[error("cannot read the encryption key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the encryption key file {path} holds {len} bytes; it must hold exactly 32 random bytes (make one with `promptreg keys gen-data-key FILE`)")]
    Length { path: PathBuf, len: usize },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A 256-bit data key and its id.
pub struct DataKey {
    key: LessSafeKey,
    pub key_id: String,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// A sealed blob as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sealed {
    pub key_id: String,
    pub nonce: String,
    pub ciphertext: String,
}

impl DataKey {
    pub fn load(path: &Path) -> Result<DataKey, DataKeyError> {
        let bytes = std::fs::read(path).map_err(|source| DataKeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes).ok_or(DataKeyError::Length {
            path: path.to_path_buf(),
            len: bytes.len(),
        })
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<DataKey> {
        if bytes.len() != 32 {
            return None;
        }
        let mut id_input = b"promptreg.data-key.v1\n".to_vec();
        id_input.extend_from_slice(bytes);
        let key_id = hex::encode(&Sha256::digest(&id_input)[..8]);
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).ok()?);
        Some(DataKey { key, key_id })
    }

    /// Writes 32 random bytes to a new file with mode 0600.
    pub fn generate_file(path: &Path) -> Result<String, DataKeyError> {
        let mut bytes = [0u8; 32];
        let write_err = |source| DataKeyError::Write {
            path: path.to_path_buf(),
            source,
        };
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| write_err(std::io::Error::other("no system randomness")))?;
        crate::provenance::write_private(path, &bytes).map_err(write_err)?;
        Ok(Self::from_bytes(&bytes)
            .map(|k| k.key_id)
            .unwrap_or_default())
    }

    pub fn seal(&self, record_key: &[u8], plaintext: &[u8]) -> Sealed {
        let mut nonce = [0u8; NONCE_LEN];
        // The system RNG failing leaves nothing safe to do.
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("system randomness");
        let mut buffer = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(record_key),
                &mut buffer,
            )
            .expect("AES-GCM sealing of an in-memory buffer");
        Sealed {
            key_id: self.key_id.clone(),
            nonce: hex::encode(nonce),
            ciphertext: hex::encode(buffer),
        }
    }

    pub fn open(&self, record_key: &[u8], sealed: &Sealed) -> Result<Vec<u8>, String> {
        if sealed.key_id != self.key_id {
            return Err(format!(
                "sealed with data key {}, not {}",
                sealed.key_id, self.key_id
            ));
        }
        let nonce: [u8; NONCE_LEN] = hex::decode(&sealed.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or("the nonce is not 12 hex bytes")?;
        let mut buffer = hex::decode(&sealed.ciphertext)
            .map_err(|e| format!("the ciphertext is not hex: {e}"))?;
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(record_key),
                &mut buffer,
            )
            .map_err(|_| "decryption failed: the record was altered or moved".to_string())?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.key");
        let id = DataKey::generate_file(&path).unwrap();
        let key = DataKey::load(&path).unwrap();
        assert_eq!(key.key_id, id);
        let sealed = key.seal(b"v/p", b"secret template");
        assert!(!sealed.ciphertext.contains(&hex::encode("secret")));
        assert_eq!(key.open(b"v/p", &sealed).unwrap(), b"secret template");
        assert!(
            key.open(b"v/q", &sealed).is_err(),
            "bound to its record key"
        );
        let mut altered = sealed.clone();
        altered.ciphertext.replace_range(
            0..2,
            if &altered.ciphertext[0..2] == "00" {
                "01"
            } else {
                "00"
            },
        );
        assert!(key.open(b"v/p", &altered).is_err());
        let other = dir.path().join("short.key");
        std::fs::write(&other, [0u8; 16]).unwrap();
        assert!(DataKey::load(&other)
            .unwrap_err()
            .to_string()
            .contains("exactly 32"));
    }
}
