//! The spike buffer in the sans-IO core with a synthetic clock: exact hand-over time,
//! deadline-aware refusal, the depth limit, expiry with the normal answer, and no leak.

use std::sync::Arc;
use std::time::Duration;

use sluice::config::Config;
use sluice::limit::memory::MemoryStore;
use sluice::peer::Peer;
use sluice::proxy::Action;
use sluice::proxy::node::Node;
use sluice::stats::Stats;
use tokio::time::Instant;

struct Rig {
    proxy: Node,
    limits: Arc<MemoryStore>,
    now: Instant,
    /// Calls already seen at the PBX (Timer A retransmissions are not new calls).
    at_pbx: std::collections::HashSet<String>,
}

const CALLER: &str = "192.0.2.10:5060";
const PBX: &str = "127.0.0.1:5070";

impl Rig {
    fn new(extra: &str) -> Self {
        Self::with_carrier("", extra)
    }

    /// `carrier`: extra keys of the one carrier's table (its limits, pacing).
    fn with_carrier(carrier: &str, extra: &str) -> Self {
        let text = format!(
            "[server]\nlisten = [\"udp://127.0.0.1:5060\"]\nworkers = 3\n[[carrier]]\nname = \"pbx\"\ngateways = [\"udp://{PBX}\"]\n{carrier}\n[[route]]\nprefix = \"\"\ncarriers = [\"pbx\"]\n{extra}"
        );
        let config = Arc::new(Config::parse("t", &text).unwrap());
        let now = Instant::now();
        let limits = Arc::new(MemoryStore::new(now));
        Self {
            proxy: Node::with_store(config, Arc::new(Stats::default()), 9, limits.clone()),
            limits,
            now,
            at_pbx: Default::default(),
        }
    }

    /// What a new INVITE `id` produced: (forwarded to the PBX, status codes sent back).
    fn invite(&mut self, id: &str) -> (bool, Vec<u16>) {
        self.invite_from(CALLER, id)
    }

    fn invite_from(&mut self, caller: &str, id: &str) -> (bool, Vec<u16>) {
        let msg = format!(
            "INVITE sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {caller};branch=z9hG4bK{id}\r\nFrom: <sip:a@x>;tag={id}\r\nTo: <sip:100@x>\r\nCall-ID: {id}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        );
        let mut out = Vec::new();
        self.proxy.on_message(self.now, Peer::udp(caller.parse().unwrap()), msg.as_bytes(), &mut out);
        let (forwarded, statuses) = self.split(out);
        (forwarded > 0, statuses)
    }

    /// (new calls forwarded to the PBX, statuses sent back to the caller).
    fn split(&mut self, out: Vec<Action>) -> (usize, Vec<u16>) {
        let pbx: std::net::SocketAddr = PBX.parse().unwrap();
        let mut forwarded = 0;
        let mut statuses = Vec::new();
        for (to, data) in out.iter().filter_map(Action::as_send) {
            let text = String::from_utf8_lossy(data).into_owned();
            if to.addr == pbx {
                let id =
                    text.lines().find_map(|l| l.strip_prefix("Call-ID: ")).unwrap_or_default().to_string();
                if text.starts_with("INVITE ") && self.at_pbx.insert(id) {
                    forwarded += 1;
                }
            } else if let Some(code) = text.get(8..11).and_then(|c| c.parse().ok()) {
                statuses.push(code);
            }
        }
        (forwarded, statuses)
    }

    /// Moves the clock to `t0 + ms` in 1 ms steps, firing timers; collects what was sent.
    fn advance_to(&mut self, t0: Instant, ms: u64) -> (usize, Vec<u16>) {
        let mut forwarded = 0;
        let mut statuses = Vec::new();
        while self.now < t0 + Duration::from_millis(ms) {
            self.now += Duration::from_millis(1);
            let mut out = Vec::new();
            self.proxy.on_timer(self.now, &mut out);
            let (f, s) = self.split(out);
            forwarded += f;
            statuses.extend(s);
        }
        (forwarded, statuses)
    }
}

impl Rig {
    /// Like [`Rig::run_until`], returning when (after `t0`) each new call reached the PBX.
    fn forwarded_at(&mut self, t0: Instant, ms: u64) -> Vec<Duration> {
        let end = t0 + Duration::from_millis(ms);
        let mut at = Vec::new();
        while let Some(due) = self.proxy.next_deadline().filter(|d| *d <= end) {
            self.now = self.now.max(due);
            let mut out = Vec::new();
            self.proxy.on_timer(self.now, &mut out);
            let (f, _) = self.split(out);
            at.extend(std::iter::repeat_n(self.now.duration_since(t0), f));
        }
        self.now = end;
        at
    }

