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
pub mod cli;
pub mod commands;
pub mod config;
panic_free_mod!(
    pub mod format;
);
pub mod forward;
pub mod http;
pub mod inputs;
pub mod memory;
pub mod metrics;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};
use tributary_common::lifecycle::{Event, Lifecycle};

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
    let depth = Arc::new(Depth::default());
    let opened = open_buffer(&config, &metrics, &depth).await?;
    let mut agent = Agent::start(config, opened, metrics, depth, &shutdown).await?;
    let mut lifecycle = Lifecycle::install(config_path, agent.metrics.errors.clone())
        .context("cannot install the SIGHUP handler")?;
    info!(agent = %agent.config.agent.id, inputs = agent.config.inputs.len(), collector = %agent.config.forward.batches_url, "agent running");
    lifecycle.ready(&agent.status(), agent.watchdog_probe(), &shutdown);
    while let Event::Reload(path) = lifecycle.next(&shutdown).await {
        agent.reload(&path).await;
        lifecycle.reloaded(&agent.status());
    }
    // The watchdog ends with `shutdown`; nothing waits for it.
    drop(lifecycle.stopping());
    agent.shutdown().await;
    Ok(())
}

/// The buffer as opened at start: the store (the writer's), the forwarder's reader, and what
/// each configured input recorded in it before.
struct OpenedBuffer {
    path: std::path::PathBuf,
    store: Store,
    reader: Reader,
    saved: Vec<InputRecords>,
}

