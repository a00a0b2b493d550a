//! The TCP side: accepted and outgoing connections, each framed by Content-Length. Responses
//! go back on the connection a request came in on; connections to gateways are reused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::Shared;
use crate::peer::{ConnId, Peer};
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

/// Live connections: by id, and by remote address for reuse.
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

    /// Inbound connections `ip` holds now.
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

/// Accepts connections until shutdown.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, remote)) => {
                if shared.tcp.len() >= MAX_CONNECTIONS {
                    if shared.tcp.may_log() {
                        tracing::warn!(event = "transport.tcp_full", remote = %remote, "connection limit reached; closing");
                    }
                    continue;
                }
                let Some(slot) = InboundSlot::take(&shared, remote.ip()) else {
                    Stats::bump(&shared.stats.tcp_refused);
                    if shared.tcp.may_log() {
                        tracing::warn!(event = "transport.tcp_per_ip", remote = %remote, max = shared.max_tcp_per_ip, "source has its share of TCP connections; closing");
                    }
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                tokio::spawn(async move {
                    run_connection(shared, stream, remote).await;
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

async fn connect(shared: Arc<Shared>, to: Peer, first: Bytes, tx: Option<TxId>) {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            if shared.tcp.may_log() {
                tracing::info!(event = "transport.connect_failed", to = %to, error = %e, "TCP connect failed");
            }
            if let Some(tx) = tx {
                shared.send_failed(tx, to);
            }
            return;
        }
        Err(_) => {
            if shared.tcp.may_log() {
                tracing::info!(event = "transport.connect_failed", to = %to, error = "timeout", "TCP connect timed out");
            }
            if let Some(tx) = tx {
                shared.send_failed(tx, to);
            }
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    run_connection_with(shared, stream, to.addr, Some(first)).await;
}

async fn run_connection(shared: Arc<Shared>, stream: TcpStream, remote: SocketAddr) {
    run_connection_with(shared, stream, remote, None).await;
}

/// One connection: a writer task fed by the registry, and this reader loop framing messages.
async fn run_connection_with(
    shared: Arc<Shared>,
    stream: TcpStream,
    remote: SocketAddr,
    first: Option<Bytes>,
) {
    let (id, mut rx) = shared.tcp.register(remote);
    let (mut reader, mut writer) = stream.into_split();
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
    let peer = Peer::tcp(remote, Some(id));
    let mut buf = BytesMut::with_capacity(8192);
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
                        if let Some(s) = shared.tcp.conns.get(&id) {
                            let _ = s.try_send(Bytes::from_static(b"\r\n"));
                        }
                    }
                }
                Ok(Frame::Message { len }) => {
                    partial_since = None;
                    let msg = buf.split_to(len);
                    shared.handle(peer, &msg);
                }
                Err(e) => {
                    // A stream cannot be resynchronised after a framing error: close it.
                    Stats::bump(&shared.stats.malformed_tcp);
                    if shared.tcp.may_log() {
                        tracing::warn!(event = "transport.tcp_framing", remote = %remote, error = %e, "closing connection");
                    }
                    break 'read;
                }
            }
        }
    }
    shared.tcp.unregister(id, remote);
    drop(writer_task); // finishes once the queued messages are written
}
