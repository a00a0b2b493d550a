//! Sockets: UDP and TCP listeners that feed received bytes to the proxy core and carry its
//! [`Action`]s out. This layer owns no SIP logic; it frames TCP streams, reuses connections,
//! and reports undeliverable requests back to the core.

pub mod tcp;
pub mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::limit::memory::MemoryStore;
use crate::peer::{Peer, Transport};
use crate::proxy::transaction::TxId;
use crate::proxy::{Action, Proxy};
use crate::stats::Stats;

/// UDP sends allowed to wait for buffer space at once.
const MAX_PENDING_UDP_SENDS: usize = 10_000;

/// Timers due within this much of each other fire in one wake-up: at thousands of calls a
/// second deadlines are continuous, and waking for each would cost more than it gains. SIP's
/// shortest timer is T1 = 500 ms; the spike buffer admits before it expires, so 1 ms late is
/// harmless.
const TIMER_GRANULARITY: std::time::Duration = std::time::Duration::from_millis(1);

/// How often idle limit keys are swept.
const EVICT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Everything the socket tasks share.
pub struct Shared {
    pub core: Mutex<Proxy>,
    /// The running configuration for readers off the SIP path (admin API, reload): swapped
    /// with the core's on reload, read without the core lock.
    pub config: parking_lot::RwLock<Arc<crate::config::Config>>,
    /// Set at SIGTERM (the core has its own copy): /health reads it without the core lock.
    pub draining: std::sync::atomic::AtomicBool,
    /// The limit counters (also inside the core as its store), read without the core lock.
    pub limits: Arc<MemoryStore>,
    /// The store the core admits through (the same memory store, or the cluster store).
    pub store: Arc<dyn crate::limit::Store>,
    /// The cluster store, for admissions made off the SIP path.
    pub cluster: Option<Arc<crate::limit::redis::RedisStore>>,
    pub stats: Arc<Stats>,
    pub udp: Vec<Arc<UdpSocket>>,
    pub tcp: tcp::Registry,
    pub shutdown: CancellationToken,
    pub max_message: usize,
    /// Inbound TCP connections allowed per source IP.
    pub max_tcp_per_ip: u32,
    /// UDP sends waiting for kernel buffer space.
    pub udp_pending: AtomicUsize,
    /// The timer task's wake-up: when it sleeps until (ns since `clock_epoch`), and the bell
    /// rung when the core gets an earlier deadline than that.
    pub timer_wake: std::sync::atomic::AtomicU64,
    pub timer_bell: tokio::sync::Notify,
    pub clock_epoch: Instant,
}

impl Shared {
    /// The running configuration (a pointer copy).
    pub fn config(&self) -> Arc<crate::config::Config> {
        self.config.read().clone()
    }

    /// Replaces the configuration for new calls, in the core and for every other reader.
    pub fn swap_config(&self, next: Arc<crate::config::Config>) {
        self.core.lock().reload(next.clone());
        *self.config.write() = next;
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// SIGTERM: new INVITEs are refused from now on; calls in progress go on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.core.lock().start_draining();
    }

    /// Runs the core on one received message and carries out what it decided.
    pub fn handle(self: &Arc<Self>, source: Peer, bytes: &[u8]) {
        let mut out = Vec::new();
        let next = {
            let mut core = self.core.lock();
            core.on_message(Instant::now(), source, bytes, &mut out);
            core.next_deadline()
        };
        self.wake_timers_for(next);
        self.dispatch(out);
    }

    /// Rings the timer task when the core now has a deadline before the one it sleeps to.
    fn wake_timers_for(&self, next: Option<Instant>) {
        if let Some(next) = next {
            let at = next.saturating_duration_since(self.clock_epoch).as_nanos() as u64;
            let granularity = TIMER_GRANULARITY.as_nanos() as u64;
            if at.saturating_add(granularity) < self.timer_wake.load(Ordering::Relaxed) {
                self.timer_wake.store(at, Ordering::Relaxed);
                self.timer_bell.notify_one();
            }
        }
    }

