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
}

/// A call the proxy tracks; the caller's tag is part of its key ([`CallKey::caller_tag`]).
#[derive(Debug)]
pub struct Dialog {
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

/// What stays of a call once it is hung up (its channels are free and its record written),
/// for the few seconds in which requests that crossed its BYE on the wire may still arrive:
/// which peer each side is. The BYE's own retransmissions and answers belong to its
/// transaction, which lingers on its own.
#[derive(Debug)]
pub struct Ended {
    pub callee_tag: Option<Bytes>,
    pub caller: Peer,
    pub callee: Peer,
    /// When it is forgotten (a call of the same key may end again meanwhile).
    pub until: tokio::time::Instant,
}

/// Matches an in-dialog request's tags to a side of the call `key` (whose callee tag is
/// known once answered).
pub fn direction(
    key: &CallKey,
    callee_tag: Option<&[u8]>,
    from_tag: &[u8],
    to_tag: &[u8],
) -> Option<Direction> {
    let caller = key.caller_tag();
    if from_tag == caller && callee_tag.is_none_or(|c| c == to_tag) {
        Some(Direction::ToCallee)
    } else if to_tag == caller && callee_tag.is_none_or(|c| c == from_tag) {
        Some(Direction::ToCaller)
    } else {
        None
    }
}
