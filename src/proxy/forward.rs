//! The bytes the proxy forwards: the received message with the proxy's own edits spliced in
//! (RFC 3261 §16.6 for requests, §16.7 for responses). Nothing else is touched.

use std::io::Write;

use super::identity::Identity;
use super::stamp;
use crate::peer::{Peer, Transport};
use crate::sip::edit::Splice;
use crate::sip::name_addr::NameAddr;
use crate::sip::params::split_list;
use crate::sip::uri::Uri;
use crate::sip::{Header, HeaderName, Message};

/// How to forward one request.
pub struct RequestEdits<'a> {
    /// Transport of the outgoing leg (decides the Via transport and Record-Route form).
    pub out: Transport,
    pub branch: &'a [u8],
    /// Record-Route this request (dialog-creating INVITE).
    pub record_route: bool,
    /// sluice's own `[auth]` realm: Proxy-Authorization for it was meant for sluice and is
    /// removed (credentials for other realms pass untouched, RFC 3261 §22.3).
    pub own_realm: Option<&'a str>,
    /// A REGISTER: the flow token of the Path sluice adds (RFC 3327), so requests for the
    /// registered contact come back through sluice, down the flow the REGISTER came on.
    pub path_flow: Option<&'a str>,
}

/// The forwarded copy of a request received from `source`. Also returns where responses
/// to it go (from the stamped top Via).
pub fn request(
    msg: &Message<'_>,
    source: Peer,
    me: &Identity,
    edits: &RequestEdits<'_>,
) -> (Vec<u8>, Option<Peer>) {
    let crlf = msg.crlf;
    let mut s = Splice::new(msg.buf);
    let reply_to = stamp::stamp(msg, source, &mut s);
    let first_via = msg
        .first(HeaderName::Via)
        .map_or(msg.start_line.end as usize + crlf.len(), |h| h.line.start as usize);
    if edits.record_route {
        let at = msg.first(HeaderName::RecordRoute).map_or(first_via, |h| h.line.start as usize);
        s.insert_with(at, |out| {
            // Facing the callee first (it uses the set top-down), then the caller when the
            // legs use different transports (double Record-Route).
            let legs = [edits.out, source.transport];
            let count = if edits.out == source.transport { 1 } else { 2 };
            for t in &legs[..count] {
                out.extend_from_slice(b"Record-Route: ");
                out.extend_from_slice(me.record_route(*t).as_bytes());
                out.extend_from_slice(crlf);
            }
        });
    }
    if let Some(flow) = edits.path_flow {
        // Our Path goes on top of any other proxy's (RFC 3327 §5.1): before the first.
        let at = msg
            .headers
            .iter()
            .find(|h| msg.bytes(h.name_span).eq_ignore_ascii_case(b"Path"))
            .map_or(first_via, |h| h.line.start as usize);
        s.insert_with(at, |out| {
            let rr = me.record_route(edits.out);
            let uri = rr.strip_suffix(";lr>").unwrap_or(rr);
            let _ = write!(out, "Path: {uri};lr;{}={flow}>", super::flow::PARAM);
            out.extend_from_slice(crlf);
        });
    }
    match msg.first(HeaderName::MaxForwards) {
        Some(h) => {
            let n = msg.max_forwards().ok().flatten().unwrap_or(70).saturating_sub(1);
            let mut digits = [0u8; 3];
            let len = write_u8(n, &mut digits);
            s.replace(h.value.range(), &digits[..len]);
        }
        None => s.insert_with(first_via, |out| {
            out.extend_from_slice(b"Max-Forwards: 70");
            out.extend_from_slice(crlf);
        }),
    }
    // Our Via goes last at that position, so the Via block stays contiguous (a UAS that
    // copies "the Via lines" copies all of them).
    s.insert_with(first_via, |out| {
        let _ = write!(out, "Via: SIP/2.0/{} {};branch=", edits.out.via_token(), me.sent_by(edits.out));
        out.extend_from_slice(edits.branch);
        out.extend_from_slice(b";rport");
        out.extend_from_slice(crlf);
    });
    pop_my_routes(msg, me, &mut s);
    if let Some(realm) = edits.own_realm {
        for h in msg.all(HeaderName::ProxyAuthorization) {
            if crate::auth::digest::realm_of(msg.bytes(h.value)) == Some(realm.as_bytes()) {
                s.remove(h.line.range());
            }
        }
    }
    if msg.content_length.is_none() && edits.out.is_reliable() {
        let at = msg.body_start - crlf.len();
        let len = msg.body.end - msg.body.start;
        s.insert_with(at, |out| {
            let _ = write!(out, "Content-Length: {len}");
            out.extend_from_slice(crlf);
        });
    }
    (s.to_vec(0..msg.body.end as usize), reply_to)
}

