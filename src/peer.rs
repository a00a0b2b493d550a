//! Who sent a message and where one goes: the transport, the address and, for TCP and TLS,
//! the connection. Shared by the sans-IO core and the socket layer.

use std::fmt;
use std::net::SocketAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    /// SIP over TLS (RFC 3261 §26), on TCP.
    Tls,
}

impl Transport {
    /// The token used in Via and in `transport=` URI parameters.
    pub fn via_token(self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
            Self::Tls => "TLS",
        }
    }

    pub fn scheme(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
            Self::Tls => "tls",
        }
    }

    /// A stream (TCP or TLS): messages are framed by Content-Length, responses go back on
    /// the connection, nothing is retransmitted by the transaction layer.
    pub fn is_reliable(self) -> bool {
        self != Self::Udp
    }

    /// The transport a Via's protocol token names (`UDP`, `TCP`, `TLS`; any case).
    pub fn from_via(token: &[u8]) -> Option<Self> {
        [Self::Udp, Self::Tcp, Self::Tls]
            .into_iter()
            .find(|t| t.via_token().as_bytes().eq_ignore_ascii_case(token))
    }
}

/// Identifies one TCP or TLS connection for the lifetime of the process (never reused).
pub type ConnId = u64;

/// A remote end. For TCP, `conn` names the connection a message arrived on; sending to a
/// peer with `conn` set uses that connection, otherwise any connection to `addr` (or a new one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub transport: Transport,
    pub addr: SocketAddr,
    pub conn: Option<ConnId>,
}

impl Peer {
    pub fn udp(addr: SocketAddr) -> Self {
        Self { transport: Transport::Udp, addr, conn: None }
    }

    pub fn tcp(addr: SocketAddr, conn: Option<ConnId>) -> Self {
        Self { transport: Transport::Tcp, addr, conn }
    }

    /// A peer on a stream transport (TCP or TLS).
    pub fn stream(transport: Transport, addr: SocketAddr, conn: Option<ConnId>) -> Self {
        Self { transport, addr, conn }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.transport.scheme(), self.addr)
    }
}

/// The host of a `scheme://HOST:PORT` endpoint as written (brackets of an IPv6 literal
/// removed): the name a TLS gateway's certificate must carry.
pub fn endpoint_host(text: &str) -> &str {
    let rest = text.split_once("://").map_or(text, |(_, r)| r).trim_end_matches('/');
    let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Parses `udp://HOST:PORT` / `tcp://HOST:PORT` / `tls://HOST:PORT` (IPv6 as `[::1]:5060`);
/// a host name is resolved once, here. The error is a sentence for the config report.
pub fn parse_endpoint(text: &str) -> Result<(Transport, SocketAddr), String> {
    let (transport, rest) = if let Some(r) = text.strip_prefix("udp://") {
        (Transport::Udp, r)
    } else if let Some(r) = text.strip_prefix("tcp://") {
        (Transport::Tcp, r)
    } else if let Some(r) = text.strip_prefix("tls://") {
        (Transport::Tls, r)
    } else {
        return Err(format!("`{text}` must start with udp://, tcp:// or tls://"));
    };
    let rest = rest.trim_end_matches('/');
    if let Ok(addr) = rest.parse::<SocketAddr>() {
        return Ok((transport, addr));
    }
    use std::net::ToSocketAddrs;
    match rest.to_socket_addrs() {
        Ok(mut addrs) => {
            addrs.next().map(|a| (transport, a)).ok_or_else(|| format!("`{rest}` resolves to no address"))
        }
        Err(e) => Err(format!("`{text}` is not HOST:PORT ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("udp://127.0.0.1:5060"),
            Ok((Transport::Udp, "127.0.0.1:5060".parse().unwrap()))
        );
        assert_eq!(parse_endpoint("tcp://[::1]:5070"), Ok((Transport::Tcp, "[::1]:5070".parse().unwrap())));
        assert_eq!(
            parse_endpoint("tls://127.0.0.1:5061"),
            Ok((Transport::Tls, "127.0.0.1:5061".parse().unwrap()))
        );
        assert!(parse_endpoint("sctp://127.0.0.1:5061").is_err());
        assert_eq!(endpoint_host("tls://[::1]:5061"), "::1");
        assert_eq!(endpoint_host("tls://gw.example.net:5061"), "gw.example.net");
        assert_eq!(Transport::from_via(b"tls"), Some(Transport::Tls));
        assert!(parse_endpoint("udp://127.0.0.1").is_err());
    }
}
