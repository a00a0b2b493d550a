//! Call records over real sockets: one record per call (answered and hung up, busy,
//! cancelled, refused by a limit) in the `[records]` file and as a `call.ended` log event,
//! CSV with a header, and a reopen on reload after the file was rotated away.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use sluice::peer::Transport;

const SETTLE: Duration = Duration::from_millis(600);

fn temp(name: &str) -> PathBuf {
    let d =
        std::env::temp_dir().join(format!("sluice-records-{name}-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The records file's lines once it holds at least `n` (the writer thread is asynchronous).
async fn lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn record<'a>(records: &'a [serde_json::Value], call_id: &str) -> &'a serde_json::Value {
    records
        .iter()
        .find(|r| r["call_id"] == call_id)
        .unwrap_or_else(|| panic!("no record of {call_id}: {records:?}"))
}

/// An answered call hung up by the caller, a busy one, a cancelled one and one refused by
/// the server's CPS: four records with their dispositions, statuses and times, in the file
/// and in the log.
#[tokio::test]
async fn every_call_gets_one_record() {
    let log = log_lines();
    let d = temp("kinds");
    let file = d.join("calls.jsonl");
    let answering = Endpoint::udp().await;
    let busy = Endpoint::udp().await;
    let ringing = Endpoint::udp().await;
    let (a, b, r) = (answering.uri(), busy.uri(), ringing.uri());
    spawn_pbx(answering, Pbx::Answer);
    spawn_pbx(busy, Pbx::Busy);
    spawn_pbx(ringing, Pbx::Ring);
    let text = format!(
        "[server]\nlisten = [\"udp://127.0.0.1:0\"]\n[log]\nlevel = \"warn\"\n\
         [[carrier]]\nname = \"answers\"\ngateways = [\"{a}\"]\n[[carrier]]\nname = \"busy\"\ngateways = [\"{b}\"]\n\
         [[carrier]]\nname = \"rings\"\ngateways = [\"{r}\"]\n\
         [[route]]\nprefix = \"1\"\ncarriers = [\"answers\"]\n[[route]]\nprefix = \"2\"\ncarriers = [\"busy\"]\n\
         [[route]]\nprefix = \"3\"\ncarriers = [\"rings\"]\n\
         [[customer]]\nname = \"acme\"\nips = [\"127.0.0.7/32\"]\ncps = 3\n\
         [records]\nfile = \"{}\"\n",
        file.display()
    );
    let running = start(&text).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp_on("127.0.0.7").await;

    caller.send(proxy, invite(&caller, "rec-answered", "rec-answered", "100", proxy).as_bytes()).await;
    let answered = finals(&mut caller, SETTLE).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    hang_up_answered(&mut caller, proxy, &answered).await;
    caller.send(proxy, invite(&caller, "rec-busy", "rec-busy", "200", proxy).as_bytes()).await;
    caller.send(proxy, invite(&caller, "rec-cancel", "rec-cancel", "300", proxy).as_bytes()).await;
    caller.send(proxy, invite(&caller, "rec-refused", "rec-refused", "100", proxy).as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let inv = invite(&caller, "rec-cancel", "rec-cancel", "300", proxy);
    let cancel = inv.replacen("INVITE sip:", "CANCEL sip:", 1).replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    caller.send(proxy, cancel.as_bytes()).await;

    let records: Vec<serde_json::Value> =
        lines(&file, 4).await.iter().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(records.len(), 4, "{records:?}");
    let ok = record(&records, "rec-answered");
    assert_eq!(
        (&ok["disposition"], &ok["status"], &ok["hung_up"], &ok["customer"], &ok["carrier"], &ok["number"]),
        (&"answered".into(), &200.into(), &"caller".into(), &"acme".into(), &"answers".into(), &"100".into()),
        "{ok}"
    );
    assert_eq!(ok["gateway"], a.as_str());
    let (arrived, answered_ms, ended) = (
        ok["arrived_ms"].as_u64().unwrap(),
        ok["answered_ms"].as_u64().unwrap(),
        ok["ended_ms"].as_u64().unwrap(),
    );
    assert!(arrived > 1_700_000_000_000 && arrived <= answered_ms && answered_ms <= ended, "{ok}");
    assert_eq!(ok["duration_ms"].as_u64().unwrap(), ended - answered_ms);
    assert!(ok["duration_ms"].as_u64().unwrap() >= 90, "the call lasted ~100 ms: {ok}");
    let busy = record(&records, "rec-busy");
    assert_eq!(
        (&busy["disposition"], &busy["status"], &busy["duration_ms"]),
        (&"busy".into(), &486.into(), &0.into())
    );
    let cancelled = record(&records, "rec-cancel");
    assert_eq!(
        (&cancelled["disposition"], &cancelled["status"]),
        (&"cancelled".into(), &487.into()),
        "{cancelled}"
    );
    let refused = record(&records, "rec-refused");
    assert_eq!(
        (&refused["disposition"], &refused["status"], &refused["limit"], &refused["admitted_ms"]),
        (&"refused".into(), &503.into(), &"customer:acme:cps".into(), &0.into()),
        "{refused}"
    );

    let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["event"] == "call.ended" && v["call_id"].as_str().is_some_and(|c| c.starts_with("rec-"))
        })
        .collect();
    assert_eq!(events.len(), 4, "one call.ended event per call: {events:?}");
    assert_eq!(record(&events, "rec-busy")["disposition"], "busy");
    let _ = std::fs::remove_dir_all(&d);
}

