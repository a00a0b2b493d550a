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
