//! Generic `;name=value` parameters and comma-separated lists, quote-aware and LWS-tolerant
//! (RFC 3261 allows whitespace around `;` and `=`, as RFC 4475's wsinv shows).

use std::ops::Range;

use super::lex::{is_lws, trim};

/// One parameter. `range` is the whole `;name[=value]` piece within the scanned input, leading
/// `;` included, so an editor can replace or remove it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param<'a> {
    pub name: &'a [u8],
    pub value: Option<&'a [u8]>,
    pub range: Range<usize>,
    pub value_range: Option<Range<usize>>,
}

/// Tracks quoted-strings (with backslash escapes) while scanning a header value byte by byte.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Quotes {
    inside: bool,
    escaped: bool,
}

impl Quotes {
    /// Feeds one byte; true when it is outside any quoted string and not a quote mark.
    pub(crate) fn outside(&mut self, b: u8) -> bool {
        if self.inside {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.inside = false;
            }
            return false;
        }
        if b == b'"' {
            self.inside = true;
            return false;
        }
        true
    }

    /// True when the scanned text ended inside a quoted string.
    pub(crate) fn is_open(self) -> bool {
        self.inside
    }
}

/// Positions of `sep` in `input` that are outside double quotes (and, when `angles`, outside
/// `<...>`).
fn separators(input: &[u8], sep: u8, angles: bool) -> impl Iterator<Item = usize> + '_ {
    let mut quotes = Quotes::default();
    let mut depth = 0u32;
    input.iter().enumerate().filter_map(move |(i, &b)| {
        if !quotes.outside(b) {
            return None;
        }
        match b {
            b'<' if angles => depth += 1,
            b'>' if angles => depth = depth.saturating_sub(1),
            _ if b == sep && depth == 0 => return Some(i),
            _ => {}
        }
        None
    })
}

/// Iterates the parameters of `input`, which starts at (or before) the first `;`. Bytes before
/// the first `;` are ignored.
pub fn iter(input: &[u8]) -> impl Iterator<Item = Param<'_>> + '_ {
    let mut cuts = separators(input, b';', false).chain(std::iter::once(input.len())).peekable();
    std::iter::from_fn(move || {
        let start = cuts.next()?;
        let end = *cuts.peek()?;
        let piece = &input[start + 1..end];
        Some(match memchr::memchr(b'=', piece) {
            Some(eq) => {
                let name = trim(&piece[..eq]);
                let raw = &piece[eq + 1..];
                let lead = raw.iter().position(|b| !is_lws(*b)).unwrap_or(raw.len());
                let value = trim(raw);
                let vstart = start + 1 + eq + 1 + lead;
                Param {
                    name,
                    value: Some(value),
                    range: start..end,
                    value_range: Some(vstart..vstart + value.len()),
                }
            }
            None => Param { name: trim(piece), value: None, range: start..end, value_range: None },
        })
    })
}

/// The first parameter named `name` (case-insensitive).
pub fn find<'a>(input: &'a [u8], name: &[u8]) -> Option<Param<'a>> {
    iter(input).find(|p| p.name.eq_ignore_ascii_case(name))
}

/// The first element of a comma-separated header value, trimmed (no allocation).
pub fn first_element(input: &[u8]) -> Option<Range<usize>> {
    let cut = separators(input, b',', true).next().unwrap_or(input.len());
    let piece = &input[..cut];
    let lead = piece.iter().position(|b| !is_lws(*b))?;
    let t = trim(piece);
    Some(lead..lead + t.len())
}

/// Splits a comma-separated header value (Via, Route, Contact...) into element ranges,
/// each trimmed of surrounding whitespace. Commas inside quotes or `<...>` do not split.
pub fn split_list(input: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::with_capacity(2);
    let mut start = 0;
    for cut in separators(input, b',', true).chain(std::iter::once(input.len())) {
        let piece = &input[start..cut];
        let lead = piece.iter().position(|b| !is_lws(*b)).unwrap_or(piece.len());
        let t = trim(piece);
        if !t.is_empty() {
            out.push(start + lead..start + lead + t.len());
        }
        start = cut + 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_with_whitespace_and_quotes() {
        let input = b" ;   tag    = 1918181833n ; lr; x=\"a;b\"";
        let ps: Vec<_> = iter(input).collect();
        assert_eq!(ps.len(), 3);
        assert_eq!(ps[0].name, b"tag");
        assert_eq!(ps[0].value, Some(&b"1918181833n"[..]));
        assert_eq!(&input[ps[0].value_range.clone().unwrap()], b"1918181833n");
        assert_eq!(ps[1].name, b"lr");
        assert_eq!(ps[1].value, None);
        assert_eq!(ps[2].value, Some(&b"\"a;b\""[..]));
        assert_eq!(find(input, b"TAG").unwrap().value, Some(&b"1918181833n"[..]));
    }

    #[test]
    fn list_split_respects_quotes_and_angles() {
        let v = b"\"a, b\" <sip:x@y;a=1,2>, <sip:z> ,sip:w";
        let parts: Vec<&[u8]> = split_list(v).into_iter().map(|r| &v[r]).collect();
        assert_eq!(parts, vec![&b"\"a, b\" <sip:x@y;a=1,2>"[..], b"<sip:z>", b"sip:w"]);
    }
}
