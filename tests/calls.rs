//! Call flows over real sockets: the proxy in-process, caller and PBX played by the test.

mod common;

use std::time::Duration;

use common::*;
use sluice::peer::Transport;

/// INVITE/100/180/200/ACK/BYE/200 from `caller` to `pbx`, asserting what each side sees.
async fn full_call(caller_tcp: bool, pbx_tcp: bool) {
    let mut pbx = if pbx_tcp { Endpoint::tcp_server().await } else { Endpoint::udp().await };
    let running = start(&config_with(&[pbx.uri()], "", "")).await;
    let proxy = running.addr(if caller_tcp { Transport::Tcp } else { Transport::Udp }).unwrap();
    let mut caller = if caller_tcp { Endpoint::tcp_client(proxy).await } else { Endpoint::udp().await };
    let call_id = format!("full-{caller_tcp}-{pbx_tcp}");

    caller.send(proxy, invite(&caller, &call_id, "inv1", "15551230000", proxy).as_bytes()).await;
    let (trying, _) = caller.expect("SIP/2.0 ").await;
    assert_eq!(status(&trying), 100, "100 Trying comes first, at once");

    let (inv, from_proxy) = pbx.expect("INVITE ").await;
    let vias = headers(&inv, "Via");
    assert_eq!(vias.len(), 2, "proxy Via on top of the caller's: {inv}");
    assert!(
        vias[0].starts_with(&format!("SIP/2.0/{} 127.0.0.1:{}", pbx.via_transport(), proxy.port())),
        "{}",
        vias[0]
    );
    assert!(vias[0].contains("branch=z9hG4bK"), "RFC 3261 branch");
    assert!(vias[1].contains(&format!("rport={}", caller.local.port())), "rport filled in: {}", vias[1]);
    assert_eq!(header(&inv, "Max-Forwards"), Some("69"));
    let rr = headers(&inv, "Record-Route");
    assert_eq!(
        rr.len(),
        if caller_tcp == pbx_tcp { 1 } else { 2 },
        "double Record-Route only across transports: {rr:?}"
    );
    assert!(rr[0].contains(";lr"));

    pbx.send(from_proxy, respond(&inv, 180, "Ringing", Some("pbx1"), "", Some(pbx.local)).as_bytes()).await;
    let (ringing, _) = caller.expect("SIP/2.0 180").await;
    assert_eq!(headers(&ringing, "Via").len(), 1, "proxy Via removed on the way back");
    pbx.send(from_proxy, respond(&inv, 200, "OK", Some("pbx1"), "", Some(pbx.local)).as_bytes()).await;
    let (ok, _) = caller.expect("SIP/2.0 200").await;
    assert_eq!(tag_of(header(&ok, "To").unwrap()), Some("pbx1"));
    eventually(&running, "call tracked", |p| p.active_calls() == 1).await;

    let mut route: Vec<&str> = headers(&ok, "Record-Route");
    route.reverse();
    let caller_tag = format!("caller-{call_id}");
    let target = format!("sip:pbx@{}", pbx.local);
    caller
        .send(
            proxy,
            in_dialog("ACK", &caller, &target, &call_id, &caller_tag, "pbx1", 1, &route, "ack1").as_bytes(),
        )
        .await;
    let (ack, _) = pbx.expect("ACK ").await;
    assert!(header(&ack, "Route").is_none(), "the proxy pops its own Route entries");
    caller
        .send(
            proxy,
            in_dialog("BYE", &caller, &target, &call_id, &caller_tag, "pbx1", 2, &route, "bye1").as_bytes(),
        )
        .await;
    let (bye, from_proxy) = pbx.expect("BYE ").await;
    pbx.send(from_proxy, respond(&bye, 200, "OK", None, "", None).as_bytes()).await;
    let (bye_ok, _) = caller.expect("SIP/2.0 200").await;
    assert!(header(&bye_ok, "CSeq").unwrap().ends_with("BYE"));
    eventually(&running, "no active calls after BYE", |p| p.active_calls() == 0).await;
    running.stop().await;
}

#[tokio::test]
async fn full_call_over_udp() {
    full_call(false, false).await;
}

#[tokio::test]
async fn full_call_over_tcp() {
    full_call(true, true).await;
}

