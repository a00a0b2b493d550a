//! Nothing lives forever: after every kind of call ends and the linger timers pass, the
//! core's transaction, dialog and timer tables are empty. Driven through the sans-IO core
//! with a synthetic clock (no sockets, no sleeps).

use std::sync::Arc;
use std::time::Duration;

use sluice::config::Config;
use sluice::limit::memory::MemoryStore;
use sluice::peer::{Peer, Transport};
use sluice::proxy::node::Node;
use sluice::stats::Stats;
use tokio::time::Instant;

const CONFIG: &str = "[server]\nlisten = [\"udp://127.0.0.1:5060\"]\nworkers = 3\ngateway_timeout_ms = 2000\n[limits]\nmax_call_seconds = 3600\n[[carrier]]\nname = \"pbx\"\ngateways = [\"udp://127.0.0.1:5070\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"pbx\"]\n";

struct Rig {
    proxy: Node,
    stats: Arc<Stats>,
    limits: Arc<MemoryStore>,
    now: Instant,
    caller: Peer,
    pbx: Peer,
}

impl Rig {
    fn new() -> Self {
        Self::over(Transport::Udp)
    }

    /// Caller and PBX both over `transport`.
    fn over(transport: Transport) -> Self {
        let text = match transport {
            Transport::Udp => CONFIG.to_string(),
            Transport::Tcp => CONFIG.replace("udp://", "tcp://"),
            Transport::Tls => panic!("this harness runs UDP and TCP (TLS needs certificate files)"),
        };
        let config = Arc::new(Config::parse("t", &text).unwrap());
        let limits = Arc::new(MemoryStore::new(Instant::now()));
        let peer = |addr: &str, conn| match transport {
            Transport::Udp => Peer::udp(addr.parse().unwrap()),
            Transport::Tcp | Transport::Tls => Peer::stream(transport, addr.parse().unwrap(), conn),
        };
        let stats = Arc::new(Stats::default());
        Self {
            proxy: Node::with_store(config, stats.clone(), 3, limits.clone()),
            stats,
            limits,
            now: Instant::now(),
            // The caller's connection is the one it came on; sluice opens its own to the PBX.
            caller: peer("192.0.2.10:5060", Some(1)),
            pbx: peer("127.0.0.1:5070", None),
        }
    }

    /// Delivers `msg` from `from`; returns what was sent to `to_pbx ? pbx : caller`.
    fn deliver(&mut self, from: Peer, msg: &str) -> Vec<(Peer, String)> {
        let mut out = Vec::new();
        self.proxy.on_message(self.now, from, msg.as_bytes(), &mut out);
        out.into_iter()
            .filter_map(|a| a.as_send().map(|(to, data)| (*to, String::from_utf8_lossy(data).into_owned())))
            .collect()
    }

    fn send_to_pbx(&mut self, msg: &str) -> String {
        let caller = self.caller;
        let pbx = self.pbx;
        self.deliver(caller, msg)
            .into_iter()
            .find(|(to, _)| *to == pbx)
            .map(|(_, m)| m)
            .expect("forwarded to the PBX")
    }

    fn advance(&mut self, by: Duration) -> Vec<(Peer, String)> {
        let step = Duration::from_millis(100);
        let mut all = Vec::new();
        let end = self.now + by;
        while self.now < end {
            self.now += step;
            let mut out = Vec::new();
            self.proxy.on_timer(self.now, &mut out);
            all.extend(out.into_iter().filter_map(|a| {
                a.as_send().map(|(to, data)| (*to, String::from_utf8_lossy(data).into_owned()))
            }));
        }
        all
    }

    fn proxy_stats(&self) -> &Stats {
        &self.stats
    }

    fn assert_empty(&self) {
        assert_eq!(self.proxy.table_sizes(), (0, 0, 0), "(transactions, dialogs, timers) all drained");
        assert_eq!(self.limits.total_channels(), 0, "every channel released");
    }
}

