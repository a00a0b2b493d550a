//! Requests, in the order the proxy decides about them: sanity, ACK and CANCEL (hop-by-hop),
//! retransmissions (absorbed), Max-Forwards, loops, then in-dialog (by dialog state) or
//! initial (by the route table) and forwarding on a new transaction.

use bytes::Bytes;
use tokio::time::Instant;

use super::dialog::{CallKey, Direction, Phase};
use super::forward::{self, RequestEdits};
use super::pending::CallContext;
use super::sanity::{self, Refusal};
use super::timer::{T1, Timer};
use super::transaction::{
    Branch, ClientState, Failure, ServerKey, ServerSide, ServerState, Target, Tx, TxId,
};
use super::{Action, Answer, MAX_DIALOGS, MAX_TRANSACTIONS, Proxy, branch};
use crate::limit::plan::RouteRef;
use crate::peer::{Peer, Transport};
use crate::sip::uri::{Uri, dialed_number};
use crate::sip::{HeaderName, Message, Method, via};
use crate::stats::Stats;

/// What the proxy allows in `Allow` when it answers OPTIONS itself.
const ALLOW: &[u8] = b"INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, PRACK, INFO, REFER, NOTIFY, MESSAGE";

impl Proxy {
    pub(super) fn on_request(
        &mut self,
        now: Instant,
        source: Peer,
        msg: &Message<'_>,
        out: &mut Vec<Action>,
    ) {
        if let Some(e) = &msg.start_error {
            let refusal = match e {
                crate::sip::ParseError::Version => Answer::new(505, "Version Not Supported"),
                _ => Answer::new(400, "Malformed Request-Line"),
            };
            return self.refuse_malformed(now, source, msg, refusal, out);
        }
        if let Some(e) = &msg.body_error {
            let reason = match e {
                crate::sip::ParseError::DuplicateContentLength => "Duplicate Content-Length",
                crate::sip::ParseError::BodyTruncated => "Body Shorter Than Content-Length",
                _ => "Bad Content-Length",
            };
            return self.refuse_malformed(now, source, msg, Answer::new(400, reason), out);
        }
        if let Err(refusal) = sanity::check_request(msg) {
            return self.refuse_malformed(now, source, msg, refusal, out);
        }
        let method = msg.method().unwrap_or(Method::Other);
        match method {
            Method::Ack => return self.on_ack(now, source, msg, out),
            Method::Cancel => return self.on_cancel(now, source, msg, out),
            _ => {}
        }
        let key = server_key(&self.secret, msg, None);
        if self.by_server.contains_key(&key) {
            return self.absorb_retransmission(key, out);
        }
        if let Some(tags) = proxy_require(msg) {
            // RFC 3261 §16.3 step 5: sluice supports no option tags, so every one a request
            // asks the proxy to support is one it does not.
            self.reply(now, msg, source, Answer::new(420, "Bad Extension"), &[("Unsupported", &tags)], out);
            return;
        }
        let max_forwards = msg.max_forwards().ok().flatten();
        let uri = msg.request_uri().and_then(|u| Uri::parse(u).ok());
        let to_me = uri.as_ref().is_some_and(|u| self.me.is_my_uri(u));
        if method == Method::Options && to_me && msg.tag(HeaderName::To).is_none() {
            // A health ping from a peer (RFC 3261 §11): answered here, never forwarded.
            self.reply(
                now,
                msg,
                source,
                Answer::new(200, "OK"),
                &[("Allow", ALLOW), ("Accept", b"application/sdp")],
                out,
            );
            return;
        }
        if max_forwards == Some(0) {
            self.reply(now, msg, source, Answer::new(483, "Too Many Hops"), &[], out);
            return;
        }
        if self.is_loop(msg) {
            Stats::bump(&self.stats.loops);
            self.reply(now, msg, source, Answer::new(482, "Loop Detected"), &[], out);
            return;
        }
        if self.txs.len() >= MAX_TRANSACTIONS {
            return self.overloaded(now, source, msg, out);
        }
        match msg.tag(HeaderName::To) {
            Some(to_tag) => self.in_dialog(now, source, msg, to_tag, key, out),
            None => self.initial(now, source, msg, uri, key, out),
        }
    }

