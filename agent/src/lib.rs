//! The Tributary agent: inputs feed a durable SQLite buffer, and a forwarder moves the buffer
//! to the collector, exactly once.
//!
//! ```text
//!  inputs (mqtt, …) ──Ingest──▶ buffer writer ──commit──▶ buffer.db ──▶ forwarder ──HTTP──▶ collector
//!         ▲                         │ (group commit,                        │
//!         └──── ack after commit ───┘  synchronous = FULL)                  └─ delete after 2xx
//! ```
//!
//! [`run`] wires the parts together and owns the shutdown order: inputs stop taking data, the
//! writer commits what they handed over and acknowledges it, the forwarder makes a last
//! attempt, and the writer closes. `main.rs` only parses the command line.

pub mod backoff;
pub mod buffer;
pub mod commands;
pub mod config;
pub mod format;
pub mod forward;
pub mod http;
pub mod inputs;
pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};
use tributary_common::systemd;

use crate::buffer::{BufferHandle, Control, Depth, ForwarderLink, Reader, Store, Writer};
use crate::config::{Config, InputConfig};
use crate::forward::Forwarder;
use crate::inputs::file::FileInput;
use crate::inputs::mqtt::{MqttInput, TestHooks};
use crate::metrics::Metrics;

/// The name of the buffer file inside `data_dir`.
pub const BUFFER_FILE: &str = "buffer.db";

/// Makes rustls use *ring* for every TLS connection (MQTT and HTTPS). Safe to call twice.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Runs the agent until `shutdown` is cancelled, then shuts down in order.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    install_crypto_provider();
    let metrics = Arc::new(Metrics::new());
    let data_dir = config.agent.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create agent.data_dir {}", data_dir.display()))?;
    let path = data_dir.join(BUFFER_FILE);

    let depth = Arc::new(Depth::default());
    // Opening the file and reading what the inputs recorded (MQTT deliveries, file offsets,
    // SQL tracking values) is SQLite work: off the executor, like all of it.
    let (store, reader, mut saved) = {
        let (path, depth) = (path.clone(), Arc::clone(&depth));
        let (max_size, when_full) = (config.buffer.max_size, config.buffer.when_full);
        let wanted: Vec<Saved> = config.inputs.iter().map(Saved::wanted).collect();
        tokio::task::spawn_blocking(move || {
            let store = Store::open(&path, max_size, when_full, depth)?;
            let reader = Reader::open(&path)?;
            let saved = wanted
                .into_iter()
                .map(|wanted| wanted.load(&store))
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, crate::buffer::StoreError>((store, reader, saved))
        })
        .await??
    };
    let epoch = store.epoch().to_owned();
    info!(agent = %config.agent.id, path = %path.display(), %epoch, points = depth.points(), bytes = depth.bytes(), "buffer opened");

    let (ingest_tx, ingest_rx) = mpsc::channel(config.buffer.queue_capacity);
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (committed_tx, committed_rx) = watch::channel(store.last_seq());
    let buffer = BufferHandle::new(ingest_tx);

    // Inputs stop when `intake` is cancelled. The writer cancels `drained` once it has committed
    // (and acknowledged) everything the inputs handed it.
    let intake = CancellationToken::new();
    let drained = CancellationToken::new();
    let inputs = TaskTracker::new();
    let agent_tags = Arc::new(config.agent.tags.clone());
    let hooks = TestHooks::from_env();
    for (input, saved) in config.inputs.iter().zip(saved.iter_mut()) {
        let saved = std::mem::take(saved);
        match input {
            InputConfig::Mqtt(mqtt) => {
                let Saved::Deliveries(_, stored) = saved else {
                    unreachable!("MQTT inputs load deliveries")
                };
                let task = MqttInput::new(
                    mqtt.clone(),
                    buffer.clone(),
                    Arc::clone(&metrics),
                    Arc::clone(&agent_tags),
                    stored,
                    hooks,
                );
                inputs.spawn(task.run(intake.clone(), drained.clone()));
            }
            InputConfig::File(file) => {
                let task = FileInput::new(
                    file.clone(),
                    saved.checkpoints(),
                    buffer.clone(),
                    Arc::clone(&metrics),
                    Arc::clone(&agent_tags),
                );
                inputs.spawn(task.run(intake.clone()));
            }
            other => {
                let polled = match inputs::polled(other, &saved.checkpoints()) {
                    Some(Ok(polled)) => polled,
                    Some(Err(e)) => {
                        error!(error = %e, "input disabled");
                        metrics.error("agent", "input_setup");
                        continue;
                    }
                    None => continue,
                };
                inputs.spawn(polled.run(
                    buffer.clone(),
                    Arc::clone(&metrics),
                    Arc::clone(&agent_tags),
                    intake.clone(),
                ));
            }
        }
    }
    inputs.close();
    drop(buffer);
    if config.inputs.is_empty() {
        warn!("no inputs are configured; the agent only forwards what is already buffered");
        metrics.error("agent", "no_inputs");
    }

    // The writer ends once inputs and forwarder have let go of it.
    let writer = Writer::new(
        store,
        ingest_rx,
        control_rx,
        committed_tx,
        config.buffer.clone(),
        Arc::clone(&metrics),
        Arc::clone(&depth),
    );
    let writer = tokio::spawn(writer.run(drained.clone()));

    let watchdog_control = control_tx.clone();
    let link = ForwarderLink {
        depth: Arc::clone(&depth),
        committed: committed_rx,
        control: control_tx,
    };
    let forwarder = Forwarder::new(
        config.forward.clone(),
        config.agent.id.clone(),
        epoch,
        reader,
        link,
        Arc::clone(&metrics),
    )?;
    let stop_forwarding = CancellationToken::new();
    let forwarder = tokio::spawn(forwarder.run(stop_forwarding.clone(), drained.clone()));

    let listener = match config.agent.listen {
        Some(address) => http::bind(address, &metrics).await.map(|listener| {
            tokio::spawn(http::serve(
                listener,
                Arc::clone(&metrics),
                Arc::clone(&depth),
                shutdown.clone(),
            ))
        }),
        None => None,
    };

    info!(agent = %config.agent.id, inputs = config.inputs.len(), collector = %config.forward.batches_url, "agent running");
    systemd::ready(
        &metrics.status_line(&depth, config.inputs.len()),
        &metrics.errors,
    );
    match systemd::watchdog_interval() {
        Some(interval) => {
            // The writer answering a ping proves the buffer (the path every reading takes)
            // still makes progress; the executor running this task proves the rest is alive.
            let errors = metrics.errors.clone();
            let (metrics, depth, inputs) = (
                Arc::clone(&metrics),
                Arc::clone(&depth),
                config.inputs.len(),
            );
            let probe = move || {
                let (control, metrics, depth) = (
                    watchdog_control.clone(),
                    Arc::clone(&metrics),
                    Arc::clone(&depth),
                );
                async move {
                    let (done, answer) = tokio::sync::oneshot::channel();
                    control.send(Control::Ping { done }).ok()?;
                    answer.await.ok()?.ok()?;
                    Some(metrics.status_line(&depth, inputs))
                }
            };
            tokio::spawn(systemd::watchdog(interval, probe, errors, shutdown.clone()));
        }
        None => drop(watchdog_control),
    }
    shutdown.cancelled().await;
    systemd::stopping(&metrics.errors);
    info!("shutting down: stopping inputs");

    let deadline = tokio::time::Instant::now() + config.agent.shutdown_timeout;
    intake.cancel();
    stop_forwarding.cancel();
    let order = async {
        inputs.wait().await;
        info!("inputs stopped; committing what they handed over");
        let _ = forwarder.await;
        let _ = writer.await;
    };
    if tokio::time::timeout_at(deadline, order).await.is_err() {
        let mut running = Vec::new();
        if !inputs.is_empty() {
            running.push(format!("{} input(s)", inputs.len()));
        }
        running.push("forwarder or buffer writer".to_owned());
        warn!(still_running = %running.join(", "), timeout = ?config.agent.shutdown_timeout, "shutdown deadline passed; exiting anyway (committed data is safe, unacknowledged data stays with its source)");
        metrics.error("agent", "shutdown_timeout");
    }
    if let Some(listener) = listener {
        let _ = tokio::time::timeout(Duration::from_secs(1), listener).await;
    }
    info!(backlog = depth.points(), "agent stopped");
    Ok(())
}

