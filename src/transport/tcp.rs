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
/// Messages queued for one connection's writer before further ones are dropped.
const WRITE_QUEUE: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Live connections: by id, and by remote address for reuse.
#[derive(Default)]
pub struct Registry {
    conns: DashMap<ConnId, mpsc::Sender<Bytes>>,
    by_addr: DashMap<SocketAddr, ConnId>,
    next: AtomicU64,
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
                    tracing::warn!(event = "transport.tcp_full", remote = %remote, "connection limit reached; closing");
                    continue;
                }
                let _ = stream.set_nodelay(true);
                tokio::spawn(run_connection(shared.clone(), stream, remote));
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
            tracing::info!(event = "transport.connect_failed", to = %to, error = %e, "TCP connect failed");
            if let Some(tx) = tx {
                shared.send_failed(tx, to);
            }
            return;
        }
        Err(_) => {
            tracing::info!(event = "transport.connect_failed", to = %to, error = "timeout", "TCP connect timed out");
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
    'read: loop {
        let read = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            r = tokio::time::timeout(IDLE_TIMEOUT, reader.read_buf(&mut buf)) => r,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(_)) => {}
        }
        loop {
            match frame(&buf, shared.max_message) {
                Ok(Frame::Incomplete) => break,
                Ok(Frame::KeepAlive { consumed, pong }) => {
                    let _ = buf.split_to(consumed);
                    if pong {
                        if let Some(s) = shared.tcp.conns.get(&id) {
                            let _ = s.try_send(Bytes::from_static(b"\r\n"));
                        }
                    }
                }
                Ok(Frame::Message { len }) => {
                    let msg = buf.split_to(len);
                    shared.handle(peer, &msg);
                }
                Err(e) => {
                    // A stream cannot be resynchronised after a framing error: close it.
                    Stats::bump(&shared.stats.malformed_tcp);
                    tracing::warn!(event = "transport.tcp_framing", remote = %remote, error = %e, "closing connection");
                    break 'read;
                }
            }
        }
    }
    shared.tcp.unregister(id, remote);
    drop(writer_task); // finishes once the queued messages are written
}