    /// The state tables are full: `503 Server Overloaded`, try again in a few seconds.
    fn overloaded(&mut self, now: Instant, source: Peer, msg: &Message<'_>, out: &mut Vec<Action>) {
        self.reply(now, msg, source, Answer::new(503, "Server Overloaded"), &[("Retry-After", b"5")], out);
    }

    /// A request the proxy cannot act on: `400`/`416` if it can be answered, else dropped.
    fn refuse_malformed(
        &mut self,
        now: Instant,
        source: Peer,
        msg: &Message<'_>,
        refusal: Refusal,
        out: &mut Vec<Action>,
    ) {
        self.stats.malformed(source.transport);
        if self.warn.allow(now) {
            tracing::warn!(
                event = "sip.bad_request",
                source = %source,
                call_id = %String::from_utf8_lossy(msg.call_id().unwrap_or_default()),
                status = refusal.status,
                reason = refusal.reason,
                "request refused"
            );
        }
        if sanity::answerable(msg) && msg.method() != Some(Method::Ack) {
            self.reply(now, msg, source, refusal, &[], out);
        }
    }

    /// An initial request (no To tag): routed by the Request-URI user through the route table.
    fn initial(
        &mut self,
        now: Instant,
        source: Peer,
        msg: &Message<'_>,
        uri: Option<Uri<'_>>,
        key: ServerKey,
        out: &mut Vec<Action>,
    ) {
        let method = msg.method().unwrap_or(Method::Other);
        let call_id = msg.call_id().unwrap_or_default();
        if method == Method::Invite && self.draining {
            Stats::bump(&self.stats.calls_refused_draining);
            let retry = self.config.overflow.retry_after.max(1).to_string();
            match self.config.overflow.redirect.first() {
                Some(_) => {
                    let contacts = self.config.overflow.redirect.join(", ");
                    self.reply(
                        now,
                        msg,
                        source,
                        Answer::new(302, "Moved Temporarily"),
                        &[("Contact", contacts.as_bytes())],
                        out,
                    );
                }
                None => {
                    self.reply(
                        now,
                        msg,
                        source,
                        Answer::new(503, "Service Unavailable"),
                        &[("Retry-After", retry.as_bytes())],
                        out,
                    );
                }
            }
            return;
        }
        if let Some(flow) = self.flow_of(source, msg) {
            return self.toward_flow(now, source, msg, flow, key, out);
        }
        let ip = source.addr.ip();
        let verified;
        let user = match &self.auth {
            // Without [auth] a username is what the caller claims (README: Security).
            None => crate::sip::auth::request_username(msg),
            Some(_) => match self.authenticate(now, source, msg, out) {
                Some(user) => {
                    verified = user;
                    verified.as_deref().map(str::as_bytes)
                }
                None => return,
            },
        };
        let customer = self.customers.identify(ip, user);
        if customer.is_none() && !self.config.allow_unknown {
            Stats::bump(&self.stats.calls_forbidden);
            if self.events.allow(now) {
                tracing::info!(event = "call.forbidden", call_id = %String::from_utf8_lossy(call_id), source = %source, "source matches no customer");
            }
            self.reply(now, msg, source, Answer::new(403, "Forbidden"), &[], out);
            return;
        }
        // A REGISTER names no user in its Request-URI (RFC 3261 §10.2): it is routed by the
        // address-of-record in To.
        let to_aor = (method == Method::Register).then(|| to_user(msg)).flatten();
        let number = match to_aor {
            Some(user) => user,
            None => uri.as_ref().and_then(|u| u.user).map(dialed_number).unwrap_or_default(),
        };
        let route_owner = customer.and_then(|c| self.config.route_owner(c));
        let own_routes = route_owner.and_then(|c| self.config.customers[c].routes.as_ref());
        let table = own_routes.unwrap_or(&self.config.routes);
        let Some((index, route)) = table.lookup(number) else {
            if method == Method::Invite {
                Stats::bump(&self.stats.calls_no_route);
            }
            tracing::debug!(event = "call.no_route", call_id = %String::from_utf8_lossy(call_id), number = %String::from_utf8_lossy(number), "no route");
            self.reply(now, msg, source, Answer::new(404, "Not Found"), &[], out);
            return;
        };
        if method != Method::Invite {
            // Not a new call: no limits, every gateway of the route in order.
            let targets: Vec<Target> = route
                .carriers
                .iter()
                .flat_map(|&c| self.config.carriers[c].gateways.iter())
                .map(|g| Target::plain(Peer { transport: g.transport, addr: g.addr, conn: None }))
                .collect();
            self.open_tx(now, source, msg, key, targets, false, out);
            return;
        }
        if self.dialogs.len() >= MAX_DIALOGS {
            return self.overloaded(now, source, msg, out);
        }
        let from_tag = msg.tag(HeaderName::From).unwrap_or_default();
        let call = CallKey::new(call_id, from_tag);
        if self.call_in_use(&call) {
            // RFC 3261 §8.2.2.2: a new INVITE of a call that is already up (or waiting) is a
            // merged request. It is refused; it never replaces or releases the live call.
            if self.warn.allow(now) {
                tracing::info!(event = "call.merged", call_id = %String::from_utf8_lossy(call_id), source = %source, "new INVITE for a live call's Call-ID and From tag");
            }
            self.reply(now, msg, source, Answer::new(482, "Loop Detected"), &[], out);
            return;
        }
        let route_ref = RouteRef { customer: route_owner, index };
        let plan = self.planner.plan(customer, ip, user, route_ref, number);
        if plan.candidates.is_empty() {
            Stats::bump(&self.stats.calls_no_route);
            self.reply(now, msg, source, Answer::new(404, "Not Found"), &[], out);
            return;
        }
        let mut plan = plan;
        if self.config.overflow.emergency.iter().any(|n| n.as_bytes() == number) {
            // Emergency numbers are never queued or refused by a limit; still counted.
            for d in
                plan.common.iter_mut().chain(plan.candidates.iter_mut().flat_map(|c| c.demands.iter_mut()))
            {
                *d = d.unlimited();
            }
        }
        if self.refused_again(now, source, msg, &key, out) {
            return;
        }
        let ctx = CallContext { call_id, source, customer, user, number };
        let Some((targets, reservation, record)) = self.admit(now, plan, &ctx, msg, out, key) else {
            return;
        };
        // The call record first, so every way the transaction can end (even at once, when
        // no target is left) ends the call and releases its channels.
        self.open_call(now, call.clone(), source, reservation, record);
        if self.open_tx(now, source, msg, key, targets, true, out).is_none() {
            self.drop_call(now, &call, super::call::CallEnd::Failed { status: 0, cancelled: false });
        }
    }

