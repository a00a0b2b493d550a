//! The lifetime of a call as the proxy tracks it: opened when an INVITE is forwarded,
//! confirmed by a 2xx, ending on BYE (kept briefly for the BYE's own transaction), and gone on
//! a final non-2xx, on expiry of `max_call_seconds`, or after the BYE linger. Every way out
//! goes through [`Proxy::drop_call`], so what must happen exactly once at a call's end has one
//! place to live.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::Proxy;
use super::dialog::{self, CallKey, Dialog, Direction, Ended, KeyBytes, Phase};
use super::record::{CallRecord, Disposition, HungUp, Outcome};
use super::timer::{LINGER, Lane, T4, Timer};
use crate::limit::Reservation;
use crate::peer::Peer;

/// The call an in-dialog request names, as [`Proxy::find_call`] finds it.
pub(super) struct Found {
    pub call: CallKey,
    pub direction: Direction,
    /// The peer the request goes to.
    pub to: Peer,
    /// False for a call hung up moments ago.
    pub live: bool,
}

/// Why a call's record is going away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CallEnd {
    /// A final non-2xx answer (busy, rejected, cancelled, timed out): its status, and
    /// whether the caller had cancelled.
    Failed { status: u16, cancelled: bool },
    /// A new call took the key of one still tracked.
    Replaced,
    /// `max_call_seconds` passed with no BYE seen.
    Expired,
}

impl Proxy {
    /// Starts tracking an admitted call (its callee is learnt from the answer). The caller
    /// checked with [`Proxy::call_in_use`] that no live call has this key; what is left of a
    /// hung-up one is replaced.
    pub(super) fn open_call(
        &mut self,
        now: Instant,
        call: CallKey,
        caller: Peer,
        reservation: Reservation,
        record: Box<CallRecord>,
    ) {
        if self.dialogs.contains_key(&call) {
            self.drop_call(now, &call, CallEnd::Replaced);
        }
        self.ended.remove(&call);
        let deadline = now + self.config.limits.max_call;
        let expiry = self.timers.at(deadline, Timer::DialogExpiry(call.clone()));
        let dialog = Dialog {
            callee_tag: None,
            caller,
            callee: caller,
            phase: Phase::Early,
            expiry,
            deadline,
            reservation: Some(reservation),
            teardown: None,
            ack_wait: None,
            record: Some(record),
        };
        self.dialogs.insert(call, dialog);
    }

    /// The call an in-dialog request belongs to (a live one, or one hung up moments ago) and
    /// which way it goes: from the caller its From tag is the call's key, from the callee its
    /// To tag is.
    pub(super) fn find_call(&self, call_id: &[u8], from_tag: &[u8], to_tag: &[u8]) -> Option<Found> {
        [from_tag, to_tag].into_iter().find_map(|tag| {
            let lookup = KeyBytes::of(call_id, tag);
            if let Some((key, d)) = self.dialogs.get_key_value(&*lookup) {
                let direction = dialog::direction(key, d.callee_tag.as_deref(), from_tag, to_tag)?;
                let to = if direction == Direction::ToCallee { d.callee } else { d.caller };
                return Some(Found { call: key.clone(), direction, to, live: true });
            }
            let (key, e) = self.ended.get_key_value(&*lookup)?;
            let direction = dialog::direction(key, e.callee_tag.as_deref(), from_tag, to_tag)?;
            let to = if direction == Direction::ToCallee { e.callee } else { e.caller };
            Some(Found { call: key.clone(), direction, to, live: false })
        })
    }

    /// True when a new INVITE for `call` would collide with a live call of the same key (or
    /// one waiting for admission): it must be refused, never replace that call.
    pub(super) fn call_in_use(&self, call: &CallKey) -> bool {
        self.parked.contains_key(call) || self.dialogs.contains_key(call)
    }

    pub(super) fn confirm_call(
        &mut self,
        now: Instant,
        call: &CallKey,
        to_tag: Option<Bytes>,
        callee: Option<Peer>,
    ) {
        let Some(d) = self.dialogs.get_mut(call) else { return };
        if d.phase != Phase::Early {
            return;
        }
        d.phase = Phase::Confirmed;
        if let Some(r) = d.record.as_mut() {
            r.answered = Some(now);
        }
        d.callee_tag = to_tag;
        if let Some(c) = callee {
            d.callee = c;
        }
        tracing::debug!(event = "call.answered", call_id = %String::from_utf8_lossy(call.call_id()), "2xx");
    }

