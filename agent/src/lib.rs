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
//! attempt, and the writer closes. On SIGHUP it reloads the configuration file: the inputs
//! stop the same way and start again with the new `[[inputs]]`, while the buffer, the writer
//! and the forwarder run on (an invalid file is refused and the running inputs keep going).
//! `main.rs` only parses the command line.

/// Declares a module under the panic policy (RELIABILITY.md): it reads what devices and files
/// send, so outside tests clippy denies what can panic on data (overflowing arithmetic,
/// indexing, unwrap, explicit panics). The `wire` and `collector` crates deny the same set
/// crate-wide.
macro_rules! panic_free_mod {
    ($(#[$meta:meta])* $vis:vis mod $name:ident;) => {
        #[cfg_attr(
            not(test),
            deny(
                clippy::arithmetic_side_effects,
                clippy::indexing_slicing,
                clippy::unwrap_used,
                clippy::expect_used,
                clippy::panic,
                clippy::unreachable
            )
        )]
        $(#[$meta])*
        $vis mod $name;
    };
}

pub mod backoff;
pub mod buffer;
panic_free_mod!(
    pub mod clock;
);
pub mod commands;
pub mod config;
panic_free_mod!(
    pub mod format;
);
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

use crate::buffer::{BufferHandle, Control, Depth, ForwarderLink, Reader, Store, Writer, repair};
use crate::config::Config;
use crate::forward::Forwarder;
use crate::inputs::mqtt::TestHooks;
use crate::inputs::{InputConfig, InputRecords};
use crate::metrics::Metrics;

/// The name of the buffer file inside `data_dir`.
pub const BUFFER_FILE: &str = "buffer.db";

/// Makes rustls use *ring* for every TLS connection (MQTT and HTTPS). Safe to call twice.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The inputs of one configuration: a reload stops them and starts the next set.
struct InputSet {
    intake: CancellationToken,
    tasks: TaskTracker,
    count: usize,
}