    /// A request inside a dialog the proxy tracks: sent to the other side's peer. Anything
    /// claiming a dialog the proxy does not know gets `481` and goes nowhere (no open relay).
    fn in_dialog(
        &mut self,
        now: Instant,
        source: Peer,
        msg: &Message<'_>,
        to_tag: &[u8],
        key: ServerKey,
        out: &mut Vec<Action>,
    ) {
        let call_id = msg.call_id().unwrap_or_default();
        let from_tag = msg.tag(HeaderName::From).unwrap_or_default();
        let method = msg.method().unwrap_or(Method::Other);
        let Some(found) = self.find_call(call_id, from_tag, to_tag) else {
            return self.no_dialog(now, source, msg, out);
        };
        let (call, direction, target) = (found.call, found.direction, found.to);
        if method == Method::Bye && found.live {
            let by = match direction {
                Direction::ToCallee => super::record::HungUp::Caller,
                Direction::ToCaller => super::record::HungUp::Callee,
            };
            self.hangup_call(now, &call, by);
            tracing::debug!(event = "call.hangup", call_id = %String::from_utf8_lossy(call_id), by = ?direction, "BYE");
        }
        if let Some(id) = self.open_tx(now, source, msg, key, vec![Target::plain(target)], false, out) {
            if let Some(tx) = self.txs.get_mut(&id) {
                tx.call = Some(call);
            }
        }
    }

    /// The registered flow a request is for: its first Route is a Path URI of sluice's with
    /// a token that verifies, and it comes from a configured gateway (the registrar side).
    /// From anyone else a token is ignored, so a caller cannot reach other phones' flows.
    fn flow_of(&self, source: Peer, msg: &Message<'_>) -> Option<Peer> {
        let token = forward::flow_token(msg, &self.me)?;
        let from_gateway = self
            .config
            .carriers
            .iter()
            .flat_map(|c| c.gateways.iter())
            .any(|g| g.addr.ip() == source.addr.ip());
        if !from_gateway {
            Stats::bump(&self.stats.stray);
            return None;
        }
        super::flow::peer(&self.flows, token)
    }