    /// A 2xx carried `Session-Expires` (RFC 4028): the call ends unless refreshed within that
    /// interval (plus 32 s of grace for the refresh in flight), never after its deadline.
    pub(super) fn refresh_session(&mut self, now: Instant, call: &CallKey, seconds: u32) {
        let Some(d) = self.dialogs.get_mut(call) else { return };
        if d.phase != Phase::Confirmed {
            return;
        }
        // A caller-chosen interval: checked, never an overflow (it is capped by the deadline).
        let at = now
            .checked_add(Duration::from_secs(u64::from(seconds)).saturating_add(LINGER))
            .map_or(d.deadline, |t| t.min(d.deadline));
        let old = d.expiry;
        d.expiry = self.timers.at(at, Timer::DialogExpiry(call.clone()));
        self.timers.cancel(old);
    }

    /// A BYE was seen (sent by `by`): the channels are free now and the call's record is
    /// written; for T4 only which peer each side is stays, for requests that crossed the
    /// BYE on the wire (after that, 481, as from the UAs themselves: RFC 3261 §15.1.2).
    pub(super) fn hangup_call(&mut self, now: Instant, call: &CallKey, by: HungUp) {
        let Some(d) = self.dialogs.remove(call) else { return };
        self.timers.cancel(d.expiry);
        if let Some(t) = d.ack_wait {
            self.timers.cancel(t);
        }
        if let Some(r) = d.reservation {
            self.limiter.release(now, r);
        }
        let until = now + T4;
        let ended = Ended { callee_tag: d.callee_tag, caller: d.caller, callee: d.callee, until };
        self.ended.insert(call.clone(), Box::new(ended));
        self.timers.after(now, Lane::T4, Timer::Ended(call.clone()));
        if let Some(record) = d.record {
            // A BYE before any answer (an early dialog) is the caller giving up.
            let outcome = match record.answered {
                Some(_) => {
                    Outcome { disposition: Disposition::Answered, status: 200, limit: "", hung_up: Some(by) }
                }
                None => Outcome { disposition: Disposition::Cancelled, status: 0, limit: "", hung_up: None },
            };
            self.write_record(now, &record, &outcome);
        }
    }

    /// The short linger of a hung-up call is over (unless the key ended again since).
    pub(super) fn forget_ended(&mut self, now: Instant, call: &CallKey) {
        if self.ended.get(call).is_some_and(|e| e.until <= now) {
            self.ended.remove(call);
        }
    }

    /// The one exit of a live call other than its BYE; releases its channels.
    pub(super) fn drop_call(&mut self, now: Instant, call: &CallKey, why: CallEnd) {
        if let Some(d) = self.dialogs.remove(call) {
            self.timers.cancel(d.expiry);
            if let Some(t) = d.ack_wait {
                self.timers.cancel(t);
            }
            if let Some(r) = d.reservation {
                self.limiter.release(now, r);
            }
            if let Some(record) = d.record {
                let outcome = match (why, record.answered) {
                    (CallEnd::Failed { status, cancelled }, _) => Outcome {
                        disposition: Disposition::of_failure(status, cancelled),
                        status,
                        limit: "",
                        hung_up: None,
                    },
                    (_, Some(_)) => Outcome {
                        disposition: Disposition::Answered,
                        status: 200,
                        limit: "",
                        hung_up: Some(HungUp::Timeout),
                    },
                    (_, None) => {
                        Outcome { disposition: Disposition::Failed, status: 0, limit: "", hung_up: None }
                    }
                };
                self.write_record(now, &record, &outcome);
            }
            tracing::debug!(event = "call.closed", call_id = %String::from_utf8_lossy(call.call_id()), reason = ?why, "call record dropped");
        }
    }

    /// Writes a finished call's record (log event and records file).
    pub(super) fn write_record(&self, now: Instant, record: &CallRecord, outcome: &Outcome<'_>) {
        let ended = record.finish(now, std::time::SystemTime::now(), outcome);
        super::record::write(&ended, self.records.as_deref());
    }
}