#[tokio::test]
async fn full_call_udp_caller_tcp_pbx() {
    full_call(false, true).await;
}

/// Sets up an answered call and returns (running, caller, pbx, proxy addr, pbx-side proxy addr, call-id, ok).
async fn answered_call(
    call_id: &str,
) -> (sluice::server::Running, Endpoint, Endpoint, std::net::SocketAddr, std::net::SocketAddr, String) {
    let mut pbx = Endpoint::udp().await;
    let running = start(&config_with(&[pbx.uri()], "", "")).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    caller.send(proxy, invite(&caller, call_id, "i", "100", proxy).as_bytes()).await;
    let (inv, from_proxy) = pbx.expect("INVITE ").await;
    pbx.send(from_proxy, respond(&inv, 200, "OK", Some("pbx1"), "", Some(pbx.local)).as_bytes()).await;
    let (ok, _) = caller.expect("SIP/2.0 200").await;
    (running, caller, pbx, proxy, from_proxy, ok)
}

#[tokio::test]
async fn pbx_hangs_up() {
    let call_id = "pbx-hangup";
    let (running, mut caller, mut pbx, proxy, from_proxy, ok) = answered_call(call_id).await;
    let route: Vec<&str> = headers(&ok, "Record-Route");
    let caller_tag = format!("caller-{call_id}");
    // The PBX's BYE goes to the proxy (its route set) and on to the caller.
    let bye = in_dialog(
        "BYE",
        &pbx,
        &format!("sip:alice@{}", caller.local),
        call_id,
        "pbx1",
        &caller_tag,
        1,
        &route,
        "pbxbye",
    );
    pbx.send(from_proxy, bye.as_bytes()).await;
    let (bye_at_caller, src) = caller.expect("BYE ").await;
    assert_eq!(src, proxy, "the BYE reaches the caller through the proxy");
    assert_eq!(headers(&bye_at_caller, "Via").len(), 2);
    caller.send(src, respond(&bye_at_caller, 200, "OK", None, "", None).as_bytes()).await;
    let (ok_at_pbx, _) = pbx.expect("SIP/2.0 200").await;
    assert_eq!(headers(&ok_at_pbx, "Via").len(), 1);
    eventually(&running, "call ended", |p| p.active_calls() == 0).await;
    running.stop().await;
}

#[tokio::test]
async fn devices_that_ignore_record_route_are_routed_by_dialog_state() {
    // SIPp's built-in scenarios send ACK and BYE without Route headers.
    let call_id = "no-route-set";
    let (running, mut caller, mut pbx, proxy, _, _) = answered_call(call_id).await;
    let caller_tag = format!("caller-{call_id}");
    let target = format!("sip:pbx@{}", pbx.local);
    caller
        .send(proxy, in_dialog("BYE", &caller, &target, call_id, &caller_tag, "pbx1", 2, &[], "b").as_bytes())
        .await;
    pbx.expect("BYE ").await;
    running.stop().await;
}

#[tokio::test]
async fn unknown_dialog_gets_481_and_goes_nowhere() {
    let mut pbx = Endpoint::udp().await;
    let running = start(&config_with(&[pbx.uri()], "", "")).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    let bye = in_dialog("BYE", &caller, "sip:victim@192.0.2.99", "nodialog", "a", "b", 1, &[], "x");
    caller.send(proxy, bye.as_bytes()).await;
    let (resp, _) = caller.expect("SIP/2.0 ").await;
    assert_eq!(status(&resp), 481);
    assert!(pbx.recv_within(Duration::from_millis(200)).await.is_none(), "nothing relayed");
    running.stop().await;
}

