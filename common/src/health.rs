//! The `health` subcommand both programs have, for container `HEALTHCHECK`s and scripts: it
//! asks the running process's own health endpoint and exits 0 only if that answers 2xx.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// The URL of `path` on a listener bound to `address` (an unspecified address such as 0.0.0.0
/// is asked on loopback), `https` when the listener speaks TLS.
pub fn local_url(address: SocketAddr, path: &str, tls: bool) -> String {
    let ip = if address.ip().is_unspecified() {
        match address {
            SocketAddr::V4(_) => "127.0.0.1".to_owned(),
            SocketAddr::V6(_) => "[::1]".to_owned(),
        }
    } else if address.is_ipv6() {
        format!("[{}]", address.ip())
    } else {
        address.ip().to_string()
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{ip}:{}{path}", address.port())
}

/// A client certificate and its key (PEM files), for a listener that requires one (mTLS).
#[derive(Debug, Clone, Copy)]
pub struct ClientCertificate<'a> {
    pub cert: &'a std::path::Path,
    pub key: &'a std::path::Path,
}

/// GETs `url` (5 s timeout): exit 0 on a 2xx answer, 1 otherwise, with the reason on stderr.
/// With `own_listener`, the URL is this host's own process, asked on loopback: its certificate
/// names the host others reach it by, not the loopback address, so it is not verified. A
/// listener that requires client certificates is asked with `identity`.
pub fn check(url: &str, own_listener: bool, identity: Option<ClientCertificate<'_>>) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("unhealthy: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .tls_danger_accept_invalid_certs(own_listener);
    if let Some(ClientCertificate { cert, key }) = identity {
        let mut pem = Vec::new();
        for path in [cert, key] {
            match std::fs::read(path) {
                Ok(bytes) => pem.extend(bytes),
                Err(e) => {
                    eprintln!("unhealthy: cannot read {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        }
        match reqwest::Identity::from_pem(&pem) {
            Ok(identity) => builder = builder.identity(identity),
            Err(e) => {
                eprintln!(
                    "unhealthy: {} and {}: not a PEM certificate and key: {e}",
                    cert.display(),
                    key.display()
                );
                return ExitCode::FAILURE;
            }
        }
    }
    let answer = runtime.block_on(async { builder.build()?.get(url).send().await });
    match answer {
        Ok(response) if response.status().is_success() => {
            println!("healthy: {url} answered {}", response.status());
            ExitCode::SUCCESS
        }
        Ok(response) => {
            eprintln!("unhealthy: {url} answered {}", response.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("unhealthy: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}
