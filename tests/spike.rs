//! Spike buffering end to end: bursts wait for a slot instead of being refused, the PBX sees
//! a paced stream, priority lanes, deadline-aware refusal, CANCEL of a waiting call,
//! emergency bypass; counters back to zero.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sluice::peer::Transport;

/// A PBX that answers 486 at once (so no channel stays held) and timestamps every INVITE.
fn timed_pbx(ep: Endpoint) -> std::sync::Arc<std::sync::Mutex<Vec<(Instant, String)>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut ep = ep;
        while let Some((msg, from)) = ep.recv_within(Duration::from_secs(3600)).await {
            if msg.starts_with("INVITE ") {
                log.lock()
                    .unwrap()
                    .push((Instant::now(), header(&msg, "Call-ID").unwrap_or_default().to_string()));
                ep.send(from, respond(&msg, 486, "Busy Here", Some("b"), "", None).as_bytes()).await;
            }
        }
    });
    seen
}

async fn burst(caller: &mut Endpoint, proxy: std::net::SocketAddr, prefix: &str, n: usize, over: Duration) {
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        caller.send(proxy, invite(caller, &id, &id, "100", proxy).as_bytes()).await;
        tokio::time::sleep(over / n as u32).await;
    }
}

/// Most arrivals in any one-second window, with 5 ms of slack for timestamping at the PBX.
fn max_in_any_second(times: &[Instant]) -> usize {
    let mut t: Vec<Instant> = times.to_vec();
    t.sort();
    (0..t.len())
        .map(|i| t[i..].iter().take_while(|x| x.duration_since(t[i]) < Duration::from_millis(995)).count())
        .max()
        .unwrap_or(0)
}

async fn setup(
    extra: &str,
) -> (sluice::server::Running, std::sync::Arc<std::sync::Mutex<Vec<(Instant, String)>>>) {
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    let seen = timed_pbx(pbx);
    (start(&config_with(&[uri], "", extra)).await, seen)
}

