//! What a transaction leaves behind once its final answer is out (RFC 3261 §17.2: Timers J
//! and L). The full record goes at once; its key stays, with the answer's bytes when a
//! retransmitted request must get them again, until the linger is over.

use bytes::Bytes;
use tokio::time::Instant;

use super::Proxy;
use super::transaction::{Answered, ServerKey, ServerSide, TxId};
use crate::peer::Transport;

impl Proxy {
    /// Transaction `id` is finished with `response`: an INVITE answered 2xx (its key alone
    /// lingers: retransmissions are absorbed silently and later 2xx retransmissions travel
    /// statelessly along the Via), or a non-INVITE answered (over UDP the answer lingers for
    /// retransmitted requests; over a reliable transport nothing is retransmitted).
    pub(super) fn conclude(&mut self, now: Instant, id: TxId, response: Option<Bytes>) {
        let Some(tx) = self.txs.remove(&id) else { return };
        if let Some(mut b) = tx.branch {
            b.settle(&mut self.timers);
            self.by_branch.remove(&b.id);
        }
        let ours = matches!(self.by_server.get(&tx.server_key), Some(ServerSide::Live(x)) if *x == id);
        if !ours {
            return;
        }
        let udp = tx.reply_to.transport == Transport::Udp;
        if tx.is_invite || udp {
            let answered = response
                .filter(|_| !tx.is_invite && udp)
                .map(|response| Box::new(Answered { to: tx.reply_to.addr, response }));
            self.by_server.insert(tx.server_key, ServerSide::Done(answered));
            self.lingering += 1;
            self.timers.linger(now, tx.server_key);
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
