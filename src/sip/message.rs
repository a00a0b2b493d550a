//! The message scanner: start line, header ranges (with folding and compact names) and body,
//! all as [`Span`]s into the received bytes.
//!
//! The scanner is deliberately tolerant where RFC 3261 is (bare LF line ends, LWS folding,
//! whitespace before the colon, extension methods, any byte in values) and strict where a
//! proxy must be (one Content-Length, a body no shorter than it says, a well-formed start line).

use std::ops::Range;

use thiserror::Error;

use super::header::HeaderName;
use super::via::Via;

/// A byte range into the message buffer. `u32` keeps headers small; messages are bounded
/// far below 4 GiB by the transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Self { start: start as u32, end: end as u32 }
    }

    pub fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }

    /// The bytes this span covers; an out-of-range span yields an empty slice, never a panic.
    pub fn of(self, buf: &[u8]) -> &[u8] {
        buf.get(self.range()).unwrap_or_default()
    }

    pub fn is_empty(self) -> bool {
        self.end <= self.start
    }

    /// The same span moved by `base`: for spans computed on a sub-slice.
    pub fn offset(self, base: usize) -> Self {
        Self::new(self.start as usize + base, self.end as usize + base)
    }
}

/// SIP methods the proxy treats specially; extension methods are [`Method::Other`] and are
/// proxied like any non-INVITE request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Other,
}

impl Method {
    /// Methods are case-sensitive (RFC 3261 §7.1).
    pub fn classify(name: &[u8]) -> Self {
        match name {
            b"INVITE" => Self::Invite,
            b"ACK" => Self::Ack,
            b"BYE" => Self::Bye,
            b"CANCEL" => Self::Cancel,
            b"OPTIONS" => Self::Options,
            b"REGISTER" => Self::Register,
            _ => Self::Other,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartLine {
    Request { method: Method, method_name: Span, uri: Span },
    Response { code: u16, reason: Span },
}

/// One header field as received. `value` runs from the first non-blank byte after the colon
/// to the end of the last continuation line (folded CRLFs stay inside it); `line` covers the
/// whole field including its line terminator, for removal or insertion before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: HeaderName,
    pub name_span: Span,
    pub value: Span,
    pub line: Span,
}

/// A scanned message: views into `buf`, nothing copied.
#[derive(Clone, Debug)]
pub struct Message<'a> {
    pub buf: &'a [u8],
    pub start: StartLine,
    /// The start line without its terminator.
    pub start_line: Span,
    pub headers: Vec<Header>,
    /// Offset just past the blank line that ends the header section.
    pub body_start: usize,
    pub body: Span,
    /// The declared Content-Length, if the header was present.
    pub content_length: Option<usize>,
    /// The line terminator this message uses ("\r\n" or "\n"), reused for inserted headers.
    pub crlf: &'static [u8],
    /// A Content-Length problem found after the headers were read: the message is not
    /// forwardable, but its headers may still be good enough to answer `400`.
    pub body_error: Option<ParseError>,
    /// A malformed Request-Line ([`ParseError::StartLine`] or [`ParseError::Version`]) whose
    /// headers were still readable: the request can be answered 400/505, not forwarded.
    pub start_error: Option<ParseError>,
    /// The topmost via-parm, parsed here once: routing a response, the server transaction
    /// key, the received/rport stamp and the sanity checks all read it. `None` when there is
    /// no Via or its first element does not parse.
    pub top_via: Option<Via<'a>>,
}

/// Why bytes are not a SIP message. The variant decides whether a `400` can be sent (the
/// caller checks whether Via, From, To, Call-ID and CSeq are readable) or the input dropped.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// The header section has no terminating blank line: on a stream, wait for more bytes.
    #[error("incomplete header section")]
    Incomplete,
    #[error("malformed start line")]
    StartLine,
    #[error("unsupported SIP version")]
    Version,
    #[error("malformed header line {0}")]
    HeaderLine(usize),
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("more than one Content-Length")]
    DuplicateContentLength,
    #[error("body shorter than Content-Length")]
    BodyTruncated,
}

