//! `GET /status`: one object per limited thing with its limits and live usage
//! (`cps` = admissions in the last full second, `channels` = calls active now), plus the 20
//! busiest source IPs and users. Read from the limit store without the core lock.

use serde_json::{Value, json};
use tokio::time::Instant;

use super::Admin;
use crate::config::Pair;
use crate::limit::{KeyName, LimitKey, Refusal, Scope};

fn limits(p: &Pair) -> Value {
    json!({ "cps": p.cps, "cpm": p.cpm, "channels": p.channels })
}

/// Calls refused by one key (CPS, CPM and channels together), for `sluice top`'s rejections/s.
fn rejected(admin: &Admin, scope: Scope, name: &str) -> u64 {
    [Refusal::Cps, Refusal::Cpm, Refusal::Channels]
        .iter()
        .filter_map(|k| admin.shared.stats.limit_hits.get(&(scope, name.to_string(), *k)).map(|v| *v))
        .sum()
}

pub fn status(admin: &Admin) -> Value {
    let config = admin.shared.config();
    let store = &admin.shared.limits;
    let now = Instant::now();
    let usage = |key: LimitKey| store.usage(now, &key);
    let text = |scope: Scope, name: &str| LimitKey { scope, name: KeyName::Text(name.into()) };
    let (server_channels, server_cps) = usage(LimitKey::server());
    let customers: Vec<Value> = config
        .customers
        .iter()
        .map(|c| {
            let (channels, cps) = usage(text(Scope::Customer, &c.name));
            let parent = c.parent.and_then(|p| config.customers.get(p)).map(|p| p.name.as_str());
            json!({ "name": c.name, "parent": parent, "mode": c.mode.as_str(), "cps": cps,
                    "channels": channels, "limits": limits(&c.limits),
                    "rejected": rejected(admin, Scope::Customer, &c.name) })
        })
        .collect();
    let carriers: Vec<Value> = config
        .carriers
        .iter()
        .map(|c| {
            let (channels, cps) = usage(text(Scope::Carrier, &c.name));
            let gateways: Vec<Value> = c
                .gateways
                .iter()
                .map(|g| {
                    let (channels, cps) = usage(text(Scope::Gateway, &g.uri));
                    let up = !admin.shared.stats.gateways_down.contains_key(&g.addr);
                    json!({ "address": g.uri, "cps": cps, "channels": channels, "up": up, "limits": limits(&c.gateway_limits) })
                })
                .collect();
            json!({ "name": c.name, "cps": cps, "channels": channels, "limits": limits(&c.limits),
                    "rejected": rejected(admin, Scope::Carrier, &c.name), "gateways": gateways })
        })
        .collect();
    let mut routes: Vec<Value> = config
        .routes
        .routes
        .iter()
        .map(|r| {
            let (channels, cps) = usage(text(Scope::Route, &r.prefix));
            json!({ "prefix": r.prefix, "customer": null, "cps": cps, "channels": channels, "limits": limits(&r.limits) })
        })
        .collect();
    for c in &config.customers {
        for r in c.routes.iter().flat_map(|t| t.routes.iter()) {
            let (channels, cps) = usage(text(Scope::Route, &format!("{}/{}", c.name, r.prefix)));
            routes.push(json!({ "prefix": r.prefix, "customer": c.name, "cps": cps, "channels": channels, "limits": limits(&r.limits) }));
        }
    }
    let dids: Vec<Value> = config
        .dids
        .iter()
        .map(|d| {
            let (channels, cps) = usage(text(Scope::Did, &d.number));
            json!({ "number": d.number, "cps": cps, "channels": channels, "limits": limits(&d.limits) })
        })
        .collect();
    let top = |scope: Scope, field: &str| -> Vec<Value> {
        let mut rows = store.snapshot(now, scope);
        rows.sort_by_key(|r| std::cmp::Reverse((r.1, r.2)));
        rows.into_iter()
            .filter(|(_, channels, cps)| *channels > 0 || *cps > 0)
            .take(20)
            .map(|(k, channels, cps)| json!({ field: k.name.label(), "cps": cps, "channels": channels }))
            .collect()
    };
    json!({
        "node": admin.node,
        "uptime_seconds": admin.started.elapsed().as_secs(),
        "draining": admin.shared.is_draining(),
        "server": { "cps": server_cps, "channels": server_channels, "limits": limits(&config.limits.limits),
                    "rejected": rejected(admin, Scope::Server, "") },
        "customers": customers,
        "carriers": carriers,
        "routes": routes,
        "dids": dids,
        "top_ips": top(Scope::Ip, "ip"),
        "top_users": top(Scope::User, "user"),
    })
}
