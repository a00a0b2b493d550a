//! Finding message boundaries in a byte stream (SIP over TCP, RFC 3261 §18.3): the header
//! section ends at the first blank line and Content-Length, mandatory on streams, says how
//! many body bytes follow.

use thiserror::Error;

use super::header::HeaderName;
use super::lex::{parse_u32, trim};

/// The result of looking at the front of a stream buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// Need more bytes before a message is complete.
    Incomplete,
    /// `n` bytes of CR/LF keep-alive (RFC 5626 §3.5.1) to consume; a double CRLF wants a
    /// single CRLF pong.
    KeepAlive { consumed: usize, pong: bool },
    /// A whole message occupies the first `len` bytes.
    Message { len: usize },
}

/// The stream cannot be resynchronised: answer if possible, then close the connection.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("message exceeds {0} bytes")]
    TooLarge(usize),
    #[error("missing Content-Length on a stream transport")]
    MissingContentLength,
    #[error("invalid Content-Length")]
    BadContentLength,
}

/// Looks for one complete message at the start of `buf`, never reading past `max` bytes.
pub fn frame(buf: &[u8], max: usize) -> Result<Frame, FrameError> {
    let lead = buf.iter().take_while(|b| **b == b'\r' || **b == b'\n').count();
    if lead > 0 {
        return Ok(Frame::KeepAlive { consumed: lead, pong: buf[..lead].starts_with(b"\r\n\r\n") });
    }
    let window = &buf[..buf.len().min(max)];
    let Some(header_end) = find_header_end(window) else {
        return if buf.len() >= max { Err(FrameError::TooLarge(max)) } else { Ok(Frame::Incomplete) };
    };
    let mut content_length = None;
    let mut pos = 0;
    while pos < header_end {
        let nl = memchr::memchr(b'\n', &window[pos..header_end]).map_or(header_end, |i| pos + i);
        let line = &window[pos..nl];
        if let Some(colon) = memchr::memchr(b':', line) {
            if !matches!(line.first(), Some(b' ' | b'\t'))
                && HeaderName::classify(trim(&line[..colon])) == HeaderName::ContentLength
            {
                if content_length.is_some() {
                    return Err(FrameError::BadContentLength);
                }
                let n = parse_u32(trim(&line[colon + 1..])).ok_or(FrameError::BadContentLength)?;
                content_length = Some(n as usize);
            }
        }
        pos = nl + 1;
    }
    let body = content_length.ok_or(FrameError::MissingContentLength)?;
    let len = header_end.checked_add(body).ok_or(FrameError::TooLarge(max))?;
    if len > max {
        return Err(FrameError::TooLarge(max));
    }
    if buf.len() < len {
        return Ok(Frame::Incomplete);
    }
    Ok(Frame::Message { len })
}

/// Offset just past the blank line ending the header section (CRLFCRLF or bare LFLF).
fn find_header_end(buf: &[u8]) -> Option<usize> {
    let mut pos = 0;
    while let Some(i) = memchr::memchr(b'\n', &buf[pos..]) {
        let nl = pos + i;
        let rest = &buf[nl + 1..];
        if rest.starts_with(b"\r\n") {
            return Some(nl + 3);
        }
        if rest.starts_with(b"\n") {
            return Some(nl + 2);
        }
        pos = nl + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_pipelined_messages() {
        let one = b"OPTIONS sip:a@b SIP/2.0\r\nl: 3\r\n\r\nabc";
        let mut two = one.to_vec();
        two.extend_from_slice(b"BYE sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(frame(&two, 65536), Ok(Frame::Message { len: one.len() }));
        assert_eq!(frame(&two[one.len()..], 65536), Ok(Frame::Message { len: two.len() - one.len() }));
        assert_eq!(frame(&one[..20], 65536), Ok(Frame::Incomplete));
        assert_eq!(frame(&one[..one.len() - 1], 65536), Ok(Frame::Incomplete));
    }

    #[test]
    fn keepalive_and_errors() {
        assert_eq!(frame(b"\r\n\r\n", 100), Ok(Frame::KeepAlive { consumed: 4, pong: true }));
        assert_eq!(frame(b"\r\n", 100), Ok(Frame::KeepAlive { consumed: 2, pong: false }));
        assert_eq!(frame(b"BYE sip:a@b SIP/2.0\r\n\r\n", 100), Err(FrameError::MissingContentLength));
        assert_eq!(frame(b"BYE sip:a@b SIP/2.0\r\nl: -5\r\n\r\n", 100), Err(FrameError::BadContentLength));
        assert_eq!(frame(b"BYE sip:a@b SIP/2.0\r\nl: 500\r\n\r\n", 100), Err(FrameError::TooLarge(100)));
        assert_eq!(frame(&[b'A'; 200], 100), Err(FrameError::TooLarge(100)));
    }
}
