//! Sockets: UDP and TCP listeners that feed received bytes to the proxy core and carry its
//! [`Action`]s out. This layer owns no SIP logic; it frames TCP streams, reuses connections,
//! and reports undeliverable requests back to the core.

pub mod batch;
pub mod dns;
pub mod tcp;
pub mod tls;
pub mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::limit::memory::MemoryStore;
use crate::peer::{Peer, Transport};
use crate::proxy::Action;
use crate::proxy::node::{Node, Wake};
use crate::proxy::transaction::TxId;
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

/// A timer task's wake-up: when it sleeps until (ns since the clock epoch), and the bell
/// rung when its part of the core gets an earlier deadline than that.
pub struct Alarm {
    wake: AtomicU64,
    bell: tokio::sync::Notify,
}

impl Default for Alarm {
    fn default() -> Self {
        Self { wake: AtomicU64::new(u64::MAX), bell: tokio::sync::Notify::new() }
    }
}

impl Alarm {
    /// Rings when `next` comes before the instant the task sleeps to.
    fn ring_if_earlier(&self, epoch: Instant, next: Option<Instant>) {
        let Some(next) = next else { return };
        let at = nanos_since(epoch, next);
        if at.saturating_add(TIMER_GRANULARITY.as_nanos() as u64) < self.wake.load(Ordering::Relaxed) {
            self.wake.store(at, Ordering::Relaxed);
            self.bell.notify_one();
        }
    }

    /// Sleeps until `deadline`, or until rung (false), or shutdown (None).
    async fn sleep(&self, epoch: Instant, deadline: Instant, shutdown: &CancellationToken) -> Option<bool> {
        self.wake.store(nanos_since(epoch, deadline), Ordering::Relaxed);
        let woke = tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep_until(deadline) => true,
            _ = self.bell.notified() => false,
        };
        self.wake.store(u64::MAX, Ordering::Relaxed);
        Some(woke)
    }
}

