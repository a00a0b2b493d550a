//! Floods and scanners against a running sluice over real sockets: a source over `[flood]
//! rps` is cut off while other callers are served, and SIPVicious (svmap, svwar) scanning the
//! edge makes no call, leaks no channel and does not knock it over.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use sluice::limit::LimitKey;
use sluice::peer::Transport;

fn options_ping(from: &Endpoint, proxy: std::net::SocketAddr, i: usize) -> String {
    format!(
        "OPTIONS sip:{proxy} SIP/2.0\r\nVia: SIP/2.0/UDP {l};branch=z9hG4bKping{i};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:scan@{l}>;tag=s{i}\r\nTo: <sip:{proxy}>\r\nCall-ID: ping-{i}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        l = from.local
    )
}

#[tokio::test]
async fn a_source_over_rps_is_dropped_while_other_callers_are_served() {
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    let seen = spawn_pbx(pbx, Pbx::Answer);
    let running = start(&config_with(&[uri], "", "[flood]\nrps = 50\nblock_seconds = 60\n")).await;
    let proxy = running.addr(Transport::Udp).unwrap();

    // 10x the rate from one host, as fast as the socket goes.
    let mut attacker = Endpoint::udp_on("127.0.0.9").await;
    for i in 0..500 {
        attacker.send(proxy, options_ping(&attacker, proxy, i).as_bytes()).await;
    }
    let mut answered = 0;
    while attacker.recv_within(Duration::from_millis(300)).await.is_some() {
        answered += 1;
    }
    // Counting is per clock second: a burst that straddles a second boundary may get rps in
    // each of the two seconds before the block, never more.
    assert!(answered <= 100, "at most rps answers a second before the block, got {answered}");
    let dropped = counter_reaches(&running.shared.stats.flood_dropped, 400).await;
    assert!(dropped >= 400, "the rest dropped unanswered: {dropped}");
    assert_eq!(running.shared.stats.flood_blocked.load(Ordering::Relaxed), 1);

    // Another host's call goes through meanwhile; the blocked host stays blocked.
    let mut caller = Endpoint::udp_on("127.0.0.3").await;
    caller.send(proxy, invite(&caller, "honest", "h1", "100", proxy).as_bytes()).await;
    caller.expect("SIP/2.0 200").await;
    attacker.send(proxy, options_ping(&attacker, proxy, 999).as_bytes()).await;
    assert!(attacker.recv_within(Duration::from_millis(300)).await.is_none(), "still blocked");
    assert_eq!(count(&seen, "INVITE"), 1);
    running.stop().await;
}

/// The SIPVicious tools, or `None` (with a notice) when they are missing outside CI.
fn sipvicious() -> bool {
    let ok = std::process::Command::new("svmap").arg("--version").output().is_ok()
        && std::process::Command::new("svwar").arg("--version").output().is_ok();
    if !ok {
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "sipvicious (svmap, svwar) is required under CI=true (apt-get install sipvicious)"
        );
        eprintln!("notice: sipvicious not found; the scanner test is skipped");
    }
    ok
}

/// Runs scanners side by side, each for at most 60 s.
async fn scan(runs: &[(&str, Vec<String>)]) {
    let mut children: Vec<_> = runs
        .iter()
        .map(|(tool, args)| {
            let child = std::process::Command::new(tool)
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("scanner starts");
            (*tool, child)
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for (tool, child) in &mut children {
        while child.try_wait().expect("scanner status").is_none() {
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{tool} did not finish within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn sipvicious_scans_make_no_call_and_leak_nothing() {
    if !sipvicious() {
        return;
    }
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    let seen = spawn_pbx(pbx, Pbx::Answer);
    let dir = std::env::temp_dir().join(format!("sluice-scan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let creds = dir.join("credentials");
    std::fs::write(
        &creds,
        format!("acme:sluice:{}\n", sluice::auth::Verifier::ha1(false, "acme", "sluice", "pw")),
    )
    .unwrap();
    let running = start(&config_with(
        &[uri],
        "",
        &format!("[auth]\nrealm = \"sluice\"\ncredentials = \"{}\"\n[[customer]]\nname = \"acme\"\nips = [\"127.0.0.3/32\"]\n", creds.display()),
    ))
    .await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let port = proxy.port().to_string();
    let mut runs = vec![("svmap", vec!["-p".to_string(), port.clone(), "127.0.0.1".into()])];
    for method in ["REGISTER", "INVITE", "OPTIONS"] {
        let args =
            ["--force", "-e100-160", "-m", method, "-t", "0.02", "--maximumtime=2", "-p", &port, "127.0.0.1"];
        runs.push(("svwar", args.iter().map(|s| s.to_string()).collect()));
    }
    scan(&runs).await;
    let stats = &running.shared.stats;
    let reached = stats.requests_in.load(Ordering::Relaxed);
    // svwar gives up early: every probe gets the same 407 (retransmitted, since it never
    // ACKs), which it cannot tell from "no such extension". It learns nothing.
    assert!(reached >= 4, "the scanners did reach sluice: {reached} requests");
    let challenged = stats.auth[sluice::stats::AuthResult::Challenged as usize].load(Ordering::Relaxed);
    assert!(challenged >= 2, "INVITE and REGISTER probes were challenged: {challenged}");
    assert_eq!(stats.calls_admitted.load(Ordering::Relaxed), 0, "a scan is not a call");
    assert_eq!(count(&seen, "INVITE"), 0);
    assert_eq!(running.shared.limits.usage(tokio::time::Instant::now(), &LimitKey::server()).0, 0);
    // Still up and serving: a ping, and a real customer's call.
    let mut caller = Endpoint::udp_on("127.0.0.3").await;
    caller.send(proxy, options_ping(&caller, proxy, 1).as_bytes()).await;
    caller.expect("SIP/2.0 200").await;
    caller.send(proxy, invite(&caller, "after-scan", "a1", "100", proxy).as_bytes()).await;
    caller.expect("SIP/2.0 200").await;
    running.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