/// Writes `n` in decimal without allocating; returns the length.
fn write_u8(n: u8, out: &mut [u8; 3]) -> usize {
    if n >= 100 {
        *out = [b'0' + n / 100, b'0' + n / 10 % 10, b'0' + n % 10];
        3
    } else if n >= 10 {
        out[..2].copy_from_slice(&[b'0' + n / 10, b'0' + n % 10]);
        2
    } else {
        out[0] = b'0' + n;
        1
    }
}

/// Removes the Route entries at the top of the route set that point at this proxy (loose
/// routing, RFC 3261 §16.4). Stops at the first entry that is not ours.
fn pop_my_routes(msg: &Message<'_>, me: &Identity, s: &mut Splice<'_>) {
    for h in msg.all(HeaderName::Route) {
        let value = msg.bytes(h.value);
        let parts = split_list(value);
        let mine = parts
            .iter()
            .take_while(|r| {
                let elem = &value[(*r).clone()];
                NameAddr::parse(elem)
                    .and_then(|na| Uri::parse(na.uri_of(elem)).ok())
                    .is_some_and(|u| me.is_my_uri(&u))
            })
            .count();
        if mine == parts.len() {
            s.remove(h.line.range());
            continue;
        }
        if mine > 0 {
            let base = h.value.start as usize;
            s.remove(base + parts[0].start..base + parts[mine].start);
        }
        return;
    }
}

/// True when the first Route of `msg` points at this proxy.
pub fn routed_to_me(msg: &Message<'_>, me: &Identity) -> bool {
    let Some(h) = msg.first(HeaderName::Route) else {
        return false;
    };
    let value = msg.bytes(h.value);
    split_list(value).first().is_some_and(|r| {
        let elem = &value[r.clone()];
        NameAddr::parse(elem)
            .and_then(|na| Uri::parse(na.uri_of(elem)).ok())
            .is_some_and(|u| me.is_my_uri(&u))
    })
}

/// The flow token in the first Route of `msg`, when that Route is one of sluice's own Path
/// URIs (see `flow.rs`).
pub fn flow_token<'a>(msg: &Message<'a>, me: &Identity) -> Option<&'a [u8]> {
    let h = msg.first(HeaderName::Route)?;
    let value = msg.bytes(h.value);
    let first = split_list(value).into_iter().next()?;
    let elem = &value[first];
    let na = NameAddr::parse(elem)?;
    let uri = Uri::parse(na.uri_of(elem)).ok()?;
    if !me.is_my_uri(&uri) {
        return None;
    }
    crate::sip::params::find(uri.params, super::flow::PARAM.as_bytes())?.value
}

/// The forwarded copy of a response: the proxy's own top Via removed.
pub fn response(msg: &Message<'_>) -> Vec<u8> {
    let mut s = Splice::new(msg.buf);
    if let Some(h) = msg.first(HeaderName::Via) {
        remove_first_element(msg, h, &mut s);
    }
    s.to_vec(0..msg.body.end as usize)
}

