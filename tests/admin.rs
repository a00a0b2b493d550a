//! The admin API over real sockets: /metrics parsed by a Prometheus text parser and checked
//! against calls made, /status, /usage with a state file across restarts, hot reload.

mod common;

use std::time::Duration;

use common::*;
use sluice::peer::Transport;

/// How long a burst of calls is given to be answered (generous: this VM pauses at times).
const SETTLE: Duration = Duration::from_millis(1000);

/// The value of one sample in a parsed exposition.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

async fn scrape(admin: std::net::SocketAddr) -> prometheus_parse::Scrape {
    let (code, body) = http(admin, "GET", "/metrics").await;
    assert_eq!(code, 200);
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text")
}

fn config(pbx: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"udp://127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\n[log]\nlevel = \"warn\"\n\
         [limits]\nper_ip = {{ cps = 3 }}\n\
         [[customer]]\nname = \"acme\"\nips = [\"127.0.0.2/32\"]\nchannels = 2\n\
         [[carrier]]\nname = \"pbx\"\ngateways = [\"{pbx}\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"pbx\"]\n{extra}"
    )
}

#[tokio::test]
async fn metrics_follow_real_calls() {
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    spawn_pbx(pbx, Pbx::Answer);
    let running = start(&config(&uri, "")).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let admin = running.admin.unwrap();

    let m = scrape(admin).await;
    assert_eq!(sample(&m, "sluice_calls_total", &[("outcome", "admitted")]), Some(0.0));
    assert_eq!(sample(&m, "sluice_cluster_up", &[]), Some(1.0));
    assert_eq!(sample(&m, "sluice_queue_depth", &[]), Some(0.0));

    // acme (127.0.0.2): 3 calls against 2 channels. Another source: 5 calls against 3 CPS.
    let mut acme = Endpoint::udp_on("127.0.0.2").await;
    for i in 0..3 {
        acme.send(
            proxy,
            invite(&acme, &format!("m-acme-{i}"), &format!("m-acme-{i}"), "100", proxy).as_bytes(),
        )
        .await;
    }
    let mut other = Endpoint::udp().await;
    for i in 0..5 {
        other
            .send(
                proxy,
                invite(&other, &format!("m-other-{i}"), &format!("m-other-{i}"), "100", proxy).as_bytes(),
            )
            .await;
    }
    let acme_answers = finals(&mut acme, SETTLE).await;
    let other_answers = finals(&mut other, Duration::from_millis(50)).await;
    assert_eq!(acme_answers.iter().filter(|(s, _)| *s == 503).count(), 1);
    assert_eq!(other_answers.iter().filter(|(s, _)| *s == 503).count(), 2);

    let m = scrape(admin).await;
    assert_eq!(sample(&m, "sluice_calls_total", &[("outcome", "admitted")]), Some(5.0));
    assert_eq!(sample(&m, "sluice_calls_total", &[("outcome", "rejected_channels")]), Some(1.0));
    assert_eq!(sample(&m, "sluice_calls_total", &[("outcome", "rejected_cps")]), Some(2.0));
    assert_eq!(
        sample(
            &m,
            "sluice_limit_hits_total",
            &[("scope", "customer"), ("name", "acme"), ("kind", "channels")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "sluice_limit_hits_total", &[("scope", "ip"), ("name", "*"), ("kind", "cps")]),
        Some(2.0)
    );
    assert_eq!(sample(&m, "sluice_active_calls", &[("scope", "customer"), ("name", "acme")]), Some(2.0));
    assert_eq!(sample(&m, "sluice_active_calls", &[("scope", "carrier"), ("name", "pbx")]), Some(5.0));
    assert_eq!(sample(&m, "sluice_active_calls", &[("scope", "server"), ("name", "")]), Some(5.0));
    assert!(
        sample(&m, "sluice_sip_messages_total", &[("direction", "in"), ("kind", "request")]).unwrap() >= 8.0
    );
    assert!(m.docs.contains_key("sluice_calls_total"), "HELP text present");

    // Every call hangs up: active calls go back to 0 everywhere.
    hang_up_answered(&mut acme, proxy, &acme_answers).await;
    hang_up_answered(&mut other, proxy, &other_answers).await;
    tokio::time::sleep(SETTLE).await;
    let m = scrape(admin).await;
    for (scope, name) in [("server", ""), ("customer", "acme"), ("carrier", "pbx")] {
        assert_eq!(
            sample(&m, "sluice_active_calls", &[("scope", scope), ("name", name)]),
            Some(0.0),
            "{scope} {name}"
        );
    }
    running.stop().await;
}

#[tokio::test]
async fn status_health_and_top_ips() {
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    spawn_pbx(pbx, Pbx::Answer);
    let running = start(&config(&uri, "[[did]]\nnumber = \"100\"\nchannels = 9\n")).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let admin = running.admin.unwrap();
    assert_eq!(http(admin, "GET", "/health").await, (200, "ok".to_string()));
    assert_eq!(http(admin, "GET", "/nope").await.0, 404);

    let mut busy = Endpoint::udp_on("127.0.0.3").await;
    for i in 0..3 {
        busy.send(
            proxy,
            invite(&busy, &format!("s-busy-{i}"), &format!("s-busy-{i}"), "100", proxy).as_bytes(),
        )
        .await;
    }
    let mut quiet = Endpoint::udp_on("127.0.0.4").await;
    quiet.send(proxy, invite(&quiet, "s-quiet", "s-quiet", "100", proxy).as_bytes()).await;
    assert_eq!(finals(&mut busy, SETTLE).await.len(), 3);
    assert_eq!(finals(&mut quiet, Duration::from_millis(50)).await.len(), 1);

    let (code, body) = http(admin, "GET", "/status").await;
    assert_eq!(code, 200);
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["server"]["channels"], 4);
    assert_eq!(s["carriers"][0]["name"], "pbx");
    assert_eq!(s["carriers"][0]["channels"], 4);
    assert_eq!(s["carriers"][0]["gateways"][0]["up"], true);
    assert_eq!(s["routes"][0]["prefix"], "");
    assert_eq!(s["routes"][0]["customer"], serde_json::Value::Null);
    assert_eq!(s["dids"][0]["number"], "100");
    assert_eq!(s["dids"][0]["channels"], 4);
    assert_eq!(s["dids"][0]["limits"]["channels"], 9);
    assert_eq!(s["customers"][0]["name"], "acme");
    assert_eq!(s["top_ips"][0]["ip"], "127.0.0.3", "the busiest IP first");
    assert_eq!(s["top_ips"][0]["channels"], 3);
    assert_eq!(s["top_ips"][1]["ip"], "127.0.0.4");
    assert!(s["uptime_seconds"].is_u64());
    // The top view renders this document.
    let screen = sluice::top::render(&s, None);
    assert!(screen.contains("127.0.0.3"));

    running.shared.start_draining();
    assert_eq!(http(admin, "GET", "/health").await, (503, "draining".to_string()));
    running.stop().await;
}

