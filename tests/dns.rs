//! DNS gateways against a name server the test runs on loopback (built on hickory-proto):
//! NAPTR -> SRV with two targets of different priority (the first silent: the call fails
//! over to the second), an A record whose TTL ends and moves the gateway, and a name that
//! does not exist (the route's next carrier takes the call).

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, NAPTR, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use sluice::peer::Transport;

type Zone = Arc<Mutex<HashMap<(String, RecordType), Vec<(u32, RData)>>>>;

/// A tiny authoritative server: answers from `zone`, NXDOMAIN for names it has nothing for,
/// an empty answer (NODATA) for a known name and another type.
async fn name_server(zone: Zone) -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else { return };
            let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
            let mut reply = Message::new();
            reply.set_id(query.id()).set_message_type(MessageType::Response).set_authoritative(true);
            reply.set_recursion_desired(query.recursion_desired()).set_recursion_available(true);
            if let Some(q) = query.queries().first() {
                reply.add_query(q.clone());
                let name = q.name().to_utf8().trim_end_matches('.').to_ascii_lowercase();
                let zone = zone.lock().unwrap();
                match zone.get(&(name.clone(), q.query_type())) {
                    Some(records) => {
                        for (ttl, rdata) in records {
                            reply.add_answer(Record::from_rdata(q.name().clone(), *ttl, rdata.clone()));
                        }
                    }
                    None if zone.keys().any(|(n, _)| *n == name) => {}
                    None => {
                        reply.set_response_code(ResponseCode::NXDomain);
                    }
                }
            }
            if let Ok(bytes) = reply.to_vec() {
                let _ = socket.send_to(&bytes, from).await;
            }
        }
    });
    addr
}

fn name(s: &str) -> Name {
    Name::from_ascii(format!("{s}.")).unwrap()
}

fn a(ip: &str) -> RData {
    match ip.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(_) => unreachable!("IPv4 in these tests"),
    }
}

fn config(dns: SocketAddr, carriers: &str, route: &str) -> String {
    format!(
        "[server]\nlisten = [\"udp://127.0.0.1:0\"]\ndns = [\"{dns}\"]\ngateway_timeout_ms = 600\nadmin = \"127.0.0.1:0\"\n\
         [log]\nlevel = \"warn\"\n{carriers}\n[[route]]\nprefix = \"\"\ncarriers = [{route}]\n"
    )
}

/// NAPTR says SIP over UDP at `_sip._udp.carrier.test`; its SRV has priority 10 (silent)
/// and priority 20 (answers). The call goes to the first, times out there, and is answered
/// by the second; /status lists both resolved targets.
#[tokio::test]
async fn srv_priorities_are_tried_in_order_with_failover() {
    let silent = Endpoint::udp().await;
    let answering = Endpoint::udp().await;
    let (p1, p2) = (silent.local.port(), answering.local.port());
    let silent_seen = spawn_pbx(silent, Pbx::Silent);
    let answered_seen = spawn_pbx(answering, Pbx::Answer);
    let zone: Zone = Arc::default();
    {
        let mut z = zone.lock().unwrap();
        let naptr = NAPTR::new(
            10,
            10,
            b"s".to_vec().into(),
            b"SIP+D2U".to_vec().into(),
            Box::default(),
            name("_sip._udp.carrier.test"),
        );
        z.insert(("carrier.test".into(), RecordType::NAPTR), vec![(300, RData::NAPTR(naptr))]);
        z.insert(
            ("_sip._udp.carrier.test".into(), RecordType::SRV),
            vec![
                (300, RData::SRV(SRV::new(20, 10, p2, name("gw2.carrier.test")))),
                (300, RData::SRV(SRV::new(10, 10, p1, name("gw1.carrier.test")))),
            ],
        );
        z.insert(("gw1.carrier.test".into(), RecordType::A), vec![(300, a("127.0.0.1"))]);
        z.insert(("gw2.carrier.test".into(), RecordType::A), vec![(300, a("127.0.0.1"))]);
    }
    let dns = name_server(zone).await;
    let text = config(dns, "[[carrier]]\nname = \"dns\"\ngateways = [\"sip:carrier.test\"]\n", "\"dns\"");
    let running = start(&text).await;
    let gateways: Vec<String> =
        running.shared.config().carriers[0].gateways.iter().map(|g| g.uri.clone()).collect();
    assert_eq!(
        gateways,
        vec![
            format!("sip:carrier.test -> udp://127.0.0.1:{p1}"),
            format!("sip:carrier.test -> udp://127.0.0.1:{p2}")
        ],
        "both targets, by priority"
    );
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    caller.send(proxy, invite(&caller, "srv-1", "srv-1", "100", proxy).as_bytes()).await;
    let got = finals(&mut caller, Duration::from_millis(2500)).await;
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![200], "{got:?}");
    assert!(count(&silent_seen, "INVITE") >= 1, "priority 10 was tried first");
    assert_eq!(count(&answered_seen, "INVITE"), 1, "then priority 20");
    let status = http(running.admin.unwrap(), "GET", "/status").await.1;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        status["carriers"][0]["gateways"].as_array().unwrap().len(),
        2,
        "one entry per resolved target"
    );
    hang_up_answered(&mut caller, proxy, &got).await;
}

