//! What the proxy writes into the top Via of a request it receives (RFC 3261 §18.2.1,
//! RFC 3581): `received` when the sender's address differs from its sent-by (or it asked for
//! `rport`), and the source port in an empty `rport`. The same edits are applied when the
//! request is forwarded and when the proxy answers it itself, so responses find their way
//! back through NAT.

use std::io::Write;
use std::net::SocketAddr;

use crate::config::host_text;
use crate::peer::{Peer, Transport};
use crate::sip::edit::Splice;
use crate::sip::uri::parse_host_ip;
use crate::sip::{HeaderName, Message};

/// Adds the top-Via edits for a request from `source` to `splice`, and returns where
/// responses to this request must be sent.
pub fn stamp(msg: &Message<'_>, source: Peer, splice: &mut Splice<'_>) -> Option<Peer> {
    let header = msg.first(HeaderName::Via)?;
    let base = header.value.start as usize;
    let top = msg.top_via.as_ref()?;
    let src_ip = source.addr.ip();
    let sent_by_ip = parse_host_ip(top.host);
    let wants_rport = top.rport.is_some();
    if let (Some(None), Some(r)) = (top.rport, &top.rport_range) {
        let mut with = Vec::with_capacity(12);
        let _ = write!(with, ";rport={}", source.addr.port());
        splice.replace(base + r.start..base + r.end, &with);
    }
    if wants_rport || sent_by_ip != Some(src_ip) {
        let with = format!(";received={}", received_text(src_ip));
        match &top.received_range {
            Some(r) => splice.replace(base + r.start..base + r.end, with.as_bytes()),
            None => splice.insert(base + top.range.end, with.as_bytes()),
        }
    }
    Some(match source.transport {
        Transport::Tcp | Transport::Tls => source,
        Transport::Udp => {
            let port = if wants_rport { source.addr.port() } else { top.port.unwrap_or(5060) };
            Peer::udp(SocketAddr::new(src_ip, port))
        }
    })
}

/// `received` holds a bare IPv6 address (RFC 3261 grammar: IPv6address, no brackets).
fn received_text(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(_) => host_text(ip),
        std::net::IpAddr::V6(v6) => v6.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::parse;

    fn run(via_line: &str, src: &str) -> (String, Option<Peer>) {
        let raw = format!("OPTIONS sip:a@b SIP/2.0\r\n{via_line}\r\nl: 0\r\n\r\n");
        let m = parse(raw.as_bytes()).unwrap();
        let mut s = Splice::new(raw.as_bytes());
        let to = stamp(&m, Peer::udp(src.parse().unwrap()), &mut s);
        let out = String::from_utf8(s.finish()).unwrap();
        (out.lines().nth(1).unwrap().to_string(), to)
    }

    #[test]
    fn rport_and_received() {
        let (line, to) = run("Via: SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bKa", "203.0.113.7:40000");
        assert_eq!(line, "Via: SIP/2.0/UDP 10.0.0.1:5060;rport=40000;branch=z9hG4bKa;received=203.0.113.7");
        assert_eq!(to, Some(Peer::udp("203.0.113.7:40000".parse().unwrap())));

        let (line, to) = run("Via: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKb", "192.0.2.1:5062");
        assert_eq!(line, "Via: SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bKb");
        assert_eq!(to, Some(Peer::udp("192.0.2.1:5062".parse().unwrap())));

        let (line, to) =
            run("v: SIP/2.0/UDP host.example.com;branch=z9hG4bKc, SIP/2.0/UDP x", "[2001:db8::9]:5060");
        assert_eq!(
            line,
            "v: SIP/2.0/UDP host.example.com;branch=z9hG4bKc;received=2001:db8::9, SIP/2.0/UDP x"
        );
        assert_eq!(to, Some(Peer::udp("[2001:db8::9]:5060".parse().unwrap())));
    }
}
