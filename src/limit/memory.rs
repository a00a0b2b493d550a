//! The in-memory store: one small mutex-protected [`Counter`] per key in a sharded map.
//! An admission locks its keys in a fixed order (so two admissions never deadlock), checks
//! all, then commits all: exact and all-or-nothing under concurrency.

use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::window::Counter;
use super::{Demand, LimitKey, Rejection, Reservation, Scope, Store};

#[derive(Debug)]
pub struct MemoryStore {
    epoch: Instant,
    /// aHash with a per-process random seed: fast, and keys chosen by callers (source IPs,
    /// usernames) cannot be crafted to collide.
    keys: DashMap<LimitKey, Arc<Mutex<Counter>>, ahash::RandomState>,
}

impl MemoryStore {
    pub fn new(epoch: Instant) -> Self {
        Self { epoch, keys: DashMap::with_hasher(ahash::RandomState::new()) }
    }

    fn nanos(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn counter(&self, key: &LimitKey) -> Arc<Mutex<Counter>> {
        if let Some(c) = self.keys.get(key) {
            return c.clone();
        }
        self.keys.entry(key.clone()).or_default().clone()
    }

    /// Channels in use and admissions in the last full second of one key.
    pub fn usage(&self, now: Instant, key: &LimitKey) -> (u32, u32) {
        let now = self.nanos(now);
        self.keys.get(key).map_or((0, 0), |c| {
            let c = c.lock();
            (c.channels, c.cps_last_second(now))
        })
    }

    /// When a call refused by `demand`'s rate limits would fit again, if they can open.
    pub fn rate_opens_at(&self, now: Instant, demand: &Demand) -> Option<Instant> {
        let at = self.keys.get(&demand.key)?.lock().opens_at(self.nanos(now), &demand.caps())?;
        Some(self.epoch + std::time::Duration::from_nanos(at))
    }

    /// Every key of a scope with (channels, cps last second), for /status and metrics.
    pub fn snapshot(&self, now: Instant, scope: Scope) -> Vec<(LimitKey, u32, u32)> {
        let now = self.nanos(now);
        self.keys
            .iter()
            .filter(|e| e.key().scope == scope)
            .map(|e| {
                let c = e.value().lock();
                (e.key().clone(), c.channels, c.cps_last_second(now))
            })
            .collect()
    }

    /// Forgets idle keys (no channels, nothing in the CPS window), so per-IP and per-user
    /// state for sources that went quiet does not grow without bound. Returns how many.
    pub fn evict_idle(&self, now: Instant) -> usize {
        let now = self.nanos(now);
        let before = self.keys.len();
        self.keys.retain(|_, c| Arc::strong_count(c) > 1 || !c.lock().is_idle(now));
        before - self.keys.len()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Sum of channels held across all keys (zero when no call is up).
    pub fn total_channels(&self) -> u64 {
        self.keys.iter().map(|e| u64::from(e.value().lock().channels)).sum()
    }

    /// Approximate bytes per key: map entry, Arc, mutex, counter and its window.
    pub fn bytes_per_key(&self) -> usize {
        let fixed = std::mem::size_of::<LimitKey>()
            + std::mem::size_of::<Arc<Mutex<Counter>>>()
            + std::mem::size_of::<Mutex<Counter>>()
            + 2 * std::mem::size_of::<usize>();
        let window: usize = self.keys.iter().map(|e| e.value().lock().heap_bytes()).sum();
        fixed + window / self.keys.len().max(1)
    }
}

impl Store for MemoryStore {
    fn admit(&self, now: Instant, demands: &[Demand], count_cps: bool) -> Result<Reservation, Rejection> {
        let at = self.nanos(now);
        // Lock in one global order so two admissions never deadlock. Plans list demands in
        // scope order with one key per scope, so the common case needs no sorting.
        let mut order: Vec<usize> = (0..demands.len()).collect();
        if !demands.windows(2).all(|w| w[0].key.scope < w[1].key.scope) {
            order.sort_by(|a, b| demands[*a].key.cmp(&demands[*b].key));
            order.dedup_by(|a, b| demands[*a].key == demands[*b].key);
        }
        let counters: Vec<Arc<Mutex<Counter>>> =
            order.iter().map(|i| self.counter(&demands[*i].key)).collect();
        let mut guards: Vec<_> = counters.iter().map(|c| c.lock()).collect();
        // Report the refusal in the order the caller listed demands (server first). A shadow
        // limit never refuses: the call is admitted and the limit named in the reservation.
        let mut refusal: Option<(usize, super::Refusal)> = None;
        let mut would_reject = Vec::new();
        for (slot, &i) in order.iter().enumerate() {
            let d = &demands[i];
            if let Err(kind) = guards[slot].check(at, &d.caps(), count_cps) {
                if d.shadow {
                    would_reject.push((i, Rejection { key: d.key.clone(), kind }));
                } else if refusal.is_none_or(|(j, _)| i < j) {
                    refusal = Some((i, kind));
                }
            }
        }
        if let Some((i, kind)) = refusal {
            return Err(Rejection { key: demands[i].key.clone(), kind });
        }
        for (slot, &i) in order.iter().enumerate() {
            guards[slot].commit(at, &demands[i].caps(), count_cps);
        }
        drop(guards);
        let mut reservation = Reservation::new(order.iter().map(|i| demands[*i].key.clone()).collect(), None);
        if !would_reject.is_empty() {
            would_reject.sort_by_key(|(i, _)| *i);
            reservation.set_would_reject(would_reject.into_iter().map(|(_, r)| r).collect());
        }
        Ok(reservation)
    }

    fn opens_at(&self, now: Instant, demand: &Demand) -> Option<Instant> {
        self.rate_opens_at(now, demand)
    }

    fn release(&self, now: Instant, reservation: Reservation) {
        let at = self.nanos(now);
        let (keys, _) = reservation.take();
        for key in &keys {
            if let Some(c) = self.keys.get(key) {
                c.lock().release(at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::Refusal;
    use super::*;

    fn demand(key: LimitKey, cps: Option<u32>, channels: Option<u32>) -> Demand {
        Demand { key, cps, channels, ..Demand::default() }
    }

    #[test]
    fn all_or_nothing() {
        let t0 = Instant::now();
        let s = MemoryStore::new(t0);
        let did: Arc<str> = Arc::from("15551230000");
        let demands = vec![
            demand(LimitKey::server(), Some(100), None),
            demand(LimitKey::text(Scope::Did, &did), None, Some(1)),
        ];
        let r = s.admit(t0, &demands, true).unwrap();
        let refused = s.admit(t0, &demands, true).unwrap_err();
        assert_eq!(refused.key.scope, Scope::Did);
        assert_eq!(refused.kind, Refusal::Channels);
        assert_eq!(
            s.usage(t0 + Duration::from_secs(1), &LimitKey::server()),
            (1, 1),
            "the refused call took nothing from the server scope"
        );
        s.release(t0, r);
        assert_eq!(s.total_channels(), 0);
        let again = s.admit(t0, &demands, true).unwrap();
        s.release(t0, again);
    }

    #[test]
    #[should_panic(expected = "reservation dropped without release")]
    fn a_leaked_reservation_is_caught() {
        let t0 = Instant::now();
        let s = MemoryStore::new(t0);
        let leaked = s.admit(t0, &[demand(LimitKey::server(), None, Some(1))], true).unwrap();
        drop(leaked);
    }

    #[test]
    fn eviction_keeps_busy_keys() {
        let t0 = Instant::now();
        let s = MemoryStore::new(t0);
        let a =
            s.admit(t0, &[demand(LimitKey::ip("192.0.2.1".parse().unwrap()), Some(5), None)], true).unwrap();
        let b =
            s.admit(t0, &[demand(LimitKey::ip("192.0.2.2".parse().unwrap()), Some(5), None)], true).unwrap();
        s.release(t0, a);
        assert_eq!(s.evict_idle(t0 + Duration::from_millis(500)), 0, "still in the CPS window");
        assert_eq!(s.evict_idle(t0 + Duration::from_secs(2)), 1, "the idle one goes, the busy one stays");
        s.release(t0, b);
        assert_eq!(s.evict_idle(t0 + Duration::from_secs(3)), 1);
        assert!(s.is_empty());
    }
}