/// An A record with a 1 s TTL moves from 127.0.0.1 to 127.0.0.2 (same port): once the TTL
/// has run out, new calls go to the new address.
#[tokio::test]
async fn a_ttl_expiry_moves_the_gateway() {
    let old = Endpoint::udp().await;
    let port = old.local.port();
    // The same port on another loopback address.
    let new = Endpoint::udp_at(&format!("127.0.0.2:{port}")).await;
    let old_seen = spawn_pbx(old, Pbx::Busy);
    let new_seen = spawn_pbx(new, Pbx::Busy);
    let zone: Zone = Arc::default();
    zone.lock().unwrap().insert(("moving.test".into(), RecordType::A), vec![(1, a("127.0.0.1"))]);
    let dns = name_server(zone.clone()).await;
    let text = config(
        dns,
        &format!("[[carrier]]\nname = \"dns\"\ngateways = [\"sip:moving.test:{port}\"]\n"),
        "\"dns\"",
    );
    let running = start(&text).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    caller.send(proxy, invite(&caller, "ttl-1", "ttl-1", "100", proxy).as_bytes()).await;
    assert_eq!(finals(&mut caller, Duration::from_millis(800)).await.first().map(|f| f.0), Some(486));
    assert_eq!((count(&old_seen, "INVITE"), count(&new_seen, "INVITE")), (1, 0));

    zone.lock().unwrap().insert(("moving.test".into(), RecordType::A), vec![(1, a("127.0.0.2"))]);
    let moved = format!("sip:moving.test:{port} -> udp://127.0.0.2:{port}");
    eventually(&running, "the gateway moved", |n| {
        n.config().carriers[0].gateways.iter().any(|g| g.uri == moved)
    })
    .await;
    caller.send(proxy, invite(&caller, "ttl-2", "ttl-2", "100", proxy).as_bytes()).await;
    assert_eq!(finals(&mut caller, Duration::from_millis(800)).await.first().map(|f| f.0), Some(486));
    assert_eq!(
        (count(&old_seen, "INVITE"), count(&new_seen, "INVITE")),
        (1, 1),
        "the new address got the call"
    );
}

/// A gateway name that does not exist gives its carrier no gateway: the route's next
/// carrier takes the call at once (no hang, no timeout).
#[tokio::test]
async fn nxdomain_fails_over_to_the_next_carrier() {
    let backup = Endpoint::udp().await;
    let uri = backup.uri();
    let seen = spawn_pbx(backup, Pbx::Busy);
    let dns = name_server(Arc::default()).await;
    let carriers = format!(
        "[[carrier]]\nname = \"gone\"\ngateways = [\"sip:gone.test\"]\n[[carrier]]\nname = \"backup\"\ngateways = [\"{uri}\"]\n"
    );
    // A long gateway timeout: had the call waited on the missing carrier, it would not be
    // answered within the test's wait.
    let text = config(dns, &carriers, "\"gone\", \"backup\"")
        .replace("gateway_timeout_ms = 600", "gateway_timeout_ms = 30000");
    let running = start(&text).await;
    assert!(
        running.shared.config().carriers[0].gateways.is_empty(),
        "no target for a name that does not exist"
    );
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    caller.send(proxy, invite(&caller, "nx-1", "nx-1", "100", proxy).as_bytes()).await;
    let (answer, _) = caller.expect("SIP/2.0 486").await;
    assert_eq!(header(&answer, "Call-ID"), Some("nx-1"));
    assert_eq!(count(&seen, "INVITE"), 1);
}

#[test]
fn gateway_uris_are_checked() {
    let base = "[server]\nlisten = [\"udp://127.0.0.1:5060\"]\n[[carrier]]\nname = \"a\"\ngateways = [\"GW\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"a\"]\n";
    for bad in
        ["sip:", "sip:user@host", "sip:h;transport=sctp", "sips:h;transport=udp", "sip:h:99999", "sips:h"]
    {
        let errs = sluice::config::Config::parse("t.toml", &base.replace("GW", bad));
        assert!(errs.is_err(), "{bad} accepted");
        assert_eq!(errs.unwrap_err().0[0].key, "carrier[0].gateways[0]", "{bad}");
    }
    let ok =
        sluice::config::Config::parse("t.toml", &base.replace("GW", "sip:carrier.example.net;transport=udp"))
            .unwrap();
    assert!(ok.carriers[0].gateways.is_empty(), "resolved later, by DNS");
}

/// A zone is the carrier's to write: an answer with many records becomes at most 16
/// gateways (25 A records here: what fits in a 512-byte UDP answer).
#[tokio::test]
async fn a_huge_answer_is_bounded() {
    let zone: Zone = Arc::default();
    let records: Vec<(u32, RData)> = (1..=25u8).map(|i| (300, a(&format!("127.0.1.{i}")))).collect();
    zone.lock().unwrap().insert(("big.test".into(), RecordType::A), records);
    let dns = name_server(zone).await;
    let running =
        start(&config(dns, "[[carrier]]\nname = \"big\"\ngateways = [\"sip:big.test:5060\"]\n", "\"big\""))
            .await;
    let n = running.shared.config().carriers[0].gateways.len();
    assert_eq!(n, 16, "bounded");
}
