//! The spike buffer's waiting room: new calls over a limit wait here (up to `queue_ms`)
//! instead of being refused. Pure data structure; the proxy decides when to try admitting.
//!
//! Order: higher `priority` lanes first; within a lane, customers take turns (round robin),
//! so one busy customer cannot starve another of the same priority; within a customer,
//! arrival order. A customer whose head cannot be admitted does not block the others.

use std::collections::{BTreeMap, HashMap, VecDeque};

use tokio::time::Instant;

/// One waiting call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting<T> {
    pub id: T,
    pub since: Instant,
    pub deadline: Instant,
}

#[derive(Debug)]
struct Lane<T> {
    /// Customers with waiting calls, in turn order.
    turn: VecDeque<String>,
    calls: HashMap<String, VecDeque<Waiting<T>>>,
}

impl<T> Default for Lane<T> {
    fn default() -> Self {
        Self { turn: VecDeque::new(), calls: HashMap::new() }
    }
}

/// Waiting calls by priority lane and customer.
#[derive(Debug)]
pub struct SpikeQueue<T> {
    /// Keyed by negated priority so iteration visits the highest priority first.
    lanes: BTreeMap<i64, Lane<T>>,
    len: usize,
}

impl<T> Default for SpikeQueue<T> {
    fn default() -> Self {
        Self { lanes: BTreeMap::new(), len: 0 }
    }
}