/// CSV with its header; logrotate moves the file away, a reload makes sluice write a new one.
#[tokio::test]
async fn csv_records_follow_a_rotation_on_reload() {
    let d = temp("csv");
    let file = d.join("calls.csv");
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    spawn_pbx(pbx, Pbx::Busy);
    let text = config_with(
        &[uri],
        "admin = \"127.0.0.1:0\"",
        &format!("[records]\nfile = \"{}\"\nformat = \"csv\"\n", file.display()),
    );
    let path = d.join("sluice.toml");
    std::fs::write(&path, &text).unwrap();
    let server = sluice::server::Server::bind(sluice::config::Config::load(&path).unwrap()).await.unwrap();
    let running = server.start(tokio_util::sync::CancellationToken::new());
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    caller.send(proxy, invite(&caller, "csv-1", "csv-1", "100", proxy).as_bytes()).await;
    let first = lines(&file, 2).await;
    assert_eq!(first[0], sluice::proxy::record::Ended::CSV_HEADER);
    assert!(first[1].starts_with("csv-1,,127.0.0.1,,100,pbx,"), "{first:?}");
    assert!(first[1].contains(",busy,486,,"), "{first:?}");

    std::fs::rename(&file, d.join("calls.csv.1")).unwrap();
    let (code, body) = http(running.admin.unwrap(), "POST", "/reload").await;
    assert_eq!(code, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    caller.send(proxy, invite(&caller, "csv-2", "csv-2", "100", proxy).as_bytes()).await;
    let second = lines(&file, 2).await;
    assert_eq!(second.len(), 2, "a new file with its header: {second:?}");
    assert!(second[1].starts_with("csv-2,"), "{second:?}");
    assert_eq!(lines(&d.join("calls.csv.1"), 2).await.len(), 2, "the rotated file keeps its record");
    let _ = std::fs::remove_dir_all(&d);
}

/// A call cancelled while it waited in the spike buffer was never admitted, but it was a
/// call the customer made: its record says cancelled (487), with no admission time.
#[tokio::test]
async fn a_call_cancelled_in_the_spike_buffer_gets_a_record() {
    let d = temp("queued");
    let file = d.join("calls.jsonl");
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    spawn_pbx(pbx, Pbx::Ring);
    let extra =
        format!("[limits]\ncps = 1\n[overflow]\nqueue_ms = 3000\n[records]\nfile = \"{}\"\n", file.display());
    let running = start(&config_with(&[uri], "", &extra)).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    caller.send(proxy, invite(&caller, "q-first", "q-first", "100", proxy).as_bytes()).await;
    caller.send(proxy, invite(&caller, "q-waits", "q-waits", "100", proxy).as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let inv = invite(&caller, "q-waits", "q-waits", "100", proxy);
    let cancel = inv.replacen("INVITE sip:", "CANCEL sip:", 1).replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    caller.send(proxy, cancel.as_bytes()).await;
    let records: Vec<serde_json::Value> =
        lines(&file, 1).await.iter().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let waited = record(&records, "q-waits");
    assert_eq!(
        (&waited["disposition"], &waited["status"], &waited["admitted_ms"]),
        (&"cancelled".into(), &487.into(), &0.into()),
        "{waited}"
    );
    let _ = std::fs::remove_dir_all(&d);
}
