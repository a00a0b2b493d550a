//! SIP over TLS end to end: certificates made in the test with rcgen, a caller over TLS to a
//! UDP PBX, a UDP caller to a PBX over TLS (sluice verifying its certificate against the
//! configured CA, with SNI), a gateway whose certificate is not trusted, and a certificate
//! reload that keeps the connections already up.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use sluice::peer::Transport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A CA and a certificate it signed for 127.0.0.1 / localhost.
struct Pki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
    cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

fn pki(name: &str) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    Pki {
        ca_pem: ca.pem(),
        ca_der: ca.der().clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().clone(),
        key_der: key.serialize_der(),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-tls-{name}-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes sluice's certificate, key and the CA it trusts for gateways.
fn write_files(d: &Path, own: &Pki, gateways_ca: &str) -> (PathBuf, PathBuf, PathBuf) {
    let (cert, key, ca) = (d.join("cert.pem"), d.join("key.pem"), d.join("ca.pem"));
    std::fs::write(&cert, &own.cert_pem).unwrap();
    std::fs::write(&key, &own.key_pem).unwrap();
    std::fs::write(&ca, gateways_ca).unwrap();
    (cert, key, ca)
}

fn config(files: &(PathBuf, PathBuf, PathBuf), gateway: &str, admin: bool) -> String {
    let admin = if admin { "admin = \"127.0.0.1:0\"\n" } else { "" };
    format!(
        "[server]\nlisten = [\"udp://127.0.0.1:0\", \"tls://127.0.0.1:0\"]\n{admin}tls_cert = \"{}\"\ntls_key = \"{}\"\ntls_ca = \"{}\"\n\
         [log]\nlevel = \"warn\"\n[[carrier]]\nname = \"pbx\"\ngateways = [\"{gateway}\"]\n\
         [[route]]\nprefix = \"\"\ncarriers = [\"pbx\"]\n",
        files.0.display(),
        files.1.display(),
        files.2.display()
    )
}

/// A TLS client trusting `ca`.
async fn tls_client(
    to: SocketAddr,
    ca: &CertificateDer<'static>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(to).await?;
    TlsConnector::from(Arc::new(config)).connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await
}

fn acceptor(p: &Pki) -> TlsAcceptor {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(p.key_der.clone()));
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![p.cert_der.clone()], key)
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

/// SIP messages read off a stream, framed by Content-Length.
struct Reader {
    buf: Vec<u8>,
}

impl Reader {
    async fn next<S: tokio::io::AsyncRead + Unpin>(&mut self, s: &mut S, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: ").or_else(|| l.strip_prefix("l: ")))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    let msg: Vec<u8> = self.buf.drain(..end + 4 + len).collect();
                    return Some(String::from_utf8_lossy(&msg).into_owned());
                }
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }
}

fn tls_invite(local: SocketAddr, id: &str) -> String {
    format!(
        "INVITE sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bK{id}\r\nMax-Forwards: 70\r\n\
         From: <sip:caller@x>;tag=caller-{id}\r\nTo: <sip:100@x>\r\nCall-ID: {id}\r\nCSeq: 1 INVITE\r\n\
         Contact: <sips:caller@{local}>\r\nContent-Length: 0\r\n\r\n"
    )
}

