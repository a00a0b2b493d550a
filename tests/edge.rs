//! The dishonest caller: forged responses, reused Call-IDs and other lies about fields a
//! caller controls. Each test plays the attacker over real sockets against a running sluice
//! and checks that the lie moves nothing: no call decided, no gateway backed off, no limit
//! bypassed, no other call ended.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use sluice::limit::LimitKey;
use sluice::peer::Transport;
use sluice::stats::Stray;

fn stray(running: &sluice::server::Running, why: Stray) -> u64 {
    running.shared.stats.stray_responses[why as usize].load(Ordering::Relaxed)
}

/// A caller's INVITE with its own From tag (the helper's tag is `caller-{call_id}`).
fn invite_tagged(
    caller: &Endpoint,
    call_id: &str,
    branch: &str,
    tag: &str,
    proxy: std::net::SocketAddr,
) -> String {
    invite(caller, call_id, branch, "100", proxy)
        .replace(&format!("tag=caller-{call_id}"), &format!("tag={tag}"))
}

#[tokio::test]
async fn forged_udp_responses_decide_nothing() {
    let mut pbx = Endpoint::udp().await;
    let running = start(&config_with(&[pbx.uri()], "", "")).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    let mut other_host = Endpoint::udp_on("127.0.0.9").await;
    caller.send(proxy, invite(&caller, "forge-1", "f1", "100", proxy).as_bytes()).await;
    caller.expect("SIP/2.0 100").await;
    let (inv, pbx_src) = pbx.expect("INVITE ").await;

    // The caller saw the branch format; suppose it even learned this branch. It answers
    // for the gateway, from its own address and from another host.
    let busy = respond(&inv, 503, "Service Unavailable", Some("forged"), "Retry-After: 3600\r\n", None);
    caller.send(proxy, busy.as_bytes()).await;
    let hangup = respond(&inv, 486, "Busy Here", Some("forged"), "", None);
    other_host.send(proxy, hangup.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(stray(&running, Stray::WrongSource), 2, "both forgeries dropped as wrong_source");

    // The real gateway answers: the call goes on as if nothing happened.
    pbx.send(pbx_src, respond(&inv, 200, "OK", Some("pbx"), "", Some(pbx.local)).as_bytes()).await;
    let (ok, _) = caller.expect("SIP/2.0 ").await;
    let ok = if status(&ok) == 100 { caller.expect("SIP/2.0 ").await.0 } else { ok };
    assert_eq!(status(&ok), 200, "the caller got the gateway's answer, not a forged one: {ok}");
    assert!(pbx.recv_within(Duration::from_millis(200)).await.is_none_or(|(m, _)| !m.starts_with("ACK")));

    // Nothing was backed off: the next caller's INVITE reaches the gateway at once.
    let mut next = Endpoint::udp().await;
    next.send(proxy, invite(&next, "forge-2", "f2", "100", proxy).as_bytes()).await;
    let (inv2, _) = pbx.expect("INVITE ").await;
    assert!(inv2.contains("Call-ID: forge-2"));
    let gw = running.shared.core.lock().config().carriers[0].gateways[0].addr;
    assert!(!running.shared.stats.gateways_down.contains_key(&gw), "gateway still up");
    running.stop().await;
}

#[tokio::test]
async fn forged_tcp_response_from_another_host_is_ignored() {
    let mut pbx = Endpoint::tcp_server().await;
    let running = start(&config_with(&[pbx.uri()], "", "")).await;
    let tcp = running.addr(Transport::Tcp).unwrap();
    let mut caller = Endpoint::tcp_client(tcp).await;
    caller.send(tcp, invite(&caller, "forge-tcp", "ft", "100", tcp).as_bytes()).await;
    caller.expect("SIP/2.0 100").await;
    let (inv, _) = pbx.expect("INVITE ").await;

    let mut attacker = Endpoint::tcp_client_from("127.0.0.9", tcp).await;
    attacker.send(tcp, respond(&inv, 486, "Busy Here", Some("forged"), "", None).as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(stray(&running, Stray::WrongSource), 1);
    assert!(caller.recv_within(Duration::from_millis(100)).await.is_none(), "no answer reached the caller");

    // The gateway's own answer, on its connection, is the one that counts.
    pbx.send(tcp, respond(&inv, 200, "OK", Some("pbx"), "", Some(pbx.local)).as_bytes()).await;
    let (ok, _) = caller.expect("SIP/2.0 200").await;
    assert!(ok.contains("tag=pbx"));
    running.stop().await;
}

#[tokio::test]
async fn a_reused_call_id_is_another_call_and_cannot_bypass_channels() {
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    let seen = spawn_pbx(pbx, Pbx::Answer);
    let running = start(&config_with(&[uri], "", "[limits]\nper_ip = { channels = 2 }\n")).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    let channels = |r: &sluice::server::Running| {
        r.shared.limits.usage(tokio::time::Instant::now(), &LimitKey::server()).0
    };

    // Call A is up.
    caller.send(proxy, invite_tagged(&caller, "reuse", "a1", "tag-a", proxy).as_bytes()).await;
    caller.expect("SIP/2.0 200").await;
    // The same Call-ID with a new From tag is a second call, counted on its own.
    caller.send(proxy, invite_tagged(&caller, "reuse", "b1", "tag-b", proxy).as_bytes()).await;
    caller.expect("SIP/2.0 200").await;
    assert_eq!(channels(&running), 2);
    // A third one does not fit: the limit holds.
    caller.send(proxy, invite_tagged(&caller, "reuse", "c1", "tag-c", proxy).as_bytes()).await;
    let (refused, _) = caller.expect("SIP/2.0 503").await;
    assert!(refused.starts_with("SIP/2.0 503 Channel Limit reached"), "{refused}");
    // The same Call-ID and From tag again (a new branch) is a merged request, not a new call.
    caller.send(proxy, invite_tagged(&caller, "reuse", "a2", "tag-a", proxy).as_bytes()).await;
    caller.expect("SIP/2.0 482").await;
    assert_eq!(count(&seen, "INVITE"), 2, "only the two admitted calls reached the PBX");
    assert_eq!(channels(&running), 2);

    // Both calls still end normally, each by its own BYE.
    for (tag, branch) in [("tag-a", "bye-a"), ("tag-b", "bye-b")] {
        let bye = in_dialog("BYE", &caller, "sip:pbx@x", "reuse", tag, "pbx-reuse", 2, &[], branch);
        caller.send(proxy, bye.as_bytes()).await;
        let (ok, _) = caller.expect("SIP/2.0 200").await;
        assert!(header(&ok, "CSeq").is_some_and(|c| c.ends_with("BYE")), "{ok}");
    }
    assert_eq!(count(&seen, "BYE"), 2, "A's BYE and B's BYE both relayed");
    assert_eq!(channels(&running), 0);
    running.stop().await;
}