    /// Moves the clock to `t0 + ms`, firing each timer at its own deadline (what the runtime
    /// does: it sleeps until the core's next deadline).
    fn run_until(&mut self, t0: Instant, ms: u64) -> (usize, Vec<u16>) {
        let end = t0 + Duration::from_millis(ms);
        let (mut forwarded, mut statuses) = (0, Vec::new());
        while let Some(due) = self.proxy.next_deadline().filter(|d| *d <= end) {
            self.now = self.now.max(due);
            let mut out = Vec::new();
            self.proxy.on_timer(self.now, &mut out);
            let (f, s) = self.split(out);
            forwarded += f;
            statuses.extend(s);
        }
        self.now = end;
        (forwarded, statuses)
    }
}

/// The burst the README describes: 50 INVITEs within 15 ms against `per_ip cps = 20` with a
/// one-second wait. 20 go at once, 20 wait (each within one second of its slot), 10 would
/// wait longer and are refused at once; the 20 waiting take the slots that open a second
/// after the first 20, before their own deadlines: 40 admitted, exactly.
#[test]
fn a_burst_admits_the_waiting_calls_when_their_slots_open() {
    let mut r = Rig::new("[limits]\nper_ip = { cps = 20 }\n[overflow]\nqueue_ms = 1000\nqueue_depth = 100\n");
    let t0 = r.now;
    let (mut forwarded, mut refused) = (0, 0);
    for i in 0..50 {
        r.now = t0 + Duration::from_micros(300 * i);
        let (f, statuses) = r.invite(&format!("burst-{i}"));
        forwarded += usize::from(f);
        refused += statuses.iter().filter(|s| **s == 503).count();
    }
    assert_eq!((forwarded, refused), (20, 10), "20 at once, 10 refused at once, 20 waiting");
    let (later, _) = r.run_until(t0, 2000);
    assert_eq!(later, 20, "every waiting call got a slot before its deadline");
    assert_eq!(r.proxy.active_calls(), 40);
}

/// The same burst with a timer that fires late (every 10 ms, as a busy runtime might): a
/// slot that opened before a call's deadline is still that call's, even when the timer
/// comes after the deadline. Admission is tried before expiry.
#[test]
fn a_late_timer_still_admits_before_it_expires() {
    let mut r = Rig::new("[limits]\nper_ip = { cps = 20 }\n[overflow]\nqueue_ms = 1000\nqueue_depth = 100\n");
    let t0 = r.now;
    for i in 0..50 {
        r.now = t0 + Duration::from_micros(50 * i);
        r.invite(&format!("late-{i}"));
    }
    let mut later = 0;
    while r.now < t0 + Duration::from_millis(2000) {
        r.now += Duration::from_millis(10);
        let mut out = Vec::new();
        r.proxy.on_timer(r.now, &mut out);
        later += r.split(out).0;
    }
    assert_eq!(later, 20, "the waiting calls took the slots that opened for them");
}

#[test]
fn waiting_call_goes_exactly_when_the_window_frees() {
    let mut r = Rig::new("[limits]\ncps = 1\n[overflow]\nqueue_ms = 1500\n");
    let t0 = r.now;
    assert_eq!(r.invite("a"), (true, vec![100]));
    assert_eq!(r.invite("b"), (false, vec![100]), "b waits with its 100 Trying");
    // c would need two slots ahead of it at 1 CPS: 2 s > 1.5 s, refused at once.
    assert_eq!(r.invite("c"), (false, vec![503]));
    let (forwarded, _) = r.advance_to(t0, 999);
    assert_eq!(forwarded, 0, "not before the second is over");
    let (forwarded, statuses) = r.advance_to(t0, 1010);
    assert_eq!(forwarded, 1, "b goes as soon as a's admission leaves the window");
    assert!(statuses.is_empty());
}

#[test]
fn depth_limit_refuses_at_once() {
    let mut r = Rig::new("[limits]\ncps = 1\n[overflow]\nqueue_ms = 5000\nqueue_depth = 1\n");
    assert_eq!(r.invite("a"), (true, vec![100]));
    assert_eq!(r.invite("b"), (false, vec![100]));
    assert_eq!(r.invite("c"), (false, vec![503]), "the buffer holds one call");
}

#[test]
fn a_wait_that_runs_out_gets_the_normal_answer_and_leaks_nothing() {
    let mut r = Rig::new("[limits]\nchannels = 1\n[overflow]\nqueue_ms = 500\nqueue_channels = true\n");
    let t0 = r.now;
    assert_eq!(r.invite("a"), (true, vec![100]));
    assert_eq!(r.invite("b"), (false, vec![100]));
    let (forwarded, statuses) = r.advance_to(t0, 499);
    assert_eq!((forwarded, statuses.len()), (0, 0));
    let (forwarded, statuses) = r.advance_to(t0, 510);
    assert_eq!(forwarded, 0);
    assert_eq!(statuses, vec![503], "Channel Limit reached at the deadline");
    // Only a's channel (server, ip, route, carrier, gateway) is held.
    assert_eq!(r.limits.total_channels(), 5);
}

/// A Call-ID (with `prefix`) that the node puts on shard `shard`.
fn id_on(node: &Node, prefix: &str, shard: usize) -> String {
    (0..).map(|i| format!("{prefix}-{i}")).find(|id| node.shard_of_call(id.as_bytes()) == shard).unwrap()
}

/// The spike buffer is one for the node, not one per shard: a high-priority call queued on
/// one shard takes the next slot before low-priority calls queued earlier on the others,
/// and the low-priority calls then go in their arrival order whatever their shards.
#[test]
fn one_spike_buffer_for_every_shard() {
    let mut r = Rig::new(
        "[limits]\ncps = 1\n[overflow]\nqueue_ms = 5000\n\
         [[customer]]\nname = \"bulk\"\nips = [\"192.0.2.10/32\"]\n\
         [[customer]]\nname = \"vip\"\nips = [\"192.0.2.20/32\"]\npriority = 5\n",
    );
    assert_eq!(r.proxy.shard_count(), 3 * sluice::proxy::node::SHARDS_PER_WORKER);
    let t0 = r.now;
    let first = id_on(&r.proxy, "first", 0);
    let bulk = [id_on(&r.proxy, "bulk", 1), id_on(&r.proxy, "bulk", 2)];
    let vip = id_on(&r.proxy, "vip", 0);
    assert_eq!(r.invite(&first), (true, vec![100]));
    assert_eq!(r.invite(&bulk[0]), (false, vec![100]));
    assert_eq!(r.invite(&bulk[1]), (false, vec![100]));
    assert_eq!(r.invite_from("192.0.2.20:5060", &vip), (false, vec![100]), "the vip waits too");
    let order = |r: &mut Rig, until_ms| {
        let before: std::collections::HashSet<String> = r.at_pbx.clone();
        r.run_until(t0, until_ms);
        r.at_pbx.difference(&before).cloned().collect::<Vec<_>>()
    };
    assert_eq!(order(&mut r, 1500), vec![vip.clone()], "second slot: the vip, from shard 0");
    assert_eq!(order(&mut r, 2500), vec![bulk[0].clone()], "third: bulk's first (shard 1)");
    assert_eq!(order(&mut r, 3500), vec![bulk[1].clone()], "fourth: bulk's second (shard 2)");
    assert_eq!(r.proxy.active_calls(), 4);
}

/// Limits are node-wide: calls on different shards share one channel limit; a CANCEL
/// finds its call's shard by Call-ID (another shard would answer 481).
#[test]
fn shards_share_limits_and_cancel_finds_its_shard() {
    let mut r = Rig::new("[limits]\nchannels = 1\n");
    let a = id_on(&r.proxy, "a", 1);
    let b = id_on(&r.proxy, "b", 2);
    assert_eq!(r.invite(&a), (true, vec![100]));
    assert_eq!(r.invite(&b), (false, vec![503]), "the one channel is held by shard 1's call");
    let cancel = format!(
        "CANCEL sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bK{a}\r\nFrom: <sip:a@x>;tag={a}\r\nTo: <sip:100@x>\r\nCall-ID: {a}\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
    );
    let mut out = Vec::new();
    r.proxy.on_message(r.now, Peer::udp(CALLER.parse().unwrap()), cancel.as_bytes(), &mut out);
    assert_eq!(r.split(out).1, vec![200], "the CANCEL is answered by a's shard");
}

/// `cpm = 30` and 60 calls over 20 s: the first 30 go, the other 30 are refused at once
/// (a minute-long wait is no reason to queue), and nothing more fits until the first
/// admission is 60 s old: then exactly one slot per admission that leaves, taken by the
/// calls waiting for it at the instant it opens.
#[test]
fn cpm_refuses_until_the_first_call_leaves_the_minute() {
    let mut r = Rig::new("[limits]\ncpm = 30\n[overflow]\nqueue_ms = 2000\n");
    let t0 = r.now;
    let mut forwarded = 0;
    for i in 0..60u64 {
        r.run_until(t0, i * 1000 / 3);
        let (went, statuses) = r.invite(&format!("cpm-{i}"));
        if went {
            forwarded += 1;
        } else {
            assert_eq!(statuses, vec![503], "call {i} refused at once, not queued");
        }
        assert_eq!(went, i < 30, "call {i}");
    }
    assert_eq!(forwarded, 30);
    r.run_until(t0, 59_999);
    // Its slot opens within queue_ms now: it waits, and goes the instant call 0 is 60 s old.
    assert_eq!(r.invite("early"), (false, vec![100]));
    assert_eq!(r.forwarded_at(t0, 60_010), vec![Duration::from_secs(60)]);
    assert_eq!(r.invite("next"), (false, vec![100]), "one slot opened, not a new minute");
    assert_eq!(r.forwarded_at(t0, 60_500), vec![Duration::from_millis(60_333)], "call 1 (t = 333 ms) left");
}

/// A paced carrier at cps 10: a burst of 30 waits and leaves exactly 100 ms apart (the
/// first at once), never two in one gap; the unpaced window would send 10 per edge.
#[test]
fn a_paced_carrier_releases_a_burst_one_gap_at_a_time() {
    let mut r =
        Rig::with_carrier("cps = 10\npacing = true", "[overflow]\nqueue_ms = 4000\nqueue_depth = 100\n");
    let t0 = r.now;
    let mut at = Vec::new();
    for i in 0..30u64 {
        r.now = t0 + Duration::from_micros(50 * i);
        if r.invite(&format!("pace-{i}")).0 {
            at.push(r.now.duration_since(t0));
        }
    }
    assert_eq!(at.len(), 1, "one call at once, the rest wait");
    at.extend(r.forwarded_at(t0, 4_000));
    assert_eq!(at.len(), 30, "every call of the burst went within its wait");
    for (k, t) in at.iter().enumerate().skip(1) {
        assert_eq!(*t, Duration::from_millis(100 * k as u64), "call {k} leaves on its pacing slot");
    }
}
