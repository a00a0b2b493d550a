//! Property tests of the limiter with an injected clock: random arrivals and call ends never
//! exceed a limit, never reject below it, keep refusals all-or-nothing, and always bring the
//! counters back to zero.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use sluice::limit::memory::MemoryStore;
use sluice::limit::{Demand, KeyName, LimitKey, Refusal, Reservation, Scope, Store};
use tokio::time::Instant;

#[derive(Debug, Clone)]
enum Event {
    /// A new call after `gap_ms`, to DID `did` (0 or 1).
    Arrive { gap_ms: u64, did: usize },
    /// The `index`-th active call (modulo) ends after `gap_ms`.
    End { gap_ms: u64, index: usize },
}

fn events() -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec(
        prop_oneof![
            3 => (0u64..300, 0usize..2).prop_map(|(gap_ms, did)| Event::Arrive { gap_ms, did }),
            1 => (0u64..300, 0usize..64).prop_map(|(gap_ms, index)| Event::End { gap_ms, index }),
        ],
        1..400,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn never_over_never_under_always_back_to_zero(
        cps in 1u32..8,
        channels in 1u32..10,
        did_channels in 1u32..5,
        evs in events(),
    ) {
        let t0 = Instant::now();
        let store = MemoryStore::new(t0);
        let dids: [Arc<str>; 2] = [Arc::from("100"), Arc::from("200")];
        let server = LimitKey::server();
        let did_key = |i: usize| LimitKey { scope: Scope::Did, name: KeyName::Text(dids[i].clone()) };

        let mut now = t0;
        // Model: admission times at the server, active calls (did, reservation).
        let mut admitted: VecDeque<Instant> = VecDeque::new();
        let mut active: Vec<(usize, Reservation)> = Vec::new();
        for ev in evs {
            match ev {
                Event::Arrive { gap_ms, did } => {
                    now += Duration::from_millis(gap_ms);
                    let demands = [
                        Demand { key: server.clone(), cps: Some(cps), channels: Some(channels) },
                        Demand { key: did_key(did), cps: None, channels: Some(did_channels) },
                    ];
                    while admitted.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1)) {
                        admitted.pop_front();
                    }
                    let in_window = admitted.len() as u32;
                    let active_total = active.len() as u32;
                    let active_did = active.iter().filter(|(d, _)| *d == did).count() as u32;
                    let before = (store.usage(now, &server).0, store.usage(now, &did_key(did)).0);
                    match store.admit(now, &demands, true) {
                        Ok(r) => {
                            prop_assert!(in_window < cps, "admitted over cps");
                            prop_assert!(active_total < channels && active_did < did_channels, "admitted over channels");
                            admitted.push_back(now);
                            active.push((did, r));
                        }
                        Err(rej) => {
                            let full = match (rej.key.scope, rej.kind) {
                                (Scope::Server, Refusal::Cps) => in_window >= cps,
                                (Scope::Server, Refusal::Channels) => active_total >= channels,
                                (Scope::Did, Refusal::Channels) => active_did >= did_channels,
                                _ => false,
                            };
                            prop_assert!(full, "rejected below the limit: {:?}", rej);
                            let after = (store.usage(now, &server).0, store.usage(now, &did_key(did)).0);
                            prop_assert_eq!(before, after, "a refusal took something");
                        }
                    }
                }
                Event::End { gap_ms, index } => {
                    now += Duration::from_millis(gap_ms);
                    if !active.is_empty() {
                        let (_, r) = active.remove(index % active.len());
                        store.release(now, r);
                    }
                }
            }
            prop_assert_eq!(store.usage(now, &server).0 as usize, active.len());
        }
        for (_, r) in active.drain(..) {
            store.release(now, r);
        }
        prop_assert_eq!(store.total_channels(), 0);
        store.evict_idle(now + Duration::from_secs(2));
        prop_assert!(store.is_empty(), "every key idle and evicted");
    }
}
