//! The stream side, TCP and TLS: accepted and outgoing connections, each framed by
//! Content-Length. Responses go back on the connection a request came in on; connections to
//! gateways are reused. TLS is the same connection with a rustls session under it
//! (handshake first, bounded in time; see [`super::tls`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::Shared;
use crate::peer::{ConnId, Peer, Transport};
use crate::proxy::transaction::TxId;
use crate::sip::framing::{Frame, frame};
use crate::stats::Stats;

/// At most this many TCP connections at once; further accepts are closed at once.
pub const MAX_CONNECTIONS: usize = 10_000;
/// A connection with no traffic for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// A message whose first bytes arrived must be complete within this long (a peer trickling
/// a header a byte at a time holds nothing for long).
pub const INCOMPLETE_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages queued for one connection's writer before further ones are dropped.
const WRITE_QUEUE: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A TLS handshake (either side) must finish within this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Live connections of one stream transport: by id, and by remote address for reuse.
pub struct Registry {
    conns: DashMap<ConnId, mpsc::Sender<Bytes>>,
    by_addr: DashMap<SocketAddr, ConnId>,
    next: AtomicU64,
    /// Inbound connections per source IP.
    per_ip: DashMap<std::net::IpAddr, u32>,
    /// Budget for the log lines remote peers can cause (refused, broken, failed connections).
    log: parking_lot::Mutex<crate::proxy::ratelog::RateLog>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            conns: DashMap::new(),
            by_addr: DashMap::new(),
            next: AtomicU64::new(0),
            per_ip: DashMap::new(),
            log: parking_lot::Mutex::new(crate::proxy::ratelog::RateLog::new("transport.tcp", 20)),
        }
    }
}

impl Registry {
    fn register(&self, remote: SocketAddr) -> (ConnId, mpsc::Receiver<Bytes>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        self.conns.insert(id, tx);
        self.by_addr.insert(remote, id);
        (id, rx)
    }

