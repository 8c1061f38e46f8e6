//! Values handed out many times, each with a slot for its wire encoding.

use crate::domain::Version;

/// Something the registry hands out many times, with a slot for its
/// encoding on the wire: the first answer that sends it fills the slot, and
/// every later one sends the same bytes. (The registry does not know the
/// encoding; the transport does.) A revision fanned out to every watcher
/// and a version resolved by every agent are encoded once each.
#[derive(Debug)]
pub struct Encodable<T> {
    value: T,
    encoded: std::sync::OnceLock<bytes::Bytes>,
}

impl<T> Encodable<T> {
    pub fn new(value: T) -> Encodable<T> {
        Encodable {
            value,
            encoded: std::sync::OnceLock::new(),
        }
    }

    /// The encoding, made by `encode` if nobody made it yet.
    pub fn encoded_with(&self, encode: impl FnOnce(&T) -> bytes::Bytes) -> bytes::Bytes {
        self.encoded.get_or_init(|| encode(&self.value)).clone()
    }
}

impl<T> std::ops::Deref for Encodable<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: PartialEq> PartialEq for Encodable<T> {
    fn eq(&self, other: &Encodable<T>) -> bool {
        self.value == other.value
    }
}

/// A version as the resolve path hands it out: immutable, so one encoding
/// serves every resolve of it.
pub type SharedVersion = Encodable<Version>;
