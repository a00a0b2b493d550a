//! Calls sluice ends itself. RFC 3261 §13.3.1.4: a UAS whose 2xx is not acknowledged within
//! 64*T1 ends the session. sluice record-routes, so it sees the 2xx and the ACK; a caller that
//! never ACKs (a flood tool, a broken or hostile UA) would otherwise hold its channels for
//! `max_call_seconds` on any PBX that does not hang up by itself. When the first 2xx of a call
//! passes, the INVITE and the 2xx are kept (shared buffers, nothing copied); the caller's ACK
//! drops them; if no ACK comes within 64*T1 the channels are released and the BYEs built
//! from them go to both sides.
//!
//! sluice's own BYEs are client transactions of their own: retransmitted over UDP (Timer E)
//! until a final answer from where they went, given up after 64*T1 (Timer F).

use bytes::Bytes;
use tokio::time::Instant;

use super::dialog::{CallKey, Phase, Teardown};
use super::timer::{LINGER, T1, T2, Timer};
use super::{Action, Proxy, branch};
use crate::peer::{Peer, Transport};
use crate::sip::name_addr::NameAddr;
use crate::sip::params::split_list;
use crate::sip::uri::Uri;
use crate::sip::{HeaderName, Message};
use crate::stats::Stats;

/// The two BYEs.
struct Byes {
    to_callee: Bytes,
    to_caller: Bytes,
}

/// A request sluice sent on its own, retransmitted until answered.
#[derive(Debug)]
pub(super) struct OwnRequest {
    target: Peer,
    data: Bytes,
    interval: std::time::Duration,
    started: Instant,
}

impl Proxy {
    /// The first 2xx of a call passed: keep what its BYEs need and wait for the ACK.
    /// `invite` is the INVITE as the caller sent it, `ok` the 2xx as forwarded.
    pub(super) fn expect_ack(&mut self, now: Instant, call: &CallKey, invite: Bytes, ok: Bytes) {
        if !self.dialogs.contains_key(call) {
            return;
        }
        let timer = self.timers.at(now + LINGER, Timer::AckWait(call.clone()));
        if let Some(d) = self.dialogs.get_mut(call) {
            d.teardown = Some(Box::new(Teardown { invite, ok }));
            d.ack_wait = Some(timer);
        }
    }

    /// The caller's ACK for the 2xx passed: the call stands.
    pub(super) fn acked(&mut self, call: &CallKey) {
        let Some(d) = self.dialogs.get_mut(call) else { return };
        d.teardown = None;
        if let Some(t) = d.ack_wait.take() {
            self.timers.cancel(t);
        }
    }

    /// Timer: 64*T1 after the first 2xx and no ACK. The channels go now; both sides are told.
    pub(super) fn ack_timeout(&mut self, now: Instant, call: &CallKey, out: &mut Vec<Action>) {
        let Some(d) = self.dialogs.get_mut(call) else { return };
        d.ack_wait = None;
        let Some(t) = d.teardown.take() else { return };
        if d.phase != Phase::Confirmed {
            return;
        }
        let (caller, callee) = (d.caller, d.callee);
        self.hangup_call(now, call, super::record::HungUp::Proxy);
        let byes = match (crate::sip::parse(&t.invite), crate::sip::parse(&t.ok)) {
            (Ok(invite), Ok(ok)) => self.byes(&invite, &ok, caller, callee),
            _ => None,
        };
        Stats::bump(&self.stats.calls_unacked);
        if self.events.allow(now) {
            tracing::info!(event = "call.no_ack", call_id = %String::from_utf8_lossy(call.call_id()), disposition = "no_ack", "2xx never acknowledged within 64*T1: channels released, BYE to both sides");
        }
        if let Some(b) = byes {
            self.send_own(now, callee, b.to_callee, out);
            self.send_own(now, caller, b.to_caller, out);
        }
    }

    /// Sends a request of sluice's own and keeps it for retransmission.
    fn send_own(&mut self, now: Instant, target: Peer, data: Bytes, out: &mut Vec<Action>) {
        let Some(branch) = crate::sip::parse(&data).ok().and_then(|m| top_branch(&m)) else { return };
        if target.transport == Transport::Udp {
            self.timers.at(now + T1, Timer::ResendOwn(branch.clone()));
        } else {
            self.timers.at(now + LINGER, Timer::ResendOwn(branch.clone()));
        }
        self.own.insert(branch, OwnRequest { target, data: data.clone(), interval: T1, started: now });
        self.send(out, target, data, None, true);
    }