    fn unregister(&self, id: ConnId, remote: SocketAddr) {
        self.conns.remove(&id);
        self.by_addr.remove_if(&remote, |_, v| *v == id);
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Inbound connections `ip` holds now (TCP and TLS together: counted in the TCP registry).
    pub fn inbound_from(&self, ip: std::net::IpAddr) -> u32 {
        self.per_ip.get(&ip).map_or(0, |n| *n)
    }

    /// True when one more connection-level log line fits this second's budget.
    fn may_log(&self) -> bool {
        self.log.lock().allow(tokio::time::Instant::now())
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Sends on the named connection, else on any connection to the address, else opens one.
    pub fn send(&self, shared: &Arc<Shared>, to: Peer, data: Bytes, tx: Option<TxId>) {
        let id = to
            .conn
            .filter(|c| self.conns.contains_key(c))
            .or_else(|| self.by_addr.get(&to.addr).map(|e| *e.value()));
        if let Some(id) = id {
            if let Some(sender) = self.conns.get(&id) {
                if sender.try_send(data).is_err() {
                    tracing::debug!(event = "transport.tcp_backlog", to = %to, "connection write queue full; message dropped");
                }
                return;
            }
        }
        let shared = shared.clone();
        tokio::spawn(async move { connect(shared, to, data, tx).await });
    }
}

/// One inbound connection's share of its source IP's allowance; released on drop, so every
/// way a connection ends gives it back.
struct InboundSlot {
    shared: Arc<Shared>,
    ip: std::net::IpAddr,
}

impl InboundSlot {
    /// One more inbound connection from `ip`, or `None` when it holds its share already.
    fn take(shared: &Arc<Shared>, ip: std::net::IpAddr) -> Option<Self> {
        // One allowance per source IP for TCP and TLS together.
        let mut n = shared.tcp.per_ip.entry(ip).or_insert(0);
        if *n >= shared.max_tcp_per_ip {
            return None;
        }
        *n += 1;
        drop(n);
        Some(Self { shared: shared.clone(), ip })
    }
}

impl Drop for InboundSlot {
    fn drop(&mut self) {
        self.shared.tcp.per_ip.remove_if_mut(&self.ip, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

/// Accepts connections until shutdown; on a TLS listener each one is handshaken first.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, transport: Transport) {
    let registry = shared.streams(transport);
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, remote)) => {
                if registry.len() >= MAX_CONNECTIONS {
                    if registry.may_log() {
                        tracing::warn!(event = "transport.tcp_full", remote = %remote, "connection limit reached; closing");
                    }
                    continue;
                }
                let Some(slot) = InboundSlot::take(&shared, remote.ip()) else {
                    Stats::bump(&shared.stats.tcp_refused);
                    if registry.may_log() {
                        tracing::warn!(event = "transport.tcp_per_ip", remote = %remote, max = shared.max_tcp_per_ip, "source has its share of TCP connections; closing");
                    }
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                tokio::spawn(async move {
                    if transport == Transport::Tls {
                        if let Some(tls) = accept_tls(&shared, stream, remote).await {
                            run_connection(shared, tls, remote, None, transport).await;
                        }
                    } else {
                        run_connection(shared, stream, remote, None, transport).await;
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::warn!(event = "transport.accept_error", error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The TLS server handshake of an accepted connection, bounded in time; `None` (logged,
/// counted) when it fails or no certificate is configured.
async fn accept_tls(
    shared: &Arc<Shared>,
    stream: TcpStream,
    remote: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let acceptor = shared.tls.acceptor()?;
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            handshake_failed(shared, remote, &e.to_string());
            None
        }
        Err(_) => {
            handshake_failed(shared, remote, "timeout");
            None
        }
    }
}

fn handshake_failed(shared: &Shared, remote: SocketAddr, why: &str) {
    Stats::bump(&shared.stats.tls_handshake_failed);
    if shared.tls_conns.may_log() {
        tracing::info!(event = "transport.tls_handshake_failed", remote = %remote, error = why, "TLS handshake failed");
    }
}

/// Opens a connection to `to` (TCP, then the TLS handshake for a TLS peer) and sends
/// `first`. A failure is reported to the core as undeliverable (the call fails over).
async fn connect(shared: Arc<Shared>, to: Peer, first: Bytes, tx: Option<TxId>) {
    let registry = shared.streams(to.transport);
    let failed = |why: String| {
        if registry.may_log() {
            tracing::info!(event = "transport.connect_failed", to = %to, error = %why, "connect failed");
        }
        if let Some(tx) = tx {
            shared.send_failed(tx, to);
        }
    };
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return failed(e.to_string()),
        Err(_) => return failed("timeout".into()),
    };
    let _ = stream.set_nodelay(true);
    if to.transport != Transport::Tls {
        return run_connection(shared.clone(), stream, to.addr, Some(first), to.transport).await;
    }
    // The name the gateway's certificate must carry: its host as configured.
    let host = shared
        .config()
        .carriers
        .iter()
        .flat_map(|c| c.gateways.iter())
        .find(|g| g.transport == Transport::Tls && g.addr == to.addr)
        .map_or_else(|| to.addr.ip().to_string(), |g| g.host.clone());
    let Some(name) = super::tls::server_name(&host) else {
        return failed(format!("`{host}` is not a name a certificate can carry"));
    };
    let handshake = shared.tls.connector().connect(name, stream);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(tls)) => run_connection(shared.clone(), tls, to.addr, Some(first), to.transport).await,
        Ok(Err(e)) => {
            Stats::bump(&shared.stats.tls_handshake_failed);
            failed(format!("TLS: {e}"));
        }
        Err(_) => {
            Stats::bump(&shared.stats.tls_handshake_failed);
            failed("TLS handshake timed out".into());
        }
    }
}

/// One connection: a writer task fed by the registry, and this reader loop framing messages.
async fn run_connection<S>(
    shared: Arc<Shared>,
    stream: S,
    remote: SocketAddr,
    first: Option<Bytes>,
    transport: Transport,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let registry = shared.streams(transport);
    let (id, mut rx) = registry.register(remote);
    let (mut reader, mut writer) = tokio::io::split(stream);
    let writer_task = tokio::spawn(async move {
        if let Some(first) = first {
            if writer.write_all(&first).await.is_err() {
                return;
            }
        }
        while let Some(data) = rx.recv().await {
            if writer.write_all(&data).await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    let peer = Peer::stream(transport, remote, Some(id));
    let mut buf = BytesMut::with_capacity(8192);
    let mut out = Vec::new();
    // When the bytes of a message still incomplete began to arrive.
    let mut partial_since: Option<tokio::time::Instant> = None;
    'read: loop {
        let deadline = match partial_since {
            Some(since) => since + INCOMPLETE_TIMEOUT,
            None => tokio::time::Instant::now() + IDLE_TIMEOUT,
        };
        let read = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            r = tokio::time::timeout_at(deadline, reader.read_buf(&mut buf)) => r,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(_)) => {}
        }
        loop {
            match frame(&buf, shared.max_message) {
                Ok(Frame::Incomplete) => {
                    if buf.is_empty() {
                        partial_since = None;
                    } else {
                        partial_since.get_or_insert_with(tokio::time::Instant::now);
                    }
                    break;
                }
                Ok(Frame::KeepAlive { consumed, pong }) => {
                    let _ = buf.split_to(consumed);
                    if pong {
                        if let Some(s) = registry.conns.get(&id) {
                            let _ = s.try_send(Bytes::from_static(b"\r\n"));
                        }
                    }
                }
                Ok(Frame::Message { len }) => {
                    partial_since = None;
                    let msg = buf.split_to(len);
                    shared.handle(peer, &msg, &mut out);
                }
                Err(e) => {
                    // A stream cannot be resynchronised after a framing error: close it.
                    shared.stats.malformed(transport);
                    if registry.may_log() {
                        tracing::warn!(event = "transport.tcp_framing", remote = %remote, error = %e, "closing connection");
                    }
                    break 'read;
                }
            }
        }
    }
    registry.unregister(id, remote);
    drop(writer_task); // finishes once the queued messages are written
}