#[tokio::test]
async fn usage_survives_a_restart_and_a_corrupt_file_is_survived() {
    let dir = std::env::temp_dir().join(format!("sluice-admin-usage-{}", std::process::id()));
    let state = dir.join("usage.json");
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    spawn_pbx(pbx, Pbx::Answer);
    let extra = format!("[usage]\nstate_file = \"{}\"\nwindow_days = 7\n", state.display());
    let cfg = config(&uri, &extra);

    let running = start(&cfg).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut c = Endpoint::udp().await;
    // Usage counts per wall-clock second: three INVITEs sent late in a second could land in
    // two (CI saw a max of 2 once), so they go early in one.
    let into_second =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_millis());
    if into_second > 500 {
        tokio::time::sleep(Duration::from_millis(u64::from(1020 - into_second))).await;
    }
    for i in 0..3 {
        c.send(proxy, invite(&c, &format!("u-{i}"), &format!("u-{i}"), "100", proxy).as_bytes()).await;
    }
    assert_eq!(finals(&mut c, SETTLE).await.iter().filter(|(s, _)| *s == 200).count(), 3);
    let (_, body) = http(running.admin.unwrap(), "GET", "/usage").await;
    let u: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(u["window_days"], 7);
    assert_eq!(u["scopes"][0]["scope"], "server");
    assert_eq!(u["scopes"][0]["max"], 3, "three calls admitted in the same second");
    running.stop().await; // saves on shutdown
    assert!(state.exists());

    let running = start(&cfg).await;
    let (_, body) = http(running.admin.unwrap(), "GET", "/usage").await;
    let again: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(again["scopes"][0]["max"], 3, "history loaded after a restart: {again}");
    assert!(
        again["scopes"].as_array().unwrap().iter().any(|r| r["scope"] == "carrier" && r["name"] == "pbx")
    );
    running.stop().await;

    std::fs::write(&state, b"\x00garbage{").unwrap();
    let running = start(&cfg).await;
    let (code, body) = http(running.admin.unwrap(), "GET", "/usage").await;
    assert_eq!(code, 200);
    let fresh: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(fresh["scopes"].as_array().map(Vec::len), Some(0), "a corrupt file starts a fresh history");
    running.stop().await;
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(saved["version"], 1, "the corrupt file was replaced by a valid one");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn reload_lowers_a_limit_under_active_calls() {
    let dir = std::env::temp_dir().join(format!("sluice-admin-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sluice.toml");
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    spawn_pbx(pbx, Pbx::Answer);
    let before = config(&uri, "").replace("channels = 2", "channels = 5");
    std::fs::write(&path, &before).unwrap();
    let server = sluice::server::Server::bind(sluice::config::Config::load(&path).unwrap()).await.unwrap();
    let running = server.start(tokio_util::sync::CancellationToken::new());
    let proxy = running.addr(Transport::Udp).unwrap();
    let admin = running.admin.unwrap();

    let mut acme = Endpoint::udp_on("127.0.0.2").await;
    for i in 0..3 {
        acme.send(proxy, invite(&acme, &format!("r-{i}"), &format!("r-{i}"), "100", proxy).as_bytes()).await;
    }
    let answered = finals(&mut acme, SETTLE).await;
    assert_eq!(answered.iter().filter(|(s, _)| *s == 200).count(), 3);

    // Lower acme's channels to 2 while 3 calls are up.
    std::fs::write(&path, before.replace("channels = 5", "channels = 2")).unwrap();
    let (code, body) = http(admin, "POST", "/reload").await;
    assert_eq!(code, 200, "{body}");
    acme.send(proxy, invite(&acme, "r-new", "r-new", "100", proxy).as_bytes()).await;
    let (r, _) = acme.expect("SIP/2.0 5").await;
    assert_eq!(r.lines().next(), Some("SIP/2.0 503 Channel Limit reached"));

    // An invalid file changes nothing: 400 with the errors, the old limits still enforced.
    std::fs::write(&path, "[server]\nlisten = []\nbogus = 1\n").unwrap();
    let (code, body) = http(admin, "POST", "/reload").await;
    assert_eq!(code, 400);
    assert!(body.contains("bogus"), "{body}");
    acme.send(proxy, invite(&acme, "r-new2", "r-new2", "100", proxy).as_bytes()).await;
    assert_eq!(acme.expect("SIP/2.0 5").await.0.lines().next(), Some("SIP/2.0 503 Channel Limit reached"));

    // Rename the customer and remove the carrier's name from use: the calls admitted under
    // "acme" and carrier "pbx" are still released correctly.
    std::fs::write(
        &path,
        before
            .replace("channels = 5", "channels = 2")
            .replace("\"acme\"", "\"acme-renamed\"")
            .replace("name = \"pbx\"", "name = \"pbx2\"")
            .replace("carriers = [\"pbx\"]", "carriers = [\"pbx2\"]"),
    )
    .unwrap();
    let (code, body) = http(admin, "POST", "/reload").await;
    assert_eq!(code, 200, "{body}");

    // The old calls end cleanly and every counter reaches 0.
    hang_up_answered(&mut acme, proxy, &answered).await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(running.shared.limits.total_channels(), 0);
    let (_, body) = http(admin, "GET", "/status").await;
    let s: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(s["customers"][0]["name"], "acme-renamed");
    assert_eq!(s["customers"][0]["channels"], 0);
    assert_eq!(s["customers"][0]["limits"]["channels"], 2, "the new limit is in force");
    let old_customer = sluice::limit::LimitKey {
        scope: sluice::limit::Scope::Customer,
        name: sluice::limit::KeyName::Text("acme".into()),
    };
    assert_eq!(
        running.shared.limits.usage(tokio::time::Instant::now(), &old_customer).0,
        0,
        "the old name's channels were released"
    );
    running.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_admin_token_guards_every_path_but_health() {
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    let cfg = config(&uri, "").replace("[server]\n", "[server]\nadmin_token = \"s3cret-token-0123456789\"\n");
    let running = start(&cfg).await;
    let admin = running.admin.unwrap();
    assert_eq!(http(admin, "GET", "/health").await.0, 200, "health stays open for load balancers");
    for (method, path) in [("GET", "/status"), ("GET", "/metrics"), ("GET", "/usage"), ("POST", "/reload")] {
        let raw = raw_http(admin, &format!("{method} {path} HTTP/1.0\r\nHost: x\r\n\r\n")).await;
        assert!(raw.starts_with("HTTP/1.0 401") || raw.starts_with("HTTP/1.1 401"), "{path}: {raw}");
        assert!(raw.to_ascii_lowercase().contains("www-authenticate: bearer"), "{raw}");
        let wrong = raw_http(
            admin,
            &format!("{method} {path} HTTP/1.0\r\nAuthorization: Bearer s3cret-token-0123456788\r\n\r\n"),
        )
        .await;
        assert!(wrong.contains(" 401 "), "a wrong token is refused: {wrong}");
    }
    let ok = raw_http(admin, "GET /status HTTP/1.0\r\nAuthorization: Bearer s3cret-token-0123456789\r\n\r\n")
        .await;
    assert!(ok.contains(" 200 "), "{ok}");
    let status = tokio::task::spawn_blocking(move || {
        sluice::top::fetch(&admin.to_string(), "/status", Some("s3cret-token-0123456789"))
    })
    .await
    .unwrap()
    .unwrap();
    assert!(status.get("server").is_some(), "sluice top sends the token");
    running.stop().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_its_request_is_cut_off() {
    let pbx = Endpoint::udp().await;
    let running = start(&config(&pbx.uri(), "")).await;
    let admin = running.admin.unwrap();
    let mut slow = tokio::net::TcpStream::connect(admin).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    slow.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = [0u8; 256];
    // The header timeout is 5 s; the connection must be gone well before this bound.
    let closed = tokio::time::timeout(Duration::from_secs(15), slow.read(&mut buf)).await;
    assert!(closed.is_ok(), "the admin listener still holds a request that never completed");
    // A request head over the size cap is refused too.
    let mut huge = tokio::net::TcpStream::connect(admin).await.unwrap();
    let big = format!("GET /status HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "a".repeat(64 * 1024));
    let _ = huge.write_all(big.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), huge.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(!text.contains(" 200 "), "an oversized head is not served: {text}");
    running.stop().await;
}

async fn raw_http(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw)).await.expect("admin answered").unwrap();
    String::from_utf8_lossy(&raw).into_owned()
}
