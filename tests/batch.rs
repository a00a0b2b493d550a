//! Batched datagram I/O over real loopback sockets: every datagram waiting is taken, in
//! order, with its sender; an oversize one shows as filling its buffer (the loop drops and
//! counts it) without disturbing its neighbours; queued sends reach each destination in
//! order, however many there are per system call.

use std::net::SocketAddr;

use bytes::Bytes;
use sluice::transport::batch::{BATCH, Inbox, Outbox};
use tokio::net::UdpSocket;

async fn socket() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// Receives until `want` datagrams came or a second passes with none.
async fn drain(inbox: &mut Inbox, socket: &UdpSocket, want: usize) -> (Vec<(Vec<u8>, SocketAddr)>, usize) {
    let mut got = Vec::new();
    let mut calls = 0;
    while got.len() < want {
        let ready = tokio::time::timeout(std::time::Duration::from_secs(1), socket.readable()).await;
        if ready.is_err() {
            break;
        }
        match inbox.recv(socket) {
            Ok(n) => {
                calls += 1;
                assert!(n <= BATCH);
                for i in 0..n {
                    let (bytes, from) = inbox.get(i).unwrap();
                    got.push((bytes.to_vec(), from));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
    }
    (got, calls)
}

#[tokio::test]
async fn every_waiting_datagram_is_taken_in_order_and_oversize_ones_stand_out() {
    let (rx, a, b) = (socket().await, socket().await, socket().await);
    let to = rx.local_addr().unwrap();
    let total = 3 * BATCH + 5;
    for i in 0..total {
        let from = if i % 2 == 0 { &a } else { &b };
        let body = if i == 20 { vec![b'x'; 3000] } else { format!("message {i}").into_bytes() };
        from.send_to(&body, to).await.unwrap();
    }
    let mut inbox = Inbox::new(1025);
    let (got, calls) = drain(&mut inbox, &rx, total).await;
    assert_eq!(got.len(), total, "every datagram");
    assert!(calls >= total.div_ceil(BATCH) && calls < total, "batched: {calls} calls for {total}");
    for (i, (bytes, from)) in got.iter().enumerate() {
        let sender = if i % 2 == 0 { &a } else { &b };
        assert_eq!(*from, sender.local_addr().unwrap(), "datagram {i}'s sender");
        if i == 20 {
            assert_eq!(bytes.len(), 1025, "an oversize datagram fills the buffer (one more than accepted)");
        } else {
            assert_eq!(bytes, format!("message {i}").as_bytes());
        }
    }
}

#[tokio::test]
async fn queued_sends_reach_each_destination_in_order() {
    let (tx, p, q) = (socket().await, socket().await, socket().await);
    let (pa, qa) = (p.local_addr().unwrap(), q.local_addr().unwrap());
    let mut outbox = Outbox::default();
    let total = 2 * BATCH + 7;
    for i in 0..total {
        outbox.push(if i % 3 == 0 { qa } else { pa }, Bytes::from(format!("out {i}")));
    }
    // An IPv6 destination has no socket here: it is handed back, not lost.
    let v6: SocketAddr = "[::1]:9".parse().unwrap();
    outbox.push(v6, Bytes::from_static(b"v6"));
    let mut handed_back = Vec::new();
    tx.writable().await.unwrap(); // as the receive loop's socket is by the time it sends
    outbox.flush(Some(&tx), true, |to, data| handed_back.push((to, data)));
    assert!(handed_back.is_empty(), "loopback takes every IPv4 datagram");
    outbox.flush(None, false, |to, data| handed_back.push((to, data)));
    assert_eq!(handed_back, vec![(v6, Bytes::from_static(b"v6"))]);
    assert!(outbox.is_empty());

    let (mut inbox_p, mut inbox_q) = (Inbox::new(100), Inbox::new(100));
    let want_q = (0..total).filter(|i| i % 3 == 0).count();
    let (at_p, _) = drain(&mut inbox_p, &p, total - want_q).await;
    let (at_q, _) = drain(&mut inbox_q, &q, want_q).await;
    let expect = |keep: fn(usize) -> bool| -> Vec<Vec<u8>> {
        (0..total).filter(|i| keep(*i)).map(|i| format!("out {i}").into_bytes()).collect()
    };
    assert_eq!(at_p.into_iter().map(|(b, _)| b).collect::<Vec<_>>(), expect(|i| i % 3 != 0));
    assert_eq!(at_q.into_iter().map(|(b, _)| b).collect::<Vec<_>>(), expect(|i| i % 3 == 0));
}
