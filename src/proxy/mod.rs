//! The sans-IO proxy core: `on_message(now, source, bytes)` and `on_timer(now)` turn input
//! into [`Action`]s (bytes to send to a peer). No sockets, no clock reads, no sleeping tasks:
//! the transport layer moves bytes and calls in; tests drive the core directly.
//!
//! Data path of one request, top to bottom: [`request`] (scan, sanity, classify: ACK,
//! CANCEL, retransmission, in-dialog, initial), route, forward ([`forward`]); responses go
//! through [`response`]; timers through [`timeouts`].

mod admit;
mod authenticate;
pub mod branch;
mod call;
pub mod dialog;
pub mod flood;
pub mod flow;
pub mod forward;
pub mod identity;
pub mod ids;
mod linger;
pub mod node;
mod pending;
pub(crate) mod ratelog;
pub mod record;
pub mod refused;
mod request;
mod response;
pub mod sanity;
pub mod stamp;
mod teardown;
mod timeouts;
pub mod timer;
pub mod transaction;
mod waitroom;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use crate::config::Config;
use crate::limit::Store;
use crate::limit::customers::CustomerIndex;
use crate::limit::plan::Planner;
use crate::peer::Peer;
use crate::sip::edit::Splice;
use crate::sip::{HeaderName, Message, reply};
use crate::stats::Stats;
use crate::usage::UsageTracker;
use dialog::{CallKey, Dialog, Ended};
use identity::Identity;
use ids::{ServerKey, Spread};
use timer::Timers;
use transaction::{ServerSide, Tx, TxId};

/// Maps keyed by what a caller sends (Call-IDs, tags, branches): a keyed hash (ahash's
/// random keys), so nobody can aim many keys at one bucket.
type CallerKeyed<K, V> = HashMap<K, V, ahash::RandomState>;

/// Something the I/O layer must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `data` to `to`. `tx` names the transaction a request belongs to, so a transport
    /// that cannot deliver it (TCP connect refused) can report back with
    /// [`Proxy::on_send_failed`].
    Send { to: Peer, data: Bytes, tx: Option<TxId> },
    /// Ask the shared (cluster) store to admit the new call of transaction `tx`: the
    /// candidates' demand lists in order. The answer goes to [`Proxy::on_admission`].
    Admit { tx: TxId, candidates: Vec<Vec<crate::limit::Demand>>, count_cps: bool },
}

impl Action {
    /// The destination and bytes of a `Send`.
    pub fn as_send(&self) -> Option<(&Peer, &Bytes)> {
        match self {
            Self::Send { to, data, .. } => Some((to, data)),
            Self::Admit { .. } => None,
        }
    }
}

/// Where a transaction id keeps its shard number.
pub(crate) const SHARD_SHIFT: u32 = 48;

/// Upper bounds on state, so a flood cannot grow memory without limit. Past them new
/// requests are answered `503` until state expires.
pub const MAX_TRANSACTIONS: usize = 1_000_000;
pub const MAX_DIALOGS: usize = 1_000_000;

