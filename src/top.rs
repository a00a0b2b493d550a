//! `sluice top`: a refreshing terminal table of a running node's `/status` (the `htop` of a
//! SIP edge), and the table `sluice usage` prints. A thin client: it fetches JSON over plain
//! HTTP/1.0 and formats it; rejections per second come from two successive snapshots.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use thiserror::Error;

use crate::usage::UsageRow;

#[derive(Debug, Error)]
pub enum TopError {
    /// The admin listener could not be reached or answered garbage; retrying may help.
    #[error("cannot fetch http://{addr}/status: {why}")]
    Fetch { addr: String, why: String },
}

/// GET `path` from the admin listener and parse the JSON body; `token` is the admin
/// listener's bearer token when it has one.
pub fn fetch(addr: &str, path: &str, token: Option<&str>) -> Result<Value, TopError> {
    let fail = |why: String| TopError::Fetch { addr: addr.to_string(), why };
    let mut stream = TcpStream::connect(addr).map_err(|e| fail(e.to_string()))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n")
        .map_err(|e| fail(e.to_string()))?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| fail(e.to_string()))?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| fail("no HTTP body".into()))?;
    serde_json::from_slice(&raw[split + 4..]).map_err(|e| fail(e.to_string()))
}

/// Redraws the table every `interval` until interrupted.
pub fn run(addr: &str, token: Option<&str>, interval: Duration) -> Result<(), TopError> {
    let mut previous: Option<(Value, Instant)> = None;
    loop {
        let status = fetch(addr, "/status", token)?;
        let now = Instant::now();
        let screen =
            render(&status, previous.as_ref().map(|(v, t)| (v, now.duration_since(*t).as_secs_f64())));
        print!("\x1b[2J\x1b[H{screen}");
        let _ = std::io::stdout().flush();
        previous = Some((status, now));
        std::thread::sleep(interval);
    }
}

fn num(v: &Value) -> String {
    v.as_u64().map_or_else(|| "-".to_string(), |n| n.to_string())
}

/// Rejections per second between two snapshots of the same row.
fn rate(now: &Value, before: Option<&Value>, secs: f64) -> String {
    match (
        now.get("rejected").and_then(Value::as_u64),
        before.and_then(|b| b.get("rejected")).and_then(Value::as_u64),
    ) {
        (Some(n), Some(b)) if secs > 0.0 => format!("{:.1}", n.saturating_sub(b) as f64 / secs),
        (Some(_), _) => "-".to_string(),
        _ => String::new(),
    }
}

fn row(out: &mut String, label: &str, v: &Value, before: Option<&Value>, secs: f64) {
    let limits = v.get("limits").cloned().unwrap_or(Value::Null);
    let _ = writeln!(
        out,
        "{:<28} {:>7} {:>9} {:>9} {:>9} {:>8}",
        label,
        num(&v["cps"]),
        num(&limits["cps"]),
        num(&v["channels"]),
        num(&limits["channels"]),
        rate(v, before, secs)
    );
}

