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
        const NAMES: [(&[u8], HeaderName); 12] = [
            (b"via", HeaderName::Via),
            (b"call-id", HeaderName::CallId),
            (b"from", HeaderName::From),
            (b"to", HeaderName::To),
            (b"cseq", HeaderName::CSeq),
            (b"max-forwards", HeaderName::MaxForwards),
            (b"content-length", HeaderName::ContentLength),
            (b"route", HeaderName::Route),
            (b"record-route", HeaderName::RecordRoute),
            (b"contact", HeaderName::Contact),
            (b"authorization", HeaderName::Authorization),
            (b"proxy-authorization", HeaderName::ProxyAuthorization),
        ];
        for (candidate, kind) in NAMES {
            if candidate.eq_ignore_ascii_case(name) {
                return kind;
            }
        }
        if name.eq_ignore_ascii_case(b"session-expires") {
            return Self::SessionExpires;
        }
        Self::Other
    }

    /// Headers that RFC 3261 allows only once per message; a second copy is a 400.
    pub fn is_single(self) -> bool {
        matches!(
            self,
            Self::CallId
                | Self::From
                | Self::To
                | Self::CSeq
                | Self::MaxForwards
                | Self::ContentLength
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
        assert_eq!(
            HeaderName::classify(b"MaX-fOrWaRdS"),
            HeaderName::MaxForwards
        );
        assert_eq!(HeaderName::classify(b"X-Custom"), HeaderName::Other);
        assert_eq!(HeaderName::classify(b"k"), HeaderName::Other);
    }
}
