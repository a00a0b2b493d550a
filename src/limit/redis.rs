//! The cluster store: limits shared by every sluice node through one Redis (or Valkey).
//!
//! One admission is one round trip, made off the SIP path: the core parks the INVITE and the
//! transport runs [`RedisStore::admit_async`] on one multiplexed connection shared by every
//! call in flight. The Lua script (EVALSHA) reads Redis's own clock, checks
//! every demand's sliding window (a sorted set of admission times over the last second) and
//! channel counter, and reserves all or nothing. Each reservation is recorded under its id
//! and in its node's set, so a release is idempotent (the record is deleted once) and a dead
//! node's calls are released by the survivors once its heartbeat key expires.
//!
//! Every Redis call has a short timeout. When Redis cannot be reached the store follows
//! `[cluster] on_failure` — `local`: this node enforces each limit divided by `nodes` on its
//! own calls; `reject`: every new call is refused; `allow`: no limits — logs once per episode,
//! reports unhealthy (`sluice_cluster_up` 0), and a background thread reconnects. Calls
//! admitted meanwhile are counted on this node only and released there; releases that could
//! not reach Redis are retried after it returns, so nothing leaks.
//!
//! Accuracy and Redis Cluster: the script touches keys of several scopes plus the
//! reservation records, so it needs one Redis (or all keys in one hash slot, which would put
//! the whole cluster's limiting on one shard). This store targets a single Redis / Valkey
//! (with a replica for failover); against Redis Cluster it would need per-scope scripts with
//! compensation, which is not implemented. Windows use Redis's clock in microseconds, so node
//! clock skew does not matter.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::memory::MemoryStore;
use super::{Demand, LimitKey, Refusal, Rejection, Reservation, Scope, Store};
use crate::config::{Cluster, OnFailure};

const PREFIX: &str = "sluice:";