impl<'a> Message<'a> {
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<Method> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    pub fn request_uri(&self) -> Option<&'a [u8]> {
        match self.start {
            StartLine::Request { uri, .. } => Some(uri.of(self.buf)),
            StartLine::Response { .. } => None,
        }
    }

    pub fn bytes(&self, span: Span) -> &'a [u8] {
        span.of(self.buf)
    }

    /// Headers of one kind, in message order.
    pub fn all(&self, name: HeaderName) -> impl Iterator<Item = &Header> + '_ {
        self.headers.iter().filter(move |h| h.name == name)
    }

    pub fn first(&self, name: HeaderName) -> Option<&Header> {
        self.headers.iter().find(|h| h.name == name)
    }

    /// The trimmed value of the first header of a kind.
    pub fn value(&self, name: HeaderName) -> Option<&'a [u8]> {
        self.first(name).map(|h| trim(h.value.of(self.buf)))
    }

    pub fn call_id(&self) -> Option<&'a [u8]> {
        self.value(HeaderName::CallId).filter(|v| !v.is_empty())
    }

    /// CSeq number and method. `None` if absent or malformed.
    pub fn cseq(&self) -> Option<(u32, &'a [u8])> {
        let value = self.value(HeaderName::CSeq)?;
        let split = value.iter().position(|b| is_lws(*b))?;
        let number = parse_u32(&value[..split])?;
        let method = trim(&value[split..]);
        if method.is_empty() || method.iter().any(|b| is_lws(*b)) {
            return None;
        }
        Some((number, method))
    }

    /// Max-Forwards: `Ok(None)` when absent, `Err` when present but not 0..=255.
    pub fn max_forwards(&self) -> Result<Option<u8>, BadMaxForwards> {
        match self.value(HeaderName::MaxForwards) {
            None => Ok(None),
            Some(v) => match parse_u32(v) {
                Some(n) if n <= 255 => Ok(Some(n as u8)),
                _ => Err(BadMaxForwards),
            },
        }
    }

    /// The `tag` parameter of From or To.
    pub fn tag(&self, name: HeaderName) -> Option<&'a [u8]> {
        let value = self.value(name)?;
        let parsed = super::name_addr::NameAddr::parse(value)?;
        super::params::find(parsed.params_of(value), b"tag").and_then(|p| p.value)
    }
}

/// Max-Forwards is present but not a number from 0 to 255: answer 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("malformed Max-Forwards")]
pub struct BadMaxForwards;

pub(crate) use super::lex::is_lws;
pub use super::lex::{parse_u32, trim};

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// The next line of `buf` from `pos`: (content end, next line start). Accepts CRLF or bare LF.
fn next_line(buf: &[u8], pos: usize) -> Option<(usize, usize)> {
    let nl = memchr::memchr(b'\n', buf.get(pos..)?)? + pos;
    let end = if nl > pos && buf[nl - 1] == b'\r' { nl - 1 } else { nl };
    Some((end, nl + 1))
}

