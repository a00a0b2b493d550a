//! The cluster store: limits shared by every sluice node through one Redis (or Valkey).
//!
//! One admission is one round trip, made off the SIP path: the core parks the INVITE and the
//! transport runs [`RedisStore::admit_async`] on one multiplexed connection shared by every
//! call in flight. The Lua script (EVALSHA) reads Redis's own clock, checks
//! every demand's sliding window (a list of runs of admission times over the last second) and
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

/// Admits a batch of calls, each all or nothing, in order: each sees the ones before it, as
/// if they had come one script at a time.
///
/// KEYS[1] = the node's reservations (a hash: id -> its channel keys); then per distinct
/// limit key j its one-second window, channel count and one-minute window (KEYS[3j-1 ..
/// 3j+1]); then per call its abandoned marker. ARGV: K (distinct keys), B (calls); per key
/// this node's unapplied releases of it (credited), cps, channels, cpm (-1 = no limit) and
/// flags (1 = paced, 2 = shadow: over its limit it does not refuse; it is reported); then
/// per call its id, '1' to count it in the windows, its record (its channel keys, one per
/// line), its number of demands and their key numbers. Per call the reply holds {0, h, i,
/// kind, ...} (admitted, then its h shadow hits), {i, kind} (refused by demand i: kind 1 =
/// cps, 2 = channels, 3 = cpm) or {-1, 0} (an abandoned id).
///
/// Redis's CPU is the cluster's ceiling. A key shared by the calls of a batch (the server, a
/// customer, a carrier) is read and written once per batch, not once per call, and its
/// limits are sent once; per call the script only walks its key numbers:
/// - a channel count is read once and written with one INCRBY;
/// - a window is a list of runs, `time count total`: `count` admissions at `time` (Redis's
///   clock in µs; every admission of one script shares its instant), `total` the window's
///   admissions up to and including that run. Runs that left the span are popped from the
///   head; the count in the window is then `total` of the tail minus `total` of the head
///   plus the head's `count`: exact, from two reads, whatever the limit. A batch appends one
///   run per window, so a window holds at most one run per script in its span, not one
///   entry per admission;
/// - the batch's records go in with one HSET; times go as strings (a Lua number would be
///   formatted with %.14g).
const ADMIT: &str = r#"
local K, B = tonumber(ARGV[1]), tonumber(ARGV[2])
local marks = 1 + 3 * K
local marked = {}
if redis.call('EXISTS', unpack(KEYS, marks + 1, marks + B)) > 0 then
  for b = 1, B do marked[b] = redis.call('EXISTS', KEYS[marks + b]) == 1 end
end
local t = redis.call('TIME')
local now_s = t[1] .. string.sub('00000' .. t[2], -6)
local now = tonumber(now_s)
local credit, cps, ch, cpm, paced, shadow = {}, {}, {}, {}, {}, {}
local used, taken = {}, {}
for j = 1, K do
  local a = 3 + 5 * (j - 1)
  credit[j], cps[j], ch[j], cpm[j] = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local flags = tonumber(ARGV[a + 4])
  paced[j], shadow[j] = flags % 2 == 1, flags >= 2
  taken[j] = 0
end
-- per window slot: 2j-1 = key j's second, 2j = its minute
local inside, total, latest, added = {}, {}, {}, {}
local function wkey(s) if s % 2 == 1 then return KEYS[s + (s + 1) / 2] end return KEYS[s + s / 2 + 1] end
local function run(e)
  local a, b, c = string.match(e or '', '^(%d+) (%d+) (%d+)$')
  return tonumber(a), tonumber(b), tonumber(c)
end
-- Loads a window once per script: drops the runs that left its span, counts the rest.
local function seen(s)
  if inside[s] then return end
  local k, span = wkey(s), (s % 2 == 1) and 1000000 or 60000000
  inside[s], total[s], latest[s], added[s] = 0, 0, false, 0
  local head = redis.call('LINDEX', k, 0)
  while head do
    local ht, hn, hc = run(head)
    if ht and ht > now - span then
      local lt, _, lc = run(redis.call('LINDEX', k, -1))
      if not lt then
        -- not a run sluice wrote: start the window afresh
        redis.call('DEL', k)
        return
      end
      inside[s], total[s], latest[s] = lc - hc + hn, lc, lt
      return
    end
    redis.call('LPOP', k)
    head = redis.call('LINDEX', k, 0)
  end