/// Checks every demand and reserves all or nothing. Per demand three keys (the one-second
/// window, the channel count, the one-minute window) and six arguments: cps, channels,
/// this node's unapplied releases of the key (credited), cpm, paced, shadow (-1 = no
/// limit). A shadow demand over a limit does not refuse; it is reported after the verdict.
/// Returns {0, 0, i, kind, ...} (admitted, then the shadow hits) or {i, kind} (refused by
/// demand i: kind 1 = cps, 2 = channels, 3 = cpm), or {-1, 0} for an abandoned id.
///
/// Redis's CPU is the cluster's ceiling, and it goes mostly to the commands the script calls
/// (about 1.5 us each), so the common case, an admission, calls as few as it can:
/// - a channel count is taken with INCR and checked after; a refusal gives back what this
///   admission took, so nothing is ever read twice;
/// - a window's ZCARD, stale admissions included, is an upper bound: only when it is not
///   below the limit is the window trimmed and counted again (exact near the limit), and
///   admissions trim it every 32nd time, so it holds at most one span's admissions and 32;
/// - times are handed to Redis as strings: a Lua number would be formatted with %.17g.
const ADMIT: &str = r#"
if redis.call('EXISTS', KEYS[#KEYS]) == 1 then return {-1, 0} end
local t = redis.call('TIME')
local now_s = t[1] .. string.sub('00000' .. t[2], -6)
local now = tonumber(now_s)
local n = tonumber(ARGV[3])
local count = ARGV[1] == '1'
local hits, cards = {}, {}
local function trim(k, span)
  redis.call('ZREMRANGEBYSCORE', k, '-inf', string.format('%d', now - span))
end
local function over(k, limit, span, slot)
  local c = redis.call('ZCARD', k)
  if c >= limit then
    trim(k, span)
    c = redis.call('ZCARD', k)
  end
  cards[slot] = c
  return c >= limit
end
for i = 1, n do
  local a = 3 + 6 * (i - 1)
  local cps, ch, credit = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local cpm = tonumber(ARGV[a + 4])
  local w, m = KEYS[3 * i - 2], KEYS[3 * i]
  local kind = 0
  local used = redis.call('INCR', KEYS[3 * i - 1]) - 1
  if ch >= 0 and used - credit >= ch then kind = 2 end
  if kind == 0 and count and cps >= 0 then
    if over(w, cps, 1000000, 2 * i - 1) then
      kind = 1
    elseif ARGV[a + 5] == '1' and cps > 0 then
      local last = redis.call('ZRANGE', w, -1, -1, 'WITHSCORES')
      if last[2] and now - tonumber(last[2]) < math.ceil(1000000 / cps) then kind = 1 end
    end
  end
  if kind == 0 and count and cpm >= 0 and over(m, cpm, 60000000, 2 * i) then kind = 3 end
  if kind ~= 0 then
    if ARGV[a + 6] ~= '1' then
      for j = 1, i do redis.call('DECR', KEYS[3 * j - 1]) end
      return {i, kind}
    end
    hits[#hits + 1] = i
    hits[#hits + 1] = kind
  end
end
local function add(k, limit, ttl, span, slot, shadow, member)
  if limit < 0 then return end
  redis.call('ZADD', k, now_s, member)
  if shadow then
    -- Over a shadow limit the window keeps only the admissions that can matter.
    redis.call('ZREMRANGEBYRANK', k, 0, string.format('%d', -(limit + 1)))
  elseif not cards[slot] or cards[slot] % 32 == 31 then
    trim(k, span)
  end
  redis.call('PEXPIRE', k, ttl)
end
local record = {}
for i = 1, n do
  local a = 3 + 6 * (i - 1)
  record[i] = KEYS[3 * i - 1]
  if count then
    local member, shadow = ARGV[2] .. ':' .. i, ARGV[a + 6] == '1'
    add(KEYS[3 * i - 2], tonumber(ARGV[a + 1]), '2000', 1000000, 2 * i - 1, shadow, member)
    add(KEYS[3 * i], tonumber(ARGV[a + 4]), '61000', 60000000, 2 * i, shadow, member)
  end
end
redis.call('SET', KEYS[3 * n + 1], table.concat(record, '\n'))
redis.call('SADD', KEYS[3 * n + 2], ARGV[2])
local reply = {0, 0}
for _, v in ipairs(hits) do reply[#reply + 1] = v end
return reply
"#;

/// Lua shared by the scripts that end reservations: gives back the channels a reservation
/// record lists (never below zero) and deletes it; false when there was no record.
macro_rules! lua_give_back {
    () => {
        r#"
local function give_back(rk)
  local rec = redis.call('GET', rk)
  if not rec then return false end
  for k in string.gmatch(rec, '[^\n]+') do
    if redis.call('DECR', k) < 0 then redis.call('SET', k, 0) end
  end
  redis.call('DEL', rk)
  return true
end
"#
    };
}

/// Ends one reservation (idempotent). Without a record: an abandoned admission (ARGV[2] =
/// 1) leaves a marker so that, should it reach Redis later, it reserves nothing.
const RELEASE: &str = concat!(
    lua_give_back!(),
    r#"
if not give_back(KEYS[1]) then
  if ARGV[2] == '1' then redis.call('SET', KEYS[3], '1', 'PX', ARGV[3]) end
  return 0
end
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"#
);

/// Releases every reservation of a node whose heartbeat key is gone (or, with ARGV[2] = 1,
/// unconditionally: a node cleaning up after its own restart).
const SWEEP: &str = concat!(
    lua_give_back!(),
    r#"
if ARGV[2] ~= '1' and redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local ids = redis.call('SMEMBERS', KEYS[1])
for _, id in ipairs(ids) do
  give_back(ARGV[1] .. id)
end
redis.call('DEL', KEYS[1])
return #ids
"#
);

/// Anti-entropy, first half: the node re-asserts the reservations of its live calls.
/// KEYS[1] = the node's set; ARGV[1] = the record prefix; then per live call its id, the
/// number of its channel keys and the keys. A missing record is re-created and its keys
/// counted again (Redis restarted empty, restored from an old snapshot, or a replica promoted
/// without the last writes). Returns the number re-created.
const ASSERT: &str = r#"
local i, made = 2, 0
while i <= #ARGV do
  local id, k = ARGV[i], tonumber(ARGV[i + 1])
  local rk = ARGV[1] .. id
  if redis.call('EXISTS', rk) == 0 then
    local record = {}
    for j = 1, k do
      local key = ARGV[i + 1 + j]
      redis.call('INCR', key)
      record[j] = key
    end
    redis.call('SET', rk, table.concat(record, '\n'))
    redis.call('SADD', KEYS[1], id)
    made = made + 1
  end
  i = i + 2 + k
end
return made
"#;

/// Anti-entropy, second half: gives back the reservations Redis holds for this node that no
/// live call holds (the node picked them from the node's set). KEYS[1] = the node's set;
/// ARGV[1] = the record prefix; ARGV[2..] = the ids. Returns the number dropped.
const DROP: &str = concat!(
    lua_give_back!(),
    r#"
local dropped = 0
for i = 2, #ARGV do
  if give_back(ARGV[1] .. ARGV[i]) then dropped = dropped + 1 end
  redis.call('SREM', KEYS[1], ARGV[i])
end
return dropped
"#
);

/// Releases sent in one pipeline at most.
const RELEASE_BATCH: usize = 256;

/// Live calls re-asserted per script call (bounds one call's size and Redis's pause).
const ASSERT_BATCH: usize = 500;

fn window_key(key: &LimitKey) -> String {
    format!("{PREFIX}w:{key}")
}
fn channels_key(key: &LimitKey) -> String {
    format!("{PREFIX}c:{key}")
}
fn minute_key(key: &LimitKey) -> String {
    format!("{PREFIX}m:{key}")
}
fn reservation_key(id: &str) -> String {
    format!("{PREFIX}r:{id}")
}
/// Marks an admission this node gave up on: if it reaches Redis later, it reserves nothing.
fn abandoned_key(id: &str) -> String {
    format!("{PREFIX}t:{id}")
}
fn node_calls_key(node: &str) -> String {
    format!("{PREFIX}node:{node}:calls")
}
fn node_alive_key(node: &str) -> String {
    format!("{PREFIX}node:{node}:alive")
}
const NODES_KEY: &str = "sluice:nodes";

/// How long Redis remembers an abandoned admission: a request stuck that long in a hung
/// Redis (or its socket buffers) and applied later would leak; anything shorter is undone.
const ABANDONED_TTL_MS: u64 = 3_600_000;

/// Settings of the shared store.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    pub node: String,
    pub on_failure: OnFailure,
    pub nodes: u32,
    /// Timeout of every Redis call.
    pub timeout: Duration,
    /// Heartbeat period; a node is dead after three missed beats.
    pub heartbeat: Duration,
}

impl RedisSettings {
    pub fn from_config(c: &Cluster) -> Self {
        Self {
            url: c.redis.clone(),
            node: c.node.clone(),
            on_failure: c.on_failure,
            nodes: c.nodes,
            timeout: c.timeout,
            heartbeat: c.heartbeat,
        }
    }
}

/// The shared store. `local` is this node's own view (its calls only): it serves /status and
/// metrics, and enforces the divided limits while Redis is unreachable.
pub struct RedisStore {
    settings: RedisSettings,
    /// The Redis to use: a fixed URL, or the primary a Sentinel deployment names.
    primary: super::primary::Primary,
    conn: Mutex<Option<redis::Connection>>,
    /// The multiplexed connection new-call admissions share (many in flight at once).
    aconn: Mutex<Option<redis::aio::MultiplexedConnection>>,
    local: Arc<MemoryStore>,
    up: AtomicBool,
    /// This run of the node, in every reservation id: Redis keeps the ids a run abandoned
    /// for an hour, and a restarted node counting from 1 again must not meet them.
    run: u64,
    seq: AtomicU64,
    admit: redis::Script,
    release: redis::Script,
    sweep: redis::Script,
    /// Releases that could not reach Redis, retried when it answers again.
    pending_releases: Mutex<VecDeque<Release>>,
    /// Releases on their way to Redis, sent by a worker thread (never from the SIP path).
    release_tx: Mutex<Option<std::sync::mpsc::Sender<Release>>>,
    /// Channels this node has released but Redis has not applied yet, per key: admissions
    /// count them as free already, so a call arriving just after another ended is not
    /// refused because the release is still on its way.
    releasing: Mutex<HashMap<LimitKey, i64>>,
    /// This node's reservations in Redis that are still held (id -> channel keys), re-asserted
    /// every heartbeat so Redis's counts converge to the truth after any fault.
    held: Mutex<HashMap<String, Vec<String>>>,
    /// Reservation numbers whose admission has not been answered yet: an anti-entropy round
    /// leaves these (and younger ones) alone.
    in_flight: Mutex<std::collections::BTreeSet<u64>>,
    /// When the last anti-entropy round ran (one per heartbeat period).
    reasserted: Mutex<Option<std::time::Instant>>,
    assert: redis::Script,
    drop: redis::Script,
    stop: AtomicBool,
}

/// Why the cluster store could not be set up (bad URL); unreachable Redis is not an error.
#[derive(Debug, thiserror::Error)]
#[error("invalid [cluster] redis URL: {0}")]
pub struct RedisSetupError(String);

impl RedisStore {
    pub fn new(settings: RedisSettings, local: Arc<MemoryStore>) -> Result<Arc<Self>, RedisSetupError> {
        let primary = super::primary::Primary::open(&settings.url).map_err(RedisSetupError)?;
        let store = Arc::new(Self {
            settings,
            primary,
            conn: Mutex::new(None),
            aconn: Mutex::new(None),
            local,
            up: AtomicBool::new(false),
            run: run_nonce(),
            seq: AtomicU64::new(0),
            admit: redis::Script::new(ADMIT),
            release: redis::Script::new(RELEASE),
            sweep: redis::Script::new(SWEEP),
            pending_releases: Mutex::new(VecDeque::new()),
            release_tx: Mutex::new(None),
            releasing: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(std::collections::BTreeSet::new()),
            reasserted: Mutex::new(None),
            assert: redis::Script::new(ASSERT),
            drop: redis::Script::new(DROP),
            stop: AtomicBool::new(false),
        });
        store.reconnect(true);
        Ok(store)
    }

    /// Starts the heartbeat / sweeper / reconnect thread; it ends when [`RedisStore::stop`]
    /// is called.
    pub fn spawn_maintenance(self: &Arc<Self>) {
        self.spawn_release_worker();
        let store = self.clone();
        std::thread::Builder::new()
            .name("sluice-cluster".into())
            .spawn(move || {
                while !store.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(store.settings.heartbeat.min(Duration::from_secs(1)));
                    store.maintain();
                }
            })
            .map(|_| ())
            .unwrap_or_else(
                |e| tracing::error!(event = "cluster.thread_failed", error = %e, "no cluster maintenance"),
            );
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        *self.release_tx.lock() = None; // ends the release worker
    }

    /// Starts the worker that sends releases to Redis as they come.
    fn spawn_release_worker(self: &Arc<Self>) {
        let (tx, rx) = std::sync::mpsc::channel::<Release>();
        *self.release_tx.lock() = Some(tx);
        let store = self.clone();
        let spawned = std::thread::Builder::new().name("sluice-release".into()).spawn(move || {
            let mut conn: Option<redis::Connection> = None;
            while let Ok(first) = rx.recv() {
                // Whatever else is queued goes in the same round trip: one pipeline of
                // release scripts, so releases keep up with admissions.
                let mut batch = vec![first];
                while batch.len() < RELEASE_BATCH {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                if conn.is_none() {
                    conn = store.primary.client().and_then(|client| {
                        let mut c = store.connect(&client).ok()?;
                        let _: String = redis::cmd("SCRIPT").arg("LOAD").arg(RELEASE).query(&mut c).ok()?;
                        Some(c)
                    });
                }
                let done = conn.as_mut().map(|c| {
                    let mut pipe = redis::pipe();
                    for release in &batch {
                        pipe.add_command(store.release_cmd(release)).ignore();
                    }
                    pipe.query::<()>(c)
                });
                if matches!(done, Some(Ok(()))) {
                    for release in &batch {
                        store.applied(release);
                    }
                } else {
                    conn = None;
                    store.pending_releases.lock().extend(batch);
                    store.mark_down("release failed");
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(event = "cluster.thread_failed", error = %e, "releases go through the maintenance thread");
        }
    }

    /// Connects and announces this node. `fresh`: at start, release what a previous run of
    /// this node left (it has no calls after a restart).
    fn reconnect(&self, fresh: bool) -> bool {
        if let Err(e) = self.primary.resolve() {
            self.mark_down(&format!("no primary from Sentinel: {e}"));
            return false;
        }
        let Some(client) = self.primary.client() else {
            self.mark_down("no primary known");
            return false;
        };
        let mut conn = match self.connect(&client) {
            Ok(c) => c,
            Err(e) => {
                self.mark_down(&e.to_string());
                return false;
            }
        };
        let node = &self.settings.node;
        let result: redis::RedisResult<()> = (|| {
            if fresh {
                let _: i64 = self
                    .sweep
                    .key(node_calls_key(node))
                    .key(node_alive_key(node))
                    .arg(format!("{PREFIX}r:"))
                    .arg("1")
                    .invoke(&mut conn)?;
            }
            self.beat(&mut conn)?;
            // Before anything is admitted through Redis again: what this node gave up on
            // during the outage is undone first, so it never counts against new calls.
            self.flush_pending(&mut conn)
        })();
        if let Err(e) = result {
            self.mark_down(&e.to_string());
            return false;
        }
        *self.conn.lock() = Some(conn);
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!(event = "cluster.up", redis = %self.settings.url, node = %node, "cluster store reachable");
        }
        true
    }

    /// A blocking connection with the store's timeout on connect, reads and writes.
    fn connect(&self, client: &redis::Client) -> redis::RedisResult<redis::Connection> {
        let conn = client.get_connection_with_timeout(self.settings.timeout)?;
        conn.set_read_timeout(Some(self.settings.timeout))?;
        conn.set_write_timeout(Some(self.settings.timeout))?;
        Ok(conn)
    }

    fn beat(&self, conn: &mut redis::Connection) -> redis::RedisResult<()> {
        let ttl = self.settings.heartbeat.as_millis() as u64 * 3;
        redis::pipe()
            .cmd("SET")
            .arg(node_alive_key(&self.settings.node))
            .arg(1)
            .arg("PX")
            .arg(ttl.max(1))
            .ignore()
            .cmd("SADD")
            .arg(NODES_KEY)
            .arg(&self.settings.node)
            .ignore()
            .query(conn)
    }

    fn mark_down(&self, why: &str) {
        *self.conn.lock() = None;
        // The shared async connection too: after a failover it would still point at the old
        // primary; the next admission connects to the one the store resolves next.
        *self.aconn.lock() = None;
        if self.up.swap(false, Ordering::Relaxed) || self.seq.load(Ordering::Relaxed) == 0 {
            tracing::warn!(event = "cluster.down", redis = %self.settings.url, error = why, mode = ?self.settings.on_failure, "cluster store unreachable; limits follow on_failure");
        }
    }

    /// One maintenance round: heartbeat, sweep dead nodes, retry releases; or reconnect.
    fn maintain(&self) {
        if !self.up.load(Ordering::Relaxed) && !self.reconnect(false) {
            return;
        }
        let mut guard = self.conn.lock();
        let Some(conn) = guard.as_mut() else { return };
        let result: redis::RedisResult<()> = (|| {
            self.beat(conn)?;
            self.reassert(conn)?;
            let nodes: Vec<String> = redis::cmd("SMEMBERS").arg(NODES_KEY).query(conn)?;
            for node in nodes.iter().filter(|n| **n != self.settings.node) {
                let freed: i64 = self
                    .sweep
                    .key(node_calls_key(node))
                    .key(node_alive_key(node))
                    .arg(format!("{PREFIX}r:"))
                    .arg("0")
                    .invoke(conn)?;
                if freed >= 0 {
                    let _: i64 = redis::cmd("SREM").arg(NODES_KEY).arg(node).query(conn)?;
                    tracing::warn!(event = "cluster.node_dead", node = %node, calls_released = freed, "a node stopped beating; its channels were released");
                }
            }
            self.flush_pending(conn)
        })();
        if let Err(e) = result {
            drop(guard);
            self.mark_down(&e.to_string());
        }
    }

    /// Anti-entropy round: re-creates the records of this node's held reservations that
    /// Redis lost and drops the ones it holds for this node that are no longer held. Queued
    /// releases go first, so a call that ended is not re-asserted.
    fn reassert(&self, conn: &mut redis::Connection) -> redis::RedisResult<()> {
        {
            let mut last = self.reasserted.lock();
            if last.is_some_and(|t| t.elapsed() < self.settings.heartbeat) {
                return Ok(());
            }
            *last = Some(std::time::Instant::now());
        }
        self.flush_pending(conn)?;
        let mark = {
            let in_flight = self.in_flight.lock();
            in_flight.first().map_or_else(|| self.seq.load(Ordering::Relaxed), |oldest| oldest - 1)
        };
        let held: Vec<(String, Vec<String>)> =
            self.held.lock().iter().map(|(id, keys)| (id.clone(), keys.clone())).collect();
        let prefix = format!("{PREFIX}r:");
        let calls_key = node_calls_key(&self.settings.node);
        let mut made = 0i64;
        for chunk in held.chunks(ASSERT_BATCH) {
            let mut call = self.assert.key(&calls_key);
            call.arg(&prefix);
            for (id, keys) in chunk {
                call.arg(id).arg(keys.len());
                for k in keys {
                    call.arg(k);
                }
            }
            made += call.invoke::<i64>(conn)?;
        }
        // Stale: held in Redis for this node, not by a live call, and numbered before the
        // oldest admission still in flight (younger ones may not be in `held` yet).
        let live: std::collections::HashSet<&str> = held.iter().map(|(id, _)| id.as_str()).collect();
        let listed: Vec<String> = redis::cmd("SMEMBERS").arg(&calls_key).query(conn)?;
        let stale: Vec<&String> = listed
            .iter()
            .filter(|id| !live.contains(id.as_str()) && reservation_number(id) <= mark)
            .collect();
        let mut dropped = 0i64;
        for chunk in stale.chunks(ASSERT_BATCH) {
            let mut call = self.drop.key(&calls_key);
            call.arg(&prefix);
            for id in chunk {
                call.arg(id.as_str());
            }
            dropped += call.invoke::<i64>(conn)?;
        }
        if made > 0 || dropped > 0 {
            tracing::warn!(event = "cluster.reconciled", node = %self.settings.node, recreated = made, dropped, "Redis's reservations for this node differed from its live calls; corrected");
        }
        Ok(())
    }

    /// A new reservation number, in flight until the returned guard drops.
    fn take_off(&self) -> Flight<'_> {
        let mut in_flight = self.in_flight.lock();
        let n = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        in_flight.insert(n);
        Flight { store: self, run: self.run, n }
    }

    /// Remembers a reservation Redis granted, for the anti-entropy rounds.
    fn hold(&self, id: &str, demands: &[Demand]) {
        let keys = demands.iter().map(|d| channels_key(&d.key)).collect();
        self.held.lock().insert(id.to_string(), keys);
    }

    /// Releases (and abandoned admissions) Redis has not applied yet, in channels credited
    /// plus queued requests: 0 once everything this node gave back has reached Redis.
    pub fn pending(&self) -> usize {
        let credited: i64 = self.releasing.lock().values().sum();
        usize::try_from(credited).unwrap_or(0) + self.pending_releases.lock().len()
    }

    /// This node's not-yet-applied releases of `key`.
    fn credit(&self, key: &LimitKey) -> i64 {
        self.releasing.lock().get(key).copied().unwrap_or(0)
    }

    /// Redis applied a release: its channels no longer need crediting.
    fn applied(&self, release: &Release) {
        let mut releasing = self.releasing.lock();
        for key in &release.keys {
            if let Some(n) = releasing.get_mut(key) {
                *n -= 1;
                if *n <= 0 {
                    releasing.remove(key);
                }
            }
        }
    }

    /// The release script as a plain EVALSHA (for pipelines; the script must be loaded).
    fn release_cmd(&self, release: &Release) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.release.get_hash())
            .arg(3)
            .arg(reservation_key(&release.id))
            .arg(node_calls_key(&self.settings.node))
            .arg(abandoned_key(&release.id))
            .arg(&release.id)
            .arg(if release.abandoned { "1" } else { "0" })
            .arg(ABANDONED_TTL_MS);
        cmd
    }

    fn release_shared(&self, conn: &mut redis::Connection, release: &Release) -> redis::RedisResult<()> {
        let _: i64 = self
            .release
            .key(reservation_key(&release.id))
            .key(node_calls_key(&self.settings.node))
            .key(abandoned_key(&release.id))
            .arg(&release.id)
            .arg(if release.abandoned { "1" } else { "0" })
            .arg(ABANDONED_TTL_MS)
            .invoke(conn)?;
        Ok(())
    }

    /// An admission whose answer never came (timeout, broken connection): Redis may still
    /// apply it (a hung Redis runs what is in its socket buffers when it resumes). A timeout
    /// is not a failure, so it is undone: released if it was applied, or marked so that it
    /// reserves nothing if it arrives later. Queued until Redis answers again; idempotent.
    fn abandon(&self, id: String) {
        self.pending_releases.lock().push_back(Release { id, keys: Vec::new(), abandoned: true });
    }

    /// Sends the queued releases and abandoned admissions. Stops at the first failure (the
    /// rest stay queued, in order).
    fn flush_pending(&self, conn: &mut redis::Connection) -> redis::RedisResult<()> {
        loop {
            let Some(release) = self.pending_releases.lock().pop_front() else { return Ok(()) };
            if let Err(e) = self.release_shared(conn, &release) {
                self.pending_releases.lock().push_front(release);
                return Err(e);
            }
            self.applied(&release);
        }
    }

    /// The admission script's call for `demands` under reservation `id`.
    fn admit_invocation(&self, demands: &[Demand], count_cps: bool, id: &str) -> redis::ScriptInvocation<'_> {
        let mut call = self.admit.prepare_invoke();
        for d in demands {
            call.key(window_key(&d.key)).key(channels_key(&d.key)).key(minute_key(&d.key));
        }
        call.key(reservation_key(id)).key(node_calls_key(&self.settings.node)).key(abandoned_key(id));
        call.arg(if count_cps { "1" } else { "0" }).arg(id).arg(demands.len());
        for d in demands {
            call.arg(d.cps.map_or(-1, i64::from))
                .arg(d.channels.map_or(-1, i64::from))
                .arg(self.credit(&d.key))
                .arg(d.cpm.map_or(-1, i64::from))
                .arg(u8::from(d.paced))
                .arg(u8::from(d.shadow));
        }
        call
    }

    /// The shared admission (Ok: the shadow limits it went over); `None` when Redis did not
    /// answer.
    fn admit_shared(
        &self,
        demands: &[Demand],
        count_cps: bool,
        id: &str,
    ) -> Option<Result<Vec<Rejection>, Rejection>> {
        let mut guard = self.conn.lock();
        let conn = guard.as_mut()?;
        match self.admit_invocation(demands, count_cps, id).invoke::<Vec<i64>>(conn) {
            // None: abandoned earlier under this id (cannot happen for a fresh id)
            Ok(reply) => verdict(demands, &reply),
            Err(e) => {
                drop(guard);
                self.abandon(id.to_string());
                self.mark_down(&e.to_string());
                None
            }
        }
    }
}

/// An admission on its way to Redis; its number leaves the in-flight set when this drops,
/// whatever the outcome (answered, refused, timed out, the task cancelled).
struct Flight<'a> {
    store: &'a RedisStore,
    run: u64,
    n: u64,
}

impl Flight<'_> {
    /// `node:run:n`; the anti-entropy script reads `n` after the last colon.
    fn id(&self, node: &str) -> String {
        format!("{node}:{:x}:{}", self.run, self.n)
    }
}