/// Scans one SIP message at the start of `buf` (leading CR/LF keep-alive bytes are skipped).
/// On a datagram, bytes past Content-Length are ignored (RFC 3261 §18.3); on a stream, the
/// framer hands over exactly one message.
pub fn parse(buf: &[u8]) -> Result<Message<'_>, ParseError> {
    let mut pos = buf.iter().position(|b| *b != b'\r' && *b != b'\n').ok_or(ParseError::Incomplete)?;
    let (line_end, mut next) = next_line(buf, pos).ok_or(ParseError::Incomplete)?;
    let crlf: &'static [u8] = if line_end < next - 1 { b"\r\n" } else { b"\n" };
    let start_line = Span::new(pos, line_end);
    let (start, start_error) = match parse_start_line(buf, pos, line_end) {
        Ok(start) => (start, None),
        Err(e) => (lenient_request_line(buf, pos, line_end).ok_or(e.clone())?, Some(e)),
    };
    pos = next;

    let mut headers: Vec<Header> = Vec::with_capacity(20);
    let mut content_length = None;
    let body_start;
    let mut line_no = 1;
    loop {
        let (end, after) = next_line(buf, pos).ok_or(ParseError::Incomplete)?;
        line_no += 1;
        if end == pos {
            body_start = after;
            break;
        }
        let first = buf[pos];
        if first == b' ' || first == b'\t' {
            // Folded continuation of the previous header (RFC 3261 §7.3.1).
            let last = headers.last_mut().ok_or(ParseError::HeaderLine(line_no))?;
            if !trim(&buf[pos..end]).is_empty() {
                if last.value.is_empty() {
                    let skip = buf[pos..end].iter().position(|b| !is_lws(*b)).unwrap_or(0);
                    last.value.start = (pos + skip) as u32;
                }
                last.value.end = end as u32;
            }
            last.line.end = after as u32;
            next = after;
            pos = next;
            continue;
        }
        let colon = memchr::memchr(b':', &buf[pos..end]).ok_or(ParseError::HeaderLine(line_no))? + pos;
        let name_end = buf[pos..colon].iter().rposition(|b| !is_lws(*b)).map_or(pos, |i| pos + i + 1);
        let name = &buf[pos..name_end];
        if name.is_empty() || !name.iter().all(|b| is_token(*b)) {
            return Err(ParseError::HeaderLine(line_no));
        }
        let value_start = buf[colon + 1..end].iter().position(|b| !is_lws(*b)).map_or(end, |i| colon + 1 + i);
        let value_end = buf[value_start..end]
            .iter()
            .rposition(|b| !is_lws(*b))
            .map_or(value_start, |i| value_start + i + 1);
        headers.push(Header {
            name: HeaderName::classify(name),
            name_span: Span::new(pos, name_end),
            value: Span::new(value_start, value_end),
            line: Span::new(pos, after),
        });
        pos = after;
    }

    let mut body_error = None;
    for h in headers.iter().filter(|h| h.name == HeaderName::ContentLength) {
        if content_length.is_some() {
            body_error = Some(ParseError::DuplicateContentLength);
            break;
        }
        match parse_u32(trim(h.value.of(buf))) {
            Some(n) => content_length = Some(n as usize),
            None => {
                body_error = Some(ParseError::ContentLength);
                break;
            }
        }
    }
    let body_end = match (content_length, body_error.is_some()) {
        (Some(n), false) => match body_start.checked_add(n).filter(|e| *e <= buf.len()) {
            Some(end) => end,
            None => {
                body_error = Some(ParseError::BodyTruncated);
                buf.len()
            }
        },
        _ => buf.len(),
    };
    let top_via = headers
        .iter()
        .find(|h| h.name == HeaderName::Via)
        .and_then(|h| super::via::parse_first(h.value.of(buf)));
    Ok(Message {
        top_via,
        buf,
        start,
        start_line,
        headers,
        body_start,
        body: Span::new(body_start, body_end),
        content_length,
        crlf,
        body_error,
        start_error,
    })
}

/// A best-effort view of a broken Request-Line (`METHOD SP anything`), so the headers can
/// still be read and the request answered.
fn lenient_request_line(buf: &[u8], start: usize, end: usize) -> Option<StartLine> {
    let line = &buf[start..end];
    let sp = memchr::memchr(b' ', line)?;
    let method = &line[..sp];
    if method.is_empty() || !method.iter().all(|b| is_token(*b)) || method.starts_with(b"SIP/") {
        return None;
    }
    Some(StartLine::Request {
        method: Method::classify(method),
        method_name: Span::new(start, start + sp),
        uri: Span::new(start + sp + 1, start + sp + 1),
    })
}

