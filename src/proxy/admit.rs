//! The limit phase of a new call: every applicable limit is checked and reserved at once
//! (server, customer, ip, user, route, did, then carrier and gateway, trying the route's
//! gateways in order when one is full), or the call is refused with the configured answer.
//! One structured `call.admission` event records each decision.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::dialog::CallKey;
use super::pending::{CallContext, PendingCall};
use super::record::{CallRecord, Disposition, Outcome};
use super::refused::Refused;
use super::timer::{LINGER, Timer};
use super::transaction::{ServerKey, Target, TxId};
use super::waitroom::{Ask, Served};
use super::{Action, Proxy};
use crate::limit::customers::CustomerId;
use crate::limit::plan::CallPlan;
use crate::limit::queue::Waiting;
use crate::limit::redis::Remote;
use crate::limit::{Demand, LimitKey, Refusal, Rejection, Reservation, Scope};
use crate::peer::Peer;
use crate::sip::{HeaderName, Message};
use crate::stats::Stats;

impl Proxy {
    /// Admits a new call under its plan. On success returns the targets (the admitted gateway
    /// first, then the later ones for failover), the reservation and the call's record.
    /// Otherwise the call waits in the spike buffer (`queue_ms`) or is refused; either way
    /// `None`.
    pub(super) fn admit(
        &mut self,
        now: Instant,
        plan: CallPlan,
        ctx: &CallContext<'_>,
        msg: &Message<'_>,
        out: &mut Vec<Action>,
        key: ServerKey,
    ) -> Option<(Vec<Target>, Reservation, Box<CallRecord>)> {
        let from_tag = msg.tag(HeaderName::From).unwrap_or_default();
        let count_cps = !self.take_challenge(ctx.call_id, from_tag);
        if self.limiter.asynchronous() {
            // A shared store: no round trip on the SIP path. The call waits (100 Trying)
            // for the store's answer, which arrives through on_admission.
            let until_answered = Rejection { key: LimitKey::server(), kind: Refusal::Channels };
            let candidates: Vec<Vec<Demand>> = plan
                .candidates
                .iter()
                .map(|c| plan.common.iter().chain(c.demands.iter()).cloned().collect())
                .collect();
            if let Some(id) = self.park(now, plan, ctx, msg, key, count_cps, until_answered, out) {
                out.push(Action::Admit { tx: id, candidates, count_cps });
            }
            return None;
        }
        match self.try_admit(now, &plan, count_cps) {
            Ok((i, reservation)) => {
                let record =
                    self.on_admitted(now, now, &plan, ctx, i, count_cps, None, reservation.would_reject());
                Some((targets_from(&plan, i), reservation, record))
            }
            Err(rejection) => {
                let rejection =
                    match self.enqueue(now, plan.clone(), ctx, msg, key, count_cps, rejection, out) {
                        Ok(()) => return None,
                        Err(r) => r,
                    };
                self.refuse_over_limit(now, ctx, msg, &plan, &rejection, key, out);
                None
            }
        }
    }

    /// Tries the plan's candidates in order (see [`super::waitroom::try_admit`]).
    fn try_admit(
        &self,
        now: Instant,
        plan: &CallPlan,
        count_cps: bool,
    ) -> Result<(usize, Reservation), Rejection> {
        super::waitroom::try_admit(&*self.limiter, &self.backoff, now, plan, count_cps)
    }

    /// Counts, records usage and logs an admission (`waited`: time spent in the buffer;
    /// `would_reject`: shadow limits it went over). Returns the call's record (it arrived at
    /// `arrived`).
    #[allow(clippy::too_many_arguments)]
    fn on_admitted(
        &mut self,
        now: Instant,
        arrived: Instant,
        plan: &CallPlan,
        ctx: &CallContext<'_>,
        i: usize,
        counted: bool,
        waited: Option<Duration>,
        would_reject: &[Rejection],
    ) -> Box<CallRecord> {
        Stats::bump(&self.stats.calls_admitted);
        for hit in would_reject {
            self.stats.shadow_hit(&hit.key, hit.kind);
        }
        let carrier = plan
            .candidates
            .get(i)
            .and_then(|c| self.config.carriers.get(c.carrier))
            .map_or("", |c| c.name.as_str());
        {
            // Usage for the server, the carrier, the customer and each of its parents.
            let mut scopes: Vec<(&str, &str)> = vec![("server", ""), ("carrier", carrier)];
            if let Some(c) = ctx.customer {
                scopes.extend(self.config.customer_chain(c).map(|c| ("customer", c.name.as_str())));
            }
            self.usage.record(now, &scopes);
        }
        if let Some(w) = waited {
            Stats::bump(&self.stats.queue_admitted);
            self.stats.queue_wait.observe(w);
        }
        let decision = Decision { chosen: Some(i), decision: "admitted", rejection: None, would_reject };
        self.log_decision(now, ctx, plan, decision, counted, waited);
        let mut record = call_record(ctx, plan, Some(i), arrived);
        record.admitted = Some(now);
        Box::new(record)
    }

