//! Memory per active call and per limit key, measured as resident-set growth (Linux
//! /proc/self/statm) while 100,000 calls are up in the sans-IO core and while 1,000,000
//! per-IP keys exist in the limit store, and flood protection's block list with 1,000,000
//! spoofed sources. Run: `cargo bench --bench memory`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use sluice::config::Config;
use sluice::limit::memory::MemoryStore;
use sluice::limit::{Demand, LimitKey, Store};
use sluice::peer::Peer;
use sluice::proxy::Action;
use sluice::proxy::node::Node;
use sluice::stats::Stats;
use tokio::time::Instant;

const CONFIG: &str = "[server]\nlisten = [\"udp://127.0.0.1:5060\"]\n[limits]\ncps = 1000000\nchannels = 10000000\nper_ip = { cps = 100, channels = 100 }\n[[carrier]]\nname = \"pbx\"\ngateways = [\"udp://127.0.0.1:5070\"]\nchannels = 10000000\n[[route]]\nprefix = \"\"\ncarriers = [\"pbx\"]\n";

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn main() {
    // First, before other parts free memory the allocator would hand back to it.
    refused_invites();
    // Calls: INVITE from one of 1000 callers, 200 OK, ACK; then wait out the INVITE
    // transactions' linger so only the call records (and their reservations) remain.
    let config = Arc::new(Config::parse("bench", CONFIG).expect("config"));
    let store = Arc::new(MemoryStore::new(Instant::now()));
    let proxy = Node::with_store(config, Arc::new(Stats::default()), 1, store.clone());
    let pbx = Peer::udp("127.0.0.1:5070".parse().expect("addr"));
    let mut now = Instant::now();
    let calls = 100_000u32;
    let before = rss_bytes();
    let mut out = Vec::new();
    for i in 0..calls {
        let caller =
            Peer::udp(std::net::SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i % 1000)), 5060));
        let invite = format!(
            "INVITE sip:15551230000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK{i}\r\nFrom: <sip:a@x>;tag=f{i}\r\nTo: <sip:15551230000@x>\r\nCall-ID: mem-{i}@bench\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
            a = caller.addr
        );
        out.clear();
        proxy.on_message(now, caller, invite.as_bytes(), &mut out);
        let Some((_, data)) = out.iter().filter_map(Action::as_send).find(|(to, _)| **to == pbx) else {
            panic!("not forwarded")
        };
        let fwd = String::from_utf8_lossy(data).into_owned();
        let vias: String =
            fwd.lines().filter(|l| l.starts_with("Via:")).map(|l| format!("{l}\r\n")).collect();
        let ok = format!(
            "SIP/2.0 200 OK\r\n{vias}From: <sip:a@x>;tag=f{i}\r\nTo: <sip:15551230000@x>;tag=t{i}\r\nCall-ID: mem-{i}@bench\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        );
        proxy.on_message(now, pbx, ok.as_bytes(), &mut out);
        let ack = format!(
            "ACK sip:pbx@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKack{i}\r\nFrom: <sip:a@x>;tag=f{i}\r\nTo: <sip:15551230000@x>;tag=t{i}\r\nCall-ID: mem-{i}@bench\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            a = caller.addr
        );
        proxy.on_message(now, caller, ack.as_bytes(), &mut out);
    }
    now += std::time::Duration::from_secs(40);
    proxy.on_timer(now, &mut out);
    let (txs, dialogs, timers) = proxy.table_sizes();
    let per_call = rss_bytes().saturating_sub(before) / u64::from(calls);
    println!(
        "active calls: {} (transactions {txs}, call records {dialogs}, timers {timers})",
        proxy.active_calls()
    );
    println!(
        "memory per active call (call record, reservation, timer, limit keys amortised): {per_call} bytes"
    );
    assert_eq!(proxy.active_calls(), calls as usize);

    // Limit keys: one per source IP.
    let keys = MemoryStore::new(Instant::now());
    let before = rss_bytes();
    let n = 1_000_000u32;
    let t = Instant::now();
    for i in 0..n {
        let d = [Demand {
            key: LimitKey::ip(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i))),
            cps: Some(20),
            channels: Some(200),
        }];
        let r = keys.admit(t, &d, true).expect("room");
        keys.release(t, r);
    }
    let per_key = rss_bytes().saturating_sub(before) / u64::from(n);
    println!(
        "limit keys: {}, memory per per-IP key: {per_key} bytes (estimate from sizes: {} bytes)",
        keys.len(),
        keys.bytes_per_key()
    );
    let evicted = keys.evict_idle(t + std::time::Duration::from_secs(2));
    println!("evicted when idle: {evicted}, left: {}", keys.len());
    blocked_sources();
}

/// Memory per refused INVITE (server cps = 1, so all but the first are refused), with the
/// refusal as a transaction (below the pressure threshold) and without state (above it).
fn refused_invites() {
    let text = CONFIG.replace("cps = 1000000\n", "cps = 1\n");
    let config = Arc::new(Config::parse("bench", &text).expect("config"));
    let n = 100_000u32;
    for (mode, stateless_above) in
        [("stateless (above the threshold)", 0), ("transaction (below it)", usize::MAX)]
    {
        let proxy = Node::new(config.clone(), Arc::new(Stats::default()), 1);
        proxy.set_stateless_above(stateless_above);
        let now = Instant::now();
        let before = rss_bytes();
        let mut out = Vec::new();
        for i in 0..n {
            let caller =
                Peer::udp(std::net::SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0d00_0000 + i)), 5060));
            let invite = format!(
                "INVITE sip:15551230000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKr{i}\r\nMax-Forwards: 70\r\nFrom: <sip:a@x>;tag=f{i}\r\nTo: <sip:15551230000@x>\r\nCall-ID: refused-{i}@bench\r\nCSeq: 1 INVITE\r\nContact: <sip:a@{a}>\r\nContent-Type: application/sdp\r\nContent-Length: 0\r\n\r\n",
                a = caller.addr
            );
            proxy.on_message(now, caller, invite.as_bytes(), &mut out);
            out.clear();
        }
        let per = rss_bytes().saturating_sub(before) / u64::from(n);
        println!("refused INVITEs as {mode}: {per} bytes each ({} transactions live)", proxy.transactions());
    }
}

/// Flood protection's memory with 1,000,000 spoofed sources blocked at once (each sent two
/// messages in one second over `rps = 1`).
fn blocked_sources() {
    let text = "[server]\nlisten = [\"udp://127.0.0.1:5060\"]\n[[carrier]]\nname = \"pbx\"\ngateways = [\"udp://127.0.0.1:5070\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"pbx\"]\n[flood]\nrps = 1\nblock_seconds = 60\n";
    let config = Config::parse("bench", text).expect("config");
    let t = Instant::now();
    let before = rss_bytes();
    let mut guard = sluice::proxy::flood::Flood::new(&config, t).expect("flood on");
    let n = 1_000_000u32;
    for i in 0..n {
        let ip = IpAddr::V4(Ipv4Addr::from(0x0c00_0000 + i));
        guard.check(t, ip);
        guard.check(t, ip);
    }
    let grown = rss_bytes().saturating_sub(before);
    println!(
        "flood: {} sources blocked, {} MiB resident ({} bytes per source; tables' estimate {} MiB)",
        guard.blocked(),
        grown >> 20,
        grown / u64::from(n),
        guard.heap_bytes() >> 20
    );
}
