//! The UDP listener: one receive loop per socket, each datagram one message, taken and
//! answered in batches (`batch.rs`) when several are waiting.

use std::sync::Arc;

use tokio::net::UdpSocket;

use super::Shared;
use super::batch::{Inbox, Outbox};
use crate::peer::Peer;
use crate::stats::Stats;

/// Batches a receive loop takes before it lets the other tasks of its worker run: about
/// 64 datagrams, ~1-2 ms of work.
const YIELD_EVERY: u32 = 4;

/// Receives datagrams until shutdown. A datagram larger than `max_message` (seen as one that
/// fills the buffer) is dropped and counted.
pub async fn serve(shared: Arc<Shared>, socket: Arc<UdpSocket>) {
    let mut inbox = Inbox::new(shared.max_message + 1);
    let mut outbox = Outbox::default();
    let mut out = Vec::new();
    let mut batches = 0u32;
    loop {
        // Waiting for readiness (immediate while datagrams remain) also lets tokio's
        // budget move other tasks on this worker between batches.
        let ready = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = socket.readable() => r,
        };
        if let Err(e) = ready {
            tracing::warn!(event = "transport.udp_error", error = %e, "UDP socket failed");
            return;
        }
        match inbox.recv(&socket) {
            Ok(n) => {
                for i in 0..n {
                    let Some((bytes, from)) = inbox.get(i) else { continue };
                    if bytes.len() > shared.max_message {
                        Stats::bump(&shared.stats.oversize);
                        continue;
                    }
                    shared.handle_batched(Peer::udp(from), bytes, &mut out, &mut outbox);
                }
                shared.flush(&mut outbox);
                // Under a steady stream the socket is always ready and tokio's budget would
                // let this loop run ~128 batches (tens of ms) before other tasks on this
                // worker (timers, the cluster's admissions) get their turn.
                batches = batches.wrapping_add(1);
                if batches % YIELD_EVERY == 0 {
                    tokio::task::yield_now().await;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            // ICMP port unreachable surfaces as ConnectionRefused on the next receive: not fatal.
            Err(e) => {
                tracing::debug!(event = "transport.udp_error", error = %e, "recvmmsg failed")
            }
        }
    }
}
