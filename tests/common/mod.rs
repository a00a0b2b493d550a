//! Test harness: starts sluice in-process on ephemeral ports and plays caller and PBX with
//! plain sockets, so every test talks real SIP bytes over real sockets.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use sluice::config::Config;
use sluice::peer::Transport;
use sluice::server::{Running, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

pub mod scenario;
pub use scenario::respond;

pub const WAIT: Duration = Duration::from_secs(3);

/// A free local port number (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// Starts sluice with `config` (TOML). `{UDP}`/`{TCP}` in it are not special: callers write
/// listen addresses themselves (`udp://127.0.0.1:0`). In a test binary named `*_cluster`
/// the limits are kept in Redis (see [`cluster_section`]).
pub async fn start(config: &str) -> Running {
    let config = match cluster_section() {
        Some(section) if !config.contains("[cluster]") => format!("{config}\n{section}"),
        _ => config.to_string(),
    };
    let config = Config::parse("test.toml", &config).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
    let server = Server::bind(config).await.expect("bind");
    server.start(CancellationToken::new())
}

/// The usual config: sluice on UDP+TCP ephemeral ports, one carrier with `gateways`.
pub fn config_with(gateways: &[String], extra_server: &str, extra: &str) -> String {
    let gws: Vec<String> = gateways.iter().map(|g| format!("\"{g}\"")).collect();
    format!(
        "[server]\nlisten = [\"udp://127.0.0.1:0\", \"tcp://127.0.0.1:0\"]\n{extra_server}\n\
         [log]\nlevel = \"warn\"\n\
         [[carrier]]\nname = \"pbx\"\ngateways = [{}]\n\
         [[route]]\nprefix = \"\"\ncarriers = [\"pbx\"]\n{extra}\n",
        gws.join(", ")
    )
}

/// One side of a SIP conversation over UDP or TCP.
pub struct Endpoint {
    pub transport: Transport,
    udp: Option<UdpSocket>,
    tcp_listener: Option<TcpListener>,
    tcp: Option<TcpStream>,
    buf: Vec<u8>,
    pub local: SocketAddr,
}

impl Endpoint {
    pub async fn udp() -> Self {
        Self::udp_on("127.0.0.1").await
    }

    /// A UDP endpoint on a given loopback address (127.0.0.2, 127.0.0.3...: other "hosts").
    pub async fn udp_on(ip: &str) -> Self {
        Self::udp_at(&format!("{ip}:0")).await
    }

    /// A UDP endpoint bound to exactly `addr` (IP:PORT).
    pub async fn udp_at(addr: &str) -> Self {
        let s = UdpSocket::bind(addr).await.unwrap();
        let local = s.local_addr().unwrap();
        Self {
            transport: Transport::Udp,
            udp: Some(s),
            tcp_listener: None,
            tcp: None,
            buf: Vec::new(),
            local,
        }
    }

    /// A TCP server endpoint (a PBX): accepts the proxy's connection on first receive.
    pub async fn tcp_server() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = l.local_addr().unwrap();
        Self {
            transport: Transport::Tcp,
            udp: None,
            tcp_listener: Some(l),
            tcp: None,
            buf: Vec::new(),
            local,
        }
    }

    /// A TCP client endpoint (a caller) connected to `to`.
    pub async fn tcp_client(to: SocketAddr) -> Self {
        Self::connected(TcpStream::connect(to).await.unwrap())
    }

    fn connected(s: TcpStream) -> Self {
        let local = s.local_addr().unwrap();
        Self {
            transport: Transport::Tcp,
            udp: None,
            tcp_listener: None,
            tcp: Some(s),
            buf: Vec::new(),
            local,
        }
    }

    /// A TCP client endpoint connected to `to` from a given loopback address (another host).
    pub async fn tcp_client_from(ip: &str, to: SocketAddr) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        Self::connected(socket.connect(to).await.unwrap())
    }

    pub fn uri(&self) -> String {
        format!("{}://{}", if self.transport == Transport::Udp { "udp" } else { "tcp" }, self.local)
    }

    pub fn via_transport(&self) -> &'static str {
        if self.transport == Transport::Udp { "UDP" } else { "TCP" }
    }

    pub async fn send(&mut self, to: SocketAddr, data: &[u8]) {
        match self.transport {
            Transport::Udp => {
                self.udp.as_ref().unwrap().send_to(data, to).await.unwrap();
            }
            Transport::Tcp | Transport::Tls => {
                self.accept_if_needed().await;
                self.tcp.as_mut().unwrap().write_all(data).await.unwrap();
            }
        }
    }

    async fn accept_if_needed(&mut self) {
        if self.tcp.is_none() {
            let l = self.tcp_listener.as_ref().expect("no connection and no listener");
            let (s, _) =
                tokio::time::timeout(WAIT, l.accept()).await.expect("proxy never connected").unwrap();
            self.tcp = Some(s);
        }
    }

    /// The next message and who sent it, or `None` after `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<(String, SocketAddr)> {
        match self.transport {
            Transport::Udp => {
                let mut buf = vec![0u8; 70_000];
                let (n, from) = tokio::time::timeout(wait, self.udp.as_ref().unwrap().recv_from(&mut buf))
                    .await
                    .ok()?
                    .ok()?;
                Some((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
            }
            Transport::Tcp | Transport::Tls => {
                if self.tcp.is_none() {
                    let l = self.tcp_listener.as_ref()?;
                    let (s, _) = tokio::time::timeout(wait, l.accept()).await.ok()?.ok()?;
                    self.tcp = Some(s);
                }
                let deadline = tokio::time::Instant::now() + wait;
                loop {
                    if let Ok(sluice::sip::framing::Frame::Message { len }) =
                        sluice::sip::framing::frame(&self.buf, 1 << 20)
                    {
                        let msg: Vec<u8> = self.buf.drain(..len).collect();
                        let peer = self.tcp.as_ref()?.peer_addr().ok()?;
                        return Some((String::from_utf8_lossy(&msg).into_owned(), peer));
                    }
                    let mut chunk = [0u8; 8192];
                    let n = tokio::time::timeout_at(deadline, self.tcp.as_mut()?.read(&mut chunk))
                        .await
                        .ok()?
                        .ok()?;
                    if n == 0 {
                        return None;
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }

    /// The next UDP datagram as raw bytes.
    pub async fn recv_bytes(&mut self) -> Vec<u8> {
        let mut buf = vec![0u8; 70_000];
        let (n, _) = tokio::time::timeout(WAIT, self.udp.as_ref().expect("UDP only").recv_from(&mut buf))
            .await
            .expect("no datagram")
            .unwrap();
        buf.truncate(n);
        buf
    }

    pub async fn recv(&mut self) -> (String, SocketAddr) {
        self.recv_within(WAIT).await.expect("expected a SIP message, got none")
    }

    /// Receives until a message whose first line starts with `prefix` (skipping others).
    pub async fn expect(&mut self, prefix: &str) -> (String, SocketAddr) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some((m, from)) = self.recv_within(left).await else {
                panic!("expected `{prefix}`, got nothing");
            };
            if m.starts_with(prefix) {
                return (m, from);
            }
        }
    }

    /// True when the TCP connection was closed by the other side within `wait`.
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        let Some(s) = self.tcp.as_mut() else {
            return false;
        };
        matches!(tokio::time::timeout(wait, s.read(&mut chunk)).await, Ok(Ok(0)) | Ok(Err(_)))
    }
}

/// The value of the first header `name` (case-insensitive, long form only).
pub fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.split("\r\n").skip(1).take_while(|l| !l.is_empty()).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

pub fn headers<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.split("\r\n")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
        .collect()
}