/// The number an id ends with (`node:run:n`); 0 for an id that has none.
fn reservation_number(id: &str) -> u64 {
    id.rsplit(':').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// A number no earlier run of this node used: random, or the clock's nanoseconds if the OS
/// has no entropy source.
fn run_nonce() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_ok() {
        return u64::from_le_bytes(bytes);
    }
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.store.in_flight.lock().remove(&self.n);
    }
}

/// A reservation to give back to Redis, with the keys it credits until applied; or an
/// admission this node gave up on (`abandoned`: no keys credited, it may never have applied).
#[derive(Debug, Clone)]
struct Release {
    id: String,
    keys: Vec<LimitKey>,
    abandoned: bool,
}

/// What an asynchronous admission found.
#[derive(Debug)]
pub enum Remote {
    /// Candidate `usize` admitted under this reservation.
    Admitted(usize, Reservation),
    Rejected(Rejection),
    /// Redis did not answer in time: decide with the `on_failure` fallback.
    Unavailable,
}

impl RedisStore {
    /// Admits a new call without blocking the proxy: candidates (common + egress demands)
    /// are tried in order over the shared multiplexed connection, each within `timeout`.
    pub async fn admit_async(&self, now: Instant, candidates: Vec<Vec<Demand>>, count_cps: bool) -> Remote {
        if !self.up.load(Ordering::Relaxed) {
            return Remote::Unavailable;
        }
        let conn = self.aconn.lock().clone();
        let mut conn = match conn {
            Some(c) => c,
            None => match tokio::time::timeout(self.settings.timeout, async {
                match self.primary.client() {
                    Some(client) => client.get_multiplexed_async_connection().await,
                    None => Err(redis::RedisError::from((redis::ErrorKind::IoError, "no primary known"))),
                }
            })
            .await
            {
                Ok(Ok(c)) => {
                    *self.aconn.lock() = Some(c.clone());
                    c
                }
                Ok(Err(e)) => return self.unavailable(&e.to_string()),
                Err(_) => return self.unavailable("connect timed out"),
            },
        };
        let mut refusal = None;
        for (i, demands) in candidates.iter().enumerate() {
            let flight = self.take_off();
            let id = flight.id(&self.settings.node);
            let call = self.admit_invocation(demands, count_cps, &id);
            let answer =
                tokio::time::timeout(self.settings.timeout, call.invoke_async::<Vec<i64>>(&mut conn)).await;
            match answer {
                Ok(Ok(reply)) => match verdict(demands, &reply) {
                    Some(Ok(would_reject)) => {
                        return match self.mirror(now, demands, count_cps, id, would_reject) {
                            Ok(mirror) => Remote::Admitted(i, mirror),
                            Err(r) => Remote::Rejected(r),
                        };
                    }
                    Some(Err(r)) if r.key.scope.is_egress() => refusal = Some(r),
                    Some(Err(r)) => return Remote::Rejected(r),
                    None => return self.unavailable("admission id abandoned"),
                },
                Ok(Err(e)) => {
                    self.abandon(id);
                    return self.unavailable(&e.to_string());
                }
                Err(_) => {
                    self.abandon(id);
                    return self.unavailable("admission timed out");
                }
            }
        }
        refusal.map_or(Remote::Unavailable, Remote::Rejected)
    }

