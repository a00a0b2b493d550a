//! Branch parameters, tags and loop detection (RFC 3261 §16.6 item 8 and §16.3 item 4).
//!
//! A branch the proxy writes is `z9hG4bK` + `sl` + a 16-hex-digit hash of what decides the
//! request's routing (Request-URI, Call-ID, CSeq number, From and To tags) + `.` + 16 hex
//! digits of a keyed hash of a counter. The counter makes every forwarded request's branch
//! unique; the loop hash lets the proxy tell a loop (the same request back again: 482) from
//! a spiral (re-targeted: new Request-URI).
//!
//! Both hashes are keyed with the process's [`Secret`], so a caller who sees many of the
//! proxy's branches (every request relayed to it carries one) cannot predict the next one
//! and forge a gateway's response to it; tags the proxy writes are keyed the same way.

use std::hash::{BuildHasher, Hash, RandomState};

use crate::sip::via::MAGIC_COOKIE;
use crate::sip::{HeaderName, Message};

const MARK: &[u8] = b"sl";

/// A per-process random key (SipHash-1-3 with 128 bits from the OS's randomness, through
/// std's `RandomState`) for every value the proxy writes that a caller must not predict.
#[derive(Clone, Debug)]
pub struct Secret {
    keys: RandomState,
    /// The runtime's start time: mixed in, so two runs differ even if the keys did not.
    seed: u64,
}

impl Secret {
    pub fn new(seed: u64) -> Self {
        Self { keys: RandomState::new(), seed }
    }

    /// The keyed hash of `value`.
    pub fn hash<T: Hash>(&self, value: T) -> u64 {
        self.keys.hash_one((self.seed, value))
    }
}

/// The loop-detection component of a request.
pub fn loop_hash(secret: &Secret, msg: &Message<'_>) -> u64 {
    secret.hash((
        msg.request_uri(),
        msg.call_id(),
        msg.cseq().map(|(n, _)| n),
        msg.tag(HeaderName::From),
        msg.tag(HeaderName::To),
    ))
}

/// A new branch for a request with loop hash `hash`; `seq` must be unique per process.
pub fn make(secret: &Secret, hash: u64, seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(41);
    out.extend_from_slice(MAGIC_COOKIE);
    out.extend_from_slice(MARK);
    push_hex(&mut out, hash);
    out.push(b'.');
    push_hex(&mut out, secret.hash((b'b', seq)));
    out
}

/// The loop hash inside a branch this proxy wrote, if it is one.
pub fn hash_of(branch: &[u8]) -> Option<u64> {
    let rest = branch.strip_prefix(MAGIC_COOKIE)?.strip_prefix(MARK)?;
    let hex = rest.get(..16)?;
    u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// A tag or identifier token: 16 hex digits of the keyed hash of `value`.
pub fn token<T: Hash>(secret: &Secret, value: T) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    push_hex(&mut out, secret.hash((b't', value)));
    out
}

fn push_hex(out: &mut Vec<u8>, v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..16).rev() {
        out.push(HEX[((v >> (i * 4)) & 0xf) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_round_trip() {
        let s = Secret::new(0);
        let b = make(&s, 0xdead_beef_0123_4567, 42);
        assert!(b.starts_with(b"z9hG4bKsl"));
        assert_eq!(hash_of(&b), Some(0xdead_beef_0123_4567));
        assert_eq!(hash_of(b"z9hG4bK776asdhds"), None);
        assert_ne!(make(&s, 1, 1), make(&s, 1, 2));
    }

    #[test]
    fn branches_depend_on_the_secret() {
        // Two processes (two secrets) never write the same branch for the same request and
        // counter: the counter part is not something a caller can compute.
        let (a, b) = (Secret::new(0), Secret::new(0));
        let (ba, bb) = (make(&a, 7, 1), make(&b, 7, 1));
        assert_ne!(ba, bb);
        assert_eq!(ba.len(), 9 + 16 + 1 + 16, "64 bits of keyed hash after the dot");
        assert_ne!(token(&a, 5u64), token(&b, 5u64));
    }

    #[test]
    fn retargeting_changes_the_hash() {
        let a = crate::sip::parse(b"INVITE sip:1@a SIP/2.0\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n")
            .unwrap();
        let b = crate::sip::parse(b"INVITE sip:2@a SIP/2.0\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n")
            .unwrap();
        let s = Secret::new(0);
        assert_ne!(loop_hash(&s, &a), loop_hash(&s, &b));
        let a2 = crate::sip::parse(b"INVITE sip:1@a SIP/2.0\r\nVia: SIP/2.0/UDP other\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n").unwrap();
        assert_eq!(loop_hash(&s, &a), loop_hash(&s, &a2), "the top Via is not part of the hash");
    }
}
