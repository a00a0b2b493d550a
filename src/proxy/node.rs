//! One sluice node: the shards of the sans-IO core and what they share. Every message of a
//! call (requests, responses, CANCEL, ACK, sluice's own BYEs: they all carry the call's
//! Call-ID) goes to the shard picked by a keyed hash of its Call-ID, so a shard owns its
//! calls' transactions, dialogs, challenge memory and timers outright: one lock per shard,
//! never held across shards, and no two shards ever wait for each other.
//!
//! Before a shard is chosen the node screens the message (flood guard, size, keep-alives)
//! and parses it once, outside any shard lock. Node-wide state lives in the parts shards
//! share: the limit store (concurrent), the spike buffer ([`super::waitroom`], its own short
//! lock), gateway backoff (read-mostly) and usage.
//!
//! The node is still sans-IO: the runtime calls it from many threads; tests drive it from
//! one with a synthetic clock, which makes it the deterministic multi-shard harness.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use arc_swap::{ArcSwap, ArcSwapOption};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::flood::{Flood, Verdict};
use super::ratelog::RateLog;
use super::transaction::TxId;
use super::waitroom::{Backoff, Waitroom};
use super::{Action, Common, Proxy, SHARD_SHIFT};
use crate::config::Config;
use crate::limit::Store;
use crate::limit::redis::Remote;
use crate::peer::Peer;
use crate::stats::Stats;
use crate::usage::UsageTracker;

/// The flood guard is split by source address into this many independently locked parts
/// (a source always lands on the same part; two sources rarely share a lock).
const FLOOD_PARTS: usize = 16;

/// Shards per worker thread. A worker runs each message on the shard that owns its call,
/// whichever that is, so two workers meet on one shard's lock as often as their messages
/// share a shard: with one shard per worker that is half the time on 2 workers (measured:
/// 1.2x the calls/s of one worker), with 8 per worker 1 in 16. A shard costs a few empty
/// tables and a sleeping timer task.
pub const SHARDS_PER_WORKER: usize = 8;

/// What a step changed about when the node next needs its timers: the shard it ran on and
/// that shard's next deadline, and the spike buffer's next serving time if a call was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wake {
    pub shard: usize,
    pub next: Option<Instant>,
    pub room: Option<Instant>,
}

struct Screen {
    parts: Vec<Mutex<Flood>>,
    log: Mutex<RateLog>,
}

/// The sharded core.
/// A shard on cache lines of its own: workers take different shards' locks all the time,
/// and a lock word sharing a line with the neighbour's fields would make them wait on
/// each other's writes.
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Padded<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

pub struct Node {
    shards: Vec<Padded<Mutex<Proxy>>>,
    common: Common,
    /// Keyed, so a caller cannot aim its calls at one shard by choosing Call-IDs.
    hasher: ahash::RandomState,
    /// Read on every message without a lock or a shared write (a reload swaps the pointer).
    config: ArcSwap<Config>,
    screen: ArcSwapOption<Screen>,
}

impl Node {
    /// A node with its own in-memory limit store. `seed` keys branches, tags and the shard
    /// hash (the runtime passes the start time). Shards: [`SHARDS_PER_WORKER`] per worker.
    pub fn new(config: Arc<Config>, stats: Arc<Stats>, seed: u64) -> Self {
        let store = Arc::new(crate::limit::memory::MemoryStore::new(Instant::now()));
        Self::with_store(config, stats, seed, store)
    }

    /// A node whose limits live in `limiter` (shared with the admin API and, in a cluster,
    /// with other nodes).
    pub fn with_store(config: Arc<Config>, stats: Arc<Stats>, seed: u64, limiter: Arc<dyn Store>) -> Self {
        let usage = Arc::new(Mutex::new(UsageTracker::now_anchored(config.usage.window_days)));
        Self::with_usage(config, stats, seed, limiter, usage)
    }

    /// A node that records usage into `usage` (the runtime's, persisted and on /usage).
    pub fn with_usage(
        config: Arc<Config>,
        stats: Arc<Stats>,
        seed: u64,
        limiter: Arc<dyn Store>,
        usage: Arc<Mutex<UsageTracker>>,
    ) -> Self {
        let common = Common {
            waitroom: Arc::new(Waitroom::new(stats.clone())),
            backoff: Arc::new(Backoff::default()),
            stats,
            limiter,
            usage,
            records: None,
            flows: Arc::new(super::flow::FlowKey::random()),
            seed,
        };
        let count = config.worker_threads().saturating_mul(SHARDS_PER_WORKER).clamp(1, 1 << 15);
        let shards =
            (0..count).map(|i| Padded(Mutex::new(Proxy::shard(config.clone(), &common, i as u16)))).collect();
        let hasher = ahash::RandomState::with_seeds(seed, seed.rotate_left(17), 0x736c_7569_6365, 1);
        Self {
            shards,
            common,
            hasher,
            screen: ArcSwapOption::new(screen(&config)),
            config: ArcSwap::new(config),
        }
    }