#[tokio::test]
async fn a_burst_becomes_a_paced_stream() {
    let (running, seen) = setup("[limits]\ncps = 20\n[overflow]\nqueue_ms = 3000\n").await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    burst(&mut caller, proxy, "pace", 50, Duration::from_millis(100)).await;
    let answers = finals(&mut caller, Duration::from_millis(2800)).await;
    let times: Vec<Instant> = seen.lock().unwrap().iter().map(|(t, _)| *t).collect();
    assert_eq!(times.len(), 50, "every call reaches the PBX");
    // The timeline (calls reaching the PBX per 100 ms), for the README.
    let first = times.iter().min().copied().unwrap();
    let mut per_100ms = [0usize; 25];
    for t in &times {
        let slot = (t.duration_since(first).as_millis() / 100) as usize;
        if let Some(s) = per_100ms.get_mut(slot) {
            *s += 1;
        }
    }
    println!("calls at the PBX per 100 ms: {per_100ms:?}");
    assert!(
        max_in_any_second(&times) <= 20,
        "never more than 20 in any second: {}",
        max_in_any_second(&times)
    );
    assert_eq!(answers.iter().filter(|(s, _)| *s == 503).count(), 0, "none refused");
    assert_eq!(answers.iter().filter(|(s, _)| *s == 486).count(), 50);
    let stats = &running.shared.stats;
    assert_eq!(stats.calls_queued.load(std::sync::atomic::Ordering::Relaxed), 30);
    assert_eq!(stats.queue_admitted.load(std::sync::atomic::Ordering::Relaxed), 30);
    assert_eq!(stats.queue_depth.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(running.shared.limits.total_channels(), 0, "no leak through the queue");
    running.stop().await;
}

#[tokio::test]
async fn a_short_queue_admits_what_fits_and_refuses_the_rest_in_time() {
    let (running, seen) = setup("[limits]\ncps = 20\n[overflow]\nqueue_ms = 1000\n").await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    let sent = Instant::now();
    burst(&mut caller, proxy, "short", 50, Duration::from_millis(100)).await;
    let mut refused_at = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(2000);
    let mut answers = Vec::new();
    while Instant::now() < deadline {
        match caller.recv_within(Duration::from_millis(100)).await {
            Some((m, _))
                if (m.starts_with("SIP/2.0 503") || m.starts_with("SIP/2.0 486"))
                    && !answers.contains(&m) =>
            {
                if m.starts_with("SIP/2.0 503") {
                    refused_at.push(sent.elapsed());
                }
                answers.push(m);
            }
            _ => {}
        }
    }
    let admitted = seen.lock().unwrap().len();
    assert!((35..=42).contains(&admitted), "about 40 admitted, got {admitted}");
    assert_eq!(refused_at.len(), 50 - admitted, "the rest refused");
    assert!(
        refused_at.iter().all(|t| *t < Duration::from_millis(1300)),
        "refused within ~1 s: {refused_at:?}"
    );
    assert!(
        answers
            .iter()
            .filter(|m| m.starts_with("SIP/2.0 503"))
            .all(|m| m.lines().next() == Some("SIP/2.0 503 CPS Limit reached"))
    );
    assert_eq!(running.shared.limits.total_channels(), 0);
    running.stop().await;
}

#[tokio::test]
async fn high_priority_overtakes_a_queued_backlog() {
    let extra = "[limits]\ncps = 5\n[overflow]\nqueue_ms = 5000\n\
        [[customer]]\nname = \"vip\"\nips = [\"127.0.0.2/32\"]\npriority = 10\n\
        [[customer]]\nname = \"bulk\"\nips = [\"127.0.0.3/32\"]\n";
    let (running, seen) = setup(extra).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut bulk = Endpoint::udp_on("127.0.0.3").await;
    let mut vip = Endpoint::udp_on("127.0.0.2").await;
    burst(&mut bulk, proxy, "bulk", 15, Duration::from_millis(50)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    burst(&mut vip, proxy, "vip", 3, Duration::from_millis(10)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let order: Vec<String> = seen.lock().unwrap().iter().map(|(_, id)| id.clone()).collect();
    assert!(order.len() >= 8, "{order:?}");
    assert!(order[..5].iter().all(|id| id.starts_with("bulk")), "the first second went to the early backlog");
    assert!(
        order[5..8].iter().all(|id| id.starts_with("vip")),
        "vip's calls first when slots free: {order:?}"
    );
    let _ = finals(&mut bulk, Duration::from_millis(10)).await;
    running.stop().await;
}

#[tokio::test]
async fn a_cancelled_waiting_call_never_reaches_the_pbx() {
    let (running, seen) = setup("[limits]\ncps = 1\n[overflow]\nqueue_ms = 5000\n").await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    caller.send(proxy, invite(&caller, "c-a", "c-a", "100", proxy).as_bytes()).await;
    caller.expect("SIP/2.0 486").await;
    let waiting = invite(&caller, "c-b", "c-b", "100", proxy);
    caller.send(proxy, waiting.as_bytes()).await;
    caller.expect("SIP/2.0 100").await;
    assert_eq!(running.shared.stats.queue_depth.load(std::sync::atomic::Ordering::Relaxed), 1);
    let cancel = waiting.replacen("INVITE sip", "CANCEL sip", 1).replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    caller.send(proxy, cancel.as_bytes()).await;
    caller.expect("SIP/2.0 200").await;
    caller.expect("SIP/2.0 487").await;
    assert_eq!(running.shared.stats.queue_depth.load(std::sync::atomic::Ordering::Relaxed), 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    caller.send(proxy, invite(&caller, "c-c", "c-c", "100", proxy).as_bytes()).await;
    // (The unacknowledged 486 of c-a is retransmitted meanwhile: wait for c-c's own answer.)
    loop {
        let (m, _) = caller.expect("SIP/2.0 486").await;
        if header(&m, "Call-ID") == Some("c-c") {
            break;
        }
    }
    let ids: Vec<String> = seen.lock().unwrap().iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(ids, vec!["c-a", "c-c"], "the cancelled call took no slot and never reached the PBX");
    running.stop().await;
}

#[tokio::test]
async fn queue_depth_and_hopeless_waits_are_refused_at_once() {
    let (running, seen) = setup("[limits]\ncps = 1\n[overflow]\nqueue_ms = 2500\nqueue_depth = 1\n").await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    let started = Instant::now();
    burst(&mut caller, proxy, "d", 3, Duration::from_millis(30)).await;
    let (r, _) = caller.expect("SIP/2.0 503").await;
    assert!(started.elapsed() < Duration::from_millis(500), "the third call is refused at once (queue full)");
    assert_eq!(header(&r, "Call-ID"), Some("d-2"));
    let _ = finals(&mut caller, Duration::from_millis(1300)).await;
    assert_eq!(seen.lock().unwrap().len(), 2, "the first at once, the queued one a second later");
    running.stop().await;

    // A wait longer than queue_ms is refused at once: 1 CPS, 1.5 s queue, two already ahead.
    let (running, _) = setup("[limits]\ncps = 1\n[overflow]\nqueue_ms = 1500\n").await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    burst(&mut caller, proxy, "h", 3, Duration::from_millis(30)).await;
    let (r, _) = caller.expect("SIP/2.0 503").await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(header(&r, "Call-ID"), Some("h-2"), "two ahead at 1 CPS cannot make 1.5 s");
    running.stop().await;
}

#[tokio::test]
async fn an_emergency_number_goes_through_a_full_server() {
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    spawn_pbx(pbx, Pbx::Answer);
    let running = start(&config_with(&[uri], "", "[limits]\nchannels = 1\ncps = 1\n")).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    caller.send(proxy, invite(&caller, "e-1", "e-1", "100", proxy).as_bytes()).await;
    caller.expect("SIP/2.0 200").await;
    caller.send(proxy, invite(&caller, "e-2", "e-2", "100", proxy).as_bytes()).await;
    caller.expect("SIP/2.0 503").await;
    caller.send(proxy, invite(&caller, "e-911", "e-911", "911", proxy).as_bytes()).await;
    caller.expect("SIP/2.0 200").await;
    let now = tokio::time::Instant::now();
    assert_eq!(
        running.shared.limits.usage(now, &sluice::limit::LimitKey::server()).0,
        2,
        "the emergency call is counted"
    );
    running.stop().await;
}

#[tokio::test]
async fn channels_can_wait_too_when_enabled() {
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    spawn_pbx(pbx, Pbx::Answer);
    let running = start(&config_with(
        &[uri],
        "",
        "[limits]\nchannels = 1\n[overflow]\nqueue_ms = 3000\nqueue_channels = true\n",
    ))
    .await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    caller.send(proxy, invite(&caller, "w-1", "w-1", "100", proxy).as_bytes()).await;
    caller.expect("SIP/2.0 200").await;
    caller.send(proxy, invite(&caller, "w-2", "w-2", "100", proxy).as_bytes()).await;
    caller.expect("SIP/2.0 100").await;
    assert!(caller.recv_within(Duration::from_millis(300)).await.is_none(), "w-2 waits for a channel");
    let bye = in_dialog("BYE", &caller, "sip:pbx@x", "w-1", "caller-w-1", "pbx-w-1", 2, &[], "bye-w-1");
    caller.send(proxy, bye.as_bytes()).await;
    loop {
        let (m, _) = caller.expect("SIP/2.0 200").await;
        if header(&m, "Call-ID") == Some("w-2") {
            break; // admitted the moment the BYE freed the channel
        }
    }
    running.stop().await;
}

#[tokio::test]
async fn a_gateway_answering_503_is_backed_off_for_its_retry_after() {
    let mut overloaded = Endpoint::udp().await;
    let healthy = Endpoint::udp().await;
    let (first, second) = (overloaded.uri(), healthy.uri());
    let seen = timed_pbx(healthy);
    let running = start(&config_with(&[first, second], "", "")).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    caller.send(proxy, invite(&caller, "bo-1", "bo-1", "100", proxy).as_bytes()).await;
    let (inv, from) = overloaded.expect("INVITE ").await;
    overloaded
        .send(
            from,
            respond(&inv, 503, "Service Unavailable", Some("o"), "Retry-After: 1\r\n", None).as_bytes(),
        )
        .await;
    caller.expect("SIP/2.0 486").await; // failed over to the healthy gateway
    // Within the Retry-After the overloaded gateway is not tried at all.
    caller.send(proxy, invite(&caller, "bo-2", "bo-2", "100", proxy).as_bytes()).await;
    loop {
        let (m, _) = caller.expect("SIP/2.0 486").await;
        if header(&m, "Call-ID") == Some("bo-2") {
            break;
        }
    }
    while let Some((m, _)) = overloaded.recv_within(Duration::from_millis(100)).await {
        assert!(!m.starts_with("INVITE "), "a backed-off gateway got a new call: {m}");
    }
    // After it, the first gateway is used again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    caller.send(proxy, invite(&caller, "bo-3", "bo-3", "100", proxy).as_bytes()).await;
    let (inv3, _) = overloaded.expect("INVITE ").await;
    assert_eq!(header(&inv3, "Call-ID"), Some("bo-3"));
    assert_eq!(seen.lock().unwrap().len(), 2);
    running.stop().await;
}
