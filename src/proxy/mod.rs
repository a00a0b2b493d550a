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
pub mod forward;
pub mod identity;
pub(crate) mod ratelog;
pub mod refused;
mod request;
mod response;
pub mod sanity;
pub mod stamp;
mod teardown;
mod timeouts;
pub mod timer;
pub mod transaction;

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
use dialog::{CallKey, Dialog};
use identity::Identity;
use timer::Timers;
use transaction::{Tx, TxId};

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

/// Upper bounds on state, so a flood cannot grow memory without limit. Past them new
/// requests are answered `503` until state expires.
pub const MAX_TRANSACTIONS: usize = 1_000_000;
pub const MAX_DIALOGS: usize = 1_000_000;

/// The proxy's whole protocol state. Owned by one lock in the runtime; every method is
/// short and never blocks.
pub struct Proxy {
    config: Arc<Config>,
    me: Identity,
    txs: HashMap<TxId, Tx>,
    /// Server transaction key (branch + sent-by + method) to transaction.
    by_server: HashMap<Vec<u8>, TxId>,
    /// Branch id of the current client branch to transaction.
    by_branch: HashMap<Vec<u8>, TxId>,
    /// Tracked calls by Call-ID and caller tag.
    dialogs: HashMap<CallKey, Dialog>,
    timers: Timers,
    seq: u64,
    /// Per-source rate protection (`[flood]`), if configured.
    flood: Option<flood::Flood>,
    flood_log: ratelog::RateLog,
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
    challenged: HashMap<CallKey, timer::TimerKey>,
    /// Recently refused requests (answered statelessly under pressure), and the number of
    /// live transactions beyond which refusals carry no state.
    refused: refused::RecentRefusals,
    stateless_above: usize,
    /// Requests sluice sent on its own (BYE of an unacknowledged call), by branch.
    own: HashMap<Vec<u8>, teardown::OwnRequest>,
    /// New calls parked for admission (spike buffer or a cluster answer), so a second
    /// INVITE of the same call cannot slip in beside them.
    parked: HashMap<CallKey, TxId>,
    /// The spike buffer: new calls waiting for a slot (`[overflow] queue_ms`).
    queue: crate::limit::queue::SpikeQueue<TxId>,
    queue_timer: Option<timer::TimerKey>,
    /// Gateways that answered 503, skipped until the instant given (their Retry-After).
    backoff: HashMap<std::net::SocketAddr, Instant>,
    /// Per-minute peak CPS of admitted calls (server, customers, carriers), for billing.
    usage: Arc<parking_lot::Mutex<UsageTracker>>,
}

impl Proxy {
    /// A proxy with its own in-memory limit store. `seed` varies tags and branches between
    /// runs (the runtime passes the start time).
    pub fn new(config: Arc<Config>, stats: Arc<Stats>, seed: u64) -> Self {
        let store = Arc::new(crate::limit::memory::MemoryStore::new(Instant::now()));
        Self::with_store(config, stats, seed, store)
    }

