//! Responses from gateways and callees (RFC 3261 §16.7): matched to the client branch by the
//! proxy's own Via, then absorbed (100, retransmitted finals), used to fail over (5xx,
//! timeouts), or forwarded upstream with the proxy's Via removed.

use bytes::Bytes;
use tokio::time::Instant;

use super::call::CallEnd;
use super::dialog::Phase;
use super::forward;
use super::timer::{Lane, T1, TIMER_C, Timer};
use super::transaction::{ClientState, ServerState, TxId};
use super::{Action, Proxy};
use crate::peer::{Peer, Transport};
use crate::sip::{HeaderName, Message, via};
use crate::stats::{Stats, Stray};

impl Proxy {
    pub(super) fn on_response(
        &mut self,
        now: Instant,
        source: Peer,
        msg: &Message<'_>,
        out: &mut Vec<Action>,
    ) {
        let status = msg.status().unwrap_or(0);
        let Some(top) = msg.top_via.as_ref().filter(|v| self.me.is_my_via(v.host, v.port)) else {
            return self.stray(now, source, msg, Stray::NotOurs);
        };
        let Some((_, cseq_method)) = msg.cseq() else {
            return self.stray(now, source, msg, Stray::NotOurs);
        };
        let id = top.branch.and_then(|b| self.by_branch.get(b).copied());
        if let Some(id) = id {
            // A response may only come from where its branch went: anyone else who learned
            // the branch must not decide the call, fail it over or back off a gateway.
            let target = self.txs.get(&id).and_then(|t| t.branch.as_ref()).map(|b| b.target);
            if target.is_none_or(|t| !self.answers_for(source, t)) {
                return self.stray(now, source, msg, Stray::WrongSource);
            }
            if !self.stats.gateways_down.is_empty() {
                if let Some(t) = target {
                    self.stats.gateways_down.remove(&t.addr);
                }
            }
        }
        if id.is_none() && self.own_answered(source, msg) {
            return;
        }
        if cseq_method == b"CANCEL" {
            // The gateway's answer to our CANCEL: stop retransmitting it.
            if let Some(branch) = id.and_then(|id| self.txs.get_mut(&id)).and_then(|t| t.branch.as_mut()) {
                if status >= 200 {
                    branch.cancel = Some(Bytes::new());
                }
            }
            return;
        }
        if !has_second_via(msg) {
            // RFC 3261 §16.7 step 3: a response with no Via beyond ours was meant for this
            // proxy (only answers to our own CANCEL are, handled above); it is never forwarded.
            return self.stray(now, source, msg, Stray::NotOurs);
        }
        let Some(id) = id else {
            if (200..300).contains(&status) && cseq_method == b"INVITE" && self.is_callee_of(source, msg) {
                // A 2xx retransmission after the transaction ended still travels end to end,
                // but only from the callee of a call we track (never a relay for anyone).
                return self.forward_stateless(now, source, msg, out);
            }
            return self.stray(now, source, msg, Stray::UnknownBranch);
        };
        match status {
            100..=199 => self.provisional(now, id, status, msg, out),
            200..=299 => self.success(now, id, msg, out),
            _ => self.failure(now, id, status, msg, out),
        }
    }

    /// Whether a response from `source` may answer a request sent to `target`: the same
    /// transport and address (UDP: address and port), over TCP also the very connection or
    /// any connection from that host, and any address of the same carrier (a multi-homed
    /// carrier answering from another of its configured gateways).
    pub(super) fn answers_for(&self, source: Peer, target: Peer) -> bool {
        if source.transport != target.transport {
            return false;
        }
        if source.addr == target.addr {
            return true;
        }
        if source.transport.is_reliable()
            && (target.conn.is_some_and(|c| source.conn == Some(c)) || source.addr.ip() == target.addr.ip())
        {
            return true;
        }
        self.config.carriers.iter().any(|c| {
            let has = |addr: std::net::SocketAddr| c.gateways.iter().any(|g| g.addr == addr);
            has(target.addr) && has(source.addr)
        })
    }

    /// True when `source` is the callee side of the call a 2xx names (its Call-ID and tags).
    fn is_callee_of(&self, source: Peer, msg: &Message<'_>) -> bool {
        let (Some(call_id), Some(from_tag)) = (msg.call_id(), msg.tag(HeaderName::From)) else {
            return false;
        };
        self.call(call_id, from_tag).is_some_and(|d| self.answers_for(source, d.callee))
    }

