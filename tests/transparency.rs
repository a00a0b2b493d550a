//! The proxy forwards what it does not own byte for byte: header spelling, order, spacing,
//! compact forms, unknown headers, odd bytes, and the body.

mod common;

use common::*;
use sluice::peer::Transport;

/// Header lines of a message (without the start line), as received.
fn lines(msg: &str) -> Vec<&str> {
    msg.split("\r\n").skip(1).take_while(|l| !l.is_empty()).collect()
}

fn body_of(msg: &str) -> &str {
    msg.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[tokio::test]
async fn request_and_response_pass_byte_for_byte() {
    let mut pbx = Endpoint::udp().await;
    let running = start(&config_with(&[pbx.uri()], "", "")).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    let l = caller.local;
    let body = "v=0\r\no=- 7 7 IN IP4 127.0.0.1\r\ns=weird  spacing\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8 101\r\na=fmtp:101 0-15\r\n";
    let sent = format!(
        "INVITE sip:+15551230000@{proxy};user=phone SIP/2.0\r\n\
         v: SIP/2.0/UDP {l};branch=z9hG4bKtransp;rport\r\n\
         max-forwards:   12\r\n\
         f: \"Bob \\\"the\\\" Builder\" <sip:bob@{l}>;tag=abc\r\n\
         t: <tel:+15551230000>\r\n\
         i: transparency-1@host\r\n\
         CSeq: 4711 INVITE\r\n\
         X-Custom-Header:   keeps   its   spaces  \r\n\
         x-lowercase: yes\r\n\
         P-Asserted-Identity: <sip:+15550001111@carrier.example>, <tel:+15550001111>\r\n\
         Subject: folded\r\n  over two lines\r\n\
         User-Agent: caf\u{e9} phone/1.0\r\n\
         Contact: <sip:bob@{l}>;expires=60\r\n\
         c: application/sdp\r\n\
         l: {len}\r\n\r\n{body}",
        len = body.len()
    );
    caller.send(proxy, sent.as_bytes()).await;
    let (got, from_proxy) = pbx.expect("INVITE ").await;

    assert_eq!(got.lines().next(), sent.lines().next(), "Request-URI untouched");
    assert_eq!(body_of(&got), body, "SDP body byte for byte");
    // Every header line the proxy does not own arrives exactly as sent, in order.
    let owned = |line: &str| {
        let name = line.split(':').next().unwrap_or("").trim().to_ascii_lowercase();
        matches!(name.as_str(), "v" | "via" | "max-forwards" | "record-route" | "route")
    };
    let sent_other: Vec<&str> = lines(&sent).into_iter().filter(|l| !owned(l)).collect();
    let got_other: Vec<&str> = lines(&got).into_iter().filter(|l| !owned(l)).collect();
    assert_eq!(got_other, sent_other);
    // What the proxy owns changed only as RFC 3261 says.
    assert_eq!(header(&got, "max-forwards"), Some("11"));
    let got_vias: Vec<&str> =
        lines(&got).into_iter().filter(|l| l.starts_with("v:") || l.starts_with("Via:")).collect();
    assert_eq!(got_vias.len(), 2);
    assert_eq!(
        got_vias[1],
        format!("v: SIP/2.0/UDP {l};branch=z9hG4bKtransp;rport={};received=127.0.0.1", l.port()),
        "RFC 3581: rport filled, received added"
    );

    // The response comes back with only the proxy's Via removed.
    let mut resp = respond(
        &got,
        200,
        "OK Fine",
        Some("pbxtag"),
        "X-Pbx:  odd   value\r\nreason: Q.850;cause=16\r\n",
        Some(pbx.local),
    );
    resp = resp.replace(
        "Content-Length: 0\r\n\r\n",
        &format!("Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
    );
    pbx.send(from_proxy, resp.as_bytes()).await;
    let (at_caller, _) = caller.expect("SIP/2.0 200").await;
    let ours = format!("Via: SIP/2.0/UDP {proxy};branch=");
    let mut expected: Vec<&str> = lines(&resp);
    let before = expected.len();
    expected.retain(|l| !l.starts_with(&ours)); // the proxy's own Via
    assert_eq!(expected.len(), before - 1);
    assert_eq!(lines(&at_caller), expected);
    assert_eq!(at_caller.lines().next(), Some("SIP/2.0 200 OK Fine"), "reason phrase untouched");
    assert_eq!(body_of(&at_caller), body);
    running.stop().await;
}

#[tokio::test]
async fn non_utf8_bytes_pass_untouched() {
    let mut pbx = Endpoint::udp().await;
    let running = start(&config_with(&[pbx.uri()], "", "")).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    let mut msg = invite(&caller, "bytes", "b", "100", proxy).into_bytes();
    let at = msg.windows(9).position(|w| w == b"Call-ID: ").unwrap();
    let odd: &[u8] = b"X-Latin1: M\xfcller \xff\x01\r\n";
    msg.splice(at..at, odd.iter().copied());
    caller.send(proxy, &msg).await;
    let got = pbx.recv_bytes().await;
    assert!(got.starts_with(b"INVITE "));
    assert!(got.windows(odd.len()).any(|w| w == odd), "the exact bytes are forwarded");
    running.stop().await;
}
