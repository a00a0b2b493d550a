//! What a transaction leaves behind once its final answer is out (RFC 3261 §17.2: Timers J
//! and L). The full record goes at once; its key stays, with the answer's bytes when a
//! retransmitted request must get them again, until the linger is over.

use tokio::time::Instant;

use super::Proxy;
use super::timer::{Lane, Timer};
use super::transaction::{Answered, ServerKey, ServerSide, TxId};
use crate::peer::Transport;

impl Proxy {
    /// Transaction `id` is finished: an INVITE answered 2xx, or a non-INVITE answered. Over
    /// a reliable transport a non-INVITE needs no linger (nothing is retransmitted).
    pub(super) fn conclude(&mut self, now: Instant, id: TxId, answered: Option<Box<Answered>>) {
        let Some(tx) = self.txs.remove(&id) else { return };
        if let Some(mut b) = tx.branch {
            b.settle(&mut self.timers);
            self.by_branch.remove(&b.id);
        }
        let ours = matches!(self.by_server.get(&tx.server_key), Some(ServerSide::Live(x)) if *x == id);
        if !ours {
            return;
        }
        if tx.is_invite || tx.reply_to.transport == Transport::Udp {
            self.by_server.insert(tx.server_key, ServerSide::Done(answered));
            self.lingering += 1;
            self.timers.after(now, Lane::Linger, Timer::Linger(tx.server_key));
        } else {
            self.by_server.remove(&tx.server_key);
        }
    }

    /// A finished transaction's linger is over.
    pub(super) fn linger_over(&mut self, key: ServerKey) {
        if matches!(self.by_server.get(&key), Some(ServerSide::Done(_))) {
            self.by_server.remove(&key);
            self.lingering = self.lingering.saturating_sub(1);
        }
    }
}
