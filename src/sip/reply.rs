//! The one builder for messages the proxy originates: responses to requests it answers itself
//! (100, 400, 403, 404, 408, 482, 483, 503...) and the hop-by-hop requests of a stateful proxy
//! (ACK for a non-2xx final answer, CANCEL of a pending branch).

use std::io::Write;

use super::edit::Splice;
use super::header::HeaderName;
use super::message::Message;

/// The product token in Server / User-Agent headers.
pub const PRODUCT: &str = concat!("sluice/", env!("CARGO_PKG_VERSION"));

/// Builds a response to `req`: status line, every Via (the top one with `top_via` edits
/// applied: received/rport), From, To (with `to_tag` added when it has none and the status is
/// above 100), Call-ID, CSeq, `extra` headers, and an empty body.
pub fn response(
    req: &Message<'_>,
    top_via: &mut Splice<'_>,
    status: u16,
    reason: &str,
    to_tag: Option<&[u8]>,
    extra: &[(&str, &[u8])],
) -> Vec<u8> {
    let crlf = req.crlf;
    let mut out = Vec::with_capacity(512);
    let _ = write!(out, "SIP/2.0 {status} {reason}");
    out.extend_from_slice(crlf);
    let mut first_via = true;
    for h in &req.headers {
        match h.name {
            HeaderName::Via => {
                if first_via {
                    top_via.write_range(h.line.range(), &mut out);
                    first_via = false;
                } else {
                    out.extend_from_slice(h.line.of(req.buf));
                }
            }
            HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                out.extend_from_slice(h.line.of(req.buf))
            }
            HeaderName::To => {
                let has_tag = req.tag(HeaderName::To).is_some();
                match to_tag {
                    Some(tag) if status > 100 && !has_tag => {
                        out.extend_from_slice(&req.buf[h.line.start as usize..h.value.end as usize]);
                        out.extend_from_slice(b";tag=");
                        out.extend_from_slice(tag);
                        out.extend_from_slice(&req.buf[h.value.end as usize..h.line.end as usize]);
                    }
                    _ => out.extend_from_slice(h.line.of(req.buf)),
                }
            }
            _ => {}
        }
    }
    for (name, value) in extra {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(crlf);
    }
    out.extend_from_slice(b"Server: ");
    out.extend_from_slice(PRODUCT.as_bytes());
    out.extend_from_slice(crlf);
    out.extend_from_slice(b"Content-Length: 0");
    out.extend_from_slice(crlf);
    out.extend_from_slice(crlf);
    out
}

/// Builds a hop-by-hop request (ACK or CANCEL) from the INVITE the proxy forwarded on a
/// branch (RFC 3261 §9.1 and §17.1.1.3): same Request-URI, the proxy's Via only (same branch),
/// same Call-ID, From, Route set and CSeq number; To from `to_line` (the final response's,
/// for an ACK) or the INVITE's.
pub fn hop_request(forwarded: &Message<'_>, method: &str, to_line: Option<&[u8]>) -> Vec<u8> {
    let crlf = forwarded.crlf;
    let mut out = Vec::with_capacity(512);
    let _ = write!(out, "{method} ");
    out.extend_from_slice(forwarded.request_uri().unwrap_or_default());
    out.extend_from_slice(b" SIP/2.0");
    out.extend_from_slice(crlf);
    if let Some(via) = forwarded.first(HeaderName::Via) {
        let value = via.value.of(forwarded.buf);
        let first = super::params::split_list(value).into_iter().next().unwrap_or(0..value.len());
        out.extend_from_slice(b"Via: ");
        out.extend_from_slice(&value[first]);
        out.extend_from_slice(crlf);
    }
    for h in &forwarded.headers {
        match h.name {
            HeaderName::From | HeaderName::CallId | HeaderName::Route => {
                out.extend_from_slice(h.line.of(forwarded.buf))
            }
            HeaderName::To => match to_line {
                Some(line) => out.extend_from_slice(line),
                None => out.extend_from_slice(h.line.of(forwarded.buf)),
            },
            _ => {}
        }
    }
    if let Some((n, _)) = forwarded.cseq() {
        let _ = write!(out, "CSeq: {n} {method}");
        out.extend_from_slice(crlf);
    }
    out.extend_from_slice(b"Max-Forwards: 70");
    out.extend_from_slice(crlf);
    out.extend_from_slice(b"Content-Length: 0");
    out.extend_from_slice(crlf);
    out.extend_from_slice(crlf);
    out
}

/// Builds a request the proxy originates inside a dialog (the BYE that ends a call whose 2xx
/// was never acknowledged): `uri` is the peer's Contact, `routes` its route set in order,
/// `from` / `to` the header values with their tags, `via` the proxy's own Via value.
#[allow(clippy::too_many_arguments)]
pub fn dialog_request(
    method: &str,
    uri: &[u8],
    via: &[u8],
    routes: &[&[u8]],
    from: &[u8],
    to: &[u8],
    call_id: &[u8],
    cseq: u32,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    let _ = write!(out, "{method} ");
    out.extend_from_slice(uri);
    out.extend_from_slice(b" SIP/2.0\r\nVia: ");
    out.extend_from_slice(via);
    out.extend_from_slice(b"\r\n");
    for r in routes {
        out.extend_from_slice(b"Route: ");
        out.extend_from_slice(r);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Max-Forwards: 70\r\nFrom: ");
    out.extend_from_slice(from);
    out.extend_from_slice(b"\r\nTo: ");
    out.extend_from_slice(to);
    out.extend_from_slice(b"\r\nCall-ID: ");
    out.extend_from_slice(call_id);
    let _ = write!(out, "\r\nCSeq: {cseq} {method}\r\nUser-Agent: {PRODUCT}\r\nContent-Length: 0\r\n\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::parse;

    const REQ: &[u8] = b"INVITE sip:1@h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nVia: SIP/2.0/UDP b;branch=z9hG4bK2\r\nFrom: <sip:a@h>;tag=f\r\nTo: <sip:1@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nRoute: <sip:r;lr>\r\nX-Other: keep-out\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn response_copies_the_right_headers() {
        let m = parse(REQ).unwrap();
        let mut via = Splice::new(REQ);
        let top = m.first(HeaderName::Via).unwrap().value.end as usize;
        via.insert(top, b";received=192.0.2.1");
        let r = response(&m, &mut via, 404, "Not Found", Some(b"xyz"), &[("Retry-After", b"1")]);
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("SIP/2.0 404 Not Found\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1;received=192.0.2.1\r\nVia: SIP/2.0/UDP b;branch=z9hG4bK2\r\n"), "{text}");
        assert!(text.contains("To: <sip:1@h>;tag=xyz\r\n"));
        assert!(text.contains("Retry-After: 1\r\n"));
        assert!(!text.contains("X-Other"));
        assert!(!text.contains("Route"));
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
        let reparsed = parse(text.as_bytes()).unwrap();
        assert_eq!(reparsed.status(), Some(404));
    }

    #[test]
    fn cancel_keeps_branch_and_route() {
        let m = parse(REQ).unwrap();
        let c = hop_request(&m, "CANCEL", None);
        let text = String::from_utf8(c).unwrap();
        assert!(
            text.starts_with("CANCEL sip:1@h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\n"),
            "{text}"
        );
        assert!(text.contains("Route: <sip:r;lr>\r\n"));
        assert!(text.contains("CSeq: 1 CANCEL\r\n"));
        assert!(!text.contains("z9hG4bK2"));
    }
}
