//! A stateful scenario for the sans-IO core: a byte string is read as a sequence of moves by
//! callers, the PBX and strangers (new calls with reused Call-IDs, answers, forged answers
//! from wrong addresses, ACK, BYE from either side, CANCEL, retransmissions, garbage, time
//! passing), and after each move the invariants are checked:
//! - nothing panics, and everything sluice sends scans again;
//! - the server's channels never exceed the limit;
//! - an INVITE reaches the PBX as it was sent, plus sluice's own splices only;
//! - once every call is over and the timers have run, every channel is free and every table
//!   is empty.
//!
//! Used by `tests/core_properties.rs` (proptest, in `cargo test`) and by the fuzz target
//! (`fuzz/fuzz_targets/core_sequences.rs`), which includes this file by path.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice::config::Config;
use sluice::limit::LimitKey;
use sluice::limit::memory::MemoryStore;
use sluice::peer::Peer;
use sluice::proxy::node::Node;
use sluice::stats::Stats;
use tokio::time::Instant;

/// The server's channel limit in the scenario.
pub const CHANNELS: u32 = 3;

const CONFIG: &str = "[server]\nlisten = [\"udp://127.0.0.1:5060\"]\nworkers = 3\ngateway_timeout_ms = 2000\n\
    [limits]\nchannels = 3\nmax_call_seconds = 120\n\
    [[carrier]]\nname = \"pbx\"\ngateways = [\"udp://127.0.0.1:5070\"]\n\
    [[route]]\nprefix = \"\"\ncarriers = [\"pbx\"]\n";

/// Reads moves from a byte string; runs out quietly.
struct Moves<'a>(&'a [u8]);

impl Moves<'_> {
    fn next(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn pick(&mut self, n: usize) -> usize {
        self.next().map_or(0, |b| usize::from(b) % n.max(1))
    }
}

struct Run {
    proxy: Node,
    limits: Arc<MemoryStore>,
    stats: Arc<Stats>,
    now: Instant,
    callers: [Peer; 3],
    pbx: Peer,
    stranger: Peer,
    /// INVITEs as the PBX received them (to answer), and 2xx as callers received them.
    at_pbx: Vec<String>,
    answered: Vec<String>,
    /// Everything the scenario sent, for retransmissions: (from, bytes).
    sent: Vec<(Peer, String)>,
    /// Initial INVITEs sent by callers, by branch, to compare with what the PBX got.
    invites: Vec<String>,
    seq: u32,
}

/// Lines of a message's header section that are not sluice's to edit.
fn untouched(msg: &str) -> Vec<&str> {
    let head = msg.split("\r\n\r\n").next().unwrap_or("");
    head.split("\r\n")
        .skip(1)
        .filter(|l| {
            let name = l.split(':').next().unwrap_or("").trim().to_ascii_lowercase();
            !matches!(name.as_str(), "via" | "v" | "route" | "record-route" | "max-forwards")
        })
        .collect()
}

fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.split("\r\n").skip(1).take_while(|l| !l.is_empty()).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

impl Run {
    fn new() -> Self {
        let config = Arc::new(Config::parse("scenario", CONFIG).expect("scenario config"));
        let limits = Arc::new(MemoryStore::new(Instant::now()));
        let peer = |a: &str| Peer::udp(a.parse().expect("address"));
        let stats = Arc::new(Stats::default());
        Self {
            proxy: Node::with_store(config, stats.clone(), 1, limits.clone()),
            limits,
            stats,
            now: Instant::now(),
            callers: [peer("192.0.2.10:5060"), peer("192.0.2.11:5060"), peer("192.0.2.10:5099")],
            pbx: peer("127.0.0.1:5070"),
            stranger: peer("198.51.100.7:5070"),
            at_pbx: Vec::new(),
            answered: Vec::new(),
            sent: Vec::new(),
            invites: Vec::new(),
            seq: 0,
        }
    }

    fn channels(&self) -> u32 {
        self.limits.usage(self.now, &LimitKey::server()).0
    }

    /// Delivers one message and checks what came out.
    fn deliver(&mut self, from: Peer, msg: &str, record: bool) {
        if record {
            self.sent.push((from, msg.to_string()));
        }
        let mut out = Vec::new();
        self.proxy.on_message(self.now, from, msg.as_bytes(), &mut out);
        self.collect(out);
    }

