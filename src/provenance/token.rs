//! Bearer token secrets: how they are made, recognised and stored.
//!
//! A token is `prt_`, 30 random base62 characters (178 bits from the
//! system's CSPRNG), then 6 base62 characters of the CRC-32 of those 30:
//! `prt_` lets secret scanners find a leaked token, the checksum lets them
//! (and the server) tell a token from random text without a lookup. The
//! registry stores only the SHA-256 of the whole token, so its store, its
//! backups and its ledger never hold a usable secret.

use ring::rand::{SecureRandom, SystemRandom};

/// What every token starts with.
pub const TOKEN_PREFIX: &str = "prt_";
const RANDOM_CHARS: usize = 30;
const CHECKSUM_CHARS: usize = 6;
/// The length of a token, prefix included.
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + RANDOM_CHARS + CHECKSUM_CHARS;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new token secret.
pub fn generate_token() -> Result<String, super::KeyError> {
    let rng = SystemRandom::new();
    let mut token = String::with_capacity(TOKEN_LEN);
    token.push_str(TOKEN_PREFIX);
    while token.len() < TOKEN_PREFIX.len() + RANDOM_CHARS {
        let mut bytes = [0u8; 32];
        rng.fill(&mut bytes)
            .map_err(|_| super::KeyError::Random("the system's random source failed"))?;
        // 248 = 4 × 62: rejecting bytes above it keeps every character
        // equally likely.
        for byte in bytes.into_iter().filter(|b| *b < 248) {
            if token.len() == TOKEN_PREFIX.len() + RANDOM_CHARS {
                break;
            }
            token.push(BASE62[usize::from(byte % 62)] as char);
        }
    }
    let checksum = checksum(&token.as_bytes()[TOKEN_PREFIX.len()..]);
    token.extend(checksum.iter().map(|b| char::from(*b)));
    Ok(token)
}

/// Whether `raw` has the form of a token (prefix, length, alphabet,
/// checksum). Says nothing about whether the token exists. On every
/// authenticated request, so it allocates nothing.
pub fn is_well_formed(raw: &str) -> bool {
    let Some(body) = raw.strip_prefix(TOKEN_PREFIX) else {
        return false;
    };
    // The base62 alphabet is exactly the ASCII letters and digits.
    if body.len() != RANDOM_CHARS + CHECKSUM_CHARS
        || !body.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return false;
    }
    let (random, check) = body.split_at(RANDOM_CHARS);
    checksum(random.as_bytes()) == check.as_bytes()
}

/// How a token is stored and looked up: SHA-256, lower-case hex.
pub fn token_hash(token: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut hash = String::with_capacity(2 * digest.as_ref().len());
    for byte in digest.as_ref() {
        hash.push(char::from(HEX[usize::from(byte >> 4)]));
        hash.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    hash
}

/// CRC-32 (IEEE, reflected polynomial 0xEDB88320), one entry per byte value.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// The CRC-32 (IEEE) of `bytes` in 6 base62 digits, most significant first.
fn checksum(bytes: &[u8]) -> [u8; CHECKSUM_CHARS] {
    let mut crc = 0xffff_ffffu32;
    for byte in bytes {
        crc = (crc >> 8) ^ CRC_TABLE[usize::from((crc as u8) ^ byte)];
    }
    let mut value = u64::from(!crc);
    let mut digits = [b'0'; CHECKSUM_CHARS];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(value % 62) as usize];
        value /= 62;
    }
    digits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_has_its_form_and_checks_out() {
        let token = generate_token().unwrap();
        assert_eq!(token.len(), TOKEN_LEN);
        assert!(token.starts_with("prt_"));
        assert!(is_well_formed(&token));
        assert_ne!(token, generate_token().unwrap());
    }

    #[test]
    fn one_changed_character_breaks_the_checksum() {
        let token = generate_token().unwrap();
        let mut bytes = token.into_bytes();
        bytes[10] = if bytes[10] == b'a' { b'b' } else { b'a' };
        let changed = String::from_utf8(bytes).unwrap();
        assert!(!is_well_formed(&changed));
        assert!(!is_well_formed("prt_short"));
        assert!(!is_well_formed("Bearer prt_"));
        assert!(!is_well_formed(""));
    }

    #[test]
    fn the_checksum_is_crc32() {
        // CRC-32 of "123456789" is 0xCBF43926 = 3421780262.
        let mut value = 3_421_780_262u64;
        let mut expected = Vec::new();
        for _ in 0..6 {
            expected.push(BASE62[(value % 62) as usize]);
            value /= 62;
        }
        expected.reverse();
        assert_eq!(checksum(b"123456789").as_slice(), expected.as_slice());
    }

    #[test]
    fn the_hash_is_sha256_hex() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
