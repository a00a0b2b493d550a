//! Whole calls through the sharded core without sockets, from 1 and from 2 threads: each
//! thread plays callers and PBX for its own calls (INVITE, 180, 200, ACK, BYE, 200) against
//! one shared node with as many shards as threads. The ratio of the two rates is how the
//! core scales with cores on this machine; what it shares (the limit store's server key,
//! counters, usage, the spike buffer's lock) is what stops it scaling further.
//!
//! Two working sets: `small_state` fires the timers every 256 calls per thread (the
//! finished transactions and calls fit in the caches), `large_state` every 2048 (they do
//! not: the threads then also compete for the shared L3 and memory).
//!
//! The time measured includes building each test message (format!): `messages_only`
//! measures that alone, so the core's own share can be read off; `messages_only_N_threads`
//! is the same work with nothing shared, i.e. how far this machine's cores scale at all.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant as StdInstant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use sluice::config::Config;
use sluice::peer::Peer;
use sluice::proxy::Action;
use sluice::proxy::node::Node;
use sluice::stats::Stats;
use tokio::time::Instant;

/// The binary's allocator, so the bench allocates as the proxy does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn config(workers: usize) -> Arc<Config> {
    let text = format!(
        "[server]\nlisten = [\"udp://127.0.0.1:5060\"]\nworkers = {workers}\n[limits]\ncps = 1000000\nchannels = 1000000\n\
         [[carrier]]\nname = \"pbx\"\ngateways = [\"udp://127.0.0.1:5070\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"pbx\"]\n"
    );
    Arc::new(Config::parse("bench", &text).unwrap())
}

/// The messages of one call as a caller and a PBX send them; `forwarded` turns the INVITE
/// (or BYE) sluice forwarded into the Via lines the PBX's answers copy.
struct Call {
    id: String,
    n: u64,
}

fn vias(forwarded: &[u8]) -> String {
    let text = String::from_utf8_lossy(forwarded);
    text.lines().filter(|l| l.starts_with("Via:")).map(|l| format!("{l}\r\n")).collect()
}

impl Call {
    fn common(&self) -> String {
        format!("From: <sip:+15550001111@192.0.2.10>;tag=a{}\r\nCall-ID: {}\r\n", self.n, self.id)
    }

    fn invite(&self) -> String {
        format!(
            "INVITE sip:+15551230000@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-{n}\r\n\
             Max-Forwards: 70\r\n{c}To: <sip:+15551230000@127.0.0.1>\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:+15550001111@192.0.2.10:5060>\r\nContent-Length: 0\r\n\r\n",
            n = self.n,
            c = self.common()
        )
    }

    fn answer(&self, vias: &str, code: &str, cseq: &str) -> String {
        format!(
            "SIP/2.0 {code}\r\n{vias}{c}To: <sip:+15551230000@127.0.0.1>;tag=pbx1\r\nCSeq: {cseq}\r\n\
             Contact: <sip:pbx@127.0.0.1:5070>\r\nContent-Length: 0\r\n\r\n",
            c = self.common()
        )
    }

    fn in_dialog(&self, method: &str, cseq: u32) -> String {
        format!(
            "{method} sip:pbx@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-{m}-{n}\r\n\
             Max-Forwards: 70\r\n{c}To: <sip:+15551230000@127.0.0.1>;tag=pbx1\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            m = method.to_ascii_lowercase(),
            n = self.n,
            c = self.common()
        )
    }
}

/// Plays one whole call; panics if the core did not forward what a call needs.
fn play(node: &Node, now: Instant, call: &Call, out: &mut Vec<Action>) {
    let caller = Peer::udp("192.0.2.10:5060".parse().unwrap());
    let pbx = Peer::udp("127.0.0.1:5070".parse().unwrap());
    let to_pbx = |out: &Vec<Action>| {
        out.iter().filter_map(Action::as_send).find(|(to, _)| **to == pbx).map(|(_, d)| vias(d))
    };
    out.clear();
    node.on_message(now, caller, call.invite().as_bytes(), out);
    let v = to_pbx(out).expect("INVITE forwarded");
    node.on_message(now, pbx, call.answer(&v, "180 Ringing", "1 INVITE").as_bytes(), out);
    node.on_message(now, pbx, call.answer(&v, "200 OK", "1 INVITE").as_bytes(), out);
    node.on_message(now, caller, call.in_dialog("ACK", 1).as_bytes(), out);
    out.clear();
    node.on_message(now, caller, call.in_dialog("BYE", 2).as_bytes(), out);
    let v = to_pbx(out).expect("BYE forwarded");
    node.on_message(now, pbx, call.answer(&v, "200 OK", "2 BYE").as_bytes(), out);
}