    /// Counts a reservation Redis granted in this node's own view (for /status and the
    /// fallback), and remembers it for anti-entropy. A mirror that cannot be made undoes
    /// the grant.
    fn mirror(
        &self,
        now: Instant,
        demands: &[Demand],
        count_cps: bool,
        id: String,
        would_reject: Vec<Rejection>,
    ) -> Result<Reservation, Rejection> {
        match self.local.admit(now, &unlimited(demands), count_cps) {
            Ok(mut mirror) => {
                self.hold(&id, demands);
                mirror.set_token(id);
                mirror.set_would_reject(would_reject);
                Ok(mirror)
            }
            Err(r) => {
                self.abandon(id);
                Err(r)
            }
        }
    }

    fn unavailable(&self, why: &str) -> Remote {
        *self.aconn.lock() = None;
        self.mark_down(why);
        Remote::Unavailable
    }
}

/// Reads the admission script's reply: `Some(Ok(shadow hits))`, `Some(Err(refusal))`, or
/// `None` for an abandoned id (or a reply this version cannot read).
fn verdict(demands: &[Demand], reply: &[i64]) -> Option<Result<Vec<Rejection>, Rejection>> {
    let rejection = |i: i64, kind: i64| {
        let key = demands.get(usize::try_from(i - 1).ok()?)?.key.clone();
        let kind = match kind {
            1 => Refusal::Cps,
            2 => Refusal::Channels,
            3 => Refusal::Cpm,
            _ => return None,
        };
        Some(Rejection { key, kind })
    };
    match reply {
        [0, _, hits @ ..] => Some(Ok(hits.chunks_exact(2).filter_map(|h| rejection(h[0], h[1])).collect())),
        [i, kind, ..] if *i > 0 => rejection(*i, *kind).map(Err),
        _ => None,
    }
}

