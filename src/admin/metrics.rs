//! `GET /metrics`: the contract's minimum set in the Prometheus text format 0.0.4, encoded by
//! the `prometheus` crate from a fresh registry filled at scrape time (counters from the
//! process-wide atomics, gauges from the limit store). Per-IP and per-user values never
//! become labels: they are on /status.

use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::time::Instant;

use super::Admin;
use crate::limit::Scope;
use crate::stats::Stats;

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Option<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels).ok()?;
    registry.register(Box::new(c.clone())).ok()?;
    Some(c)
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Option<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).ok()?;
    registry.register(Box::new(g.clone())).ok()?;
    Some(g)
}

/// The exposition text; an empty string only if the registry itself fails (never expected).
pub fn render(admin: &Admin) -> String {
    build(admin).unwrap_or_default()
}

fn build(admin: &Admin) -> Option<String> {
    let registry = Registry::new();
    let stats = &admin.shared.stats;
    let get = |c: &std::sync::atomic::AtomicU64| Stats::get(c);

    let calls = counter(&registry, "sluice_calls_total", "Initial INVITEs by outcome.", &["outcome"])?;
    for (outcome, value) in [
        ("admitted", get(&stats.calls_admitted)),
        ("rejected_cps", get(&stats.calls_rejected_cps)),
        ("rejected_channels", get(&stats.calls_rejected_channels)),
        ("redirected", get(&stats.calls_redirected)),
        ("queued", get(&stats.calls_queued)),
        ("no_route", get(&stats.calls_no_route)),
        ("forbidden", get(&stats.calls_forbidden)),
        ("timeout", get(&stats.calls_timeout)),
    ] {
        calls.with_label_values(&[outcome]).inc_by(value);
    }

    let hits = counter(
        &registry,
        "sluice_limit_hits_total",
        "Which limit turned a call away (scope ip/user: name \"*\").",
        &["scope", "name", "kind"],
    )?;
    for entry in stats.limit_hits.iter() {
        let (scope, name, kind) = entry.key();
        let kind = kind.as_str();
        hits.with_label_values(&[scope.as_str(), name, kind]).inc_by(*entry.value());
    }
    let shadow = counter(
        &registry,
        "sluice_shadow_hits_total",
        "Calls admitted that a shadow limit would have refused (scope ip/user: name \"*\").",
        &["scope", "name", "kind"],
    )?;
    for entry in stats.shadow_hits.iter() {
        let (scope, name, kind) = entry.key();
        shadow.with_label_values(&[scope.as_str(), name, kind.as_str()]).inc_by(*entry.value());
    }

    let active = gauge(&registry, "sluice_active_calls", "Channels in use.", &["scope", "name"])?;
    let cps = gauge(&registry, "sluice_cps", "Admissions in the last full second.", &["scope", "name"])?;
    let now = Instant::now();
    for scope in [Scope::Server, Scope::Customer, Scope::Carrier, Scope::Gateway, Scope::Route, Scope::Did] {
        for (key, channels, per_second) in admin.shared.limits.snapshot(now, scope) {
            let name = key.name.label();
            active.with_label_values(&[scope.as_str(), &name]).set(i64::from(channels));
            cps.with_label_values(&[scope.as_str(), &name]).set(i64::from(per_second));
        }
    }
    // The server scope is always present, even before the first call.
    active.with_label_values(&["server", ""]);
    cps.with_label_values(&["server", ""]);

    let p95 = GaugeVec::new(
        Opts::new("sluice_cps_peak_p95", "95th percentile of per-minute peak CPS over the usage window."),
        &["scope", "name"],
    )
    .ok()?;
    registry.register(Box::new(p95.clone())).ok()?;
    let rows = {
        let mut usage = admin.usage.lock();
        usage.roll(now);
        usage.report()
    };
    for row in rows {
        p95.with_label_values(&[&row.scope, &row.name]).set(f64::from(row.p95));
    }

    let messages =
        counter(&registry, "sluice_sip_messages_total", "SIP messages handled.", &["direction", "kind"])?;
    for (direction, kind, value) in [
        ("in", "request", get(&stats.requests_in)),
        ("in", "response", get(&stats.responses_in)),
        ("out", "request", get(&stats.requests_out)),
        ("out", "response", get(&stats.responses_out)),
    ] {
        messages.with_label_values(&[direction, kind]).inc_by(value);
    }
    let malformed = counter(
        &registry,
        "sluice_malformed_total",
        "Messages that could not be parsed or failed sanity checks.",
        &["transport"],
    )?;
    malformed.with_label_values(&["udp"]).inc_by(get(&stats.malformed_udp) + get(&stats.oversize));
    malformed.with_label_values(&["tcp"]).inc_by(get(&stats.malformed_tcp));
    malformed.with_label_values(&["tls"]).inc_by(get(&stats.malformed_tls));

    let stray = counter(
        &registry,
        "sluice_stray_responses_total",
        "Responses that matched nothing they may answer, dropped.",
        &["why"],
    )?;
    for why in crate::stats::Stray::ALL {
        stray.with_label_values(&[why.as_str()]).inc_by(get(&stats.stray_responses[why as usize]));
    }

    let auth = counter(&registry, "sluice_auth_total", "sluice's own digest authentication.", &["result"])?;
    for result in crate::stats::AuthResult::ALL {
        auth.with_label_values(&[result.as_str()]).inc_by(get(&stats.auth[result as usize]));
    }

    let dropped = IntCounterVec::new(
        Opts::new("sluice_flood_dropped_total", "Requests dropped by flood protection."),
        &[] as &[&str],
    )
    .ok()?;
    dropped.with_label_values(&[] as &[&str]).inc_by(get(&stats.flood_dropped));
    registry.register(Box::new(dropped)).ok()?;
    let records = IntCounterVec::new(
        Opts::new(
            "sluice_call_records_dropped_total",
            "Call records not written: the records file could not keep up.",
        ),
        &[] as &[&str],
    )
    .ok()?;
    let lost = admin.shared.node.records().map_or(0, |r| r.dropped());
    records.with_label_values(&[] as &[&str]).inc_by(lost);
    registry.register(Box::new(records)).ok()?;
    let tls = IntCounterVec::new(
        Opts::new(
            "sluice_tls_handshake_failures_total",
            "TLS handshakes that failed (clients, and gateways whose certificates were not trusted).",
        ),
        &[] as &[&str],
    )
    .ok()?;
    tls.with_label_values(&[] as &[&str]).inc_by(get(&stats.tls_handshake_failed));
    registry.register(Box::new(tls)).ok()?;
    let blocked = IntGauge::new("sluice_flood_blocked", "Source IPs blocked now.").ok()?;
    blocked.set(get(&stats.flood_blocked) as i64);
    registry.register(Box::new(blocked)).ok()?;

    let unacked = counter(
        &registry,
        "sluice_calls_unacked_total",
        "Calls ended by sluice because the 2xx was never acknowledged within 64*T1.",
        &[],
    )?;
    unacked.with_label_values(&[] as &[&str]).inc_by(get(&stats.calls_unacked));

    let queue = IntGauge::new("sluice_queue_depth", "INVITEs waiting in the spike buffer.").ok()?;
    queue.set(get(&stats.queue_depth) as i64);
    registry.register(Box::new(queue)).ok()?;
    let left =
        counter(&registry, "sluice_queue_left_total", "Calls that left the spike buffer, by how.", &["how"])?;
    left.with_label_values(&["admitted"]).inc_by(get(&stats.queue_admitted));
    left.with_label_values(&["expired"]).inc_by(get(&stats.queue_expired));
    registry.register(Box::new(stats.queue_wait.0.clone())).ok()?;
    let cluster_up = IntGauge::new(
        "sluice_cluster_up",
        "1 while the cluster store answers, else 0 (in-memory store: always 1).",
    )
    .ok()?;
    cluster_up.set(i64::from(admin.shared.store.healthy()));
    registry.register(Box::new(cluster_up)).ok()?;
    if let Some(cluster) = &admin.shared.cluster {
        let late = prometheus::IntCounter::new(
            "sluice_cluster_unanswered_total",
            "New calls the cluster store did not answer within timeout_ms while it was up (each was decided by on_failure).",
        )
        .ok()?;
        late.inc_by(cluster.unanswered());
        registry.register(Box::new(late)).ok()?;
    }

    configured_limits(&registry, &admin.shared.config())?;
    let gateway_up = gauge(
        &registry,
        "sluice_gateway_up",
        "0 while a gateway's last request went unanswered (timeout, unreachable), else 1.",
        &["carrier", "gateway"],
    )?;
    for c in &admin.shared.config().carriers {
        for g in &c.gateways {
            let up = !stats.gateways_down.contains_key(&g.addr);
            gateway_up.with_label_values(&[c.name.as_str(), g.uri.as_str()]).set(i64::from(up));
        }
    }

    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out).ok()?;
    String::from_utf8(out).ok()
}

