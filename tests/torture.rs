//! RFC 4475 torture messages through the sans-IO core: every valid message is forwarded or
//! answered sensibly, every invalid one is refused (400 or the code the RFC names) or
//! dropped, and nothing panics.

use std::sync::Arc;

use sluice::config::Config;
use sluice::peer::Peer;
use sluice::proxy::Action;
use sluice::proxy::node::Node;
use sluice::stats::Stats;
use tokio::time::Instant;

const CONFIG: &str = "[server]\nlisten = [\"udp://127.0.0.1:5060\"]\n[[carrier]]\nname = \"pbx\"\ngateways = [\"udp://127.0.0.1:5070\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"pbx\"]\n";

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Forwarded,
    Answered(u16),
    Dropped,
}

/// Feeds one torture message to a fresh core; returns what it did and what it forwarded.
fn run(file: &str) -> (Outcome, Option<Vec<u8>>) {
    let path = format!("{}/tests/fixtures/rfc4475/{file}.dat", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    run_bytes(&bytes)
}

fn run_bytes(bytes: &[u8]) -> (Outcome, Option<Vec<u8>>) {
    let file = "input";
    let config = Arc::new(Config::parse("t", CONFIG).unwrap());
    let proxy = Node::new(config, Arc::new(Stats::default()), 1);
    let mut out = Vec::new();
    let source = Peer::udp("192.0.2.1:5060".parse().unwrap());
    proxy.on_message(Instant::now(), source, bytes, &mut out);
    let gateway: std::net::SocketAddr = "127.0.0.1:5070".parse().unwrap();
    let mut outcome = (Outcome::Dropped, None);
    for (to, data) in out.iter().filter_map(Action::as_send) {
        if to.addr == gateway {
            return (Outcome::Forwarded, Some(data.to_vec()));
        }
        assert_eq!(to.addr.ip(), source.addr.ip(), "{file}: answers go back to the sender (port per Via)");
        let status = std::str::from_utf8(&data[8..11]).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        if status != 100 {
            outcome = (Outcome::Answered(status), None);
        }
    }
    outcome
}

#[test]
fn torture_outcomes() {
    use Outcome::*;
    #[rustfmt::skip]
    let expected: &[(&str, Outcome, &str)] = &[
        // RFC 4475 3.1.1: valid messages are forwarded.
        ("wsinv", Answered(481), "valid, but carries a To tag: in-dialog for a dialog we never saw"),
        ("intmeth", Forwarded, "extension method and odd URI characters"),
        ("esc01", Forwarded, "escaped characters"),
        ("escnull", Forwarded, "escaped NUL"),
        ("esc02", Forwarded, "escaped method-like text is just a method token"),
        ("lwsdisp", Forwarded, "no LWS between display name and <"),
        ("longreq", Forwarded, "long values, many headers"),
        ("dblreq", Forwarded, "two requests in one datagram: the first is forwarded"),
        ("semiuri", Forwarded, "semicolon in user part"),
        ("transports", Forwarded, "unknown transports in lower Vias"),
        ("mpart01", Forwarded, "multipart body with binary part"),
        ("unreason", Dropped, "a response for no transaction of ours"),
        ("noreason", Dropped, "a response for no transaction of ours"),
        // 3.1.2: invalid messages are refused (or dropped when no answer can be built).
        ("badinv01", Answered(400), "empty Via params"),
        ("clerr", Answered(400), "Content-Length larger than the body"),
        ("scalar02", Answered(400), "CSeq out of range"),
        ("scalarlg", Dropped, "a response with out-of-range values"),
        ("quotbal", Answered(400), "unterminated quote in To"),
        ("ltgtruri", Answered(400), "Request-URI in <>"),
        ("lwsruri", Answered(400), "LWS in Request-URI"),
        ("lwsstart", Answered(400), "extra spaces in the Request-Line"),
        ("trws", Answered(400), "trailing spaces in the Request-Line"),
        ("escruri", Answered(400), "headers in the Request-URI"),
        ("baddate", Forwarded, "bad Date: not the proxy's header"),
        ("regbadct", Forwarded, "bad Contact: not the proxy's header"),
        ("badaspec", Forwarded, "bad To addr-spec spacing: not used for routing"),
        ("baddn", Forwarded, "unquoted display name: not used for routing"),
        ("badvers", Dropped, "SIP/7.0 in the Via too: no way to address an answer"),
        ("mismatch01", Answered(400), "CSeq method differs"),
        ("mismatch02", Answered(400), "CSeq method differs (extension method)"),
        ("bigcode", Dropped, "status code out of range"),
        ("ncl", Answered(400), "negative Content-Length"),
        // 3.2 / 3.3 / 3.4: transaction and application layer.
        ("badbranch", Forwarded, "branch is only the magic cookie: pre-3261 matching"),
        ("insuf", Dropped, "no From, To, Call-ID: no answer can be built"),
        ("unkscm", Answered(416), "unknown Request-URI scheme"),
        ("novelsc", Answered(416), "unknown Request-URI scheme"),
        ("unksm2", Forwarded, "unknown scheme only in To"),
        ("bext01", Answered(420), "Proxy-Require names options no proxy supports (RFC 4475 §3.3.7)"),
        ("invut", Forwarded, "unknown Content-Type is for the UAS"),
        ("regaut01", Forwarded, "REGISTER with credentials"),
        ("multi01", Answered(400), "two Call-IDs, CSeqs, Froms, Tos"),
        ("mcl01", Answered(400), "two Content-Lengths"),
        ("bcast", Dropped, "a response aimed at a broadcast address: never sent"),
        ("zeromf", Answered(483), "Max-Forwards 0"),
        ("cparam01", Forwarded, "Contact parameters"),
        ("cparam02", Forwarded, "Contact parameters"),
        ("regescrt", Forwarded, "escaped Route in REGISTER Contact"),
        ("sdp01", Forwarded, "unusual SDP"),
        ("inv2543", Forwarded, "RFC 2543 INVITE: no branch, no tags, still proxied"),
    ];
    let dir = format!("{}/tests/fixtures/rfc4475", env!("CARGO_MANIFEST_DIR"));
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "dat")))
        .count();
    assert_eq!(files, expected.len(), "every fixture has an expectation");
    let mut wrong = Vec::new();
    for (file, want, why) in expected {
        let (got, forwarded) = run(file);
        if &got != want {
            wrong.push(format!("{file}: expected {want:?} ({why}), got {got:?}"));
        }
        if let Some(fwd) = forwarded {
            let msg = sluice::sip::parse(&fwd)
                .unwrap_or_else(|e| panic!("{file}: forwarded bytes do not parse: {e}"));
            let via = msg.value(sluice::sip::HeaderName::Via).unwrap();
            assert!(via.starts_with(b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK"), "{file}: our Via on top");
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn double_request_datagram_forwards_only_the_first() {
    let (_, fwd) = run("dblreq");
    let fwd = fwd.unwrap();
    assert!(fwd.starts_with(b"REGISTER "));
    assert!(!fwd.windows(7).any(|w| w == b"INVITE "), "the trailing request is not smuggled along");
}

#[test]
fn fuzzer_findings_do_not_panic() {
    // Inputs the fuzzer found that once panicked (a ';' before the end of the sent-protocol).
    let (outcome, _) = run_bytes(include_bytes!("fixtures/fuzz-via-crash.dat"));
    assert_eq!(outcome, Outcome::Dropped, "a Via that does not parse and a broken CSeq: no answer possible");
}
