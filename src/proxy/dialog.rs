//! Dialogs the proxy tracks (RFC 3261 §12, as a record-routing proxy sees them): which network
//! peer each side is, so in-dialog requests go to the other side even when devices ignore
//! Record-Route or sit behind NAT, and nothing else is relayed.

use bytes::Bytes;

use crate::peer::Peer;

/// A call as RFC 3261 identifies its dialog from the proxy's seat: the Call-ID and the
/// caller's From tag (the callee's tag is learned from the 2xx). Two INVITEs with one Call-ID
/// and different From tags are two calls: neither can end, replace or release the other.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallKey(Box<[u8]>);

impl CallKey {
    pub fn new(call_id: &[u8], caller_tag: &[u8]) -> Self {
        // Length-prefixed, so no Call-ID/tag pair can spell another pair's key.
        let len = u32::try_from(call_id.len()).unwrap_or(u32::MAX);
        let mut key = Vec::with_capacity(4 + call_id.len() + caller_tag.len());
        key.extend_from_slice(&len.to_be_bytes());
        key.extend_from_slice(call_id);
        key.extend_from_slice(caller_tag);
        Self(key.into_boxed_slice())
    }

    /// The key's bytes (what a nonce is bound to).
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// The Call-ID part, for logs.
    pub fn call_id(&self) -> &[u8] {
        let len = self.0.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map_or(0, u32::from_be_bytes);
        self.0.get(4..4 + len as usize).unwrap_or_default()
    }
}

impl std::fmt::Debug for CallKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CallKey({})", String::from_utf8_lossy(self.call_id()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// INVITE forwarded, no 2xx yet.
    Early,
    Confirmed,
    /// BYE seen; kept briefly so its response and retransmissions are still routed.
    Ending,
}

#[derive(Debug)]
pub struct Dialog {
    pub caller_tag: Bytes,
    pub callee_tag: Option<Bytes>,
    pub caller: Peer,
    pub callee: Peer,
    pub phase: Phase,
    /// The pending expiry timer (max_call_seconds, a session timer, or the BYE linger).
    pub expiry: super::timer::TimerKey,
    /// The latest the call may last: start + max_call_seconds.
    pub deadline: tokio::time::Instant,
    /// Channels held by the call; taken (and released) exactly once when it ends.
    pub reservation: Option<crate::limit::Reservation>,
    /// From the first 2xx until the caller's ACK: the BYEs that end the call if no ACK comes,
    /// and the timer that sends them (64*T1).
    pub teardown: Option<Box<super::teardown::Teardown>>,
    pub ack_wait: Option<super::timer::TimerKey>,
}

/// Which way an in-dialog request travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToCallee,
    ToCaller,
}

impl Dialog {
    /// Matches an in-dialog request's tags to a side of this dialog.
    pub fn direction(&self, from_tag: &[u8], to_tag: &[u8]) -> Option<Direction> {
        let callee = self.callee_tag.as_deref();
        if from_tag == &self.caller_tag[..] && callee.is_none_or(|c| c == to_tag) {
            Some(Direction::ToCallee)
        } else if to_tag == &self.caller_tag[..] && callee.is_none_or(|c| c == from_tag) {
            Some(Direction::ToCaller)
        } else {
            None
        }
    }
}
