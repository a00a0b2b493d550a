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

/// The stray-response counter for `why`.
fn stray(running: &sluice::server::Running, why: Stray) -> &std::sync::atomic::AtomicU64 {
    &running.shared.stats.stray_responses[why as usize]
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
    assert_eq!(counter_reaches(stray(&running, Stray::WrongSource), 2).await, 2, "both forgeries dropped");

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
    let gw = running.shared.config().carriers[0].gateways[0].addr;
    assert!(!running.shared.stats.gateways_down.contains_key(&gw), "gateway still up");
    running.stop().await;
}

#[tokio::test]
async fn forged_tcp_responses_from_another_host_and_the_caller_are_ignored() {
    let mut pbx = Endpoint::tcp_server().await;
    let running = start(&config_with(&[pbx.uri()], "", "")).await;
    let tcp = running.addr(Transport::Tcp).unwrap();
    // The caller on a host of its own (a TCP answer is accepted from the gateway's host).
    let mut caller = Endpoint::tcp_client_from("127.0.0.5", tcp).await;
    caller.send(tcp, invite(&caller, "forge-tcp", "ft", "100", tcp).as_bytes()).await;
    caller.expect("SIP/2.0 100").await;
    let (inv, _) = pbx.expect("INVITE ").await;

    let mut attacker = Endpoint::tcp_client_from("127.0.0.9", tcp).await;
    attacker.send(tcp, respond(&inv, 486, "Busy Here", Some("forged"), "", None).as_bytes()).await;
    // The caller itself, on its own connection, answering for the gateway.
    caller
        .send(
            tcp,
            respond(&inv, 503, "Service Unavailable", Some("forged"), "Retry-After: 3600\r\n", None)
                .as_bytes(),
        )
        .await;
    assert_eq!(counter_reaches(stray(&running, Stray::WrongSource), 2).await, 2);
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

/// `[auth]` with one user (acme/secret, both algorithms) in a credentials file.
fn auth_config(pbx: &str, dir: &std::path::Path, extra: &str) -> String {
    use sluice::auth::Verifier;
    let file = dir.join("credentials");
    std::fs::write(&file, Verifier::htdigest("acme", "sluice", "secret")).unwrap();
    config_with(
        &[pbx.to_string()],
        "",
        &format!(
            "[auth]\nrealm = \"sluice\"\ncredentials = \"{}\"\nrequire = \"unknown\"\n\
             [[customer]]\nname = \"acme\"\nusers = [\"acme\"]\ncps = 2\n{extra}",
            file.display()
        ),
    )
}

fn with_credentials(inv: &str, value: &str) -> String {
    inv.replacen("Max-Forwards: 70\r\n", &format!("Max-Forwards: 70\r\nProxy-Authorization: {value}\r\n"), 1)
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn a_claimed_username_is_challenged_and_only_a_proven_one_counts() {
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    let seen = spawn_pbx(pbx, Pbx::Answer);
    let dir = temp_dir("auth");
    let running = start(&auth_config(&uri, &dir, "")).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    let acme = LimitKey::text(sluice::limit::Scope::Customer, &std::sync::Arc::from("acme"));
    let acme_channels =
        |r: &sluice::server::Running| r.shared.limits.usage(tokio::time::Instant::now(), &acme).0;

    // A forged claim: "I am acme", with made-up digest values. Challenged, never forwarded,
    // and it took none of acme's CPS.
    let forged =
        "Digest username=\"acme\", realm=\"sluice\", nonce=\"0.0.00\", uri=\"sip:100@x\", response=\"0\"";
    for i in 0..5 {
        let inv =
            with_credentials(&invite(&caller, &format!("claim-{i}"), &format!("c{i}"), "100", proxy), forged);
        caller.send(proxy, inv.as_bytes()).await;
        let (m, _) = caller.expect("SIP/2.0 407").await;
        assert_eq!(headers(&m, "Proxy-Authenticate").len(), 2, "SHA-256 and MD5 offered: {m}");
    }
    assert_eq!(count(&seen, "INVITE"), 0, "no forged claim reached the PBX");
    assert_eq!(acme_channels(&running), 0, "nothing counted as acme");

    // The real acme: challenged, answers with the password, admitted as acme (acme has
    // cps = 2: had the five forgeries counted, this call would be refused).
    let inv = invite(&caller, "real", "r1", "100", proxy);
    caller.send(proxy, inv.as_bytes()).await;
    let (challenge, _) = caller.expect("SIP/2.0 407").await;
    let offer = headers(&challenge, "Proxy-Authenticate")[0].to_string();
    assert!(offer.contains("algorithm=SHA-256"), "{offer}");
    let request_uri = inv.split(' ').nth(1).unwrap().to_string();
    let answer =
        sluice::auth::Verifier::answer(&offer, "acme", "secret", "INVITE", &request_uri, "cn1").unwrap();
    let authed = with_credentials(
        &inv.replace("branch=z9hG4bKr1", "branch=z9hG4bKr2").replace("CSeq: 1", "CSeq: 2"),
        &answer,
    );
    let authed = authed.replacen(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nProxy-Authorization: Digest username=\"pbxuser\", realm=\"pbx\", nonce=\"p\", uri=\"x\", response=\"1\"\r\n",
        1,
    );
    caller.send(proxy, authed.as_bytes()).await;
    caller.expect("SIP/2.0 200").await;
    assert_eq!(acme_channels(&running), 1, "the proven call counts once, as acme");
    let forwarded = seen.lock().unwrap().iter().find(|m| m.starts_with("INVITE ")).cloned().unwrap();
    assert!(!forwarded.contains("realm=\"sluice\""), "sluice's credentials never reach the PBX: {forwarded}");
    assert!(forwarded.contains("realm=\"pbx\""), "credentials for another realm pass untouched");

    // The captured answer replayed on a new call: challenged again, not admitted.
    let replay = with_credentials(&invite(&caller, "replay", "rp", "100", proxy), &answer);
    caller.send(proxy, replay.as_bytes()).await;
    caller.expect("SIP/2.0 407").await;
    assert_eq!(count(&seen, "INVITE"), 1);
    let ok = |r: sluice::stats::AuthResult| running.shared.stats.auth[r as usize].load(Ordering::Relaxed);
    assert_eq!(ok(sluice::stats::AuthResult::Ok), 1);
    assert!(ok(sluice::stats::AuthResult::Failed) >= 6);
    running.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn wrong_passwords_end_in_403() {
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    let seen = spawn_pbx(pbx, Pbx::Answer);
    let dir = temp_dir("auth403");
    let running = start(&auth_config(&uri, &dir, "")).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    let inv = invite(&caller, "guess", "g0", "100", proxy);
    let request_uri = inv.split(' ').nth(1).unwrap().to_string();
    caller.send(proxy, inv.as_bytes()).await;
    let (mut challenge, _) = caller.expect("SIP/2.0 407").await;
    let mut last = 0;
    for i in 1..=3 {
        let offer = headers(&challenge, "Proxy-Authenticate")[1].to_string();
        let answer =
            sluice::auth::Verifier::answer(&offer, "acme", "guess", "INVITE", &request_uri, "x").unwrap();
        let again =
            with_credentials(&inv.replace("branch=z9hG4bKg0", &format!("branch=z9hG4bKg{i}")), &answer);
        caller.send(proxy, again.as_bytes()).await;
        let (m, _) = caller.expect("SIP/2.0 4").await;
        last = status(&m);
        challenge = m;
    }
    assert_eq!(last, 403, "the third wrong answer is refused outright");
    assert_eq!(count(&seen, "INVITE"), 0);
    running.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn unknown_proxy_require_gets_420_and_nothing_is_forwarded() {
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    let seen = spawn_pbx(pbx, Pbx::Answer);
    let running = start(&config_with(&[uri], "", "")).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    let inv = invite(&caller, "ext", "e1", "100", proxy).replacen(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nProxy-Require: foo, bar\r\n",
        1,
    );
    caller.send(proxy, inv.as_bytes()).await;
    let (m, _) = caller.expect("SIP/2.0 4").await;
    assert!(m.starts_with("SIP/2.0 420 Bad Extension"), "{m}");
    assert_eq!(header(&m, "Unsupported"), Some("foo, bar"));
    assert_eq!(count(&seen, "INVITE"), 0);
    running.stop().await;
}

#[tokio::test]
async fn own_final_answers_are_retransmitted_until_ack_and_count_only_invites() {
    // No route for this number: sluice answers 404 itself. Over UDP that answer is an INVITE
    // server transaction's: re-sent (Timer G) until the ACK comes.
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    let cfg = format!(
        "[server]\nlisten = [\"udp://127.0.0.1:0\"]\n[log]\nlevel = \"warn\"\n[[carrier]]\nname = \"pbx\"\ngateways = [\"{uri}\"]\n[[route]]\nprefix = \"44\"\ncarriers = [\"pbx\"]\n"
    );
    let running = start(&cfg).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    let inv = invite(&caller, "unrouted", "u1", "100", proxy);
    caller.send(proxy, inv.as_bytes()).await;
    // 404 at 0, 0.5 and 1.5 s (Timer G doubling from T1); the ACK goes right after the third,
    // two seconds before the next would be due.
    for copy in 0..3 {
        let (m, _) =
            caller.recv_within(Duration::from_millis(1500)).await.unwrap_or_else(|| panic!("copy {copy}"));
        assert!(m.starts_with("SIP/2.0 404"), "{m}");
    }
    let ack = in_dialog("ACK", &caller, "sip:100@x", "unrouted", "caller-unrouted", "x", 1, &[], "u1")
        .replace("To: <sip:y@example.com>;tag=x", "To: <sip:100@x>;tag=x");
    caller.send(proxy, ack.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(caller.recv_within(Duration::from_millis(2500)).await.is_none(), "ACK stopped the re-sends");
    // An OPTIONS to an unrouted number is not a call: no_route counts INVITEs only.
    let options = invite(&caller, "opt", "o1", "100", proxy).replace("INVITE", "OPTIONS");
    caller.send(proxy, options.as_bytes()).await;
    caller.expect("SIP/2.0 404").await;
    assert_eq!(running.shared.stats.calls_no_route.load(Ordering::Relaxed), 1);
    running.stop().await;
}

#[tokio::test]
async fn one_source_holds_at_most_its_share_of_tcp_connections() {
    let pbx = Endpoint::udp().await;
    let running = start(&config_with(&[pbx.uri()], "max_tcp_per_ip = 3", "")).await;
    let tcp = running.addr(Transport::Tcp).unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Endpoint::tcp_client_from("127.0.0.9", tcp).await);
    }
    eventually(&running, "three connections registered", |_| {
        running.shared.tcp.inbound_from("127.0.0.9".parse().unwrap()) == 3
    })
    .await;
    let mut fourth = Endpoint::tcp_client_from("127.0.0.9", tcp).await;
    assert!(fourth.closed_within(Duration::from_secs(2)).await, "the fourth is closed at once");
    // Another host is not affected, and a freed slot can be used again.
    let mut other = Endpoint::tcp_client_from("127.0.0.10", tcp).await;
    assert!(!other.closed_within(Duration::from_millis(200)).await);
    drop(held.pop());
    eventually(&running, "slot released", |_| {
        running.shared.tcp.inbound_from("127.0.0.9".parse().unwrap()) == 2
    })
    .await;
    let mut again = Endpoint::tcp_client_from("127.0.0.9", tcp).await;
    assert!(!again.closed_within(Duration::from_millis(200)).await, "a freed slot is usable");
    running.stop().await;
}

/// A peer that starts a message and never finishes it (slowloris) is cut off after the
/// incomplete-message timeout; tokio's paused clock stands in for the 30 s.
#[tokio::test(start_paused = true)]
async fn a_tcp_message_never_finished_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pbx = Endpoint::udp().await;
    let running = start(&config_with(&[pbx.uri()], "", "")).await;
    let tcp = running.addr(Transport::Tcp).unwrap();
    let mut slow = tokio::net::TcpStream::connect(tcp).await.unwrap();
    slow.write_all(
        b"INVITE sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bKslow\r\n",
    )
    .await
    .unwrap();
    // Keep trickling a byte every 10 s: still cut off 30 s after the message began.
    let mut closed = false;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(10), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
        if slow.write_all(b"X").await.is_err() {
            closed = true;
            break;
        }
    }
    assert!(closed, "a message that never completes does not hold a connection");
    running.stop().await;
}
