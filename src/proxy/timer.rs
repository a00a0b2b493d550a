//! Timers as data: the core schedules `(deadline, Timer)` and the I/O layer calls
//! `Proxy::on_timer(now)` when the earliest deadline passes. Long timers are cancelled when
//! their reason goes away; a short one that no longer matches its transaction's state
//! (answered, failed over, removed) is ignored when it fires.

use std::collections::{BTreeMap, VecDeque};

use tokio::time::Instant;

pub use super::ids::TimerKey;
use super::ids::{CallKey, ServerKey, TxId};

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
    /// A finished server transaction's linger is over: its key is forgotten.
    Linger(ServerKey),
    /// A hung-up call's short linger (requests that crossed its BYE) is over.
    Ended(CallKey),
}

/// Timers whose delay never changes, each kind kept in a queue of its own: deadlines arrive
/// in the order they were set, so the earliest is at the front, setting one is a push and
/// firing one a pop, with no tree node per timer. Most of a call's timers are of these
/// kinds. They cannot be cancelled: what one concerns is checked when it fires, and it does
/// nothing if that is gone or has moved on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// The first retransmission of a request over UDP (Timers A/E).
    T1,
    /// A transaction's or a hung-up call's short linger (Timer I, the crossing-BYE window).
    T4,
    /// 64*T1: a finished transaction's linger (Timers H/J/L).
    Linger,
}

impl Lane {
    fn delay(self) -> std::time::Duration {
        match self {
            Self::T1 => T1,
            Self::T4 => T4,
            Self::Linger => LINGER,
        }
    }
}

/// Scheduled timers in deadline order. Cancellation removes the entry, so the map holds only
/// live timers: a call's 12-hour `max_call_seconds` timer does not outlive the call.
#[derive(Debug, Default)]
pub struct Timers {
    map: BTreeMap<TimerKey, Timer>,
    lanes: [VecDeque<(Instant, Timer)>; 3],
    /// The linger of finished transactions' keys: the most numerous timer by far (two per
    /// call, 32 s each), so it holds bare keys (24 bytes an entry instead of 40).
    keys: VecDeque<(Instant, ServerKey)>,
    seq: u64,
}

impl Timers {
    pub fn at(&mut self, when: Instant, timer: Timer) -> TimerKey {
        self.seq += 1;
        let key = (when, self.seq);
        self.map.insert(key, timer);
        key
    }

    /// Sets a timer of a fixed-delay kind: due at `now` + the lane's delay. The core's clock
    /// only moves forward, so the lane stays in deadline order (were it to step back, a
    /// timer would fire late, never early).
    pub fn after(&mut self, now: Instant, lane: Lane, timer: Timer) {
        if let Some(q) = self.lanes.get_mut(lane as usize) {
            q.push_back((now + lane.delay(), timer));
        }
    }

    /// `Timer::Linger(key)` in 64*T1, in the keys' own lane.
    pub fn linger(&mut self, now: Instant, key: ServerKey) {
        self.keys.push_back((now + LINGER, key));
    }

    pub fn cancel(&mut self, key: TimerKey) {
        self.map.remove(&key);
    }

    /// The earliest deadline, for the I/O layer's sleep.
    pub fn next_deadline(&self) -> Option<Instant> {
        let tree = self.map.first_key_value().map(|((when, _), _)| *when);
        let lanes = self.lanes.iter().filter_map(|q| q.front().map(|(when, _)| *when));
        let keys = self.keys.front().map(|(when, _)| *when);
        tree.into_iter().chain(lanes).chain(keys).min()
    }

    /// Pops the next timer due at `now`, the earliest first.
    pub fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        let mut best = self.map.first_key_value().map(|((when, _), _)| *when).filter(|w| *w <= now);
        let mut from = Source::Tree;
        for (i, q) in self.lanes.iter().enumerate() {
            if let Some((when, _)) = q.front().filter(|(w, _)| *w <= now && best.is_none_or(|b| *w < b)) {
                best = Some(*when);
                from = Source::Lane(i);
            }
        }
        if let Some((when, _)) = self.keys.front().filter(|(w, _)| *w <= now && best.is_none_or(|b| *w < b)) {
            best = Some(*when);
            from = Source::Keys;
        }
        best?;
        match from {
            Source::Tree => self.map.pop_first().map(|(_, t)| t),
            Source::Lane(i) => self.lanes.get_mut(i).and_then(VecDeque::pop_front).map(|(_, t)| t),
            Source::Keys => self.keys.pop_front().map(|(_, key)| Timer::Linger(key)),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len() + self.lanes.iter().map(VecDeque::len).sum::<usize>() + self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where the earliest due timer is.
enum Source {
    Tree,
    Lane(usize),
    Keys,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_and_tree_fire_in_deadline_order() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.after(t0, Lane::Linger, Timer::Forget(1));
        timers.at(t0 + std::time::Duration::from_secs(1), Timer::Forget(2));
        timers.after(t0, Lane::T1, Timer::Forget(3));
        timers.after(t0 + std::time::Duration::from_millis(1), Lane::T1, Timer::Forget(4));
        let cancelled = timers.at(t0 + std::time::Duration::from_millis(600), Timer::Forget(5));
        timers.cancel(cancelled);
        timers.after(t0, Lane::T4, Timer::Forget(6));
        timers.linger(t0 + std::time::Duration::from_millis(2), ServerKey(7));
        assert_eq!(timers.len(), 6);
        assert_eq!(timers.next_deadline(), Some(t0 + T1));
        assert_eq!(timers.pop_due(t0 + std::time::Duration::from_millis(499)), None);
        let mut fired = Vec::new();
        while let Some(t) = timers.pop_due(t0 + LINGER + std::time::Duration::from_millis(2)) {
            fired.push(match t {
                Timer::Forget(n) => n,
                Timer::Linger(ServerKey(k)) => k,
                other => panic!("{other:?}"),
            });
        }
        assert_eq!(fired, [3, 4, 2, 6, 1, 7]);
        assert!(timers.is_empty());
    }
}
