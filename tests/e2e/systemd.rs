//! `Type=notify`: both programs talk to a fake service manager on `NOTIFY_SOCKET`. READY comes
//! once the listeners answer, WATCHDOG keeps coming at half of `WATCHDOG_USEC`, and STOPPING
//! comes on SIGTERM. The `health` subcommand answers 0 while it runs, 1 once it stopped.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tributary_bench::harness::{Process, agent_config_with, bin_dir, free_port, token_pair};

/// The service manager's end of `NOTIFY_SOCKET`: keeps every datagram it receives, and when.
pub struct FakeManager {
    socket: UnixDatagram,
    received: Vec<String>,
    arrived: Vec<Instant>,
}

impl FakeManager {
    pub fn bind(path: &Path) -> FakeManager {
        let socket = UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        FakeManager {
            socket,
            received: Vec::new(),
            arrived: Vec::new(),
        }
    }

    /// Receives until a message contains `needle` (true) or `timeout` passes (false).
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.received.push(message.clone());
                self.arrived.push(Instant::now());
                if message.lines().any(|line| line == needle) {
                    return true;
                }
            }
        }
        false
    }

    /// Receives for `duration` and counts the messages that contain line `needle`.
    pub fn count_for(&mut self, needle: &str, duration: Duration) -> usize {
        self.arrivals_for(needle, duration).len()
    }

    /// Receives for `duration`; when each message that contains line `needle` arrived.
    pub fn arrivals_for(&mut self, needle: &str, duration: Duration) -> Vec<Instant> {
        let start = self.received.len();
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline {
            self.wait_for(
                "\u{0}never",
                deadline.saturating_duration_since(Instant::now()),
            );
        }
        self.received[start..]
            .iter()
            .zip(&self.arrived[start..])
            .filter(|(m, _)| m.lines().any(|line| line == needle))
            .map(|(_, at)| *at)
            .collect()
    }
}

/// A collector configuration in `dir` (no agents) and its free port.
fn collector_config(dir: &Path) -> (std::path::PathBuf, u16) {
    let port = free_port();
    let path = dir.join("collector.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[storage]\npath = \"{}\"\n",
            dir.join("collector.db").display()
        ),
    )
    .unwrap();
    (path, port)
}

fn port_answers(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Starts `program` with `args` and the notify environment (a 400 ms watchdog, so pings every
/// 200 ms), checks READY (with the port `listening` already answering), WATCHDOG and STOPPING.
fn check_notify(program: &str, args: &[&str], env: &[(&str, &str)], listening: u16) {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify.sock");
    let mut manager = FakeManager::bind(&socket);
    let mut command = Command::new(bin_dir().join(program));
    command
        .args(args)
        .env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID");
    for (key, value) in env {
        command.env(key, value);
    }
    let mut process = Process::spawn(program, command).unwrap();

    assert!(
        manager.wait_for("READY=1", Duration::from_secs(20)),
        "{program} sent READY=1: {:?}",
        manager.received
    );
    assert!(
        port_answers(listening),
        "{program} was listening when it said it was ready"
    );
    let ready = manager.received.last().unwrap();
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("STATUS=") && l.len() > 10),
        "READY carries a status line: {ready:?}"
    );
    // The `health` subcommand (the container HEALTHCHECK) finds the listener from the config.
    let health = || {
        Command::new(bin_dir().join(program))
            .arg("health")
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let healthy = health();
    assert!(
        healthy.status.success(),
        "{program} health: {}",
        String::from_utf8_lossy(&healthy.stderr)
    );
    // Pings every ~200 ms. The median gap, not a count in a fixed window: on the shared
    // 2-core machine with tests in parallel a few pings come late (which a count in a 2 s
    // window turned into flaky failures), but the median still tells pings at half the
    // timeout (200 ms) from pings twice as often (100 ms) or at the timeout (400 ms).
    let pings = manager.arrivals_for("WATCHDOG=1", Duration::from_secs(3));
    assert!(
        pings.len() >= 5,
        "{program} pinged the watchdog: {} in 3 s",
        pings.len()
    );
    let mut gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_unstable();
    let median = gaps[gaps.len() / 2];
    assert!(
        median >= Duration::from_millis(140) && median <= Duration::from_millis(320),
        "{program} pinged the watchdog every ~200 ms: median gap {median:?} of {gaps:?}"
    );
    let with_status = manager
        .received
        .iter()
        .rev()
        .take(3)
        .all(|m| m.contains("STATUS="));
    assert!(
        with_status,
        "each ping updates the status: {:?}",
        manager.received
    );

    let status = process.terminate(Duration::from_secs(20));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{program} exits 0");
    assert!(
        manager.wait_for("STOPPING=1", Duration::from_secs(1)),
        "{program} sent STOPPING=1: {:?}",
        manager.received
    );
    assert_eq!(
        health().status.code(),
        Some(1),
        "nothing answers once it stopped"
    );
}

#[test]
fn the_agent_notifies_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let config = agent_config_with(
        "edge-1",
        &dir.path().join("data"),
        &format!("http://127.0.0.1:{}", free_port()),
        metrics_port,
        "",
    );
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, config).unwrap();
    let (token, _) = token_pair("edge-1");
    check_notify(
        "tributary-agent",
        &["--config", path.to_str().unwrap()],
        &[("TRIBUTARY_TOKEN", &token)],
        metrics_port,
    );
}

#[test]
fn the_collector_notifies_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let (path, port) = collector_config(dir.path());
    check_notify(
        "tributary-collector",
        &["--config", path.to_str().unwrap()],
        &[],
        port,
    );
}

/// `WATCHDOG_PID` naming another process: the watchdog is not ours to feed.
#[test]
fn a_watchdog_for_another_process_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify.sock");
    let mut manager = FakeManager::bind(&socket);
    let (path, _) = collector_config(dir.path());
    let mut command = Command::new(bin_dir().join("tributary-collector"));
    command
        .args(["--config", path.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &socket)
        .env("WATCHDOG_USEC", "400000")
        .env("WATCHDOG_PID", "1");
    let mut process = Process::spawn("tributary-collector", command).unwrap();
    assert!(manager.wait_for("READY=1", Duration::from_secs(20)));
    assert_eq!(manager.count_for("WATCHDOG=1", Duration::from_secs(1)), 0);
    process.kill9();
}