    fn collect(&mut self, out: Vec<sluice::proxy::Action>) {
        for (to, data) in out.iter().filter_map(sluice::proxy::Action::as_send) {
            assert!(sluice::sip::parse(data).is_ok(), "sluice sent bytes it cannot scan: {data:?}");
            let text = String::from_utf8_lossy(data).into_owned();
            if *to == self.pbx && text.starts_with("INVITE ") {
                if header(&text, "To").is_some_and(|t| !t.contains("tag=")) {
                    let branch_of = |m: &str| {
                        m.split("\r\n")
                            .find(|l| l.starts_with("Via:") && !l.contains("z9hG4bKsl"))
                            .map(str::to_string)
                    };
                    let mine = branch_of(&text);
                    if let Some(original) = self.invites.iter().find(|i| branch_of(i) == mine) {
                        assert_eq!(
                            untouched(original),
                            untouched(&text),
                            "forwarded INVITE differs beyond sluice's splices"
                        );
                        assert_eq!(
                            original.split("\r\n\r\n").nth(1),
                            text.split("\r\n\r\n").nth(1),
                            "body changed"
                        );
                    }
                }
                self.at_pbx.push(text);
            } else if text.starts_with("SIP/2.0 200")
                && header(&text, "CSeq").is_some_and(|c| c.ends_with("INVITE"))
            {
                self.answered.push(text);
            }
        }
        assert!(self.channels() <= CHANNELS, "over the channel limit: {}", self.channels());
    }

    /// Moves the clock forward by `by`, firing every timer at its own deadline.
    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while let Some(due) = self.proxy.next_deadline().filter(|d| *d <= end) {
            self.now = self.now.max(due);
            let mut out = Vec::new();
            self.proxy.on_timer(self.now, &mut out);
            self.collect(out);
        }
        self.now = end;
    }

    fn invite(&mut self, m: &mut Moves<'_>) {
        let caller = self.callers[m.pick(3)];
        let call = m.pick(4);
        let tag = m.pick(2);
        self.seq += 1;
        let msg = format!(
            "INVITE sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {addr};branch=z9hG4bKs{seq};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:a@x>;tag=t{tag}\r\nTo: <sip:100@x>\r\nCall-ID: call-{call}\r\n\
             CSeq: {seq} INVITE\r\nContact: <sip:a@{addr}>\r\nX-Mark: {seq}\r\nContent-Length: 4\r\n\r\nbody",
            addr = caller.addr,
            seq = self.seq
        );
        self.invites.push(msg.clone());
        self.deliver(caller, &msg, true);
    }

    fn answer(&mut self, m: &mut Moves<'_>) {
        let Some(inv) = self.at_pbx.get(m.pick(self.at_pbx.len())).cloned() else { return };
        let (code, reason) = [
            (100, "Trying"),
            (180, "Ringing"),
            (200, "OK"),
            (486, "Busy Here"),
            (503, "Unavailable"),
            (407, "Proxy Authentication Required"),
        ][m.pick(6)];
        let from = match m.pick(4) {
            0 => self.stranger,
            1 => self.callers[0],
            _ => self.pbx,
        };
        let call = header(&inv, "Call-ID").unwrap_or_default().to_string();
        let resp = respond(&inv, code, reason, Some(&format!("pbx-{call}")), "", Some(self.pbx.addr));
        self.deliver(from, &resp, true);
    }

    /// ACK or BYE for an answered call, from the caller or the PBX side.
    fn in_dialog(&mut self, m: &mut Moves<'_>, method: &str) {
        let Some(ok) = self.answered.get(m.pick(self.answered.len())).cloned() else { return };
        let (Some(call_id), Some(from), Some(to)) =
            (header(&ok, "Call-ID"), header(&ok, "From"), header(&ok, "To"))
        else {
            return;
        };
        let tag =
            |v: &str| v.split(';').find_map(|p| p.trim().strip_prefix("tag=")).unwrap_or("").to_string();
        let (caller_tag, callee_tag) = (tag(from), tag(to));
        let by_pbx = method == "BYE" && m.pick(2) == 1;
        let (src, ftag, ttag) = if by_pbx {
            (self.pbx, callee_tag, caller_tag)
        } else {
            (self.callers[m.pick(3)], caller_tag, callee_tag)
        };
        self.seq += 1;
        let cseq = if method == "ACK" { 1 } else { 100 + self.seq };
        let msg = format!(
            "{method} sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {addr};branch=z9hG4bKd{seq};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:a@x>;tag={ftag}\r\nTo: <sip:b@x>;tag={ttag}\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            addr = src.addr,
            seq = self.seq
        );
        self.deliver(src, &msg, true);
    }

    fn cancel(&mut self, m: &mut Moves<'_>) {
        let Some(inv) = self.invites.get(m.pick(self.invites.len())).cloned() else { return };
        let msg = inv
            .replacen("INVITE sip:", "CANCEL sip:", 1)
            .replace(" INVITE\r\n", " CANCEL\r\n")
            .replace("Content-Length: 4\r\n\r\nbody", "Content-Length: 0\r\n\r\n");
        let src = self
            .callers
            .iter()
            .copied()
            .find(|c| inv.contains(&c.addr.to_string()))
            .unwrap_or(self.callers[0]);
        self.deliver(src, &msg, true);
    }

    fn replay(&mut self, m: &mut Moves<'_>) {
        let Some((from, msg)) = self.sent.get(m.pick(self.sent.len())).cloned() else { return };
        self.deliver(from, &msg, false);
    }

    fn garbage(&mut self, m: &mut Moves<'_>) {
        let len = m.pick(64);
        let bytes: Vec<u8> = (0..len).filter_map(|_| m.next()).collect();
        let from = if m.pick(2) == 0 { self.stranger } else { self.pbx };
        let mut out = Vec::new();
        self.proxy.on_message(self.now, from, &bytes, &mut out);
        self.collect(out);
    }
}