/// The proxy's whole protocol state. Owned by one lock in the runtime; every method is
/// short and never blocks.
pub struct Proxy {
    config: Arc<Config>,
    me: Identity,
    txs: HashMap<TxId, Tx, Spread>,
    /// Server transaction key (branch + sent-by + method) to the transaction, or to what is
    /// left of it while it lingers.
    by_server: HashMap<ServerKey, ServerSide, Spread>,
    /// Finished transactions still lingering (part of `by_server`), for table sizes.
    lingering: usize,
    /// Branch id of the current client branch to transaction.
    by_branch: CallerKeyed<Vec<u8>, TxId>,
    /// Tracked calls by Call-ID and caller tag.
    dialogs: CallerKeyed<CallKey, Dialog>,
    /// Calls hung up in the last few seconds, for requests that crossed their BYE.
    ended: CallerKeyed<CallKey, Box<Ended>>,
    timers: Timers,
    seq: u64,
    /// This shard's number, in the top bits of every transaction id it makes (so an answer
    /// about a transaction finds its shard without a lookup).
    shard: u16,
    /// sluice's own digest authentication (`[auth]`), if configured.
    auth: Option<crate::auth::Verifier>,
    /// Keys branches and tags (a caller cannot predict them).
    secret: branch::Secret,
    draining: bool,
    stats: Arc<Stats>,
    /// Log budgets: bad input, per-call events (timeouts, failovers, refusals), admission
    /// decisions. A caller decides how often these happen; the budgets decide how often
    /// they are written.
    warn: ratelog::RateLog,
    events: ratelog::RateLog,
    decisions: ratelog::RateLog,
    /// Where limits are checked and reserved (in memory, or shared by a cluster).
    limiter: Arc<dyn Store>,
    planner: Planner,
    customers: CustomerIndex,
    /// New calls recently challenged (401/407): their expiry timers.
    challenged: CallerKeyed<CallKey, timer::TimerKey>,
    /// Recently refused requests (answered statelessly under pressure), and the number of
    /// live transactions beyond which refusals carry no state.
    refused: refused::RecentRefusals,
    stateless_above: usize,
    /// Requests sluice sent on its own (BYE of an unacknowledged call), by branch.
    own: CallerKeyed<Vec<u8>, teardown::OwnRequest>,
    /// New calls parked for admission (spike buffer or a cluster answer), so a second
    /// INVITE of the same call cannot slip in beside them.
    parked: CallerKeyed<CallKey, TxId>,
    /// The node's spike buffer (`[overflow] queue_ms`), shared by every shard, and the
    /// earliest serving time a call this shard queued asked for (the node's timer takes it).
    waitroom: Arc<waitroom::Waitroom>,
    room_wake: Option<Instant>,
    /// Gateways that answered 503 (node-wide).
    backoff: Arc<waitroom::Backoff>,
    /// Counts admitted calls (server, customers, carriers) for the per-minute peak CPS
    /// billing uses: this shard's own recorder, merged by the node's tracker.
    usage: crate::usage::Recorder,
    /// The call records file, if configured (records also go to the log).
    records: Option<Arc<crate::records::Records>>,
    /// Keys flow tokens (Path); one for the node, since the request that uses a token is
    /// usually handled by another shard than the REGISTER that made it.
    flows: Arc<flow::FlowKey>,
}

/// What every shard of a node shares: node-wide beliefs and the spike buffer.
#[derive(Clone)]
pub(crate) struct Common {
    pub stats: Arc<Stats>,
    pub limiter: Arc<dyn Store>,
    pub waitroom: Arc<waitroom::Waitroom>,
    pub backoff: Arc<waitroom::Backoff>,
    pub usage: Arc<parking_lot::Mutex<UsageTracker>>,
    pub records: Option<Arc<crate::records::Records>>,
    pub flows: Arc<flow::FlowKey>,
    /// Keys branches and tags; one for the node, so any shard recognises its own loops.
    pub seed: u64,
}

