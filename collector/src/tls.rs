//! TLS on the collector's listener (`[server] tls_cert`, `tls_key`, and `tls_client_ca` for
//! mTLS), with rustls: TLS 1.3 and 1.2, the *ring* provider, ALPN `http/1.1`.
//!
//! [`TlsListener`] is an [`axum::serve::Listener`]: a task accepts TCP connections and runs
//! each handshake on its own task (bounded by [`HANDSHAKE_TIMEOUT`]), so a slow or silent
//! client never holds up the others; finished handshakes are handed to the server. A failed
//! handshake is logged at debug level (anyone can send garbage to a port) and counted in
//! `errors_total{component="tls",kind="handshake"}`.
//!
//! The certificate and key are re-read on SIGHUP ([`TlsAcceptor::reload`]): new connections
//! get the new certificate, open ones keep theirs, and a file that does not load leaves the
//! running certificate in place.
//!
//! Under mTLS, each connection carries its verified client certificate's names
//! ([`PeerNames`], axum's connection info), which may name the agent (see [`crate::auth`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// How long a client may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes finished and not yet taken by the server.
const READY_CONNECTIONS: usize = 64;

/// The files TLS is made from, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// With it, clients must present a certificate signed by one of these CAs (PEM).
    pub client_ca: Option<PathBuf>,
}

/// Which file of [`TlsFiles`] a problem is in, and the problem.
#[derive(Debug)]
pub struct TlsError {
    /// `cert`, `key` or `client_ca`.
    pub file: &'static str,
    pub message: String,
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tls_{}: {}", self.file, self.message)
    }
}

fn error(file: &'static str, message: impl Into<String>) -> TlsError {
    TlsError {
        file,
        message: message.into(),
    }
}

fn read(file: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| error(file, format!("cannot read {}: {e}", path.display())))
}

fn certificates(file: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(file, path)?;
    let certificates = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(file, format!("{} is not PEM: {e}", path.display())))?;
    if certificates.is_empty() {
        return Err(error(
            file,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(certificates)
}

/// Reads the files and builds the server's TLS configuration; every problem names its file.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates("cert", &files.cert)?;
    let key_pem = read("key", &files.key)?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| error("key", format!("{} is not PEM: {e}", files.key.display())))?
        .ok_or_else(|| {
            error(
                "key",
                format!("{} holds no PEM private key", files.key.display()),
            )
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| error("cert", e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in certificates("client_ca", path)? {
                roots
                    .add(certificate)
                    .map_err(|e| error("client_ca", format!("{}: {e}", path.display())))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| error("client_ca", format!("{}: {e}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        error(
            "key",
            format!(
                "{} does not go with {}: {e}",
                files.key.display(),
                files.cert.display()
            ),
        )
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The configuration new connections are accepted with; replaced on reload.
pub struct TlsAcceptor {
    files: TlsFiles,
    config: RwLock<Arc<ServerConfig>>,
}

impl TlsAcceptor {
    /// Loads `files`.
    pub fn new(files: TlsFiles) -> Result<TlsAcceptor, TlsError> {
        let config = server_config(&files)?;
        Ok(TlsAcceptor {
            files,
            config: RwLock::new(config),
        })
    }

    /// Reads the files again (SIGHUP: a renewed certificate). On an error the running
    /// configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.files)?;
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }

    fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config.read().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The names a connection's verified client certificate gives: its subject's common name,
/// then its DNS and URI subject alternative names. Empty without a client certificate (plain
/// HTTP, TLS without mTLS) and for a certificate these cannot be read from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerNames(Arc<[String]>);

impl PeerNames {
    pub fn new(names: Vec<String>) -> PeerNames {
        PeerNames(names.into())
    }

    /// The names in a DER certificate; none if it does not decode. The handshake has already
    /// verified it against `tls_client_ca`.
    pub fn of_certificate(der: &[u8]) -> PeerNames {
        use x509_cert::der::Decode;
        use x509_cert::ext::pkix::SubjectAltName;
        use x509_cert::ext::pkix::name::GeneralName;
        let Ok(certificate) = x509_cert::Certificate::from_der(der) else {
            return PeerNames::default();
        };
        let tbs = certificate.tbs_certificate();
        let mut names = Vec::new();
        if let Ok(Some(common_name)) = tbs.subject().common_name() {
            names.push(common_name.value().into_owned());
        }
        if let Ok(Some((_, SubjectAltName(alternatives)))) = tbs.get_extension::<SubjectAltName>() {
            for name in alternatives {
                match name {
                    GeneralName::DnsName(dns) => names.push(dns.to_string()),
                    GeneralName::UniformResourceIdentifier(uri) => names.push(uri.to_string()),
                    _ => {}
                }
            }
        }
        PeerNames::new(names)
    }

    /// The names of the connection a request came on (from its extensions).
    pub fn of_request(extensions: &axum::http::Extensions) -> PeerNames {
        extensions
            .get::<axum::extract::ConnectInfo<PeerNames>>()
            .map(|info| info.0.clone())
            .unwrap_or_default()
    }

    pub fn names(&self) -> &[String] {
        &self.0
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for PeerNames
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> PeerNames {
        let (_, connection) = stream.io().get_ref();
        connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| PeerNames::of_certificate(leaf))
            .unwrap_or_default()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TcpListener>>
    for PeerNames
{
    fn connect_info(_: axum::serve::IncomingStream<'_, TcpListener>) -> PeerNames {
        PeerNames::default()
    }
}

/// A request's [`PeerNames`]; none when the server was not started with them.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PeerNames {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<PeerNames, Self::Rejection> {
        Ok(PeerNames::of_request(&parts.extensions))
    }
}

/// A listener whose connections are TLS streams whose handshake is done.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `listener` with `acceptor`'s configuration until the listener is dropped.
    pub fn new(
        listener: TcpListener,
        acceptor: Arc<TlsAcceptor>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (ready_tx, ready) = mpsc::channel(READY_CONNECTIONS);
        tokio::spawn(accept_loop(listener, acceptor, metrics, ready_tx));
        Ok(TlsListener { ready, local })
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Arc<TlsAcceptor>,
    metrics: Arc<Metrics>,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let accepted = tokio::select! {
            () = ready.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: wait rather than spin.
                warn!(error = %e, "cannot accept a connection");
                metrics.error("server", "accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let tls = tokio_rustls::TlsAcceptor::from(acceptor.current());
        let (ready, metrics) = (ready.clone(), Arc::clone(&metrics));
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let _ = ready.send((stream, peer)).await;
                }
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "TLS handshake failed");
                    metrics.error("tls", "handshake");
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    metrics.error("tls", "handshake");
                }
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept task holds the sender until this listener is dropped; it only ends
            // earlier if the runtime is shutting down, and then nothing is served any more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
