//! How many admissions per second one Redis sustains for a cluster: admit (the Lua script
//! over the multiplexed connection) and release (the release worker) of calls with 7 scopes
//! and with 1, `IN_FLIGHT` admissions at a time from one node, for `SECONDS` each. Reports
//! admissions/s, this process's CPU and Redis's CPU (INFO cpu) per admission.
//!
//! Run: `cargo bench --bench redis_ceiling` (starts its own redis-server on a free port;
//! `REDIS_URL=redis://host:port/` uses an existing one, whose database it flushes).

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant as StdInstant};

use sluice::config::OnFailure;
use sluice::limit::memory::MemoryStore;
use sluice::limit::redis::{RedisSettings, RedisStore, Remote};
use sluice::limit::{Demand, KeyName, LimitKey, Scope, Store};
use tokio::time::Instant;

const IN_FLIGHT: usize = 64;
const SECONDS: u64 = 5;

fn demands(scopes: usize, i: u32) -> Vec<Demand> {
    let text = |scope, name: &str| LimitKey { scope, name: KeyName::Text(Arc::from(name)) };
    let all = [
        LimitKey::server(),
        text(Scope::Customer, "acme"),
        LimitKey::ip(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i % 1000))),
        text(Scope::User, "acme-trunk"),
        text(Scope::Route, "acme/44"),
        text(Scope::Carrier, "pbx"),
        text(Scope::Gateway, "udp://127.0.0.1:5070"),
    ];
    all.into_iter()
        .take(scopes)
        .map(|key| Demand { key, cps: Some(10_000_000), channels: Some(10_000_000), ..Demand::default() })
        .collect()
}

/// utime + stime of this process, in seconds.
fn own_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / 100.0
}

fn redis_cpu(url: &str) -> f64 {
    let Ok(client) = redis::Client::open(url) else { return 0.0 };
    let Ok(mut conn) = client.get_connection() else { return 0.0 };
    let info: String = redis::cmd("INFO").arg("cpu").query(&mut conn).unwrap_or_default();
    info.lines()
        .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
        .filter_map(|l| l.split_once(':').and_then(|(_, v)| v.trim().parse::<f64>().ok()))
        .sum()
}

fn start_redis() -> Option<(Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    Some((child, format!("redis://127.0.0.1:{port}/")))
}

fn main() {
    let (mut child, url) = match std::env::var("REDIS_URL") {
        Ok(url) => (None, url),
        Err(_) => match start_redis() {
            Some((c, url)) => (Some(c), url),
            None => {
                eprintln!("notice: redis-server not found; redis_ceiling skipped");
                return;
            }
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for scopes in [7, 1] {
        if let Ok(client) = redis::Client::open(url.as_str()) {
            if let Ok(mut conn) = client.get_connection() {
                let _: redis::RedisResult<()> = redis::cmd("FLUSHDB").query(&mut conn);
            }
        }
        let settings = RedisSettings {
            url: url.clone(),
            node: "bench".into(),
            on_failure: OnFailure::Reject,
            nodes: 1,
            timeout: Duration::from_secs(2),
            heartbeat: Duration::from_secs(10),
        };
        let store = RedisStore::new(settings, Arc::new(MemoryStore::new(Instant::now()))).expect("store");
        store.spawn_maintenance();
        let admitted = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (cpu0, rcpu0, t0) = (own_cpu(), redis_cpu(&url), StdInstant::now());
        runtime.block_on(async {
            let mut tasks = Vec::new();
            for t in 0..IN_FLIGHT {
                let (store, admitted, failed) = (store.clone(), admitted.clone(), failed.clone());
                tasks.push(tokio::spawn(async move {
                    let mut i = t as u32;
                    while t0.elapsed() < Duration::from_secs(SECONDS) {
                        i = i.wrapping_add(IN_FLIGHT as u32);
                        match store.admit_async(Instant::now(), vec![demands(scopes, i)], true).await {
                            Remote::Admitted(_, r) => {
                                admitted.fetch_add(1, Ordering::Relaxed);
                                store.release(Instant::now(), r);
                            }
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        });
        // Sustained means released too: the clock runs until the release worker has caught
        // up, so its CPU (and Redis's) is counted against the calls it served.
        let admitting = t0.elapsed().as_secs_f64();
        let deadline = StdInstant::now() + Duration::from_secs(60);
        while store.pending() > 0 && StdInstant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let secs = t0.elapsed().as_secs_f64();
        println!("  (admitting {admitting:.1} s, releases caught up after {secs:.1} s)");
        let (cpu, rcpu) = (own_cpu() - cpu0, redis_cpu(&url) - rcpu0);
        let n = admitted.load(Ordering::Relaxed).max(1) as f64;
        println!(
            "{scopes} scopes: {:.0} admissions/s ({} failed), sluice {:.1} us CPU per admission+release, Redis {:.1} us",
            n / secs,
            failed.load(Ordering::Relaxed),
            cpu / n * 1e6,
            rcpu / n * 1e6
        );
        store.stop();
    }
    if let Some(c) = child.as_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
}