/// `sluice_limit{scope,name,kind}`: every configured limit, so dashboards and alerts can put
/// `sluice_cps` / `sluice_active_calls` next to (or divide by) what they may reach.
fn configured_limits(registry: &Registry, config: &crate::config::Config) -> Option<()> {
    let limit = gauge(
        registry,
        "sluice_limit",
        "Configured limits (kind = cps, cpm, channels); absent = unlimited.",
        &["scope", "name", "kind"],
    )?;
    let set = |scope: &str, name: &str, p: &crate::config::Pair| {
        for (kind, value) in [("cps", p.cps), ("cpm", p.cpm), ("channels", p.channels)] {
            if let Some(v) = value {
                limit.with_label_values(&[scope, name, kind]).set(i64::from(v));
            }
        }
    };
    set("server", "", &config.limits.limits);
    for c in &config.customers {
        set("customer", &c.name, &c.limits);
        for r in c.routes.iter().flat_map(|t| t.routes.iter()) {
            set("route", &format!("{}/{}", c.name, r.prefix), &r.limits);
        }
    }
    for r in &config.routes.routes {
        set("route", &r.prefix, &r.limits);
    }
    for c in &config.carriers {
        set("carrier", &c.name, &c.limits);
        for g in &c.gateways {
            set("gateway", &g.uri, &c.gateway_limits);
        }
    }
    for d in &config.dids {
        set("did", &d.number, &d.limits);
    }
    Some(())
}
