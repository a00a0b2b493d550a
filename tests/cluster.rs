//! Cluster mode against a real redis-server started on an ephemeral port: two sluice nodes
//! share limits, a dead node's channels are freed, and Redis failures follow on_failure.
//! Skips with a notice when redis-server is missing, unless CI=true (then it fails).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sluice::peer::Transport;

struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start(port: u16) -> Option<Self> {
        Self::start_with(port, &[])
    }

    fn start_with(port: u16, extra: &[&str]) -> Option<Self> {
        match Self::try_start(port, extra) {
            Ok(redis) => redis,
            Err(why) => panic!("redis-server did not start on port {port}: {why}"),
        }
    }

    /// A redis-server on a port no other test holds: a port found free can be taken by a
    /// parallel test before this one binds it, so a start that fails (or meets another
    /// test's server there) is tried again on another port.
    fn start_any() -> Option<Self> {
        let mut last = String::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_or(0, |a| a.port());
            match Self::try_start(port, &[]) {
                Ok(redis) => return redis,
                Err(why) => last = why,
            }
        }
        panic!("redis-server did not start on any of 5 ports: {last}");
    }

    /// `Ok(None)`: redis-server is not installed (and CI is not set).
    fn try_start(port: u16, extra: &[&str]) -> Result<Option<Self>, String> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .args(["--enable-debug-command", "local"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("redis-server is required under CI=true (apt-get install redis-server)");
            }
            eprintln!("notice: redis-server not found; cluster tests skipped (apt-get install redis-server)");
            return Ok(None);
        };
        let mut redis = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = redis.child.try_wait() {
                return Err(format!("it exited ({status}): the port is taken"));
            }
            if let Some(info) = redis.query::<String>(&["INFO", "server"]) {
                // The server answering must be this one, not another test's on the same port.
                let pid = info.lines().find_map(|l| l.strip_prefix("process_id:")).map(str::trim);
                if pid == Some(redis.child.id().to_string().as_str()) {
                    return Ok(Some(redis));
                }
                return Err(format!("another server answers there (pid {pid:?})"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("no answer within 5 s".into())
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> Option<T> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = client.get_connection_with_timeout(Duration::from_millis(200)).ok()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn).ok()
    }

    /// Admissions a window list holds (the sum of its runs' counts, `time count total`
    /// each); -1 if it cannot be read.
    fn window(&self, key: &str) -> i64 {
        let Some(runs) = self.query::<Vec<String>>(&["LRANGE", key, "0", "-1"]) else { return -1 };
        runs.iter()
            .map(|r| r.split(' ').nth(1).and_then(|n| n.parse::<i64>().ok()).unwrap_or(-1_000_000))
            .sum()
    }

    /// Waits (up to 2 s: releases reach Redis asynchronously) for the server scope to hold
    /// `expected` channels; returns what it holds last.
    async fn settle_channels(&self, expected: i64) -> i64 {
        self.settle_channels_within(expected, Duration::from_secs(2)).await
    }

    async fn settle_channels_within(&self, expected: i64, wait: Duration) -> i64 {
        let deadline = Instant::now() + wait;
        loop {
            let now = self.server_channels();
            if now == expected || Instant::now() > deadline {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Settings for a store a test drives directly (`on_failure = "reject"`, one node).
    fn direct_settings(
        &self,
        node: &str,
        timeout_ms: u64,
        heartbeat_ms: u64,
    ) -> sluice::limit::redis::RedisSettings {
        sluice::limit::redis::RedisSettings {
            url: self.url(),
            node: node.into(),
            on_failure: sluice::config::OnFailure::Reject,
            nodes: 1,
            timeout: Duration::from_millis(timeout_ms),
            heartbeat: Duration::from_millis(heartbeat_ms),
        }
    }

    /// As [`Redis::settle_channels_within`], for tests without a runtime.
    fn settle_channels_within_blocking(&self, expected: i64, wait: Duration) -> i64 {
        let deadline = Instant::now() + wait;
        loop {
            let now = self.server_channels();
            if now == expected || Instant::now() > deadline {
                return now;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Channels the whole cluster holds at the server scope.
    fn server_channels(&self) -> i64 {
        self.query::<Option<i64>>(&["GET", "sluice:c:server"]).flatten().unwrap_or(0)
    }

    /// Freezes (`STOP`) or resumes (`CONT`) the server: a hung Redis, whose socket buffers
    /// keep taking requests it runs when it resumes.
    fn signal(&self, which: &str) {
        let ok = Command::new("kill").args([&format!("-{which}"), &self.child.id().to_string()]).status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -{which}");
    }

    fn signal_quietly(&self, which: &str) {
        let mut kill = Command::new("kill");
        kill.args([&format!("-{which}"), &self.child.id().to_string()]);
        let _ = kill.stderr(Stdio::null()).status();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.signal_quietly("CONT");
        self.kill();
    }
}

fn node_config(pbx: &str, redis: &str, node: &str, limits: &str, cluster_extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"udp://127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\n[log]\nlevel = \"error\"\n\
         [limits]\n{limits}\n\
         [[carrier]]\nname = \"pbx\"\ngateways = [\"{pbx}\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"pbx\"]\n\
         [cluster]\nredis = \"{redis}\"\nnode = \"{node}\"\nheartbeat_ms = 200\n{cluster_extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_cps_limit() {
    let Some(redis) = Redis::start_any() else { return };
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    let seen = spawn_pbx(pbx, Pbx::Busy);
    let a = start(&node_config(&uri, &redis.url(), "a", "cps = 10", "timeout_ms = 1000")).await;
    let b = start(&node_config(&uri, &redis.url(), "b", "cps = 10", "timeout_ms = 1000")).await;
    let (pa, pb) = (a.addr(Transport::Udp).unwrap(), b.addr(Transport::Udp).unwrap());
    let mut caller = Endpoint::udp().await;
    // 40 calls/s sprayed over both nodes for 4.9 s: 5 windows of 10.
    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_millis(4900) {
        let proxy = if i % 2 == 0 { pa } else { pb };
        let id = format!("cps-{i}");
        caller.send(proxy, invite(&caller, &id, &id, "100", proxy).as_bytes()).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let admitted = count(&seen, "INVITE");
    assert!(
        (49..=51).contains(&admitted),
        "cps 10 for the cluster over 5 s admits 50 +- 1, got {admitted} of {i}"
    );
    assert_eq!(redis.settle_channels(0).await, 0, "busy calls released their channels");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_one_channel_limit_and_a_dead_node_is_swept() {
    let Some(redis) = Redis::start_any() else { return };
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    spawn_pbx(pbx, Pbx::Answer);
    let a = start(&node_config(&uri, &redis.url(), "a", "channels = 10", "timeout_ms = 1000")).await;
    let b = start(&node_config(&uri, &redis.url(), "b", "channels = 10", "timeout_ms = 1000")).await;
    let (pa, pb) = (a.addr(Transport::Udp).unwrap(), b.addr(Transport::Udp).unwrap());
    let mut ca = Endpoint::udp().await;
    let mut cb = Endpoint::udp().await;
    for i in 0..10 {
        let id = format!("ch-a{i}");
        ca.send(pa, invite(&ca, &id, &id, "100", pa).as_bytes()).await;
        let id = format!("ch-b{i}");
        cb.send(pb, invite(&cb, &id, &id, "100", pb).as_bytes()).await;
    }
    let answers_a = finals(&mut ca, Duration::from_millis(500)).await;
    let answers_b = finals(&mut cb, Duration::from_millis(50)).await;
    let ok = answers_a.iter().chain(&answers_b).filter(|(s, _)| *s == 200).count();
    let full = answers_a
        .iter()
        .chain(&answers_b)
        .filter(|(s, m)| *s == 503 && m.contains("Channel Limit reached"))
        .count();
    assert_eq!((ok, full), (10, 10), "exactly 10 across both nodes");
    assert_eq!(redis.server_channels(), 10);

    // Node b hangs up its calls normally; node a dies with its calls up.
    hang_up_answered(&mut cb, pb, &answers_b).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a_calls = answers_a.iter().filter(|(s, _)| *s == 200).count() as i64;
    assert_eq!(redis.settle_channels(a_calls).await, a_calls);
    a.kill().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis.server_channels() != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(redis.server_channels(), 0, "the dead node's channels freed by the survivor");

    // b holds one call; a comes back under the same id: nothing is released twice.
    cb.send(pb, invite(&cb, "after", "after", "100", pb).as_bytes()).await;
    cb.expect("SIP/2.0 200").await;
    let a2 = start(&node_config(&uri, &redis.url(), "a", "channels = 10", "timeout_ms = 1000")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(redis.server_channels(), 1);
    let m = http(b.admin.unwrap(), "GET", "/metrics").await.1;
    assert!(m.lines().any(|l| l == "sluice_cluster_up 1"), "{m}");
    a2.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failure_follows_on_failure_and_recovers() {
    let port = free_port();
    let Some(mut redis) = Redis::start(port) else { return };
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    spawn_pbx(pbx, Pbx::Answer);
    let reject =
        start(&node_config(&uri, &redis.url(), "r", "channels = 4", "on_failure = \"reject\"")).await;
    let local =
        start(&node_config(&uri, &redis.url(), "l", "channels = 4", "on_failure = \"local\"\nnodes = 2"))
            .await;
    let allow = start(&node_config(&uri, &redis.url(), "al", "channels = 4", "on_failure = \"allow\"")).await;
    let (pr, pl) = (reject.addr(Transport::Udp).unwrap(), local.addr(Transport::Udp).unwrap());
    let pa = allow.addr(Transport::Udp).unwrap();
    let mut c = Endpoint::udp().await;
    c.send(pl, invite(&c, "before", "before", "100", pl).as_bytes()).await;
    c.expect("SIP/2.0 200").await;
    let mut ca = Endpoint::udp().await;
    for i in 0..3 {
        let id = format!("al-{i}");
        ca.send(pa, invite(&ca, &id, &id, "100", pa).as_bytes()).await;
    }
    let got = finals(&mut ca, Duration::from_millis(300)).await;
    assert_eq!(got.iter().filter(|(s, _)| *s == 200).count(), 3, "the cluster's 4 channels: 1 + 3");

    redis.kill();
    // reject: every new call refused, quickly (the Redis timeout bounds the wait).
    let sent = Instant::now();
    c.send(pr, invite(&c, "rej", "rej", "100", pr).as_bytes()).await;
    let (r, _) = c.expect("SIP/2.0 503").await;
    assert!(sent.elapsed() < Duration::from_millis(500), "SIP latency bounded: {:?}", sent.elapsed());
    assert!(r.contains("Channel Limit reached"));
    // local: channels 4 / 2 nodes = 2 on this node, counting the call it already has.
    for id in ["l1", "l2"] {
        c.send(pl, invite(&c, id, id, "100", pl).as_bytes()).await;
    }
    let got = finals(&mut c, Duration::from_millis(500)).await;
    let ok = got
        .iter()
        .filter(|(s, m)| *s == 200 && header(m, "CSeq").is_some_and(|x| x.ends_with("INVITE")))
        .count();
    assert_eq!(ok, 1, "one more fits locally while Redis is down: {got:?}");
    let m = http(local.admin.unwrap(), "GET", "/metrics").await.1;
    assert!(m.lines().any(|l| l == "sluice_cluster_up 0"), "{m}");
    // allow: no limits while Redis is away (the cluster already holds its 4 channels).
    for i in 3..6 {
        let id = format!("al-{i}");
        ca.send(pa, invite(&ca, &id, &id, "100", pa).as_bytes()).await;
    }
    let got = finals(&mut ca, Duration::from_millis(500)).await;
    let admitted =
        got.iter().filter(|(s, m)| *s == 200 && header(m, "Call-ID").is_some_and(|i| i >= "al-3")).count();
    assert_eq!(admitted, 3, "allow admits everything while Redis is down: {got:?}");

    // Redis returns (empty): nodes reconnect, re-assert the calls admitted through Redis that
    // are still up ("before" and al-0..2: the cluster's 4 channels) and count shared again.
    let redis = Redis::start(port).expect("redis restarts");
    cluster_up(&reject).await;
    assert_eq!(redis.settle_channels_within(4, Duration::from_secs(3)).await, 4, "live calls re-asserted");
    let final_for = |id: &'static str| {
        move |m: &str| {
            header(m, "Call-ID") == Some(id) && status(m) >= 200 && header(m, "CSeq") == Some("1 INVITE")
        }
    };
    c.send(pr, invite(&c, "after", "after", "100", pr).as_bytes()).await;
    loop {
        let (m, _) = c.expect("SIP/2.0 ").await;
        if final_for("after")(&m) {
            assert_eq!(status(&m), 503, "the restarted Redis knows the 4 calls still up: {m}");
            break;
        }
    }
    let before = "SIP/2.0 200 OK\r\nCall-ID: before\r\nCSeq: 1 INVITE\r\n\r\n".to_string();
    hang_up_answered(&mut c, pl, &[(200, before)]).await;
    assert_eq!(redis.settle_channels(3).await, 3, "the hang-up is released in the new Redis");
    c.send(pr, invite(&c, "after2", "after2", "100", pr).as_bytes()).await;
    loop {
        let (m, _) = c.expect("SIP/2.0 ").await;
        if final_for("after2")(&m) {
            assert_eq!(status(&m), 200, "shared counting again after recovery: {m}");
            break;
        }
    }
    reject.stop().await;
    local.stop().await;
    allow.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_flows_release_shared_channels_and_count_a_challenged_call_once() {
    let Some(redis) = Redis::start_any() else { return };
    let (ring, busy, silent) = (Endpoint::udp().await, Endpoint::udp().await, Endpoint::udp().await);
    let mut auth = Endpoint::udp().await;
    let uris = [ring.uri(), busy.uri(), silent.uri(), auth.uri()];
    spawn_pbx(ring, Pbx::Ring);
    spawn_pbx(busy, Pbx::Busy);
    spawn_pbx(silent, Pbx::Silent);
    let config = format!(
        "[server]\nlisten = [\"udp://127.0.0.1:0\"]\ngateway_timeout_ms = 300\n[log]\nlevel = \"error\"\n[limits]\nchannels = 1\ncps = 2\n\
         [[carrier]]\nname = \"ring\"\ngateways = [\"{}\"]\n[[carrier]]\nname = \"busy\"\ngateways = [\"{}\"]\n\
         [[carrier]]\nname = \"silent\"\ngateways = [\"{}\"]\n[[carrier]]\nname = \"auth\"\ngateways = [\"{}\"]\n\
         [[route]]\nprefix = \"1\"\ncarriers = [\"ring\"]\n[[route]]\nprefix = \"2\"\ncarriers = [\"busy\"]\n\
         [[route]]\nprefix = \"3\"\ncarriers = [\"silent\"]\n[[route]]\nprefix = \"4\"\ncarriers = [\"auth\"]\n\
         [cluster]\nredis = \"{}\"\nnode = \"flows\"\nheartbeat_ms = 200\n# A loaded CI machine must not turn a slow answer into a fallback here.\ntimeout_ms = 1000\n",
        uris[0],
        uris[1],
        uris[2],
        uris[3],
        redis.url()
    );
    let running = start(&config).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut c = Endpoint::udp().await;

    // CANCEL frees the shared channel.
    let inv = invite(&c, "f-cancel", "f-cancel", "100", proxy);
    c.send(proxy, inv.as_bytes()).await;
    c.expect("SIP/2.0 180").await;
    assert_eq!(redis.server_channels(), 1);
    c.send(
        proxy,
        inv.replacen("INVITE sip", "CANCEL sip", 1).replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL").as_bytes(),
    )
    .await;
    c.expect("SIP/2.0 487").await;
    assert_eq!(redis.settle_channels(0).await, 0, "CANCEL");
    tokio::time::sleep(Duration::from_millis(1000)).await; // cps 2: a fresh second

    // 486 and a timeout free it too.
    c.send(proxy, invite(&c, "f-busy", "f-busy", "200", proxy).as_bytes()).await;
    c.expect("SIP/2.0 486").await;
    assert_eq!(redis.settle_channels(0).await, 0, "486");
    c.send(proxy, invite(&c, "f-silent", "f-silent", "300", proxy).as_bytes()).await;
    c.expect("SIP/2.0 408").await;
    assert_eq!(redis.settle_channels(0).await, 0, "timeout");
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // 407 then the credentials INVITE: one CPS slot of the two, so a second new call fits.
    let first = invite(&c, "f-auth", "f-auth", "400", proxy);
    c.send(proxy, first.as_bytes()).await;
    let (inv, from) = auth.expect("INVITE ").await;
    auth.send(from, respond(&inv, 407, "Proxy Authentication Required", Some("p"), "", None).as_bytes())
        .await;
    c.expect("SIP/2.0 407").await;
    auth.expect("ACK ").await;
    let again = first
        .replace("CSeq: 1 INVITE", "CSeq: 2 INVITE")
        .replace("branch=z9hG4bKf-auth", "branch=z9hG4bKf-auth2");
    c.send(proxy, again.as_bytes()).await;
    let (inv2, from2) = auth.expect("INVITE ").await;
    auth.send(from2, respond(&inv2, 486, "Busy Here", Some("p"), "", None).as_bytes()).await;
    // The 486 went up, so the node has handled it (the PBX's datagram and the caller's next
    // INVITE may reach different worker sockets, and nothing orders those two)...
    c.expect("SIP/2.0 486").await;
    // ... but no waiting for the release to reach Redis: the node credits its own releases
    // in flight.
    c.send(proxy, invite(&c, "f-next", "f-next", "400", proxy).as_bytes()).await;
    let (inv3, _) = auth.expect("INVITE ").await;
    assert_eq!(header(&inv3, "Call-ID"), Some("f-next"), "the re-INVITE after 407 took no second CPS slot");
    running.stop().await;
}

/// Whether the node's /metrics says the cluster store is up.
async fn metrics_say_up(node: &sluice::server::Running) -> bool {
    let m = http(node.admin.unwrap(), "GET", "/metrics").await.1;
    m.lines().any(|l| l == "sluice_cluster_up 1")
}

/// Waits until the node's /metrics says the cluster store is up again.
async fn cluster_up(node: &sluice::server::Running) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = http(node.admin.unwrap(), "GET", "/metrics").await.1;
        if m.lines().any(|l| l == "sluice_cluster_up 1") {
            return;
        }
        assert!(Instant::now() < deadline, "cluster_up never returned to 1");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// INVITEs `ids` through `proxy`; returns the final statuses by Call-ID order of arrival.
async fn place(
    c: &mut Endpoint,
    proxy: std::net::SocketAddr,
    ids: &[String],
    wait: Duration,
) -> Vec<(u16, String)> {
    for id in ids {
        c.send(proxy, invite(c, id, id, "100", proxy).as_bytes()).await;
    }
    finals(c, wait)
        .await
        .into_iter()
        .filter(|(_, m)| header(m, "CSeq").is_some_and(|x| x.ends_with("INVITE")))
        .collect()
}

/// How a test makes Redis stop answering for a while.
#[derive(Clone, Copy, Debug)]
enum Hang {
    /// SIGSTOP, then SIGCONT: the process is frozen, the kernel keeps taking requests.
    Stop,
    /// DEBUG SLEEP 1.5: Redis is busy; requests queue behind it.
    Sleep,
}

/// The server scope's channel count /status shows on a node (its own calls).
async fn status_channels(node: &sluice::server::Running) -> i64 {
    let body = http(node.admin.unwrap(), "GET", "/status").await.1;
    let v: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
    v["server"]["channels"].as_i64().unwrap_or(-1)
}

/// A Redis that stops answering for longer than timeout_ms while calls arrive: the node
/// gives up on the admissions in flight and falls back to local limits. Redis runs those
/// admissions when it resumes; the node undoes them, so afterwards the shared count is what is
/// really up and exactly `channels` held calls fit across both nodes, the next refused.
/// Two mechanisms guard this: abandoned admissions are undone at the reconnect, and the
/// anti-entropy round (every heartbeat, 200 ms here) drops what no live call holds; with
/// both removed, the three ghost reservations stayed for good (3 channels fewer; this test
/// failed that way before either existed).
async fn a_hung_redis_leaks_nothing(hang: Hang) {
    let Some(redis) = Redis::start_any() else { return };
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    spawn_pbx(pbx, Pbx::Answer);
    let extra = "timeout_ms = 200\non_failure = \"local\"\nnodes = 1";
    let node = start(&node_config(&uri, &redis.url(), "hung", "channels = 4", extra)).await;
    let other = start(&node_config(&uri, &redis.url(), "other", "channels = 4", extra)).await;
    let (proxy, proxy2) = (node.addr(Transport::Udp).unwrap(), other.addr(Transport::Udp).unwrap());
    let mut c = Endpoint::udp().await;
    let before = place(&mut c, proxy, &["up-0".to_string()], Duration::from_millis(500)).await;
    assert_eq!(before.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![200]);
    assert_eq!(redis.settle_channels(1).await, 1);

    let sleeper = match hang {
        Hang::Stop => {
            redis.signal("STOP");
            None
        }
        Hang::Sleep => {
            let url = redis.url();
            let t = std::thread::spawn(move || {
                let client = redis::Client::open(url).expect("url");
                let mut conn = client.get_connection().expect("redis");
                let _: redis::RedisResult<String> =
                    redis::cmd("DEBUG").arg("SLEEP").arg(1.5).query(&mut conn);
            });
            tokio::time::sleep(Duration::from_millis(100)).await; // asleep now
            Some(t)
        }
    };
    let during: Vec<String> = (0..3).map(|i| format!("hung-{i}")).collect();
    let got = place(&mut c, proxy, &during, Duration::from_millis(1000)).await;
    assert_eq!(got.iter().filter(|(s, _)| *s == 200).count(), 3, "local limits while Redis hangs: {got:?}");
    hang_up_answered(&mut c, proxy, &got).await;
    finals(&mut c, Duration::from_millis(300)).await; // the BYEs' 200s
    match sleeper {
        None => redis.signal("CONT"),
        Some(t) => {
            let _ = t.join();
        }
    }
    cluster_up(&node).await;
    cluster_up(&other).await;
    assert_eq!(redis.settle_channels(1).await, 1, "only the call that is up holds a shared channel");
    assert_eq!(status_channels(&node).await, 1, "/status agrees");

    let after: Vec<String> = (0..4).map(|i| format!("after-{i}")).collect();
    let mut got = Vec::new();
    for (i, id) in after.iter().enumerate() {
        let to = if i % 2 == 0 { proxy2 } else { proxy };
        got.extend(place(&mut c, to, std::slice::from_ref(id), Duration::from_millis(400)).await);
    }
    let ok = got.iter().filter(|(s, _)| *s == 200).count();
    let refused = got.iter().filter(|(s, m)| *s == 503 && m.contains("Channel Limit reached")).count();
    assert_eq!((ok, refused), (3, 1), "4 channels across both nodes: the one up + 3, then refused: {got:?}");
    assert_eq!(redis.server_channels(), 4);
    node.stop().await;
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_leaks_no_channels() {
    a_hung_redis_leaks_nothing(Hang::Stop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_redis_leaks_no_channels() {
    a_hung_redis_leaks_nothing(Hang::Sleep).await;
}

/// No SIP worker waits on Redis: a call waits in the spike buffer for its CPS slot, Redis
/// goes busy for 4 s (DEBUG SLEEP) and the slot opens meanwhile, so the buffer's serving
/// round waits on Redis; 20 OPTIONS of other Call-IDs (spread over the shards) and another
/// call's BYE are all answered before Redis wakes, with a median round trip under 10 ms
/// (here ~0.4 ms). The waiting call is admitted when Redis answers, before its deadline. (A
/// guard of the design: the build before the sharded core also passed the BYE part, so no
/// claim that it caught a stall there.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_never_stalls_other_calls() {
    let Some(redis) = Redis::start_any() else { return };
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    spawn_pbx(pbx, Pbx::Answer);
    let extra = "timeout_ms = 5000\n[overflow]\nqueue_ms = 6000";
    let node = start(&node_config(&uri, &redis.url(), "slow", "cps = 1\nchannels = 10", extra)).await;
    let proxy = node.addr(Transport::Udp).unwrap();
    let mut c = Endpoint::udp().await;
    let admitted = Instant::now();
    let up = place(&mut c, proxy, &["established".to_string()], Duration::from_millis(300)).await;
    assert_eq!(up.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![200]);
    let mut n = Endpoint::udp().await;
    n.send(proxy, invite(&n, "queued", "queued", "100", proxy).as_bytes()).await;
    n.expect("SIP/2.0 100").await;

    let url = redis.url();
    let sleeper = std::thread::spawn(move || {
        let client = redis::Client::open(url).expect("url");
        let mut conn = client.get_connection().expect("redis");
        let _: redis::RedisResult<String> = redis::cmd("DEBUG").arg("SLEEP").arg(4).query(&mut conn);
        Instant::now() // when Redis answers again
    });
    // The queued call's slot opens 1 s after the first admission, with Redis asleep.
    tokio::time::sleep_until((admitted + Duration::from_millis(1400)).into()).await;
    // Other calls' messages are handled while Redis sleeps: 20 OPTIONS, each its own
    // Call-ID (so spread over the shards), then the established call's BYE.
    let mut p = Endpoint::udp().await;
    let mut rtts = Vec::new();
    for i in 0..20 {
        let local = p.local;
        let ping = format!(
            "OPTIONS sip:{proxy} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKping{i};rport\r\nMax-Forwards: 70\r\nFrom: <sip:p@{local}>;tag=p{i}\r\nTo: <sip:{proxy}>\r\nCall-ID: ping-{i}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        let t = Instant::now();
        p.send(proxy, ping.as_bytes()).await;
        p.expect("SIP/2.0 200").await;
        rtts.push(t.elapsed());
    }
    let sent = Instant::now();
    hang_up_answered(&mut c, proxy, &up).await;
    let (ok, _) = c.expect("SIP/2.0 200").await;
    let bye_done = Instant::now();
    assert_eq!(header(&ok, "CSeq"), Some("2 BYE"));
    let woke = sleeper.join().expect("sleeper");
    rtts.sort();
    println!(
        "while Redis slept: OPTIONS round trips median {:?}, max {:?}; BYE {:?}",
        rtts[10],
        rtts[19],
        bye_done - sent
    );
    // Causal, not a stopwatch: everything above was answered before Redis woke up (it
    // slept 4 s from ~1.4 s before); a worker waiting on Redis could not have answered.
    assert!(bye_done < woke, "the BYE's 200 came only after Redis woke");
    // And at once: half of the round trips under 10 ms (each is ~0.1 ms of work; the
    // margin is for a busy machine, and only the median is held to it).
    assert!(rtts[10] < Duration::from_millis(10), "median round trip {:?} while Redis slept", rtts[10]);
    let got = finals(&mut n, Duration::from_secs(6)).await;
    assert!(got.iter().any(|(s, _)| *s == 200), "admitted once Redis answered: {got:?}");
    node.stop().await;
}

/// Anti-entropy: a Redis restarted empty while 10 calls are up forgets their channels; each
/// node re-asserts its live calls' reservations every heartbeat, so within two heartbeats
/// (here 2 x 200 ms, plus the reconnect) Redis counts 10 again and a limit of 10 is full.
/// Then a stale reservation Redis holds for the node (as after a restore from an old
/// snapshot or a failover to a lagging replica) is dropped within the same bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_converge_after_redis_loses_or_keeps_stale_state() {
    let port = free_port();
    let Some(mut redis) = Redis::start(port) else { return };
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    spawn_pbx(pbx, Pbx::Answer);
    let node = start(&node_config(&uri, &redis.url(), "ae", "channels = 10", "timeout_ms = 200")).await;
    let proxy = node.addr(Transport::Udp).unwrap();
    let mut c = Endpoint::udp().await;
    let ids: Vec<String> = (0..10).map(|i| format!("ae-{i}")).collect();
    let up = place(&mut c, proxy, &ids, Duration::from_millis(800)).await;
    assert_eq!(up.iter().filter(|(s, _)| *s == 200).count(), 10);
    assert_eq!(redis.settle_channels(10).await, 10);

    redis.kill();
    let redis = Redis::start(port).expect("redis restarts, empty");
    assert_eq!(redis.server_channels(), 0, "the restarted Redis knows nothing");
    cluster_up(&node).await;
    assert_eq!(
        redis.settle_channels_within(10, Duration::from_secs(3)).await,
        10,
        "the node re-asserted its 10 live calls"
    );
    assert_eq!(status_channels(&node).await, 10, "/status and Redis agree");
    let got = place(&mut c, proxy, &["ae-11th".to_string()], Duration::from_millis(800)).await;
    assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![503], "a limit of 10 is full: {got:?}");

    hang_up_answered(&mut c, proxy, &up).await;
    finals(&mut c, Duration::from_millis(300)).await;
    assert_eq!(redis.settle_channels(0).await, 0, "the hang-ups are released, once");
    // A reservation for this node that no live call holds (an old snapshot's leftover).
    let _: Option<i64> = redis.query(&["HSET", "sluice:node:ae:held", "ae:0:1", "sluice:c:server"]);
    let _: Option<i64> = redis.query(&["INCR", "sluice:c:server"]);
    assert_eq!(redis.server_channels(), 1);
    assert_eq!(
        redis.settle_channels_within(0, Duration::from_secs(3)).await,
        0,
        "the stale reservation is dropped"
    );
    node.stop().await;
}

/// A Sentinel process and the temp dir of its config; both go when this drops.
struct Sentinel {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A redis-server in Sentinel mode watching `primary` as service "edge" (quorum 1, down
/// after 400 ms), on `port`, with its config file (Sentinel rewrites it) in a temp dir.
fn start_sentinel(port: u16, primary: u16) -> Sentinel {
    let dir = std::env::temp_dir().join(format!("sluice-sentinel-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\nsentinel monitor edge 127.0.0.1 {primary} 1\n\
             sentinel down-after-milliseconds edge 400\nsentinel failover-timeout edge 2000\n"
        ),
    )
    .unwrap();
    let child = Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server --sentinel");
    Sentinel { child, dir }
}

/// The port Sentinel names as the primary of "edge", if it answers.
fn sentinel_primary(sentinel: u16) -> Option<u16> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{sentinel}/")).ok()?;
    let mut conn = client.get_connection_with_timeout(Duration::from_millis(200)).ok()?;
    let addr: Vec<String> =
        redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg("edge").query(&mut conn).ok()?;
    addr.get(1)?.parse().ok()
}

/// Redis HA through Sentinel (one primary, one replica, one sentinel on loopback): the node
/// finds the primary through Sentinel; the primary is killed with 3 calls up; Sentinel
/// promotes the replica; the node follows it, a new call is admitted through the new primary,
/// and the new primary's count is the 4 calls really up (replicated, and re-asserted by the
/// node whatever replication missed), then 0 after they hang up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_is_followed() {
    let (pp, rp, sp) = (free_port(), free_port(), free_port());
    let Some(mut primary) = Redis::start(pp) else { return };
    let replica = Redis::start_with(rp, &["--replicaof", "127.0.0.1", &pp.to_string()]).expect("replica");
    let sentinel = start_sentinel(sp, pp);
    let deadline = Instant::now() + Duration::from_secs(10);
    while sentinel_primary(sp) != Some(pp) {
        assert!(Instant::now() < deadline, "sentinel never named the primary");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    spawn_pbx(pbx, Pbx::Answer);
    let url = format!("redis+sentinel://127.0.0.1:{sp}/edge");
    let node = start(&node_config(&uri, &url, "ha", "channels = 10", "timeout_ms = 200")).await;
    cluster_up(&node).await;
    let proxy = node.addr(Transport::Udp).unwrap();
    let mut c = Endpoint::udp().await;
    let ids: Vec<String> = (0..3).map(|i| format!("ha-{i}")).collect();
    let mut up = place(&mut c, proxy, &ids, Duration::from_millis(600)).await;
    assert_eq!(up.iter().filter(|(s, _)| *s == 200).count(), 3);
    assert_eq!(primary.settle_channels(3).await, 3, "counted on the primary Sentinel named");

    primary.kill();
    let killed = Instant::now();
    // Calls keep arriving through the switch (each hung up once answered): none is refused;
    // while no primary answers they are admitted under on_failure = "local".
    let (mut during, mut n) = (Vec::new(), 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut promoted = None;
    while promoted.is_none() || !metrics_say_up(&node).await {
        if promoted.is_none() && sentinel_primary(sp) == Some(rp) {
            promoted = Some(killed.elapsed());
        }
        let id = format!("ha-switch-{n}");
        n += 1;
        let got = place(&mut c, proxy, &[id], Duration::from_millis(150)).await;
        hang_up_answered(&mut c, proxy, &got).await;
        during.extend(got.into_iter().map(|(s, _)| s));
        assert!(Instant::now() < deadline, "no failover within 15 s");
    }
    assert!(!during.is_empty() && during.iter().all(|s| *s == 200), "calls during the switch: {during:?}");
    finals(&mut c, Duration::from_millis(300)).await; // the BYEs' answers
    eprintln!(
        "sentinel: promoted {promoted:?} after the kill; node up again {:?} after it; {} calls during the switch, all answered",
        killed.elapsed(),
        during.len()
    );
    let after = place(&mut c, proxy, &["ha-after".to_string()], Duration::from_millis(600)).await;
    assert_eq!(after.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![200], "admitted after the failover");
    up.extend(after);
    assert_eq!(
        replica.settle_channels_within(4, Duration::from_secs(3)).await,
        4,
        "the 4 calls up, on the new primary"
    );
    hang_up_answered(&mut c, proxy, &up).await;
    finals(&mut c, Duration::from_millis(300)).await;
    assert_eq!(
        replica.settle_channels_within(0, Duration::from_secs(3)).await,
        0,
        "released on the new primary"
    );
    node.stop().await;
    drop(sentinel);
}

/// A shared window is a list of runs (one per script), counted from its two ends after the
/// runs older than a second are popped. A limit must be exact, a window full of admissions
/// older than a second must not refuse, a refusal must give back the channels it took, a
/// window under a huge limit must not keep what fell out of its second, and a value in a
/// window's list that sluice did not write (a foreign client, a damaged key) must neither
/// fail the script nor count.
#[test]
fn the_shared_window_is_exact_and_forgets_what_left_its_second() {
    use std::sync::Arc;

    use sluice::limit::memory::MemoryStore;
    use sluice::limit::redis::RedisStore;
    use sluice::limit::{Demand, KeyName, LimitKey, Refusal, Scope, Store};

    let Some(redis) = Redis::start_any() else { return };
    let settings = redis.direct_settings("window", 2000, 10000);
    let now = tokio::time::Instant::now;
    let store = RedisStore::new(settings, Arc::new(MemoryStore::new(now()))).expect("store");
    let key = |name: &str| LimitKey { scope: Scope::Customer, name: KeyName::Text(Arc::from(name)) };
    let tight = Demand { key: key("tight"), cps: Some(3), ..Demand::default() };
    let full = Demand { key: key("full"), channels: Some(0), ..Demand::default() };
    let huge = Demand { key: key("huge"), cps: Some(1_000_000), ..Demand::default() };
    let card = |k: &str| redis.window(&format!("sluice:cps:customer:{k}"));
    let channels =
        |k: &str| redis.query::<Option<i64>>(&["GET", &format!("sluice:c:customer:{k}")]).flatten();

    // A run that would count 5 (its time is in the future), then a value that is no run.
    redis
        .query::<i64>(&["RPUSH", "sluice:cps:customer:tight", "9999999999999999 5 5", "junk"])
        .expect("rpush");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(store.admit(now(), std::slice::from_ref(&tight), true).expect("under the limit"));
    }
    let refused = store.admit(now(), std::slice::from_ref(&tight), true).expect_err("the 4th in one second");
    assert_eq!(refused.kind, Refusal::Cps);
    // Refused by its second demand: the first demand's channel goes back, its window is untouched.
    let refused = store.admit(now(), &[tight.clone(), full.clone()], false).expect_err("no channel");
    assert_eq!(refused.kind, Refusal::Channels);
    assert_eq!(channels("tight"), Some(3), "the refusal kept no channel of the first demand");
    assert_eq!(channels("full").unwrap_or(0), 0, "nor of the refusing one");
    for _ in 0..100 {
        held.push(store.admit(now(), std::slice::from_ref(&huge), true).expect("far under"));
    }
    assert!(card("huge") >= 90, "admissions of this second are kept: {}", card("huge"));

    // Redis's own clock decides the window; let this second pass.
    std::thread::sleep(Duration::from_millis(1100));
    for _ in 0..3 {
        held.push(store.admit(now(), std::slice::from_ref(&tight), true).expect("the window moved on"));
    }
    assert_eq!(
        store.admit(now(), std::slice::from_ref(&tight), true).expect_err("exact again").kind,
        Refusal::Cps
    );
    assert_eq!(card("tight"), 3, "trimmed to this second's admissions");
    for _ in 0..32 {
        held.push(store.admit(now(), std::slice::from_ref(&huge), true).expect("far under"));
    }
    assert!(card("huge") <= 32, "the admissions of the second before are gone: {}", card("huge"));
    for r in held {
        store.release(now(), r);
    }
}

/// Redis remembers for an hour the ids of admissions a node gave up on (timed out), so that
/// one arriving late reserves nothing. A node restarted within that hour numbers its
/// admissions from 1 again; they must not be taken for the ones its previous run abandoned
/// (before the fix, every such admission went unanswered and the store fell back).
#[test]
fn a_restarted_node_meets_none_of_the_ids_its_last_run_abandoned() {
    use std::sync::Arc;

    use sluice::limit::memory::MemoryStore;
    use sluice::limit::redis::RedisStore;
    use sluice::limit::{Demand, LimitKey, Store};

    let Some(redis) = Redis::start_any() else { return };
    let settings = redis.direct_settings("restart", 2000, 10000);
    let now = tokio::time::Instant::now;
    let demand = [Demand { key: LimitKey::server(), channels: Some(10), ..Demand::default() }];
    let records = || redis.query::<Vec<String>>(&["HKEYS", "sluice:node:restart:held"]).unwrap_or_default();

    let first = RedisStore::new(settings.clone(), Arc::new(MemoryStore::new(now()))).expect("store");
    let call = first.admit(now(), &demand, true).expect("admitted");
    let ids = records();
    assert_eq!(ids.len(), 1, "one reservation record: {ids:?}");
    first.release(now(), call);
    first.stop();
    drop(first);
    // As if that admission had timed out and been given up: its id is marked abandoned.
    let id = &ids[0];
    let _: Option<String> = redis.query(&["SET", &format!("sluice:t:{id}"), "1", "PX", "3600000"]);

    let second = RedisStore::new(settings, Arc::new(MemoryStore::new(now()))).expect("store");
    let mut calls = Vec::new();
    for _ in 0..3 {
        calls.push(second.admit(now(), &demand, true).expect("the restarted node's admissions reach Redis"));
        assert!(second.healthy());
    }
    assert_eq!(records().len(), 3, "each admission was reserved in Redis: {:?}", records());
    for call in calls {
        second.release(now(), call);
    }
    second.stop();
}

/// Anti-entropy re-asserts a node's live calls in scripts of 500 and then drops what Redis
/// holds for the node that no live call holds. With more than one script's worth of live
/// calls, every live call must count as live in that last step: before the fix, the last
/// script knew only its own 500, and every round gave back the channels of all the others.
#[test]
fn anti_entropy_keeps_every_live_call_of_a_busy_node() {
    use std::sync::Arc;

    use sluice::limit::memory::MemoryStore;
    use sluice::limit::redis::RedisStore;
    use sluice::limit::{Demand, LimitKey, Store};

    let Some(redis) = Redis::start_any() else { return };
    let settings = redis.direct_settings("busy", 2000, 100);
    let now = tokio::time::Instant::now;
    let store = RedisStore::new(settings, Arc::new(MemoryStore::new(now()))).expect("store");
    let demand = [Demand { key: LimitKey::server(), channels: Some(10_000), ..Demand::default() }];
    let calls: Vec<_> = (0..1_200).map(|_| store.admit(now(), &demand, true).expect("admitted")).collect();
    assert_eq!(redis.server_channels(), 1_200);
    store.spawn_maintenance();
    // Several anti-entropy rounds (one per 100 ms); the count must hold at every look.
    for _ in 0..15 {
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(redis.server_channels(), 1_200, "no live call's channel is given back");
    }
    for call in calls {
        store.release(now(), call);
    }
    assert_eq!(redis.settle_channels_within_blocking(0, Duration::from_secs(5)), 0, "all released, once");
    store.stop();
}

/// Admissions that arrive together go to Redis together, one script per batch. A batch must
/// decide as if its calls had come one at a time: a call refused by a later demand keeps
/// nothing of its earlier ones, the next call sees every admission before it, and a shadow
/// limit reports without refusing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_admissions_decides_as_if_one_at_a_time() {
    use std::sync::Arc;

    use sluice::limit::memory::MemoryStore;
    use sluice::limit::redis::{RedisStore, Remote};
    use sluice::limit::{Demand, KeyName, LimitKey, Refusal, Scope, Store};

    let Some(redis) = Redis::start_any() else { return };
    let settings = redis.direct_settings("batch", 2000, 10000);
    let now = tokio::time::Instant::now;
    let store = RedisStore::new(settings, Arc::new(MemoryStore::new(now()))).expect("store");
    let key = |scope, name: &str| LimitKey { scope, name: KeyName::Text(Arc::from(name)) };
    let demands = |customer: &str| {
        vec![
            Demand { key: LimitKey::server(), cpm: Some(50), channels: Some(1_000), ..Demand::default() },
            Demand { key: key(Scope::Customer, customer), channels: Some(10), ..Demand::default() },
            Demand { key: key(Scope::Did, "watched"), cps: Some(0), shadow: true, ..Demand::default() },
        ]
    };
    let wave = |customers: Vec<String>| {
        let tasks: Vec<_> = customers
            .into_iter()
            .map(|c| {
                let store = store.clone();
                let d = demands(&c);
                tokio::spawn(async move { (c, store.admit_async(now(), vec![d], true).await) })
            })
            .collect();
        async move {
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.expect("admission task"));
            }
            out
        }
    };

    // 200 at once over 4 customers of 10 channels each: 40 fit, and the 160 refused by
    // their customer take no minute-window slot of the server.
    let first = wave((0..200).map(|i| format!("c{}", i % 4)).collect()).await;
    let mut held = Vec::new();
    let mut per_customer = std::collections::HashMap::<String, usize>::new();
    for (c, answer) in first {
        match answer {
            Remote::Admitted(_, r) => {
                assert_eq!(r.would_reject().len(), 1, "the shadow limit reports each call");
                *per_customer.entry(c).or_default() += 1;
                held.push(r);
            }
            Remote::Rejected(r) => assert_eq!((r.key.scope, r.kind), (Scope::Customer, Refusal::Channels)),
            Remote::Unavailable => panic!("Redis answered every batch"),
        }
    }
    assert_eq!(held.len(), 40);
    assert!(per_customer.values().all(|n| *n == 10), "{per_customer:?}");
    assert_eq!(redis.window("sluice:cpm:server"), 40, "only the admitted calls are in the server's minute");
    // 20 more of a new customer: the server's minute has room for exactly 10.
    let second = wave((0..20).map(|_| "fresh".to_string()).collect()).await;
    let mut refused = 0;
    for (_, answer) in second {
        match answer {
            Remote::Admitted(_, r) => held.push(r),
            Remote::Rejected(r) => {
                assert_eq!((r.key.scope, r.kind), (Scope::Server, Refusal::Cpm));
                refused += 1;
            }
            Remote::Unavailable => panic!("Redis answered every batch"),
        }
    }
    assert_eq!((held.len(), refused), (50, 10));
    assert_eq!(redis.server_channels(), 50);
    let stats: String = redis.query(&["INFO", "commandstats"]).unwrap_or_default();
    let scripts: usize = stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls=")?.split(',').next()?.parse().ok())
        .unwrap_or(0);
    assert!(scripts > 0 && scripts < 220, "220 admissions went in fewer scripts: {scripts}");
    for r in held {
        store.release(now(), r);
    }
    store.stop();
}

/// A node upgraded in place finds what its previous version left in that version's layout
/// (one string key per reservation, listed in a set per node): its first sweep after the
/// start gives those channels back too.
#[test]
fn an_upgraded_node_releases_what_its_previous_version_left() {
    use std::sync::Arc;

    use sluice::limit::Store;
    use sluice::limit::memory::MemoryStore;
    use sluice::limit::redis::RedisStore;

    let Some(redis) = Redis::start_any() else { return };
    for id in ["old:1", "old:2"] {
        let _: Option<i64> = redis.query(&["SADD", "sluice:node:old:calls", id]);
        let _: Option<String> = redis.query(&["SET", &format!("sluice:r:{id}"), "sluice:c:server"]);
        let _: Option<i64> = redis.query(&["INCR", "sluice:c:server"]);
    }
    assert_eq!(redis.server_channels(), 2);
    let settings = redis.direct_settings("old", 2000, 10000);
    let store =
        RedisStore::new(settings, Arc::new(MemoryStore::new(tokio::time::Instant::now()))).expect("store");
    assert!(store.healthy());
    assert_eq!(redis.server_channels(), 0, "the previous run's reservations are given back");
    let left: Vec<String> = redis.query(&["KEYS", "sluice:r:*"]).unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    store.stop();
}

/// One late answer is one call decided by `on_failure`, not an outage: the store stays up.
/// Redis that stays slow (three batches in a row unanswered in time) is counted as down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_late_answer_is_not_an_outage_but_a_slow_redis_is() {
    use std::sync::Arc;

    use sluice::limit::memory::MemoryStore;
    use sluice::limit::redis::{RedisStore, Remote};
    use sluice::limit::{Demand, LimitKey, Store};

    let Some(redis) = Redis::start_any() else { return };
    let settings = redis.direct_settings("late", 300, 10000);
    let now = tokio::time::Instant::now;
    let store = RedisStore::new(settings, Arc::new(MemoryStore::new(now()))).expect("store");
    let demand = || vec![vec![Demand { key: LimitKey::server(), channels: Some(100), ..Demand::default() }]];
    let sleep = |secs: f64| {
        let url = redis.url();
        std::thread::spawn(move || {
            let client = redis::Client::open(url).expect("client");
            let mut conn = client.get_connection().expect("connection");
            let _: redis::RedisResult<String> = redis::cmd("DEBUG").arg("SLEEP").arg(secs).query(&mut conn);
        })
    };
    let mut held = Vec::new();
    match store.admit_async(now(), demand(), true).await {
        Remote::Admitted(_, r) => held.push(r),
        other => panic!("Redis answers: {other:?}"),
    }

    let busy = sleep(0.6);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(store.admit_async(now(), demand(), true).await, Remote::Unavailable), "the late one");
    assert!(store.healthy(), "one late answer does not count Redis as down");
    busy.join().expect("sleep");
    match store.admit_async(now(), demand(), true).await {
        Remote::Admitted(_, r) => held.push(r),
        other => panic!("Redis answers again: {other:?}"),
    }

    let busy = sleep(2.0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..3 {
        assert!(matches!(store.admit_async(now(), demand(), true).await, Remote::Unavailable));
    }
    // The third batch's own timeout ends just after its caller's.
    let deadline = Instant::now() + Duration::from_secs(1);
    while store.healthy() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!store.healthy(), "three late batches in a row: Redis counts as down");
    busy.join().expect("sleep");
    for r in held {
        store.release(now(), r);
    }
    store.stop();
}