    /// A request from the registrar side for a registered contact: straight down the
    /// phone's flow. An INVITE is tracked as a call (record-routed, so its BYE finds it) but
    /// takes no limit: limits protect what is behind sluice, not the phones in front.
    fn toward_flow(
        &mut self,
        now: Instant,
        source: Peer,
        msg: &Message<'_>,
        flow: Peer,
        key: ServerKey,
        out: &mut Vec<Action>,
    ) {
        let targets = vec![Target::plain(flow)];
        if msg.method() != Some(Method::Invite) {
            self.open_tx(now, source, msg, key, targets, false, out);
            return;
        }
        let call_id = msg.call_id().unwrap_or_default();
        let from_tag = msg.tag(HeaderName::From).unwrap_or_default();
        let call = CallKey::new(call_id, from_tag);
        if self.call_in_use(&call) {
            self.reply(now, msg, source, Answer::new(482, "Loop Detected"), &[], out);
            return;
        }
        let record = Box::new(super::record::CallRecord {
            call_id: Bytes::copy_from_slice(call_id),
            customer: None,
            source: source.addr.ip(),
            user: Bytes::new(),
            number: msg
                .request_uri()
                .and_then(|u| Uri::parse(u).ok())
                .and_then(|u| u.user)
                .map(Bytes::copy_from_slice)
                .unwrap_or_default(),
            carrier: None,
            gateway: None,
            arrived: now,
            admitted: Some(now),
            answered: None,
        });
        self.open_call(now, call.clone(), source, crate::limit::Reservation::default(), record);
        if self.open_tx(now, source, msg, key, targets, true, out).is_none() {
            self.drop_call(now, &call, super::call::CallEnd::Failed { status: 0, cancelled: false });
        }
    }

    fn no_dialog(&mut self, now: Instant, source: Peer, msg: &Message<'_>, out: &mut Vec<Action>) {
        Stats::bump(&self.stats.stray);
        if self.warn.allow(now) {
            tracing::info!(event = "sip.no_dialog", source = %source, call_id = %String::from_utf8_lossy(msg.call_id().unwrap_or_default()), "in-dialog request for an unknown dialog");
        }
        self.reply(now, msg, source, Answer::new(481, "Call/Transaction Does Not Exist"), &[], out);
    }

