//! Capacity limiting end to end over real sockets: every scope, the answers, failover on
//! capacity, counted-once rules and channel release on every way a call can end.

mod common;

use std::time::Duration;

use common::*;
use sluice::limit::LimitKey;
use sluice::peer::Transport;

const SETTLE: Duration = Duration::from_millis(400);

/// Starts sluice with one carrier at a scripted PBX and extra config; returns everything.
async fn setup(
    mode: Pbx,
    server_extra: &str,
    extra: &str,
) -> (sluice::server::Running, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    let seen = spawn_pbx(pbx, mode);
    let running = start(&config_with(&[uri], server_extra, extra)).await;
    (running, seen)
}

fn invite_as(
    caller: &Endpoint,
    call_id: &str,
    number: &str,
    proxy: std::net::SocketAddr,
    user: Option<&str>,
) -> String {
    let inv = invite(caller, call_id, call_id, number, proxy);
    match user {
        Some(u) => inv.replacen(
            "Max-Forwards: 70\r\n",
            &format!("Max-Forwards: 70\r\nProxy-Authorization: Digest username=\"{u}\", realm=\"sluice\", nonce=\"n\", uri=\"sip:{number}@x\", response=\"0\"\r\n"),
            1,
        ),
        None => inv,
    }
}

fn count_status(finals: &[(u16, String)], code: u16, reason: &str) -> usize {
    finals.iter().filter(|(s, m)| *s == code && m.lines().next().is_some_and(|l| l.ends_with(reason))).count()
}

#[tokio::test]
async fn per_ip_cps_admits_exactly_the_limit() {
    let (running, seen) = setup(Pbx::Silent, "", "[limits]\nper_ip = { cps = 20 }\n").await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    for i in 0..35 {
        caller.send(proxy, invite_as(&caller, &format!("cps-{i}"), "100", proxy, None).as_bytes()).await;
    }
    let got = finals(&mut caller, SETTLE).await;
    assert_eq!(count_status(&got, 503, "CPS Limit reached"), 15, "{got:?}");
    assert!(got.iter().all(|(_, m)| header(m, "Retry-After") == Some("1")));
    assert_eq!(count(&seen, "INVITE"), 20, "exactly the limit reaches the PBX");
    running.stop().await;
}

#[tokio::test]
async fn channels_limit_and_release_by_bye() {
    let (running, seen) = setup(Pbx::Answer, "", "[limits]\nchannels = 10\n").await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    for i in 0..20 {
        caller.send(proxy, invite_as(&caller, &format!("ch-{i}"), "100", proxy, None).as_bytes()).await;
    }
    let got = finals(&mut caller, SETTLE).await;
    assert_eq!(count_status(&got, 200, "OK"), 10);
    assert_eq!(count_status(&got, 503, "Channel Limit reached"), 10);
    assert_eq!(running.shared.limits.usage(tokio::time::Instant::now(), &LimitKey::server()).0, 10);
    // Hang up five of the answered calls.
    let answered: Vec<String> = got
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, m)| header(m, "Call-ID").unwrap().to_string())
        .collect();
    for id in &answered[..5] {
        let bye = in_dialog(
            "BYE",
            &caller,
            "sip:pbx@127.0.0.1",
            id,
            &format!("caller-{id}"),
            &format!("pbx-{id}"),
            2,
            &[],
            &format!("bye-{id}"),
        );
        caller.send(proxy, bye.as_bytes()).await;
    }
    let byes = finals(&mut caller, SETTLE).await;
    let bye_oks = byes
        .iter()
        .filter(|(s, m)| *s == 200 && header(m, "CSeq").is_some_and(|c| c.ends_with("BYE")))
        .count();
    assert_eq!(bye_oks, 5, "every BYE answered");
    for i in 0..6 {
        caller.send(proxy, invite_as(&caller, &format!("ch2-{i}"), "100", proxy, None).as_bytes()).await;
    }
    let got: Vec<(u16, String)> = finals(&mut caller, SETTLE)
        .await
        .into_iter()
        .filter(|(_, m)| header(m, "Call-ID").is_some_and(|c| c.starts_with("ch2-")))
        .collect();
    assert_eq!(count_status(&got, 200, "OK"), 5, "five more fit");
    assert_eq!(count_status(&got, 503, "Channel Limit reached"), 1);
    assert_eq!(count(&seen, "INVITE"), 15);
    running.stop().await;
}

