//! Process-wide counters, updated on the data path with relaxed atomics and read by the
//! admin/metrics layer without taking any lock the data path waits on.

use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use crate::limit::{LimitKey, Refusal, Scope};
use crate::peer::Transport;

#[derive(Debug, Default)]
pub struct Stats {
    pub requests_in: AtomicU64,
    pub responses_in: AtomicU64,
    pub requests_out: AtomicU64,
    pub responses_out: AtomicU64,
    pub malformed_udp: AtomicU64,
    pub malformed_tcp: AtomicU64,
    pub malformed_tls: AtomicU64,
    /// TLS handshakes that failed (inbound: a client's; outbound: a gateway's certificate
    /// not trusted, or no TLS at all).
    pub tls_handshake_failed: AtomicU64,
    /// Messages dropped for size before any parsing.
    pub oversize: AtomicU64,
    /// Responses or requests dropped because they belong to nothing (stray responses,
    /// ACKs for unknown dialogs).
    pub stray: AtomicU64,
    /// Responses dropped because nothing they may answer matched, by [`Stray`].
    pub stray_responses: [AtomicU64; Stray::ALL.len()],
    /// sluice's own digest authentication, by [`AuthResult`].
    pub auth: [AtomicU64; AuthResult::ALL.len()],
    /// Inbound TCP connections refused: the source IP had its share open already.
    pub tcp_refused: AtomicU64,
    /// Calls ended by sluice because the caller never acknowledged the 2xx (64*T1).
    pub calls_unacked: AtomicU64,
    /// Messages dropped by flood protection, and source IPs blocked now.
    pub flood_dropped: AtomicU64,
    pub flood_blocked: AtomicU64,
    /// UDP datagrams dropped because the socket's send buffer stayed full.
    pub udp_send_dropped: AtomicU64,
    pub calls_admitted: AtomicU64,
    pub calls_rejected_cps: AtomicU64,
    pub calls_rejected_channels: AtomicU64,
    pub calls_redirected: AtomicU64,
    /// Calls that entered the spike buffer, left it admitted, or left it refused.
    pub calls_queued: AtomicU64,
    pub queue_admitted: AtomicU64,
    pub queue_expired: AtomicU64,
    /// Calls waiting in the spike buffer now.
    pub queue_depth: AtomicU64,
    /// How long admitted calls waited in the spike buffer.
    pub queue_wait: WaitHistogram,
    pub calls_no_route: AtomicU64,
    pub calls_forbidden: AtomicU64,
    pub calls_timeout: AtomicU64,
    pub calls_refused_draining: AtomicU64,
    pub loops: AtomicU64,
    /// Which limit turned calls away: (scope, name, kind). Per-IP and per-user keys are
    /// folded into name "*" so the label set stays bounded.
    pub limit_hits: DashMap<(Scope, String, Refusal), u64>,
    /// Calls admitted that a shadow limit would have refused: (scope, name, kind), folded
    /// like `limit_hits`.
    pub shadow_hits: DashMap<(Scope, String, Refusal), u64>,
    /// Gateways whose last request went unanswered (timeout or unreachable); cleared by any
    /// response from them.
    pub gateways_down: DashMap<std::net::SocketAddr, ()>,
}

/// Why a response was dropped as stray (`sluice_stray_responses_total{why}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stray {
    /// Its top Via's branch names no client transaction of ours (expired, or made up).
    UnknownBranch,
    /// It names a live branch but came from somewhere that branch was not sent to: forged.
    WrongSource,
    /// Its top Via is not ours, or nothing is left to forward it to.
    NotOurs,
}

impl Stray {
    pub const ALL: [Self; 3] = [Self::UnknownBranch, Self::WrongSource, Self::NotOurs];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownBranch => "unknown_branch",
            Self::WrongSource => "wrong_source",
            Self::NotOurs => "not_ours",
        }
    }
}

/// `sluice_auth_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    Challenged,
    Ok,
    Failed,
    Stale,
}

impl AuthResult {
    pub const ALL: [Self; 4] = [Self::Challenged, Self::Ok, Self::Failed, Self::Stale];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Challenged => "challenged",
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Stale => "stale",
        }
    }
}

impl Stats {
    pub fn auth(&self, result: AuthResult) {
        Self::bump(&self.auth[result as usize]);
    }

    pub fn stray_response(&self, why: Stray) {
        Self::bump(&self.stray_responses[why as usize]);
    }

    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn malformed(&self, transport: Transport) {
        Self::bump(match transport {
            Transport::Udp => &self.malformed_udp,
            Transport::Tcp => &self.malformed_tcp,
            Transport::Tls => &self.malformed_tls,
        });
    }

    pub fn limit_hit(&self, key: &LimitKey, kind: Refusal) {
        *self.limit_hits.entry((key.scope, Self::label(key), kind)).or_default() += 1;
    }

    pub fn shadow_hit(&self, key: &LimitKey, kind: Refusal) {
        *self.shadow_hits.entry((key.scope, Self::label(key), kind)).or_default() += 1;
    }

    /// A key's metric name: per-IP and per-user keys fold into "*" (bounded label sets).
    fn label(key: &LimitKey) -> String {
        match key.scope {
            Scope::Ip | Scope::User => "*".to_string(),
            _ => key.name.label(),
        }
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Bucket bounds (seconds) of the spike-buffer wait histogram.
pub const WAIT_BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// How long admitted calls waited in the spike buffer: a `prometheus` histogram (atomic,
/// shared by the core and the metrics endpoint).
#[derive(Debug, Clone)]
pub struct WaitHistogram(pub prometheus::Histogram);

impl Default for WaitHistogram {
    fn default() -> Self {
        let opts = prometheus::HistogramOpts::new(
            "sluice_queue_wait_seconds",
            "How long calls admitted from the spike buffer waited.",
        )
        .buckets(WAIT_BUCKETS.to_vec());
        // A constant, valid bucket list: this cannot fail.
        Self(prometheus::Histogram::with_opts(opts).expect("static histogram options are valid"))
    }
}

impl WaitHistogram {
    pub fn observe(&self, wait: std::time::Duration) {
        self.0.observe(wait.as_secs_f64());
    }
}
