//! What each timer does when it fires (RFC 3261 §17 timers A-L and the proxy's Timer C), and
//! what the caller hears when no gateway answers.

use bytes::Bytes;
use tokio::time::Instant;

use super::call::CallEnd;
use super::timer::{T2, TIMER_C, Timer};
use super::transaction::{ClientState, Failure, ServerState, TxId};
use super::{Action, Proxy};
use crate::peer::Transport;
use crate::stats::Stats;

impl Proxy {
    pub(super) fn fire(&mut self, now: Instant, timer: Timer, out: &mut Vec<Action>) {
        match timer {
            Timer::Retransmit(id, n) => self.retransmit(now, id, n, out),
            Timer::NoAnswer(id, n) => self.no_answer(now, id, n, Failure::Timeout, out),
            Timer::Ringing(id, n) => self.ringing_too_long(now, id, n, out),
            Timer::ResendFinal(id) => self.resend_final(now, id, out),
            Timer::ResendCancel(id, n) => self.resend_cancel(now, id, n, out),
            Timer::Forget(id) => self.forget(id),
            Timer::AckWait(call) => self.ack_timeout(now, &call, out),
            Timer::ResendOwn(branch) => self.resend_own(now, &branch, out),
            Timer::ChallengeExpiry(call) => {
                self.challenged.remove(&call);
            }
            Timer::DialogExpiry(call) => self.drop_call(now, &call, CallEnd::Expired),
            Timer::Linger(key) => self.linger_over(key),
            Timer::Ended(call) => self.forget_ended(now, &call),
        }
    }

    /// Timers A (INVITE, doubling) and E (non-INVITE, capped at T2) over UDP.
    fn retransmit(&mut self, now: Instant, id: TxId, n: u32, out: &mut Vec<Action>) {
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        let is_invite = tx.is_invite;
        let Some(b) = tx.branch.as_mut().filter(|b| b.number == n) else {
            return;
        };
        let keep_going = match b.state {
            ClientState::Calling => true,
            ClientState::Proceeding => !is_invite,
            ClientState::Done => false,
        };
        if !keep_going {
            return;
        }
        b.interval = if is_invite {
            b.interval * 2
        } else if b.state == ClientState::Proceeding {
            T2
        } else {
            (b.interval * 2).min(T2)
        };
        let (target, data, next) = (b.target, b.request.clone(), now + b.interval);
        self.timers.at(next, Timer::Retransmit(id, n));
        self.send(out, target, data, Some(id), true);
    }

    /// Timer B/F, or a transport failure: this gateway is out; try the next or answer.
    pub(super) fn no_answer(&mut self, now: Instant, id: TxId, n: u32, why: Failure, out: &mut Vec<Action>) {
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        let (is_invite, final_sent) = (tx.is_invite, tx.final_sent());
        let Some(b) = tx.branch.as_mut().filter(|b| b.number == n) else {
            return;
        };
        let silent = match b.state {
            ClientState::Calling => true,
            ClientState::Proceeding => !is_invite,
            ClientState::Done => false,
        };
        if !silent || final_sent {
            return;
        }
        b.settle(&mut self.timers);
        tx.failure = why;
        let gateway = b.target;
        self.stats.gateways_down.insert(gateway.addr, ());
        if self.events.allow(now) {
            tracing::info!(
                event = "gateway.no_answer",
                call_id = %String::from_utf8_lossy(&tx.call_id),
                gateway = %gateway,
                reason = ?why,
                "gateway did not answer"
            );
        }
        if !tx.cancelled && !tx.remaining.is_empty() {
            let request = tx.request.clone();
            if crate::sip::parse(&request).is_ok_and(|original| self.next_branch(now, id, &original, out)) {
                return;
            }
        }
        self.answer_ourselves(now, id, out);
    }

    /// No gateway gave a final answer: the caller gets 487 (it cancelled), 408 (silence) or
    /// 503 (unreachable).
    pub(super) fn answer_ourselves(&mut self, now: Instant, id: TxId, out: &mut Vec<Action>) {
        let Some(tx) = self.txs.get(&id) else { return };
        let (status, reason) = match (tx.cancelled, tx.failure) {
            (true, _) => (487, "Request Terminated"),
            (false, Failure::Unreachable) => (503, "Service Unavailable"),
            _ => (408, "Request Timeout"),
        };
        if tx.creates_dialog && status == 408 {
            Stats::bump(&self.stats.calls_timeout);
        }
        self.final_answer(now, id, status, reason, &[], out);
    }