impl Proxy {
    /// Shard `shard` of a node.
    pub(crate) fn shard(config: Arc<Config>, shared: &Common, shard: u16) -> Self {
        Self {
            limiter: shared.limiter.clone(),
            planner: Planner::new(&config),
            customers: CustomerIndex::new(&config),
            challenged: CallerKeyed::default(),
            parked: CallerKeyed::default(),
            own: CallerKeyed::default(),
            refused: refused::RecentRefusals::default(),
            stateless_above: refused::STATELESS_ABOVE,
            waitroom: shared.waitroom.clone(),
            room_wake: None,
            backoff: shared.backoff.clone(),
            usage: shared.usage.lock().recorder(),
            records: shared.records.clone(),
            flows: shared.flows.clone(),
            me: Identity::new(&config),
            auth: config.auth.as_ref().map(|a| crate::auth::Verifier::new(a, Instant::now())),
            config,
            txs: HashMap::default(),
            by_server: HashMap::default(),
            lingering: 0,
            by_branch: CallerKeyed::default(),
            dialogs: CallerKeyed::default(),
            ended: CallerKeyed::default(),
            timers: Timers::default(),
            seq: 0,
            shard,
            secret: branch::Secret::new(shared.seed),
            draining: false,
            stats: shared.stats.clone(),
            warn: ratelog::RateLog::new("bad_input", 20),
            events: ratelog::RateLog::new("call_events", 100),
            decisions: ratelog::RateLog::new("call.admission", 2000),
        }
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The earliest time the waiting room must be served that this shard's last step asked
    /// for (a call it queued), taken once.
    pub(crate) fn take_room_wake(&mut self) -> Option<Instant> {
        self.room_wake.take()
    }

    /// Replaces the configuration for new calls; transactions and dialogs in progress keep
    /// their peers.
    pub fn reload(&mut self, config: Arc<Config>) {
        self.me = Identity::new(&config);
        self.planner = Planner::new(&config);
        self.customers = CustomerIndex::new(&config);
        match (&mut self.auth, &config.auth) {
            (Some(v), Some(a)) => v.update(a),
            (slot, a) => *slot = a.as_ref().map(|a| crate::auth::Verifier::new(a, Instant::now())),
        }
        self.config = config;
    }

    /// Handles one parsed message (a datagram, or one framed TCP message) of a call this
    /// shard owns. The node has already screened it (flood, size, keep-alive) and parsed it.
    pub(crate) fn on_parsed(&mut self, now: Instant, source: Peer, msg: &Message<'_>, out: &mut Vec<Action>) {
        if msg.is_request() {
            Stats::bump(&self.stats.requests_in);
            self.on_request(now, source, msg, out);
        } else {
            Stats::bump(&self.stats.responses_in);
            self.on_response(now, source, msg, out);
        }
    }

    /// Counts and logs a message that could not be parsed (the node calls this on the shard
    /// it picks for such messages).
    pub(crate) fn on_malformed(&mut self, now: Instant, source: Peer, error: &crate::sip::ParseError) {
        self.stats.malformed(source.transport);
        if self.warn.allow(now) {
            tracing::warn!(event = "sip.malformed", source = %source, error = %error, "unparsable message dropped");
        }
    }

    /// Counts and logs a message over `max_message_bytes`.
    pub(crate) fn on_oversize(&mut self, now: Instant, source: Peer, size: usize) {
        Stats::bump(&self.stats.oversize);
        if self.warn.allow(now) {
            tracing::warn!(event = "sip.oversize", source = %source, size, "message over max_message_bytes dropped");
        }
    }

    /// Fires every timer due at `now`.
    pub fn on_timer(&mut self, now: Instant, out: &mut Vec<Action>) {
        while let Some(t) = self.timers.pop_due(now) {
            self.fire(now, t, out);
        }
    }

    /// When [`Proxy::on_timer`] next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// Stops admitting new calls (SIGTERM): INVITEs get `503` (or `302` to the overflow
    /// redirect), calls in progress continue.
    pub fn start_draining(&mut self) {
        self.draining = true;
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Calls (dialogs) the proxy tracks, early or confirmed.
    pub fn active_calls(&self) -> usize {
        self.dialogs.len()
    }

    pub fn transactions(&self) -> usize {
        self.txs.len()
    }

    /// Nothing left worth waiting for at shutdown.
    pub fn is_idle(&self) -> bool {
        self.active_calls() == 0 && self.txs.values().all(Tx::final_sent)
    }

    /// Sizes of the internal tables, for tests and /status: (transactions, dialogs, timers).
    pub fn table_sizes(&self) -> (usize, usize, usize) {
        (
            self.txs.len() + self.lingering + self.own.len(),
            self.dialogs.len() + self.ended.len() + self.challenged.len(),
            self.timers.len(),
        )
    }

    /// Changes the number of live transactions beyond which refusals are answered without
    /// state (benches and tests compare both modes).
    #[doc(hidden)]
    pub fn set_stateless_above(&mut self, transactions: usize) {
        self.stateless_above = transactions;
    }

    /// True when the transaction table is so full that refusals should carry no state.
    fn under_pressure(&self) -> bool {
        self.txs.len() >= self.stateless_above
    }

    /// One line per live transaction (state, method, Call-ID), for tests that find a leak.
    #[doc(hidden)]
    pub fn describe_transactions(&self) -> Vec<String> {
        self.txs
            .values()
            .map(|t| {
                format!(
                    "{:?} invite={} creates_dialog={} cancelled={} branch={:?} pending={} call={}",
                    t.server,
                    t.is_invite,
                    t.creates_dialog,
                    t.cancelled,
                    t.branch.as_ref().map(|b| b.state),
                    t.pending.is_some(),
                    String::from_utf8_lossy(&t.call_id)
                )
            })
            .collect()
    }

    /// Skips `gateway` for new calls and failovers until `now + for_how_long`. Entries are
    /// few (one per configured gateway) and simply overwritten.
    fn back_off(&mut self, now: Instant, gateway: std::net::SocketAddr, for_how_long: std::time::Duration) {
        tracing::info!(event = "gateway.backoff", gateway = %gateway, seconds = for_how_long.as_secs(), "gateway answered 503; backing off");
        self.backoff.set(gateway, now + for_how_long);
    }

    /// The call with this Call-ID and caller tag, if tracked.
    fn call(&self, call_id: &[u8], caller_tag: &[u8]) -> Option<&Dialog> {
        self.dialogs.get(&*dialog::KeyBytes::of(call_id, caller_tag))
    }

    /// A process-unique number: the shard in the top 16 bits, a counter below.
    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        (u64::from(self.shard) << SHARD_SHIFT) | (self.seq & ((1 << SHARD_SHIFT) - 1))
    }

    fn send(&self, out: &mut Vec<Action>, to: Peer, data: Bytes, tx: Option<TxId>, request: bool) {
        Stats::bump(if request { &self.stats.requests_out } else { &self.stats.responses_out });
        out.push(Action::Send { to, data, tx });
    }

    /// Answers a request itself (the one reply builder). A final answer gets a To tag derived
    /// from the request, so a retransmitted request gets the identical answer. A final answer
    /// to an INVITE goes through a server transaction (RFC 3261 §17.2.1): retransmitted over
    /// UDP until the ACK (Timer G), the ACK absorbed, forgotten after Timer H.
    fn reply(
        &mut self,
        now: Instant,
        msg: &Message<'_>,
        source: Peer,
        answer: Answer<'_>,
        extra: &[(&str, &[u8])],
        out: &mut Vec<Action>,
    ) {
        if msg.method() == Some(crate::sip::Method::Invite) && answer.status >= 300 && !self.under_pressure()
        {
            let key = request::server_key(&self.secret, msg, None);
            if !self.by_server.contains_key(&key) {
                if let Some(id) = self.new_tx(now, source, msg, key, Vec::new(), false) {
                    return self.final_answer(now, id, answer.status, answer.reason, extra, out);
                }
            }
        }
        let mut splice = Splice::new(msg.buf);
        let Some(to) = stamp::stamp(msg, source, &mut splice) else { return };
        let tag = self.tag_for(msg);
        let data =
            Bytes::from(reply::response(msg, &mut splice, answer.status, answer.reason, Some(&tag), extra));
        self.send(out, to, data, None, false);
    }

    /// The To tag the proxy uses when it answers `msg` itself: stable per Call-ID, From tag
    /// and CSeq (a retransmission gets the same one), keyed so nobody else can compute it.
    fn tag_for(&self, msg: &Message<'_>) -> Vec<u8> {
        branch::token(&self.secret, (msg.call_id(), msg.tag(HeaderName::From), msg.cseq().map(|(n, _)| n)))
    }
}

impl Drop for Proxy {
    /// A core that goes away (shutdown, a test's end) gives back what its calls hold, so no
    /// reservation outlives the state that owned it.
    fn drop(&mut self) {
        let now = Instant::now();
        for (_, d) in self.dialogs.drain() {
            if let Some(r) = d.reservation {
                self.limiter.release(now, r);
            }
        }
    }
}

/// A status line the proxy answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer<'a> {
    pub status: u16,
    pub reason: &'a str,
}

impl<'a> Answer<'a> {
    pub const fn new(status: u16, reason: &'a str) -> Self {
        Self { status, reason }
    }
}
