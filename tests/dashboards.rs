//! The Grafana dashboard and the Prometheus alert rules against a real /metrics document:
//! every sluice metric they query exists after a short run with calls admitted, refused,
//! queued and over a shadow limit, and `promtool check rules` accepts the rules.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use sluice::peer::Transport;

const DASHBOARD: &str = include_str!("../contrib/grafana/sluice.json");
const ALERTS: &str = include_str!("../contrib/prometheus/alerts.yml");
const ALERTS_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/prometheus/alerts.yml");

/// Every `sluice_*` metric name in a text of queries.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("sluice_") {
        let tail = &rest[i..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The PromQL of the dashboard's panels.
fn dashboard_queries() -> String {
    let dash: serde_json::Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "sluice-overview");
    let mut exprs = String::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            exprs.push_str(t["expr"].as_str().expect("expr"));
            exprs.push('\n');
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"].as_str() {
            exprs.push_str(q);
            exprs.push('\n');
        }
    }
    exprs
}

#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_query_exists() {
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    spawn_pbx(pbx, Pbx::Answer);
    let extra = "[limits]\ncps = 2\nchannels = 50\n\
        [[customer]]\nname = \"acme\"\nips = [\"127.0.0.8/32\"]\nchannels = 1\nmode = \"shadow\"\n\
        [overflow]\nqueue_ms = 1500\n";
    let running = start(&config_with(&[uri], "admin = \"127.0.0.1:0\"", extra)).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp_on("127.0.0.8").await;
    // Two at once, one queued, one refused (its wait would pass queue_ms), a shadow hit.
    for i in 0..5 {
        caller
            .send(proxy, invite(&caller, &format!("dash-{i}"), &format!("dash-{i}"), "100", proxy).as_bytes())
            .await;
    }
    let answers = finals(&mut caller, Duration::from_millis(1800)).await;
    assert!(answers.iter().any(|(s, _)| *s == 503), "{answers:?}");
    let (code, body) = http(running.admin.unwrap(), "GET", "/metrics").await;
    assert_eq!(code, 200);
    let exposed: BTreeSet<String> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    let queried: BTreeSet<String> =
        metric_names(&dashboard_queries()).union(&metric_names(ALERTS)).cloned().collect();
    assert!(queried.len() >= 15, "{queried:?}");
    let missing: Vec<&String> = queried.iter().filter(|n| !exposed.contains(*n)).collect();
    assert!(missing.is_empty(), "queried but not in /metrics: {missing:?}\n{body}");
    for series in [
        "sluice_limit{kind=\"channels\",name=\"acme\",scope=\"customer\"} 1",
        "sluice_limit{kind=\"cps\",name=\"\",scope=\"server\"} 2",
        "sluice_gateway_up{",
        "sluice_shadow_hits_total{kind=\"channels\",name=\"acme\",scope=\"customer\"}",
    ] {
        assert!(body.lines().any(|l| l.starts_with(series)), "{series} not in:\n{body}");
    }
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let found = std::process::Command::new("promtool").arg("--version").output().is_ok();
    if !found {
        assert!(!std::env::var("CI").is_ok_and(|v| v == "true"), "promtool is required under CI=true");
        eprintln!("SKIPPED: promtool not installed (Debian package prometheus)");
        return;
    }
    let out = std::process::Command::new("promtool").args(["check", "rules", ALERTS_PATH]).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
