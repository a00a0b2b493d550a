//! Via header values: transport, sent-by, and the parameters a proxy routes responses by
//! (branch, received, rport: RFC 3261 §18.2.1 and RFC 3581).

use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use super::lex::{is_lws, trim};
use super::params;
use super::uri::parse_host_ip;

/// The RFC 3261 magic cookie that marks a branch as globally unique.
pub const MAGIC_COOKIE: &[u8] = b"z9hG4bK";

/// One via-parm. All ranges are relative to the header value it was parsed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via<'a> {
    /// The whole element (for removal from a multi-valued line).
    pub range: Range<usize>,
    pub transport: &'a [u8],
    pub host: &'a [u8],
    pub port: Option<u16>,
    pub branch: Option<&'a [u8]>,
    pub received: Option<&'a [u8]>,
    /// `None`: no rport; `Some(None)`: `rport` without a value (the sender asks for it);
    /// `Some(Some(p))`: filled in.
    pub rport: Option<Option<u16>>,
    /// Where the element's parameters end (insertion point for new parameters).
    pub params_end: usize,
    /// The `rport` parameter's own range, for filling it in.
    pub rport_range: Option<Range<usize>>,
    /// The `received` parameter's own range, for replacing it.
    pub received_range: Option<Range<usize>>,
}

impl Via<'_> {
    /// Where a response to this hop goes (RFC 3261 §18.2.2, RFC 3581 §4): `received` over
    /// the sent-by host, `rport` over the sent-by port, 5060 by default. `None` when the host
    /// is a name with no `received` (the proxy never needs DNS for responses: it always sets
    /// `received` on names when it forwards).
    pub fn response_target(&self) -> Option<SocketAddr> {
        let ip: IpAddr = match self.received {
            Some(r) => parse_host_ip(r)?,
            None => parse_host_ip(self.host)?,
        };
        let port = match self.rport {
            Some(Some(p)) => p,
            _ => self.port.unwrap_or(5060),
        };
        Some(SocketAddr::new(ip, port))
    }

    pub fn is_tcp(&self) -> bool {
        self.transport.eq_ignore_ascii_case(b"TCP")
    }
}

/// Parses every via-parm of one Via header value.
pub fn parse_all(value: &[u8]) -> Option<Vec<Via<'_>>> {
    params::split_list(value).into_iter().map(|r| parse_one(value, r)).collect()
}

/// Parses the first via-parm of a Via header value (the topmost Via of a message).
pub fn parse_first(value: &[u8]) -> Option<Via<'_>> {
    parse_one(value, params::first_element(value)?)
}

fn parse_one(value: &[u8], range: Range<usize>) -> Option<Via<'_>> {
    let elem = &value[range.clone()];
    // sent-protocol: "SIP" / "2.0" / transport, LWS allowed around each slash.
    let mut pos = 0;
    let mut parts: [&[u8]; 3] = [b""; 3];
    for (i, part) in parts.iter_mut().enumerate() {
        while pos < elem.len() && is_lws(elem[pos]) {
            pos += 1;
        }
        let start = pos;
        while pos < elem.len() && !is_lws(elem[pos]) && elem[pos] != b'/' {
            pos += 1;
        }
        *part = &elem[start..pos];
        while pos < elem.len() && is_lws(elem[pos]) {
            pos += 1;
        }
        if i < 2 {
            if elem.get(pos) != Some(&b'/') {
                return None;
            }
            pos += 1;
        }
    }
    let token =
        |p: &[u8]| !p.is_empty() && p.iter().all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(b));
    if !parts[0].eq_ignore_ascii_case(b"SIP") || parts[1] != b"2.0" || !token(parts[2]) {
        return None;
    }
    let semi = elem[pos..].iter().position(|b| *b == b';').map_or(elem.len(), |i| pos + i);
    let sent_by = trim(&elem[pos..semi]);
    if sent_by.is_empty() {
        return None;
    }
    let (host, port) = split_host_port(sent_by)?;
    let mut via = Via {
        range: range.clone(),
        transport: parts[2],
        host,
        port,
        branch: None,
        received: None,
        rport: None,
        params_end: range.end,
        rport_range: None,
        received_range: None,
    };
    let base = range.start + semi;
    for p in params::iter(&elem[semi..]) {
        let abs = base + p.range.start..base + p.range.end;
        if p.name.eq_ignore_ascii_case(b"branch") {
            via.branch = p.value.filter(|v| !v.is_empty());
        } else if p.name.eq_ignore_ascii_case(b"received") {
            via.received = p.value;
            via.received_range = Some(abs);
        } else if p.name.eq_ignore_ascii_case(b"rport") {
            via.rport = Some(p.value.and_then(|v| std::str::from_utf8(v).ok()?.parse().ok()));
            via.rport_range = Some(abs);
        }
    }
    Some(via)
}

/// Splits `host[:port]`, IPv6 references included. `None` for an unparsable port.
pub fn split_host_port(sent_by: &[u8]) -> Option<(&[u8], Option<u16>)> {
    let (host, rest) = if sent_by.first() == Some(&b'[') {
        let close = memchr::memchr(b']', sent_by)?;
        (&sent_by[..=close], trim(&sent_by[close + 1..]))
    } else {
        match memchr::memchr(b':', sent_by) {
            Some(c) => (trim(&sent_by[..c]), &sent_by[c..]),
            None => (sent_by, &b""[..]),
        }
    };
    if host.is_empty() {
        return None;
    }
    if rest.is_empty() {
        return Some((host, None));
    }
    let port = trim(rest.strip_prefix(b":")?);
    let port = std::str::from_utf8(port).ok()?.parse().ok()?;
    Some((host, Some(port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_via_with_lws() {
        let v = b"SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw";
        let via = parse_first(v).unwrap();
        assert_eq!(via.transport, b"UDP");
        assert_eq!(via.host, b"192.0.2.2");
        assert_eq!(via.branch, Some(&b"390skdjuw"[..]));
        assert_eq!(via.response_target(), Some("192.0.2.2:5060".parse().unwrap()));
    }

    #[test]
    fn two_vias_on_one_line_and_ipv6_received() {
        let v = b"SIP/2.0/UDP [2001:db8::9]:5070;branch=z9hG4bKa;rport=6000;received=2001:db8::9, SIP/2.0/TCP h2;branch=z9hG4bKb";
        let all = parse_all(v).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].received, Some(&b"2001:db8::9"[..]));
        assert_eq!(all[0].rport, Some(Some(6000)));
        assert_eq!(all[0].response_target(), Some("[2001:db8::9]:6000".parse().unwrap()));
        assert!(all[1].is_tcp());
        assert_eq!(&v[all[1].range.clone()], b"SIP/2.0/TCP h2;branch=z9hG4bKb");
    }

    #[test]
    fn empty_rport_and_bad_input() {
        let v = b"SIP/2.0/UDP host.example.com:5062;rport;branch=z9hG4bKx";
        let via = parse_first(v).unwrap();
        assert_eq!(via.rport, Some(None));
        assert_eq!(&v[via.rport_range.clone().unwrap()], b";rport");
        assert_eq!(via.response_target(), None, "a name without received needs DNS");
        assert!(parse_first(b"SIP/2.0/UDP 192.0.2.15;;,;,,").is_some());
        assert!(parse_first(b"garbage").is_none());
        assert!(parse_first(b"SIP/2.0/UDP").is_none());
        // Found by the fuzzer: a ';' inside the sent-protocol once sliced backwards.
        assert!(parse_first(b"SIP/2.0/UD;P host").is_none());
        assert!(parse_first(b"SIP /2.0;/UDP h").is_none());
    }
}