#[tokio::test]
async fn retransmissions_are_absorbed() {
    let mut pbx = Endpoint::udp().await;
    let running = start(&config_with(&[pbx.uri()], "", "")).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    let inv = invite(&caller, "retrans", "r1", "100", proxy);
    caller.send(proxy, inv.as_bytes()).await;
    caller.expect("SIP/2.0 100").await;
    let (pbx_inv, from_proxy) = pbx.expect("INVITE ").await;
    pbx.send(from_proxy, respond(&pbx_inv, 180, "Ringing", Some("t"), "", None).as_bytes()).await;
    caller.expect("SIP/2.0 180").await;
    // The caller retransmits: it gets the last provisional again, the PBX sees nothing new.
    caller.send(proxy, inv.as_bytes()).await;
    caller.expect("SIP/2.0 180").await;
    assert!(
        pbx.recv_within(Duration::from_millis(300)).await.is_none(),
        "retransmitted INVITE must not reach the PBX"
    );

    // A final non-2xx: retransmitted INVITE gets the final again, ACK is absorbed.
    pbx.send(from_proxy, respond(&pbx_inv, 486, "Busy Here", Some("t"), "", None).as_bytes()).await;
    let (busy, _) = caller.expect("SIP/2.0 486").await;
    let (proxy_ack, _) = pbx.expect("ACK ").await;
    assert!(header(&proxy_ack, "CSeq").unwrap().ends_with("ACK"), "the proxy ACKs the 486 itself");
    caller.send(proxy, inv.as_bytes()).await;
    let (again, _) = caller.expect("SIP/2.0 486").await;
    assert_eq!(busy, again, "same final response re-sent");
    let ack = format!(
        "ACK sip:100@{proxy} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKr1;rport\r\nMax-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@{l}>;tag=caller-retrans\r\nTo: <sip:100@{proxy}>;tag=t\r\nCall-ID: retrans\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        l = caller.local
    );
    caller.send(proxy, ack.as_bytes()).await;
    assert!(
        pbx.recv_within(Duration::from_millis(300)).await.is_none(),
        "caller's ACK for a non-2xx stays at the proxy"
    );
    eventually(&running, "busy call freed", |p| p.active_calls() == 0).await;
    running.stop().await;
}

#[tokio::test]
async fn cancel_gets_487() {
    let mut pbx = Endpoint::udp().await;
    let running = start(&config_with(&[pbx.uri()], "", "")).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    caller.send(proxy, invite(&caller, "cancelme", "c1", "100", proxy).as_bytes()).await;
    let (inv, from_proxy) = pbx.expect("INVITE ").await;
    pbx.send(from_proxy, respond(&inv, 180, "Ringing", Some("t"), "", None).as_bytes()).await;
    caller.expect("SIP/2.0 180").await;
    let cancel = format!(
        "CANCEL sip:100@{proxy} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKc1;rport\r\nMax-Forwards: 70\r\nFrom: \"Alice\" <sip:alice@{l}>;tag=caller-cancelme\r\nTo: <sip:100@{proxy}>\r\nCall-ID: cancelme\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
        l = caller.local
    );
    caller.send(proxy, cancel.as_bytes()).await;
    let (cancel_ok, _) = caller.expect("SIP/2.0 200").await;
    assert!(header(&cancel_ok, "CSeq").unwrap().ends_with("CANCEL"));
    let (pbx_cancel, _) = pbx.expect("CANCEL ").await;
    let inv_branch = headers(&inv, "Via")[0].to_string();
    assert_eq!(
        headers(&pbx_cancel, "Via"),
        vec![inv_branch.as_str()],
        "CANCEL carries the INVITE's branch, only the proxy's Via"
    );
    pbx.send(from_proxy, respond(&pbx_cancel, 200, "OK", Some("t"), "", None).as_bytes()).await;
    pbx.send(from_proxy, respond(&inv, 487, "Request Terminated", Some("t"), "", None).as_bytes()).await;
    let (terminated, _) = caller.expect("SIP/2.0 487").await;
    assert!(header(&terminated, "CSeq").unwrap().ends_with("INVITE"));
    pbx.expect("ACK ").await;
    eventually(&running, "cancelled call freed", |p| p.active_calls() == 0).await;
    running.stop().await;
}

#[tokio::test]
async fn cancel_for_unknown_transaction_gets_481() {
    let pbx = Endpoint::udp().await;
    let running = start(&config_with(&[pbx.uri()], "", "")).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    let cancel = format!(
        "CANCEL sip:100@{proxy} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKnone\r\nFrom: <sip:a@{l}>;tag=x\r\nTo: <sip:100@{proxy}>\r\nCall-ID: none\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n",
        l = caller.local
    );
    caller.send(proxy, cancel.as_bytes()).await;
    let (resp, _) = caller.expect("SIP/2.0 ").await;
    assert_eq!(status(&resp), 481);
    running.stop().await;
}

