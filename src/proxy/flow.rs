//! Flow tokens (RFC 3327 Path, in the manner of RFC 5626 flows): sluice adds to every
//! REGISTER it forwards a Path URI that names the flow the REGISTER came on (transport,
//! address, connection). The registrar hands it back as a Route on requests for that
//! contact, and sluice sends them down that very flow: through the phone's NAT binding, on
//! its TCP/TLS connection.
//!
//! A token is the flow plus a keyed MAC (one key per node): nobody can make sluice send to
//! an address it did not see a REGISTER from. Only a configured gateway may route by
//! token at all (see `request.rs`).

use std::net::{IpAddr, SocketAddr};

use super::branch::Secret;
use crate::peer::{Peer, Transport};

/// The URI parameter that carries the token in sluice's Path / Route URI.
pub const PARAM: &str = "sluice-flow";

/// `peer` as a token: hex of (transport, address, port, connection) and of its MAC.
pub fn token(secret: &Secret, peer: Peer) -> String {
    let bytes = encode(peer);
    let mac = secret.hash(("flow", &bytes));
    let mut text = String::with_capacity(bytes.len() * 2 + 17);
    for b in &bytes {
        text.push_str(&format!("{b:02x}"));
    }
    text.push('.');
    text.push_str(&format!("{mac:016x}"));
    text
}

/// The flow a token names, if the token is one of this node's.
pub fn peer(secret: &Secret, token: &[u8]) -> Option<Peer> {
    let text = std::str::from_utf8(token).ok()?;
    let (hex, mac) = text.split_once('.')?;
    if hex.len() % 2 != 0 || hex.len() > 64 || mac.len() != 16 {
        return None;
    }
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    let mac = u64::from_str_radix(mac, 16).ok()?;
    (secret.hash(("flow", &bytes)) == mac).then(|| decode(&bytes)).flatten()
}

fn encode(peer: Peer) -> Vec<u8> {
    let mut out = vec![match peer.transport {
        Transport::Udp => b'u',
        Transport::Tcp => b't',
        Transport::Tls => b's',
    }];
    match peer.addr.ip() {
        IpAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(6);
            out.extend_from_slice(&v6.octets());
        }
    }
    out.extend_from_slice(&peer.addr.port().to_be_bytes());
    out.extend_from_slice(&peer.conn.unwrap_or(0).to_be_bytes());
    out
}

fn decode(b: &[u8]) -> Option<Peer> {
    let transport = match b.first()? {
        b'u' => Transport::Udp,
        b't' => Transport::Tcp,
        b's' => Transport::Tls,
        _ => return None,
    };
    let (ip, rest): (IpAddr, &[u8]) = match b.get(1)? {
        4 => (IpAddr::from(<[u8; 4]>::try_from(b.get(2..6)?).ok()?), b.get(6..)?),
        6 => (IpAddr::from(<[u8; 16]>::try_from(b.get(2..18)?).ok()?), b.get(18..)?),
        _ => return None,
    };
    let port = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?);
    let conn = u64::from_be_bytes(rest.get(2..10)?.try_into().ok()?);
    if rest.len() != 10 {
        return None;
    }
    let conn = (conn != 0 && transport != Transport::Udp).then_some(conn);
    Some(Peer { transport, addr: SocketAddr::new(ip, port), conn })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_cannot_be_forged() {
        let secret = Secret::new(7);
        for peer in [
            Peer::udp("192.0.2.10:5062".parse().unwrap()),
            Peer::stream(Transport::Tls, "[2001:db8::1]:40000".parse().unwrap(), Some(42)),
        ] {
            let t = token(&secret, peer);
            assert_eq!(super::peer(&secret, t.as_bytes()), Some(peer));
            // Another address with the same MAC, or another node's key: refused.
            let mut forged = t.clone().into_bytes();
            forged[5] = if forged[5] == b'0' { b'1' } else { b'0' };
            assert_eq!(super::peer(&secret, &forged), None);
            assert_eq!(super::peer(&Secret::new(7), t.as_bytes()), None, "another node's key");
        }
        assert_eq!(super::peer(&secret, b"zz.0000000000000000"), None);
        assert_eq!(super::peer(&secret, b""), None);
    }
}