    /// Creates the transaction for a request and sends it on its first branch. INVITEs get
    /// `100 Trying` at once, so the caller stops retransmitting.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open_tx(
        &mut self,
        now: Instant,
        source: Peer,
        msg: &Message<'_>,
        key: ServerKey,
        targets: Vec<Target>,
        creates_dialog: bool,
        out: &mut Vec<Action>,
    ) -> Option<TxId> {
        let id = self.new_tx(now, source, msg, key, targets, creates_dialog)?;
        if msg.method() == Some(Method::Invite) {
            self.send_trying(id, msg, out);
        }
        if !self.next_branch(now, id, msg, out) {
            // Every target was skipped (backed off, or no room on failover): the caller is
            // answered now rather than left with a transaction nothing will ever end.
            if let Some(tx) = self.txs.get_mut(&id) {
                tx.failure = Failure::Unreachable;
            }
            self.answer_ourselves(now, id, out);
        }
        Some(id)
    }

    /// `100 Trying` for an INVITE transaction, kept as its last response (a retransmitted
    /// INVITE gets it again).
    pub(super) fn send_trying(&mut self, id: TxId, msg: &Message<'_>, out: &mut Vec<Action>) {
        let Some(tx) = self.txs.get_mut(&id) else { return };
        let mut splice = crate::sip::edit::Splice::new(msg.buf);
        if super::stamp::stamp(msg, tx.source, &mut splice).is_none() {
            return;
        }
        let trying = Bytes::from(crate::sip::reply::response(msg, &mut splice, 100, "Trying", None, &[]));
        tx.last_response = Some(trying.clone());
        let to = tx.reply_to;
        self.send(out, to, trying, None, false);
    }

    /// Creates and registers a transaction for a request, sending nothing.
    pub(super) fn new_tx(
        &mut self,
        now: Instant,
        source: Peer,
        msg: &Message<'_>,
        key: ServerKey,
        mut targets: Vec<Target>,
        creates_dialog: bool,
    ) -> Option<TxId> {
        let reply_to = super::stamp::stamp(msg, source, &mut crate::sip::edit::Splice::new(msg.buf))?;
        let id = self.next_seq();
        targets.reverse(); // popped from the back, tried in configured order
        let method_name = match msg.start {
            crate::sip::StartLine::Request { method_name, .. } => msg.bytes(method_name),
            crate::sip::StartLine::Response { .. } => b"",
        };
        let tx = Tx {
            id,
            is_invite: msg.method() == Some(Method::Invite),
            call_id: Bytes::copy_from_slice(msg.call_id().unwrap_or_default()),
            call: creates_dialog.then(|| {
                CallKey::new(msg.call_id().unwrap_or_default(), msg.tag(HeaderName::From).unwrap_or_default())
            }),
            server_key: key,
            source,
            reply_to,
            request: Bytes::copy_from_slice(&msg.buf[..msg.body.end as usize]),
            server: ServerState::Proceeding,
            last_response: None,
            final_interval: T1,
            to_tag: self.tag_for(msg),
            branch: None,
            remaining: targets,
            pending: None,
            refreshes_session: !creates_dialog && (method_name == b"INVITE" || method_name == b"UPDATE"),
            cancelled: false,
            failure: Failure::None,
            creates_dialog,
            created: now,
        };
        self.by_server.insert(key, ServerSide::Live(id));
        self.txs.insert(id, tx);
        Some(id)
    }

    /// Sends the request on the next untried target. Returns false when none is left.
    pub(super) fn next_branch(
        &mut self,
        now: Instant,
        id: TxId,
        msg: &Message<'_>,
        out: &mut Vec<Action>,
    ) -> bool {
        let seq = self.next_seq();
        let hash = branch::loop_hash(&self.secret, msg);
        let Some(tx) = self.txs.get_mut(&id) else {
            return false;
        };
        let Some(next) = tx.remaining.pop() else {
            return false;
        };
        let target = next.peer;
        // A backed-off gateway is skipped by new calls only: a request inside a call still
        // goes to that call's peer.
        if tx.creates_dialog && self.backoff.is_backed_off(now, target.addr) {
            return self.next_branch(now, id, msg, out);
        }
        if let Some(egress) = next.egress {
            // A failover target: its carrier and gateway limits must have room too.
            let call = tx.call.clone();
            if call.is_some_and(|c| !self.move_egress(now, &c, &egress)) {
                return self.next_branch(now, id, msg, out);
            }
        }
        let Some(tx) = self.txs.get_mut(&id) else {
            return false;
        };
        if let Some(mut old) = tx.branch.take() {
            old.settle(&mut self.timers);
            self.by_branch.remove(&old.id);
        }
        let branch_id = branch::make(&self.secret, hash, seq);
        let record_route = tx.creates_dialog;
        let source = tx.source;
        let own_realm = self.auth.as_ref().map(|v| v.realm());
        let path = (msg.method() == Some(Method::Register)).then(|| super::flow::token(&self.flows, source));
        let (data, _) = forward::request(
            msg,
            source,
            &self.me,
            &RequestEdits {
                out: target.transport,
                branch: &branch_id,
                record_route,
                own_realm,
                path_flow: path.as_deref(),
            },
        );
        let data = Bytes::from(data);
        let number = seq as u32;
        tx.branch = Some(Box::new(Branch {
            number,
            id: branch_id.clone(),
            target,
            request: data.clone(),
            state: ClientState::Calling,
            interval: T1,
            cancel: None,
            ack: None,
            no_answer: Some(self.timers.at(now + self.config.gateway_timeout, Timer::NoAnswer(id, number))),
            ringing: None,
        }));
        self.by_branch.insert(branch_id, id);
        if target.transport == Transport::Udp {
            self.timers.after(now, super::timer::Lane::T1, Timer::Retransmit(id, number));
        }
        if let Some(d) = tx.call.as_ref().and_then(|c| self.dialogs.get_mut(c)) {
            if tx.creates_dialog && d.phase == Phase::Early {
                d.callee = target;
            }
        }
        self.send(out, target, data, Some(id), true);
        true
    }

    /// A retransmitted request: the last response is sent again (or nothing yet: absorbed;
    /// after a 2xx to an INVITE, always: RFC 6026).
    fn absorb_retransmission(&mut self, key: ServerKey, out: &mut Vec<Action>) {
        let again = match self.by_server.get(&key) {
            Some(ServerSide::Live(id)) => self
                .txs
                .get(id)
                .filter(|tx| tx.server != ServerState::Accepted)
                .and_then(|tx| Some((tx.reply_to, tx.last_response.clone()?))),
            Some(ServerSide::Done(Some(answered))) => {
                Some((Peer::udp(answered.to), answered.response.clone()))
            }
            Some(ServerSide::Done(None)) | None => None,
        };
        if let Some((to, last)) = again {
            self.send(out, to, last, None, false);
        }
    }

    /// ACK: for a non-2xx the proxy answered, it ends the server transaction here; for a
    /// 2xx it is an in-dialog request that travels end to end, statelessly.
    fn on_ack(&mut self, now: Instant, source: Peer, msg: &Message<'_>, out: &mut Vec<Action>) {
        let key = server_key(&self.secret, msg, Some(b"INVITE"));
        if let Some(&ServerSide::Live(id)) = self.by_server.get(&key) {
            if let Some(tx) = self.txs.get_mut(&id) {
                if tx.server == ServerState::Completed {
                    // Timer I: ACK retransmissions are absorbed for T4 over UDP.
                    tx.server = ServerState::Confirmed;
                    if tx.reply_to.transport == Transport::Udp {
                        self.timers.after(now, super::timer::Lane::T4, Timer::Forget(id));
                    } else {
                        self.timers.at(now, Timer::Forget(id));
                    }
                }
                if tx.server != ServerState::Accepted {
                    return;
                }
            }
        }
        let (Some(call_id), Some(to_tag)) = (msg.call_id(), msg.tag(HeaderName::To)) else {
            Stats::bump(&self.stats.stray);
            return;
        };
        let from_tag = msg.tag(HeaderName::From).unwrap_or_default();
        let Some(found) = self.find_call(call_id, from_tag, to_tag) else {
            Stats::bump(&self.stats.stray);
            return;
        };
        if found.live && found.direction == Direction::ToCallee {
            self.acked(&found.call);
        }
        let target = found.to;
        let seq = self.next_seq();
        let branch_id = branch::make(&self.secret, branch::loop_hash(&self.secret, msg), seq);
        let (data, _) = forward::request(
            msg,
            source,
            &self.me,
            &RequestEdits {
                out: target.transport,
                branch: &branch_id,
                record_route: false,
                own_realm: self.auth.as_ref().map(|v| v.realm()),
                path_flow: None,
            },
        );
        self.send(out, target, Bytes::from(data), None, true);
    }

    /// CANCEL is answered `200` hop by hop and, once the branch has a provisional response,
    /// sent on to the gateway (RFC 3261 §16.10). The 487 then comes back on the INVITE.
    fn on_cancel(&mut self, now: Instant, source: Peer, msg: &Message<'_>, out: &mut Vec<Action>) {
        let key = server_key(&self.secret, msg, Some(b"INVITE"));
        let Some(side) = self.by_server.get(&key) else {
            self.reply(now, msg, source, Answer::new(481, "Call/Transaction Does Not Exist"), &[], out);
            return;
        };
        let live = match side {
            ServerSide::Live(id) => Some(*id),
            ServerSide::Done(_) => None,
        };
        self.reply(now, msg, source, Answer::new(200, "OK"), &[], out);
        let Some(id) = live else { return };
        let Some(tx) = self.txs.get_mut(&id) else {
            return;
        };
        if tx.final_sent() || tx.cancelled {
            return;
        }
        tx.cancelled = true;
        tracing::debug!(event = "call.cancelled", call_id = %String::from_utf8_lossy(&tx.call_id), "CANCEL");
        let provisional = tx.branch.as_ref().is_some_and(|b| b.state == ClientState::Proceeding);
        if self.cancel_waiting(now, id) {
            // It was still in the spike buffer: 487 now; it never reached a carrier.
            self.answer_ourselves(now, id, out);
            return;
        }
        if provisional {
            self.send_cancel(now, id, out);
        }
    }

    /// Sends CANCEL on the transaction's current branch.
    pub(super) fn send_cancel(&mut self, now: Instant, id: TxId, out: &mut Vec<Action>) {
        let Some(branch) = self.txs.get_mut(&id).and_then(|t| t.branch.as_mut()) else {
            return;
        };
        if branch.cancel.is_some() {
            return;
        }
        let Ok(fwd) = crate::sip::parse(&branch.request) else {
            return;
        };
        let cancel = Bytes::from(crate::sip::reply::hop_request(&fwd, "CANCEL", None));
        branch.cancel = Some(cancel.clone());
        branch.interval = T1;
        let (target, number) = (branch.target, branch.number);
        if target.transport == Transport::Udp {
            self.timers.at(now + T1, Timer::ResendCancel(id, number));
        }
        self.send(out, target, cancel, Some(id), true);
    }

    /// True when this request already passed through this proxy unchanged (RFC 3261 §16.3
    /// item 4): a Via of ours carries the same loop hash. A spiral (new Request-URI) differs.
    fn is_loop(&self, msg: &Message<'_>) -> bool {
        let mut hash = None;
        for h in msg.all(HeaderName::Via) {
            let Some(vias) = via::parse_all(msg.bytes(h.value)) else {
                continue;
            };
            for v in vias {
                if !self.me.is_my_via(v.host, v.port) {
                    continue;
                }
                if let Some(theirs) = v.branch.and_then(branch::hash_of) {
                    if *hash.get_or_insert_with(|| branch::loop_hash(&self.secret, msg)) == theirs {
                        return true;
                    }
                }
            }
        }
        false
    }
}

