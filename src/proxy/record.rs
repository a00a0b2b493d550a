//! Call records: one `call.ended` event per call — what a support engineer needs to answer
//! "why was my call refused / how long did it last" from a customer ticket. A record is
//! made when a call is admitted (kept in its dialog) and written once, when the call ends;
//! a call refused by a limit gets one at once. Besides the log, records go to the optional
//! `[records]` file (see [`crate::records`]).
//!
//! The core reads no wall clock: times are kept as instants of the core's clock and turned
//! into Unix milliseconds when the record is written, against the wall clock of that
//! moment.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use tokio::time::Instant;

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// Answered (2xx), then hung up or timed out.
    Answered,
    /// 486 Busy Here / 600 Busy Everywhere.
    Busy,
    /// No answer: 408, 480, or 487 without a CANCEL from the caller.
    NoAnswer,
    /// The caller cancelled it.
    Cancelled,
    /// Turned away by a limit (see `limit`).
    Refused,
    /// Any other final answer (4xx-6xx), or no gateway reachable.
    Failed,
}

impl Disposition {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Busy => "busy",
            Self::NoAnswer => "no_answer",
            Self::Cancelled => "cancelled",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }

    /// The disposition of an unanswered call from its final status.
    pub fn of_failure(status: u16, cancelled: bool) -> Self {
        match status {
            _ if cancelled => Self::Cancelled,
            486 | 600 => Self::Busy,
            408 | 480 | 487 => Self::NoAnswer,
            _ => Self::Failed,
        }
    }
}

/// Who ended an answered call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HungUp {
    Caller,
    Callee,
    /// `max_call_seconds` or an unrefreshed session timer.
    Timeout,
    /// sluice, for a 2xx never acknowledged (it sent BYE to both sides).
    Proxy,
}

/// What is known of a call while it is up.
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub call_id: Bytes,
    pub customer: Option<Arc<str>>,
    pub source: std::net::IpAddr,
    pub user: Bytes,
    pub number: Bytes,
    pub carrier: Option<Arc<str>>,
    pub gateway: Option<Arc<str>>,
    pub arrived: Instant,
    pub admitted: Option<Instant>,
    pub answered: Option<Instant>,
}

/// One finished call, as written.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Ended {
    pub call_id: String,
    pub customer: String,
    pub source: String,
    pub user: String,
    pub number: String,
    pub carrier: String,
    pub gateway: String,
    /// Unix milliseconds; 0 when it did not happen.
    pub arrived_ms: u64,
    pub admitted_ms: u64,
    pub answered_ms: u64,
    pub ended_ms: u64,
    /// From answer to end (0 when unanswered).
    pub duration_ms: u64,
    pub disposition: &'static str,
    /// The final status the caller got (200 for an answered call; 0 if none).
    pub status: u16,
    /// For a refused call: `scope:key:kind` of the limit.
    pub limit: String,
    /// For an answered call: caller, callee, timeout or proxy.
    pub hung_up: &'static str,
}

impl Ended {
    /// The CSV columns, in the order of [`Ended::csv_row`].
    pub const CSV_HEADER: &'static str = "call_id,customer,source,user,number,carrier,gateway,arrived_ms,admitted_ms,answered_ms,ended_ms,duration_ms,disposition,status,limit,hung_up";

    /// One CSV line (RFC 4180 quoting for fields a caller controls).
    pub fn csv_row(&self) -> String {
        let q = |s: &str| {
            if s.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            q(&self.call_id),
            q(&self.customer),
            q(&self.source),
            q(&self.user),
            q(&self.number),
            q(&self.carrier),
            q(&self.gateway),
            self.arrived_ms,
            self.admitted_ms,
            self.answered_ms,
            self.ended_ms,
            self.duration_ms,
            self.disposition,
            self.status,
            q(&self.limit),
            self.hung_up
        )
    }
}

/// How the end of a call came about.
pub struct Outcome<'a> {
    pub disposition: Disposition,
    pub status: u16,
    pub limit: &'a str,
    pub hung_up: Option<HungUp>,
}

