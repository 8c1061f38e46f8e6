//! Ed25519 signing keys (ring): generation, PKCS#8 files, key ids.

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the signing key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the signing key {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an Ed25519 PKCS#8 key: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("generating a signing key failed")]
    Generate,
}

/// A signing key pair and its id.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pub key_id: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// The key id: the first 16 hex digits of SHA-256 over the raw public key.
pub fn key_id_of(public_key: &[u8]) -> String {
    hex::encode(&Sha256::digest(public_key)[..8])
}

impl SigningKey {
    /// Generates a key and writes it as PKCS#8 into `dir/{key_id}.pk8` with
    /// mode 0600.
    pub fn generate_into(dir: &Path) -> Result<SigningKey, KeyError> {
        let pkcs8 =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Generate)?;
        let key_id = key_id_of(pair.public_key().as_ref());
        let path = dir.join(format!("{key_id}.pk8"));
        let write_err = |source| KeyError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(write_err)?;
        crate::provenance::write_private(&path, pkcs8.as_ref()).map_err(write_err)?;
        Ok(SigningKey { pair, key_id })
    }

    /// Loads a PKCS#8 Ed25519 key file.
    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let pair =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(&bytes).map_err(|e| KeyError::Invalid {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let key_id = key_id_of(pair.public_key().as_ref());
        Ok(SigningKey { pair, key_id })
    }

    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

/// Checks an Ed25519 signature made over `message` by `public_key`.
pub fn verify_signature(public_key: &[u8], message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(message, signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate_into(dir.path()).unwrap();
        let path = dir.path().join(format!("{}.pk8", key.key_id));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let signature = key.sign(b"hello");
        assert!(verify_signature(&key.public_key(), b"hello", &signature));
        assert!(!verify_signature(&key.public_key(), b"hellO", &signature));
        let again = SigningKey::load(&path).unwrap();
        assert_eq!(again.key_id, key.key_id);
        assert_eq!(key.key_id.len(), 16);
    }

    #[test]
    fn a_bad_key_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.pk8");
        std::fs::write(&path, b"not a key").unwrap();
        let error = SigningKey::load(&path).unwrap_err();
        assert!(error.to_string().contains("bad.pk8"), "{error}");
    }
}