    /// A proxy whose limits live in `limiter` (shared with the admin API and, in a cluster,
    /// with other nodes).
    pub fn with_store(config: Arc<Config>, stats: Arc<Stats>, seed: u64, limiter: Arc<dyn Store>) -> Self {
        Self {
            limiter,
            planner: Planner::new(&config),
            customers: CustomerIndex::new(&config),
            challenged: HashMap::new(),
            parked: HashMap::new(),
            own: HashMap::new(),
            refused: refused::RecentRefusals::default(),
            stateless_above: refused::STATELESS_ABOVE,
            queue: Default::default(),
            queue_timer: None,
            backoff: HashMap::new(),
            usage: Arc::new(parking_lot::Mutex::new(UsageTracker::now_anchored(config.usage.window_days))),
            me: Identity::new(&config),
            auth: config.auth.as_ref().map(|a| crate::auth::Verifier::new(a, Instant::now())),
            flood: flood::Flood::new(&config, Instant::now()),
            flood_log: ratelog::RateLog::new("flood.blocked", 10),
            config,
            txs: HashMap::new(),
            by_server: HashMap::new(),
            by_branch: HashMap::new(),
            dialogs: HashMap::new(),
            timers: Timers::default(),
            seq: 0,
            secret: branch::Secret::new(seed),
            draining: false,
            stats,
            warn: ratelog::RateLog::new("bad_input", 20),
            events: ratelog::RateLog::new("call_events", 100),
            decisions: ratelog::RateLog::new("call.admission", 2000),
        }
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Shares a usage tracker (the runtime's, which is persisted and served on /usage).
    pub fn set_usage(&mut self, usage: Arc<parking_lot::Mutex<UsageTracker>>) {
        self.usage = usage;
    }

    /// Replaces the configuration for new calls; transactions and dialogs in progress keep
    /// their peers.
    pub fn reload(&mut self, config: Arc<Config>) {
        self.me = Identity::new(&config);
        self.planner = Planner::new(&config);
        self.customers = CustomerIndex::new(&config);
        if config.flood != self.config.flood || config.carriers != self.config.carriers {
            self.flood = flood::Flood::new(&config, Instant::now());
            self.stats.flood_blocked.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        match (&mut self.auth, &config.auth) {
            (Some(v), Some(a)) => v.update(a),
            (slot, a) => *slot = a.as_ref().map(|a| crate::auth::Verifier::new(a, Instant::now())),
        }
        self.config = config;
    }

    /// Handles one received message (a datagram, or one framed TCP message).
    pub fn on_message(&mut self, now: Instant, source: Peer, bytes: &[u8], out: &mut Vec<Action>) {
        if let Some(guard) = &mut self.flood {
            // Before anything else: a flooding source costs one table lookup per message.
            let verdict = guard.check(now, source.addr.ip());
            let blocked = guard.blocked() as u64;
            self.stats.flood_blocked.store(blocked, std::sync::atomic::Ordering::Relaxed);
            match verdict {
                flood::Verdict::Pass => {}
                verdict => {
                    Stats::bump(&self.stats.flood_dropped);
                    if verdict == flood::Verdict::Blocked && self.flood_log.allow(now) {
                        tracing::warn!(event = "flood.blocked", source = %source.addr.ip(), seconds = guard.block_time().as_secs(), blocked, "source over [flood] rps; dropping its messages");
                    }
                    return;
                }
            }
        }
        if bytes.len() > self.config.max_message_bytes {
            Stats::bump(&self.stats.oversize);
            if self.warn.allow(now) {
                tracing::warn!(event = "sip.oversize", source = %source, size = bytes.len(), "message over max_message_bytes dropped");
            }
            return;
        }
        if bytes.iter().all(|b| matches!(b, b'\r' | b'\n' | b' ' | b'\t' | 0)) {
            return; // keep-alive
        }
        let msg = match crate::sip::parse(bytes) {
            Ok(msg) => msg,
            Err(e) => {
                self.stats.malformed(source.transport);
                if self.warn.allow(now) {
                    tracing::warn!(event = "sip.malformed", source = %source, error = %e, "unparsable message dropped");
                }
                return;
            }
        };
        if msg.is_request() {
            Stats::bump(&self.stats.requests_in);
            self.on_request(now, source, &msg, out);
        } else {
            Stats::bump(&self.stats.responses_in);
            self.on_response(now, source, &msg, out);
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
        self.dialogs.values().filter(|d| d.phase != dialog::Phase::Ending).count()
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
        (self.txs.len() + self.own.len(), self.dialogs.len() + self.challenged.len(), self.timers.len())
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
        self.backoff.insert(gateway, now + for_how_long);
    }

    /// The call with this Call-ID and caller tag, if tracked.
    fn call(&self, call_id: &[u8], caller_tag: &[u8]) -> Option<&Dialog> {
        self.dialogs.get(&*dialog::KeyBytes::of(call_id, caller_tag))
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
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
            let key = request::server_key(msg, None);
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