pub fn status(msg: &str) -> u16 {
    msg.get(8..11).and_then(|s| s.parse().ok()).unwrap_or(0)
}

pub const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

/// An INVITE from `caller` to `number` through the proxy.
pub fn invite(caller: &Endpoint, call_id: &str, branch: &str, number: &str, proxy: SocketAddr) -> String {
    format!(
        "INVITE sip:{number}@{proxy} SIP/2.0\r\n\
         Via: SIP/2.0/{t} {local};branch=z9hG4bK{branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"Alice\" <sip:alice@{local}>;tag=caller-{call_id}\r\n\
         To: <sip:{number}@{proxy}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:alice@{local};transport={tl}>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {len}\r\n\r\n{SDP}",
        t = caller.via_transport(),
        tl = caller.via_transport().to_lowercase(),
        local = caller.local,
        len = SDP.len()
    )
}

/// An in-dialog request from one side, routed through the proxy via `route` (the Record-Route
/// values the side learned), with the dialog's tags.
#[allow(clippy::too_many_arguments)]
pub fn in_dialog(
    method: &str,
    from: &Endpoint,
    target_uri: &str,
    call_id: &str,
    from_tag: &str,
    to_tag: &str,
    cseq: u32,
    route: &[&str],
    branch: &str,
) -> String {
    let mut routes = String::new();
    for r in route {
        routes.push_str(&format!("Route: {r}\r\n"));
    }
    format!(
        "{method} {target_uri} SIP/2.0\r\n\
         Via: SIP/2.0/{t} {local};branch=z9hG4bK{branch};rport\r\n\
         {routes}Max-Forwards: 70\r\n\
         From: <sip:x@{local}>;tag={from_tag}\r\n\
         To: <sip:y@example.com>;tag={to_tag}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} {method}\r\n\
         Content-Length: 0\r\n\r\n",
        t = from.via_transport(),
        local = from.local,
    )
}