/// What an input kept in the buffer from earlier runs.
#[derive(Default)]
enum Saved {
    #[default]
    Nothing,
    /// An MQTT session's delivery records.
    Deliveries(String, std::collections::HashMap<u16, [u8; 8]>),
    /// Checkpoints under a source id.
    Checkpoints(String, Vec<(String, Vec<u8>)>),
}

impl Saved {
    /// What `input` needs loaded (not loaded yet).
    fn wanted(input: &InputConfig) -> Saved {
        match input {
            InputConfig::Mqtt(mqtt) => Saved::Deliveries(mqtt.session_key(), Default::default()),
            other => match other.state_source() {
                Some(source) => Saved::Checkpoints(source, Vec::new()),
                None => Saved::Nothing,
            },
        }
    }

    fn load(self, store: &Store) -> Result<Saved, crate::buffer::StoreError> {
        Ok(match self {
            Saved::Nothing => Saved::Nothing,
            Saved::Deliveries(session, _) => {
                let stored = store.deliveries(&session)?;
                Saved::Deliveries(session, stored)
            }
            Saved::Checkpoints(source, _) => {
                let saved = store.checkpoints(&source)?;
                Saved::Checkpoints(source, saved)
            }
        })
    }

    fn checkpoints(self) -> Vec<(String, Vec<u8>)> {
        match self {
            Saved::Checkpoints(_, saved) => saved,
            _ => Vec::new(),
        }
    }
}