/// What a scenario did, so a test can tell it exercised something.
#[derive(Debug, Default)]
pub struct Summary {
    pub invites_forwarded: usize,
    pub answered: usize,
    pub peak_channels: u32,
}

/// Plays `moves` and checks every invariant; panics on a violation.
pub fn play(moves: &[u8]) -> Summary {
    let mut run = Run::new();
    let mut m = Moves(moves);
    let mut peak = 0;
    let trace = std::env::var_os("SCENARIO_TRACE").is_some();
    while let Some(op) = m.next() {
        peak = peak.max(run.channels());
        if trace {
            let (tables, channels) = (run.proxy.table_sizes(), run.channels());
            eprintln!("move {} tables {tables:?} channels {channels} stats {:?}", op % 10, run.stats);
        }
        match op % 10 {
            0 | 1 => run.invite(&mut m),
            2 | 3 => run.answer(&mut m),
            4 => run.in_dialog(&mut m, "ACK"),
            5 => run.in_dialog(&mut m, "BYE"),
            6 => run.cancel(&mut m),
            7 => run.replay(&mut m),
            8 => run.garbage(&mut m),
            _ => {
                let ms = u64::from(m.next().unwrap_or(0)) * 200;
                run.advance(Duration::from_millis(ms));
            }
        }
    }
    // Longest life: Timer C twice (ringing, then after our CANCEL) plus the linger.
    run.advance(Duration::from_secs(2 * 180 + 32 + 60));
    assert_eq!(run.channels(), 0, "every channel is free once max_call_seconds has passed");
    assert_eq!(
        run.proxy.table_sizes(),
        (0, 0, 0),
        "(transactions, dialogs, timers) drained; left: {:?}",
        run.proxy.describe_transactions()
    );
    Summary { invites_forwarded: run.at_pbx.len(), answered: run.answered.len(), peak_channels: peak }
}

/// A response built by a UAS (the test PBX) to `req`: Vias, From, To (+tag), Call-ID, CSeq.
pub fn respond(
    req: &str,
    code: u16,
    reason: &str,
    to_tag: Option<&str>,
    extra: &str,
    contact: Option<SocketAddr>,
) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for line in req.split("\r\n").skip(1).take_while(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or("").trim().to_ascii_lowercase();
        match name.as_str() {
            "via" | "v" | "from" | "f" | "call-id" | "i" | "cseq" | "record-route" => {
                out.push_str(line);
                out.push_str("\r\n");
            }
            "to" | "t" => {
                out.push_str(line);
                if let Some(tag) = to_tag {
                    if !line.contains("tag=") {
                        out.push_str(";tag=");
                        out.push_str(tag);
                    }
                }
                out.push_str("\r\n");
            }
            _ => {}
        }
    }
    if let Some(c) = contact {
        out.push_str(&format!("Contact: <sip:pbx@{c}>\r\n"));
    }
    out.push_str(extra);
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}