/// A caller over TLS, the PBX over UDP: the call is answered and hung up over the caller's
/// connection; sluice's Via toward the PBX is UDP, and it record-routes twice (a `sips:`
/// entry for the TLS leg, a `sip:` one for the UDP leg).
#[tokio::test]
async fn a_caller_over_tls_reaches_a_udp_pbx() {
    let own = pki("sluice");
    let d = dir("caller");
    let files = write_files(&d, &own, &own.ca_pem);
    let pbx = Endpoint::udp().await;
    let uri = pbx.uri();
    let seen = spawn_pbx(pbx, Pbx::Answer);
    let running = start(&config(&files, &uri, false)).await;
    let proxy = running.addr(Transport::Tls).unwrap();
    let mut caller = tls_client(proxy, &own.ca_der).await.expect("sluice's certificate verifies");
    let local = caller.get_ref().0.local_addr().unwrap();
    caller.write_all(tls_invite(local, "tls-1").as_bytes()).await.unwrap();
    let mut reader = Reader { buf: Vec::new() };
    let mut ok = None;
    while let Some(m) = reader.next(&mut caller, WAIT).await {
        if m.starts_with("SIP/2.0 200") {
            ok = Some(m);
            break;
        }
    }
    let ok = ok.expect("200 OK over the TLS connection");
    let rr = headers(&ok, "Record-Route");
    assert_eq!(rr.len(), 2, "{ok}");
    assert!(rr.iter().any(|r| r.starts_with("<sips:127.0.0.1:")), "{rr:?}");
    assert!(rr.iter().any(|r| r.starts_with("<sip:127.0.0.1:")), "{rr:?}");
    let invite = seen.lock().unwrap().iter().find(|m| m.starts_with("INVITE ")).cloned().unwrap();
    let vias = headers(&invite, "Via");
    assert!(vias[0].starts_with("SIP/2.0/UDP "), "sluice's own Via on the UDP leg: {vias:?}");
    assert!(vias[1].starts_with("SIP/2.0/TLS "), "the caller's: {vias:?}");

    let route: Vec<String> = rr.iter().rev().map(|r| format!("Route: {r}\r\n")).collect();
    let to = header(&ok, "To").unwrap();
    let bye = format!(
        "BYE sip:pbx@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bKbye1\r\nMax-Forwards: 70\r\n{}\
         From: <sip:caller@x>;tag=caller-tls-1\r\nTo: {to}\r\nCall-ID: tls-1\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        route.concat()
    );
    caller.write_all(bye.as_bytes()).await.unwrap();
    let mut bye_ok = false;
    while let Some(m) = reader.next(&mut caller, WAIT).await {
        if m.starts_with("SIP/2.0 200") && header(&m, "CSeq") == Some("2 BYE") {
            bye_ok = true;
            break;
        }
    }
    assert!(bye_ok, "the BYE is answered over TLS");
    assert_eq!(count(&seen, "BYE"), 1);
    let _ = std::fs::remove_dir_all(&d);
}

