//! Batched datagram I/O (Linux `recvmmsg`/`sendmmsg`): under load a socket holds several
//! datagrams by the time its receive loop wakes, and one system call takes them all; the
//! sends their processing produces leave in one call too. With one datagram waiting it is
//! the same work as `recvfrom`/`sendto`.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use bytes::Bytes;
use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams per system call. A batch is processed before its sends go out, so this also
/// bounds the delay a batch adds to its first answer (16 messages of ~20 µs each).
pub const BATCH: usize = 16;

/// Receive buffers for one socket's loop, and what the last call filled.
pub struct Inbox {
    bufs: Vec<Vec<u8>>,
    got: Vec<(usize, SocketAddr)>,
}

impl Inbox {
    /// `size` bytes per datagram (one more than the largest accepted, to see oversize ones).
    pub fn new(size: usize) -> Self {
        Self { bufs: (0..BATCH).map(|_| vec![0u8; size]).collect(), got: Vec::with_capacity(BATCH) }
    }

    /// Takes up to [`BATCH`] waiting datagrams without blocking; `WouldBlock` when none is
    /// waiting (and the socket's readiness is cleared, as for any tokio I/O).
    pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        self.got.clear();
        let (bufs, got) = (&mut self.bufs, &mut self.got);
        let fd = socket.as_raw_fd();
        socket.try_io(Interest::READABLE, || {
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(bufs.len(), None);
            let mut slices: Vec<[IoSliceMut<'_>; 1]> =
                bufs.iter_mut().map(|b| [IoSliceMut::new(b.as_mut_slice())]).collect();
            let results = recvmmsg(fd, &mut headers, slices.iter_mut(), MsgFlags::MSG_DONTWAIT, None)
                .map_err(io::Error::from)?;
            for r in results {
                if let Some(from) = r.address.as_ref().and_then(to_std) {
                    got.push((r.bytes, from));
                }
            }
            Ok(got.len())
        })
    }

    /// Datagram `i` of the last call: its bytes (up to the buffer's size) and its sender.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        let (n, from) = *self.got.get(i)?;
        let buf = self.bufs.get(i)?;
        Some((buf.get(..n).unwrap_or(buf), from))
    }
}

/// UDP sends queued while a batch is processed, sent together after it.
#[derive(Default)]
pub struct Outbox {
    queued: Vec<(SocketAddr, Bytes)>,
}

impl Outbox {
    pub fn push(&mut self, to: SocketAddr, data: Bytes) {
        self.queued.push((to, data));
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Sends what is queued for `v4` destinations (or the others) on `socket`, in order;
    /// whatever the kernel does not take now (a full buffer), or all of it without a socket,
    /// goes to `rest`, and a datagram the kernel refuses (an ICMP error reported on the
    /// socket) is dropped.
    pub fn flush(&mut self, socket: Option<&UdpSocket>, v4: bool, mut rest: impl FnMut(SocketAddr, Bytes)) {
        let (mine, others): (Vec<_>, Vec<_>) = self.queued.drain(..).partition(|(to, _)| to.is_ipv4() == v4);
        self.queued = others;
        let mut start = 0;
        while let Some(chunk) = mine.get(start..(start + BATCH).min(mine.len())).filter(|c| !c.is_empty()) {
            let Some(socket) = socket else { break };
            match send(socket, chunk) {
                Ok(0) => break,
                Ok(n) => start += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(event = "transport.send_failed", error = %e, "UDP send failed");
                    start += 1;
                }
            }
        }
        for (to, data) in mine.into_iter().skip(start) {
            rest(to, data);
        }
    }
}

fn send(socket: &UdpSocket, chunk: &[(SocketAddr, Bytes)]) -> io::Result<usize> {
    let fd = socket.as_raw_fd();
    socket.try_io(Interest::WRITABLE, || {
        let slices: Vec<[IoSlice<'_>; 1]> = chunk.iter().map(|(_, d)| [IoSlice::new(d)]).collect();
        let addrs: Vec<Option<SockaddrStorage>> =
            chunk.iter().map(|(to, _)| Some(SockaddrStorage::from(*to))).collect();
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(chunk.len(), None);
        let none: [ControlMessage<'_>; 0] = [];
        let sent = sendmmsg(fd, &mut headers, slices.iter(), addrs, none, MsgFlags::MSG_DONTWAIT)
            .map_err(io::Error::from)?;
        Ok(sent.count())
    })
}

fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    addr.as_sockaddr_in6().map(|v6| SocketAddr::V6(SocketAddrV6::from(*v6)))
}