    fn provisional(&mut self, now: Instant, id: TxId, status: u16, msg: &Message<'_>, out: &mut Vec<Action>) {
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        let Some(branch) = tx.branch.as_mut() else {
            return;
        };
        if branch.state == ClientState::Done {
            return;
        }
        let first = branch.state == ClientState::Calling;
        branch.state = ClientState::Proceeding;
        if first && tx.is_invite {
            // Timer B only covers silence; from now on Timer C watches the ringing.
            if let Some(key) = branch.no_answer.take() {
                self.timers.cancel(key);
            }
            branch.ringing = Some(self.timers.at(now + TIMER_C, Timer::Ringing(id, branch.number)));
        }
        let cancel_now = tx.cancelled && tx.branch.as_ref().is_some_and(|b| b.cancel.is_none());
        if status > 100 && !tx.final_sent() {
            let data = Bytes::from(forward::response(msg));
            tx.last_response = Some(data.clone());
            let to = tx.reply_to;
            self.send(out, to, data, None, false);
        }
        if cancel_now {
            self.send_cancel(now, id, out);
        }
    }

    fn success(&mut self, now: Instant, id: TxId, msg: &Message<'_>, out: &mut Vec<Action>) {
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        let data = Bytes::from(forward::response(msg));
        let to = tx.reply_to;
        if tx.server != ServerState::Proceeding {
            // A final answer went up already (a non-2xx, or the proxy's own): a 2xx to an
            // INVITE still goes up, since only the caller's ACK stops it (RFC 3261 §16.7
            // item 10, §13.3.1.4); anything else was answered.
            if tx.is_invite {
                self.send(out, to, data, None, false);
            }
            return;
        }
        tx.server = if tx.is_invite { ServerState::Accepted } else { ServerState::Completed };
        let request = std::mem::take(&mut tx.request);
        let callee = tx.branch.as_ref().map(|b| b.target);
        let (creates_dialog, refreshes) = (tx.is_invite && tx.creates_dialog, tx.refreshes_session);
        let call = tx.call.clone();
        self.conclude(now, id, Some(data.clone()));
        if let Some(call) = call {
            if creates_dialog {
                let to_tag = msg.tag(HeaderName::To).map(Bytes::copy_from_slice);
                self.confirm_call(now, &call, to_tag, callee);
                self.expect_ack(now, &call, request, data.clone());
            }
            if creates_dialog || refreshes {
                if let Some(seconds) = session_expires(msg) {
                    self.refresh_session(now, &call, seconds);
                }
            }
        }
        self.send(out, to, data, None, false);
    }

    fn failure(&mut self, now: Instant, id: TxId, status: u16, msg: &Message<'_>, out: &mut Vec<Action>) {
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        let Some(branch) = tx.branch.as_mut() else {
            return;
        };
        let retransmission = branch.state == ClientState::Done;
        // The proxy ACKs a non-2xx itself, hop by hop (RFC 3261 §17.1.1.3); a repeated final
        // answer gets the same ACK again.
        let ack = if !tx.is_invite {
            None
        } else if retransmission {
            branch.ack.clone()
        } else {
            let to_line = msg.first(HeaderName::To).map(|h| h.line.of(msg.buf));
            let built = crate::sip::parse(&branch.request)
                .ok()
                .map(|fwd| Bytes::from(crate::sip::reply::hop_request(&fwd, "ACK", to_line)));
            branch.ack.clone_from(&built);
            built
        };
        let target = branch.target;
        branch.settle(&mut self.timers);
        let ack = ack.map(|a| (target, a));
        let done = retransmission || tx.final_sent();
        if let Some((target, ack)) = ack {
            self.send(out, target, ack, None, true);
        }
        if done {
            return;
        }
        if status == 503 {
            // The gateway is overloaded: leave it alone for its Retry-After (or a default)
            // and use the others meanwhile.
            let gateway = self.txs.get(&id).filter(|t| t.creates_dialog).and_then(|t| t.branch.as_ref());
            if let Some(gw) = gateway.map(|b| b.target.addr) {
                let secs = retry_after(msg).unwrap_or(DEFAULT_BACKOFF_SECS).min(MAX_BACKOFF_SECS);
                self.back_off(now, gw, std::time::Duration::from_secs(u64::from(secs)));
            }
        }
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        let failover = (500..600).contains(&status) || status == 408;
        if failover && !tx.cancelled && !tx.remaining.is_empty() {
            if self.events.allow(now) {
                tracing::info!(
                    event = "call.failover",
                    call_id = %String::from_utf8_lossy(&tx.call_id),
                    gateway = %tx.branch.as_ref().map(|b| b.target.to_string()).unwrap_or_default(),
                    status,
                    "gateway refused, trying the next one"
                );
            }
            let request = tx.request.clone();
            if crate::sip::parse(&request).is_ok_and(|original| self.next_branch(now, id, &original, out)) {
                return;
            }
        }
        let Some(tx) = self.txs.get(&id) else {
            return;
        };
        if (status == 401 || status == 407) && tx.creates_dialog {
            if let Some(call) = tx.call.clone() {
                self.remember_challenge(now, call);
            }
        }
        let data = Bytes::from(forward::response(msg));
        self.finish_with(now, id, data, out);
    }

