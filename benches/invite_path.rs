//! Per-INVITE work on the data path: scan, route, edit and serialise a ~1 KB INVITE with
//! SDP, and a whole call (INVITE, 100, 180, 200, ACK, BYE, 200) through the sans-IO core.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::config::Config;
use sluice::peer::{Peer, Transport};
use sluice::proxy::Action;
use sluice::proxy::forward::{self, RequestEdits};
use sluice::proxy::identity::Identity;
use sluice::proxy::node::Node;
use sluice::sip::uri::{Uri, dialed_number};
use sluice::stats::Stats;
use tokio::time::Instant;

const CONFIG: &str = "[server]\nlisten = [\"udp://127.0.0.1:5060\", \"tcp://127.0.0.1:5060\"]\n[[carrier]]\nname = \"pbx\"\ngateways = [\"udp://127.0.0.1:5070\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"pbx\"]\n[[route]]\nprefix = \"1555\"\ncarriers = [\"pbx\"]\n";

const SDP: &str = "v=0\r\no=user1 53655765 2353687637 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0 8 18 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:18 G729/8000\r\na=fmtp:18 annexb=no\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n";

fn invite(call_id: &str) -> Vec<u8> {
    format!(
        "INVITE sip:+15551230000@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-{call_id};rport\r\n\
Max-Forwards: 70\r\n\
From: \"Alice Example\" <sip:+15550001111@192.0.2.10>;tag=a73kszlfl\r\n\
To: <sip:+15551230000@127.0.0.1>\r\n\
Call-ID: {call_id}\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:+15550001111@192.0.2.10:5060>\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, INFO, UPDATE\r\n\
Supported: replaces, timer\r\n\
User-Agent: bench-phone/1.0\r\n\
P-Asserted-Identity: <sip:+15550001111@192.0.2.10>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    )
    .into_bytes()
}

fn per_invite(c: &mut Criterion) {
    let config = Config::parse("bench", CONFIG).unwrap();
    let me = Identity::new(&config);
    let msg = invite("bench-call-1@192.0.2.10");
    let source = Peer::udp("192.0.2.10:5060".parse().unwrap());
    let mut g = c.benchmark_group("invite");
    g.throughput(Throughput::Bytes(msg.len() as u64));
    g.bench_function("scan", |b| {
        b.iter(|| black_box(sluice::sip::parse(black_box(&msg)).unwrap().headers.len()))
    });
    g.bench_function("scan_route_edit_serialise", |b| {
        b.iter(|| {
            let m = sluice::sip::parse(black_box(&msg)).unwrap();
            let uri = Uri::parse(m.request_uri().unwrap()).unwrap();
            let (_, route) = config.routes.lookup(dialed_number(uri.user.unwrap())).unwrap();
            let edits = RequestEdits {
                out: Transport::Udp,
                branch: b"z9hG4bKsl0123456789abcdef.1",
                record_route: true,
                own_realm: None,
                path_flow: None,
            };
            let (out, _) = forward::request(&m, source, &me, &edits);
            black_box((route.carriers.len(), out))
        })
    });
    g.finish();
}

/// A whole call through the core: every message the proxy handles for one call.
fn whole_call(c: &mut Criterion) {
    let config = Arc::new(Config::parse("bench", CONFIG).unwrap());
    let proxy = Node::new(config, Arc::new(Stats::default()), 7);
    let caller = Peer::udp("192.0.2.10:5060".parse().unwrap());
    let pbx = Peer::udp("127.0.0.1:5070".parse().unwrap());
    let mut now = Instant::now();
    let mut out: Vec<Action> = Vec::with_capacity(8);
    let mut n: u64 = 0;
    let mut g = c.benchmark_group("core");
    g.throughput(Throughput::Elements(1));
    g.bench_function("whole_call_7_messages", |b| {
        b.iter(|| {
            n += 1;
            let call_id = format!("bench-{n}@192.0.2.10");
            out.clear();
            proxy.on_message(now, caller, &invite(&call_id), &mut out);
            let Some(fwd) = out.iter().filter_map(Action::as_send).find(|(to, _)| **to == pbx).map(|(_, d)| d.clone()) else {
                panic!("not forwarded")
            };
            let fwd = String::from_utf8_lossy(&fwd).into_owned();
            let vias: String = fwd.lines().filter(|l| l.starts_with("Via:")).map(|l| format!("{l}\r\n")).collect();
            let common = format!("From: \"Alice Example\" <sip:+15550001111@192.0.2.10>;tag=a73kszlfl\r\nCall-ID: {call_id}\r\n");
            let to = "To: <sip:+15551230000@127.0.0.1>;tag=pbx1\r\n";
            for (code, reason) in [(180, "Ringing"), (200, "OK")] {
                let resp = format!("SIP/2.0 {code} {reason}\r\n{vias}{common}{to}CSeq: 1 INVITE\r\nContact: <sip:pbx@127.0.0.1:5070>\r\nContent-Length: 0\r\n\r\n");
                proxy.on_message(now, pbx, resp.as_bytes(), &mut out);
            }
            let ack = format!("ACK sip:pbx@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-ack-{n}\r\nMax-Forwards: 70\r\n{common}{to}CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n");
            proxy.on_message(now, caller, ack.as_bytes(), &mut out);
            let bye = format!("BYE sip:pbx@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK-bye-{n}\r\nMax-Forwards: 70\r\n{common}{to}CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n");
            out.clear();
            proxy.on_message(now, caller, bye.as_bytes(), &mut out);
            let Some(fwd_bye) = out.iter().filter_map(Action::as_send).find(|(to, _)| **to == pbx).map(|(_, d)| d.clone()) else {
                panic!("BYE not forwarded")
            };
            let fwd_bye = String::from_utf8_lossy(&fwd_bye).into_owned();
            let bye_vias: String = fwd_bye.lines().filter(|l| l.starts_with("Via:")).map(|l| format!("{l}\r\n")).collect();
            let ok = format!("SIP/2.0 200 OK\r\n{bye_vias}{common}{to}CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n");
            proxy.on_message(now, pbx, ok.as_bytes(), &mut out);
            if n % 1024 == 0 {
                // Let transactions and dialogs expire, as the timer task would.
                now += Duration::from_secs(40);
                proxy.on_timer(now, &mut out);
            }
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, per_invite, whole_call);
criterion_main!(benches);
