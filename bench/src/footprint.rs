//! The edge footprint (issue 18): an agent with one connected MQTT input and one system input
//! every 10 s, measured `seconds` after it starts: resident memory by kind and by mapping, CPU,
//! the highest RSS of the 20 s before, and the size of the binary. `TRIBUTARY_AGENT_BIN` picks the binary (e.g. the static musl
//! build) while the broker and collector stay the same.

use std::time::{Duration, Instant};

use tributary_bench::harness::procstat::{cpu_seconds, resident, resident_by_mapping};
use tributary_bench::harness::{
    AgentProcess, CollectorProcess, Mosquitto, MosquittoOptions, agent_config, free_port,
    token_pair,
};

/// How long before the measurement the highest RSS is watched.
const WINDOW: Duration = Duration::from_secs(20);

pub async fn run(seconds: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (token, _) = token_pair("bench");
    let broker = Mosquitto::start(&dir.path().join("broker"), &MosquittoOptions::default())?;
    let collector = CollectorProcess::start(&dir.path().join("collector"), &[("bench", &token)])?;
    let config = crate::default_timing(&agent_config(
        "bench",
        &dir.path().join("agent/data"),
        &collector.url(),
        &broker.url(),
        free_port(),
        "",
        "[[inputs.system]]\ninterval = \"10s\"\n",
    ))
    .replace(
        "reconnect_initial = \"100ms\"\nreconnect_max = \"1s\"\n",
        "",
    );
    let started = Instant::now();
    let agent = AgentProcess::start(
        &dir.path().join("agent"),
        &config,
        &[("TRIBUTARY_TOKEN", &token)],
    )?;
    let pid = agent.pid().expect("agent running");
    let binary = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    let size = std::fs::metadata(&binary)?.len();
    // The idle agent's RSS moves with its work (a system reading and a batch every 10 s) and
    // drops when it releases memory: the highest of the last 20 s is shown beside the figure
    // at `seconds`.
    let end = Duration::from_secs(seconds);
    tokio::time::sleep(end.saturating_sub(WINDOW).saturating_sub(started.elapsed())).await;
    let mut highest = 0u64;
    while started.elapsed() < end {
        highest = highest.max(resident(pid).map(|m| m.total).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let cpu = cpu_seconds(pid).unwrap_or(0.0);
    let memory = resident(pid).unwrap_or_default();
    let mappings = resident_by_mapping(pid);
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "footprint: {} ({size} bytes), one MQTT input (connected) and one system input every 10 s, {seconds} s after start",
        binary.display()
    );
    println!(
        "  RSS {:.1} MiB ({:.2} MB): anonymous {:.1} MiB, file-backed {:.1} MiB, shared {:.1} MiB; CPU {:.2} s since start",
        mib(memory.total),
        memory.total as f64 * 1024.0 / 1e6,
        mib(memory.anonymous),
        mib(memory.file),
        mib(memory.shared),
        cpu
    );
    println!(
        "  highest RSS in the last {} s: {:.1} MiB ({:.2} MB)",
        WINDOW.as_secs(),
        mib(highest.max(memory.total)),
        highest.max(memory.total) as f64 * 1024.0 / 1e6
    );
    for (mapping, kib) in mappings.iter().take(12) {
        println!("  {:>8.2} MiB  {mapping}", mib(*kib));
    }
    drop(agent);
    drop(broker);
    Ok(())
}
