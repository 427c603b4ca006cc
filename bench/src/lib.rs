//! The harness shared by the end-to-end tests (`tests/e2e`) and the benchmarks (`src/main.rs`):
//! everything runs for real. A Mosquitto broker per test on a free loopback port, the real
//! `tributary-agent` and `tributary-collector` binaries as child processes with their logs
//! captured, SIGKILL for crashes, and an MQTT publisher that records exactly which messages the
//! broker acknowledged, which is what the exactly-once oracle checks against.

pub mod harness;