end
-- The window's count with this batch's admissions.
local function count(s)
  seen(s)
  return inside[s] + added[s]
end
local function last(s)
  seen(s)
  if added[s] > 0 then return now end
  return latest[s]
end
local reply, records, took = {}, {}, {}
local a = 3 + 5 * K
for b = 1, B do
  local id, counted, record, n = ARGV[a], ARGV[a + 1] == '1', ARGV[a + 2], tonumber(ARGV[a + 3])
  local first = a + 4
  a = first + n
  if marked[b] then
    reply[#reply + 1] = -1
    reply[#reply + 1] = 0
  else
    local refused, kind, hits, m = 0, 0, 0, 0
    for i = 1, n do
      local j = tonumber(ARGV[first + i - 1])
      if not used[j] then used[j] = tonumber(redis.call('GET', KEYS[3 * j]) or '0') end
      local k = 0
      if ch[j] >= 0 and used[j] + taken[j] - credit[j] >= ch[j] then k = 2 end
      if k == 0 and counted and cps[j] >= 0 then
        if count(2 * j - 1) >= cps[j] then
          k = 1
        elseif paced[j] and cps[j] > 0 then
          local l = last(2 * j - 1)
          if l and now - l < math.ceil(1000000 / cps[j]) then k = 1 end
        end
      end
      if k == 0 and counted and cpm[j] >= 0 and count(2 * j) >= cpm[j] then k = 3 end
      if k ~= 0 and not shadow[j] then refused, kind = i, k; break end
      if k ~= 0 then
        hits = hits + 1
        took[2 * n + 2 * hits - 1], took[2 * n + 2 * hits] = i, k
      end
      taken[j] = taken[j] + 1
      m = m + 1
      took[m] = j
      if counted and cps[j] >= 0 then seen(2 * j - 1); added[2 * j - 1] = added[2 * j - 1] + 1 end
      if counted and cpm[j] >= 0 then seen(2 * j); added[2 * j] = added[2 * j] + 1 end
    end
    if refused > 0 then
      for q = 1, m do
        local j = took[q]
        taken[j] = taken[j] - 1
        if counted and cps[j] >= 0 then added[2 * j - 1] = added[2 * j - 1] - 1 end
        if counted and cpm[j] >= 0 then added[2 * j] = added[2 * j] - 1 end
      end
      reply[#reply + 1] = refused
      reply[#reply + 1] = kind
    else
      records[#records + 1] = id
      records[#records + 1] = record
      reply[#reply + 1] = 0
      reply[#reply + 1] = hits
      for h = 1, 2 * hits do reply[#reply + 1] = took[2 * n + h] end
    end
  end
end
for j = 1, K do
  if taken[j] > 0 then redis.call('INCRBY', KEYS[3 * j], taken[j]) end
end
for s, n in pairs(added) do
  if n > 0 then
    local k = wkey(s)
    redis.call('RPUSH', k, now_s .. ' ' .. string.format('%d %d', n, total[s] + n))
    redis.call('PEXPIRE', k, (s % 2 == 1) and '2000' or '61000')
  end
end
if #records > 0 then redis.call('HSET', KEYS[1], unpack(records)) end
return reply
"#;

/// Admissions sent in one script at most: a batch is what queued while the one before it was
/// in Redis, so its size follows the load; this bounds one script's pause of Redis.
const ADMIT_BATCH: usize = 64;

/// Admissions waiting for the batcher at most; beyond, a call is decided by `on_failure`.
const ADMIT_QUEUE: usize = 8_192;

/// Lua shared by the scripts that end reservations: gives back the channels a record lists
/// (never below zero); `give_back` ends a record of the layout sluice used before (one
/// string key per reservation, listed in a set per node), which a node upgraded in place
/// finds from its previous run.
macro_rules! lua_give_back {
    () => {
        r#"
local function give_record(rec)
  for k in string.gmatch(rec, '[^\n]+') do
    if redis.call('DECR', k) < 0 then redis.call('SET', k, 0) end
  end
end
local function give_back(rk)
  local rec = redis.call('GET', rk)
  if not rec then return false end
  give_record(rec)
  redis.call('DEL', rk)
  return true
end
"#
    };
}

/// Ends a batch of reservations (idempotent). KEYS[1] = the node's reservations, then per
/// release its abandoned marker; ARGV[1] = the markers' lifetime, then per release its id
/// and '1' for an abandoned admission. A record's channels are given back (never below
/// zero), one DECRBY per key for the whole batch. Without a record, an abandoned admission
/// leaves a marker so that, should it reach Redis later, it reserves nothing. Returns the
/// number of records ended.
const RELEASE: &str = r#"
local B = (#ARGV - 1) / 2
local ids = {}
for b = 1, B do ids[b] = ARGV[2 * b] end
local recs = redis.call('HMGET', KEYS[1], unpack(ids))
local give, gone, seen = {}, {}, {}
for b = 1, B do
  local id, rec = ids[b], recs[b]
  if rec and not seen[id] then
    seen[id] = true
    for k in string.gmatch(rec, '[^\n]+') do give[k] = (give[k] or 0) + 1 end
    gone[#gone + 1] = id
  elseif not rec and ARGV[2 * b + 1] == '1' then
    redis.call('SET', KEYS[1 + b], '1', 'PX', ARGV[1])
  end
end
for k, n in pairs(give) do
  if redis.call('DECRBY', k, n) < 0 then redis.call('SET', k, 0) end
end
if #gone > 0 then redis.call('HDEL', KEYS[1], unpack(gone)) end
return #gone
"#;

/// Releases every reservation of a node whose heartbeat key is gone (or, with ARGV[2] = 1,
/// unconditionally: a node cleaning up after its own restart). KEYS[1] = its reservations,
/// KEYS[2] = its heartbeat, KEYS[3] = its set in the layout before (ARGV[1] = that
/// layout's record prefix).
const SWEEP: &str = concat!(
    lua_give_back!(),
    r#"
if ARGV[2] ~= '1' and redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local all = redis.call('HGETALL', KEYS[1])
for i = 2, #all, 2 do give_record(all[i]) end
redis.call('DEL', KEYS[1])
local old = redis.call('SMEMBERS', KEYS[3])
for _, id in ipairs(old) do give_back(ARGV[1] .. id) end
redis.call('DEL', KEYS[3])
return #all / 2 + #old
"#
);

/// Anti-entropy, first half: the node re-asserts the reservations of its live calls.
/// KEYS[1] = the node's reservations; ARGV: per live call its id, the number of its channel
/// keys and the keys. A missing record is re-created and its keys counted again (Redis
/// restarted empty, restored from an old snapshot, or a replica promoted without the last
/// writes). Returns the number re-created.
const ASSERT: &str = r#"
local i, calls = 1, {}
while i <= #ARGV do
  calls[#calls + 1] = i
  i = i + 2 + tonumber(ARGV[i + 1])
end
if #calls == 0 then return 0 end
local ids = {}
for c, at in ipairs(calls) do ids[c] = ARGV[at] end
local recs = redis.call('HMGET', KEYS[1], unpack(ids))
local made = 0
for c, at in ipairs(calls) do
  if not recs[c] then
    local record = {}
    for j = 1, tonumber(ARGV[at + 1]) do
      local key = ARGV[at + 1 + j]
      redis.call('INCR', key)
      record[j] = key
    end
    redis.call('HSET', KEYS[1], ids[c], table.concat(record, '\n'))
    made = made + 1
  end
end
return made
"#;

/// Anti-entropy, second half: gives back the reservations Redis holds for this node that no
/// live call holds (the node picked them from its reservations). KEYS[1] = the node's
/// reservations; ARGV = the ids. Returns the number dropped.
const DROP: &str = concat!(
    lua_give_back!(),
    r#"
local dropped = 0
for _, id in ipairs(ARGV) do
  local rec = redis.call('HGET', KEYS[1], id)
  if rec then
    give_record(rec)
    redis.call('HDEL', KEYS[1], id)
    dropped = dropped + 1
  end
end
return dropped
"#
);

/// How soon a store that counts Redis as down tries it again.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// Releases sent in one script at most.
const RELEASE_BATCH: usize = 256;

/// How long the release worker gathers releases after the first before it sends them. A
/// release's channels are credited to this node's admissions until Redis applies it, so
/// only other nodes see it this much later; in exchange Redis runs one script, and
/// decrements each shared key once, for every release of the span instead of for each.
const RELEASE_LINGER: Duration = Duration::from_millis(5);

/// How long the batcher gathers admissions after the first of a batch before it sends
/// them (unless the batch fills first). Redis's CPU is the cluster's ceiling, and most of
/// a script's work is per key, not per call: at a few thousand calls/s one script per call
/// would read and write every shared key once per call. A new call waits this much longer
/// for its answer; SIP's setup times are counted in hundreds of milliseconds.
const ADMIT_LINGER: Duration = Duration::from_millis(1);

/// Live calls re-asserted per script call (bounds one call's size and Redis's pause).
const ASSERT_BATCH: usize = 500;

/// A key's one-second window (a list of runs; the sorted set of before was `w:`).
fn window_key(key: &LimitKey) -> String {
    format!("{PREFIX}cps:{key}")
}
fn channels_key(key: &LimitKey) -> String {
    format!("{PREFIX}c:{key}")
}
/// A key's one-minute window (a list of runs; the sorted set of before was `m:`).
fn minute_key(key: &LimitKey) -> String {
    format!("{PREFIX}cpm:{key}")
}
/// Marks an admission this node gave up on: if it reaches Redis later, it reserves nothing.
fn abandoned_key(id: &str) -> String {
    format!("{PREFIX}t:{id}")
}
/// A node's reservations: a hash of id -> its channel keys, one per line.
fn node_held_key(node: &str) -> String {
    format!("{PREFIX}node:{node}:held")
}
/// A node's reservation ids in the layout before the hash (each record a string key).
fn legacy_calls_key(node: &str) -> String {
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
    /// The connection the admission batcher sends on.
    aconn: Mutex<Option<redis::aio::MultiplexedConnection>>,
    /// The admission batcher's queue (started by the first asynchronous admission).
    batcher: Mutex<Option<tokio::sync::mpsc::Sender<Queued>>>,
    /// Batches in a row Redis did not answer in time.
    slow_batches: std::sync::atomic::AtomicU32,
    /// New calls Redis did not answer in time while up (each decided by `on_failure`).
    unanswered: AtomicU64,
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
    /// This node's reservations in Redis that are still held (id -> its record: its channel
    /// keys, one per line, as Redis keeps it), re-asserted
    /// every heartbeat so Redis's counts converge to the truth after any fault.
    held: Mutex<HashMap<String, String>>,
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
            batcher: Mutex::new(None),
            slow_batches: std::sync::atomic::AtomicU32::new(0),
            unanswered: AtomicU64::new(0),
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
                    // Down: try again soon, so a false alarm (a few late answers) costs little.
                    let pause = if store.up.load(Ordering::Relaxed) {
                        Duration::from_secs(1)
                    } else {
                        RECONNECT_PAUSE
                    };
                    std::thread::sleep(store.settings.heartbeat.min(pause));
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
        *self.batcher.lock() = None; // ends the batcher once its queue is empty
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
                // What queues within RELEASE_LINGER goes in the same script, so releases keep
                // up with admissions and a key shared by many calls is written once. The
                // worker sleeps rather than waits on the channel: each send would wake it.
                let mut batch = vec![first];
                std::thread::sleep(RELEASE_LINGER);
                while batch.len() < RELEASE_BATCH {
                    match rx.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                if conn.is_none() {
                    conn = store.primary.client().and_then(|client| store.connect(&client).ok());
                }
                let done =
                    conn.as_mut().map(|c| store.release_invocation(&batch).invoke::<i64>(c).map(|_| ()));
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
                    .key(node_held_key(node))
                    .key(node_alive_key(node))
                    .key(legacy_calls_key(node))
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
                    .key(node_held_key(node))
                    .key(node_alive_key(node))
                    .key(legacy_calls_key(node))
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
        let held: Vec<(String, String)> =
            self.held.lock().iter().map(|(id, record)| (id.clone(), record.clone())).collect();
        let held_key = node_held_key(&self.settings.node);
        let mut made = 0i64;
        for chunk in held.chunks(ASSERT_BATCH) {
            let mut call = self.assert.key(&held_key);
            for (id, record) in chunk {
                let keys = || record.split('\n').filter(|k| !k.is_empty());
                call.arg(id).arg(keys().count());
                for k in keys() {
                    call.arg(k);
                }
            }
            made += call.invoke::<i64>(conn)?;
        }
        // Stale: held in Redis for this node, not by a live call, and numbered before the
        // oldest admission still in flight (younger ones may not be in `held` yet).
        let live: std::collections::HashSet<&str> = held.iter().map(|(id, _)| id.as_str()).collect();
        let listed: Vec<String> = redis::cmd("HKEYS").arg(&held_key).query(conn)?;
        let stale: Vec<&String> = listed
            .iter()
            .filter(|id| !live.contains(id.as_str()) && reservation_number(id) <= mark)
            .collect();
        let mut dropped = 0i64;
        for chunk in stale.chunks(ASSERT_BATCH) {
            let mut call = self.drop.key(&held_key);
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
    fn hold(&self, id: &str, record: String) {
        self.held.lock().insert(id.to_string(), record);
    }

    /// Releases (and abandoned admissions) Redis has not applied yet, in channels credited
    /// plus queued requests: 0 once everything this node gave back has reached Redis.
    pub fn pending(&self) -> usize {
        let credited: i64 = self.releasing.lock().values().sum();
        usize::try_from(credited).unwrap_or(0) + self.pending_releases.lock().len()
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

    /// The release script's call for a batch of releases.
    fn release_invocation(&self, batch: &[Release]) -> redis::ScriptInvocation<'_> {
        let mut call = self.release.prepare_invoke();
        call.key(node_held_key(&self.settings.node));
        for release in batch {
            call.key(abandoned_key(&release.id));
        }
        call.arg(ABANDONED_TTL_MS);
        for release in batch {
            call.arg(&release.id).arg(if release.abandoned { "1" } else { "0" });
        }
        call
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
            let batch: Vec<Release> = {
                let mut pending = self.pending_releases.lock();
                let n = pending.len().min(RELEASE_BATCH);
                pending.drain(..n).collect()
            };
            if batch.is_empty() {
                return Ok(());
            }
            if let Err(e) = self.release_invocation(&batch).invoke::<i64>(conn) {
                let mut pending = self.pending_releases.lock();
                for release in batch.into_iter().rev() {
                    pending.push_front(release);
                }
                return Err(e);
            }
            for release in &batch {
                self.applied(release);
            }
        }
    }

    /// The admission script's call for the first calls of `batch`, and how many it holds: a
    /// key's limits go once per script, so a call that sees other limits for a key than the
    /// calls before it (a reload between them) waits for the next script.
    fn admit_invocation(&self, batch: &[Ask<'_>]) -> (redis::ScriptInvocation<'_>, usize) {
        let mut keys: Vec<&Demand> = Vec::new();
        let mut index: HashMap<&LimitKey, usize, ahash::RandomState> = HashMap::default();
        let mut taken = 0;
        for ask in batch {
            let agrees =
                ask.demands.iter().all(|d| index.get(&d.key).is_none_or(|&j| same_limits(keys[j - 1], d)));
            if !agrees && taken > 0 {
                break;
            }
            for d in ask.demands {
                index.entry(&d.key).or_insert_with(|| {
                    keys.push(d);
                    keys.len()
                });
            }
            taken += 1;
        }
        let batch = &batch[..taken];
        let mut call = self.admit.prepare_invoke();
        call.key(node_held_key(&self.settings.node));
        for d in &keys {
            call.key(window_key(&d.key)).key(channels_key(&d.key)).key(minute_key(&d.key));
        }
        for ask in batch {
            call.key(abandoned_key(ask.id));
        }
        call.arg(keys.len()).arg(batch.len());
        {
            let releasing = self.releasing.lock();
            for d in &keys {
                call.arg(releasing.get(&d.key).copied().unwrap_or(0))
                    .arg(d.cps.map_or(-1, i64::from))
                    .arg(d.channels.map_or(-1, i64::from))
                    .arg(d.cpm.map_or(-1, i64::from))
                    .arg(u8::from(d.paced) + 2 * u8::from(d.shadow));
            }
        }
        for ask in batch {
            call.arg(ask.id)
                .arg(if ask.count_cps { "1" } else { "0" })
                .arg(ask.record)
                .arg(ask.demands.len());
            for d in ask.demands {
                call.arg(index.get(&d.key).copied().unwrap_or(0));
            }
        }
        (call, taken)
    }

    /// The shared admission (Ok: the shadow limits it went over); `None` when Redis did not
    /// answer.
    fn admit_shared(
        &self,
        demands: &[Demand],
        record: &str,
        count_cps: bool,
        id: &str,
    ) -> Option<Result<Vec<Rejection>, Rejection>> {
        let mut guard = self.conn.lock();
        let conn = guard.as_mut()?;
        let ask = [Ask { id, demands, record, count_cps }];
        match self.admit_invocation(&ask).0.invoke::<Vec<i64>>(conn) {
            // None: abandoned earlier under this id (cannot happen for a fresh id)
            Ok(reply) => verdict(demands, &reply).and_then(|(v, _)| v),
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

/// One call's admission in a batch.
struct Ask<'a> {
    id: &'a str,
    demands: &'a [Demand],
    /// What Redis keeps for the reservation (see [`record`]).
    record: &'a str,
    count_cps: bool,
}

/// A batch's answer for one call: its verdict, or why the batch got none.
type Answer = Result<Verdict, Failure>;

/// Why a batch got no verdict.
#[derive(Debug, Clone)]
enum Failure {
    /// Redis did not answer within `timeout`.
    Slow,
    /// The connection failed, or the reply could not be read.
    Broken(String),
}

/// Batches in a row that Redis did not answer in time before the store counts Redis as
/// down: on a loaded host one answer is late now and then, and each late call is decided by
/// `on_failure` on its own; falling back for every call takes a Redis that stays slow.
const SLOW_BATCHES_DOWN: u32 = 3;

/// An admission waiting for the batcher, with where its answer goes (it comes back with the
/// answer, for the mirror).
struct Queued {
    id: String,
    demands: Vec<Demand>,
    record: String,
    count_cps: bool,
    answer: tokio::sync::oneshot::Sender<(Vec<Demand>, String, Answer)>,
}

impl RedisStore {
    /// Admits a new call without blocking the proxy: candidates (common + egress demands)
    /// are tried in order, each within `timeout`. Each goes to the batcher, which sends
    /// what has queued meanwhile as one script.
    pub async fn admit_async(
        self: &Arc<Self>,
        now: Instant,
        candidates: Vec<Vec<Demand>>,
        count_cps: bool,
    ) -> Remote {
        if !self.up.load(Ordering::Relaxed) {
            return Remote::Unavailable;
        }
        let mut refusal = None;
        for (i, demands) in candidates.into_iter().enumerate() {
            let flight = self.take_off();
            let id = flight.id(&self.settings.node);
            let (answer, answered) = tokio::sync::oneshot::channel();
            let queued = Queued { id: id.clone(), record: record(&demands), demands, count_cps, answer };
            if self.batcher().try_send(queued).is_err() {
                // Thousands already wait for Redis: it is far behind.
                return self.unavailable("admission queue full");
            }
            match tokio::time::timeout(self.settings.timeout, answered).await {
                Ok(Ok((demands, record, Ok(Some(Ok(would_reject)))))) => {
                    return match self.mirror(now, &demands, record, count_cps, id, would_reject) {
                        Ok(mirror) => Remote::Admitted(i, mirror),
                        Err(r) => Remote::Rejected(r),
                    };
                }
                Ok(Ok((_, _, Ok(Some(Err(r)))))) if r.key.scope.is_egress() => refusal = Some(r),
                Ok(Ok((_, _, Ok(Some(Err(r)))))) => return Remote::Rejected(r),
                Ok(Ok((_, _, Ok(None)))) => return self.unavailable("admission id abandoned"),
                // The batcher judges whether Redis is down; this call is decided without it.
                // So is one that waited longer than `timeout` (queued behind a slow batch).
                Ok(Ok((_, _, Err(_)))) | Ok(Err(_)) | Err(_) => {
                    self.abandon(id);
                    self.unanswered.fetch_add(1, Ordering::Relaxed);
                    return Remote::Unavailable;
                }
            }
        }
        refusal.map_or(Remote::Unavailable, Remote::Rejected)
    }

    /// New calls Redis did not answer in time while the store was up.
    pub fn unanswered(&self) -> u64 {
        self.unanswered.load(Ordering::Relaxed)
    }

    /// The batcher's queue, starting the batcher on first use (on the caller's runtime).
    fn batcher(self: &Arc<Self>) -> tokio::sync::mpsc::Sender<Queued> {
        let mut batcher = self.batcher.lock();
        if let Some(tx) = batcher.as_ref().filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = tokio::sync::mpsc::channel(ADMIT_QUEUE);
        tokio::spawn(self.clone().run_batches(rx));
        *batcher = Some(tx.clone());
        tx
    }

    /// Sends the queued admissions, one script per batch, one batch at a time: what queues
    /// while one batch is in Redis goes in the next, so under load a script carries many
    /// calls and Redis reads each shared key once for all of them. Ends with
    /// [`RedisStore::stop`].
    async fn run_batches(self: Arc<Self>, mut queue: tokio::sync::mpsc::Receiver<Queued>) {
        let mut batch: Vec<Queued> = Vec::with_capacity(ADMIT_BATCH);
        loop {
            if batch.is_empty() {
                if queue.recv_many(&mut batch, ADMIT_BATCH).await == 0 {
                    return;
                }
                if batch.len() < ADMIT_BATCH {
                    tokio::time::sleep(ADMIT_LINGER).await;
                }
            }
            // Calls left from the last script (other limits for a key) go first.
            while batch.len() < ADMIT_BATCH {
                match queue.try_recv() {
                    Ok(q) => batch.push(q),
                    Err(_) => break,
                }
            }
            // A caller that stopped waiting has abandoned its id already: not sent.
            batch.retain(|q| !q.answer.is_closed());
            if batch.is_empty() {
                continue;
            }
            let answers = self.admit_batch(&batch).await;
            for (q, answer) in batch.drain(..answers.len()).zip(answers) {
                let _ = q.answer.send((q.demands, q.record, answer));
            }
        }
    }

    /// The first calls of a batch through the admission script (as many as one script can
    /// hold, at least one): one answer per call, in order.
    async fn admit_batch(&self, batch: &[Queued]) -> Vec<Answer> {
        let asks: Vec<Ask<'_>> = batch
            .iter()
            .map(|q| Ask { id: &q.id, demands: &q.demands, record: &q.record, count_cps: q.count_cps })
            .collect();
        let (call, taken) = self.admit_invocation(&asks);
        let batch = &batch[..taken];
        let failed = |why: Failure| {
            match &why {
                Failure::Slow => {
                    if self.slow_batches.fetch_add(1, Ordering::Relaxed) + 1 >= SLOW_BATCHES_DOWN {
                        self.mark_down("admissions timed out");
                    }
                }
                Failure::Broken(e) => self.mark_down(e),
            }
            vec![Err(why); batch.len()]
        };
        let mut conn = match self.admission_connection().await {
            Ok(c) => c,
            Err(failure) => return failed(failure),
        };
        let reply =
            match tokio::time::timeout(self.settings.timeout, call.invoke_async::<Vec<i64>>(&mut conn)).await
            {
                Ok(Ok(reply)) => {
                    self.slow_batches.store(0, Ordering::Relaxed);
                    reply
                }
                Ok(Err(e)) => return failed(Failure::Broken(e.to_string())),
                Err(_) => {
                    // The answer may still come: a fresh connection for the next batch, so it
                    // does not wait behind this one.
                    *self.aconn.lock() = None;
                    return failed(Failure::Slow);
                }
            };
        let mut rest = reply.as_slice();
        let mut answers = Vec::with_capacity(batch.len());
        for q in batch {
            match verdict(&q.demands, rest) {
                Some((v, used)) => {
                    rest = rest.get(used..).unwrap_or_default();
                    answers.push(Ok(v));
                }
                None => {
                    // Nothing after an unreadable part can be placed either.
                    self.mark_down("unreadable admission reply");
                    answers.resize(batch.len(), Err(Failure::Broken("unreadable admission reply".into())));
                    break;
                }
            }
        }
        answers
    }

    /// The multiplexed connection admissions share, connected on first use (and again after
    /// the store marked itself down).
    async fn admission_connection(&self) -> Result<redis::aio::MultiplexedConnection, Failure> {
        if let Some(c) = self.aconn.lock().clone() {
            return Ok(c);
        }
        let connected = tokio::time::timeout(self.settings.timeout, async {
            match self.primary.client() {
                Some(client) => client.get_multiplexed_async_connection().await,
                None => Err(redis::RedisError::from((redis::ErrorKind::IoError, "no primary known"))),
            }
        })
        .await;
        match connected {
            Ok(Ok(c)) => {
                *self.aconn.lock() = Some(c.clone());
                Ok(c)
            }
            Ok(Err(e)) => Err(Failure::Broken(e.to_string())),
            Err(_) => Err(Failure::Slow),
        }
    }

    /// Counts a reservation Redis granted in this node's own view (for /status and the
    /// fallback), and remembers it for anti-entropy. A mirror that cannot be made undoes
    /// the grant.
    fn mirror(
        &self,
        now: Instant,
        demands: &[Demand],
        record: String,
        count_cps: bool,
        id: String,
        would_reject: Vec<Rejection>,
    ) -> Result<Reservation, Rejection> {
        match self.local.admit(now, &unlimited(demands), count_cps) {
            Ok(mut mirror) => {
                self.hold(&id, record);
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

/// What the admission script said of one call: `Some(Ok(shadow hits))`, `Some(Err(refusal))`,
/// or `None` for an abandoned id.
type Verdict = Option<Result<Vec<Rejection>, Rejection>>;

/// Reads one call's part at the front of the admission script's reply, and how many numbers
/// it took; `None` for a reply this version cannot read.
fn verdict(demands: &[Demand], reply: &[i64]) -> Option<(Verdict, usize)> {
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
        [0, h, rest @ ..] => {
            let pairs =
                usize::try_from(*h).ok().filter(|h| h.checked_mul(2).is_some_and(|n| n <= rest.len()))?;
            let hits = rest[..2 * pairs].chunks_exact(2).filter_map(|h| rejection(h[0], h[1])).collect();
            Some((Some(Ok(hits)), 2 + 2 * pairs))
        }
        [-1, _, ..] => Some((None, 2)),
        [i, kind, ..] if *i > 0 => Some((Some(Err(rejection(*i, *kind)?)), 2)),
        _ => None,
    }
}

/// What Redis keeps for a reservation of `demands`: their channel keys, one per line (the
/// release, the sweep and anti-entropy give back what it lists).
fn record(demands: &[Demand]) -> String {
    let mut record = String::new();
    for (i, d) in demands.iter().enumerate() {
        if i > 0 {
            record.push('\n');
        }
        record.push_str(&channels_key(&d.key));
    }
    record
}

/// Whether two demands of one key ask for the same limits (they go to the script once).
fn same_limits(a: &Demand, b: &Demand) -> bool {
    (a.cps, a.channels, a.cpm, a.paced, a.shadow) == (b.cps, b.channels, b.cpm, b.paced, b.shadow)
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
            let record = record(demands);
            match self.admit_shared(demands, &record, count_cps, &id) {
                Some(Ok(would_reject)) => {
                    return self.mirror(now, demands, record, count_cps, id, would_reject);
                }
                Some(Err(rejection)) => return Err(rejection),
                None => {} // Redis did not answer: fall back below
            }
        }
        self.admit_unshared(now, demands, count_cps)
    }

    fn admit_unshared(
        &self,
        now: Instant,
        demands: &[Demand],
        count_cps: bool,
    ) -> Result<Reservation, Rejection> {
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