impl CallRecord {
    /// The written form at `now` (the core's clock), with `wall` the wall clock now.
    pub fn finish(&self, now: Instant, wall: SystemTime, outcome: &Outcome<'_>) -> Ended {
        let unix_now = wall.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let ms = |t: Option<Instant>| {
            t.map_or(0, |t| {
                let ago = now.saturating_duration_since(t);
                u64::try_from(unix_now.saturating_sub(ago).as_millis()).unwrap_or(u64::MAX)
            })
        };
        let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
        let name = |n: &Option<Arc<str>>| n.as_deref().unwrap_or_default().to_string();
        Ended {
            call_id: text(&self.call_id),
            customer: name(&self.customer),
            source: self.source.to_string(),
            user: text(&self.user),
            number: text(&self.number),
            carrier: name(&self.carrier),
            gateway: name(&self.gateway),
            arrived_ms: ms(Some(self.arrived)),
            admitted_ms: ms(self.admitted),
            answered_ms: ms(self.answered),
            ended_ms: ms(Some(now)),
            // The difference of the two times as written, so the columns always agree.
            duration_ms: self.answered.map_or(0, |_| ms(Some(now)).saturating_sub(ms(self.answered))),
            disposition: outcome.disposition.as_str(),
            status: outcome.status,
            limit: outcome.limit.to_string(),
            hung_up: match outcome.hung_up {
                Some(HungUp::Caller) => "caller",
                Some(HungUp::Callee) => "callee",
                Some(HungUp::Timeout) => "timeout",
                Some(HungUp::Proxy) => "proxy",
                None => "",
            },
        }
    }
}

/// Writes a finished call: the `call.ended` event, and the records file if there is one.
pub fn write(ended: &Ended, sink: Option<&crate::records::Records>) {
    tracing::info!(
        event = "call.ended",
        call_id = %ended.call_id,
        customer = %ended.customer,
        source = %ended.source,
        user = %ended.user,
        number = %ended.number,
        carrier = %ended.carrier,
        gateway = %ended.gateway,
        arrived_ms = ended.arrived_ms,
        admitted_ms = ended.admitted_ms,
        answered_ms = ended.answered_ms,
        ended_ms = ended.ended_ms,
        duration_ms = ended.duration_ms,
        disposition = ended.disposition,
        status = ended.status,
        limit = %ended.limit,
        hung_up = ended.hung_up,
        "call ended"
    );
    if let Some(sink) = sink {
        sink.push(ended);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_and_csv_quoting() {
        assert_eq!(Disposition::of_failure(486, false), Disposition::Busy);
        assert_eq!(Disposition::of_failure(487, true), Disposition::Cancelled);
        assert_eq!(Disposition::of_failure(487, false), Disposition::NoAnswer);
        assert_eq!(Disposition::of_failure(503, false), Disposition::Failed);
        let t0 = Instant::now();
        let record = CallRecord {
            call_id: Bytes::from_static(b"a,\"b\""),
            customer: Some(Arc::from("acme")),
            source: "192.0.2.1".parse().unwrap(),
            user: Bytes::new(),
            number: Bytes::from_static(b"100"),
            carrier: None,
            gateway: None,
            arrived: t0,
            admitted: Some(t0),
            answered: Some(t0 + Duration::from_secs(2)),
        };
        let wall = UNIX_EPOCH + Duration::from_secs(1_000);
        let outcome = Outcome {
            disposition: Disposition::Answered,
            status: 200,
            limit: "",
            hung_up: Some(HungUp::Callee),
        };
        let ended = record.finish(t0 + Duration::from_secs(12), wall, &outcome);
        assert_eq!((ended.arrived_ms, ended.answered_ms, ended.ended_ms), (988_000, 990_000, 1_000_000));
        assert_eq!((ended.duration_ms, ended.hung_up), (10_000, "callee"));
        assert!(ended.csv_row().starts_with("\"a,\"\"b\"\"\",acme,192.0.2.1,,100,"), "{}", ended.csv_row());
        assert_eq!(
            ended.csv_row().split(',').count(),
            Ended::CSV_HEADER.split(',').count() + 1,
            "the quoted comma"
        );
    }
}