impl InputSet {
    /// Stops taking data and waits until each input has handed over what it took and (MQTT)
    /// seen it committed and acknowledged.
    async fn stop(&self) {
        self.intake.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// What the inputs share: where they hand their items, and the figures they keep.
struct InputContext {
    buffer: BufferHandle,
    metrics: Arc<Metrics>,
    depth: Arc<Depth>,
    hooks: TestHooks,
}

impl InputContext {
    /// Starts `configs` with what each recorded in the buffer before (`saved`, in order).
    fn start(&self, config: &Config, saved: Vec<InputRecords>) -> InputSet {
        let intake = CancellationToken::new();
        let tasks = TaskTracker::new();
        let shared = inputs::Shared {
            buffer: self.buffer.clone(),
            metrics: Arc::clone(&self.metrics),
            agent_tags: Arc::new(config.agent.tags.clone()),
            hooks: self.hooks,
        };
        for (input, saved) in config.inputs.iter().zip(saved) {
            input.spawn(saved, &shared, &intake, &tasks);
        }
        let metrics = &self.metrics;
        if config.inputs.is_empty() {
            warn!("no inputs are configured; the agent only forwards what is already buffered");
            metrics.error("agent", "no_inputs");
        }
        if let Some(interval) = config.agent.self_metrics {
            let watched = config.inputs.iter().map(InputConfig::watched).collect();
            tasks.spawn(inputs::own::run(
                interval,
                watched,
                Arc::clone(metrics),
                Arc::clone(&self.depth),
                self.buffer.clone(),
                intake.clone(),
            ));
        }
        InputSet {
            intake,
            tasks,
            count: config.inputs.len(),
        }
    }
}

/// Reads what `config`'s inputs recorded in the buffer, through the writer (which owns the
/// store while the agent runs).
async fn load_saved(
    control: &mpsc::UnboundedSender<Control>,
    config: &Config,
) -> Result<Vec<InputRecords>, crate::buffer::StoreError> {
    let wanted: Vec<InputRecords> = config.inputs.iter().map(InputRecords::wanted).collect();
    let (loaded_tx, loaded) = tokio::sync::oneshot::channel();
    let (done, answer) = tokio::sync::oneshot::channel();
    let job: crate::buffer::StoreJob = Box::new(move |store| {
        let saved = wanted
            .into_iter()
            .map(|wanted| wanted.load(store))
            .collect::<Result<Vec<_>, _>>()?;
        let _ = loaded_tx.send(saved);
        Ok(())
    });
    control
        .send(Control::Run { job, done })
        .map_err(|_| crate::buffer::WriterGone)?;
    answer.await.map_err(|_| crate::buffer::WriterGone)??;
    loaded.await.map_err(|_| crate::buffer::WriterGone.into())
}

/// Runs the agent until `shutdown` is cancelled, then shuts down in order. With
/// `config_path`, SIGHUP reloads the inputs from that file.
pub async fn run(
    config: Config,
    config_path: Option<std::path::PathBuf>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    install_crypto_provider();
    let metrics = Arc::new(Metrics::new());
    let data_dir = config.agent.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create agent.data_dir {}", data_dir.display()))?;
    let path = data_dir.join(BUFFER_FILE);

    let depth = Arc::new(Depth::default());
    // Opening the file and reading what the inputs recorded (MQTT deliveries, file offsets,
    // SQL tracking values) is SQLite work: off the executor, like all of it. A damaged file is
    // moved aside and salvaged first (`buffer::repair`), so it cannot stop the agent.
    let (store, reader, saved, damage) = {
        let (path, depth) = (path.clone(), Arc::clone(&depth));
        let (max_size, when_full, disk_reserve) = (
            config.buffer.max_size,
            config.buffer.when_full,
            config.buffer.disk_reserve,
        );
        let errors = metrics.errors.clone();
        // Twice: a second open (after a late salvage) asks again.
        let wanted: Vec<InputRecords> = config.inputs.iter().map(InputRecords::wanted).collect();
        let wanted_again: Vec<InputRecords> =
            config.inputs.iter().map(InputRecords::wanted).collect();
        tokio::task::spawn_blocking(move || {
            let open = |wanted: Vec<InputRecords>| {
                let store = Store::open(
                    &path,
                    max_size,
                    when_full,
                    Arc::clone(&depth),
                    disk_reserve,
                    errors.clone(),
                )?;
                let reader = Reader::open(&path)?;
                let saved = wanted
                    .into_iter()
                    .map(|wanted| wanted.load(&store))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, crate::buffer::StoreError>((store, reader, saved))
            };
            let salvage = |problems: Vec<String>| Damage {
                problems,
                salvage: repair::salvage(&path),
            };
            let mut damage = None;
            if path.exists() {
                let problems = repair::integrity(&path, false);
                if !problems.is_empty() {
                    damage = Some(salvage(problems));
                }
            }
            match open(wanted) {
                Ok((store, reader, saved)) => Ok((store, reader, saved, damage)),
                // The check passed but the file still does not open for its damage: salvage it
                // then. Any other failure (a full disk) is reported as it is: a salvage would
                // not help and must not move a sound file aside.
                Err(e) if damage.is_none() && path.exists() && e.is_damage() => {
                    let damage = salvage(vec![e.to_string()]);
                    let (store, reader, saved) = open(wanted_again)?;
                    Ok((store, reader, saved, Some(damage)))
                }
                Err(e) => Err(e),
            }
        })
        .await??
    };
    if let Some(damage) = damage {
        let problems: Vec<&str> = damage.problems.iter().map(String::as_str).take(5).collect();
        error!(path = %path.display(), problems = %problems.join("; "), "the buffer database was damaged; it was moved aside and salvaged");
        metrics.error("buffer", "corrupt");
        match damage.salvage {
            Ok(report) => {
                warn!(%report, "buffer salvage");
                metrics.salvaged_points.inc_by(report.points);
            }
            Err(e) => {
                error!(error = %e, "the buffer could not be salvaged; starting with an empty one");
                metrics.error("buffer", "salvage");
            }
        }
    }
    let epoch = store.epoch().to_owned();
    info!(agent = %config.agent.id, path = %path.display(), %epoch, points = depth.points(), bytes = depth.bytes(), "buffer opened");

    let (ingest_tx, ingest_rx) = mpsc::channel(config.buffer.queue_capacity);
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (committed_tx, committed_rx) = watch::channel(store.last_seq());
    let buffer = BufferHandle::new(ingest_tx);

    // The writer cancels `drained` once every input has let go of its handle and everything
    // they handed over is committed (and acknowledged).
    let drained = CancellationToken::new();
    let context = InputContext {
        buffer,
        metrics: Arc::clone(&metrics),
        depth: Arc::clone(&depth),
        hooks: TestHooks::from_env(),
    };
    let mut inputs = context.start(&config, saved);

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
    let reload_control = control_tx.clone();
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

    // Installed before READY: SIGHUP's default action would end the process.
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot install the SIGHUP handler")?;
    let input_count = Arc::new(std::sync::atomic::AtomicUsize::new(inputs.count));
    info!(agent = %config.agent.id, inputs = config.inputs.len(), collector = %config.forward.batches_url, "agent running");
    systemd::ready(&metrics.status_line(&depth, inputs.count), &metrics.errors);
    match systemd::watchdog_interval() {
        Some(interval) => {
            // The writer answering a ping proves the buffer (the path every reading takes)
            // still makes progress; the executor running this task proves the rest is alive.
            let errors = metrics.errors.clone();
            let (metrics, depth, inputs) = (
                Arc::clone(&metrics),
                Arc::clone(&depth),
                Arc::clone(&input_count),
            );
            let probe = move || {
                let (control, metrics, depth, inputs) = (
                    watchdog_control.clone(),
                    Arc::clone(&metrics),
                    Arc::clone(&depth),
                    Arc::clone(&inputs),
                );
                async move {
                    let (done, answer) = tokio::sync::oneshot::channel();
                    control.send(Control::Ping { done }).ok()?;
                    answer.await.ok()?.ok()?;
                    let inputs = inputs.load(std::sync::atomic::Ordering::Relaxed);
                    Some(metrics.status_line(&depth, inputs))
                }
            };
            tokio::spawn(systemd::watchdog(interval, probe, errors, shutdown.clone()));
        }
        None => drop(watchdog_control),
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = hangups.recv() => {
                let Some(path) = config_path.as_deref() else {
                    warn!("SIGHUP: no configuration file to reload (started without --config)");
                    metrics.error("config", "reload_without_file");
                    continue;
                };
                if let Some(next) = reload(path, &inputs, &context, &reload_control).await {
                    inputs = next;
                    input_count.store(inputs.count, std::sync::atomic::Ordering::Relaxed);
                }
                systemd::ready(&metrics.status_line(&depth, inputs.count), &metrics.errors);
            }
        }
    }
    systemd::stopping(&metrics.errors);
    info!("shutting down: stopping inputs");

    let deadline = tokio::time::Instant::now() + config.agent.shutdown_timeout;
    inputs.intake.cancel();
    inputs.tasks.close();
    stop_forwarding.cancel();
    // The inputs hold the other handles; once they end, the writer sees its queue close (and
    // its control channel once the forwarder ends).
    drop(context);
    drop(reload_control);
    let order = async {
        inputs.tasks.wait().await;
        info!("inputs stopped; committing what they handed over");
        let _ = forwarder.await;
        let _ = writer.await;
    };
    if tokio::time::timeout_at(deadline, order).await.is_err() {
        let mut running = Vec::new();
        if !inputs.tasks.is_empty() {
            running.push(format!("{} input(s)", inputs.tasks.len()));
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

/// Reloads the configuration at `path` for SIGHUP: if it loads, stops `running` (they hand
/// over and see committed what they took) and returns the new inputs, started with what they
/// recorded in the buffer. If it does not, logs why and returns `None`: `running` go on.
async fn reload(
    path: &std::path::Path,
    running: &InputSet,
    context: &InputContext,
    control: &mpsc::UnboundedSender<Control>,
) -> Option<InputSet> {
    let metrics = &context.metrics;
    info!(file = %path.display(), "SIGHUP: reloading the configuration");
    systemd::reloading(&metrics.errors);
    let config = match tributary_common::config::reload_file::<config::RawConfig>(path).await {
        Ok(config) => config,
        Err(e) => {
            error!(error = %e, "reload refused; the running configuration stays");
            metrics.error("config", "reload_invalid");
            return None;
        }
    };
    running.stop().await;
    let saved = match load_saved(control, &config).await {
        Ok(saved) => saved,
        Err(e) => {
            // The old inputs are stopped; start the new ones without their records rather
            // than none (an MQTT redelivery may then be stored twice; a file is re-read from
            // its start). Reading the buffer failing is already an alarm of its own.
            error!(error = %e, "cannot read the inputs' records from the buffer; starting them without");
            metrics.error("config", "reload_records");
            config.inputs.iter().map(InputRecords::wanted).collect()
        }
    };
    let next = context.start(&config, saved);
    metrics.reloads.inc();
    info!(
        inputs = next.count,
        "configuration reloaded: inputs restarted (changes outside [[inputs]] and agent.tags take effect at the next start)"
    );
    Some(next)
}

/// A damaged buffer found at start: what SQLite's check said, and what the salvage did.
struct Damage {
    problems: Vec<String>,
    salvage: Result<repair::Salvage, String>,
}
