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
                        Demand { key: server.clone(), cps: Some(cps), channels: Some(channels), ..Demand::default() },
                        Demand { key: did_key(did), channels: Some(did_channels), ..Demand::default() },
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

/// A reseller `top` with sub-account `mid`, whose sub-accounts are `a`, `b` (enforcing) and
/// `s` (shadow: its limits never refuse). Addresses 10.0.0.{1,2,3} are a, b, s.
fn hierarchy_config(top: (u32, u32), mid: (u32, u32), leaf: (u32, u32)) -> sluice::config::Config {
    let text = format!(
        "[server]\nlisten = [\"udp://127.0.0.1:5060\"]\n[[carrier]]\nname = \"p\"\ngateways = [\"udp://127.0.0.1:5070\"]\n\
         [[route]]\nprefix = \"\"\ncarriers = [\"p\"]\n\
         [[customer]]\nname = \"top\"\ncps = {}\nchannels = {}\n\
         [[customer]]\nname = \"mid\"\nparent = \"top\"\ncps = {}\nchannels = {}\n\
         [[customer]]\nname = \"a\"\nparent = \"mid\"\nips = [\"10.0.0.1/32\"]\ncps = {l0}\nchannels = {l1}\n\
         [[customer]]\nname = \"b\"\nparent = \"mid\"\nips = [\"10.0.0.2/32\"]\ncps = {l0}\nchannels = {l1}\n\
         [[customer]]\nname = \"s\"\nparent = \"mid\"\nmode = \"shadow\"\nips = [\"10.0.0.3/32\"]\ncps = {l0}\nchannels = {l1}\n",
        top.0,
        top.1,
        mid.0,
        mid.1,
        l0 = leaf.0,
        l1 = leaf.1,
    );
    sluice::config::Config::parse("hierarchy.toml", &text).expect("valid")
}

/// Admissions and active calls of one customer, for the model.
#[derive(Default)]
struct Level {
    admitted: VecDeque<Instant>,
    active: u32,
}

impl Level {
    fn in_window(&mut self, now: Instant, window: Duration) -> u32 {
        while self.admitted.front().is_some_and(|t| now.duration_since(*t) >= window) {
            self.admitted.pop_front();
        }
        self.admitted.len() as u32
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]

    /// Sub-accounts: a call fits its own limits and every ancestor's or takes nothing;
    /// siblings share the parents; a shadow sub-account is never refused by its own limits,
    /// and each of its calls over them is reported, while its parents still enforce.
    #[test]
    fn sub_accounts_never_exceed_an_ancestor_and_shadow_never_refuses(
        top in (1u32..10, 1u32..8),
        mid in (1u32..10, 1u32..8),
        leaf in (1u32..6, 1u32..5),
        evs in prop::collection::vec(
            prop_oneof![
                3 => (0u64..300, 0usize..3).prop_map(|(gap_ms, who)| (gap_ms, who, true)),
                1 => (0u64..300, 0usize..64).prop_map(|(gap_ms, index)| (gap_ms, index, false)),
            ],
            1..300,
        ),
    ) {
        use sluice::limit::plan::{Planner, RouteRef};
        let config = hierarchy_config(top, mid, leaf);
        let planner = Planner::new(&config);
        let t0 = Instant::now();
        let store = MemoryStore::new(t0);
        // Model levels: 0 top, 1 mid, 2 a, 3 b, 4 s. Limits (cps, channels) per level.
        let limits = [top, mid, leaf, leaf, leaf];
        let mut levels: Vec<Level> = (0..5).map(|_| Level::default()).collect();
        let mut active: Vec<(usize, Reservation)> = Vec::new();
        let key = |name: &str| LimitKey { scope: Scope::Customer, name: KeyName::Text(Arc::from(name)) };
        let names = ["top", "mid", "a", "b", "s"];
        let mut now = t0;
        for (gap_ms, n, arrive) in evs {
            now += Duration::from_millis(gap_ms);
            if !arrive {
                if !active.is_empty() {
                    let (who, r) = active.remove(n % active.len());
                    for l in [0, 1, who + 2] {
                        levels[l].active -= 1;
                    }
                    store.release(now, r);
                }
                continue;
            }
            let who = n; // 0 = a, 1 = b, 2 = s
            let ip = format!("10.0.0.{}", who + 1).parse().unwrap();
            let customer = config.customers.iter().position(|c| c.name == names[who + 2]);
            let plan = planner.plan(customer, ip, None, RouteRef { customer: None, index: 0 }, b"1");
            let demands: Vec<Demand> = plan.common.iter().chain(plan.candidates[0].demands.iter()).cloned().collect();
            // The chain as listed: leaf first, then mid, then top.
            let chain = [who + 2, 1, 0];
            let full: Vec<(usize, Refusal)> = chain.iter().filter_map(|&l| {
                let (cps, channels) = limits[l];
                if levels[l].active >= channels {
                    Some((l, Refusal::Channels))
                } else if levels[l].in_window(now, Duration::from_secs(1)) >= cps {
                    Some((l, Refusal::Cps))
                } else {
                    None
                }
            }).collect();
            let enforcing_full = full.iter().find(|(l, _)| *l != 4);
            let before: Vec<u32> = names.iter().map(|n| store.usage(now, &key(n)).0).collect();
            match store.admit(now, &demands, true) {
                Ok(r) => {
                    prop_assert!(enforcing_full.is_none(), "admitted over {:?}", enforcing_full);
                    let shadow: Vec<(String, Refusal)> = r.would_reject().iter().map(|h| (h.key.name.label(), h.kind)).collect();
                    let expected: Vec<(String, Refusal)> = full.iter().map(|(l, k)| (names[*l].to_string(), *k)).collect();
                    prop_assert_eq!(shadow, expected, "shadow hits are exactly the shadow limits that are full");
                    for l in chain {
                        levels[l].active += 1;
                        levels[l].admitted.push_back(now);
                    }
                    active.push((who, r));
                }
                Err(rej) => {
                    let (l, kind) = enforcing_full.copied().ok_or_else(|| TestCaseError::fail(format!("refused below every limit: {rej:?}")))?;
                    prop_assert_eq!((rej.key.name.label(), rej.kind), (names[l].to_string(), kind), "names the first full level");
                    let after: Vec<u32> = names.iter().map(|n| store.usage(now, &key(n)).0).collect();
                    prop_assert_eq!(before, after, "a refusal took nothing from any level");
                }
            }
            for (l, name) in names.iter().enumerate() {
                prop_assert_eq!(store.usage(now, &key(name)).0, levels[l].active, "channels of {}", name);
            }
        }
        for (_, r) in active.drain(..) {
            store.release(now, r);
        }
        prop_assert_eq!(store.total_channels(), 0);
    }