/// The option tags of a request's Proxy-Require headers, comma-joined, if it has any.
fn proxy_require(msg: &Message<'_>) -> Option<Vec<u8>> {
    let mut tags = Vec::new();
    for h in msg.headers.iter().filter(|h| msg.bytes(h.name_span).eq_ignore_ascii_case(b"Proxy-Require")) {
        let value = msg.bytes(h.value);
        for r in crate::sip::params::split_list(value) {
            let tag = crate::sip::message::trim(&value[r]);
            if !tag.is_empty() && tag.iter().all(u8::is_ascii_graphic) {
                if !tags.is_empty() {
                    tags.extend_from_slice(b", ");
                }
                tags.extend_from_slice(tag);
            }
        }
    }
    (!tags.is_empty()).then_some(tags)
}

/// The server transaction key (RFC 3261 §17.2.3): branch, sent-by and method (ACK and CANCEL
/// look up their INVITE with `method` = INVITE). Pre-RFC 3261 branches fall back to Call-ID,
/// From tag, CSeq number and the whole top Via. Each field is hashed with its length, so no
/// two different field lists feed the hash the same bytes.
pub(super) fn server_key(secret: &branch::Secret, msg: &Message<'_>, method: Option<&[u8]>) -> ServerKey {
    let method = method.unwrap_or_else(|| msg.cseq().map(|(_, m)| m).unwrap_or_default());
    let top = msg.first(HeaderName::Via);
    let rfc3261 = msg.top_via.as_ref().and_then(|v| {
        v.branch
            .filter(|b| b.starts_with(via::MAGIC_COOKIE) && b.len() > via::MAGIC_COOKIE.len())
            .map(|b| (v, b))
    });
    ServerKey(match rfc3261 {
        Some((v, b)) => secret.hash((b's', b, v.host, v.port.unwrap_or(0), method)),
        None => secret.hash((
            b'o',
            msg.call_id().unwrap_or_default(),
            msg.tag(HeaderName::From).unwrap_or_default(),
            msg.cseq().map_or(0, |(n, _)| n),
            top.map(|h| msg.bytes(h.value)).unwrap_or_default(),
            method,
        )),
    })
}

/// The user part of the To URI (a REGISTER's address-of-record).
fn to_user<'a>(msg: &Message<'a>) -> Option<&'a [u8]> {
    let value = msg.value(HeaderName::To)?;
    let na = crate::sip::name_addr::NameAddr::parse(value)?;
    Uri::parse(na.uri_of(value)).ok()?.user
}