/// Accepts one TLS connection and plays a PBX on it: every INVITE gets 200, every BYE 200.
/// Returns the requests seen.
fn spawn_tls_pbx(listener: TcpListener, acceptor: TlsAcceptor) -> Arc<std::sync::Mutex<Vec<String>>> {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let Ok((tcp, _)) = listener.accept().await else { return };
        let Ok(mut tls) = acceptor.accept(tcp).await else { return };
        let mut reader = Reader { buf: Vec::new() };
        while let Some(m) = reader.next(&mut tls, Duration::from_secs(30)).await {
            if m.starts_with("SIP/2.0") {
                continue;
            }
            log.lock().unwrap().push(m.clone());
            let id = header(&m, "Call-ID").unwrap_or_default().to_string();
            let reply = if m.starts_with("INVITE ") || m.starts_with("BYE ") {
                respond(&m, 200, "OK", Some(&format!("pbx-{id}")), "", None)
            } else {
                continue;
            };
            if tls.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    seen
}

/// A UDP caller, the PBX over TLS with a certificate from the CA sluice is configured to
/// trust: the INVITE leaves with a TLS Via and a `sips:` Record-Route, the BYE reuses the
/// connection.
#[tokio::test]
async fn a_udp_caller_reaches_a_pbx_over_tls() {
    let own = pki("sluice");
    let gateway = pki("carrier");
    let d = dir("gateway");
    let files = write_files(&d, &own, &gateway.ca_pem);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = format!("tls://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let seen = spawn_tls_pbx(listener, acceptor(&gateway));
    let running = start(&config(&files, &gw, false)).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    caller.send(proxy, invite(&caller, "to-tls", "to-tls", "100", proxy).as_bytes()).await;
    let got = finals(&mut caller, Duration::from_millis(1500)).await;
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![200], "{got:?}");
    let invite_seen = seen.lock().unwrap().first().cloned().expect("the PBX got the INVITE over TLS");
    assert!(headers(&invite_seen, "Via")[0].starts_with("SIP/2.0/TLS "), "{invite_seen}");
    assert!(headers(&invite_seen, "Record-Route").iter().any(|r| r.starts_with("<sips:")), "{invite_seen}");
    hang_up_answered(&mut caller, proxy, &got).await;
    let bye = finals(&mut caller, Duration::from_millis(1500)).await;
    assert!(
        bye.iter().any(|(s, m)| *s == 200 && header(m, "CSeq").is_some_and(|c| c.ends_with("BYE"))),
        "{bye:?}"
    );
    assert!(seen.lock().unwrap().iter().any(|m| m.starts_with("BYE ")), "on the same TLS connection");
    assert_eq!(running.shared.tls_conns.len(), 1, "one connection to the gateway, reused");
    let _ = std::fs::remove_dir_all(&d);
}

/// A gateway whose certificate does not chain to the configured CA never gets the INVITE:
/// the handshake fails, is counted, and the caller gets an answer (no gateway left).
#[tokio::test]
async fn an_untrusted_gateway_certificate_is_refused() {
    let own = pki("sluice");
    let trusted = pki("carrier");
    let impostor = pki("impostor");
    let d = dir("untrusted");
    let files = write_files(&d, &own, &trusted.ca_pem);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = format!("tls://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let seen = spawn_tls_pbx(listener, acceptor(&impostor));
    let running = start(&config(&files, &gw, false)).await;
    let proxy = running.addr(Transport::Udp).unwrap();
    let mut caller = Endpoint::udp().await;
    caller.send(proxy, invite(&caller, "impostor", "impostor", "100", proxy).as_bytes()).await;
    let got = finals(&mut caller, Duration::from_millis(2000)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].0 >= 400, "{got:?}");
    assert!(seen.lock().unwrap().is_empty(), "nothing reached the impostor");
    assert!(running.shared.stats.tls_handshake_failed.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    let _ = std::fs::remove_dir_all(&d);
}

/// OPTIONS to sluice itself over a TLS connection: its 200 answer.
async fn ping<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    local: SocketAddr,
    proxy: SocketAddr,
    n: u32,
) -> bool {
    let options = format!(
        "OPTIONS sip:127.0.0.1:{} SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bKping{n}\r\nMax-Forwards: 70\r\n\
         From: <sip:mon@x>;tag=mon{n}\r\nTo: <sip:127.0.0.1>\r\nCall-ID: ping-{n}-{local}\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n",
        proxy.port()
    );
    if s.write_all(options.as_bytes()).await.is_err() {
        return false;
    }
    let mut reader = Reader { buf: Vec::new() };
    reader.next(s, WAIT).await.is_some_and(|m| m.starts_with("SIP/2.0 200"))
}

/// A reload with a new certificate: new connections get it (a client trusting only the old
/// CA is refused), the connection made before the reload goes on working.
#[tokio::test]
async fn a_certificate_reload_keeps_connections_and_serves_the_new_certificate() {
    let old = pki("old");
    let new = pki("new");
    let d = dir("reload");
    let files = write_files(&d, &old, &old.ca_pem);
    let path = d.join("sluice.toml");
    std::fs::write(&path, config(&files, "udp://127.0.0.1:5", true)).unwrap();
    let server = sluice::server::Server::bind(sluice::config::Config::load(&path).unwrap()).await.unwrap();
    let running = server.start(tokio_util::sync::CancellationToken::new());
    let proxy = running.addr(Transport::Tls).unwrap();
    let mut before = tls_client(proxy, &old.ca_der).await.expect("the old certificate");
    let local = before.get_ref().0.local_addr().unwrap();
    assert!(ping(&mut before, local, proxy, 1).await);

    std::fs::write(&files.0, &new.cert_pem).unwrap();
    std::fs::write(&files.1, &new.key_pem).unwrap();
    let (code, body) = http(running.admin.unwrap(), "POST", "/reload").await;
    assert_eq!(code, 200, "{body}");

    assert!(
        tls_client(proxy, &old.ca_der).await.is_err(),
        "a new connection no longer gets the old certificate"
    );
    let mut after = tls_client(proxy, &new.ca_der).await.expect("the new certificate");
    let after_local = after.get_ref().0.local_addr().unwrap();
    assert!(ping(&mut after, after_local, proxy, 2).await);
    assert!(ping(&mut before, local, proxy, 3).await, "the connection from before the reload still works");

    // A broken key file is refused by the reload; the certificate in use stays.
    std::fs::write(&files.1, "not a key").unwrap();
    let (code, body) = http(running.admin.unwrap(), "POST", "/reload").await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("tls_key"), "{body}");
    assert!(tls_client(proxy, &new.ca_der).await.is_ok());
    let _ = std::fs::remove_dir_all(&d);
}

/// Config checks: a tls:// listener without a certificate, a missing file.
#[test]
fn tls_settings_are_checked_with_file_and_line() {
    let text = "[server]\nlisten = [\"tls://127.0.0.1:5061\"]\n[[carrier]]\nname = \"a\"\ngateways = [\"tls://127.0.0.1:5071\"]\n[[route]]\nprefix = \"\"\ncarriers = [\"a\"]\n";
    let errs = sluice::config::Config::parse("t.toml", text).unwrap_err().0;
    assert_eq!(errs[0].key, "server.tls_cert", "{errs:?}");
    let missing = text.replace(
        "[server]\n",
        "[server]\ntls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"\n",
    );
    let errs = sluice::config::Config::parse("t.toml", &missing).unwrap_err().0;
    assert_eq!((errs[0].key.as_str(), errs[0].line), ("server.tls_cert", Some(2)), "{errs:?}");
    assert!(errs[0].message.contains("/nonexistent/c.pem"), "{errs:?}");
}
