//! The limit phase of a new call: every applicable limit is checked and reserved at once
//! (server, customer, ip, user, route, did, then carrier and gateway, trying the route's
//! gateways in order when one is full), or the call is refused with the configured answer.
//! One structured `call.admission` event records each decision.

use bytes::Bytes;
use tokio::time::Instant;

use super::timer::{LINGER, Timer};
use super::transaction::Target;
use super::{Action, Answer, Proxy};
use crate::limit::customers::CustomerId;
use crate::limit::plan::CallPlan;
use crate::limit::{Demand, Refusal, Rejection, Reservation, Scope};
use crate::peer::Peer;
use crate::sip::{HeaderName, Message};
use crate::stats::Stats;

/// What the admission decision is logged with.
pub(super) struct CallContext<'m, 'a> {
    pub msg: &'m Message<'a>,
    pub source: Peer,
    pub customer: Option<CustomerId>,
    pub user: Option<&'a [u8]>,
    pub number: &'a [u8],
}

impl Proxy {
    /// Admits a new call under its plan. On success returns the targets (the admitted gateway
    /// first, then the later ones for failover) and the reservation; on refusal answers the
    /// caller and returns `None`.
    pub(super) fn admit(
        &mut self,
        now: Instant,
        plan: &CallPlan,
        ctx: &CallContext<'_, '_>,
        out: &mut Vec<Action>,
        key: Vec<u8>,
    ) -> Option<(Vec<Target>, Reservation)> {
        let call_id = ctx.msg.call_id().unwrap_or_default();
        let count_cps = !self.take_challenge(call_id, ctx.msg.tag(HeaderName::From).unwrap_or_default());
        let mut demands: Vec<Demand> = Vec::with_capacity(plan.common.len() + 2);
        demands.extend(plan.common.iter().cloned());
        let common = demands.len();
        let mut refusal: Option<Rejection> = None;
        for (i, candidate) in plan.candidates.iter().enumerate() {
            demands.truncate(common);
            demands.extend(candidate.demands.iter().cloned());
            match self.limiter.admit(now, &demands, count_cps) {
                Ok(reservation) => {
                    Stats::bump(&self.stats.calls_admitted);
                    let customer =
                        ctx.customer.and_then(|c| self.config.customers.get(c)).map(|c| c.name.as_str());
                    let carrier = self.config.carriers.get(candidate.carrier).map_or("", |c| c.name.as_str());
                    {
                        let mut usage = self.usage.lock();
                        match customer {
                            Some(name) => {
                                usage.record(now, &[("server", ""), ("customer", name), ("carrier", carrier)])
                            }
                            None => usage.record(now, &[("server", ""), ("carrier", carrier)]),
                        }
                    }
                    self.log_decision(ctx, Some(i), plan, "admitted", None, count_cps);
                    let mut targets = vec![Target::plain(candidate.peer)];
                    targets.extend(
                        plan.candidates[i + 1..]
                            .iter()
                            .map(|c| Target { peer: c.peer, egress: Some(Box::new(c.demands.clone())) }),
                    );
                    return Some((targets, reservation));
                }
                Err(r) if r.key.scope.is_egress() => refusal = Some(r),
                Err(r) => {
                    refusal = Some(r);
                    break;
                }
            }
        }
        let rejection = refusal?;
        self.refuse_over_limit(now, ctx, plan, &rejection, key, out);
        None
    }

