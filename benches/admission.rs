//! Admission cost: one decision across 7 scopes (server, customer, ip, user, route, carrier,
//! gateway) in the in-memory store, on 1 and 2 threads, with one source IP and with 1,000,000
//! distinct source IPs; the same call as a sub-account three levels deep (9 keys), and with a
//! CPM limit on every key. Prints bytes per key after the 1M run and per CPM key when full.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant as StdInstant};

use criterion::{Criterion, criterion_group, criterion_main};
use sluice::limit::memory::MemoryStore;
use sluice::limit::{Demand, KeyName, LimitKey, Scope, Store};
use tokio::time::Instant;

fn demands(ip: IpAddr) -> Vec<Demand> {
    let text = |scope, name: &str| LimitKey { scope, name: KeyName::Text(Arc::from(name)) };
    let lim = |cps: u32, channels: u32| (Some(cps), Some(channels));
    [
        (LimitKey::server(), lim(1_000_000, 1_000_000)),
        (text(Scope::Customer, "acme"), lim(1_000_000, 1_000_000)),
        (LimitKey::ip(ip), lim(1_000_000, 1_000_000)),
        (text(Scope::User, "acme-trunk"), lim(1_000_000, 1_000_000)),
        (text(Scope::Route, "acme/44"), lim(1_000_000, 1_000_000)),
        (text(Scope::Carrier, "pbx"), lim(1_000_000, 1_000_000)),
        (text(Scope::Gateway, "udp://127.0.0.1:5070"), lim(1_000_000, 1_000_000)),
    ]
    .into_iter()
    .map(|(key, (cps, channels))| Demand { key, cps, channels, ..Demand::default() })
    .collect()
}

/// The call of a sub-account whose parent has a parent: two more customer keys.
fn hierarchy(ip: IpAddr) -> Vec<Demand> {
    let mut d = demands(ip);
    for name in ["reseller", "wholesale"] {
        let key = LimitKey { scope: Scope::Customer, name: KeyName::Text(Arc::from(name)) };
        d.insert(2, Demand { key, cps: Some(1_000_000), channels: Some(1_000_000), ..Demand::default() });
    }
    d
}

/// Every key also limited per minute (a window that is never full: see `run_paced`).
fn with_cpm(ip: IpAddr) -> Vec<Demand> {
    demands(ip).into_iter().map(|d| Demand { cpm: Some(6_000), ..d }).collect()
}

fn ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

/// Simulated time in microseconds, shared by all runs so it only moves forward.
static CLOCK_US: AtomicU64 = AtomicU64::new(0);

/// Admits and releases `n` calls; simulated time advances 20 us per call so windows roll.
fn run(store: &MemoryStore, sets: &[Vec<Demand>], n: u64, t0: Instant) {
    for _ in 0..n {
        let us = CLOCK_US.fetch_add(20, Ordering::Relaxed);
        let d = &sets[(us / 20) as usize % sets.len()];
        let now = t0 + Duration::from_micros(us);
        let r = store.admit(now, d, true).expect("limits are not hit in this bench");
        store.release(now, black_box(r));
    }
}

/// Like `run`, with simulated time advancing `step_us` per call (a CPM window that fills to
/// its steady state without refusing).
fn run_paced(store: &MemoryStore, d: &[Demand], n: u64, t0: Instant, clock: &AtomicU64, step_us: u64) {
    for _ in 0..n {
        let now = t0 + Duration::from_micros(clock.fetch_add(step_us, Ordering::Relaxed));
        let r = store.admit(now, d, true).expect("limits are not hit in this bench");
        store.release(now, black_box(r));
    }
}

fn admission(c: &mut Criterion) {
    let mut g = c.benchmark_group("admission_7_scopes");
    let one = vec![demands(ip(1))];
    g.bench_function("1_thread_1_ip_admit_only", |b| {
        // Channels unlimited, so reservations can be forgotten unreleased: the check-and-
        // reserve half on its own.
        let t0 = Instant::now();
        let store = MemoryStore::new(t0);
        let mut d = demands(ip(1));
        d.iter_mut().for_each(|d| d.channels = None);
        b.iter_custom(|iters| {
            let start = StdInstant::now();
            for _ in 0..iters {
                let us = CLOCK_US.fetch_add(20, Ordering::Relaxed);
                std::mem::forget(black_box(
                    store.admit(t0 + Duration::from_micros(us), &d, true).expect("room"),
                ));
            }
            start.elapsed()
        })
    });
    g.bench_function("1_thread_1_ip", |b| {
        let t0 = Instant::now();
        let store = MemoryStore::new(t0);
        b.iter_custom(|iters| {
            let start = StdInstant::now();
            run(&store, &one, iters, t0);
            start.elapsed()
        })
    });
    g.bench_function("2_threads_1_ip", |b| {
        let t0 = Instant::now();
        let store = MemoryStore::new(t0);
        b.iter_custom(|iters| {
            let start = StdInstant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| run(&store, &one, iters.div_ceil(2), t0));
                }
            });
            start.elapsed()
        })
    });
    g.bench_function("1_thread_3_level_hierarchy", |b| {
        let t0 = Instant::now();
        let store = MemoryStore::new(t0);
        let sets = vec![hierarchy(ip(1))];
        b.iter_custom(|iters| {
            let start = StdInstant::now();
            run(&store, &sets, iters, t0);
            start.elapsed()
        })
    });
    {
        // cpm = 6,000 on all 7 keys at 5,000 calls per simulated minute: each window holds
        // 5,000 admissions, so every check scans a full ring's stale head.
        let t0 = Instant::now();
        let store = MemoryStore::new(t0);
        let d = with_cpm(ip(1));
        let clock = AtomicU64::new(0);
        run_paced(&store, &d, 10_000, t0, &clock, 12_000);
        g.bench_function("1_thread_cpm_7_scopes", |b| {
            b.iter_custom(|iters| {
                let start = StdInstant::now();
                run_paced(&store, &d, iters, t0, &clock, 12_000);
                start.elapsed()
            })
        });
        println!(
            "cpm keys: {}, approx bytes per key with 5,000 admissions in the minute: {}",
            store.len(),
            store.bytes_per_key()
        );
    }
    let million: Vec<Vec<Demand>> = (0..1_000_000).map(|i| demands(ip(i))).collect();
    let t0 = Instant::now();
    let store = MemoryStore::new(t0);
    run(&store, &million, 1_000_000, t0); // every key exists before measuring
    g.bench_function("1_thread_1M_ips", |b| {
        b.iter_custom(|iters| {
            let start = StdInstant::now();
            run(&store, &million, iters, t0);
            start.elapsed()
        })
    });
    g.bench_function("2_threads_1M_ips", |b| {
        b.iter_custom(|iters| {
            let start = StdInstant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| run(&store, &million, iters.div_ceil(2), t0));
                }
            });
            start.elapsed()
        })
    });
    g.finish();
    println!("keys: {}, approx bytes per key: {}", store.len(), store.bytes_per_key());
}

criterion_group!(benches, admission);
criterion_main!(benches);