    /// Writes call records to `records` as well as to the log.
    pub fn with_records(mut self, records: Option<Arc<crate::records::Records>>) -> Self {
        for shard in &mut self.shards {
            shard.get_mut().records.clone_from(&records);
        }
        self.common.records = records;
        self
    }

    /// MACs flow tokens with `key` (kept across restarts) instead of a per-process key.
    pub fn with_flow_key(mut self, key: super::flow::FlowKey) -> Self {
        let key = Arc::new(key);
        for shard in &mut self.shards {
            shard.get_mut().flows = key.clone();
        }
        self.common.flows = key;
        self
    }

    /// The call records file, if any (reopened on reload).
    pub fn records(&self) -> Option<&Arc<crate::records::Records>> {
        self.common.records.as_ref()
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The running configuration (a pointer copy).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Handles one received message (a datagram, or one framed TCP message). `None` when it
    /// was dropped before reaching a shard (flood guard, keep-alive).
    pub fn on_message(
        &self,
        now: Instant,
        source: Peer,
        bytes: &[u8],
        out: &mut Vec<Action>,
    ) -> Option<Wake> {
        if !self.screened(now, source) {
            return None;
        }
        let max = self.config.load().max_message_bytes;
        if bytes.len() > max {
            let k = self.shard_of_source(source);
            return Some(self.on_shard(k, |p| p.on_oversize(now, source, bytes.len())));
        }
        if bytes.iter().all(|b| matches!(b, b'\r' | b'\n' | b' ' | b'\t' | 0)) {
            return None; // keep-alive
        }
        // Parsed once, here, outside every shard's lock.
        match crate::sip::parse(bytes) {
            Ok(msg) => {
                let k =
                    msg.call_id().map_or_else(|| self.shard_of_source(source), |id| self.shard_of_call(id));
                Some(self.on_shard(k, |p| p.on_parsed(now, source, &msg, out)))
            }
            Err(e) => {
                let k = self.shard_of_source(source);
                Some(self.on_shard(k, |p| p.on_malformed(now, source, &e)))
            }
        }
    }

    /// The shard that owns calls with this Call-ID.
    pub fn shard_of_call(&self, call_id: &[u8]) -> usize {
        (self.hasher.hash_one(call_id) % self.shards.len() as u64) as usize
    }

    /// The shard that made transaction `tx`.
    pub fn shard_of_tx(&self, tx: TxId) -> usize {
        ((tx >> SHARD_SHIFT) as usize) % self.shards.len()
    }

    fn shard_of_source(&self, source: Peer) -> usize {
        (self.hasher.hash_one(source.addr.ip()) % self.shards.len() as u64) as usize
    }

    /// Runs `f` on shard `k` and reports what it changed about the timers.
    fn on_shard(&self, k: usize, f: impl FnOnce(&mut Proxy)) -> Wake {
        let mut shard = self.shards[k].lock();
        f(&mut shard);
        Wake { shard: k, next: shard.next_deadline(), room: shard.take_room_wake() }
    }

    /// The flood guard (`[flood]`): false when the message is to be dropped unanswered.
    fn screened(&self, now: Instant, source: Peer) -> bool {
        let screen = self.screen.load();
        let Some(screen) = screen.as_deref() else { return true };
        let ip = source.addr.ip();
        let part = (self.hasher.hash_one(ip) % screen.parts.len() as u64) as usize;
        let (verdict, blocked_before, blocked_after, block_time) = {
            let mut guard = screen.parts[part].lock();
            let before = guard.blocked();
            let verdict = guard.check(now, ip);
            (verdict, before, guard.blocked(), guard.block_time())
        };
        let stats = &self.common.stats;
        if blocked_after != blocked_before {
            if blocked_after > blocked_before {
                stats.flood_blocked.fetch_add((blocked_after - blocked_before) as u64, Ordering::Relaxed);
            } else {
                stats.flood_blocked.fetch_sub((blocked_before - blocked_after) as u64, Ordering::Relaxed);
            }
        }
        if verdict == Verdict::Pass {
            return true;
        }
        Stats::bump(&stats.flood_dropped);
        if verdict == Verdict::Blocked && screen.log.lock().allow(now) {
            let blocked = stats.flood_blocked.load(Ordering::Relaxed);
            tracing::warn!(event = "flood.blocked", source = %ip, seconds = block_time.as_secs(), blocked, "source over [flood] rps; dropping its messages");
        }
        false
    }

    /// Fires every timer due at `now` on every shard, and serves the spike buffer (the
    /// single-threaded driver tests use; the runtime drives shards and the buffer apart).
    pub fn on_timer(&self, now: Instant, out: &mut Vec<Action>) {
        for k in 0..self.shards.len() {
            self.on_shard_timer(k, now, out);
        }
        self.serve_waitroom(now, out);
    }

    /// Fires shard `k`'s due timers; returns what that changed.
    pub fn on_shard_timer(&self, k: usize, now: Instant, out: &mut Vec<Action>) -> Wake {
        self.on_shard(k, |p| {
            if p.next_deadline().is_some_and(|d| d <= now) {
                p.on_timer(now, out);
            }
        })
    }

    /// Offers the spike buffer's waiting calls to the limiter if it is due, and hands each
    /// verdict to the call's shard. Never holds a shard's lock and the buffer's together.
    pub fn serve_waitroom(&self, now: Instant, out: &mut Vec<Action>) -> Vec<Wake> {
        let served = self.common.waitroom.serve(now, &*self.common.limiter, &self.common.backoff);
        served
            .into_iter()
            .map(|s| {
                let (super::waitroom::Served::Admitted(id, ..) | super::waitroom::Served::Expired(id)) = &s;
                let k = self.shard_of_tx(*id);
                self.on_shard(k, |p| p.on_served(now, s, out))
            })
            .collect()
    }

    /// When the spike buffer next needs serving.
    pub fn waitroom_deadline(&self) -> Option<Instant> {
        self.common.waitroom.next_event()
    }

    /// True when serving the spike buffer may wait on a shared store (run it off the SIP
    /// workers then).
    pub fn waitroom_may_block(&self) -> bool {
        self.common.limiter.asynchronous()
    }

    /// When shard `k` next has timer work.
    pub fn shard_deadline(&self, k: usize) -> Option<Instant> {
        self.shards[k].lock().next_deadline()
    }

    /// When [`Node::on_timer`] next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        let shards = (0..self.shards.len()).filter_map(|k| self.shard_deadline(k));
        shards.chain(self.waitroom_deadline()).min()
    }