fn remove_first_element(msg: &Message<'_>, h: &Header, s: &mut Splice<'_>) {
    let parts = split_list(msg.bytes(h.value));
    if parts.len() <= 1 {
        s.remove(h.line.range());
    } else {
        let base = h.value.start as usize;
        s.remove(base + parts[0].start..base + parts[1].start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::sip::parse;

    fn me() -> Identity {
        let text = "[server]\nlisten = [\"udp://127.0.0.1:5060\", \"tcp://127.0.0.1:5060\"]\n[[carrier]]\nname = \"a\"\ngateways = [\"udp://127.0.0.1:5070\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"a\"]\n";
        Identity::new(&Config::parse("t", text).unwrap())
    }

    const INVITE: &str = "INVITE sip:+15551230000@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bK1;rport\r\n\
Route: <sip:127.0.0.1:5060;lr>, <sip:next.example.com;lr>\r\n\
Max-Forwards: 10\r\n\
From: <sip:a@x>;tag=f\r\n\
To: <sip:+15551230000@x>\r\n\
Call-ID: c1\r\n\
CSeq: 1 INVITE\r\n\
X-Weird:   spacing  kept \r\n\
Content-Length: 4\r\n\
\r\n\
v=0\r\ntrailing-garbage";

    #[test]
    fn forwards_with_only_proxy_edits() {
        let m = parse(INVITE.as_bytes()).unwrap();
        let src = Peer::udp("192.0.2.10:5999".parse().unwrap());
        let (out, reply_to) = request(
            &m,
            src,
            &me(),
            &RequestEdits {
                out: Transport::Udp,
                branch: b"z9hG4bKslX",
                record_route: true,
                own_realm: None,
                path_flow: None,
            },
        );
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "INVITE sip:+15551230000@127.0.0.1 SIP/2.0\r\n\
Record-Route: <sip:127.0.0.1:5060;lr>\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKslX;rport\r\n\
Via: SIP/2.0/UDP 10.1.1.1:5060;branch=z9hG4bK1;rport=5999;received=192.0.2.10\r\n\
Route: <sip:next.example.com;lr>\r\n\
Max-Forwards: 9\r\n\
From: <sip:a@x>;tag=f\r\n\
To: <sip:+15551230000@x>\r\n\
Call-ID: c1\r\n\
CSeq: 1 INVITE\r\n\
X-Weird:   spacing  kept \r\n\
Content-Length: 4\r\n\
\r\n\
v=0\r"
        );
        assert_eq!(reply_to, Some(Peer::udp("192.0.2.10:5999".parse().unwrap())));
    }

    #[test]
    fn tcp_leg_gets_double_record_route_and_content_length() {
        let raw = "MESSAGE sip:1@h SIP/2.0\nv: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK1\nf: <sip:a@x>;tag=f\nt: <sip:1@x>\ni: c\nCSeq: 1 MESSAGE\n\nhello";
        let m = parse(raw.as_bytes()).unwrap();
        let src = Peer::udp("192.0.2.10:5060".parse().unwrap());
        let (out, _) = request(
            &m,
            src,
            &me(),
            &RequestEdits {
                out: Transport::Tcp,
                branch: b"b",
                record_route: true,
                own_realm: None,
                path_flow: None,
            },
        );
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(
                "Record-Route: <sip:127.0.0.1:5060;transport=tcp;lr>\nRecord-Route: <sip:127.0.0.1:5060;lr>\n"
            ),
            "{text}"
        );
        assert!(text.contains("Max-Forwards: 70\n"));
        assert!(text.ends_with("Content-Length: 5\n\nhello"), "{text}");
        assert!(text.contains("Via: SIP/2.0/TCP 127.0.0.1:5060;branch=b;rport\n"));
    }

    #[test]
    fn response_loses_only_the_top_via() {
        let raw = "SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKslX, SIP/2.0/UDP 10.1.1.1;branch=z9hG4bK1\r\nCall-ID: c\r\nContent-Length: 0\r\n\r\n";
        let out = response(&parse(raw.as_bytes()).unwrap());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/UDP 10.1.1.1;branch=z9hG4bK1\r\nCall-ID: c\r\nContent-Length: 0\r\n\r\n"
        );
    }
}
