//! SIP over TLS (RFC 3261 §26) with rustls: the certificate sluice presents on tls://
//! listeners, and the verification of the certificates TLS gateways present (the system's
//! roots, or `[server] tls_ca`; the name checked and sent as SNI is the gateway's host as
//! written). Both are rebuilt from the files on every reload and swapped in atomically:
//! connections already up keep the session they negotiated, new ones get the new files.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{Config, TlsFiles};

/// Why certificates could not be used; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}: {why}")]
    Certs { path: String, why: String },
    #[error("no certificate in {path}")]
    NoCert { path: String },
    #[error("cannot read a private key from {path}: {why}")]
    Key { path: String, why: String },
    #[error("certificate and key do not make a TLS server: {0}")]
    Server(rustls::Error),
    #[error("no usable CA certificate in {path}")]
    NoCa { path: String },
}

impl TlsError {
    /// The error is about the private key (for pointing at the right config key).
    pub fn is_about_key(&self) -> bool {
        matches!(self, Self::Key { .. })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = path.display().to_string();
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Certs { path: shown.clone(), why: e.to_string() })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Certs { path: shown.clone(), why: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert { path: shown });
    }
    Ok(certs)
}

/// The server side of tls:// listeners: `cert` (the chain, leaf first) and `key` (PKCS#8,
/// PKCS#1 or SEC1 PEM). Clients are not asked for certificates.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Key { path: key.display().to_string(), why: e.to_string() })?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Server)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Server)?;
    Ok(Arc::new(config))
}

/// The client side, for TLS gateways: certificates must chain to `ca` (a PEM file of CA
/// certificates) or, without one, to the system's roots.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            let (added, _) = roots.add_parsable_certificates(certs(path)?);
            if added == 0 {
                return Err(TlsError::NoCa { path: path.display().to_string() });
            }
        }
        None => {
            // Unreadable system certificates are skipped: a gateway they would have
            // verified then fails its handshake, which is logged.
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Server)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The TLS state the transport uses: swapped whole on reload.
pub struct Tls {
    /// `None` while no certificate is configured (no tls:// listener).
    acceptor: ArcSwap<Option<TlsAcceptor>>,
    connector: ArcSwap<TlsConnector>,
}

impl Tls {
    /// Builds from the config (whose files validation has loaded once already).
    pub fn new(config: &Config) -> Result<Self, TlsError> {
        let acceptor = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => Some(TlsAcceptor::from(server_config(cert, key)?)),
            _ => None,
        };
        let connector = TlsConnector::from(client_config(config.tls.ca.as_deref())?);
        Ok(Self { acceptor: ArcSwap::from_pointee(acceptor), connector: ArcSwap::from_pointee(connector) })
    }

    /// Re-reads the files: new handshakes use them, established sessions are kept. On an
    /// error the previous certificates stay in use.
    pub fn reload(&self, files: &TlsFiles) {
        if let (Some(cert), Some(key)) = (&files.cert, &files.key) {
            match server_config(cert, key) {
                Ok(c) => self.acceptor.store(Arc::new(Some(TlsAcceptor::from(c)))),
                Err(e) => {
                    tracing::error!(event = "tls.certificate_failed", error = %e, "keeping the previous TLS certificate")
                }
            }
        }
        match client_config(files.ca.as_deref()) {
            Ok(c) => self.connector.store(Arc::new(TlsConnector::from(c))),
            Err(e) => {
                tracing::error!(event = "tls.ca_failed", error = %e, "keeping the previous TLS CA certificates")
            }
        }
    }

    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        self.acceptor.load().as_ref().clone()
    }

    pub fn connector(&self) -> TlsConnector {
        self.connector.load().as_ref().clone()
    }
}

/// The name a gateway's certificate must carry: its host as written (a DNS name or an IP
/// address). `None` for a host that is neither.
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(host.to_string()).ok()
}
