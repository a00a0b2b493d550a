//! Bad input is answered (400) or dropped and counted; the next good call still goes through.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use sluice::peer::Transport;

/// A good call attempt after the abuse: the INVITE must still reach the PBX.
async fn good_call_still_works(
    caller: &mut Endpoint,
    pbx: &mut Endpoint,
    proxy: std::net::SocketAddr,
    id: &str,
) {
    caller.send(proxy, invite(caller, id, id, "100", proxy).as_bytes()).await;
    let (inv, from_proxy) = pbx.expect("INVITE ").await;
    pbx.send(from_proxy, respond(&inv, 200, "OK", Some("t"), "", Some(pbx.local)).as_bytes()).await;
    caller.expect("SIP/2.0 200").await;
}

#[tokio::test]
async fn garbage_truncated_and_oversize_are_dropped_and_counted() {
    let mut pbx = Endpoint::udp().await;
    let running = start(&config_with(&[pbx.uri()], "max_message_bytes = 4096", "")).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    let good = invite(&caller, "trunc", "t", "100", proxy);

    caller.send(proxy, b"\x00\x01\x02 this is not SIP \xff\xfe\r\n\r\n").await;
    caller.send(proxy, &good.as_bytes()[..good.len() / 3]).await; // cut inside the headers
    caller.send(proxy, &good.as_bytes()[..good.len() - 10]).await; // body shorter than Content-Length
    let mut big = good.clone().into_bytes();
    big.extend(std::iter::repeat_n(b'a', 5000));
    caller.send(proxy, &big).await;

    // The body-short INVITE has readable headers: it is answered 400, the rest dropped.
    let (resp, _) = caller.expect("SIP/2.0 ").await;
    assert_eq!(status(&resp), 400, "{resp}");
    assert!(caller.recv_within(Duration::from_millis(200)).await.is_none(), "nothing else is answered");
    assert!(pbx.recv_within(Duration::from_millis(100)).await.is_none(), "nothing reaches the PBX");
    let stats = running.shared.stats.clone();
    assert_eq!(stats.malformed_udp.load(Ordering::Relaxed), 3, "garbage, truncated headers, short body");
    assert_eq!(stats.oversize.load(Ordering::Relaxed), 1);

    good_call_still_works(&mut caller, &mut pbx, proxy, "after-garbage").await;
    running.stop().await;
}

#[tokio::test]
async fn missing_mandatory_headers_get_400_naming_the_problem() {
    let mut pbx = Endpoint::udp().await;
    let running = start(&config_with(&[pbx.uri()], "", "")).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    let good = invite(&caller, "hdrs", "h", "100", proxy);
    let from_line = format!("From: \"Alice\" <sip:alice@{}>;tag=caller-hdrs\r\n", caller.local);
    for cut in ["Call-ID: hdrs\r\n", "CSeq: 1 INVITE\r\n", from_line.as_str()] {
        let broken = good.replace(cut, "");
        assert_ne!(broken, good);
        caller.send(proxy, broken.as_bytes()).await;
        // Without Call-ID, CSeq or From no response can be built: silently dropped.
        assert!(caller.recv_within(Duration::from_millis(150)).await.is_none(), "dropped without {cut}");
    }
    let mismatched = good.replace("CSeq: 1 INVITE", "CSeq: 1 BYE");
    caller.send(proxy, mismatched.as_bytes()).await;
    let (resp, _) = caller.expect("SIP/2.0 ").await;
    assert_eq!(resp.lines().next(), Some("SIP/2.0 400 CSeq Method Mismatch"));
    let bad_uri = good.replace("INVITE sip:100@", "INVITE foo:100@");
    caller.send(proxy, bad_uri.as_bytes()).await;
    let (resp, _) = caller.expect("SIP/2.0 ").await;
    assert_eq!(status(&resp), 416);
    assert!(pbx.recv_within(Duration::from_millis(100)).await.is_none());
    assert_eq!(running.shared.stats.malformed_udp.load(Ordering::Relaxed), 5);
    good_call_still_works(&mut caller, &mut pbx, proxy, "after-missing").await;
    running.stop().await;
}

#[tokio::test]
async fn bad_content_length_on_tcp_closes_the_connection() {
    let mut pbx = Endpoint::udp().await;
    let running = start(&config_with(&[pbx.uri()], "", "")).await;
    let tcp = running.addr(Transport::Tcp).unwrap();
    let mut caller = Endpoint::tcp_client(tcp).await;
    let bad = invite(&caller, "badcl", "b", "100", tcp)
        .replace(&format!("Content-Length: {}", SDP.len()), "Content-Length: nope");
    caller.send(tcp, bad.as_bytes()).await;
    assert!(caller.closed_within(Duration::from_secs(2)).await, "stream cannot resync: closed");
    assert_eq!(running.shared.stats.malformed_tcp.load(Ordering::Relaxed), 1);
    let mut caller = Endpoint::tcp_client(tcp).await;
    // A missing Content-Length on a stream is a framing error too.
    let no_cl =
        invite(&caller, "nocl", "n", "100", tcp).replace(&format!("Content-Length: {}\r\n", SDP.len()), "");
    caller.send(tcp, no_cl.as_bytes()).await;
    assert!(caller.closed_within(Duration::from_secs(2)).await);
    let mut caller = Endpoint::tcp_client(tcp).await;
    good_call_still_works(&mut caller, &mut pbx, tcp, "after-badcl").await;
    running.stop().await;
}

#[tokio::test]
async fn pipelined_and_split_tcp_messages_are_framed() {
    let mut pbx = Endpoint::udp().await;
    let running = start(&config_with(&[pbx.uri()], "", "")).await;
    let tcp = running.addr(Transport::Tcp).unwrap();
    let mut caller = Endpoint::tcp_client(tcp).await;
    let one = invite(&caller, "pipe-1", "p1", "100", tcp);
    let two = invite(&caller, "pipe-2", "p2", "200", tcp);
    let both = format!("\r\n\r\n{one}{two}");
    let (a, b) = both.as_bytes().split_at(one.len() / 2);
    caller.send(tcp, a).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    caller.send(tcp, b).await;
    let (first, _) = pbx.expect("INVITE ").await;
    let (second, _) = pbx.expect("INVITE ").await;
    assert_eq!(header(&first, "Call-ID"), Some("pipe-1"));
    assert_eq!(header(&second, "Call-ID"), Some("pipe-2"));
    running.stop().await;
}