#[tokio::test]
async fn customer_limit_spans_its_source_addresses() {
    let extra = "[[customer]]\nname = \"acme\"\nips = [\"127.0.0.2/32\", \"127.0.0.3/32\"]\nchannels = 3\n";
    let (running, seen) = setup(Pbx::Answer, "", extra).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut a = Endpoint::udp_on("127.0.0.2").await;
    let mut b = Endpoint::udp_on("127.0.0.3").await;
    for i in 0..2 {
        a.send(proxy, invite_as(&a, &format!("cust-a{i}"), "100", proxy, None).as_bytes()).await;
        b.send(proxy, invite_as(&b, &format!("cust-b{i}"), "100", proxy, None).as_bytes()).await;
    }
    let mut got = finals(&mut a, SETTLE).await;
    got.extend(finals(&mut b, Duration::from_millis(50)).await);
    assert_eq!(count_status(&got, 200, "OK"), 3);
    assert_eq!(count_status(&got, 503, "Channel Limit reached"), 1);
    assert_eq!(count(&seen, "INVITE"), 3);
    // A source outside the customer is not counted against it.
    let mut other = Endpoint::udp().await;
    other.send(proxy, invite_as(&other, "cust-other", "100", proxy, None).as_bytes()).await;
    assert_eq!(status(&other.expect("SIP/2.0 200").await.0), 200);
    running.stop().await;
}

#[tokio::test]
async fn unknown_sources_are_forbidden_when_configured() {
    let extra = "[[customer]]\nname = \"acme\"\nips = [\"127.0.0.2/32\"]\nusers = [\"acme\"]\n";
    let (running, seen) = setup(Pbx::Answer, "allow_unknown = false", extra).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut stranger = Endpoint::udp().await;
    stranger.send(proxy, invite_as(&stranger, "stranger", "100", proxy, None).as_bytes()).await;
    assert_eq!(status(&stranger.expect("SIP/2.0 4").await.0), 403);
    // Recognised by username from an unknown address.
    stranger.send(proxy, invite_as(&stranger, "by-user", "100", proxy, Some("acme")).as_bytes()).await;
    stranger.expect("SIP/2.0 200").await;
    let mut known = Endpoint::udp_on("127.0.0.2").await;
    known.send(proxy, invite_as(&known, "by-ip", "100", proxy, None).as_bytes()).await;
    known.expect("SIP/2.0 200").await;
    assert_eq!(count(&seen, "INVITE"), 2);
    running.stop().await;
}

#[tokio::test]
async fn per_user_limit_spans_addresses() {
    let (running, _seen) = setup(Pbx::Answer, "", "[limits]\nper_user = { channels = 2 }\n").await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut a = Endpoint::udp_on("127.0.0.2").await;
    let mut b = Endpoint::udp_on("127.0.0.3").await;
    a.send(proxy, invite_as(&a, "user-1", "100", proxy, Some("alice")).as_bytes()).await;
    b.send(proxy, invite_as(&b, "user-2", "100", proxy, Some("alice")).as_bytes()).await;
    a.expect("SIP/2.0 200").await;
    b.expect("SIP/2.0 200").await;
    b.send(proxy, invite_as(&b, "user-3", "100", proxy, Some("alice")).as_bytes()).await;
    let (r, _) = b.expect("SIP/2.0 5").await;
    assert_eq!(r.lines().next(), Some("SIP/2.0 503 Channel Limit reached"));
    b.send(proxy, invite_as(&b, "user-4", "100", proxy, Some("bob")).as_bytes()).await;
    b.expect("SIP/2.0 200").await;
    running.stop().await;
}