    /// Answers a call no limit had room for: `503 CPS Limit reached` / `503 Channel Limit
    /// reached` (status, phrases and Retry-After from `[overflow]`), or `302` to the overflow
    /// servers when the server-wide limit is what is full. The answer goes through a
    /// transaction, so a retransmitted INVITE gets it again and its ACK is absorbed.
    fn refuse_over_limit(
        &mut self,
        now: Instant,
        ctx: &CallContext<'_, '_>,
        plan: &CallPlan,
        rejection: &Rejection,
        key: Vec<u8>,
        out: &mut Vec<Action>,
    ) {
        let config = self.config.clone();
        let overflow = &config.overflow;
        let redirect = rejection.key.scope == Scope::Server && !overflow.redirect.is_empty();
        let (answer, header, value) = if redirect {
            Stats::bump(&self.stats.calls_redirected);
            (Answer::new(302, "Moved Temporarily"), "Contact", overflow.redirect.join(", "))
        } else {
            let reason = match rejection.kind {
                Refusal::Cps => {
                    Stats::bump(&self.stats.calls_rejected_cps);
                    overflow.cps_reason.as_str()
                }
                Refusal::Channels => {
                    Stats::bump(&self.stats.calls_rejected_channels);
                    overflow.channels_reason.as_str()
                }
            };
            (Answer::new(overflow.status, reason), "Retry-After", overflow.retry_after.to_string())
        };
        self.stats.limit_hit(&rejection.key, rejection.kind);
        self.log_decision(
            ctx,
            None,
            plan,
            if redirect { "redirected" } else { "rejected" },
            Some(rejection),
            true,
        );
        let extra: &[(&str, &[u8])] = if header == "Retry-After" && overflow.retry_after == 0 {
            &[]
        } else {
            &[(header, value.as_bytes())]
        };
        let Some(id) = self.new_tx(now, ctx.source, ctx.msg, key, Vec::new(), false) else { return };
        let Some(tx) = self.txs.get(&id) else { return };
        let mut splice = crate::sip::edit::Splice::new(ctx.msg.buf);
        if super::stamp::stamp(ctx.msg, ctx.source, &mut splice).is_none() {
            return;
        }
        let data = crate::sip::reply::response(
            ctx.msg,
            &mut splice,
            answer.status,
            answer.reason,
            Some(&tx.to_tag),
            extra,
        );
        self.finish_with(now, id, Bytes::from(data), out);
    }

    /// On failover to another gateway: give back the current carrier/gateway channels and
    /// reserve the new ones. False when the new gateway (or its carrier) has no room.
    pub(super) fn move_egress(&mut self, now: Instant, call_id: &[u8], egress: &[Demand; 2]) -> bool {
        let Some(dialog) = self.dialogs.get_mut(call_id) else { return true };
        let Some(held) = dialog.reservation.as_mut() else { return true };
        match self.limiter.admit(now, egress, true) {
            Ok(new) => {
                let (old, keep): (Vec<_>, Vec<_>) = held.keys.drain(..).partition(|k| k.scope.is_egress());
                held.keys = keep;
                held.keys.extend(new.keys);
                self.limiter.release(now, &Reservation { keys: old });
                true
            }
            Err(r) => {
                tracing::info!(event = "call.failover_full", call_id = %String::from_utf8_lossy(call_id), key = %r.key, "failover gateway has no room");
                false
            }
        }
    }

    /// Remembers that a new call was challenged (401/407): the INVITE re-sent with
    /// credentials is the same call and takes no second CPS slot.
    pub(super) fn remember_challenge(&mut self, now: Instant, call_id: &Bytes, from_tag: &[u8]) {
        let timer = self.timers.at(now + LINGER, Timer::ChallengeExpiry(call_id.to_vec()));
        if let Some((_, old)) =
            self.challenged.insert(call_id.clone(), (Bytes::copy_from_slice(from_tag), timer))
        {
            self.timers.cancel(old);
        }
    }

    /// True (once) when this INVITE answers a recent challenge for the same Call-ID and From tag.
    fn take_challenge(&mut self, call_id: &[u8], from_tag: &[u8]) -> bool {
        match self.challenged.get(call_id) {
            Some((tag, _)) if tag.as_ref() == from_tag => {}
            _ => return false,
        }
        if let Some((_, timer)) = self.challenged.remove(call_id) {
            self.timers.cancel(timer);
        }
        true
    }

    fn log_decision(
        &self,
        ctx: &CallContext<'_, '_>,
        chosen: Option<usize>,
        plan: &CallPlan,
        decision: &str,
        rejection: Option<&Rejection>,
        counted: bool,
    ) {
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
            call_id = %String::from_utf8_lossy(ctx.msg.call_id().unwrap_or_default()),
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
            kind = rejection.map_or("", |r| match r.kind { Refusal::Cps => "cps", Refusal::Channels => "channels" }),
            cps_counted = counted,
            "admission decision"
        );
    }
}
