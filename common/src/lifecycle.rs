//! The lifecycle both programs share, written once: the runtime they run on, and the order of
//! their conversation with the service manager.
//!
//! 1. [`Lifecycle::install`] installs the SIGHUP handler, before anything can say READY
//!    (SIGHUP's default action would end the process, and a manager may send it at once).
//! 2. [`Lifecycle::ready`] sends `READY=1` with a status line and, when the manager asked for
//!    one, starts the [watchdog](crate::systemd::watchdog) with the program's probe.
//! 3. [`Lifecycle::next`] waits for the next event: a SIGHUP becomes [`Event::Reload`] (after
//!    `RELOADING=1`), shutdown becomes [`Event::Stop`]. After a reload, done or refused, the
//!    program calls [`Lifecycle::reloaded`] (`READY=1` again).
//! 4. [`Lifecycle::stopping`] sends `STOPPING=1` and hands back the watchdog task, which ends
//!    with `shutdown`.
//!
//! The signals that start a stop (SIGTERM, SIGINT) are [`crate::signals`]'; [`block_on`]
//! connects them to the token every program's main receives.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::errors::ErrorCounter;
use crate::systemd;

/// The threads a program's runtime has.
#[derive(Debug, Clone, Copy)]
pub enum Threads {
    /// One thread runs every task (the agent: its work is mostly waiting, and one thread
    /// avoids a cross-thread wakeup per message); `blocking` bounds the blocking pool.
    One { blocking: usize },
    /// A worker per core (the collector).
    PerCore,
}

/// Builds the runtime and runs `main` on it with a token that the first SIGTERM or SIGINT
/// cancels. A runtime that cannot start is reported on stderr and exits 1.
pub fn block_on<F, Fut>(threads: Threads, main: F) -> ExitCode
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = ExitCode>,
{
    let built = match threads {
        Threads::One { blocking } => tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(blocking)
            .enable_all()
            .build(),
        Threads::PerCore => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match built {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(crate::signals::cancel_on_signal(shutdown.clone()));
        main(shutdown).await
    })
}

/// What woke [`Lifecycle::next`].
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// SIGHUP with a configuration file to read again (`RELOADING=1` is sent).
    Reload(PathBuf),
    /// Shutdown was asked for.
    Stop,
}

/// A running program's side of the conversation with the service manager.
pub struct Lifecycle {
    hangups: Signal,
    config_path: Option<PathBuf>,
    errors: ErrorCounter,
    watchdog: Option<JoinHandle<()>>,
}

impl Lifecycle {
    /// Installs the SIGHUP handler. `config_path` is the file a reload reads (none: started
    /// without `--config`, so a SIGHUP is logged, counted and ignored).
    pub fn install(config_path: Option<PathBuf>, errors: ErrorCounter) -> std::io::Result<Self> {
        Ok(Lifecycle {
            hangups: signal(SignalKind::hangup())?,
            config_path,
            errors,
            watchdog: None,
        })
    }

    /// `READY=1` with `status`, and the watchdog with `probe` until `shutdown` if the service
    /// manager asked for one (`probe` answers with the status line once the program has shown
    /// progress; see [`systemd::watchdog`]).
    pub fn ready<P, F>(&mut self, status: &str, probe: P, shutdown: &CancellationToken)
    where
        P: FnMut() -> F + Send + 'static,
        F: Future<Output = Option<String>> + Send + 'static,
    {
        systemd::ready(status, &self.errors);
        if let Some(interval) = systemd::watchdog_interval() {
            self.watchdog = Some(tokio::spawn(systemd::watchdog(
                interval,
                probe,
                self.errors.clone(),
                shutdown.clone(),
            )));
        }
    }

    /// Waits for a SIGHUP to act on or for `shutdown`.
    pub async fn next(&mut self, shutdown: &CancellationToken) -> Event {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Event::Stop,
                _ = self.hangups.recv() => {
                    let Some(path) = self.config_path.as_deref() else {
                        tracing::warn!("SIGHUP: no configuration file to reload (started without --config)");
                        self.errors.count("config", "reload_without_file");
                        continue;
                    };
                    tracing::info!(file = %path.display(), "SIGHUP: reloading the configuration");
                    systemd::reloading(&self.errors);
                    return Event::Reload(path.to_owned());
                }
            }
        }
    }

    /// `READY=1` after a reload, applied or refused.
    pub fn reloaded(&self, status: &str) {
        systemd::ready(status, &self.errors);
    }

    /// `STOPPING=1`; the watchdog task, if one runs, is returned to be awaited (it ends with
    /// `shutdown`).
    pub fn stopping(self) -> Option<JoinHandle<()>> {
        systemd::stopping(&self.errors);
        self.watchdog
    }
}