    /// Timer E/F for sluice's own requests.
    pub(super) fn resend_own(&mut self, now: Instant, branch: &[u8], out: &mut Vec<Action>) {
        let Some(r) = self.own.get_mut(branch) else { return };
        if r.target.transport != Transport::Udp || now.saturating_duration_since(r.started) >= LINGER {
            self.own.remove(branch);
            return;
        }
        r.interval = (r.interval * 2).min(T2);
        let (target, data, next) = (r.target, r.data.clone(), now + r.interval);
        self.timers.at(next, Timer::ResendOwn(branch.to_vec()));
        self.send(out, target, data, None, true);
    }

    /// A response to one of sluice's own requests: from where it went, a final answer ends
    /// it (a provisional one changes nothing; Timer F still bounds it); from anywhere else it
    /// is a forgery, counted. True when the response named one of them.
    pub(super) fn own_answered(&mut self, source: Peer, msg: &Message<'_>) -> bool {
        let Some(branch) = top_branch(msg) else { return false };
        let Some(r) = self.own.get(&branch) else { return false };
        if !self.answers_for(source, r.target) {
            self.stats.stray_response(crate::stats::Stray::WrongSource);
        } else if msg.status().is_some_and(|s| s >= 200) {
            self.own.remove(&branch);
        }
        true
    }

    /// Builds both BYEs from the caller's INVITE and the callee's 2xx.
    fn byes(&mut self, invite: &Message<'_>, ok: &Message<'_>, caller: Peer, callee: Peer) -> Option<Byes> {
        let call_id = invite.call_id()?;
        let from = invite.value(HeaderName::From)?;
        let to = ok.value(HeaderName::To)?;
        let (cseq, _) = invite.cseq()?;
        // Contacts are the peers' words: used only when they are plain URIs, else the peer's
        // address stands in (the BYE goes to that address either way).
        let fallback = |p: Peer| format!("sip:{}", p.addr).into_bytes();
        let caller_uri = contact_uri(invite).map_or_else(|| fallback(caller), <[u8]>::to_vec);
        let callee_uri = contact_uri(ok).map_or_else(|| fallback(callee), <[u8]>::to_vec);
        // Record-Route as the callee received it: entries before ours face the callee,
        // entries after ours face the caller.
        let rr: Vec<&[u8]> = ok
            .all(HeaderName::RecordRoute)
            .flat_map(|h| {
                let v = ok.bytes(h.value);
                split_list(v).into_iter().map(move |r| crate::sip::message::trim(&v[r]))
            })
            .collect();
        let mine = |e: &&[u8]| {
            NameAddr::parse(e)
                .and_then(|na| Uri::parse(na.uri_of(e)).ok())
                .is_some_and(|u| self.me.is_my_uri(&u))
        };
        let first_mine = rr.iter().position(mine).unwrap_or(rr.len());
        let last_mine = rr.iter().rposition(mine).map_or(rr.len(), |i| i + 1);
        let toward_callee: Vec<&[u8]> = rr[..first_mine].iter().rev().copied().collect();
        let toward_caller: Vec<&[u8]> = rr[last_mine.min(rr.len())..].to_vec();
        let via = |me: &Self, t: Transport, seq: u64| {
            let b = branch::make(&me.secret, me.secret.hash(call_id), seq);
            let mut v = format!("SIP/2.0/{} {};branch=", t.via_token(), me.me.sent_by(t)).into_bytes();
            v.extend_from_slice(&b);
            v.extend_from_slice(b";rport");
            v
        };
        let (s1, s2) = (self.next_seq(), self.next_seq());
        let to_callee = crate::sip::reply::dialog_request(
            "BYE",
            &callee_uri,
            &via(self, callee.transport, s1),
            &toward_callee,
            from,
            to,
            call_id,
            cseq.saturating_add(1),
        );
        let to_caller = crate::sip::reply::dialog_request(
            "BYE",
            &caller_uri,
            &via(self, caller.transport, s2),
            &toward_caller,
            to,
            from,
            call_id,
            1,
        );
        Some(Byes { to_callee: Bytes::from(to_callee), to_caller: Bytes::from(to_caller) })
    }
}

/// The URI of a message's first Contact.
fn contact_uri<'a>(msg: &Message<'a>) -> Option<&'a [u8]> {
    let v = msg.value(HeaderName::Contact)?;
    let first = split_list(v).into_iter().next()?;
    let elem = &v[first];
    let na = NameAddr::parse(elem)?;
    let uri = na.uri_of(elem);
    let plain = uri.iter().all(u8::is_ascii_graphic) && Uri::parse(uri).is_ok();
    plain.then_some(uri)
}

/// The branch of a message's top Via.
fn top_branch(msg: &Message<'_>) -> Option<Vec<u8>> {
    msg.top_via.as_ref()?.branch.map(<[u8]>::to_vec)
}
