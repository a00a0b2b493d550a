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
    /// Messages dropped for size before any parsing.
    pub oversize: AtomicU64,
    /// Responses or requests dropped because they belong to nothing (stray responses,
    /// ACKs for unknown dialogs).
    pub stray: AtomicU64,
    /// UDP datagrams dropped because the socket's send buffer stayed full.
    pub udp_send_dropped: AtomicU64,
    pub calls_admitted: AtomicU64,
    pub calls_rejected_cps: AtomicU64,
    pub calls_rejected_channels: AtomicU64,
    pub calls_redirected: AtomicU64,
    pub calls_no_route: AtomicU64,
    pub calls_forbidden: AtomicU64,
    pub calls_timeout: AtomicU64,
    pub calls_refused_draining: AtomicU64,
    pub loops: AtomicU64,
    /// Which limit turned calls away: (scope, name, kind). Per-IP and per-user keys are
    /// folded into name "*" so the label set stays bounded.
    pub limit_hits: DashMap<(Scope, String, Refusal), u64>,
    /// Gateways whose last request went unanswered (timeout or unreachable); cleared by any
    /// response from them.
    pub gateways_down: DashMap<std::net::SocketAddr, ()>,
}

impl Stats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn malformed(&self, transport: Transport) {
        Self::bump(match transport {
            Transport::Udp => &self.malformed_udp,
            Transport::Tcp => &self.malformed_tcp,
        });
    }

    pub fn limit_hit(&self, key: &LimitKey, kind: Refusal) {
        let name = match key.scope {
            Scope::Ip | Scope::User => "*".to_string(),
            _ => key.name.label(),
        };
        *self.limit_hits.entry((key.scope, name, kind)).or_default() += 1;
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