impl<T: Copy + PartialEq> SpikeQueue<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, priority: i32, customer: &str, entry: Waiting<T>) {
        self.push_keyed(-i64::from(priority), customer, entry);
    }

    /// Calls waiting ahead of a new one for `customer` at `priority`: every call in higher
    /// lanes, plus this customer's own queue. (Other customers of the same lane share turns,
    /// so they delay it by at most one call each per turn; left out of the estimate.)
    pub fn ahead_of(&self, priority: i32, customer: &str) -> usize {
        let key = -i64::from(priority);
        let higher: usize =
            self.lanes.range(..key).map(|(_, l)| l.calls.values().map(VecDeque::len).sum::<usize>()).sum();
        let own = self.lanes.get(&key).and_then(|l| l.calls.get(customer)).map_or(0, VecDeque::len);
        higher + own
    }

    /// Removes a call (CANCEL). True if it was waiting.
    pub fn remove(&mut self, id: T) -> bool {
        for lane in self.lanes.values_mut() {
            for (customer, calls) in lane.calls.iter_mut() {
                if let Some(pos) = calls.iter().position(|w| w.id == id) {
                    calls.remove(pos);
                    if calls.is_empty() {
                        let c = customer.clone();
                        lane.turn.retain(|t| *t != c);
                    }
                    self.len -= 1;
                    self.prune();
                    return true;
                }
            }
        }
        false
    }

    /// Every waiting call, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Waiting<T>> {
        self.lanes.values().flat_map(|lane| lane.calls.values().flatten())
    }

    /// Takes every call whose deadline has passed.
    pub fn expire(&mut self, now: Instant) -> Vec<Waiting<T>> {
        let mut out = Vec::new();
        for lane in self.lanes.values_mut() {
            for calls in lane.calls.values_mut() {
                // Deadlines follow arrival order within a customer, but be exact anyway.
                calls.retain(|w| {
                    if w.deadline <= now {
                        out.push(*w);
                        false
                    } else {
                        true
                    }
                });
            }
            lane.turn.retain(|c| lane.calls.get(c).is_some_and(|q| !q.is_empty()));
        }
        self.len -= out.len();
        self.prune();
        out
    }

    /// Offers waiting calls to `admit` in service order: lanes by priority, customers in
    /// turn, each customer's oldest call. `admit` returns true when it took the call. A
    /// customer whose head is refused is skipped for this round; the round ends when no
    /// customer's head can be admitted. Returns the calls admitted, in order.
    pub fn serve(&mut self, mut admit: impl FnMut(&Waiting<T>, &str) -> bool) -> Vec<Waiting<T>> {
        let mut admitted = Vec::new();
        for lane in self.lanes.values_mut() {
            let mut blocked: Vec<String> = Vec::new();
            while let Some(customer) = lane.turn.pop_front() {
                let Some(calls) = lane.calls.get_mut(&customer) else { continue };
                let Some(head) = calls.front().copied() else { continue };
                if admit(&head, &customer) {
                    calls.pop_front();
                    admitted.push(head);
                    if !calls.is_empty() {
                        lane.turn.push_back(customer); // its next call waits for its next turn
                    }
                } else {
                    blocked.push(customer);
                }
            }
            lane.turn.extend(blocked);
        }
        self.len -= admitted.len();
        self.prune();
        admitted
    }

    /// Puts the calls of `later` behind this queue's (each customer's calls after its own
    /// here; customers new to a lane take their turn after the ones already in it).
    pub fn append(&mut self, later: Self) {
        for (key, mut lane) in later.lanes {
            for customer in lane.turn.drain(..) {
                let Some(calls) = lane.calls.remove(&customer) else { continue };
                for w in calls {
                    self.push_keyed(key, &customer, w);
                }
            }
        }
    }

    fn push_keyed(&mut self, key: i64, customer: &str, entry: Waiting<T>) {
        let lane = self.lanes.entry(key).or_default();
        let calls = lane.calls.entry(customer.to_string()).or_default();
        if calls.is_empty() {
            lane.turn.push_back(customer.to_string());
        }
        calls.push_back(entry);
        self.len += 1;
    }

    fn prune(&mut self) {
        for lane in self.lanes.values_mut() {
            lane.calls.retain(|_, q| !q.is_empty());
        }
        self.lanes.retain(|_, l| !l.calls.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn w(id: u32, t0: Instant, ms: u64) -> Waiting<u32> {
        Waiting { id, since: t0, deadline: t0 + Duration::from_millis(ms) }
    }

    #[test]
    fn priority_then_turns_then_arrival() {
        let t0 = Instant::now();
        let mut q = SpikeQueue::default();
        q.push(0, "a", w(1, t0, 1000));
        q.push(0, "a", w(2, t0, 1000));
        q.push(0, "a", w(3, t0, 1000));
        q.push(0, "b", w(4, t0, 1000));
        q.push(5, "vip", w(5, t0, 1000));
        let order: Vec<u32> = q.serve(|_, _| true).iter().map(|x| x.id).collect();
        assert_eq!(order, vec![5, 1, 4, 2, 3], "vip first, then a and b take turns, a in arrival order");
        assert!(q.is_empty());
    }

    #[test]
    fn a_blocked_customer_does_not_block_others_and_keeps_its_order() {
        let t0 = Instant::now();
        let mut q = SpikeQueue::default();
        q.push(0, "a", w(1, t0, 1000));
        q.push(0, "a", w(2, t0, 1000));
        q.push(0, "b", w(3, t0, 1000));
        let got: Vec<u32> = q.serve(|_, c| c != "a").iter().map(|x| x.id).collect();
        assert_eq!(got, vec![3]);
        assert_eq!(q.len(), 2);
        let got: Vec<u32> = q.serve(|_, _| true).iter().map(|x| x.id).collect();
        assert_eq!(got, vec![1, 2]);
    }

    #[test]
    fn slot_hand_over_admits_exactly_what_fits() {
        let t0 = Instant::now();
        let mut q = SpikeQueue::default();
        for i in 0..5 {
            q.push(0, "a", w(i, t0, 1000));
        }
        let mut slots = 2;
        let got = q.serve(|_, _| {
            if slots > 0 {
                slots -= 1;
                true
            } else {
                false
            }
        });
        assert_eq!(got.len(), 2, "no double admission: two slots, two calls");
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn append_keeps_each_customer_in_arrival_order() {
        let t0 = Instant::now();
        let mut q = SpikeQueue::default();
        q.push(0, "a", w(1, t0, 1000));
        q.push(0, "b", w(2, t0, 1000));
        let mut later = SpikeQueue::default();
        later.push(0, "a", w(3, t0, 1000));
        later.push(0, "c", w(4, t0, 1000));
        later.push(1, "vip", w(5, t0, 1000));
        q.append(later);
        assert_eq!(q.len(), 5);
        let order: Vec<u32> = q.serve(|_, _| true).iter().map(|x| x.id).collect();
        assert_eq!(
            order,
            vec![5, 1, 2, 4, 3],
            "vip lane first; a, b, then the newcomer c; a's second call last"
        );
    }

    #[test]
    fn expiry_cancel_and_position() {
        let t0 = Instant::now();
        let mut q = SpikeQueue::default();
        q.push(0, "a", w(1, t0, 100));
        q.push(0, "a", w(2, t0, 500));
        q.push(1, "b", w(3, t0, 500));
        assert_eq!(q.ahead_of(0, "a"), 3, "b's higher lane plus a's own two");
        assert_eq!(q.ahead_of(1, "c"), 0);
        assert!(q.remove(2));
        assert!(!q.remove(2));
        let gone: Vec<u32> = q.expire(t0 + Duration::from_millis(100)).iter().map(|x| x.id).collect();
        assert_eq!(gone, vec![1]);
        assert_eq!(q.len(), 1);
        assert_eq!(q.expire(t0 + Duration::from_millis(600)).len(), 1);
        assert!(q.is_empty());
    }
}