/// One screen for a /status document; `previous` (with seconds elapsed) adds rejections/s.
pub fn render(status: &Value, previous: Option<(&Value, f64)>) -> String {
    let (before, secs) = previous.map_or((None, 0.0), |(v, s)| (Some(v), s));
    let mut out = String::new();
    let draining = if status["draining"].as_bool() == Some(true) { "  DRAINING" } else { "" };
    let _ = writeln!(
        out,
        "sluice {}  up {}s{draining}",
        status["node"].as_str().unwrap_or("?"),
        num(&status["uptime_seconds"])
    );
    let _ = writeln!(
        out,
        "{:<28} {:>7} {:>9} {:>9} {:>9} {:>8}",
        "", "CPS", "CPS LIMIT", "CHANNELS", "CH LIMIT", "REJ/S"
    );
    row(&mut out, "server", &status["server"], before.map(|b| &b["server"]), secs);
    let find = |list: &str, key: &str, name: &Value| -> Option<&Value> {
        before?.get(list)?.as_array()?.iter().find(|x| x.get(key) == Some(name))
    };
    if let Some(customers) = status["customers"].as_array().filter(|c| !c.is_empty()) {
        let _ = writeln!(out, "customers");
        for c in customers {
            row(
                &mut out,
                &format!("  {}", c["name"].as_str().unwrap_or("?")),
                c,
                find("customers", "name", &c["name"]),
                secs,
            );
        }
    }
    if let Some(carriers) = status["carriers"].as_array().filter(|c| !c.is_empty()) {
        let _ = writeln!(out, "carriers");
        for c in carriers {
            row(
                &mut out,
                &format!("  {}", c["name"].as_str().unwrap_or("?")),
                c,
                find("carriers", "name", &c["name"]),
                secs,
            );
            for g in c["gateways"].as_array().into_iter().flatten() {
                let up = if g["up"].as_bool() == Some(false) { " DOWN" } else { "" };
                row(&mut out, &format!("    {}{up}", g["address"].as_str().unwrap_or("?")), g, None, secs);
            }
        }
    }
    if let Some(ips) = status["top_ips"].as_array().filter(|c| !c.is_empty()) {
        let _ = writeln!(out, "top source IPs");
        for ip in ips {
            row(&mut out, &format!("  {}", ip["ip"].as_str().unwrap_or("?")), ip, None, secs);
        }
    }
    out
}

/// The `sluice usage` table.
pub fn usage_table(rows: &[UsageRow], window_days: u32) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "usage over the last {window_days} days (p95 of per-minute peak admitted CPS)");
    let _ = writeln!(out, "{:<10} {:<24} {:>6} {:>6} {:>8}", "SCOPE", "NAME", "P95", "MAX", "MINUTES");
    for r in rows {
        let _ = writeln!(out, "{:<10} {:<24} {:>6} {:>6} {:>8}", r.scope, r.name, r.p95, r.max, r.minutes);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = r#"{
      "node": "edge-1", "uptime_seconds": 1234, "draining": false,
      "server": {"cps": 12, "channels": 340, "limits": {"cps": 1000, "channels": 5000}, "rejected": 30},
      "customers": [{"name": "acme", "cps": 3, "channels": 40, "limits": {"cps": 50, "channels": 100}, "rejected": 10}],
      "carriers": [{"name": "pbx", "cps": 12, "channels": 340, "limits": {"cps": null, "channels": 500}, "rejected": 0,
                    "gateways": [{"address": "udp://127.0.0.1:5070", "cps": 12, "channels": 340, "up": false, "limits": {"cps": null, "channels": null}}]}],
      "routes": [], "dids": [],
      "top_ips": [{"ip": "203.0.113.7", "cps": 9, "channels": 120}],
      "top_users": []
    }"#;

    #[test]
    fn renders_a_status_document() {
        let now: Value = serde_json::from_str(STATUS).unwrap();
        let mut before = now.clone();
        before["server"]["rejected"] = 20.into();
        before["customers"][0]["rejected"] = 5.into();
        let screen = render(&now, Some((&before, 2.0)));
        let lines: Vec<&str> = screen.lines().collect();
        assert_eq!(lines[0], "sluice edge-1  up 1234s");
        assert_eq!(lines[2], "server                            12      1000       340      5000      5.0");
        assert_eq!(lines[4], "  acme                             3        50        40       100      2.5");
        assert!(
            screen.contains("  pbx                             12         -       340       500      0.0"),
            "{screen}"
        );
        assert!(screen.contains("    udp://127.0.0.1:5070 DOWN"));
        assert!(
            screen.contains("  203.0.113.7                      9         -       120         -         \n"),
            "{screen}"
        );
    }

    #[test]
    fn usage_table_lists_rows() {
        let rows =
            vec![UsageRow { scope: "server".into(), name: String::new(), p95: 95, max: 100, minutes: 100 }];
        let t = usage_table(&rows, 30);
        assert!(t.contains("server                                  95    100      100"), "{t}");
    }
}