    /// The shared store's answer for a parked new call ([`Action::Admit`]).
    pub fn on_admission(&self, now: Instant, tx: TxId, answer: Remote, out: &mut Vec<Action>) -> Wake {
        self.on_shard(self.shard_of_tx(tx), |p| p.on_admission(now, tx, answer, out))
    }

    /// A request of transaction `tx` could not be delivered to `to`: fail over.
    pub fn on_send_failed(&self, now: Instant, tx: TxId, to: Peer, out: &mut Vec<Action>) -> Wake {
        self.on_shard(self.shard_of_tx(tx), |p| p.on_send_failed(now, tx, to, out))
    }

    /// Replaces the configuration for new calls (every shard, the flood guard if its
    /// settings changed); calls in progress keep their peers.
    pub fn reload(&self, config: Arc<Config>) {
        let old = self.config();
        if config.flood != old.flood || config.carriers != old.carriers {
            self.screen.store(screen(&config));
            self.common.stats.flood_blocked.store(0, Ordering::Relaxed);
        }
        for shard in &self.shards {
            shard.lock().reload(config.clone());
        }
        self.config.store(config);
    }

    /// Stops admitting new calls (SIGTERM).
    pub fn start_draining(&self) {
        for shard in &self.shards {
            shard.lock().start_draining();
        }
    }

    pub fn is_draining(&self) -> bool {
        self.shards[0].lock().is_draining()
    }

    fn sum(&self, f: impl Fn(&Proxy) -> usize) -> usize {
        self.shards.iter().map(|s| f(&s.lock())).sum()
    }

    /// Calls (dialogs) the node tracks, early or confirmed.
    pub fn active_calls(&self) -> usize {
        self.sum(Proxy::active_calls)
    }

    pub fn transactions(&self) -> usize {
        self.sum(Proxy::transactions)
    }

    /// Nothing left worth waiting for at shutdown.
    pub fn is_idle(&self) -> bool {
        self.shards.iter().all(|s| s.lock().is_idle())
    }

    /// Sizes of the internal tables summed over shards: (transactions, dialogs, timers).
    pub fn table_sizes(&self) -> (usize, usize, usize) {
        self.shards.iter().fold((0, 0, 0), |(a, b, c), s| {
            let (x, y, z) = s.lock().table_sizes();
            (a + x, b + y, c + z)
        })
    }

    /// See [`Proxy::set_stateless_above`]; `transactions` is per shard.
    #[doc(hidden)]
    pub fn set_stateless_above(&self, transactions: usize) {
        for shard in &self.shards {
            shard.lock().set_stateless_above(transactions);
        }
    }

    /// One line per live transaction, for tests that find a leak.
    #[doc(hidden)]
    pub fn describe_transactions(&self) -> Vec<String> {
        self.shards.iter().flat_map(|s| s.lock().describe_transactions()).collect()
    }
}

fn screen(config: &Config) -> Option<Arc<Screen>> {
    let epoch = Instant::now();
    let parts: Option<Vec<Mutex<Flood>>> =
        (0..FLOOD_PARTS).map(|_| Flood::part(config, epoch, FLOOD_PARTS).map(Mutex::new)).collect();
    parts.map(|parts| Arc::new(Screen { parts, log: Mutex::new(RateLog::new("flood.blocked", 10)) }))
}