/// The same demands without limits (counted, never refused).
fn unlimited(demands: &[Demand]) -> Vec<Demand> {
    demands.iter().map(Demand::unlimited).collect()
}

/// Each limit divided among `nodes` (a limit above 0 keeps at least 1 per node).
fn divided(demands: &[Demand], nodes: u32) -> Vec<Demand> {
    let share = |v: Option<u32>| v.map(|v| if v == 0 { 0 } else { (v / nodes.max(1)).max(1) });
    demands
        .iter()
        .map(|d| Demand { cps: share(d.cps), cpm: share(d.cpm), channels: share(d.channels), ..d.clone() })
        .collect()
}

impl Store for RedisStore {
    fn admit(&self, now: Instant, demands: &[Demand], count_cps: bool) -> Result<Reservation, Rejection> {
        if self.up.load(Ordering::Relaxed) {
            let flight = self.take_off();
            let id = flight.id(&self.settings.node);
            match self.admit_shared(demands, count_cps, &id) {
                Some(Ok(would_reject)) => return self.mirror(now, demands, count_cps, id, would_reject),
                Some(Err(rejection)) => return Err(rejection),
                None => {} // Redis did not answer: fall back below
            }
        }
        match self.settings.on_failure {
            OnFailure::Local => self.local.admit(now, &divided(demands, self.settings.nodes), count_cps),
            OnFailure::Reject => Err(Rejection {
                key: LimitKey { scope: Scope::Server, name: super::KeyName::None },
                kind: Refusal::Channels,
            }),
            OnFailure::Allow => self.local.admit(now, &unlimited(demands), count_cps),
        }
    }

