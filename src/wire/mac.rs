//! Authenticated frames: a MAC over a Native frame, with keyed BLAKE3.
//!
//! A bus built with [`BusBuilder::signing_key`](crate::BusBuilder::signing_key) writes
//! frames of version 2: a version-1 frame followed by a 32-byte MAC of every byte before it
//! (header included), keyed with a key derived from the user's key
//! (`blake3::derive_key`, so keys of any length work and a key used elsewhere is not reused
//! as is). It accepts only version-2 frames whose MAC verifies under its key or one of the
//! keys given with `accept_signing_key` (rotation); the comparison is constant-time
//! (`blake3::Hash`'s `PartialEq`). A bus without a key reads version-2 frames as well and
//! ignores their MAC.
//!
//! The MAC says who could write the frame, not when: a frame recorded from Redis can be
//! published again, and is then dropped as a duplicate by its sequence number, like any
//! replay.

use super::layout::MAC_LEN;

/// Context of the key derivation: a key derived for evbus frames is of no use elsewhere.
const CONTEXT: &str = "evbus 2026-11 native frame MAC";

/// A bus's frame keys: the one it signs with, and every one it accepts.
#[derive(Clone, Default)]
pub(crate) struct Keys {
    sign: Option<[u8; 32]>,
    accept: Vec<[u8; 32]>,
}

impl Keys {
    /// Keys from what the user gave: `sign` (also accepted) and older keys still accepted.
    pub(crate) fn new(sign: Option<&[u8]>, accept: &[Vec<u8>]) -> Self {
        let sign = sign.map(derive);
        let accept = sign
            .into_iter()
            .chain(accept.iter().map(|k| derive(k)))
            .collect();
        Keys { sign, accept }
    }

    /// Whether frames are signed and verified.
    pub(crate) fn enabled(&self) -> bool {
        self.sign.is_some()
    }

    /// Bytes the MAC adds to a frame: 0 without a key.
    pub(crate) fn overhead(&self) -> usize {
        if self.enabled() {
            MAC_LEN
        } else {
            0
        }
    }

    /// Appends the MAC of `frame` (a version-2 frame without its MAC) to it.
    pub(crate) fn seal(&self, frame: &mut Vec<u8>) {
        if let Some(key) = &self.sign {
            let mac = blake3::keyed_hash(key, frame);
            frame.extend_from_slice(mac.as_bytes());
        }
    }

    /// Whether `mac` is the MAC of `signed` under one of the accepted keys.
    pub(crate) fn verify(&self, signed: &[u8], mac: &[u8; MAC_LEN]) -> bool {
        let mac = blake3::Hash::from_bytes(*mac);
        self.accept
            .iter()
            .any(|key| blake3::keyed_hash(key, signed) == mac)
    }
}

/// Never shows a key.
impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("signs", &self.enabled())
            .field("accepted", &self.accept.len())
            .finish()
    }
}

fn derive(key: &[u8]) -> [u8; 32] {
    blake3::derive_key(CONTEXT, key)
}