#[tokio::test]
async fn did_and_route_limits() {
    let extra = "[[did]]\nnumber = \"+15551230000\"\nchannels = 1\n";
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    spawn_pbx(pbx, Pbx::Answer);
    let config = config_with(&[uri], "", extra).replace(
        "prefix = \"\"\ncarriers = [\"pbx\"]",
        "prefix = \"\"\ncarriers = [\"pbx\"]\n[[route]]\nprefix = \"44\"\ncarriers = [\"pbx\"]\ncps = 1",
    );
    let running = start(&config).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut c = Endpoint::udp().await;
    c.send(proxy, invite_as(&c, "did-1", "+15551230000", proxy, None).as_bytes()).await;
    c.expect("SIP/2.0 200").await;
    c.send(proxy, invite_as(&c, "did-2", "15551230000", proxy, None).as_bytes()).await;
    assert_eq!(c.expect("SIP/2.0 5").await.0.lines().next(), Some("SIP/2.0 503 Channel Limit reached"));
    c.send(proxy, invite_as(&c, "did-3", "15559999999", proxy, None).as_bytes()).await;
    c.expect("SIP/2.0 200").await;
    // The "44" route admits one call per second.
    c.send(proxy, invite_as(&c, "route-1", "4420", proxy, None).as_bytes()).await;
    c.expect("SIP/2.0 200").await;
    c.send(proxy, invite_as(&c, "route-2", "4421", proxy, None).as_bytes()).await;
    assert_eq!(c.expect("SIP/2.0 5").await.0.lines().next(), Some("SIP/2.0 503 CPS Limit reached"));
    running.stop().await;
}

#[tokio::test]
async fn full_carrier_fails_over_to_the_next() {
    let a = Endpoint::udp().await;
    let b = Endpoint::udp().await;
    let (a_uri, b_uri) = (a.uri(), b.uri());
    let seen_a = spawn_pbx(a, Pbx::Answer);
    let seen_b = spawn_pbx(b, Pbx::Answer);
    let config = format!(
        "[server]\nlisten = [\"udp://127.0.0.1:0\"]\n[log]\nlevel = \"warn\"\n\
         [[carrier]]\nname = \"a\"\ngateways = [\"{a_uri}\"]\nchannels = 1\n\
         [[carrier]]\nname = \"b\"\ngateways = [\"{b_uri}\"]\ngateway_channels = 1\n\
         [[route]]\nprefix = \"\"\ncarriers = [\"a\", \"b\"]\n"
    );
    let running = start(&config).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut c = Endpoint::udp().await;
    for i in 0..3 {
        c.send(proxy, invite_as(&c, &format!("fo-{i}"), "100", proxy, None).as_bytes()).await;
    }
    let got = finals(&mut c, SETTLE).await;
    assert_eq!(count_status(&got, 200, "OK"), 2);
    assert_eq!(count_status(&got, 503, "Channel Limit reached"), 1, "both carriers full: refused");
    assert_eq!((count(&seen_a, "INVITE"), count(&seen_b, "INVITE")), (1, 1));
    running.stop().await;
}

#[tokio::test]
async fn server_full_redirects_with_302() {
    // One Contact as a bare URI with a parameter: it must go out in angle brackets, or the
    // parameter would become a header parameter of the Contact (RFC 3261 §20.10).
    let extra = "[limits]\nchannels = 1\n[overflow]\nredirect = [\"<sip:edge2.example.net>\", \"sip:edge3.example.net;transport=tcp\"]\n";
    let (running, _seen) = setup(Pbx::Answer, "", extra).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut c = Endpoint::udp().await;
    c.send(proxy, invite_as(&c, "r-1", "100", proxy, None).as_bytes()).await;
    c.expect("SIP/2.0 200").await;
    c.send(proxy, invite_as(&c, "r-2", "100", proxy, None).as_bytes()).await;
    let (r, _) = c.expect("SIP/2.0 3").await;
    assert_eq!(r.lines().next(), Some("SIP/2.0 302 Moved Temporarily"));
    assert_eq!(header(&r, "Contact"), Some("<sip:edge2.example.net>, <sip:edge3.example.net;transport=tcp>"));
    running.stop().await;
}

