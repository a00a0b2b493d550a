//! The digest username of Authorization / Proxy-Authorization (RFC 3261 §22.4): the name the
//! per-user limits and customer-by-username recognition key on. The proxy never verifies
//! credentials; that is the PBX's job.

use super::lex::trim;
use super::params::split_list;
use super::{HeaderName, Message};

/// The `username` parameter of a `Digest` credentials value, unquoted.
pub fn digest_username(value: &[u8]) -> Option<&[u8]> {
    let value = trim(value);
    let (scheme, rest) = value.split_at(value.iter().position(|b| b.is_ascii_whitespace())?);
    if !scheme.eq_ignore_ascii_case(b"Digest") {
        return None;
    }
    for r in split_list(rest) {
        let item = &rest[r];
        let eq = memchr::memchr(b'=', item)?;
        if trim(&item[..eq]).eq_ignore_ascii_case(b"username") {
            let v = trim(&item[eq + 1..]);
            let v = v.strip_prefix(b"\"").and_then(|v| v.strip_suffix(b"\"")).unwrap_or(v);
            return (!v.is_empty()).then_some(v);
        }
    }
    None
}

/// The digest username of a request: Proxy-Authorization first (credentials for a proxy),
/// then Authorization.
pub fn request_username<'a>(msg: &Message<'a>) -> Option<&'a [u8]> {
    [HeaderName::ProxyAuthorization, HeaderName::Authorization]
        .into_iter()
        .flat_map(|name| msg.all(name))
        .find_map(|h| digest_username(msg.bytes(h.value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert_eq!(
            digest_username(b"Digest username=\"alice\", realm=\"x\", nonce=\"a,b\""),
            Some(&b"alice"[..])
        );
        assert_eq!(digest_username(b"Digest realm=\"x\",\r\n username=bob"), Some(&b"bob"[..]));
        assert_eq!(digest_username(b"Basic YWxhZGRpbjpvcGVuc2VzYW1l"), None);
        assert_eq!(digest_username(b"Digest username=\"\""), None);
        let m = crate::sip::parse(b"INVITE sip:1@h SIP/2.0\r\nProxy-Authorization: Digest username=\"acme\", realm=\"r\"\r\nl: 0\r\n\r\n").unwrap();
        assert_eq!(request_username(&m), Some(&b"acme"[..]));
    }
}