    /// Sends a final non-2xx upstream and moves the server side to Completed: retransmitted
    /// over UDP until the caller's ACK (Timer G), forgotten after Timer H. Ends the call.
    pub(super) fn finish_with(&mut self, now: Instant, id: TxId, data: Bytes, out: &mut Vec<Action>) {
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        tx.server = ServerState::Completed;
        tx.request = Bytes::new();
        let to = tx.reply_to;
        let (is_invite, creates_dialog, cancelled) = (tx.is_invite, tx.creates_dialog, tx.cancelled);
        let call = tx.call.clone();
        if is_invite {
            // Kept whole until the ACK: Timer G re-sends the answer over UDP, Timer H ends it.
            tx.last_response = Some(data.clone());
            if to.transport == Transport::Udp {
                tx.final_interval = T1;
                self.timers.at(now + T1, Timer::ResendFinal(id));
            }
            self.timers.after(now, Lane::Linger, Timer::Forget(id));
        } else {
            self.conclude(now, id, Some(data.clone()));
        }
        if let Some(call) =
            call.filter(|c| creates_dialog && self.dialogs.get(c).is_some_and(|d| d.phase == Phase::Early))
        {
            // "SIP/2.0 NNN ...": the status the caller got.
            let status = data.get(8..11).and_then(crate::sip::lex::parse_u32).map_or(0, |s| s as u16);
            self.drop_call(now, &call, CallEnd::Failed { status, cancelled });
        }
        self.send(out, to, data, None, false);
    }

    /// Forwards a response with no transaction along its Via (RFC 3261 §16.7 / §18.2.2).
    fn forward_stateless(&mut self, now: Instant, source: Peer, msg: &Message<'_>, out: &mut Vec<Action>) {
        let Some(via_h) = msg.first(HeaderName::Via) else {
            return;
        };
        let all = via::parse_all(msg.bytes(via_h.value)).unwrap_or_default();
        let next = if all.len() > 1 {
            all.get(1).cloned()
        } else {
            msg.all(HeaderName::Via).nth(1).and_then(|h| via::parse_first(msg.bytes(h.value)))
        };
        let Some(target) = next.as_ref().and_then(|v| {
            v.response_target().map(|addr| match Transport::from_via(v.transport) {
                Some(t @ (Transport::Tcp | Transport::Tls)) => Peer::stream(t, addr, None),
                _ => Peer::udp(addr),
            })
        }) else {
            return self.stray(now, source, msg, Stray::NotOurs);
        };
        let data = Bytes::from(forward::response(msg));
        self.send(out, target, data, None, false);
    }

    fn stray(&mut self, now: Instant, source: Peer, msg: &Message<'_>, why: Stray) {
        Stats::bump(&self.stats.stray);
        self.stats.stray_response(why);
        if self.warn.allow(now) {
            tracing::info!(event = "sip.stray_response", source = %source, call_id = %String::from_utf8_lossy(msg.call_id().unwrap_or_default()), why = why.as_str(), "response dropped");
        }
    }
}

/// The delta-seconds of a response's Session-Expires header (RFC 4028), at least 1.
fn session_expires(msg: &Message<'_>) -> Option<u32> {
    let value = msg.value(HeaderName::SessionExpires)?;
    let end = value.iter().position(|b| *b == b';' || b.is_ascii_whitespace()).unwrap_or(value.len());
    crate::sip::message::parse_u32(&value[..end]).filter(|s| *s > 0)
}

/// True when the response carries a Via after the top one (in the same header or another).
fn has_second_via(msg: &Message<'_>) -> bool {
    let mut vias = msg.all(HeaderName::Via);
    let Some(first) = vias.next() else { return false };
    vias.next().is_some() || crate::sip::params::split_list(msg.bytes(first.value)).len() > 1
}

/// Backoff for a gateway that answered 503 without Retry-After, and the longest honoured.
const DEFAULT_BACKOFF_SECS: u32 = 5;
const MAX_BACKOFF_SECS: u32 = 3600;

/// Retry-After delta-seconds (RFC 3261 §20.33), ignoring comments and parameters.
fn retry_after(msg: &Message<'_>) -> Option<u32> {
    let h = msg.headers.iter().find(|h| msg.bytes(h.name_span).eq_ignore_ascii_case(b"Retry-After"))?;
    let v = crate::sip::message::trim(msg.bytes(h.value));
    let end = v.iter().position(|b| !b.is_ascii_digit()).unwrap_or(v.len());
    crate::sip::message::parse_u32(&v[..end])
}