    /// Puts a refused call in the spike buffer when that is allowed and can succeed: the
    /// buffer is on (`queue_ms`), the limit is a CPS limit (or a channels limit with
    /// `queue_channels`), the buffer has room, and the wait its position implies fits in
    /// `queue_ms` (no pointless post-dial delay). Otherwise returns the rejection.
    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &mut self,
        now: Instant,
        plan: CallPlan,
        ctx: &CallContext<'_>,
        msg: &Message<'_>,
        key: ServerKey,
        count_cps: bool,
        rejection: Rejection,
        out: &mut Vec<Action>,
    ) -> Result<(), Rejection> {
        let Some((priority, lane)) = self.may_wait(now, &plan, ctx.customer, &rejection) else {
            return Err(rejection);
        };
        self.log_decision(now, ctx, &plan, Decision::refused("queued", &rejection), count_cps, None);
        let Some(id) = self.park(now, plan, ctx, msg, key, count_cps, rejection, out) else {
            return Err(Rejection { key: LimitKey::server(), kind: Refusal::Channels });
        };
        self.wait_in_queue(now, id, priority, &lane);
        Ok(())
    }

    /// Whether a call refused by `rejection` may wait in the spike buffer: the buffer is on,
    /// the limit is one that frees by itself (CPS; channels with `queue_channels`), there is
    /// room, and the wait its position implies fits in `queue_ms`. Returns its lane.
    fn may_wait(
        &self,
        now: Instant,
        plan: &CallPlan,
        customer: Option<CustomerId>,
        rejection: &Rejection,
    ) -> Option<(i32, String)> {
        let overflow = &self.config.overflow;
        let queueable = match rejection.kind {
            Refusal::Cps | Refusal::Cpm => true,
            Refusal::Channels => overflow.queue_channels,
        };
        if overflow.queue.is_zero() || !queueable || self.waitroom.len() >= overflow.queue_depth {
            return None;
        }
        let customer = customer.and_then(|c| self.config.customers.get(c));
        let (priority, lane) = customer.map_or((0, ""), |c| (c.priority, c.name.as_str()));
        let demand = plan
            .common
            .iter()
            .chain(plan.candidates.iter().flat_map(|c| c.demands.iter()))
            .find(|d| d.key == rejection.key);
        if rejection.kind.is_rate() {
            // A slot that opens only after the deadline (a full minute window) is no reason
            // to hold the caller.
            if demand.and_then(|d| self.limiter.opens_at(now, d)).is_some_and(|at| at > now + overflow.queue)
            {
                return None;
            }
        }
        if rejection.kind == Refusal::Cps {
            if let Some(cps) = demand.and_then(|d| d.cps).filter(|c| *c > 0) {
                let ahead = self.waitroom.ahead_of(priority, lane) as f64 + 1.0;
                if Duration::from_secs_f64(ahead / f64::from(cps)) > overflow.queue {
                    return None;
                }
            }
        }
        Some((priority, lane.to_string()))
    }

    /// Puts a parked call in the node's spike buffer.
    fn wait_in_queue(&mut self, now: Instant, id: TxId, priority: i32, lane: &str) {
        let Some(p) = self.txs.get(&id).and_then(|t| t.pending.as_ref()) else { return };
        let ask =
            Arc::new(Ask { plan: p.plan.clone(), count_cps: p.count_cps, rejection: p.rejection.clone() });
        let waiting = Waiting { id, since: now, deadline: now + self.config.overflow.queue };
        Stats::bump(&self.stats.calls_queued);
        let next = self.waitroom.push(now, waiting, priority, lane, ask, &*self.limiter);
        self.room_wake = match (self.room_wake, next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// Opens the transaction of a new call that must wait (spike buffer, or a shared store's
    /// answer): 100 Trying to the caller, and everything needed to admit it later.
    #[allow(clippy::too_many_arguments)]
    fn park(
        &mut self,
        now: Instant,
        plan: CallPlan,
        ctx: &CallContext<'_>,
        msg: &Message<'_>,
        key: ServerKey,
        count_cps: bool,
        rejection: Rejection,
        out: &mut Vec<Action>,
    ) -> Option<TxId> {
        let id = self.new_tx(now, ctx.source, msg, key, Vec::new(), true)?;
        self.send_trying(id, msg, out);
        let pending = PendingCall {
            plan: Arc::new(plan),
            count_cps,
            customer: ctx.customer,
            user: ctx.user.map(Bytes::copy_from_slice),
            number: Bytes::copy_from_slice(ctx.number),
            from_tag: Bytes::copy_from_slice(msg.tag(HeaderName::From).unwrap_or_default()),
            rejection,
            since: now,
        };
        let tx = self.txs.get_mut(&id)?;
        tx.pending = Some(Box::new(pending));
        if let Some(call) = tx.call.clone() {
            self.parked.insert(call, id);
        }
        Some(id)
    }

    /// The shared store's answer for a parked new call ([`Action::Admit`]).
    pub fn on_admission(&mut self, now: Instant, id: TxId, answer: Remote, out: &mut Vec<Action>) {
        let waiting = self.txs.get(&id).is_some_and(|t| t.pending.is_some() && !t.final_sent());
        if !waiting {
            self.unpark(id);
            // Cancelled (or gone) meanwhile: give back what the store reserved.
            if let Remote::Admitted(_, r) = answer {
                self.limiter.release(now, r);
            }
            return;
        }
        let outcome = match answer {
            Remote::Admitted(i, r) => Ok((i, r)),
            Remote::Rejected(r) => Err(r),
            Remote::Unavailable => {
                // Decided by `on_failure`, here: the shared store had its chance.
                let Some(p) = self.txs.get(&id).and_then(|t| t.pending.as_ref()) else { return };
                let (limiter, count_cps) = (&*self.limiter, p.count_cps);
                super::waitroom::try_admit_by(&self.backoff, now, &p.plan, |d| {
                    limiter.admit_unshared(now, d, count_cps)
                })
            }
        };
        match outcome {
            Ok((i, reservation)) => self.start_waiting(now, id, i, reservation, false, out),
            Err(rejection) => self.queue_or_refuse(now, id, rejection, out),
        }
    }

    /// A parked call the store refused: into the spike buffer if allowed, else answered.
    fn queue_or_refuse(&mut self, now: Instant, id: TxId, rejection: Rejection, out: &mut Vec<Action>) {
        let lane = self
            .txs
            .get(&id)
            .and_then(|t| t.pending.as_ref())
            .and_then(|p| self.may_wait(now, &p.plan, p.customer, &rejection));
        if let Some(p) = self.txs.get_mut(&id).and_then(|t| t.pending.as_mut()) {
            p.rejection = rejection;
        }
        match lane {
            Some((priority, lane)) => self.wait_in_queue(now, id, priority, &lane),
            None => self.refuse_waiting(now, id, "rejected", out),
        }
    }

    /// The waiting room's verdict on one of this shard's queued calls.
    pub(crate) fn on_served(&mut self, now: Instant, served: Served, out: &mut Vec<Action>) {
        match served {
            Served::Admitted(id, i, reservation) => self.start_waiting(now, id, i, reservation, true, out),
            Served::Expired(id) => self.expire_waiting(now, id, out),
        }
    }

    /// A waiting call was admitted: it goes to its gateway like any other.
    fn start_waiting(
        &mut self,
        now: Instant,
        id: TxId,
        i: usize,
        reservation: Reservation,
        from_queue: bool,
        out: &mut Vec<Action>,
    ) {
        let Some(p) = self.take_pending(id) else {
            self.limiter.release(now, reservation);
            return;
        };
        let Some(tx) = self.txs.get_mut(&id) else {
            self.limiter.release(now, reservation);
            return;
        };
        let mut targets = targets_from(&p.plan, i);
        targets.reverse();
        tx.remaining = targets;
        let (request, source, call_id) = (tx.request.clone(), tx.source, tx.call_id.clone());
        let ctx = p.context(&call_id, source);
        let waited = from_queue.then(|| now.saturating_duration_since(p.since));
        let record =
            self.on_admitted(now, p.since, &p.plan, &ctx, i, p.count_cps, waited, reservation.would_reject());
        let Ok(msg) = crate::sip::parse(&request) else {
            self.limiter.release(now, reservation);
            return;
        };
        let call = CallKey::new(&call_id, &p.from_tag);
        self.open_call(now, call, source, reservation, record);
        if !self.next_branch(now, id, &msg, out) {
            if let Some(tx) = self.txs.get_mut(&id) {
                tx.failure = super::transaction::Failure::Unreachable;
            }
            self.answer_ourselves(now, id, out);
        }
    }

    /// A waiting call's deadline passed: it gets the answer of the limit that held it.
    fn expire_waiting(&mut self, now: Instant, id: TxId, out: &mut Vec<Action>) {
        Stats::bump(&self.stats.queue_expired);
        self.refuse_waiting(now, id, "expired", out);
    }

    /// Answers a parked call with the refusal of the limit that held it.
    fn refuse_waiting(&mut self, now: Instant, id: TxId, decision: &str, out: &mut Vec<Action>) {
        let Some(p) = self.take_pending(id) else { return };
        let Some(tx) = self.txs.get(&id) else { return };
        let (source, call_id) = (tx.source, tx.call_id.clone());
        let ctx = p.context(&call_id, source);
        let (status, reason, header, value) = self.refusal_answer(&p.rejection);
        let waited = now.saturating_duration_since(p.since);
        let logged = Decision::refused(decision, &p.rejection);
        self.log_decision(now, &ctx, &p.plan, logged, p.count_cps, Some(waited));
        self.record_refusal(now, &ctx, &p.plan, &p.rejection, status, p.since);
        let extra: Vec<(&str, &[u8])> = header.iter().map(|h| (*h, value.as_bytes())).collect();
        self.final_answer(now, id, status, &reason, &extra, out);
    }

    /// CANCEL of a waiting call: out of the buffer; it never reaches a carrier and holds
    /// nothing, and its record says it was cancelled (487). True if the call was waiting.
    pub(super) fn cancel_waiting(&mut self, now: Instant, id: TxId) -> bool {
        let Some(p) = self.take_pending(id) else { return false };
        self.waitroom.remove(id);
        if let Some(tx) = self.txs.get(&id) {
            let ctx = p.context(&tx.call_id, tx.source);
            let record = call_record(&ctx, &p.plan, None, p.since);
            let outcome =
                Outcome { disposition: Disposition::Cancelled, status: 487, limit: "", hung_up: None };
            self.write_record(now, &record, &outcome);
        }
        true
    }

    /// The answer for a refusal, counted: (status, reason, extra header name, its value).
    fn refusal_answer(&self, rejection: &Rejection) -> (u16, String, Option<&'static str>, String) {
        self.stats.limit_hit(&rejection.key, rejection.kind);
        let how = self.refused_how(rejection);
        Stats::bump(match (how.redirected, how.channels) {
            (true, _) => &self.stats.calls_redirected,
            (false, false) => &self.stats.calls_rejected_cps,
            (false, true) => &self.stats.calls_rejected_channels,
        });
        self.answer_for(how)
    }

    /// How a rejection is answered: 302 when the server-wide limit is full and redirect is set.
    fn refused_how(&self, rejection: &Rejection) -> Refused {
        Refused {
            channels: rejection.kind == Refusal::Channels,
            redirected: rejection.key.scope == Scope::Server && !self.config.overflow.redirect.is_empty(),
        }
    }

    /// The answer for a refusal (nothing counted): (status, reason, extra header, its value).
    fn answer_for(&self, how: Refused) -> (u16, String, Option<&'static str>, String) {
        let overflow = &self.config.overflow;
        if how.redirected {
            return (302, "Moved Temporarily".into(), Some("Contact"), overflow.redirect.join(", "));
        }
        let reason =
            if how.channels { overflow.channels_reason.clone() } else { overflow.cps_reason.clone() };
        let retry = (overflow.retry_after > 0).then_some("Retry-After");
        (overflow.status, reason, retry, overflow.retry_after.to_string())
    }

    /// A retransmission of an INVITE refused without state: the same answer again, counted
    /// nowhere. True when `key` names such a request.
    pub(super) fn refused_again(
        &mut self,
        now: Instant,
        source: Peer,
        msg: &Message<'_>,
        key: &ServerKey,
        out: &mut Vec<Action>,
    ) -> bool {
        let Some(how) = self.refused.get(key.0) else { return false };
        let (status, reason, header, value) = self.answer_for(how);
        let extra: Vec<(&str, &[u8])> = header.iter().map(|h| (*h, value.as_bytes())).collect();
        self.reply(now, msg, source, super::Answer::new(status, &reason), &extra, out);
        true
    }

    /// Answers a call no limit had room for: `503 CPS Limit reached` / `503 Channel Limit
    /// reached` (status, phrases and Retry-After from `[overflow]`), or `302` to the overflow
    /// servers when the server-wide limit is what is full. The answer goes through a
    /// transaction, so a retransmitted INVITE gets it again and its ACK is absorbed.
    #[allow(clippy::too_many_arguments)]
    fn refuse_over_limit(
        &mut self,
        now: Instant,
        ctx: &CallContext<'_>,
        msg: &Message<'_>,
        plan: &CallPlan,
        rejection: &Rejection,
        key: ServerKey,
        out: &mut Vec<Action>,
    ) {
        let (status, reason, header, value) = self.refusal_answer(rejection);
        let decision = if status == 302 { "redirected" } else { "rejected" };
        self.log_decision(now, ctx, plan, Decision::refused(decision, rejection), true, None);
        self.record_refusal(now, ctx, plan, rejection, status, now);
        let extra: Vec<(&str, &[u8])> = header.iter().map(|h| (*h, value.as_bytes())).collect();
        if self.under_pressure() {
            // No transaction: the answer is a function of the request, and the table above
            // makes a retransmission get it again, uncounted.
            let how = self.refused_how(rejection);
            self.refused.remember(key.0, how);
            self.reply(now, msg, ctx.source, super::Answer::new(status, &reason), &extra, out);
            return;
        }
        let Some(id) = self.new_tx(now, ctx.source, msg, key, Vec::new(), false) else { return };
        self.final_answer(now, id, status, &reason, &extra, out);
    }

    /// On failover to another gateway: give back the current carrier/gateway channels and
    /// reserve the new ones. False when the new gateway (or its carrier) has no room.
    pub(super) fn move_egress(&mut self, now: Instant, call: &CallKey, egress: &[Demand; 2]) -> bool {
        if !self.limiter.moves_egress() {
            return true;
        }
        let Some(dialog) = self.dialogs.get_mut(call) else { return true };
        let Some(held) = dialog.reservation.as_mut() else { return true };
        match self.limiter.admit(now, egress, true) {
            Ok(new) => {
                let old = held.split_egress();
                held.absorb(new);
                self.limiter.release(now, old);
                true
            }
            Err(r) => {
                if self.events.allow(now) {
                    tracing::info!(event = "call.failover_full", call_id = %String::from_utf8_lossy(call.call_id()), key = %r.key, "failover gateway has no room");
                }
                false
            }
        }
    }

    /// Remembers that a new call was challenged (401/407): the INVITE re-sent with
    /// credentials is the same call and takes no second CPS slot.
    pub(super) fn remember_challenge(&mut self, now: Instant, call: CallKey) {
        let timer = self.timers.at(now + LINGER, Timer::ChallengeExpiry(call.clone()));
        if let Some(old) = self.challenged.insert(call, timer) {
            self.timers.cancel(old);
        }
    }

    /// True (once) when this INVITE answers a recent challenge of the same call (Call-ID
    /// and From tag).
    fn take_challenge(&mut self, call_id: &[u8], from_tag: &[u8]) -> bool {
        let Some(timer) = self.challenged.remove(&*super::dialog::KeyBytes::of(call_id, from_tag)) else {
            return false;
        };
        self.timers.cancel(timer);
        true
    }

    /// The record of a call a limit turned away: written at once (it has no dialog).
    fn record_refusal(
        &self,
        now: Instant,
        ctx: &CallContext<'_>,
        plan: &CallPlan,
        rejection: &Rejection,
        status: u16,
        arrived: Instant,
    ) {
        let record = call_record(ctx, plan, None, arrived);
        let limit = would_reject_text(std::slice::from_ref(rejection));
        let outcome = Outcome { disposition: Disposition::Refused, status, limit: &limit, hung_up: None };
        self.write_record(now, &record, &outcome);
    }

    /// Takes a parked call's admission state (it is admitted, refused or cancelled now).
    fn take_pending(&mut self, id: TxId) -> Option<Box<PendingCall>> {
        let p = self.txs.get_mut(&id)?.pending.take()?;
        self.unpark(id);
        Some(p)
    }

    /// Forgets that transaction `id` parks a call.
    fn unpark(&mut self, id: TxId) {
        if let Some(call) = self.txs.get(&id).and_then(|t| t.call.clone()) {
            if self.parked.get(&call) == Some(&id) {
                self.parked.remove(&call);
            }
        }
    }

    fn log_decision(
        &self,
        now: Instant,
        ctx: &CallContext<'_>,
        plan: &CallPlan,
        d: Decision<'_>,
        counted: bool,
        waited: Option<Duration>,
    ) {
        if !self.decisions.allow(now) {
            return;
        }
        let Decision { chosen, decision, rejection, would_reject } = d;
        let candidate = chosen.and_then(|i| plan.candidates.get(i));
        let customer =
            ctx.customer.and_then(|c| self.config.customers.get(c)).map_or("", |c| c.name.as_str());
        let route = plan
            .common
            .iter()
            .find(|d| d.key.scope == Scope::Route)
            .map(|d| d.key.name.label())
            .unwrap_or_default();
        let carrier =
            candidate.and_then(|c| self.config.carriers.get(c.carrier)).map_or("", |c| c.name.as_str());
        let gateway = candidate.map(|c| c.demands[1].key.name.label()).unwrap_or_default();
        let did = plan
            .common
            .iter()
            .find(|d| d.key.scope == Scope::Did)
            .map(|d| d.key.name.label())
            .unwrap_or_default();
        tracing::info!(
            event = "call.admission",
            call_id = %String::from_utf8_lossy(ctx.call_id),
            source = %ctx.source.addr.ip(),
            user = %String::from_utf8_lossy(ctx.user.unwrap_or_default()),
            customer,
            route = %route,
            carrier,
            gateway = %gateway,
            did = %did,
            number = %String::from_utf8_lossy(ctx.number),
            decision,
            scope = rejection.map_or("", |r| r.key.scope.as_str()),
            key = %rejection.map(|r| r.key.name.label()).unwrap_or_default(),
            kind = rejection.map_or("", |r| r.kind.as_str()),
            would_reject = %would_reject_text(would_reject),
            cps_counted = counted,
            wait_ms = waited.map_or(0, |w| w.as_millis() as u64),
            "admission decision"
        );
    }
}

/// What a call's record starts with: who called what, and where it was sent (candidate
/// `chosen`). Names are the plan's own (shared, not copied).
fn call_record(
    ctx: &CallContext<'_>,
    plan: &CallPlan,
    chosen: Option<usize>,
    arrived: Instant,
) -> CallRecord {
    let text = |d: &Demand| match &d.key.name {
        crate::limit::KeyName::Text(t) => Some(t.clone()),
        _ => None,
    };
    let customer = plan.common.iter().find(|d| d.key.scope == Scope::Customer).and_then(text);
    let candidate = chosen.and_then(|i| plan.candidates.get(i));
    CallRecord {
        call_id: Bytes::copy_from_slice(ctx.call_id),
        customer: if ctx.customer.is_some() { customer } else { None },
        source: ctx.source.addr.ip(),
        user: Bytes::copy_from_slice(ctx.user.unwrap_or_default()),
        number: Bytes::copy_from_slice(ctx.number),
        carrier: candidate.and_then(|c| text(&c.demands[0])),
        gateway: candidate.and_then(|c| text(&c.demands[1])),
        arrived,
        admitted: None,
        answered: None,
    }
}

/// What one `call.admission` event reports.
struct Decision<'a> {
    /// The candidate admitted on.
    chosen: Option<usize>,
    decision: &'a str,
    /// The limit that refused (or queued) the call.
    rejection: Option<&'a Rejection>,
    /// Shadow limits the admitted call went over.
    would_reject: &'a [Rejection],
}

impl<'a> Decision<'a> {
    fn refused(decision: &'a str, rejection: &'a Rejection) -> Self {
        Self { chosen: None, decision, rejection: Some(rejection), would_reject: &[] }
    }
}

/// `scope:key:kind` of each shadow limit a call went over, comma-separated ("" for none):
/// `customer:acme:channels`, `server::cps`.
fn would_reject_text(hits: &[Rejection]) -> String {
    let mut text = String::new();
    for (i, r) in hits.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(r.key.scope.as_str());
        text.push(':');
        text.push_str(&r.key.name.label());
        text.push(':');
        text.push_str(r.kind.as_str());
    }
    text
}

/// The admitted gateway first, then the later candidates (reserved only on failover).
fn targets_from(plan: &CallPlan, i: usize) -> Vec<Target> {
    let mut targets = Vec::with_capacity(plan.candidates.len() - i);
    if let Some(c) = plan.candidates.get(i) {
        targets.push(Target::plain(c.peer));
    }
    targets.extend(
        plan.candidates
            .iter()
            .skip(i + 1)
            .map(|c| Target { peer: c.peer, egress: Some(Box::new(c.demands.clone())) }),
    );
    targets
}
