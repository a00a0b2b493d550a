//! A new call the shared store did not answer in time is decided by `on_failure` in the
//! core, without asking the shared store again: that second ask would be a blocking round
//! trip on the SIP path, inside the shard, to a store that has just been late.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sluice::config::Config;
use sluice::limit::memory::MemoryStore;
use sluice::limit::redis::Remote;
use sluice::limit::{Demand, Rejection, Reservation, Store};
use sluice::peer::Peer;
use sluice::proxy::Action;
use sluice::proxy::node::Node;
use sluice::stats::Stats;
use tokio::time::Instant;

/// A shared store in the core's eyes (admissions go through `Action::Admit`); it counts
/// what the core asks of it, and keeps the counts in memory.
struct Shared {
    local: MemoryStore,
    asked: AtomicUsize,
    unshared: AtomicUsize,
}

impl Store for Shared {
    fn admit(&self, now: Instant, demands: &[Demand], count_cps: bool) -> Result<Reservation, Rejection> {
        self.asked.fetch_add(1, Ordering::Relaxed);
        self.local.admit(now, demands, count_cps)
    }
    fn admit_unshared(
        &self,
        now: Instant,
        demands: &[Demand],
        count_cps: bool,
    ) -> Result<Reservation, Rejection> {
        self.unshared.fetch_add(1, Ordering::Relaxed);
        self.local.admit(now, demands, count_cps)
    }
    fn release(&self, now: Instant, reservation: Reservation) {
        self.local.release(now, reservation)
    }
    fn asynchronous(&self) -> bool {
        true
    }
    fn moves_egress(&self) -> bool {
        false
    }
}

#[test]
fn a_call_the_shared_store_did_not_answer_is_decided_without_it() {
    let text = "[server]\nlisten = [\"udp://127.0.0.1:5060\"]\n[limits]\nchannels = 10\n[[carrier]]\nname = \"pbx\"\ngateways = [\"udp://127.0.0.1:5070\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"pbx\"]\n";
    let config = Arc::new(Config::parse("t", text).expect("config"));
    let now = Instant::now();
    let store = Arc::new(Shared {
        local: MemoryStore::new(now),
        asked: AtomicUsize::new(0),
        unshared: AtomicUsize::new(0),
    });
    let node = Node::with_store(config, Arc::new(Stats::default()), 3, store.clone());
    let invite = "INVITE sip:100@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKlate;rport\r\nMax-Forwards: 70\r\nFrom: <sip:a@192.0.2.10>;tag=a1\r\nTo: <sip:100@127.0.0.1>\r\nCall-ID: late-1\r\nCSeq: 1 INVITE\r\nContact: <sip:a@192.0.2.10:5060>\r\nContent-Length: 0\r\n\r\n";
    let mut out = Vec::new();
    node.on_message(now, Peer::udp("192.0.2.10:5060".parse().expect("addr")), invite.as_bytes(), &mut out);
    let tx = out
        .iter()
        .find_map(|a| match a {
            Action::Admit { tx, .. } => Some(*tx),
            _ => None,
        })
        .expect("the new call is parked for the shared store");
    out.clear();

    node.on_admission(now, tx, Remote::Unavailable, &mut out);
    let gateway: std::net::SocketAddr = "127.0.0.1:5070".parse().expect("addr");
    assert!(
        out.iter()
            .filter_map(Action::as_send)
            .any(|(to, data)| to.addr == gateway && data.starts_with(b"INVITE")),
        "the call goes on, decided by on_failure"
    );
    assert_eq!(store.asked.load(Ordering::Relaxed), 0, "the shared store is not asked again on the SIP path");
    assert_eq!(store.unshared.load(Ordering::Relaxed), 1);
}