/// The tag parameter of a From/To value.
pub fn tag_of(value: &str) -> Option<&str> {
    value.split(';').find_map(|p| p.trim().strip_prefix("tag=")).map(str::trim)
}

/// Polls a condition on the running proxy's core for up to `WAIT`.
pub async fn eventually(running: &Running, what: &str, f: impl Fn(&sluice::proxy::node::Node) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if f(&running.shared.node) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition never held: {what}");
}

/// Polls a counter until it reaches `at_least` (up to `WAIT`); returns its last value.
pub async fn counter_reaches(counter: &std::sync::atomic::AtomicU64, at_least: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = counter.load(std::sync::atomic::Ordering::Relaxed);
        if v >= at_least || tokio::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How a scripted PBX answers INVITEs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pbx {
    /// 180 then 200 OK.
    Answer,
    /// 486 Busy Here.
    Busy,
    /// 180 and nothing more (until CANCEL: then 200 + 487).
    Ring,
    /// Nothing at all.
    Silent,
}

/// A PBX that answers by itself on a UDP endpoint. Returns the requests it received.
pub fn spawn_pbx(mut ep: Endpoint, mode: Pbx) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let contact = ep.local;
        let mut invites: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        while let Some((msg, from)) = ep.recv_within(Duration::from_secs(3600)).await {
            if msg.starts_with("SIP/2.0") {
                continue;
            }
            log.lock().unwrap().push(msg.clone());
            let call_id = header(&msg, "Call-ID").unwrap_or_default().to_string();
            let tag = format!("pbx-{call_id}");
            let replies: Vec<String> = if msg.starts_with("INVITE ") {
                invites.insert(call_id.clone(), msg.clone());
                match mode {
                    Pbx::Answer => vec![
                        respond(&msg, 180, "Ringing", Some(&tag), "", Some(contact)),
                        respond(&msg, 200, "OK", Some(&tag), "", Some(contact)),
                    ],
                    Pbx::Busy => vec![respond(&msg, 486, "Busy Here", Some(&tag), "", None)],
                    Pbx::Ring => vec![respond(&msg, 180, "Ringing", Some(&tag), "", Some(contact))],
                    Pbx::Silent => vec![],
                }
            } else if msg.starts_with("CANCEL ") {
                let mut r = vec![respond(&msg, 200, "OK", Some(&tag), "", None)];
                if let Some(inv) = invites.get(&call_id) {
                    r.push(respond(inv, 487, "Request Terminated", Some(&tag), "", None));
                }
                r
            } else if msg.starts_with("ACK ") || mode == Pbx::Silent {
                vec![]
            } else {
                vec![respond(&msg, 200, "OK", None, "", None)]
            };
            for r in replies {
                ep.send(from, r.as_bytes()).await;
            }
        }
    });
    seen
}