#[tokio::test]
async fn a_refusal_takes_nothing_from_other_scopes() {
    // Server: 2 CPS. The DID holds one channel. A call refused by the DID must not use a
    // server CPS slot, so a third call in the same second still gets in.
    let extra = "[limits]\ncps = 2\n[[did]]\nnumber = \"555\"\nchannels = 1\n";
    let (running, seen) = setup(Pbx::Answer, "", extra).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut c = Endpoint::udp().await;
    c.send(proxy, invite_as(&c, "s-1", "555", proxy, None).as_bytes()).await;
    c.expect("SIP/2.0 200").await;
    c.send(proxy, invite_as(&c, "s-2", "555", proxy, None).as_bytes()).await;
    assert_eq!(c.expect("SIP/2.0 5").await.0.lines().next(), Some("SIP/2.0 503 Channel Limit reached"));
    c.send(proxy, invite_as(&c, "s-3", "556", proxy, None).as_bytes()).await;
    c.expect("SIP/2.0 200").await;
    assert_eq!(count(&seen, "INVITE"), 2);
    let now = tokio::time::Instant::now();
    assert_eq!(
        running.shared.limits.usage(now, &LimitKey::server()).0,
        2,
        "two channels at the server scope"
    );
    running.stop().await;
}

#[tokio::test]
async fn invite_after_407_is_the_same_call() {
    let mut pbx = Endpoint::udp().await;
    let running = start(&config_with(&[pbx.uri()], "", "[limits]\ncps = 1\n")).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut c = Endpoint::udp().await;
    let first = invite_as(&c, "auth-1", "100", proxy, None);
    c.send(proxy, first.as_bytes()).await;
    let (inv, from) = pbx.expect("INVITE ").await;
    pbx.send(
        from,
        respond(
            &inv,
            407,
            "Proxy Authentication Required",
            Some("p"),
            "Proxy-Authenticate: Digest realm=\"r\", nonce=\"n\"\r\n",
            None,
        )
        .as_bytes(),
    )
    .await;
    c.expect("SIP/2.0 407").await;
    pbx.expect("ACK ").await;
    // The credentials INVITE: same Call-ID and From tag, CSeq 2, new branch.
    let again = invite_as(&c, "auth-1", "100", proxy, Some("alice"))
        .replace("CSeq: 1 INVITE", "CSeq: 2 INVITE")
        .replace("branch=z9hG4bKauth-1", "branch=z9hG4bKauth-1b");
    c.send(proxy, again.as_bytes()).await;
    let (inv2, _) = pbx.expect("INVITE ").await;
    assert!(
        header(&inv2, "CSeq").unwrap().starts_with('2'),
        "the re-INVITE is admitted within the same second"
    );
    // A genuinely new call in that second is over the 1 CPS.
    c.send(proxy, invite_as(&c, "auth-2", "100", proxy, None).as_bytes()).await;
    assert_eq!(c.expect("SIP/2.0 5").await.0.lines().next(), Some("SIP/2.0 503 CPS Limit reached"));
    running.stop().await;
}

