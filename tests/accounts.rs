//! Sub-accounts, shadow limits, calls per minute and carrier pacing end to end over real
//! sockets (and, through tests/accounts_cluster.rs, with the limits in Redis). The
//! `call.admission` events are captured as the JSON lines an operator's log would hold.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use sluice::limit::{Refusal, Scope};
use sluice::peer::Transport;

const SETTLE: Duration = Duration::from_millis(600);

/// The `call.admission` event of one call, parsed.
fn admission_event(call_id: &str) -> Option<serde_json::Value> {
    let log = log_lines();
    let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "call.admission" && v["call_id"] == call_id)
}

fn hits(running: &sluice::server::Running, scope: Scope, name: &str, kind: Refusal) -> u64 {
    running.shared.stats.limit_hits.get(&(scope, name.to_string(), kind)).map_or(0, |v| *v)
}

fn shadow_hits(running: &sluice::server::Running, scope: Scope, name: &str, kind: Refusal) -> u64 {
    running.shared.stats.shadow_hits.get(&(scope, name.to_string(), kind)).map_or(0, |v| *v)
}

async fn call(from: &mut Endpoint, id: &str, proxy: std::net::SocketAddr) -> Vec<(u16, String)> {
    from.send(proxy, invite(from, id, id, "100", proxy).as_bytes()).await;
    finals(from, SETTLE).await
}

/// A reseller with two sub-customers, both answered by the PBX: the reseller's two channels
/// are shared, so the third call is refused by the parent although its own customer has
/// room, and the event names the parent. Hang-ups give the parent's channels back.
#[tokio::test]
async fn two_sub_customers_fill_their_parents_channels() {
    let _ = log_lines();
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    let _seen = spawn_pbx(pbx, Pbx::Answer);
    let accounts = "[[customer]]\nname = \"reseller\"\nchannels = 2\n\
        [[customer]]\nname = \"acme\"\nparent = \"reseller\"\nips = [\"127.0.0.2/32\"]\nchannels = 5\n\
        [[customer]]\nname = \"beta\"\nparent = \"reseller\"\nips = [\"127.0.0.3/32\"]\nchannels = 5\n";
    let running = start(&config_with(&[uri], "admin = \"127.0.0.1:0\"", accounts)).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut acme = Endpoint::udp_on("127.0.0.2").await;
    let mut beta = Endpoint::udp_on("127.0.0.3").await;

    let first = call(&mut acme, "sub-acme-1", proxy).await;
    let second = call(&mut beta, "sub-beta-1", proxy).await;
    assert_eq!(first.iter().map(|f| f.0).collect::<Vec<_>>(), vec![200], "{first:?}");
    assert_eq!(second.iter().map(|f| f.0).collect::<Vec<_>>(), vec![200], "{second:?}");
    let third = call(&mut acme, "sub-acme-2", proxy).await;
    assert_eq!(third.len(), 1, "{third:?}");
    assert_eq!(
        (third[0].0, third[0].1.lines().next().unwrap_or("")),
        (503, "SIP/2.0 503 Channel Limit reached")
    );
    assert_eq!(hits(&running, Scope::Customer, "reseller", Refusal::Channels), 1);
    assert_eq!(hits(&running, Scope::Customer, "acme", Refusal::Channels), 0, "acme itself had room");
    let event = admission_event("sub-acme-2").expect("the refusal is logged");
    assert_eq!(
        (&event["decision"], &event["customer"], &event["scope"], &event["key"], &event["kind"]),
        (&"rejected".into(), &"acme".into(), &"customer".into(), &"reseller".into(), &"channels".into()),
        "{event}"
    );

    let (code, body) = http(running.admin.unwrap(), "GET", "/status").await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let customer = |name: &str| {
        status["customers"].as_array().unwrap().iter().find(|c| c["name"] == name).cloned().unwrap()
    };
    assert_eq!(customer("reseller")["channels"], 2);
    assert_eq!(
        (customer("acme")["parent"].clone(), customer("acme")["channels"].clone()),
        ("reseller".into(), 1.into())
    );
    assert_eq!(customer("reseller")["parent"], serde_json::Value::Null);
    assert_eq!(customer("beta")["mode"], "enforce");
    let usage: serde_json::Value =
        serde_json::from_str(&http(running.admin.unwrap(), "GET", "/usage").await.1).unwrap();
    let peak = |name: &str| {
        usage["scopes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["scope"] == "customer" && r["name"] == name)
            .map(|r| r["max"].clone())
    };
    // Every admitted call is the reseller's: its peak is the server's (1 or 2, depending on
    // whether the two admissions fell in one wall-clock second), each sub-customer's is 1.
    let server =
        usage["scopes"].as_array().unwrap().iter().find(|r| r["scope"] == "server").map(|r| r["max"].clone());
    assert_eq!(peak("reseller"), server, "{usage}");
    assert_eq!((peak("acme"), peak("beta")), (Some(1.into()), Some(1.into())), "{usage}");

    hang_up_answered(&mut acme, proxy, &first).await;
    hang_up_answered(&mut beta, proxy, &second).await;
    let reseller = sluice::limit::LimitKey::text(Scope::Customer, &Arc::from("reseller"));
    let deadline = Instant::now() + WAIT;
    while running.shared.limits.usage(tokio::time::Instant::now(), &reseller).0 > 0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        running.shared.limits.usage(tokio::time::Instant::now(), &reseller).0,
        0,
        "the parent's channels come back"
    );
    let again = call(&mut beta, "sub-beta-2", proxy).await;
    assert_eq!(again.first().map(|f| f.0), Some(200), "{again:?}");
}