    fn release(&self, now: Instant, reservation: Reservation) {
        let (keys, token) = reservation.take();
        let Some(id) = token else {
            return self.local.release(now, Reservation::new(keys, None));
        };
        self.held.lock().remove(&id);
        self.local.release(now, Reservation::new(keys.clone(), None));
        {
            let mut releasing = self.releasing.lock();
            for key in &keys {
                *releasing.entry(key.clone()).or_insert(0) += 1;
            }
        }
        // Never a Redis round trip on the SIP path: the worker sends it (or, while Redis
        // is away, the maintenance thread after it returns).
        let release = Release { id, keys, abandoned: false };
        let unsent = match self.release_tx.lock().as_ref() {
            Some(tx) => tx.send(release).err().map(|e| e.0),
            None => Some(release),
        };
        if let Some(release) = unsent {
            self.pending_releases.lock().push_back(release);
        }
    }

    fn healthy(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn moves_egress(&self) -> bool {
        false
    }

    fn asynchronous(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_divide_among_nodes() {
        let d = [Demand { key: LimitKey::server(), cps: Some(10), channels: Some(1), ..Demand::default() }];
        let shared = divided(&d, 3);
        assert_eq!((shared[0].cps, shared[0].channels), (Some(3), Some(1)));
        assert_eq!(unlimited(&d)[0].cps, None);
    }
}
