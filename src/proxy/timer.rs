//! Timers as data: the core schedules `(deadline, Timer)` and the I/O layer calls
//! `Proxy::on_timer(now)` when the earliest deadline passes. Long timers are cancelled when
//! their reason goes away; a short one that no longer matches its transaction's state
//! (answered, failed over, removed) is ignored when it fires.

use std::collections::BTreeMap;

use tokio::time::Instant;

pub use super::ids::TimerKey;
use super::ids::{CallKey, TxId};

/// RFC 3261 T1 (RTT estimate) and T2 (maximum retransmit interval for non-INVITE).
pub const T1: std::time::Duration = std::time::Duration::from_millis(500);
pub const T2: std::time::Duration = std::time::Duration::from_secs(4);
/// RFC 3261 T4: how long an INVITE server transaction absorbs ACK retransmissions (Timer I).
pub const T4: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a finished transaction lingers to absorb retransmissions (64*T1, Timers J/H/L).
pub const LINGER: std::time::Duration = std::time::Duration::from_secs(32);
/// Timer C: a proxy's limit on an INVITE that got a provisional but no final answer.
pub const TIMER_C: std::time::Duration = std::time::Duration::from_secs(180);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    /// Timer A/E: retransmit the request on branch number `.1`.
    Retransmit(TxId, u32),
    /// Timer B/F: the gateway on branch `.1` never answered.
    NoAnswer(TxId, u32),
    /// Timer C: provisional but no final answer for too long.
    Ringing(TxId, u32),
    /// Timer G: retransmit the final non-2xx response upstream over UDP.
    ResendFinal(TxId),
    /// Retransmit the CANCEL sent on branch `.1`.
    ResendCancel(TxId, u32),
    /// Timers H/I/J/L: forget the transaction.
    Forget(TxId),
    /// A dialog's lifetime (max_call_seconds, or the linger after BYE) ran out.
    DialogExpiry(CallKey),
    /// 64*T1 after a call's first 2xx: if no ACK passed, the call is ended.
    AckWait(CallKey),
    /// Retransmit (or give up on) a request sluice sent on its own (branch).
    ResendOwn(Vec<u8>),
    /// A remembered 401/407 challenge (of this call) is forgotten.
    ChallengeExpiry(CallKey),
}

/// Scheduled timers in deadline order. Cancellation removes the entry, so the map holds only
/// live timers: a call's 12-hour `max_call_seconds` timer does not outlive the call.
#[derive(Debug, Default)]
pub struct Timers {
    map: BTreeMap<TimerKey, Timer>,
    seq: u64,
}

impl Timers {
    pub fn at(&mut self, when: Instant, timer: Timer) -> TimerKey {
        self.seq += 1;
        let key = (when, self.seq);
        self.map.insert(key, timer);
        key
    }

    pub fn cancel(&mut self, key: TimerKey) {
        self.map.remove(&key);
    }

    /// The earliest deadline, for the I/O layer's sleep.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.map.first_key_value().map(|((when, _), _)| *when)
    }

    /// Pops the next timer due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        match self.map.first_key_value() {
            Some(((when, _), _)) if *when <= now => self.map.pop_first().map(|(_, t)| t),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