/// A customer in shadow mode with one channel and 1 CPS: five calls at once are all
/// admitted (the enforcing server limit has room), four are logged as would-reject and
/// counted in `sluice_shadow_hits_total`; nothing is counted as a rejection.
#[tokio::test]
async fn a_shadow_customer_limit_admits_every_call_and_counts_it() {
    let _ = log_lines();
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    let seen = spawn_pbx(pbx, Pbx::Ring);
    let accounts = "[limits]\nchannels = 100\n\
        [[customer]]\nname = \"trial\"\nmode = \"shadow\"\nips = [\"127.0.0.4/32\"]\nchannels = 1\ncps = 1\n";
    let running = start(&config_with(&[uri], "admin = \"127.0.0.1:0\"", accounts)).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp_on("127.0.0.4").await;
    for i in 0..5 {
        caller
            .send(
                proxy,
                invite(&caller, &format!("shadow-{i}"), &format!("shadow-{i}"), "100", proxy).as_bytes(),
            )
            .await;
    }
    let deadline = Instant::now() + WAIT;
    while count(&seen, "INVITE") < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count(&seen, "INVITE"), 5, "every call reaches the PBX");
    assert_eq!(shadow_hits(&running, Scope::Customer, "trial", Refusal::Channels), 4);
    assert_eq!(running.shared.stats.limit_hits.len(), 0, "nothing refused");
    let admitted: Vec<serde_json::Value> =
        (0..5).filter_map(|i| admission_event(&format!("shadow-{i}"))).collect();
    assert_eq!(admitted.len(), 5);
    assert!(admitted.iter().all(|e| e["decision"] == "admitted"), "{admitted:?}");
    let flagged = admitted.iter().filter(|e| e["would_reject"] == "customer:trial:channels").count();
    assert_eq!(flagged, 4, "{admitted:?}");
    println!("a shadow hit as logged: {}", admitted[4]);
    let metrics = http(running.admin.unwrap(), "GET", "/metrics").await.1;
    assert!(
        metrics
            .lines()
            .any(|l| l == "sluice_shadow_hits_total{kind=\"channels\",name=\"trial\",scope=\"customer\"} 4"),
        "{metrics}"
    );
    let status = http(running.admin.unwrap(), "GET", "/status").await.1;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["customers"][0]["mode"], "shadow");
    assert_eq!(status["customers"][0]["channels"], 5, "a shadow limit still counts");
}

