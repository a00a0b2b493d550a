//! Header names the proxy recognises, including RFC 3261 compact forms.

/// A header name folded to the ones the proxy reads; everything else is [`HeaderName::Other`]
/// and is forwarded untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderName {
    Via,
    CallId,
    From,
    To,
    CSeq,
    MaxForwards,
    ContentLength,
    Route,
    RecordRoute,
    Contact,
    Authorization,
    ProxyAuthorization,
    SessionExpires,
    Other,
}

impl HeaderName {
    /// Classifies a header name as received (case-insensitive, compact forms included).
    pub fn classify(name: &[u8]) -> Self {
        if name.len() == 1 {
            return match name[0].to_ascii_lowercase() {
                b'v' => Self::Via,
                b'i' => Self::CallId,
                b'f' => Self::From,
                b't' => Self::To,
                b'l' => Self::ContentLength,
                b'm' => Self::Contact,
                b'x' => Self::SessionExpires,
                _ => Self::Other,
            };
        }
        // Dispatch on length first: most headers are rejected without a comparison.
        let candidate: (&[u8], Self) = match name.len() {
            2 => (b"to", Self::To),
            3 => (b"via", Self::Via),
            4 => match name[0] | 0x20 {
                b'f' => (b"from", Self::From),
                _ => (b"cseq", Self::CSeq),
            },
            5 => (b"route", Self::Route),
            7 => match name[0] | 0x20 {
                b'c' => match name[1] | 0x20 {
                    b'a' => (b"call-id", Self::CallId),
                    _ => (b"contact", Self::Contact),
                },
                _ => return Self::Other,
            },
            12 => match name[0] | 0x20 {
                b'm' => (b"max-forwards", Self::MaxForwards),
                _ => (b"record-route", Self::RecordRoute),
            },
            13 => (b"authorization", Self::Authorization),
            14 => (b"content-length", Self::ContentLength),
            15 => (b"session-expires", Self::SessionExpires),
            19 => (b"proxy-authorization", Self::ProxyAuthorization),
            _ => return Self::Other,
        };
        if candidate.0.eq_ignore_ascii_case(name) { candidate.1 } else { Self::Other }
    }

    /// Headers that RFC 3261 allows only once per message; a second copy is a 400.
    pub fn is_single(self) -> bool {
        matches!(
            self,
            Self::CallId | Self::From | Self::To | Self::CSeq | Self::MaxForwards | Self::ContentLength
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_and_long_forms_agree() {
        assert_eq!(HeaderName::classify(b"v"), HeaderName::Via);
        assert_eq!(HeaderName::classify(b"VIA"), HeaderName::Via);
        assert_eq!(HeaderName::classify(b"i"), HeaderName::CallId);
        assert_eq!(HeaderName::classify(b"Call-ID"), HeaderName::CallId);
        assert_eq!(HeaderName::classify(b"l"), HeaderName::ContentLength);
        assert_eq!(HeaderName::classify(b"MaX-fOrWaRdS"), HeaderName::MaxForwards);
        assert_eq!(HeaderName::classify(b"X-Custom"), HeaderName::Other);
        assert_eq!(HeaderName::classify(b"k"), HeaderName::Other);
    }
}
