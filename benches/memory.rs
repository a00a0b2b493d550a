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
    // Each part runs in a process of its own: memory one part frees would otherwise be
    // reused by the next, and its growth undercounted.
    let parts: [(&str, fn()); 6] = [
        ("lingering", lingering_calls),
        ("steady", steady_rate),
        ("refused", refused_invites),
        ("active", active_calls),
        ("keys", limit_keys),
        ("flood", blocked_sources),
    ];
    if let Ok(part) = std::env::var("SLUICE_MEMORY_PART") {
        if let Some((_, run)) = parts.iter().find(|(name, _)| *name == part) {
            run();
        }
        return;
    }
    let me = std::env::current_exe().expect("own path");
    for (name, _) in parts {
        let status = std::process::Command::new(&me).env("SLUICE_MEMORY_PART", name).status();
        assert!(status.is_ok_and(|s| s.success()), "part {name} failed");
    }
}

fn active_calls() {
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
}

fn limit_keys() {
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
            ..Demand::default()
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

/// What a finished call leaves behind for RFC 3261's linger: 50,000 whole calls (INVITE,
/// 180, 200, ACK, BYE, 200), measured before any timer fires, so every INVITE and BYE
/// transaction and every hung-up call is still there (the hung-up call's routing stays
/// only T4, the transactions' keys 32 s).
fn lingering_calls() {
    let config = Arc::new(Config::parse("bench", CONFIG).expect("config"));
    let proxy = Node::new(config, Arc::new(Stats::default()), 1);
    let now = Instant::now();
    let calls = 50_000u32;
    let before = rss_bytes();
    let mut out = Vec::new();
    for i in 0..calls {
        whole_call(&proxy, i, now, &mut out);
    }
    let (txs, dialogs, timers) = proxy.table_sizes();
    let per_call = rss_bytes().saturating_sub(before) / u64::from(calls);
    println!(
        "lingering after {calls} whole calls: transactions {txs}, call records {dialogs}, timers {timers}; \
         {per_call} bytes per finished call (its INVITE and BYE transactions and its call record)"
    );
    assert_eq!(proxy.active_calls(), 0);
}

/// The steady state of a node carrying 7,000 calls/s on a synthetic clock: every
/// millisecond 7 whole calls, timers fired as time passes, for 40 s (longer than the 32 s
/// linger, so what lingers is what a real node at that rate holds). Reports the resident
/// growth and the bytes per call the linger holds.
fn steady_rate() {
    let config = Arc::new(Config::parse("bench", CONFIG).expect("config"));
    let proxy = Node::new(config, Arc::new(Stats::default()), 1);
    let start = Instant::now();
    let (rate_per_ms, seconds) = (7u32, 40u32);
    let before = rss_bytes();
    let mut out = Vec::new();
    let mut i = 0u32;
    let mut peak = 0u64;
    for ms in 0..seconds * 1000 {
        let now = start + std::time::Duration::from_millis(u64::from(ms));
        for _ in 0..rate_per_ms {
            whole_call(&proxy, i, now, &mut out);
            i += 1;
        }
        out.clear();
        proxy.on_timer(now, &mut out);
        if ms % 1000 == 0 {
            peak = peak.max(rss_bytes().saturating_sub(before));
        }
    }
    let (txs, dialogs, timers) = proxy.table_sizes();
    let lingering = u64::from(rate_per_ms) * 32_000;
    println!(
        "steady 7000 calls/s for {seconds} s: transactions {txs}, calls {dialogs}, timers {timers}; resident \
         growth {} MiB, {} bytes per call the 32 s linger holds ({lingering} calls)",
        peak >> 20,
        peak / lingering
    );
    assert_eq!(proxy.active_calls(), 0);
}

/// One whole call from caller `i`: INVITE, 180, 200, ACK, BYE, 200, all at `now`.
fn whole_call(proxy: &Node, i: u32, now: Instant, out: &mut Vec<Action>) {
    let pbx = Peer::udp("127.0.0.1:5070".parse().expect("addr"));
    let vias = |out: &Vec<Action>| -> String {
        let Some((_, data)) = out.iter().filter_map(Action::as_send).find(|(to, _)| **to == pbx) else {
            panic!("not forwarded")
        };
        let text = String::from_utf8_lossy(data).into_owned();
        text.lines().filter(|l| l.starts_with("Via:")).map(|l| format!("{l}\r\n")).collect()
    };
    let caller =
        Peer::udp(std::net::SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0e00_0000 + i % 1000)), 5060));
    let a = caller.addr;
    let dialog = format!("From: <sip:a@x>;tag=f{i}\r\nCall-ID: linger-{i}@bench\r\n");
    let invite = format!(
        "INVITE sip:15551230000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK{i}\r\nMax-Forwards: 70\r\n{dialog}To: <sip:15551230000@x>\r\nCSeq: 1 INVITE\r\nContact: <sip:a@{a}>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    );
    out.clear();
    proxy.on_message(now, caller, invite.as_bytes(), out);
    let v = vias(out);
    for status in ["180 Ringing", "200 OK"] {
        let answer = format!(
            "SIP/2.0 {status}\r\n{v}{dialog}To: <sip:15551230000@x>;tag=t{i}\r\nCSeq: 1 INVITE\r\nContact: <sip:pbx@127.0.0.1:5070>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
            SDP.len()
        );
        proxy.on_message(now, pbx, answer.as_bytes(), out);
    }
    let ack = format!(
        "ACK sip:pbx@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKack{i}\r\nMax-Forwards: 70\r\n{dialog}To: <sip:15551230000@x>;tag=t{i}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    proxy.on_message(now, caller, ack.as_bytes(), out);
    let bye = format!(
        "BYE sip:pbx@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKbye{i}\r\nMax-Forwards: 70\r\n{dialog}To: <sip:15551230000@x>;tag=t{i}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    out.clear();
    proxy.on_message(now, caller, bye.as_bytes(), out);
    let v = vias(out);
    let ok = format!(
        "SIP/2.0 200 OK\r\n{v}{dialog}To: <sip:15551230000@x>;tag=t{i}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    proxy.on_message(now, pbx, ok.as_bytes(), out);
}

/// A typical offer/answer body (the INVITE and the 200 carry one each).
const SDP: &str = "v=0\r\no=user1 53655765 2353687637 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 8 18 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:18 G729/8000\r\na=fmtp:18 annexb=no\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n";
