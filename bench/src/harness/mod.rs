//! Building blocks for tests and benchmarks. Every wait is bounded in time.

mod mosquitto;
pub mod pipelined;
#[path = "../../../collector/src/storage/postgres/testing.rs"]
pub mod postgres;
mod process;
pub mod procstat;
pub mod prometheus;
mod publisher;
pub mod tls;
mod tributary;

pub use mosquitto::{Mosquitto, MosquittoOptions, TlsListener};
pub use process::Process;
pub use publisher::Publisher;
pub use rumqttc::QoS;
pub use tributary::{
    AgentProcess, CollectorOptions, CollectorProcess, Oracle, Supervised, Verdict, agent_config,
    agent_config_with, bin_dir, query_json, query_text, shared_postgres, token_pair,
};

use std::net::TcpListener;
use std::time::{Duration, Instant};

/// One HTTP client for the harness, with rustls on *ring* (as the binaries use). It does not
/// verify certificates: the harness reads what a collector stored and needs to reach one with
/// a throw-away test certificate; verifying is the agent's part, and the TLS tests check it.
pub fn http() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .tls_danger_accept_invalid_certs(true)
            .build()
            .expect("an HTTP client with default settings builds")
    })
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("the OS hands out a free loopback port")
}

/// Polls `check` every 50 ms until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    port_open_at([127, 0, 0, 1].into(), port)
}

/// Whether something accepts TCP connections on `host`:`port`.
pub fn port_open_at(host: std::net::IpAddr, port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from((host, port)),
        Duration::from_millis(200),
    )
    .is_ok()
}
