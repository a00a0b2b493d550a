//! `name-addr` / `addr-spec` values (From, To, Route, Record-Route, Contact): where the URI
//! ends and the header parameters begin.

use std::ops::Range;

use super::params::Quotes;

/// Ranges within the parsed value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameAddr {
    pub uri: Range<usize>,
    /// Header parameters, starting at the first `;` after the URI (empty if none).
    pub params: Range<usize>,
}

impl NameAddr {
    /// Parses `[display-name] <uri> *(;param)` or `uri *(;param)`. Returns `None` for an
    /// unbalanced quote or angle bracket.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let mut quotes = Quotes::default();
        for (i, &b) in value.iter().enumerate() {
            if quotes.outside(b) && b == b'<' {
                let close = memchr::memchr(b'>', &value[i..])? + i;
                return Some(Self { uri: i + 1..close, params: close + 1..value.len() });
            }
        }
        if quotes.is_open() {
            return None;
        }
        // addr-spec form: the URI cannot carry parameters; the first ';' starts header params.
        let semi = memchr::memchr(b';', value).unwrap_or(value.len());
        let start = value.iter().position(|b| !super::lex::is_lws(*b)).unwrap_or(0);
        let end = value[..semi].iter().rposition(|b| !super::lex::is_lws(*b)).map_or(start, |p| p + 1);
        Some(Self { uri: start..end, params: semi..value.len() })
    }

    pub fn uri_of<'a>(&self, value: &'a [u8]) -> &'a [u8] {
        value.get(self.uri.clone()).unwrap_or_default()
    }

    pub fn params_of<'a>(&self, value: &'a [u8]) -> &'a [u8] {
        value.get(self.params.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let v = b"\"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8";
        let na = NameAddr::parse(v).unwrap();
        assert_eq!(na.uri_of(v), b"sip:jdrosen@example.com");
        let tag = crate::sip::params::find(na.params_of(v), b"tag").unwrap();
        assert_eq!(tag.value, Some(&b"98asjd8"[..]));

        let v = b"sip:caller@example.net;tag=8814";
        let na = NameAddr::parse(v).unwrap();
        assert_eq!(na.uri_of(v), b"sip:caller@example.net");
        assert_eq!(na.params_of(v), b";tag=8814");

        assert!(NameAddr::parse(b"\"Mr. J. User <sip:j.user@example.com>").is_none());
    }
}