    /// CPM with CPS on one key: no 60 s interval holds more than `cpm`, no 1 s more than
    /// `cps`, nothing is refused below either; the same key in shadow mode refuses nothing
    /// and reports exactly the calls the enforcing one would have refused.
    #[test]
    fn cpm_is_an_exact_sliding_minute(
        cps in 1u32..6,
        cpm in 1u32..40,
        shadow in any::<bool>(),
        gaps in prop::collection::vec(prop_oneof![3 => 0u64..400, 1 => 0u64..20_000], 1..300),
    ) {
        let t0 = Instant::now();
        let store = MemoryStore::new(t0);
        let demand = [Demand { key: LimitKey::server(), cps: Some(cps), cpm: Some(cpm), shadow, ..Demand::default() }];
        let mut model = Level::default();
        let mut now = t0;
        for gap in gaps {
            now += Duration::from_millis(gap);
            let count = |window: Duration| model.admitted.iter().filter(|t| now.duration_since(**t) < window).count() as u32;
            let (second, minute) = (count(Duration::from_secs(1)), count(Duration::from_secs(60)));
            let expected = if second >= cps { Some(Refusal::Cps) } else if minute >= cpm { Some(Refusal::Cpm) } else { None };
            match store.admit(now, &demand, true) {
                Ok(r) => {
                    let hits: Vec<Refusal> = r.would_reject().iter().map(|h| h.kind).collect();
                    if shadow {
                        prop_assert_eq!(hits, expected.into_iter().collect::<Vec<_>>());
                    } else {
                        prop_assert!(expected.is_none(), "admitted over {:?}", expected);
                        prop_assert!(hits.is_empty());
                    }
                    model.admitted.push_back(now);
                    store.release(now, r);
                }
                Err(rej) => {
                    prop_assert!(!shadow, "a shadow limit refused");
                    prop_assert_eq!(Some(rej.kind), expected, "refused below the limits");
                }
            }
        }
    }

    /// A steady rate under cpm is never refused, whatever the phase.
    #[test]
    fn a_steady_rate_under_cpm_is_never_refused(cpm in 1u32..200, start_ms in 0u64..60_000, slack_ms in 0u64..50) {
        let t0 = Instant::now();
        let store = MemoryStore::new(t0);
        let demand = [Demand { key: LimitKey::server(), cpm: Some(cpm), ..Demand::default() }];
        let gap = Duration::from_millis(60_000u64.div_ceil(u64::from(cpm)) + slack_ms);
        let mut now = t0 + Duration::from_millis(start_ms);
        for i in 0..(3 * cpm) {
            let r = store.admit(now, &demand, true);
            prop_assert!(r.is_ok(), "refused call {} at gap {:?}", i, gap);
            if let Ok(r) = r {
                store.release(now, r);
            }
            now += gap;
        }
    }
}