#[tokio::test]
async fn retransmissions_are_counted_once() {
    let (running, seen) = setup(Pbx::Ring, "", "[limits]\nper_ip = { cps = 1 }\n").await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut c = Endpoint::udp().await;
    let inv = invite_as(&c, "rt-1", "100", proxy, None);
    c.send(proxy, inv.as_bytes()).await;
    c.send(proxy, inv.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rejected = invite_as(&c, "rt-2", "100", proxy, None);
    c.send(proxy, rejected.as_bytes()).await;
    let (r1, _) = c.expect("SIP/2.0 503").await;
    // The rejected INVITE retransmitted: the same answer again, counted once.
    c.send(proxy, rejected.as_bytes()).await;
    let (r2, _) = c.expect("SIP/2.0 503").await;
    assert_eq!(r1, r2);
    assert_eq!(count(&seen, "INVITE"), 1);
    let stats = &running.shared.stats;
    assert_eq!(stats.calls_admitted.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(stats.calls_rejected_cps.load(std::sync::atomic::Ordering::Relaxed), 1);
    running.stop().await;
}

#[tokio::test]
async fn every_way_a_call_ends_frees_its_channel() {
    // One channel server-wide: each next call only fits if the previous one freed it.
    let cancel_pbx = Endpoint::udp().await;
    let busy_pbx = Endpoint::udp().await;
    let silent_pbx = Endpoint::udp().await;
    let mut answer_pbx = Endpoint::udp().await;
    let uris = [cancel_pbx.uri(), busy_pbx.uri(), silent_pbx.uri(), answer_pbx.uri()];
    spawn_pbx(cancel_pbx, Pbx::Ring);
    spawn_pbx(busy_pbx, Pbx::Busy);
    spawn_pbx(silent_pbx, Pbx::Silent);
    let config = format!(
        "[server]\nlisten = [\"udp://127.0.0.1:0\"]\ngateway_timeout_ms = 300\n[log]\nlevel = \"warn\"\n[limits]\nchannels = 1\n\
         [[carrier]]\nname = \"ring\"\ngateways = [\"{}\"]\n[[carrier]]\nname = \"busy\"\ngateways = [\"{}\"]\n\
         [[carrier]]\nname = \"silent\"\ngateways = [\"{}\"]\n[[carrier]]\nname = \"answer\"\ngateways = [\"{}\"]\n\
         [[route]]\nprefix = \"1\"\ncarriers = [\"ring\"]\n[[route]]\nprefix = \"2\"\ncarriers = [\"busy\"]\n\
         [[route]]\nprefix = \"3\"\ncarriers = [\"silent\"]\n[[route]]\nprefix = \"4\"\ncarriers = [\"answer\"]\n",
        uris[0], uris[1], uris[2], uris[3]
    );
    let running = start(&config).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut c = Endpoint::udp().await;
    let channels = || running.shared.limits.usage(tokio::time::Instant::now(), &LimitKey::server()).0;

    // CANCEL.
    let inv = invite_as(&c, "end-cancel", "100", proxy, None);
    c.send(proxy, inv.as_bytes()).await;
    c.expect("SIP/2.0 180").await;
    assert_eq!(channels(), 1);
    let cancel = inv.replacen("INVITE sip", "CANCEL sip", 1).replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    c.send(proxy, cancel.as_bytes()).await;
    c.expect("SIP/2.0 487").await;
    assert_eq!(channels(), 0, "CANCEL freed the channel");

    // 486.
    c.send(proxy, invite_as(&c, "end-busy", "200", proxy, None).as_bytes()).await;
    c.expect("SIP/2.0 486").await;
    assert_eq!(channels(), 0, "486 freed the channel");

    // Timeout.
    c.send(proxy, invite_as(&c, "end-timeout", "300", proxy, None).as_bytes()).await;
    c.expect("SIP/2.0 408").await;
    assert_eq!(channels(), 0, "timeout freed the channel");

    // Answered, then BYE from the PBX.
    c.send(proxy, invite_as(&c, "end-bye", "400", proxy, None).as_bytes()).await;
    let (inv, from) = answer_pbx.expect("INVITE ").await;
    answer_pbx
        .send(from, respond(&inv, 200, "OK", Some("pbxt"), "", Some(answer_pbx.local)).as_bytes())
        .await;
    c.expect("SIP/2.0 200").await;
    c.send(proxy, invite_as(&c, "end-extra", "400", proxy, None).as_bytes()).await;
    assert_eq!(
        c.expect("SIP/2.0 5").await.0.lines().next(),
        Some("SIP/2.0 503 Channel Limit reached"),
        "the channel is held"
    );
    let bye = in_dialog(
        "BYE",
        &answer_pbx,
        "sip:alice@caller",
        "end-bye",
        "pbxt",
        "caller-end-bye",
        1,
        &[],
        "pbxbye",
    );
    answer_pbx.send(from, bye.as_bytes()).await;
    let (bye_at_caller, src) = c.expect("BYE ").await;
    c.send(src, respond(&bye_at_caller, 200, "OK", None, "", None).as_bytes()).await;
    answer_pbx.expect("SIP/2.0 200").await;
    assert_eq!(channels(), 0, "BYE from the PBX freed the channel");
    assert_eq!(running.shared.limits.total_channels(), 0, "no scope leaked a channel");
    running.stop().await;
}

#[tokio::test]
async fn the_store_is_the_one_this_binary_promises() {
    // tests/limits_cluster.rs runs this file with the limits in Redis: prove it really does.
    let cluster = cluster_section().is_some();
    let pbx = Endpoint::udp().await;
    let running = start(&config_with(&[pbx.uri()], "", "")).await;
    assert_eq!(running.shared.cluster.is_some(), cluster);
    assert!(running.shared.store.healthy());
    assert_eq!(running.shared.store.asynchronous(), cluster, "cluster admissions go off the SIP path");
    running.stop().await;
}