/// Opens the buffer in `agent.data_dir` and reads what the inputs recorded (MQTT deliveries,
/// file offsets, SQL tracking values). That is SQLite work: off the executor, like all of it.
/// A damaged file is moved aside and salvaged first (`buffer::repair`), so it cannot stop the
/// agent; the damage is logged and counted here.
async fn open_buffer(
    config: &Config,
    metrics: &Arc<Metrics>,
    depth: &Arc<Depth>,
) -> anyhow::Result<OpenedBuffer> {
    let data_dir = config.agent.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create agent.data_dir {}", data_dir.display()))?;
    let path = data_dir.join(BUFFER_FILE);
    let (store, reader, saved, damage) = {
        let (path, depth) = (path.clone(), Arc::clone(depth));
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
    Ok(OpenedBuffer {
        path,
        store,
        reader,
        saved,
    })
}

/// The running agent: its inputs, the buffer writer, the forwarder and the local listener.
/// [`Agent::reload`] replaces the inputs; [`Agent::shutdown`] stops everything in order.
struct Agent {
    config: Config,
    metrics: Arc<Metrics>,
    depth: Arc<Depth>,
    context: InputContext,
    inputs: InputSet,
    /// The number of running inputs, for the watchdog's status line.
    input_count: Arc<AtomicUsize>,
    /// The writer's control channel: reloads read the inputs' records through it, and the
    /// watchdog pings the writer.
    control: mpsc::UnboundedSender<Control>,
    writer: JoinHandle<()>,
    forwarder: JoinHandle<()>,
    stop_forwarding: CancellationToken,
    listener: Option<JoinHandle<()>>,
}

impl Agent {
    /// Starts the inputs, the writer, the forwarder and (with `agent.listen`) the listener.
    async fn start(
        config: Config,
        opened: OpenedBuffer,
        metrics: Arc<Metrics>,
        depth: Arc<Depth>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Agent> {
        let OpenedBuffer {
            path,
            store,
            reader,
            saved,
        } = opened;
        let epoch = store.epoch().to_owned();
        info!(agent = %config.agent.id, path = %path.display(), %epoch, points = depth.points(), bytes = depth.bytes(), "buffer opened");

        let (ingest_tx, ingest_rx) = mpsc::channel(config.buffer.queue_capacity);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (committed_tx, committed_rx) = watch::channel(store.last_seq());

        // The writer cancels `drained` once every input has let go of its handle and
        // everything they handed over is committed (and acknowledged).
        let drained = CancellationToken::new();
        let context = InputContext {
            buffer: BufferHandle::new(ingest_tx),
            metrics: Arc::clone(&metrics),
            depth: Arc::clone(&depth),
            hooks: TestHooks::from_env(),
        };
        let inputs = context.start(&config, saved);

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

        let link = ForwarderLink {
            depth: Arc::clone(&depth),
            committed: committed_rx,
            control: control_tx.clone(),
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
        let forwarder = tokio::spawn(forwarder.run(stop_forwarding.clone(), drained));

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
        Ok(Agent {
            input_count: Arc::new(AtomicUsize::new(inputs.count)),
            config,
            metrics,
            depth,
            context,
            inputs,
            control: control_tx,
            writer,
            forwarder,
            stop_forwarding,
            listener,
        })
    }

    /// The one-line status for the service manager.
    fn status(&self) -> String {
        self.metrics.status_line(&self.depth, self.inputs.count)
    }

    /// The watchdog's probe: the writer answering a ping proves the buffer (the path every
    /// reading takes) still makes progress; the executor running the probe proves the rest is
    /// alive. The probe holds a control handle: it must end (with `shutdown`) for the writer
    /// to finish.
    fn watchdog_probe(
        &self,
    ) -> impl FnMut() -> std::pin::Pin<Box<dyn Future<Output = Option<String>> + Send>> + Send + 'static
    {
        let (control, metrics, depth, inputs) = (
            self.control.clone(),
            Arc::clone(&self.metrics),
            Arc::clone(&self.depth),
            Arc::clone(&self.input_count),
        );
        move || {
            let (control, metrics, depth, inputs) = (
                control.clone(),
                Arc::clone(&metrics),
                Arc::clone(&depth),
                Arc::clone(&inputs),
            );
            Box::pin(async move {
                let (done, answer) = tokio::sync::oneshot::channel();
                control.send(Control::Ping { done }).ok()?;
                answer.await.ok()?.ok()?;
                Some(metrics.status_line(&depth, inputs.load(Ordering::Relaxed)))
            })
        }
    }

    /// Reloads the configuration at `path` for SIGHUP: if it loads, stops the running inputs
    /// (they hand over and see committed what they took) and starts the new ones with what
    /// they recorded in the buffer. If it does not, logs why: the running inputs go on.
    async fn reload(&mut self, path: &std::path::Path) {
        let metrics = &self.metrics;
        let config = match tributary_common::config::reload_file::<config::RawConfig>(path).await {
            Ok(config) => config,
            Err(e) => {
                error!(error = %e, "reload refused; the running configuration stays");
                metrics.error("config", "reload_invalid");
                return;
            }
        };
        self.inputs.stop().await;
        let saved = match load_saved(&self.control, &config).await {
            Ok(saved) => saved,
            Err(e) => {
                // The old inputs are stopped; start the new ones without their records rather
                // than none (an MQTT redelivery may then be stored twice; a file is re-read
                // from its start). Reading the buffer failing is already an alarm of its own.
                error!(error = %e, "cannot read the inputs' records from the buffer; starting them without");
                metrics.error("config", "reload_records");
                config.inputs.iter().map(InputRecords::wanted).collect()
            }
        };
        self.inputs = self.context.start(&config, saved);
        self.input_count.store(self.inputs.count, Ordering::Relaxed);
        metrics.reloads.inc();
        info!(
            inputs = self.inputs.count,
            "configuration reloaded: inputs restarted (changes outside [[inputs]] and agent.tags take effect at the next start)"
        );
    }

    /// Stops in order, within `agent.shutdown_timeout`: inputs stop taking data and hand over
    /// what they took, the writer commits and acknowledges it, the forwarder makes its last
    /// attempt, and the writer ends once nothing holds it.
    async fn shutdown(self) {
        info!("shutting down: stopping inputs");
        let Agent {
            config,
            metrics,
            depth,
            context,
            inputs,
            control,
            writer,
            forwarder,
            stop_forwarding,
            listener,
            ..
        } = self;
        let deadline = tokio::time::Instant::now() + config.agent.shutdown_timeout;
        inputs.intake.cancel();
        inputs.tasks.close();
        stop_forwarding.cancel();
        // The inputs hold the other handles; once they end, the writer sees its queue close
        // (and its control channel once the forwarder ends).
        drop(context);
        drop(control);
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
    }
}

/// A damaged buffer found at start: what SQLite's check said, and what the salvage did.
struct Damage {
    problems: Vec<String>,
    salvage: Result<repair::Salvage, String>,
}