/// `cpm = 30`: of 60 calls in quick succession 30 go through and 30 get the CPS answer,
/// counted with kind `cpm` (the minute window's reopening is checked on a synthetic clock in
/// tests/spike_core.rs).
#[tokio::test]
async fn cpm_admits_thirty_of_sixty() {
    let _ = log_lines();
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    let seen = spawn_pbx(pbx, Pbx::Busy);
    let accounts = "[[customer]]\nname = \"dialer\"\nips = [\"127.0.0.5/32\"]\ncpm = 30\n";
    let running = start(&config_with(&[uri], "", accounts)).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp_on("127.0.0.5").await;
    for i in 0..60 {
        caller
            .send(proxy, invite(&caller, &format!("cpm-{i}"), &format!("cpm-{i}"), "100", proxy).as_bytes())
            .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let got = finals(&mut caller, SETTLE).await;
    let refused =
        got.iter().filter(|(s, m)| *s == 503 && m.starts_with("SIP/2.0 503 CPS Limit reached")).count();
    assert_eq!(refused, 30, "{got:?}");
    assert_eq!(count(&seen, "INVITE"), 30);
    assert_eq!(hits(&running, Scope::Customer, "dialer", Refusal::Cpm), 30);
    let last = admission_event("cpm-59").expect("logged");
    assert_eq!((&last["kind"], &last["key"]), (&"cpm".into(), &"dialer".into()), "{last}");
}

/// A carrier at cps 10 with pacing: a burst of 30 waits in the spike buffer and reaches the
/// gateway evenly spaced, a gap of ~100 ms between INVITEs (an unpaced carrier would get
/// ten at once at each window edge).
#[tokio::test]
async fn a_paced_carrier_gets_an_even_stream() {
    let mut gateway = Endpoint::udp().await;
    let uri = gateway.uri();
    let text = format!(
        "[server]\nlisten = [\"udp://127.0.0.1:0\"]\n[log]\nlevel = \"warn\"\n\
         [[carrier]]\nname = \"paced\"\ngateways = [\"{uri}\"]\ncps = 10\npacing = true\n\
         [[route]]\nprefix = \"\"\ncarriers = [\"paced\"]\n\
         [overflow]\nqueue_ms = 4000\nqueue_depth = 100\n"
    );
    let running = start(&text).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    for i in 0..30 {
        caller
            .send(proxy, invite(&caller, &format!("pace-{i}"), &format!("pace-{i}"), "100", proxy).as_bytes())
            .await;
    }
    let mut arrivals: Vec<(Instant, String)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(8);
    while arrivals.len() < 30 && Instant::now() < deadline {
        let Some((msg, from)) = gateway.recv_within(Duration::from_millis(500)).await else { continue };
        if !msg.starts_with("INVITE ") {
            continue;
        }
        let id = header(&msg, "Call-ID").unwrap_or_default().to_string();
        if !arrivals.iter().any(|(_, seen)| *seen == id) {
            arrivals.push((Instant::now(), id.clone()));
        }
        gateway
            .send(from, respond(&msg, 486, "Busy Here", Some(&format!("gw-{id}")), "", None).as_bytes())
            .await;
    }
    assert_eq!(arrivals.len(), 30, "every queued call went out");
    // Receive times are the test's own: a stalled test task can read a few datagrams at
    // once, so the strict spacing is checked on the synthetic clock (spike_core.rs). Here:
    // the typical gap is the pacing gap (unpaced, most gaps are ~0: ten per window edge).
    let mut gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1].0.duration_since(w[0].0)).collect();
    gaps.sort();
    assert!(
        gaps[gaps.len() / 2] >= Duration::from_millis(80),
        "median gap {:?}; gaps {gaps:?}",
        gaps[gaps.len() / 2]
    );
    let mut per_100ms = [0u32; 32];
    for (t, _) in &arrivals {
        let slot = (t.duration_since(arrivals[0].0).as_millis() / 100) as usize;
        per_100ms[slot.min(31)] += 1;
    }
    println!("INVITEs at the gateway per 100 ms from the first: {per_100ms:?}");
    let total = arrivals[29].0.duration_since(arrivals[0].0);
    assert!(total >= Duration::from_millis(2_700), "29 gaps of 100 ms, got {total:?}");
}

/// Rolling a limit out: shadow first (over it, calls go through and are counted), then the
/// same file with `mode = "enforce"` reloaded: the next call over it is refused, and the
/// calls admitted in shadow mode stay up.
#[tokio::test]
async fn switching_shadow_to_enforce_is_a_reload() {
    let dir =
        std::env::temp_dir().join(format!("sluice-shadow-reload-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sluice.toml");
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    let seen = spawn_pbx(pbx, Pbx::Ring);
    let accounts =
        "[[customer]]\nname = \"rollout\"\nmode = \"shadow\"\nips = [\"127.0.0.6/32\"]\nchannels = 1\n";
    let mut text = config_with(&[uri], "admin = \"127.0.0.1:0\"", accounts);
    if let Some(cluster) = cluster_section() {
        text.push_str(&cluster);
    }
    std::fs::write(&path, &text).unwrap();
    let server = sluice::server::Server::bind(sluice::config::Config::load(&path).unwrap()).await.unwrap();
    let running = server.start(tokio_util::sync::CancellationToken::new());
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp_on("127.0.0.6").await;
    for id in ["roll-1", "roll-2"] {
        caller.send(proxy, invite(&caller, id, id, "100", proxy).as_bytes()).await;
    }
    let deadline = Instant::now() + WAIT;
    while count(&seen, "INVITE") < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count(&seen, "INVITE"), 2, "shadow: both calls go through");
    assert_eq!(shadow_hits(&running, Scope::Customer, "rollout", Refusal::Channels), 1);

    std::fs::write(&path, text.replace("mode = \"shadow\"", "mode = \"enforce\"")).unwrap();
    let (code, body) = http(running.admin.unwrap(), "POST", "/reload").await;
    assert_eq!(code, 200, "{body}");
    caller.send(proxy, invite(&caller, "roll-3", "roll-3", "100", proxy).as_bytes()).await;
    let (answer, _) = caller.expect("SIP/2.0 5").await;
    assert_eq!(answer.lines().next(), Some("SIP/2.0 503 Channel Limit reached"));
    assert_eq!(hits(&running, Scope::Customer, "rollout", Refusal::Channels), 1);
    assert_eq!(count(&seen, "INVITE"), 2, "the two calls admitted in shadow mode stay up");
    let _ = std::fs::remove_dir_all(&dir);
}
