//! The parts of SIP and tel URIs the proxy reads: user (the dialed number), host, port and
//! a few parameters. Everything else in a URI is opaque and forwarded as is.

use std::net::IpAddr;

use super::params;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
}

/// A borrowed view of a URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uri<'a> {
    pub scheme: Scheme,
    /// The user part without password and without user parameters (`;phone-context=...`);
    /// for tel: URIs, the number.
    pub user: Option<&'a [u8]>,
    /// Host as written; IPv6 references keep their brackets.
    pub host: &'a [u8],
    pub port: Option<u16>,
    /// URI parameters, from the first `;` after the host (empty if none).
    pub params: &'a [u8],
    /// URI headers after `?` (not allowed in a Request-URI).
    pub headers: &'a [u8],
}

/// Why a Request-URI cannot be used; [`UriError::Scheme`] maps to `416 Unsupported URI Scheme`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("unsupported URI scheme")]
    Scheme,
    #[error("malformed URI")]
    Malformed,
}

impl<'a> Uri<'a> {
    pub fn parse(raw: &'a [u8]) -> Result<Self, UriError> {
        let colon = memchr::memchr(b':', raw).ok_or(UriError::Malformed)?;
        let scheme = &raw[..colon];
        let rest = &raw[colon + 1..];
        let scheme = if scheme.eq_ignore_ascii_case(b"sip") {
            Scheme::Sip
        } else if scheme.eq_ignore_ascii_case(b"sips") {
            Scheme::Sips
        } else if scheme.eq_ignore_ascii_case(b"tel") {
            Scheme::Tel
        } else {
            return Err(UriError::Scheme);
        };
        if scheme == Scheme::Tel {
            let end = memchr::memchr(b';', rest).unwrap_or(rest.len());
            if end == 0 {
                return Err(UriError::Malformed);
            }
            return Ok(Self {
                scheme,
                user: Some(&rest[..end]),
                host: b"",
                port: None,
                params: &rest[end..],
                headers: b"",
            });
        }
        // '?' may appear in the user part (RFC 3261 user-unreserved); headers start after host.
        let host_from = memchr::memchr(b'@', rest).map_or(0, |at| at + 1);
        let hdrs = memchr::memchr(b'?', &rest[host_from..]).map_or(rest.len(), |q| host_from + q);
        let headers = rest.get(hdrs + 1..).unwrap_or_default();
        let rest = &rest[..hdrs];
        let (user, hostport) = match memchr::memchr(b'@', rest) {
            Some(at) => {
                let userinfo = &rest[..at];
                let user_end =
                    userinfo.iter().position(|b| *b == b':' || *b == b';').unwrap_or(userinfo.len());
                (Some(&userinfo[..user_end]), &rest[at + 1..])
            }
            None => (None, rest),
        };
        let (host, after) = if hostport.first() == Some(&b'[') {
            let close = memchr::memchr(b']', hostport).ok_or(UriError::Malformed)?;
            (&hostport[..=close], &hostport[close + 1..])
        } else {
            let end = hostport.iter().position(|b| *b == b':' || *b == b';').unwrap_or(hostport.len());
            (&hostport[..end], &hostport[end..])
        };
        if host.is_empty() {
            return Err(UriError::Malformed);
        }
        let (port, params) = if let Some(p) = after.strip_prefix(b":") {
            let end = p.iter().position(|b| *b == b';').unwrap_or(p.len());
            let port = std::str::from_utf8(&p[..end])
                .ok()
                .and_then(|s| s.parse::<u16>().ok())
                .ok_or(UriError::Malformed)?;
            (Some(port), &p[end..])
        } else {
            (None, after)
        };
        Ok(Self { scheme, user, host, port, params, headers })
    }

    /// The host as an IP address, if it is an IP literal (brackets stripped).
    pub fn host_ip(&self) -> Option<IpAddr> {
        parse_host_ip(self.host)
    }

    pub fn param(&self, name: &[u8]) -> Option<params::Param<'a>> {
        params::find(self.params, name)
    }
}

/// Parses an IP literal host, with or without IPv6 brackets.
pub fn parse_host_ip(host: &[u8]) -> Option<IpAddr> {
    let host = host.strip_prefix(b"[").and_then(|h| h.strip_suffix(b"]")).unwrap_or(host);
    std::str::from_utf8(host).ok()?.parse().ok()
}

/// The number used for routing and DID limits: the user part with a leading `+` removed.
pub fn dialed_number(user: &[u8]) -> &[u8] {
    user.strip_prefix(b"+").unwrap_or(user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uris() {
        let u = Uri::parse(b"sip:+15551230000:pw@example.com:5070;transport=tcp;lr?X=1").unwrap();
        assert_eq!(u.scheme, Scheme::Sip);
        assert_eq!(u.user, Some(&b"+15551230000"[..]));
        assert_eq!(u.host, b"example.com");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.param(b"transport").unwrap().value, Some(&b"tcp"[..]));
        assert!(u.param(b"lr").is_some());

        let u = Uri::parse(b"sip:[2001:db8::10]:5060").unwrap();
        assert_eq!(u.host, b"[2001:db8::10]");
        assert_eq!(u.host_ip(), Some("2001:db8::10".parse().unwrap()));
        assert_eq!(u.user, None);

        let u =
            Uri::parse(b"sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1@example.com?Route=x")
                .unwrap();
        assert_eq!(u.host, b"example.com");
        assert_eq!(u.headers, b"Route=x");

        let u = Uri::parse(b"sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(u.user, Some(&b"user"[..]));
        assert_eq!(u.host, b"example.com");
    }

    #[test]
    fn tel_and_unknown() {
        let u = Uri::parse(b"tel:+15551230000;phone-context=x").unwrap();
        assert_eq!(u.user, Some(&b"+15551230000"[..]));
        assert_eq!(dialed_number(u.user.unwrap()), b"15551230000");
        assert_eq!(Uri::parse(b"nobodyKnowsThisScheme:opaque"), Err(UriError::Scheme));
        assert_eq!(Uri::parse(b"sip:@"), Err(UriError::Malformed));
        assert_eq!(Uri::parse(b"sip:a@b:99999"), Err(UriError::Malformed));
    }
}