    pub fn dispatch(self: &Arc<Self>, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { to, data, tx } => match to.transport {
                    Transport::Udp => self.send_udp(to.addr, data),
                    Transport::Tcp => self.tcp.send(self, to, data, tx),
                },
                Action::Admit { tx, candidates, count_cps } => self.admit_remote(tx, candidates, count_cps),
            }
        }
    }

    fn send_udp(self: &Arc<Self>, to: SocketAddr, data: Bytes) {
        let Some(socket) =
            self.udp.iter().find(|s| s.local_addr().is_ok_and(|l| l.is_ipv4() == to.is_ipv4()))
        else {
            tracing::warn!(event = "transport.no_socket", to = %to, "no UDP socket of this address family");
            return;
        };
        match socket.try_send_to(&data, to) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // The kernel buffer is full: wait for it in a task, but only up to a bound;
                // beyond it the datagram is dropped (SIP over UDP retransmits).
                if self.udp_pending.fetch_add(1, Ordering::Relaxed) >= MAX_PENDING_UDP_SENDS {
                    self.udp_pending.fetch_sub(1, Ordering::Relaxed);
                    Stats::bump(&self.stats.udp_send_dropped);
                    return;
                }
                let (socket, shared) = (socket.clone(), self.clone());
                tokio::spawn(async move {
                    let _ = socket.send_to(&data, to).await;
                    shared.udp_pending.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(e) => {
                tracing::debug!(event = "transport.send_failed", to = %to, error = %e, "UDP send failed")
            }
        }
    }

    /// Runs a cluster admission off the SIP path and hands the answer back to the core.
    fn admit_remote(self: &Arc<Self>, tx: TxId, candidates: Vec<Vec<crate::limit::Demand>>, count_cps: bool) {
        let shared = self.clone();
        tokio::spawn(async move {
            let answer = match &shared.cluster {
                Some(store) => store.admit_async(Instant::now(), candidates, count_cps).await,
                None => crate::limit::redis::Remote::Unavailable,
            };
            let mut out = Vec::new();
            let next = {
                let mut core = shared.core.lock();
                core.on_admission(Instant::now(), tx, answer, &mut out);
                core.next_deadline()
            };
            shared.wake_timers_for(next);
            shared.dispatch(out);
        });
    }

    /// A request could not be delivered: let the core fail over.
    pub fn send_failed(self: &Arc<Self>, tx: crate::proxy::transaction::TxId, to: Peer) {
        let mut out = Vec::new();
        let next = {
            let mut core = self.core.lock();
            core.on_send_failed(Instant::now(), tx, to, &mut out);
            core.next_deadline()
        };
        self.wake_timers_for(next);
        self.dispatch(out);
    }

    /// Drives the core's timers until shutdown. The task sleeps until the core's next
    /// deadline (or the next idle-key sweep); a message that gives the core an earlier
    /// deadline rings the bell. Timers fire at their instant, not on a polling tick.
    pub async fn run_timers(self: Arc<Self>) {
        let mut next_sweep = Instant::now() + EVICT_EVERY;
        let mut not_before = Instant::now();
        loop {
            let deadline = self.core.lock().next_deadline().map_or(next_sweep, |d| d.min(next_sweep));
            let deadline = deadline.max(not_before);
            let at = deadline.saturating_duration_since(self.clock_epoch).as_nanos() as u64;
            self.timer_wake.store(at, Ordering::Relaxed);
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => {}
                _ = self.timer_bell.notified() => continue,
            }
            self.timer_wake.store(u64::MAX, Ordering::Relaxed);
            let now = Instant::now();
            not_before = now + TIMER_GRANULARITY;
            let mut out = Vec::new();
            {
                let mut core = self.core.lock();
                if core.next_deadline().is_some_and(|d| d <= now) {
                    core.on_timer(now, &mut out);
                }
            }
            if !out.is_empty() {
                self.dispatch(out);
            }
            if now >= next_sweep {
                // Idle per-IP / per-user keys go, outside the core lock.
                let evicted = self.limits.evict_idle(now);
                if evicted > 0 {
                    tracing::debug!(
                        event = "limits.evicted",
                        keys = evicted,
                        left = self.limits.len(),
                        "idle limit keys evicted"
                    );
                }
                next_sweep = now + EVICT_EVERY;
            }
        }
    }
}