/// Counts requests of a method a scripted PBX received.
pub fn count(seen: &std::sync::Arc<std::sync::Mutex<Vec<String>>>, method: &str) -> usize {
    seen.lock().unwrap().iter().filter(|m| m.starts_with(&format!("{method} "))).count()
}

/// Collects final responses (status >= 200) arriving at `ep` for `wait`; identical
/// retransmissions (Timer G re-sends an unacknowledged final) are kept once.
pub async fn finals(ep: &mut Endpoint, wait: Duration) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return out;
        }
        match ep.recv_within(left).await {
            Some((m, _)) if m.starts_with("SIP/2.0 ") && status(&m) >= 200 => {
                if !out.iter().any(|(_, seen)| *seen == m) {
                    out.push((status(&m), m));
                }
            }
            Some(_) => {}
            None => return out,
        }
    }
}

/// A minimal HTTP/1.0 request to the admin listener: (status code, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("admin listener");
    s.write_all(format!("{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw)).await.expect("admin answered").unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// Sends BYE for every answered (200) INVITE among `answers`, as the caller, through the
/// proxy (tags as the scripted PBX sets them).
pub async fn hang_up_answered(ep: &mut Endpoint, proxy: SocketAddr, answers: &[(u16, String)]) {
    for (_, ok) in
        answers.iter().filter(|(s, m)| *s == 200 && header(m, "CSeq").is_some_and(|c| c.ends_with("INVITE")))
    {
        let id = header(ok, "Call-ID").unwrap_or_default().to_string();
        let bye = in_dialog(
            "BYE",
            ep,
            "sip:pbx@x",
            &id,
            &format!("caller-{id}"),
            &format!("pbx-{id}"),
            2,
            &[],
            &format!("b{id}"),
        );
        ep.send(proxy, bye.as_bytes()).await;
    }
}

/// For test binaries named `*_cluster`: a `[cluster]` section pointing at this binary's own
/// redis-server (started on first use, stopped when the test process ends) with a database
/// of its own per call, so parallel tests do not share counters.
pub fn cluster_section() -> Option<String> {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU32, Ordering};
    static PORT: OnceLock<Option<u16>> = OnceLock::new();
    static DB: AtomicU32 = AtomicU32::new(0);
    let exe = std::env::current_exe().ok()?;
    let name = exe.file_name()?.to_string_lossy().into_owned();
    if !name.split('-').next().is_some_and(|n| n.ends_with("_cluster")) {
        return None;
    }
    let port = PORT.get_or_init(|| {
        // Free for TCP, which is what Redis listens on (`free_port` asks UDP).
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_or(0, |a| a.port());
        // The server lives as long as this test process: a shell watches our pid.
        let script = format!(
            "redis-server --port {port} --save '' --appendonly no --bind 127.0.0.1 & r=$!; \
             while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; kill $r",
            pid = std::process::id()
        );
        let spawned = std::process::Command::new("sh")
            .args(["-c", &script])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let have_redis = std::process::Command::new("redis-server").arg("--version").output().is_ok();
        if spawned.is_err() || !have_redis {
            assert!(
                !std::env::var("CI").is_ok_and(|v| v == "true"),
                "redis-server is required under CI=true"
            );
            eprintln!("notice: redis-server not found; the flows run with the in-memory store instead");
            return None;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(port);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start");
    });
    let port = (*port)?;
    let db = DB.fetch_add(1, Ordering::Relaxed) % 16;
    Some(format!(
        "[cluster]\nredis = \"redis://127.0.0.1:{port}/{db}\"\nnode = \"test-{db}\"\nheartbeat_ms = 200\ntimeout_ms = 1000\n"
    ))
}

/// Every JSON log line this test process wrote (one global subscriber, as in production).
pub fn log_lines() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    static LOG: std::sync::OnceLock<std::sync::Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_env_filter("info")
            .with_writer(move || Writer(sink.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buf
    })
    .clone()
}

struct Writer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