#[tokio::test]
async fn max_forwards_zero_gets_483() {
    let mut pbx = Endpoint::udp().await;
    let running = start(&config_with(&[pbx.uri()], "", "")).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    let inv = invite(&caller, "hops", "h", "100", proxy).replace("Max-Forwards: 70", "Max-Forwards: 0");
    caller.send(proxy, inv.as_bytes()).await;
    let (resp, _) = caller.expect("SIP/2.0 ").await;
    assert_eq!(status(&resp), 483);
    assert!(tag_of(header(&resp, "To").unwrap()).is_some(), "a final response carries a To tag");
    assert!(pbx.recv_within(Duration::from_millis(200)).await.is_none());
    running.stop().await;
}

#[tokio::test]
async fn a_request_looping_through_the_proxy_gets_482() {
    // The only gateway is the proxy itself: the INVITE comes back with our own Via.
    let port = free_port();
    let config = format!(
        "[server]\nlisten = [\"udp://127.0.0.1:{port}\"]\n[log]\nlevel = \"error\"\n[[carrier]]\nname = \"self\"\ngateways = [\"udp://127.0.0.1:{port}\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"self\"]\n"
    );
    let running = start(&config).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    caller.send(proxy, invite(&caller, "loop", "l", "100", proxy).as_bytes()).await;
    let (resp, _) = caller.expect("SIP/2.0 4").await;
    assert_eq!(status(&resp), 482, "{resp}");
    assert_eq!(headers(&resp, "Via").len(), 1);
    running.stop().await;
}

#[tokio::test]
async fn unrouted_number_gets_404() {
    let mut pbx = Endpoint::udp().await;
    let config = config_with(&[pbx.uri()], "", "").replace("prefix = \"\"", "prefix = \"1\"");
    let running = start(&config).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    caller.send(proxy, invite(&caller, "noroute", "n", "4420", proxy).as_bytes()).await;
    let (resp, _) = caller.expect("SIP/2.0 ").await;
    assert_eq!(status(&resp), 404);
    assert!(pbx.recv_within(Duration::from_millis(200)).await.is_none());
    // The routed prefix still works.
    caller.send(proxy, invite(&caller, "routed", "m", "1555", proxy).as_bytes()).await;
    pbx.expect("INVITE sip:1555@").await;
    running.stop().await;
}

#[tokio::test]
async fn options_to_the_proxy_itself_gets_200() {
    let mut pbx = Endpoint::udp().await;
    let running = start(&config_with(&[pbx.uri()], "", "")).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut peer = Endpoint::udp().await;
    let ping = format!(
        "OPTIONS sip:{proxy} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKping\r\nMax-Forwards: 70\r\nFrom: <sip:ping@{l}>;tag=p\r\nTo: <sip:{proxy}>\r\nCall-ID: ping\r\nCSeq: 7 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        l = peer.local
    );
    peer.send(proxy, ping.as_bytes()).await;
    let (resp, _) = peer.expect("SIP/2.0 ").await;
    assert_eq!(status(&resp), 200);
    assert!(header(&resp, "Allow").unwrap().contains("INVITE"));
    assert!(
        pbx.recv_within(Duration::from_millis(200)).await.is_none(),
        "answered by the proxy, not forwarded"
    );
    running.stop().await;
}

#[tokio::test]
async fn silent_gateway_fails_over_to_the_next() {
    let mut silent = Endpoint::udp().await;
    let mut pbx = Endpoint::udp().await;
    let running = start(&config_with(&[silent.uri(), pbx.uri()], "gateway_timeout_ms = 700", "")).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    caller.send(proxy, invite(&caller, "failover", "f", "100", proxy).as_bytes()).await;
    let (first, _) = silent.expect("INVITE ").await;
    let (retrans, _) = silent.expect("INVITE ").await;
    assert_eq!(first, retrans, "Timer A retransmits the same bytes");
    let (inv, from_proxy) = pbx.expect("INVITE ").await;
    assert_ne!(headers(&inv, "Via")[0], headers(&first, "Via")[0], "a new branch for the new gateway");
    pbx.send(from_proxy, respond(&inv, 200, "OK", Some("t"), "", Some(pbx.local)).as_bytes()).await;
    caller.expect("SIP/2.0 200").await;
    running.stop().await;
}

