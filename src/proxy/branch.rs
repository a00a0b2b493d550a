//! Branch parameters, tags and loop detection (RFC 3261 §16.6 item 8 and §16.3 item 4).
//!
//! A branch the proxy writes is `z9hG4bK` + `sl` + a 16-hex-digit hash of what decides the
//! request's routing (Request-URI, Call-ID, CSeq number, From and To tags) + `.` + a counter.
//! The counter makes every forwarded request's branch unique; the hash lets the proxy tell a
//! loop (the same request back again: 482) from a spiral (re-targeted: new Request-URI).

use std::hash::{DefaultHasher, Hash, Hasher};

use crate::sip::via::MAGIC_COOKIE;
use crate::sip::{HeaderName, Message};

const MARK: &[u8] = b"sl";

/// The loop-detection component of a request.
pub fn loop_hash(msg: &Message<'_>) -> u64 {
    let mut h = DefaultHasher::new();
    msg.request_uri().hash(&mut h);
    msg.call_id().hash(&mut h);
    msg.cseq().map(|(n, _)| n).hash(&mut h);
    msg.tag(HeaderName::From).hash(&mut h);
    msg.tag(HeaderName::To).hash(&mut h);
    h.finish()
}

/// A new branch for a request with loop hash `hash`; `seq` must be unique per process.
pub fn make(hash: u64, seq: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(40);
    out.extend_from_slice(MAGIC_COOKIE);
    out.extend_from_slice(MARK);
    push_hex(&mut out, hash);
    out.push(b'.');
    push_hex(&mut out, seq);
    out
}

/// The loop hash inside a branch this proxy wrote, if it is one.
pub fn hash_of(branch: &[u8]) -> Option<u64> {
    let rest = branch.strip_prefix(MAGIC_COOKIE)?.strip_prefix(MARK)?;
    let hex = rest.get(..16)?;
    u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
}

/// A tag or identifier token: 16 hex digits from a seed and a counter.
pub fn token(seed: u64, seq: u64) -> Vec<u8> {
    let mut h = DefaultHasher::new();
    (seed, seq).hash(&mut h);
    let mut out = Vec::with_capacity(16);
    push_hex(&mut out, h.finish());
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
        let b = make(0xdead_beef_0123_4567, 42);
        assert!(b.starts_with(b"z9hG4bKsl"));
        assert_eq!(hash_of(&b), Some(0xdead_beef_0123_4567));
        assert_eq!(hash_of(b"z9hG4bK776asdhds"), None);
        assert_ne!(make(1, 1), make(1, 2));
    }

    #[test]
    fn retargeting_changes_the_hash() {
        let a = crate::sip::parse(b"INVITE sip:1@a SIP/2.0\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n")
            .unwrap();
        let b = crate::sip::parse(b"INVITE sip:2@a SIP/2.0\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n")
            .unwrap();
        assert_ne!(loop_hash(&a), loop_hash(&b));
        let a2 = crate::sip::parse(b"INVITE sip:1@a SIP/2.0\r\nVia: SIP/2.0/UDP other\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n").unwrap();
        assert_eq!(loop_hash(&a), loop_hash(&a2), "the top Via is not part of the hash");
    }
}
