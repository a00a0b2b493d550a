//! Interop with the real SIPp: `sipp -sn uac` -> sluice -> `sipp -sn uas`.
//! Skips with a notice when sipp is not installed, unless CI=true (then it fails).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use sluice::peer::Transport;

/// True when sipp can run; panics under CI when it cannot.
fn sipp_available() -> bool {
    let ok = Command::new("sipp").arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("sipp is required under CI=true (apt-get install sip-tester)");
        }
        eprintln!("notice: sipp not found; SIPp interop test skipped (apt-get install sip-tester)");
    }
    ok
}

/// The count SIPp reports on its "Successful call" / "Failed call" line (cumulative column).
fn sipp_count(stdout: &str, label: &str) -> Option<u64> {
    stdout.lines().rev().find(|l| l.trim_start().starts_with(label))?.split('|').nth(2)?.trim().parse().ok()
}

async fn run_calls(tcp: bool, calls: u32, rate: u32) {
    let uas_port = free_port();
    let uac_port = free_port();
    let scheme = if tcp { "tcp" } else { "udp" };
    let config = config_with(&[format!("{scheme}://127.0.0.1:{uas_port}")], "", "");
    let running = start(&config).await;
    let proxy = running.addr(if tcp { Transport::Tcp } else { Transport::Udp }).unwrap();
    let transport = if tcp { "t1" } else { "u1" };
    let dir = tempdir();

    let mut uas = Command::new("sipp")
        .args([
            "-sn",
            "uas",
            "-i",
            "127.0.0.1",
            "-p",
            &uas_port.to_string(),
            "-t",
            transport,
            "-nostdin",
            "-timeout",
            "120",
        ])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sipp uas");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let uac = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            Command::new("sipp")
                .args([
                    "-sn",
                    "uac",
                    &proxy.to_string(),
                    "-i",
                    "127.0.0.1",
                    "-p",
                    &uac_port.to_string(),
                    "-t",
                    transport,
                    "-m",
                    &calls.to_string(),
                    "-r",
                    &rate.to_string(),
                    "-l",
                    "2000",
                    "-nostdin",
                    "-timeout",
                    "120",
                ])
                .current_dir(&dir)
                .output()
                .expect("run sipp uac")
        }
    })
    .await
    .unwrap();
    let _ = uas.kill();
    let _ = uas.wait();
    let stdout = String::from_utf8_lossy(&uac.stdout);
    let ok = sipp_count(&stdout, "Successful call");
    let failed = sipp_count(&stdout, "Failed call");
    assert_eq!(failed, Some(0), "sipp reported failed calls over {scheme}:\n{stdout}");
    assert_eq!(ok, Some(u64::from(calls)), "sipp success count over {scheme}:\n{stdout}");
    assert!(uac.status.success(), "sipp uac exit status {:?}", uac.status);
    eventually(&running, "every call ended", |p| p.active_calls() == 0).await;
    running.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-sipp-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_3000_calls_at_300_cps_over_udp() {
    if sipp_available() {
        run_calls(false, 3000, 300).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_3000_calls_at_300_cps_over_tcp() {
    if sipp_available() {
        run_calls(true, 3000, 300).await;
    }
}

/// The count of a response code in SIPp's message table ("503 <----------  67 ...").
fn sipp_received(stdout: &str, code: &str) -> u64 {
    stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with(&format!("{code} <")))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Answered, busy and cancelled calls through sluice at 90 calls/s against a 50 CPS
/// server limit: every SIPp call completes (503 is an accepted outcome of the scenarios),
/// the 503s SIPp saw are the ones sluice counted, and no channel is left held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_mixed_calls_over_the_limit() {
    if !sipp_available() {
        return;
    }
    let scenarios = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp");
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let config = format!(
        "[server]\nlisten = [\"udp://127.0.0.1:0\"]\n[log]\nlevel = \"warn\"\n[limits]\ncps = 50\nchannels = 60\n\
         [[carrier]]\nname = \"answer\"\ngateways = [\"udp://127.0.0.1:{}\"]\n\
         [[carrier]]\nname = \"busy\"\ngateways = [\"udp://127.0.0.1:{}\"]\n\
         [[carrier]]\nname = \"ring\"\ngateways = [\"udp://127.0.0.1:{}\"]\n\
         [[route]]\nprefix = \"1\"\ncarriers = [\"answer\"]\n[[route]]\nprefix = \"2\"\ncarriers = [\"busy\"]\n\
         [[route]]\nprefix = \"3\"\ncarriers = [\"ring\"]\n",
        ports[0], ports[1], ports[2]
    );
    let running = start(&config).await;
    let proxy = running.addr(Transport::Udp).unwrap().to_string();
    let dir = tempdir();
    let uas = |args: Vec<String>| {
        Command::new("sipp")
            .args(args)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sipp uas")
    };
    let common = |port: u16| {
        vec![
            "-i".to_string(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-nostdin".into(),
            "-timeout".into(),
            "90".into(),
        ]
    };
    let mut servers = vec![
        uas([vec!["-sn".to_string(), "uas".into()], common(ports[0])].concat()),
        uas([vec!["-sf".to_string(), format!("{scenarios}/uas_busy.xml")], common(ports[1])].concat()),
        uas([vec!["-sf".to_string(), format!("{scenarios}/uas_ring.xml")], common(ports[2])].concat()),
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let callers = [
        ("uac_limited.xml", "1000", ports[3]),
        ("uac_limited.xml", "2000", ports[4]),
        ("uac_cancel.xml", "3000", ports[5]),
    ];
    let mut runs = Vec::new();
    for (file, service, port) in callers {
        let (dir, proxy, scenarios) = (dir.clone(), proxy.clone(), scenarios.to_string());
        runs.push(tokio::task::spawn_blocking(move || {
            Command::new("sipp")
                .args([
                    "-sf",
                    &format!("{scenarios}/{file}"),
                    "-s",
                    service,
                    &proxy,
                    "-i",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ])
                .args(["-m", "150", "-r", "30", "-nostdin", "-timeout", "90"])
                .current_dir(&dir)
                .output()
                .expect("run sipp uac")
        }));
    }
    let mut seen_503 = 0;
    for run in runs {
        let output = run.await.unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert_eq!(sipp_count(&stdout, "Failed call"), Some(0), "{stdout}");
        assert_eq!(sipp_count(&stdout, "Successful call"), Some(150), "{stdout}");
        seen_503 += sipp_received(&stdout, "503");
    }
    for s in &mut servers {
        let _ = s.kill();
        let _ = s.wait();
    }
    let stats = &running.shared.stats;
    let rejected = stats.calls_rejected_cps.load(std::sync::atomic::Ordering::Relaxed)
        + stats.calls_rejected_channels.load(std::sync::atomic::Ordering::Relaxed);
    assert!(seen_503 > 0, "the offered 90 calls/s must exceed the 50 CPS limit");
    assert_eq!(seen_503, rejected, "every 503 SIPp saw is one sluice counted (retransmissions aside)");
    let admitted = stats.calls_admitted.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(admitted + rejected, 450, "each call decided once");
    eventually(&running, "every channel released", |_| running.shared.limits.total_channels() == 0).await;
    eventually(&running, "no call left", |p| p.active_calls() == 0).await;
    running.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
