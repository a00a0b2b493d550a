//! The UDP listener: one receive loop per socket, each datagram one message.

use std::sync::Arc;

use tokio::net::UdpSocket;

use super::Shared;
use crate::peer::Peer;
use crate::stats::Stats;

/// Receives datagrams until shutdown. A datagram larger than `max_message` (seen as one that
/// fills the buffer) is dropped and counted.
pub async fn serve(shared: Arc<Shared>, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; shared.max_message + 1];
    let mut out = Vec::new();
    loop {
        let received = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = socket.recv_from(&mut buf) => r,
        };
        match received {
            Ok((n, _)) if n > shared.max_message => Stats::bump(&shared.stats.oversize),
            Ok((n, from)) => shared.handle(Peer::udp(from), &buf[..n], &mut out),
            // ICMP port unreachable surfaces as ConnectionReset on some platforms: not fatal.
            Err(e) => {
                tracing::debug!(event = "transport.udp_error", error = %e, "recv_from failed")
            }
        }
    }
}
