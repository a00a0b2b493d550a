//! Transaction state of a stateful proxy (RFC 3261 §16 / §17): one record pairs the server
//! transaction toward the caller with the client transaction on the current branch toward a
//! gateway. Branches are tried in order (serial failover), never in parallel.

use bytes::Bytes;
use tokio::time::Instant;

use super::timer::{TimerKey, Timers};
use crate::peer::Peer;

pub use super::ids::{ServerKey, TxId};

/// A server transaction as its key finds it: the full record while it is in progress (or an
/// INVITE's non-2xx waits for its ACK), and afterwards only what absorbing retransmissions
/// takes for the rest of RFC 3261's linger (Timers J and L), so the 32 s every finished
/// transaction lingers cost a map slot and, for a non-INVITE over UDP, the answer's bytes.
#[derive(Debug)]
pub enum ServerSide {
    Live(TxId),
    /// Finished: a retransmitted request gets `Some` answer again; `None` for an INVITE
    /// answered 2xx, whose retransmissions are absorbed silently (RFC 6026 Accepted).
    Done(Option<Box<Answered>>),
}

/// The final answer of a finished non-INVITE transaction over UDP (over TCP nothing is
/// retransmitted, so nothing lingers) and the address it went to.
#[derive(Debug)]
pub struct Answered {
    pub to: std::net::SocketAddr,
    pub response: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// No final response sent upstream yet.
    Proceeding,
    /// A final non-2xx went upstream; waiting for the ACK (INVITE) or lingering (non-INVITE).
    Completed,
    /// INVITE only: a 2xx went upstream (RFC 6026 Accepted); INVITE retransmissions absorbed.
    Accepted,
    /// INVITE only: the ACK for our non-2xx arrived.
    Confirmed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// Sent, nothing heard.
    Calling,
    /// A provisional response arrived.
    Proceeding,
    /// A final response arrived.
    Done,
}

/// The current branch toward one gateway.
#[derive(Debug, Clone)]
pub struct Branch {
    /// Increments on each failover so stale timers can be recognised.
    pub number: u32,
    pub id: Vec<u8>,
    pub target: Peer,
    /// The forwarded request, for retransmission and for building CANCEL/ACK.
    pub request: Bytes,
    pub state: ClientState,
    pub interval: std::time::Duration,
    /// CANCEL sent on this branch (and its bytes, for retransmission over UDP).
    pub cancel: Option<Bytes>,
    /// The ACK the proxy sent for a non-2xx final answer, re-sent if the answer is repeated.
    pub ack: Option<Bytes>,
    /// Timer B/F, cancelled once the gateway answers.
    pub no_answer: Option<TimerKey>,
    /// Timer C, cancelled on the final answer.
    pub ringing: Option<TimerKey>,
}

impl Branch {
    /// The gateway gave its final answer: stop the long timers and free the request bytes
    /// (the transaction may linger 32 s; it should not hold a 1 KB INVITE meanwhile).
    pub fn settle(&mut self, timers: &mut Timers) {
        self.state = ClientState::Done;
        for key in [self.no_answer.take(), self.ringing.take()].into_iter().flatten() {
            timers.cancel(key);
        }
        self.request = Bytes::new();
    }
}

/// Where a branch may go. `egress` holds the carrier and gateway limits still to be
/// reserved before using it (on failover); `None` for the first target of a call (reserved
/// at admission) and for requests that are not new calls.
#[derive(Debug, Clone)]
pub struct Target {
    pub peer: Peer,
    pub egress: Option<Box<[crate::limit::Demand; 2]>>,
}

impl Target {
    pub fn plain(peer: Peer) -> Self {
        Self { peer, egress: None }
    }
}

/// Why the caller is still waiting, for the answer the proxy gives if no gateway does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    None,
    Timeout,
    Unreachable,
}

#[derive(Debug)]
pub struct Tx {
    pub id: TxId,
    pub is_invite: bool,
    pub call_id: Bytes,
    /// The tracked call this transaction belongs to (its initial INVITE, or a request
    /// inside it), if any.
    pub call: Option<super::ids::CallKey>,
    pub server_key: ServerKey,
    /// Who sent the request (for the Via stamp on every branch).
    pub source: Peer,
    /// Where responses go: the caller's stamped Via target (UDP) or its connection (TCP).
    pub reply_to: Peer,
    /// The request as received, kept until a final response is sent (to build 408/487/503).
    pub request: Bytes,
    pub server: ServerState,
    /// The last response sent upstream, re-sent when the request is retransmitted.
    pub last_response: Option<Bytes>,
    pub final_interval: std::time::Duration,
    pub to_tag: Vec<u8>,
    /// The current branch; boxed so a finished transaction that no longer needs it is small.
    pub branch: Option<Box<Branch>>,
    /// Gateways not tried yet, in reverse order (popped from the back).
    pub remaining: Vec<Target>,
    /// A new call waiting in the spike buffer: everything needed to admit it later.
    pub(crate) pending: Option<Box<super::pending::PendingCall>>,
    /// An in-dialog INVITE or UPDATE: its 2xx may refresh the session timer (RFC 4028).
    pub refreshes_session: bool,
    pub cancelled: bool,
    pub failure: Failure,
    /// True for the INVITE that created a dialog the proxy tracks.
    pub creates_dialog: bool,
    pub created: Instant,
}

impl Tx {
    pub fn final_sent(&self) -> bool {
        self.server != ServerState::Proceeding
    }
}
