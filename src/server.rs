//! Binding the configured listeners and running the proxy until shutdown: the public entry
//! point integration tests use (bind `127.0.0.1:0`, talk raw bytes, cancel).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use thiserror::Error;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::Admin;
use crate::config::{Config, Listener};
use crate::limit::Store;
use crate::limit::memory::MemoryStore;
use crate::limit::redis::{RedisSettings, RedisStore};
use crate::peer::Transport;
use crate::proxy::node::Node;
use crate::stats::Stats;
use crate::transport::{self, Shared};
use crate::usage::UsageTracker;

#[derive(Debug, Error)]
pub enum ServerError {
    /// A listen address could not be bound (in use, not local, no permission).
    #[error("cannot bind {transport}://{addr}: {source}")]
    Bind { transport: &'static str, addr: SocketAddr, source: std::io::Error },
    /// The TLS certificates could not be used (changed since the config was checked).
    #[error("TLS: {0}")]
    Tls(#[from] transport::tls::TlsError),
    /// The flow key file could not be read or made.
    #[error("flow key file {path}: {source}")]
    FlowKey { path: String, source: std::io::Error },
    /// The call records file could not be opened.
    #[error("cannot open the call records file {path}: {source}")]
    Records { path: String, source: std::io::Error },
}

/// A bound, not yet running proxy.
pub struct Server {
    config: Arc<Config>,
    udp: Vec<Arc<UdpSocket>>,
    /// TCP and TLS listeners.
    tcp: Vec<(TcpListener, Transport)>,
    admin: Option<TcpListener>,
    tls: transport::tls::Tls,
    records: Option<Arc<crate::records::Records>>,
    dns: Arc<transport::dns::Dns>,
    flow_key: Option<crate::proxy::flow::FlowKey>,
}

/// A running proxy: its addresses and a handle to stop it.
pub struct Running {
    pub config: Arc<Config>,
    pub shared: Arc<Shared>,
    pub usage: Arc<Mutex<UsageTracker>>,
    /// The admin listener's bound address, if one is configured.
    pub admin: Option<SocketAddr>,
    cluster: Option<Arc<RedisStore>>,
    tasks: JoinSet<()>,
}

impl Server {
    /// Binds every listener. Port 0 picks a free port, shared by UDP and TCP on the same IP,
    /// and the config is rewritten with the real ports (they go into Via and Record-Route).
    pub async fn bind(config: Config) -> Result<Self, ServerError> {
        // A port picked for UDP may already be taken for TCP: pick again (port 0 only).
        let picks_ports = config.listen.iter().any(|l| l.addr.port() == 0);
        let mut attempt = 0;
        loop {
            match Self::bind_once(config.clone()).await {
                Err(ServerError::Bind { source, .. })
                    if picks_ports && attempt < 20 && source.kind() == std::io::ErrorKind::AddrInUse =>
                {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn bind_once(config: Config) -> Result<Self, ServerError> {
        let mut config = config;
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        let mut bound: Vec<Listener> = Vec::new();
        for l in config.listen.clone() {
            let mut addr = l.addr;
            if addr.port() == 0 {
                if let Some(same_ip) = bound.iter().find(|b| b.addr.ip() == addr.ip()) {
                    addr.set_port(same_ip.addr.port());
                }
            }
            let err = |source| ServerError::Bind { transport: l.transport.scheme(), addr, source };
            let actual = match l.transport {
                Transport::Udp => {
                    // One socket per worker on the same address: the kernel spreads
                    // datagrams between them by source, and any of them sends from the port.
                    let workers = config.worker_threads();
                    let local = if workers > 1 {
                        // A plain bind first: a port someone else holds is an error here,
                        // not a silent share of its traffic through SO_REUSEPORT.
                        let probe = std::net::UdpSocket::bind(addr).map_err(err)?;
                        let local = probe.local_addr().map_err(err)?;
                        drop(probe);
                        local
                    } else {
                        addr
                    };
                    let first = bind_udp(local, workers > 1).map_err(err)?;
                    let local = first.local_addr().map_err(err)?;
                    udp.push(Arc::new(first));
                    for _ in 1..workers {
                        udp.push(Arc::new(bind_udp(local, true).map_err(err)?));
                    }
                    local
                }
                Transport::Tcp | Transport::Tls => {
                    let s = TcpListener::bind(addr).await.map_err(err)?;
                    let local = s.local_addr().map_err(err)?;
                    tcp.push((s, l.transport));
                    local
                }
            };
            bound.push(Listener { transport: l.transport, addr: actual });
        }
        config.listen = bound;
        let admin = match config.admin {
            Some(addr) => {
                let err = |source| ServerError::Bind { transport: "http", addr, source };
                let listener = TcpListener::bind(addr).await.map_err(err)?;
                config.admin = Some(listener.local_addr().map_err(err)?);
                Some(listener)
            }
            None => None,
        };
        let tls = transport::tls::Tls::new(&config)?;
        let records = match &config.records {
            Some((path, format)) => Some(Arc::new(
                crate::records::Records::open(path, *format)
                    .map_err(|source| ServerError::Records { path: path.display().to_string(), source })?,
            )),
            None => None,
        };
        let flow_key = match &config.flow_key_file {
            Some(path) => Some(
                crate::proxy::flow::FlowKey::load_or_create(path)
                    .map_err(|source| ServerError::FlowKey { path: path.display().to_string(), source })?,
            ),
            None => None,
        };
        // DNS gateways get their first targets before any call is served.
        let dns = Arc::new(transport::dns::Dns::new(Arc::new(config)));
        let config = dns.start().await;
        Ok(Self { config, udp, tcp, admin, tls, records, dns, flow_key })
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Starts the socket tasks and the timer task.
    pub fn start(self, shutdown: CancellationToken) -> Running {
        let stats = Arc::new(Stats::default());
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let limits = Arc::new(MemoryStore::new(tokio::time::Instant::now()));
        let cluster = self.config.cluster.as_ref().and_then(|c| {
            match RedisStore::new(RedisSettings::from_config(c), limits.clone()) {
                Ok(store) => {
                    store.spawn_maintenance();
                    Some(store)
                }
                Err(e) => {
                    tracing::error!(event = "cluster.invalid", error = %e, "cluster store unusable; limits are local");
                    None
                }
            }
        });
        let store: Arc<dyn Store> = match &cluster {
            Some(c) => c.clone(),
            None => limits.clone(),
        };
        let usage = Arc::new(Mutex::new(load_usage(&self.config)));
        let node = Node::with_usage(self.config.clone(), stats.clone(), seed, store.clone(), usage.clone())
            .with_records(self.records.clone());
        let node = match self.flow_key {
            Some(key) => node.with_flow_key(key),
            None => node,
        };
        let shards = node.shard_count();
        let shared = Arc::new(Shared {
            node,
            draining: std::sync::atomic::AtomicBool::new(false),
            limits,
            store,
            cluster: cluster.clone(),
            stats,
            udp_senders: transport::UdpSenders::new(&self.udp),
            udp: self.udp.clone(),
            tcp: transport::tcp::Registry::default(),
            tls_conns: transport::tcp::Registry::default(),
            tls: self.tls,
            dns: self.dns.clone(),
            shutdown,
            max_message: self.config.max_message_bytes,
            max_tcp_per_ip: self.config.max_tcp_per_ip,
            udp_pending: std::sync::atomic::AtomicUsize::new(0),
            alarms: (0..shards).map(|_| transport::Alarm::default()).collect(),
            room_alarm: transport::Alarm::default(),
            clock_epoch: tokio::time::Instant::now(),
        });
        let mut tasks = JoinSet::new();
        for socket in self.udp {
            tasks.spawn(transport::udp::serve(shared.clone(), socket));
        }
        for (listener, transport) in self.tcp {
            tasks.spawn(transport::tcp::serve(shared.clone(), listener, transport));
        }
        for k in 0..shards {
            tasks.spawn(shared.clone().run_shard_timers(k));
        }
        tasks.spawn(shared.clone().run_waitroom());
        tasks.spawn(self.dns.clone().run(shared.clone()));
        for l in &self.config.listen {
            tracing::info!(event = "server.listening", transport = l.transport.scheme(), addr = %l.addr, "listening");
        }
        tasks.spawn(persist_usage(shared.clone(), usage.clone(), self.config.usage.state_file.clone()));
        let admin_addr = self.config.admin;
        if let Some(listener) = self.admin {
            let admin = Arc::new(Admin::new(shared.clone(), usage.clone()));
            tasks.spawn(crate::admin::serve(admin, listener));
            if let Some(addr) = admin_addr {
                tracing::info!(event = "server.listening", transport = "http", addr = %addr, "admin listening");
            }
        }
        Running { config: self.config, shared, usage, admin: admin_addr, cluster, tasks }
    }
}

/// The usage history from `[usage] state_file`; a missing file starts empty, a corrupt one is
/// reported and replaced by a fresh history (never a crash).
fn load_usage(config: &Config) -> UsageTracker {
    let mut usage = UsageTracker::now_anchored(config.usage.window_days);
    if let Some(path) = &config.usage.state_file {
        match usage.load(path) {
            Ok(true) => {
                tracing::info!(event = "usage.loaded", path = %path.display(), "usage history loaded")
            }
            Ok(false) => {
                tracing::info!(event = "usage.fresh", path = %path.display(), "no usage history yet")
            }
            Err(e) => {
                tracing::warn!(event = "usage.corrupt", path = %path.display(), error = %e, "usage history unusable; starting afresh");
                usage = UsageTracker::now_anchored(config.usage.window_days);
            }
        }
    }
    usage
}

/// Closes finished minutes and writes the state file every 30 s, and once more at shutdown.
async fn persist_usage(
    shared: Arc<Shared>,
    usage: Arc<Mutex<UsageTracker>>,
    path: Option<std::path::PathBuf>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        let stopping = tokio::select! {
            _ = shared.shutdown.cancelled() => true,
            _ = tick.tick() => false,
        };
        usage.lock().roll(tokio::time::Instant::now());
        if let Some(path) = &path {
            if let Err(e) = usage.lock().save(path) {
                tracing::warn!(event = "usage.save_failed", error = %e, "usage history not saved");
            }
        }
        if stopping {
            return;
        }
    }
}

/// Receive/send buffer asked for on UDP sockets: absorbs bursts of thousands of datagrams
/// while the core is busy. Linux caps it at net.core.rmem_max / wmem_max.
pub const UDP_BUFFER_BYTES: usize = 8 << 20;

/// Binds a UDP socket with large kernel buffers (the default ~200 KB overflows under load
/// and turns into retransmissions); `reuse_port` for one of a listener's worker sockets.
fn bind_udp(addr: SocketAddr, reuse_port: bool) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

impl Running {
    /// The bound address of the first listener of `transport`.
    pub fn addr(&self, transport: Transport) -> Option<SocketAddr> {
        self.config.listen.iter().find(|l| l.transport == transport).map(|l| l.addr)
    }

    /// Graceful stop: refuse new calls, let calls in progress finish for up to `drain`, then
    /// stop every task.
    pub async fn drain_and_stop(mut self, drain: Duration) {
        self.shared.start_draining();
        tracing::info!(event = "server.draining", seconds = drain.as_secs(), "draining");
        let deadline = tokio::time::Instant::now() + drain;
        while tokio::time::Instant::now() < deadline {
            if self.shared.node.is_idle() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let left = self.shared.node.active_calls();
        tracing::info!(event = "server.stopped", calls_left = left, "stopped");
        self.shared.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        if let Some(c) = &self.cluster {
            c.stop();
        }
    }

    /// Immediate stop (tests).
    pub async fn stop(mut self) {
        self.shared.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
        if let Some(c) = &self.cluster {
            c.stop();
        }
    }

    /// Stops like a crash: tasks end, nothing is released, the cluster heartbeat stops
    /// (tests of node failure).
    pub async fn kill(self) {
        self.stop().await;
    }
}