    /// Ends a transaction with a final answer of the proxy's own, built from the stored
    /// request (408, 487, 503, the limits' 503/302): the one way such answers are made.
    pub(super) fn final_answer(
        &mut self,
        now: Instant,
        id: TxId,
        status: u16,
        reason: &str,
        extra: &[(&str, &[u8])],
        out: &mut Vec<Action>,
    ) {
        let data = {
            let Some(tx) = self.txs.get(&id) else { return };
            let Ok(original) = crate::sip::parse(&tx.request) else { return };
            let mut splice = crate::sip::edit::Splice::new(original.buf);
            if super::stamp::stamp(&original, tx.source, &mut splice).is_none() {
                return;
            }
            crate::sip::reply::response(&original, &mut splice, status, reason, Some(&tx.to_tag), extra)
        };
        self.finish_with(now, id, Bytes::from(data), out);
    }

    /// Timer C: ringing without an answer for too long; cancel the branch (its 487 comes back
    /// and is forwarded), or answer 408 if the gateway ignores the CANCEL.
    fn ringing_too_long(&mut self, now: Instant, id: TxId, n: u32, out: &mut Vec<Action>) {
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        if tx.final_sent()
            || tx.branch.as_ref().is_none_or(|b| b.number != n || b.state != ClientState::Proceeding)
        {
            return;
        }
        if tx.branch.as_ref().is_some_and(|b| b.cancel.is_some()) {
            // Cancelled a full Timer C ago and still no final answer: give up on the gateway.
            tx.failure = Failure::Timeout;
            if let Some(b) = tx.branch.as_mut() {
                b.settle(&mut self.timers);
            }
            self.answer_ourselves(now, id, out);
            return;
        }
        tx.failure = Failure::Timeout;
        self.send_cancel(now, id, out);
        let key = self.timers.at(now + TIMER_C, Timer::Ringing(id, n));
        if let Some(b) = self.txs.get_mut(&id).and_then(|t| t.branch.as_mut()) {
            b.ringing = Some(key);
        }
    }

    /// Timer G: the final non-2xx goes upstream again until the ACK arrives.
    fn resend_final(&mut self, now: Instant, id: TxId, out: &mut Vec<Action>) {
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        if tx.server != ServerState::Completed || tx.reply_to.transport != Transport::Udp {
            return;
        }
        let Some(data) = tx.last_response.clone() else {
            return;
        };
        tx.final_interval = (tx.final_interval * 2).min(T2);
        let (to, next) = (tx.reply_to, now + tx.final_interval);
        self.timers.at(next, Timer::ResendFinal(id));
        self.send(out, to, data, None, false);
    }

    fn resend_cancel(&mut self, now: Instant, id: TxId, n: u32, out: &mut Vec<Action>) {
        let Some(b) = self.txs.get_mut(&id).and_then(|t| t.branch.as_mut()).filter(|b| b.number == n) else {
            return;
        };
        if b.state == ClientState::Done {
            return;
        }
        let Some(cancel) = b.cancel.clone().filter(|c| !c.is_empty()) else {
            return;
        };
        b.interval = (b.interval * 2).min(T2);
        let (target, next) = (b.target, now + b.interval);
        self.timers.at(next, Timer::ResendCancel(id, n));
        self.send(out, target, cancel, Some(id), true);
    }

    fn forget(&mut self, id: TxId) {
        let Some(tx) = self.txs.get(&id) else { return };
        if tx.server == ServerState::Proceeding {
            return;
        }
        if let Some(tx) = self.txs.remove(&id) {
            if matches!(self.by_server.get(&tx.server_key), Some(super::transaction::ServerSide::Live(x)) if *x == id)
            {
                self.by_server.remove(&tx.server_key);
            }
            if let Some(mut b) = tx.branch {
                b.settle(&mut self.timers);
                self.by_branch.remove(&b.id);
            }
        }
    }

    /// The transport could not deliver a request of transaction `id` to `to` (TCP connect
    /// refused or reset): fail over at once instead of waiting for Timer B.
    pub fn on_send_failed(&mut self, now: Instant, id: TxId, to: crate::peer::Peer, out: &mut Vec<Action>) {
        let Some(n) = self
            .txs
            .get(&id)
            .and_then(|t| t.branch.as_ref())
            .filter(|b| b.target.addr == to.addr)
            .map(|b| b.number)
        else {
            return;
        };
        self.no_answer(now, id, n, Failure::Unreachable, out);
    }
}
