//! Flow tokens (RFC 3327 Path, in the manner of RFC 5626 flows): sluice adds to every
//! REGISTER it forwards a Path URI that names the flow the REGISTER came on (transport,
//! address, connection). The registrar hands it back as a Route on requests for that
//! contact, and sluice sends them down that very flow: through the phone's NAT binding, on
//! its TCP/TLS connection.
//!
//! A token is the flow plus an HMAC-SHA256 (truncated to 128 bits) under the node's flow
//! key: nobody can make sluice send to an address it did not see a REGISTER from. Only a
//! configured gateway may route by token at all (see `request.rs`). The key is random per
//! process, or kept in `[server] flow_key_file` so registrations survive a restart.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::peer::{Peer, Transport};

/// The key flow tokens are MACed with.
pub struct FlowKey([u8; 32]);

impl FlowKey {
    /// A key for this process only.
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        // getrandom fails only without an OS entropy source; the time-mixed fallback then
        // still differs per run.
        if getrandom::getrandom(&mut key).is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            key[..16].copy_from_slice(&t.to_le_bytes());
        }
        Self(key)
    }

    /// The key kept in `path` (64 hex digits), made (mode 0600) if the file does not exist.
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let text = text.trim();
                let mut key = [0u8; 32];
                let valid = text.len() == 64
                    && (0..32).all(|i| {
                        u8::from_str_radix(text.get(2 * i..2 * i + 2).unwrap_or("zz"), 16)
                            .map(|b| key[i] = b)
                            .is_ok()
                    });
                if !valid {
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not 64 hex digits"));
                }
                Ok(Self(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::random();
                let hex: String = key.0.iter().map(|b| format!("{b:02x}")).collect();
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f =
                    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
                writeln!(f, "{hex}")?;
                Ok(key)
            }
            Err(e) => Err(e),
        }
    }

    fn mac(&self, bytes: &[u8]) -> u128 {
        let Ok(mut m) = Hmac::<Sha256>::new_from_slice(&self.0) else { return 0 };
        m.update(b"sluice flow\0");
        m.update(bytes);
        let out = m.finalize().into_bytes();
        let mut first = [0u8; 16];
        first.copy_from_slice(&out[..16]);
        u128::from_be_bytes(first)
    }
}

/// The URI parameter that carries the token in sluice's Path / Route URI.
pub const PARAM: &str = "sluice-flow";

/// `peer` as a token: hex of (transport, address, port, connection) and of its MAC.
pub fn token(key: &FlowKey, peer: Peer) -> String {
    let bytes = encode(peer);
    let mac = key.mac(&bytes);
    let mut text = String::with_capacity(bytes.len() * 2 + 33);
    for b in &bytes {
        text.push_str(&format!("{b:02x}"));
    }
    text.push('.');
    text.push_str(&format!("{mac:032x}"));
    text
}

/// The flow a token names, if the token is one of this node's.
pub fn peer(key: &FlowKey, token: &[u8]) -> Option<Peer> {
    let text = std::str::from_utf8(token).ok()?;
    let (hex, mac) = text.split_once('.')?;
    if hex.len() % 2 != 0 || hex.len() > 64 || mac.len() != 32 {
        return None;
    }
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    let mac = u128::from_str_radix(mac, 16).ok()?;
    (key.mac(&bytes) == mac).then(|| decode(&bytes)).flatten()
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
        let secret = FlowKey::random();
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
            assert_eq!(super::peer(&FlowKey::random(), t.as_bytes()), None, "another node's key");
        }
        assert_eq!(super::peer(&secret, b"zz.00000000000000000000000000000000"), None);
        assert_eq!(super::peer(&secret, b""), None);
    }

    #[test]
    fn a_kept_key_is_the_same_key() {
        let path = std::env::temp_dir().join(format!("sluice-flowkey-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let peer = Peer::udp("192.0.2.10:5062".parse().unwrap());
        let first = FlowKey::load_or_create(&path).unwrap();
        let again = FlowKey::load_or_create(&path).unwrap();
        assert_eq!(super::peer(&again, token(&first, peer).as_bytes()), Some(peer));
        std::fs::write(&path, "short").unwrap();
        assert!(FlowKey::load_or_create(&path).is_err(), "a damaged key file is an error, not a new key");
        let _ = std::fs::remove_file(&path);
    }
}
