//! Who the proxy is on the wire: its Via sent-by and Record-Route URI per transport, and the
//! test "does this URI / Via point at me" used for Route popping, loop detection and
//! OPTIONS pings.

use crate::config::{Config, host_text};
use crate::peer::Transport;
use crate::sip::uri::Uri;

#[derive(Debug, Clone)]
pub struct Identity {
    udp_sent_by: String,
    tcp_sent_by: String,
    tls_sent_by: String,
    udp_record_route: String,
    tcp_record_route: String,
    tls_record_route: String,
    hosts: Vec<String>,
    ports: Vec<u16>,
}

impl Identity {
    pub fn new(config: &Config) -> Self {
        let mut hosts = vec![config.advertise.host.to_ascii_lowercase()];
        for l in &config.listen {
            if !l.addr.ip().is_unspecified() {
                hosts.push(host_text(l.addr.ip()).to_ascii_lowercase());
            }
        }
        hosts.dedup();
        let mut ports: Vec<u16> = config.listen.iter().map(|l| l.addr.port()).collect();
        ports.extend(config.advertise.port);
        ports.sort_unstable();
        ports.dedup();
        let (udp_sent_by, tcp_sent_by) = (config.sent_by(Transport::Udp), config.sent_by(Transport::Tcp));
        let tls_sent_by = config.sent_by(Transport::Tls);
        Self {
            udp_record_route: format!("<sip:{udp_sent_by};lr>"),
            tcp_record_route: format!("<sip:{tcp_sent_by};transport=tcp;lr>"),
            // RFC 5630 §3.3: a hop reached over TLS is a sips: URI (not transport=tls).
            tls_record_route: format!("<sips:{tls_sent_by};lr>"),
            udp_sent_by,
            tcp_sent_by,
            tls_sent_by,
            hosts,
            ports,
        }
    }

    /// host:port for this proxy's Via on a leg of `transport`.
    pub fn sent_by(&self, transport: Transport) -> &str {
        match transport {
            Transport::Udp => &self.udp_sent_by,
            Transport::Tcp => &self.tcp_sent_by,
            Transport::Tls => &self.tls_sent_by,
        }
    }

    /// The Record-Route header value facing a peer reached over `transport`.
    pub fn record_route(&self, transport: Transport) -> &str {
        match transport {
            Transport::Udp => &self.udp_record_route,
            Transport::Tcp => &self.tcp_record_route,
            Transport::Tls => &self.tls_record_route,
        }
    }

    pub fn is_me(&self, host: &[u8], port: Option<u16>) -> bool {
        let port = port.unwrap_or(5060);
        self.ports.contains(&port) && self.hosts.iter().any(|h| h.as_bytes().eq_ignore_ascii_case(host))
    }

    pub fn is_my_uri(&self, uri: &Uri<'_>) -> bool {
        uri.user.is_none() && self.is_me(uri.host, uri.port)
    }

    /// True when a Via's sent-by (host, port) is this proxy's.
    pub fn is_my_via(&self, host: &[u8], port: Option<u16>) -> bool {
        self.is_me(host, port)
    }
}
