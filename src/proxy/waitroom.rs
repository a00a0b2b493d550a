//! The spike buffer's single owner. Waiting calls belong to the shards that hold their
//! transactions, but who gets the next free slot is a node-wide question (priority lanes,
//! customers in turn, arrival order), so the waiting room is one structure with its own
//! short lock, shared by every shard and served by one timer.
//!
//! Serving never holds that lock while it asks the limiter (which, in a cluster, may be a
//! Redis round trip): the room's contents are taken out, offered to the limiter, and merged
//! back with whatever shards pushed or cancelled meanwhile. A shard therefore never waits on
//! Redis to queue or cancel a call.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

use super::transaction::TxId;
use crate::limit::plan::CallPlan;
use crate::limit::queue::{SpikeQueue, Waiting};
use crate::limit::{Demand, LimitKey, Refusal, Rejection, Reservation, Store};
use crate::stats::Stats;

/// How often the waiting room is offered to the limiter when no limit can say when it opens
/// (channel waits, a shared store).
const QUEUE_TICK: Duration = Duration::from_millis(5);

/// What admitting a waiting call needs, shared between its shard and the room.
#[derive(Debug)]
pub(crate) struct Ask {
    pub plan: Arc<CallPlan>,
    pub count_cps: bool,
    /// The limit that made it wait.
    pub rejection: Rejection,
}

/// A waiting call's fate, handed to its shard.
#[derive(Debug)]
pub(crate) enum Served {
    /// Admitted on candidate `i`.
    Admitted(TxId, usize, Reservation),
    /// Its deadline passed first.
    Expired(TxId),
}

#[derive(Default)]
struct Room {
    queue: SpikeQueue<TxId>,
    asks: HashMap<TxId, Arc<Ask>>,
    /// While a serve round has the queue out: its size, and the calls cancelled meanwhile.
    out_for_serving: usize,
    cancelled_meanwhile: HashSet<TxId>,
    serving: bool,
    /// When the room next needs serving.
    next: Option<Instant>,
}

/// The node's spike buffer.
pub(crate) struct Waitroom {
    room: Mutex<Room>,
    stats: Arc<Stats>,
}

impl Waitroom {
    pub(crate) fn new(stats: Arc<Stats>) -> Self {
        Self { room: Mutex::new(Room::default()), stats }
    }

    /// Calls waiting, including those out for a serve round.
    pub(crate) fn len(&self) -> usize {
        let room = self.room.lock();
        room.queue.len() + room.out_for_serving
    }

    /// Calls ahead of a new one of `customer` at `priority` (see [`SpikeQueue::ahead_of`]).
    pub(crate) fn ahead_of(&self, priority: i32, customer: &str) -> usize {
        let room = self.room.lock();
        room.queue.ahead_of(priority, customer) + room.out_for_serving
    }

    /// When the room next needs serving.
    pub(crate) fn next_event(&self) -> Option<Instant> {
        self.room.lock().next
    }

    /// Adds a waiting call; `opens` is when its limit may have room. Returns the room's
    /// next event (the serving timer may need to come earlier).
    pub(crate) fn push(
        &self,
        now: Instant,
        waiting: Waiting<TxId>,
        priority: i32,
        lane: &str,
        ask: Arc<Ask>,
        limiter: &dyn Store,
    ) -> Option<Instant> {
        let at = event_of(now, &waiting, &ask, limiter);
        let mut room = self.room.lock();
        room.queue.push(priority, lane, waiting);
        room.asks.insert(waiting.id, ask);
        room.next = Some(room.next.map_or(at, |n| n.min(at)));
        self.gauge(&room);
        room.next
    }

    /// Takes a call out (CANCEL). True if it was waiting here.
    pub(crate) fn remove(&self, id: TxId) -> bool {
        let mut room = self.room.lock();
        let removed = room.queue.remove(id);
        room.asks.remove(&id);
        if !removed && room.serving {
            // Out for serving: the round's merge drops it (or its shard refuses the slot).
            room.cancelled_meanwhile.insert(id);
        }
        self.gauge(&room);
        removed
    }

