//! The one-screen summary `sluice check` prints.

use std::fmt::Write;

use super::{Config, Pair};

fn limits(p: &Pair) -> String {
    let show = |v: Option<u32>| v.map_or_else(|| "unlimited".to_string(), |n| n.to_string());
    let cpm = p.cpm.map(|n| format!(", cpm {n}")).unwrap_or_default();
    let shadow = if p.shadow { ", shadow" } else { "" };
    format!("cps {}{cpm}, channels {}{shadow}", show(p.cps), show(p.channels))
}

pub fn render(c: &Config) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "configuration OK");
    let _ = writeln!(s, "listeners:");
    for l in &c.listen {
        let _ = writeln!(s, "  {}://{}", l.transport.scheme(), l.addr);
    }
    let _ = writeln!(s, "advertised as: {}", c.advertise.host);
    if let Some(admin) = c.admin {
        let _ = writeln!(s, "admin: http://{admin}");
    }
    let _ = writeln!(s, "carriers:");
    for carrier in &c.carriers {
        let gws: Vec<&str> = carrier.gateways.iter().map(|g| g.uri.as_str()).collect();
        let _ = writeln!(
            s,
            "  {} [{}] ({}; per gateway {}{})",
            carrier.name,
            gws.join(", "),
            limits(&carrier.limits),
            limits(&carrier.gateway_limits),
            if carrier.pacing { "; paced" } else { "" }
        );
    }
    let _ = writeln!(s, "routes:");
    let name = |id: &usize| c.carriers.get(*id).map_or("?", |x| x.name.as_str());
    for r in &c.routes.routes {
        let names: Vec<&str> = r.carriers.iter().map(name).collect();
        let _ = writeln!(s, "  prefix \"{}\" -> {} ({})", r.prefix, names.join(", "), limits(&r.limits));
    }
    let _ = writeln!(
        s,
        "limits: server {}; per ip {}; per user {}; max call {} s",
        limits(&c.limits.limits),
        limits(&c.limits.per_ip),
        limits(&c.limits.per_user),
        c.limits.max_call.as_secs()
    );
    for cu in &c.customers {
        let ips: Vec<String> = cu.ips.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            s,
            "customer {}{}: ips [{}] users [{}] ({}; per ip {}; per user {}; priority {})",
            cu.name,
            cu.parent
                .and_then(|p| c.customers.get(p))
                .map(|p| format!(" (in {})", p.name))
                .unwrap_or_default(),
            ips.join(", "),
            cu.users.join(", "),
            limits(&cu.limits),
            limits(&cu.per_ip),
            limits(&cu.per_user),
            cu.priority
        );
        if let Some(t) = &cu.routes {
            for r in &t.routes {
                let names: Vec<&str> = r.carriers.iter().map(name).collect();
                let _ =
                    writeln!(s, "  prefix \"{}\" -> {} ({})", r.prefix, names.join(", "), limits(&r.limits));
            }
        }
    }
    for d in &c.dids {
        let _ = writeln!(s, "did {}: {}", d.number, limits(&d.limits));
    }
    let _ = writeln!(
        s,
        "overflow: {} \"{}\" / \"{}\", Retry-After {}, redirect [{}], queue {} ms (depth {})",
        c.overflow.status,
        c.overflow.cps_reason,
        c.overflow.channels_reason,
        c.overflow.retry_after,
        c.overflow.redirect.join(", "),
        c.overflow.queue.as_millis(),
        c.overflow.queue_depth
    );
    if let Some(cl) = &c.cluster {
        let _ = writeln!(
            s,
            "cluster: {} as node {} (on failure: {:?}, {} nodes)",
            cl.redis, cl.node, cl.on_failure, cl.nodes
        );
    }
    s
}
