//! Who sent a message and where one goes: the transport, the address and, for TCP, the
//! connection. Shared by the sans-IO core and the socket layer.

use std::fmt;
use std::net::SocketAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    /// The token used in Via and in `transport=` URI parameters.
    pub fn via_token(self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
        }
    }

    pub fn scheme(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        }
    }

    pub fn is_reliable(self) -> bool {
        self == Self::Tcp
    }
}

/// Identifies one TCP connection for the lifetime of the process (never reused).
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
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.transport.scheme(), self.addr)
    }
}

/// Parses `udp://HOST:PORT` / `tcp://HOST:PORT` (IPv6 as `[::1]:5060`); a host name is
/// resolved once, here. The error is a sentence for the config report.
pub fn parse_endpoint(text: &str) -> Result<(Transport, SocketAddr), String> {
    let (transport, rest) = if let Some(r) = text.strip_prefix("udp://") {
        (Transport::Udp, r)
    } else if let Some(r) = text.strip_prefix("tcp://") {
        (Transport::Tcp, r)
    } else {
        return Err(format!("`{text}` must start with udp:// or tcp://"));
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
        assert!(parse_endpoint("tls://127.0.0.1:5061").is_err());
        assert!(parse_endpoint("udp://127.0.0.1").is_err());
    }
}
