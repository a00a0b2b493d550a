//! The `sluice` binary itself: `check` on good and broken files, and `run` with JSON logs
//! stopped by SIGTERM (drain, exit 0).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

#[test]
fn check_accepts_the_shipped_config() {
    let out = Command::new(BIN).args(["check", "--config", "config/sluice.toml"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("udp://127.0.0.1:5060") && text.contains("pbx [udp://127.0.0.1:5070]"), "{text}");
}

#[test]
fn check_lists_every_error_and_exits_1() {
    let dir = std::env::temp_dir().join(format!("sluice-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broken.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = [\"udp://127.0.0.1:5060\"]\n[[carrier]]\nname = \"a\"\ngateways = [\"sctp://x:1\"]\n[[route]]\nprefix = \"1\"\ncarriers = [\"nope\"]\n[overflow]\nstatus = 200\n",
    )
    .unwrap();
    let out = Command::new(BIN).args(["check", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.toml:5: carrier[0].gateways[0]"), "{err}");
    assert!(err.contains("broken.toml:8: route[0].carriers[0]: no [[carrier]] named `nope`"), "{err}");
    assert!(err.contains("broken.toml:10: overflow.status"), "{err}");
    assert!(err.contains("3 error(s)"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_refuses_durations_no_clock_can_hold() {
    let dir = std::env::temp_dir().join(format!("sluice-cli-bounds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("absurd.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = [\"udp://127.0.0.1:5060\"]\ngateway_timeout_ms = 9223372036854775807\n[[carrier]]\nname = \"a\"\ngateways = [\"udp://127.0.0.1:5070\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"a\"]\n[limits]\nmax_call_seconds = 9223372036854775807\n[overflow]\nqueue_ms = 9223372036854775000\n",
    )
    .unwrap();
    let out = Command::new(BIN).args(["check", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("absurd.toml:3: server.gateway_timeout_ms: must be between 100 and 300000"),
        "{err}"
    );
    assert!(err.contains("absurd.toml:11: limits.max_call_seconds"), "{err}");
    assert!(err.contains("absurd.toml:13: overflow.queue_ms: must be at most 60000"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn run_logs_json_and_drains_on_sigterm() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("sluice-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("run.toml");
    std::fs::write(
        &path,
        format!("[server]\nlisten = [\"udp://127.0.0.1:{port}\"]\ndrain_seconds = 5\n[log]\nformat = \"json\"\nlevel = \"info\"\n[[carrier]]\nname = \"a\"\ngateways = [\"udp://127.0.0.1:9\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"a\"]\n"),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&first).unwrap_or_else(|e| panic!("not JSON: {first}: {e}"));
    assert_eq!(v["event"], "server.listening");
    // A malformed request with a hostile header value: the warning stays one valid JSON line.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let bad = format!(
        "OPTIONS sip:1@x SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bKx\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:1@x>\r\nCall-ID: \"}}{{\\\"evil\\\":1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        sock.local_addr().unwrap()
    );
    sock.send_to(bad.as_bytes(), ("127.0.0.1", port)).unwrap();
    let line = lines.next().unwrap().unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
    assert_eq!(v["event"], "sip.bad_request");
    assert_eq!(v["call_id"], "\"}{\\\"evil\\\":1");
    let started = Instant::now();
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let code = child.wait().unwrap();
    assert!(code.success(), "exit 0 after SIGTERM: {code:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "idle: no need to wait out drain_seconds");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("\"server.stopped\"")), "{rest:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The human format written to a pipe (a file, journald) carries no ANSI colour codes.
#[test]
fn pretty_logs_into_a_pipe_have_no_colour_codes() {
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("sluice-pretty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pretty.toml");
    std::fs::write(
        &path,
        format!("[server]\nlisten = [\"udp://127.0.0.1:{port}\"]\ndrain_seconds = 1\n[log]\nformat = \"pretty\"\nlevel = \"info\"\n[[carrier]]\nname = \"a\"\ngateways = [\"udp://127.0.0.1:9\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"a\"]\n"),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    assert!(first.contains("server.listening"), "{first}");
    assert!(!first.contains('\u{1b}'), "no escape codes in a pipe: {first:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
