//! The lexical helpers every SIP view shares (linear white space, trimming, numbers), in a
//! leaf module: the scanner and the typed views use them without needing each other.

pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Trims SIP linear white space (including folded line breaks) from both ends.
pub fn trim(mut v: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = v {
        if is_lws(*first) {
            v = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = v {
        if is_lws(*last) {
            v = rest;
        } else {
            break;
        }
    }
    v
}

/// Decimal digits only, no sign, no overflow.
pub fn parse_u32(v: &[u8]) -> Option<u32> {
    if v.is_empty() || v.len() > 10 {
        return None;
    }
    let mut n: u64 = 0;
    for b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    u32::try_from(n).ok()
}