    /// Admits what now fits, in service order, then expires the calls whose wait is over.
    /// Admission comes first: a slot that opens at a call's deadline is that call's.
    pub(crate) fn serve(&self, now: Instant, limiter: &dyn Store, backoff: &Backoff) -> Vec<Served> {
        let (mut queue, mut asks) = {
            let mut room = self.room.lock();
            if room.serving || room.next.is_none_or(|n| n > now) {
                return Vec::new();
            }
            room.serving = true;
            room.next = None;
            room.out_for_serving = room.queue.len();
            (std::mem::take(&mut room.queue), std::mem::take(&mut room.asks))
        };
        let mut served = Vec::new();
        queue.serve(|w, _| {
            let Some(ask) = asks.get(&w.id) else { return true };
            match try_admit(limiter, backoff, now, &ask.plan, ask.count_cps) {
                Ok((i, r)) => {
                    served.push(Served::Admitted(w.id, i, r));
                    true
                }
                Err(_) => false,
            }
        });
        for w in queue.expire(now) {
            served.push(Served::Expired(w.id));
        }
        for s in &served {
            let (Served::Admitted(id, ..) | Served::Expired(id)) = s;
            asks.remove(id);
        }
        let next = queue.iter().filter_map(|w| asks.get(&w.id).map(|a| event_of(now, w, a, limiter))).min();
        let mut room = self.room.lock();
        for id in std::mem::take(&mut room.cancelled_meanwhile) {
            queue.remove(id);
            asks.remove(&id);
        }
        queue.append(std::mem::take(&mut room.queue));
        asks.extend(std::mem::take(&mut room.asks));
        room.queue = queue;
        room.asks = asks;
        room.out_for_serving = 0;
        room.serving = false;
        room.next = match (room.next, next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.gauge(&room);
        served
    }

    fn gauge(&self, room: &Room) {
        self.stats.queue_depth.store((room.queue.len() + room.out_for_serving) as u64, Ordering::Relaxed);
    }
}

/// When a waiting call next needs looking at: the moment its rate limit has room (the oldest
/// admission leaves the window, the pacing gap ends), else a short tick, and never after its
/// deadline.
fn event_of(now: Instant, w: &Waiting<TxId>, ask: &Ask, limiter: &dyn Store) -> Instant {
    let opens = ask
        .rejection
        .kind
        .is_rate()
        .then(|| {
            let plan = &ask.plan;
            let mut demands = plan.common.iter().chain(plan.candidates.iter().flat_map(|c| c.demands.iter()));
            let demand = demands.find(|d| d.key == ask.rejection.key)?;
            limiter.opens_at(now, demand)
        })
        .flatten();
    opens.unwrap_or(now + QUEUE_TICK).min(w.deadline).max(now)
}

/// Gateways that answered 503, skipped for new calls until the instant given (their
/// Retry-After). Node-wide: a gateway that is full is full for every shard. Entries are few
/// (one per configured gateway) and simply overwritten.
#[derive(Default)]
pub(crate) struct Backoff {
    gateways: RwLock<HashMap<SocketAddr, Instant>>,
    /// Set once any gateway has backed off: until then a check costs one shared read, not a
    /// lock (every new call and failover asks).
    any: std::sync::atomic::AtomicBool,
}

impl Backoff {
    pub(crate) fn is_backed_off(&self, now: Instant, gateway: SocketAddr) -> bool {
        self.any.load(Ordering::Relaxed)
            && self.gateways.read().get(&gateway).is_some_and(|until| *until > now)
    }

    pub(crate) fn set(&self, gateway: SocketAddr, until: Instant) {
        self.gateways.write().insert(gateway, until);
        self.any.store(true, Ordering::Relaxed);
    }
}

/// Tries a plan's candidates in order: the first whose every limit has room is reserved. A
/// full carrier/gateway moves on; a full common scope ends the attempt.
pub(crate) fn try_admit(
    limiter: &dyn Store,
    backoff: &Backoff,
    now: Instant,
    plan: &CallPlan,
    count_cps: bool,
) -> Result<(usize, Reservation), Rejection> {
    try_admit_by(backoff, now, plan, |demands| limiter.admit(now, demands, count_cps))
}

/// As [`try_admit`], each candidate admitted by `admit`.
pub(crate) fn try_admit_by(
    backoff: &Backoff,
    now: Instant,
    plan: &CallPlan,
    admit: impl Fn(&[Demand]) -> Result<Reservation, Rejection>,
) -> Result<(usize, Reservation), Rejection> {
    let mut demands = Vec::with_capacity(plan.common.len() + 2);
    demands.extend(plan.common.iter().cloned());
    let common = demands.len();
    let mut refusal: Option<Rejection> = None;
    for (i, candidate) in plan.candidates.iter().enumerate() {
        if backoff.is_backed_off(now, candidate.peer.addr) {
            // Backed off after a 503: treated like a full gateway (capacity failover).
            refusal = Some(Rejection { key: candidate.demands[1].key.clone(), kind: Refusal::Channels });
            continue;
        }
        demands.truncate(common);
        demands.extend(candidate.demands.iter().cloned());
        match admit(&demands) {
            Ok(reservation) => return Ok((i, reservation)),
            Err(r) if r.key.scope.is_egress() => refusal = Some(r),
            Err(r) => return Err(r),
        }
    }
    Err(refusal.unwrap_or_else(|| Rejection { key: LimitKey::server(), kind: Refusal::Channels }))
}