/// Runs `calls` whole calls split over `threads` threads against one node; wall time. After
/// every round the threads meet, the clock moves 40 s on and each thread fires its shards'
/// timers (the lingering transactions and ended dialogs expire, as the timer tasks would
/// make them), so no call's timers fire under it while it is being played.
#[derive(Clone, Copy)]
struct Load<'a> {
    threads: usize,
    /// Calls each thread plays between two timer rounds: how much finished state the
    /// shards hold at once (the working set the caches see).
    round: u64,
    base: Instant,
    clock: &'a AtomicU64,
    next_id: &'a AtomicU64,
}

fn run(node: &Arc<Node>, load: &Load<'_>, calls: u64) -> Duration {
    let Load { threads, round, base, clock, next_id } = *load;
    let per_thread = (calls / threads as u64).max(1);
    let rounds = per_thread.div_ceil(round);
    let barrier = std::sync::Barrier::new(threads);
    let started = StdInstant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (node, barrier) = (node.clone(), &barrier);
            s.spawn(move || {
                let mut out = Vec::with_capacity(8);
                let mut left = per_thread;
                for _ in 0..rounds {
                    let now = base + Duration::from_secs(clock.load(Ordering::Relaxed));
                    for _ in 0..left.min(round) {
                        let n = next_id.fetch_add(1, Ordering::Relaxed);
                        play(&node, now, &Call { id: format!("tp-{n}@192.0.2.10"), n }, &mut out);
                        black_box(out.len());
                    }
                    left = left.saturating_sub(round);
                    if barrier.wait().is_leader() {
                        clock.fetch_add(40, Ordering::Relaxed);
                    }
                    barrier.wait();
                    // Each thread fires its own shards' timers, as each shard's timer task does.
                    let later = base + Duration::from_secs(clock.load(Ordering::Relaxed));
                    for k in (t..node.shard_count()).step_by(threads) {
                        node.on_shard_timer(k, later, &mut out);
                    }
                    barrier.wait();
                }
            });
        }
    });
    started.elapsed()
}

fn throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("core_throughput");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(8));
    for (state, round) in [("small_state", 256), ("large_state", 2048)] {
        for threads in [1usize, 2] {
            let node = Arc::new(Node::new(config(threads), Arc::new(Stats::default()), 7));
            let (clock, next_id) = (AtomicU64::new(0), AtomicU64::new(1));
            let load = Load { threads, round, base: Instant::now(), clock: &clock, next_id: &next_id };
            g.bench_function(format!("whole_calls_{threads}_threads_{state}"), |b| {
                b.iter_custom(|iters| run(&node, &load, iters.max(threads as u64)))
            });
        }
    }
    for threads in [1usize, 2] {
        // The same work with nothing shared: how far this machine's cores scale at all.
        g.bench_function(format!("messages_only_{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                let started = StdInstant::now();
                std::thread::scope(|s| {
                    for t in 0..threads as u64 {
                        s.spawn(move || {
                            for n in 0..(iters / threads as u64).max(1) {
                                black_box(messages(n * 2 + t));
                            }
                        });
                    }
                });
                started.elapsed()
            })
        });
    }
    let mut n = 0u64;
    g.bench_function("messages_only", |b| {
        b.iter(|| {
            n += 1;
            let call = Call { id: format!("tp-{n}@192.0.2.10"), n };
            let v = vias(call.invite().as_bytes());
            black_box((call.answer(&v, "180 Ringing", "1 INVITE"), call.answer(&v, "200 OK", "1 INVITE")));
            black_box((
                call.in_dialog("ACK", 1),
                call.in_dialog("BYE", 2),
                call.answer(&v, "200 OK", "2 BYE"),
            ));
        })
    });
    g.finish();
}

/// Builds every message of call `n` (what the harness adds to each whole call).
fn messages(n: u64) -> usize {
    let call = Call { id: format!("tp-{n}@192.0.2.10"), n };
    let v = vias(call.invite().as_bytes());
    let answers = [call.answer(&v, "180 Ringing", "1 INVITE"), call.answer(&v, "200 OK", "1 INVITE")];
    let rest = [call.in_dialog("ACK", 1), call.in_dialog("BYE", 2), call.answer(&v, "200 OK", "2 BYE")];
    answers.iter().chain(rest.iter()).map(String::len).sum()
}

criterion_group!(benches, throughput);
criterion_main!(benches);
