//! Request sanity checks (RFC 3261 §16.3 and §8.2): what must be readable before the proxy
//! acts on a request. A failure names the problem for the `400` reason phrase.

use crate::sip::uri::{Uri, UriError};
use crate::sip::{HeaderName, Message, via};

use super::Answer;

/// A request the proxy refuses, with the status and phrase to answer.
pub type Refusal = Answer<'static>;

const fn bad(reason: &'static str) -> Refusal {
    Answer::new(400, reason)
}

/// True when a `400` can be built for this message: a response needs Via, From, To,
/// Call-ID and CSeq; without them the message is dropped.
pub fn answerable(msg: &Message<'_>) -> bool {
    msg.is_request()
        && msg.top_via.is_some()
        && msg.first(HeaderName::From).is_some()
        && msg.first(HeaderName::To).is_some()
        && msg.call_id().is_some()
        && msg.first(HeaderName::CSeq).is_some()
}

/// Checks a request; `Ok` means the proxy may route it.
pub fn check_request(msg: &Message<'_>) -> Result<(), Refusal> {
    for name in
        [HeaderName::CallId, HeaderName::From, HeaderName::To, HeaderName::CSeq, HeaderName::MaxForwards]
    {
        if msg.all(name).nth(1).is_some() {
            return Err(bad(match name {
                HeaderName::CallId => "Duplicate Call-ID",
                HeaderName::From => "Duplicate From",
                HeaderName::To => "Duplicate To",
                HeaderName::CSeq => "Duplicate CSeq",
                _ => "Duplicate Max-Forwards",
            }));
        }
    }
    if msg.call_id().is_none() {
        return Err(bad("Missing Call-ID"));
    }
    let Some((_, cseq_method)) = msg.cseq() else {
        return Err(bad("Missing or Malformed CSeq"));
    };
    let method_name = match msg.start {
        crate::sip::StartLine::Request { method_name, .. } => msg.bytes(method_name),
        crate::sip::StartLine::Response { .. } => return Err(bad("Not a Request")),
    };
    if cseq_method != method_name {
        return Err(bad("CSeq Method Mismatch"));
    }
    for name in [HeaderName::From, HeaderName::To] {
        let Some(value) = msg.value(name) else {
            return Err(bad(if name == HeaderName::From { "Missing From" } else { "Missing To" }));
        };
        if crate::sip::name_addr::NameAddr::parse(value).is_none() {
            return Err(bad(if name == HeaderName::From { "Malformed From" } else { "Malformed To" }));
        }
    }
    let mut vias = 0;
    for h in msg.all(HeaderName::Via) {
        if via::parse_all(msg.bytes(h.value)).is_none() {
            return Err(bad("Malformed Via"));
        }
        vias += 1;
    }
    if vias == 0 {
        return Err(bad("Missing Via"));
    }
    if msg.max_forwards().is_err() {
        return Err(bad("Malformed Max-Forwards"));
    }
    let uri = msg.request_uri().unwrap_or_default();
    match Uri::parse(uri) {
        Ok(u) if !u.headers.is_empty() => return Err(bad("Headers In Request-URI")),
        Ok(_) => {}
        Err(UriError::Scheme) => return Err(Answer::new(416, "Unsupported URI Scheme")),
        Err(UriError::Malformed) => return Err(bad("Malformed Request-URI")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::parse;

    fn check(raw: &[u8]) -> Result<(), Refusal> {
        check_request(&parse(raw).unwrap())
    }

    #[test]
    fn refusals() {
        let ok = b"OPTIONS sip:1@h SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:1@h>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nl: 0\r\n\r\n";
        assert_eq!(check(ok), Ok(()));
        let text = std::str::from_utf8(ok).unwrap();
        assert_eq!(
            check(text.replace("1 OPTIONS", "1 INVITE").as_bytes()).unwrap_err().reason,
            "CSeq Method Mismatch"
        );
        assert_eq!(
            check(text.replace("Call-ID: c\r\n", "").as_bytes()).unwrap_err().reason,
            "Missing Call-ID"
        );
        assert_eq!(check(text.replace("sip:1@h SIP", "foo:bar SIP").as_bytes()).unwrap_err().status, 416);
        assert_eq!(
            check(text.replace("l: 0", "Max-Forwards: 300\r\nl: 0").as_bytes()).unwrap_err().reason,
            "Malformed Max-Forwards"
        );
        assert_eq!(
            check(text.replace("UDP a;", "UDP a;;,;,,").as_bytes()).unwrap_err().reason,
            "Malformed Via"
        );
    }
}