#[tokio::test]
async fn no_gateway_answering_gives_408() {
    let mut silent = Endpoint::udp().await;
    let running = start(&config_with(&[silent.uri()], "gateway_timeout_ms = 300", "")).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    caller.send(proxy, invite(&caller, "timeout", "t", "100", proxy).as_bytes()).await;
    silent.expect("INVITE ").await;
    let (resp, _) = caller.expect("SIP/2.0 4").await;
    assert_eq!(status(&resp), 408);
    eventually(&running, "timed-out call freed", |p| p.active_calls() == 0).await;
    running.stop().await;
}

#[tokio::test]
async fn refused_tcp_gateway_fails_over_at_once() {
    let dead_port = free_port();
    let mut pbx = Endpoint::udp().await;
    let gateways = [format!("tcp://127.0.0.1:{dead_port}"), pbx.uri()];
    let running = start(&config_with(&gateways, "gateway_timeout_ms = 30000", "")).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    caller.send(proxy, invite(&caller, "refused", "r", "100", proxy).as_bytes()).await;
    // Well before the 30 s Timer B: the refused connect triggers failover.
    pbx.expect("INVITE ").await;
    running.stop().await;
}

#[tokio::test]
async fn draining_refuses_new_invites_with_503() {
    let pbx = Endpoint::udp().await;
    let running = start(&config_with(&[pbx.uri()], "", "")).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    running.shared.start_draining();
    let mut caller = Endpoint::udp().await;
    caller.send(proxy, invite(&caller, "drain", "d", "100", proxy).as_bytes()).await;
    let (resp, _) = caller.expect("SIP/2.0 ").await;
    assert_eq!(status(&resp), 503);
    assert!(header(&resp, "Retry-After").is_some());
    running.stop().await;
}

#[tokio::test]
async fn full_call_over_ipv6() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        assert!(!std::env::var("CI").is_ok_and(|v| v == "true"), "CI machines have an IPv6 loopback");
        eprintln!("notice: no IPv6 loopback on this machine; IPv6 call flow not exercised");
        return;
    }
    let pbx_socket = tokio::net::UdpSocket::bind("[::1]:0").await.unwrap();
    let pbx_addr = pbx_socket.local_addr().unwrap();
    let config = format!(
        "[server]\nlisten = [\"udp://[::1]:0\", \"tcp://[::1]:0\"]\n[log]\nlevel = \"warn\"\n[[carrier]]\nname = \"pbx\"\ngateways = [\"udp://{pbx_addr}\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"pbx\"]\n"
    );
    let running = start(&config).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    assert!(proxy.is_ipv6());
    let caller = tokio::net::UdpSocket::bind("[::1]:0").await.unwrap();
    let local = caller.local_addr().unwrap();
    let inv = format!(
        "INVITE sip:100@{proxy} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKv6;rport\r\nMax-Forwards: 70\r\nFrom: <sip:a@{local}>;tag=v6\r\nTo: <sip:100@{proxy}>\r\nCall-ID: v6-call\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    );
    caller.send_to(inv.as_bytes(), proxy).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, from) = tokio::time::timeout(WAIT, pbx_socket.recv_from(&mut buf)).await.unwrap().unwrap();
    let fwd = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(fwd.starts_with("INVITE "));
    assert!(
        headers(&fwd, "Via")[0].starts_with(&format!("SIP/2.0/UDP {proxy};branch=")),
        "IPv6 sent-by in brackets: {fwd}"
    );
    assert!(header(&fwd, "Record-Route").unwrap().contains(&format!("<sip:{proxy};lr>")));
    pbx_socket
        .send_to(respond(&fwd, 200, "OK", Some("t6"), "", Some(pbx_addr)).as_bytes(), from)
        .await
        .unwrap();
    loop {
        let (n, _) = tokio::time::timeout(WAIT, caller.recv_from(&mut buf)).await.unwrap().unwrap();
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.starts_with("SIP/2.0 200") {
            assert!(
                headers(&msg, "Via")[0].contains("received=::1"),
                "received holds the bare IPv6 address: {msg}"
            );
            break;
        }
    }
    running.stop().await;
}
