//! Ed25519 signing keys (ring): generation, PKCS#8 files (DER, or PEM as
//! `openssl genpkey -algorithm ed25519` writes it), key ids.

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
    #[error("{path} is not an Ed25519 PKCS#8 key (DER, or PEM `BEGIN PRIVATE KEY`): {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("the signing key {path} can be read by other users (mode {mode:04o}); a private key must be readable by its owner only: run `chmod 600 {path}`")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("generating a signing key failed")]
    Generate,
    /// The system's random source failed (making a token).
    #[error("{0}")]
    Random(&'static str),
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
    /// mode 0600, in a directory of mode 0700 (see [`secure_keys_dir`]).
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
        secure_keys_dir(dir).map_err(write_err)?;
        crate::provenance::write_private(&path, pkcs8.as_ref()).map_err(write_err)?;
        Ok(SigningKey { pair, key_id })
    }

    /// Loads a PKCS#8 Ed25519 key file, DER or PEM. Refuses a file that
    /// users other than its owner can read or write.
    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let read_err = |source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        };
        let invalid = |reason: String| KeyError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        check_private(path, &std::fs::metadata(path).map_err(read_err)?)?;
        let bytes = std::fs::read(path).map_err(read_err)?;
        let der = if looks_like_pem(&bytes) {
            pem_private_key(&bytes).map_err(invalid)?
        } else {
            bytes
        };
        let pair =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|e| invalid(e.to_string()))?;
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

/// Creates the directory of the server's private keys if needed, and makes
/// it readable by its owner only (mode 0700), whatever the umask.
pub fn secure_keys_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Refuses a key file that its group or other users may access.
#[cfg(unix)]
fn check_private(path: &Path, metadata: &std::fs::Metadata) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path, _: &std::fs::Metadata) -> Result<(), KeyError> {
    Ok(())
}

/// PEM may have text before its block (RFC 7468); a DER key is a few
/// dozen binary bytes that never hold this text.
fn looks_like_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

/// The DER inside a PEM `PRIVATE KEY` block (RFC 7468), the form of
/// `openssl genpkey -algorithm ed25519`.
fn pem_private_key(bytes: &[u8]) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    const BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
    const END: &str = "-----END PRIVATE KEY-----";
    let text = std::str::from_utf8(bytes).map_err(|_| "the PEM text is not UTF-8".to_string())?;
    let Some(start) = text.find(BEGIN) else {
        let label = text
            .lines()
            .find(|line| line.contains("-----BEGIN "))
            .unwrap_or_default()
            .trim();
        return Err(format!(
            "it is PEM but {label:?} is not `{BEGIN}` (an unencrypted PKCS#8 key, as \
             `openssl genpkey -algorithm ed25519` writes)"
        ));
    };
    let body = &text[start + BEGIN.len()..];
    let end = body
        .find(END)
        .ok_or_else(|| format!("the PEM block has no `{END}` line"))?;
    let base64: String = body[..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(base64)
        .map_err(|e| format!("the PEM block is not valid base64: {e}"))
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

    /// Writes `bytes` to `dir/name` with mode 0600.
    fn private_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        crate::provenance::write_private(&path, bytes).unwrap();
        path
    }

    #[test]
    fn a_bad_key_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = private_file(dir.path(), "bad.pk8", b"not a key");
        let error = SigningKey::load(&path).unwrap_err();
        assert!(matches!(error, KeyError::Invalid { .. }), "{error}");
        assert!(error.to_string().contains("bad.pk8"), "{error}");
    }

    /// Written by `openssl genpkey -algorithm ed25519` (OpenSSL 3).
    const OPENSSL_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIFi+h2Tvz69rUG8oTzMqqxnTgtoHA3Qn6Fz3w911XdlC
-----END PRIVATE KEY-----
";

    #[test]
    fn a_pem_key_loads_like_its_der() {
        let dir = tempfile::tempdir().unwrap();
        let pem = private_file(dir.path(), "k.pem", OPENSSL_PEM.as_bytes());
        let key = SigningKey::load(&pem).unwrap();
        // `openssl pkey -in k.pem -pubout -outform DER | tail -c 32 | sha256sum`
        assert_eq!(key.key_id, "6979c27e4e724ea4");
        // With CRLF line ends and text around it, as files passed around do.
        let crlf = format!("a comment\r\n{}", OPENSSL_PEM.replace('\n', "\r\n"));
        let pem = private_file(dir.path(), "crlf.pem", crlf.as_bytes());
        assert_eq!(SigningKey::load(&pem).unwrap().key_id, key.key_id);

        let other = private_file(
            dir.path(),
            "rsa.pem",
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        let error = SigningKey::load(&other).unwrap_err().to_string();
        assert!(
            error.contains("rsa.pem") && error.contains("ENCRYPTED PRIVATE KEY"),
            "{error}"
        );
        let broken = private_file(
            dir.path(),
            "broken.pem",
            b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
        );
        let error = SigningKey::load(&broken).unwrap_err().to_string();
        assert!(error.contains("not valid base64"), "{error}");
    }

    #[cfg(unix)]
    #[test]
    fn a_key_others_can_read_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate_into(&dir.path().join("keys")).unwrap();
        let keys = dir.path().join("keys");
        assert_eq!(
            std::fs::metadata(&keys).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let path = keys.join(format!("{}.pk8", key.key_id));
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let error = SigningKey::load(&path).unwrap_err().to_string();
            assert!(
                error.contains(&format!("{}", path.display()))
                    && error.contains(&format!("chmod 600 {}", path.display())),
                "{error}"
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(SigningKey::load(&path).unwrap().key_id, key.key_id);
    }
}