fn nanos_since(epoch: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// The UDP socket that sends toward each address family: the first listener socket of it.
#[derive(Default)]
pub struct UdpSenders {
    v4: Option<Arc<UdpSocket>>,
    v6: Option<Arc<UdpSocket>>,
}

impl UdpSenders {
    pub fn new(sockets: &[Arc<UdpSocket>]) -> Self {
        let first =
            |v4: bool| sockets.iter().find(|s| s.local_addr().is_ok_and(|l| l.is_ipv4() == v4)).cloned();
        Self { v4: first(true), v6: first(false) }
    }

    fn of(&self, to: SocketAddr) -> Option<&Arc<UdpSocket>> {
        if to.is_ipv4() { self.v4.as_ref() } else { self.v6.as_ref() }
    }
}

/// Everything the socket tasks share.
pub struct Shared {
    /// The sharded core: each shard behind its own lock, taken by whichever worker received
    /// a message of one of its calls.
    pub node: Node,
    /// Set at SIGTERM (the shards have their own copy): /health reads it without them.
    pub draining: std::sync::atomic::AtomicBool,
    /// The limit counters (also the node's store, or the cluster store's local mirror).
    pub limits: Arc<MemoryStore>,
    /// The store the core admits through (the same memory store, or the cluster store).
    pub store: Arc<dyn crate::limit::Store>,
    /// The cluster store, for admissions made off the SIP path.
    pub cluster: Option<Arc<crate::limit::redis::RedisStore>>,
    pub stats: Arc<Stats>,
    /// Every UDP socket: `workers` per UDP listener, all bound to the listener's address
    /// (SO_REUSEPORT), so any of them sends with the same source port.
    pub udp: Vec<Arc<UdpSocket>>,
    /// The socket each address family sends from (looked up once, not per datagram).
    pub udp_senders: UdpSenders,
    pub tcp: tcp::Registry,
    pub tls_conns: tcp::Registry,
    /// Certificates for TLS listeners and for verifying TLS gateways (swapped on reload).
    pub tls: tls::Tls,
    /// DNS gateways: the file's configuration and what DNS answers for it.
    pub dns: Arc<dns::Dns>,
    pub shutdown: CancellationToken,
    pub max_message: usize,
    /// Inbound TCP connections allowed per source IP.
    pub max_tcp_per_ip: u32,
    /// UDP sends waiting for kernel buffer space.
    pub udp_pending: AtomicUsize,
    /// One alarm per shard's timer task, and the spike buffer's.
    pub alarms: Vec<Alarm>,
    pub room_alarm: Alarm,
    pub clock_epoch: Instant,
}

impl Shared {
    /// The running configuration (a pointer copy).
    pub fn config(&self) -> Arc<crate::config::Config> {
        self.node.config()
    }

    /// Replaces the configuration for new calls, in every shard and for every other reader;
    /// TLS certificates are read again for new connections.
    pub fn swap_config(&self, next: Arc<crate::config::Config>) {
        self.tls.reload(&next.tls);
        if let Some(records) = self.node.records() {
            records.reopen();
        }
        // DNS gateways expand to their current targets (new names resolve right after).
        self.node.reload(self.dns.apply(next));
    }

    /// The connections of a stream transport (TCP or TLS).
    pub fn streams(&self, transport: Transport) -> &tcp::Registry {
        if transport == Transport::Tls { &self.tls_conns } else { &self.tcp }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// SIGTERM: new INVITEs are refused from now on; calls in progress go on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.node.start_draining();
    }

    /// Runs the core on one received message and carries out what it decided.
    /// One received message through the core and out again. `out` is the receiving loop's
    /// own buffer, reused message after message (left empty).
    pub fn handle(self: &Arc<Self>, source: Peer, bytes: &[u8], out: &mut Vec<Action>) {
        let wake = self.node.on_message(Instant::now(), source, bytes, out);
        self.wake_for(wake);
        self.dispatch(out);
    }

    /// Rings the timer tasks whose next deadline a step moved earlier.
    fn wake_for(&self, wake: Option<Wake>) {
        let Some(w) = wake else { return };
        if let Some(alarm) = self.alarms.get(w.shard) {
            alarm.ring_if_earlier(self.clock_epoch, w.next);
        }
        self.room_alarm.ring_if_earlier(self.clock_epoch, w.room);
    }

    /// Carries out (and empties) `actions`.
    pub fn dispatch(self: &Arc<Self>, actions: &mut Vec<Action>) {
        for action in actions.drain(..) {
            self.dispatch_one(action);
        }
    }

    fn dispatch_one(self: &Arc<Self>, action: Action) {
        match action {
            Action::Send { to, data, tx } => match to.transport {
                Transport::Udp => self.send_udp(to.addr, data),
                Transport::Tcp | Transport::Tls => self.streams(to.transport).send(self, to, data, tx),
            },
            Action::Admit { tx, candidates, count_cps } => self.admit_remote(tx, candidates, count_cps),
        }
    }

    /// One datagram of a received batch: as [`Shared::handle`], except that its UDP sends
    /// wait in `outbox` for the end of the batch ([`Shared::flush`]).
    pub fn handle_batched(
        self: &Arc<Self>,
        source: Peer,
        bytes: &[u8],
        out: &mut Vec<Action>,
        outbox: &mut batch::Outbox,
    ) {
        let wake = self.node.on_message(Instant::now(), source, bytes, out);
        self.wake_for(wake);
        for action in out.drain(..) {
            match action {
                Action::Send { to, data, .. } if to.transport == Transport::Udp => outbox.push(to.addr, data),
                other => self.dispatch_one(other),
            }
        }
    }

    /// Sends a batch's UDP datagrams, each family from its socket, many per system call.
    pub fn flush(self: &Arc<Self>, outbox: &mut batch::Outbox) {
        for v4 in [true, false] {
            if outbox.is_empty() {
                return;
            }
            let socket = if v4 { self.udp_senders.v4.as_deref() } else { self.udp_senders.v6.as_deref() };
            outbox.flush(socket, v4, |to, data| self.send_udp(to, data));
        }
    }

    fn send_udp(self: &Arc<Self>, to: SocketAddr, data: Bytes) {
        let Some(socket) = self.udp_senders.of(to) else {
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
            let wake = shared.node.on_admission(Instant::now(), tx, answer, &mut out);
            shared.wake_for(Some(wake));
            shared.dispatch(&mut out);
        });
    }

    /// A request could not be delivered: let the core fail over.
    pub fn send_failed(self: &Arc<Self>, tx: TxId, to: Peer) {
        let mut out = Vec::new();
        let wake = self.node.on_send_failed(Instant::now(), tx, to, &mut out);
        self.wake_for(Some(wake));
        self.dispatch(&mut out);
    }

    /// Drives shard `k`'s timers until shutdown: sleeps until the shard's next deadline; a
    /// message that gives the shard an earlier one rings its alarm. Timers fire at their
    /// instant, not on a polling tick.
    pub async fn run_shard_timers(self: Arc<Self>, k: usize) {
        let Some(alarm) = self.alarms.get(k) else { return };
        let mut not_before = Instant::now();
        loop {
            let idle = Instant::now() + EVICT_EVERY;
            let deadline = self.node.shard_deadline(k).map_or(idle, |d| d.min(idle)).max(not_before);
            match alarm.sleep(self.clock_epoch, deadline, &self.shutdown).await {
                None => return,
                Some(false) => continue,
                Some(true) => {}
            }
            let now = Instant::now();
            not_before = now + TIMER_GRANULARITY;
            let mut out = Vec::new();
            let wake = self.node.on_shard_timer(k, now, &mut out);
            self.room_alarm.ring_if_earlier(self.clock_epoch, wake.room);
            if !out.is_empty() {
                self.dispatch(&mut out);
            }
        }
    }

    /// Serves the spike buffer at the instant a waiting call's slot opens or its wait ends,
    /// and sweeps idle limit keys. With a shared store the serving round (limiter round trips)
    /// runs on the blocking pool, never on a SIP worker.
    pub async fn run_waitroom(self: Arc<Self>) {
        let mut next_sweep = Instant::now() + EVICT_EVERY;
        let mut not_before = Instant::now();
        loop {
            let deadline =
                self.node.waitroom_deadline().map_or(next_sweep, |d| d.min(next_sweep)).max(not_before);
            match self.room_alarm.sleep(self.clock_epoch, deadline, &self.shutdown).await {
                None => return,
                Some(false) => continue,
                Some(true) => {}
            }
            let now = Instant::now();
            not_before = now + TIMER_GRANULARITY;
            if self.node.waitroom_deadline().is_some_and(|d| d <= now) {
                let (out, wakes) = if self.node.waitroom_may_block() {
                    let shared = self.clone();
                    let served = tokio::task::spawn_blocking(move || {
                        let mut out = Vec::new();
                        let wakes = shared.node.serve_waitroom(now, &mut out);
                        (out, wakes)
                    });
                    served.await.unwrap_or_default()
                } else {
                    let mut out = Vec::new();
                    let wakes = self.node.serve_waitroom(now, &mut out);
                    (out, wakes)
                };
                for w in wakes {
                    self.wake_for(Some(w));
                }
                let mut out = out;
                self.dispatch(&mut out);
            }
            if now >= next_sweep {
                // Idle per-IP / per-user keys go, outside every shard.
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
