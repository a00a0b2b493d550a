//! Dialogs the proxy tracks (RFC 3261 §12, as a record-routing proxy sees them): which network
//! peer each side is, so in-dialog requests go to the other side even when devices ignore
//! Record-Route or sit behind NAT, and nothing else is relayed.

use bytes::Bytes;

use crate::peer::Peer;

pub use super::ids::{CallKey, KeyBytes};

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
    pub teardown: Option<Box<Teardown>>,
    pub ack_wait: Option<super::timer::TimerKey>,
    /// The call's record, written (and taken) once when the call ends.
    pub record: Option<Box<super::record::CallRecord>>,
}

/// What the BYEs that end an unacknowledged call are built from: the caller's INVITE and
/// the callee's 2xx (see `teardown.rs`, which builds and sends them).
#[derive(Debug)]
pub struct Teardown {
    pub(super) invite: Bytes,
    pub(super) ok: Bytes,
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