fn invite(id: &str) -> String {
    format!(
        "INVITE sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{id}\r\nFrom: <sip:a@x>;tag=f{id}\r\nTo: <sip:100@x>\r\nCall-ID: {id}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
}

/// A response to a forwarded request, as the PBX would send it.
fn answer(fwd: &str, code: u16, to_tag: &str) -> String {
    let mut out = format!("SIP/2.0 {code} X\r\n");
    for l in fwd.split("\r\n").skip(1).take_while(|l| !l.is_empty()) {
        let lower = l.to_ascii_lowercase();
        if lower.starts_with("via:")
            || lower.starts_with("from:")
            || lower.starts_with("call-id:")
            || lower.starts_with("cseq:")
        {
            out.push_str(l);
            out.push_str("\r\n");
        } else if lower.starts_with("to:") {
            out.push_str(l);
            if !l.contains("tag=") {
                out.push_str(&format!(";tag={to_tag}"));
            }
            out.push_str("\r\n");
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

fn in_dialog(method: &str, id: &str, cseq: u32, branch: &str) -> String {
    format!(
        "{method} sip:pbx@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK{branch}\r\nFrom: <sip:a@x>;tag=f{id}\r\nTo: <sip:100@x>;tag=t\r\nCall-ID: {id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn answered_call_with_bye_drains() {
    let mut r = Rig::new();
    let fwd = r.send_to_pbx(&invite("a1"));
    let pbx = r.pbx;
    r.deliver(pbx, &answer(&fwd, 180, "t"));
    r.deliver(pbx, &answer(&fwd, 200, "t"));
    assert_eq!(r.proxy.active_calls(), 1);
    assert_eq!(r.limits.total_channels(), 5, "server, ip, route, carrier and gateway each hold the call");
    r.send_to_pbx(&in_dialog("ACK", "a1", 1, "ack"));
    let bye = r.send_to_pbx(&in_dialog("BYE", "a1", 2, "bye"));
    assert_eq!(r.limits.total_channels(), 0, "channels free at the BYE, not after its linger");
    r.deliver(pbx, &answer(&bye, 200, "t"));
    assert_eq!(r.proxy.active_calls(), 0);
    r.advance(Duration::from_secs(40));
    r.assert_empty();
}

/// A request from the PBX inside call `id` (From is the callee's tag, To the caller's).
fn from_callee(method: &str, id: &str, cseq: u32, branch: &str) -> String {
    format!(
        "{method} sip:a@192.0.2.10:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{branch}\r\nFrom: <sip:100@x>;tag=t\r\nTo: <sip:a@x>;tag=f{id}\r\nCall-ID: {id}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    )
}

/// What a finished call keeps (the compact linger): only keys and the BYE's answer, and
/// for T4 which peer each side is. It must still answer every retransmission as the full
/// transactions did, route what crossed the BYE, and then forget.
#[test]
fn a_finished_call_answers_its_retransmissions_from_what_it_keeps() {
    let mut r = Rig::new();
    let (pbx, caller) = (r.pbx, r.caller);
    let fwd = r.send_to_pbx(&invite("k1"));
    r.deliver(pbx, &answer(&fwd, 180, "t"));
    r.deliver(pbx, &answer(&fwd, 200, "t"));
    r.send_to_pbx(&in_dialog("ACK", "k1", 1, "ack"));
    let bye = r.send_to_pbx(&in_dialog("BYE", "k1", 2, "bye"));
    let first = r.deliver(pbx, &answer(&bye, 200, "t"));
    let ok =
        first.iter().find(|(to, _)| *to == caller).map(|(_, m)| m.clone()).expect("the BYE's 200 goes up");
    r.advance(Duration::from_secs(1));

    // The INVITE again (same branch): absorbed, never forwarded or answered (RFC 6026).
    assert!(r.deliver(caller, &invite("k1")).is_empty(), "INVITE retransmission after 2xx absorbed");
    // A CANCEL for it: 200 for the CANCEL, nothing to the PBX.
    let cancel = invite("k1").replacen("INVITE", "CANCEL", 1).replace("1 INVITE", "1 CANCEL");
    let out = r.deliver(caller, &cancel);
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(out[0].0 == caller && out[0].1.starts_with("SIP/2.0 200"), "{out:?}");
    // The BYE again: the very same 200, to the caller only.
    assert_eq!(r.deliver(caller, &in_dialog("BYE", "k1", 2, "bye")), vec![(caller, ok.clone())]);
    // Someone else replaying the BYE (same Via, other address) gets nothing: the stored
    // answer goes where the first one went.
    let stranger = Peer::udp("198.51.100.66:5060".parse().unwrap());
    let replay = r.deliver(stranger, &in_dialog("BYE", "k1", 2, "bye"));
    assert!(replay.iter().all(|(to, _)| *to == caller), "{replay:?}");

    // A request from the callee that crossed the BYE (within T4) still reaches the caller...
    let crossing = r.deliver(pbx, &from_callee("INFO", "k1", 7, "info1"));
    assert!(crossing.iter().any(|(to, m)| *to == caller && m.starts_with("INFO ")), "{crossing:?}");
    // ... later ones get 481, as from the caller itself (RFC 3261 §15.1.2), and go nowhere.
    r.advance(Duration::from_secs(5));
    let late = r.deliver(pbx, &from_callee("INFO", "k1", 8, "info2"));
    assert!(late.iter().all(|(to, m)| *to == pbx && m.starts_with("SIP/2.0 481")), "{late:?}");
    assert!(!late.is_empty());

    // Still within the 32 s linger: the BYE's answer is still there.
    r.advance(Duration::from_secs(20));
    assert_eq!(r.deliver(caller, &in_dialog("BYE", "k1", 2, "bye")), vec![(caller, ok)]);
    r.advance(Duration::from_secs(15));
    // The linger is over: that BYE is now a request for a dialog that does not exist.
    let after = r.deliver(caller, &in_dialog("BYE", "k1", 2, "bye"));
    assert!(after.iter().all(|(to, m)| *to == caller && m.starts_with("SIP/2.0 481")), "{after:?}");
    r.advance(Duration::from_secs(40));
    r.assert_empty();
}

/// A call hung up moments ago does not block its key: the same Call-ID and From tag may
/// start a new call at once, and the old call's short linger cannot end the new one.
#[test]
fn a_new_call_may_take_the_key_of_one_just_hung_up() {
    let mut r = Rig::new();
    let pbx = r.pbx;
    let fwd = r.send_to_pbx(&invite("n1"));
    r.deliver(pbx, &answer(&fwd, 200, "t"));
    r.send_to_pbx(&in_dialog("ACK", "n1", 1, "ack"));
    r.send_to_pbx(&in_dialog("BYE", "n1", 2, "bye"));
    r.advance(Duration::from_secs(1));
    let again = invite("n1").replace("branch=z9hG4bKn1", "branch=z9hG4bKn1b").replace("1 INVITE", "3 INVITE");
    let fwd = r.send_to_pbx(&again);
    r.deliver(pbx, &answer(&fwd, 200, "t"));
    assert_eq!(r.proxy.active_calls(), 1);
    r.advance(Duration::from_secs(10));
    assert_eq!(r.proxy.active_calls(), 1, "the first call's linger did not end the second");
    assert_eq!(r.limits.total_channels(), 5);
    let bye = r.send_to_pbx(&in_dialog("BYE", "n1", 4, "bye2"));
    assert!(bye.starts_with("BYE "));
    assert_eq!(r.limits.total_channels(), 0);
    r.advance(Duration::from_secs(40));
    r.assert_empty();
}

#[test]
fn busy_call_drains_after_ack() {
    let mut r = Rig::new();
    let fwd = r.send_to_pbx(&invite("b1"));
    let pbx = r.pbx;
    let out = r.deliver(pbx, &answer(&fwd, 486, "t"));
    assert!(out.iter().any(|(to, m)| *to == pbx && m.starts_with("ACK ")), "the proxy ACKs the 486");
    assert!(out.iter().any(|(to, m)| *to == r.caller && m.starts_with("SIP/2.0 486")));
    let ack = in_dialog("ACK", "b1", 1, "b1");
    let caller = r.caller;
    assert!(r.deliver(caller, &ack).is_empty(), "ACK for the 486 absorbed");
    r.advance(Duration::from_secs(40));
    r.assert_empty();
}

#[test]
fn unanswered_busy_is_retransmitted_until_timer_h_then_drains() {
    let mut r = Rig::new();
    let fwd = r.send_to_pbx(&invite("h1"));
    let pbx = r.pbx;
    r.deliver(pbx, &answer(&fwd, 486, "t"));
    // No ACK from the caller: Timer G re-sends the 486, Timer H ends it.
    let resent = r.advance(Duration::from_secs(40));
    assert!(
        resent.iter().filter(|(_, m)| m.starts_with("SIP/2.0 486")).count() >= 3,
        "Timer G retransmissions"
    );
    r.assert_empty();
}

#[test]
fn silent_gateway_times_out_and_drains() {
    let mut r = Rig::new();
    r.send_to_pbx(&invite("s1"));
    let out = r.advance(Duration::from_secs(3));
    assert!(
        out.iter().filter(|(to, m)| *to == r.pbx && m.starts_with("INVITE ")).count() >= 2,
        "Timer A retransmits"
    );
    assert!(out.iter().any(|(to, m)| *to == r.caller && m.starts_with("SIP/2.0 408")), "408 after Timer B");
    r.advance(Duration::from_secs(40));
    r.assert_empty();
}

#[test]
fn cancelled_call_drains() {
    let mut r = Rig::new();
    let fwd = r.send_to_pbx(&invite("c1"));
    let pbx = r.pbx;
    r.deliver(pbx, &answer(&fwd, 180, "t"));
    let cancel = invite("c1").replacen("INVITE", "CANCEL", 1).replace("1 INVITE", "1 CANCEL");
    let fwd_cancel = r.send_to_pbx(&cancel);
    assert!(fwd_cancel.starts_with("CANCEL "));
    r.deliver(pbx, &answer(&fwd_cancel, 200, "t"));
    r.deliver(pbx, &answer(&fwd, 487, "t"));
    let caller = r.caller;
    r.deliver(caller, &in_dialog("ACK", "c1", 1, "c1"));
    r.advance(Duration::from_secs(40));
    r.assert_empty();
}

#[test]
fn call_never_hung_up_expires_at_max_call_seconds() {
    let mut r = Rig::new();
    let fwd = r.send_to_pbx(&invite("m1"));
    let pbx = r.pbx;
    r.deliver(pbx, &answer(&fwd, 200, "t"));
    r.send_to_pbx(&in_dialog("ACK", "m1", 1, "ack"));
    r.advance(Duration::from_secs(60));
    assert_eq!(r.proxy.active_calls(), 1, "still up after a minute");
    r.advance(Duration::from_secs(3600));
    assert_eq!(r.proxy.active_calls(), 0, "released at max_call_seconds");
    r.assert_empty();
}

#[test]
fn ringing_forever_is_cancelled_by_timer_c() {
    let mut r = Rig::new();
    let fwd = r.send_to_pbx(&invite("r1"));
    let pbx = r.pbx;
    r.deliver(pbx, &answer(&fwd, 180, "t"));
    let out = r.advance(Duration::from_secs(181));
    assert!(out.iter().any(|(to, m)| *to == pbx && m.starts_with("CANCEL ")), "Timer C cancels the branch");
    // The gateway ignores the CANCEL too: after another Timer C the caller gets 408.
    let out = r.advance(Duration::from_secs(181));
    assert!(out.iter().any(|(to, m)| *to == r.caller && m.starts_with("SIP/2.0 408")));
    r.advance(Duration::from_secs(40));
    r.assert_empty();
}

/// The PBX's 200 for a forwarded INVITE, with a Contact (sluice's BYE goes there).
fn ok_with_contact(fwd: &str) -> String {
    answer(fwd, 200, "t")
        .replace("Content-Length: 0", "Contact: <sip:pbx@127.0.0.1:5070>\r\nContent-Length: 0")
}

#[test]
fn an_unacknowledged_2xx_ends_the_call_with_bye_to_both_sides() {
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut r = Rig::over(transport);
        let fwd = r
            .send_to_pbx(&invite("u1").replace("SIP/2.0/UDP", &format!("SIP/2.0/{}", transport.via_token())));
        let (pbx, caller) = (r.pbx, r.caller);
        r.deliver(pbx, &ok_with_contact(&fwd));
        assert_eq!(r.limits.total_channels(), 5);
        // No ACK. Just before 64*T1 the call still holds its channels...
        let early = r.advance(Duration::from_millis(31_900));
        assert!(!early.iter().any(|(_, m)| m.starts_with("BYE ")), "{transport:?}: no BYE before 64*T1");
        assert_eq!(r.limits.total_channels(), 5);
        // ...and a tick after it they are free and both sides are told.
        let out = r.advance(Duration::from_millis(200));
        assert_eq!(r.limits.total_channels(), 0, "{transport:?}: channels released at 64*T1");
        let to_pbx = out.iter().find(|(to, m)| *to == pbx && m.starts_with("BYE ")).map(|(_, m)| m.clone());
        let to_pbx = to_pbx.unwrap_or_else(|| panic!("{transport:?}: the PBX gets BYE: {out:?}"));
        assert!(to_pbx.starts_with("BYE sip:pbx@127.0.0.1:5070 SIP/2.0"), "{to_pbx}");
        assert!(to_pbx.contains("From: <sip:a@x>;tag=fu1") && to_pbx.contains(";tag=t"), "{to_pbx}");
        assert!(to_pbx.contains("CSeq: 2 BYE"), "{to_pbx}");
        assert!(out.iter().any(|(to, m)| *to == caller && m.starts_with("BYE ")), "the caller gets BYE too");
        // The PBX's 200 to sluice's BYE ends that transaction; a new call fits again.
        r.deliver(pbx, &answer(&to_pbx, 200, "t"));
        let again = r
            .send_to_pbx(&invite("u2").replace("SIP/2.0/UDP", &format!("SIP/2.0/{}", transport.via_token())));
        assert!(again.starts_with("INVITE "));
        r.deliver(pbx, &ok_with_contact(&again));
        r.send_to_pbx(&in_dialog("ACK", "u2", 1, "ack2"));
        let bye = r.send_to_pbx(&in_dialog("BYE", "u2", 2, "bye2"));
        r.deliver(pbx, &answer(&bye, 200, "t"));
        r.advance(Duration::from_secs(40));
        r.assert_empty();
    }
}

#[test]
fn a_late_ack_within_64_t1_keeps_the_call() {
    let mut r = Rig::new();
    let fwd = r.send_to_pbx(&invite("l1"));
    let pbx = r.pbx;
    r.deliver(pbx, &ok_with_contact(&fwd));
    r.advance(Duration::from_secs(31));
    r.send_to_pbx(&in_dialog("ACK", "l1", 1, "ack"));
    let out = r.advance(Duration::from_secs(60));
    assert!(!out.iter().any(|(_, m)| m.starts_with("BYE ")), "an ACKed call is not ended");
    assert_eq!(r.proxy.active_calls(), 1);
    assert_eq!(r.limits.total_channels(), 5);
}

#[test]
fn a_reinvite_2xx_without_ack_does_not_end_an_established_call() {
    let mut r = Rig::new();
    let fwd = r.send_to_pbx(&invite("x1"));
    let pbx = r.pbx;
    r.deliver(pbx, &ok_with_contact(&fwd));
    r.send_to_pbx(&in_dialog("ACK", "x1", 1, "ack"));
    let reinvite = r.send_to_pbx(&in_dialog("INVITE", "x1", 2, "re"));
    r.deliver(pbx, &answer(&reinvite, 200, "t"));
    let out = r.advance(Duration::from_secs(60));
    assert!(!out.iter().any(|(_, m)| m.starts_with("BYE ")), "the re-INVITE's missing ACK ends nothing");
    assert_eq!(r.proxy.active_calls(), 1);
}

#[test]
fn ringing_forever_frees_the_channel_and_tells_both_sides() {
    let mut r = Rig::new();
    let fwd = r.send_to_pbx(&invite("t1"));
    let (pbx, caller) = (r.pbx, r.caller);
    r.deliver(pbx, &answer(&fwd, 180, "t"));
    assert_eq!(r.limits.total_channels(), 5);
    let out = r.advance(Duration::from_secs(181));
    let cancel = out.iter().find(|(to, m)| *to == pbx && m.starts_with("CANCEL ")).map(|(_, m)| m.clone());
    let cancel = cancel.expect("Timer C sends CANCEL downstream");
    r.deliver(pbx, &answer(&cancel, 200, "t"));
    let out = r.deliver(pbx, &answer(&fwd, 487, "t"));
    assert!(out.iter().any(|(to, m)| *to == caller && m.starts_with("SIP/2.0 487")), "487 upstream");
    assert_eq!(r.limits.total_channels(), 0, "the channel is free at the final answer");
    r.deliver(caller, &in_dialog("ACK", "t1", 1, "t1"));
    r.advance(Duration::from_secs(40));
    r.assert_empty();
}

/// A config whose server takes one call per second.
fn one_cps_rig() -> Rig {
    let r = Rig::new();
    let text = CONFIG.replace("[limits]\n", "[limits]\ncps = 1\n");
    r.proxy.reload(Arc::new(Config::parse("t", &text).unwrap()));
    r
}

#[test]
fn refusals_under_pressure_carry_no_state_and_retransmissions_are_counted_once() {
    let mut r = one_cps_rig();
    r.proxy.set_stateless_above(0);
    let caller = r.caller;
    r.send_to_pbx(&invite("p0"));
    let tables = r.proxy.table_sizes();
    let first = r.deliver(caller, &invite("p1"));
    let refusal =
        first.iter().find(|(to, m)| *to == caller && m.starts_with("SIP/2.0 503")).map(|(_, m)| m.clone());
    let refusal = refusal.expect("503 CPS Limit reached");
    assert!(refusal.starts_with("SIP/2.0 503 CPS Limit reached"), "{refusal}");
    assert_eq!(r.proxy.table_sizes(), tables, "the refusal left no transaction, dialog or timer behind");
    // A second later the limit has room again; a retransmission of the refused INVITE still
    // gets the identical answer (not a new call), and is not counted again.
    r.advance(Duration::from_millis(1100));
    let again = r.deliver(caller, &invite("p1"));
    assert_eq!(again, vec![(caller, refusal)], "byte for byte the same answer");
    let stats = r.proxy_stats();
    assert_eq!(stats.calls_rejected_cps.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn refusals_below_the_threshold_are_transactions() {
    let mut r = one_cps_rig();
    let caller = r.caller;
    r.send_to_pbx(&invite("q0"));
    let before = r.proxy.transactions();
    let out = r.deliver(caller, &invite("q1"));
    assert!(out.iter().any(|(_, m)| m.starts_with("SIP/2.0 503")));
    assert_eq!(r.proxy.transactions(), before + 1, "Timer G needs the transaction");
    assert!(
        r.advance(Duration::from_secs(2)).iter().any(|(to, m)| *to == caller && m.starts_with("SIP/2.0 503")),
        "retransmitted until ACK"
    );
}