fn parse_start_line(buf: &[u8], start: usize, end: usize) -> Result<StartLine, ParseError> {
    let line = &buf[start..end];
    if line.len() >= 8 && line[..8].eq_ignore_ascii_case(b"SIP/2.0 ") {
        // Status-Line: SIP-Version SP Status-Code SP Reason-Phrase (reason may be empty).
        let rest = &line[8..];
        if rest.len() < 3 || !rest[..3].iter().all(u8::is_ascii_digit) {
            return Err(ParseError::StartLine);
        }
        if rest.len() > 3 && rest[3] != b' ' {
            return Err(ParseError::StartLine);
        }
        let code = parse_u32(&rest[..3]).ok_or(ParseError::StartLine)? as u16;
        if !(100..=699).contains(&code) {
            return Err(ParseError::StartLine);
        }
        let reason_start = (start + 12).min(end);
        return Ok(StartLine::Response { code, reason: Span::new(reason_start, end) });
    }
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        return Err(ParseError::Version);
    }
    // Request-Line: Method SP Request-URI SP SIP-Version, single spaces, no LWS inside the URI.
    let sp1 = memchr::memchr(b' ', line).ok_or(ParseError::StartLine)?;
    let sp2 = memchr::memrchr(b' ', line).ok_or(ParseError::StartLine)?;
    if sp2 <= sp1 + 1 {
        return Err(ParseError::StartLine);
    }
    let method = &line[..sp1];
    let uri = &line[sp1 + 1..sp2];
    let version = &line[sp2 + 1..];
    if method.is_empty() || !method.iter().all(|b| is_token(*b)) {
        return Err(ParseError::StartLine);
    }
    if uri.iter().any(|b| is_lws(*b) || *b == b'<' || *b == b'>') || !uri.contains(&b':') {
        return Err(ParseError::StartLine);
    }
    if !version.eq_ignore_ascii_case(b"SIP/2.0") {
        return Err(if version.len() >= 4 && version[..4].eq_ignore_ascii_case(b"SIP/") {
            ParseError::Version
        } else {
            ParseError::StartLine
        });
    }
    Ok(StartLine::Request {
        method: Method::classify(method),
        method_name: Span::new(start, start + sp1),
        uri: Span::new(start + sp1 + 1, start + sp2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:+15551230000@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:+15551230000@example.com>\r\n\
From: \"Alice\" <sip:alice@example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710\r\n\
CSeq: 314159 INVITE\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\r\n";

    #[test]
    fn scans_request() {
        let m = parse(INVITE).unwrap();
        assert_eq!(m.method(), Some(Method::Invite));
        assert_eq!(m.request_uri(), Some(&b"sip:+15551230000@example.com"[..]));
        assert_eq!(m.call_id(), Some(&b"a84b4c76e66710"[..]));
        assert_eq!(m.cseq(), Some((314159, &b"INVITE"[..])));
        assert_eq!(m.max_forwards(), Ok(Some(70)));
        assert_eq!(m.tag(HeaderName::From), Some(&b"1928301774"[..]));
        assert_eq!(m.tag(HeaderName::To), None);
        assert_eq!(m.bytes(m.body), b"v=0\r\n".get(..4).unwrap());
        assert_eq!(m.crlf, b"\r\n");
    }

    #[test]
    fn folded_and_compact_headers() {
        let raw = b"OPTIONS sip:a@b SIP/2.0\nv: SIP/2.0/UDP h\n ;branch=z9hG4bKx\ni: abc\ncseq: 0009\n  OPTIONS\nl: 0\n\n";
        let m = parse(raw).unwrap();
        assert_eq!(m.crlf, b"\n");
        assert_eq!(m.call_id(), Some(&b"abc"[..]));
        assert_eq!(m.cseq(), Some((9, &b"OPTIONS"[..])));
        let via = m.first(HeaderName::Via).unwrap();
        assert_eq!(m.bytes(via.value), b"SIP/2.0/UDP h\n ;branch=z9hG4bKx");
    }

    #[test]
    fn response_without_reason() {
        let m = parse(b"SIP/2.0 100 \r\nCall-ID: x\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(m.status(), Some(100));
        let m = parse(b"SIP/2.0 180\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(m.status(), Some(180));
    }

    #[test]
    fn rejects_bad_framing() {
        let body_error = |raw: &[u8]| parse(raw).unwrap().body_error;
        assert_eq!(
            body_error(b"INVITE sip:a@b SIP/2.0\r\nl: 10\r\n\r\nabc"),
            Some(ParseError::BodyTruncated)
        );
        assert_eq!(body_error(b"INVITE sip:a@b SIP/2.0\r\nl: -1\r\n\r\n"), Some(ParseError::ContentLength));
        assert_eq!(
            body_error(b"INVITE sip:a@b SIP/2.0\r\nl: 0\r\nContent-Length: 0\r\n\r\n"),
            Some(ParseError::DuplicateContentLength)
        );
        assert_eq!(parse(b"INVITE sip:a@b SIP/2.0\r\nl: 0\r\n").unwrap_err(), ParseError::Incomplete);
        assert_eq!(
            parse(b"INVITE  sip:a@b SIP/2.0\r\n\r\n").unwrap().start_error,
            Some(ParseError::StartLine)
        );
        assert_eq!(parse(b"INVITE sip:a@b SIP/3.0\r\n\r\n").unwrap().start_error, Some(ParseError::Version));
        assert_eq!(parse(b"SIP/3.0 200 OK\r\n\r\n").unwrap_err(), ParseError::Version);
        assert_eq!(parse(b"SIP/2.0 4294967301 x\r\n\r\n").unwrap_err(), ParseError::StartLine);
        assert_eq!(parse(b"\x00\x01garbage\r\n\r\n").unwrap_err(), ParseError::StartLine);
    }

    #[test]
    fn span_out_of_range_is_empty() {
        assert_eq!(Span::new(10, 20).of(b"abc"), b"");
    }
}
