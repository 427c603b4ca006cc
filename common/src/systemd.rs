//! The service manager's notification protocol (`sd_notify`, for `Type=notify` units), through
//! the `sd-notify` crate. Every call is a no-op when `NOTIFY_SOCKET` is not set, so the
//! programs behave the same outside systemd.
//!
//! - [`ready`] once the configuration is loaded, the database open and the listeners bound;
//! - [`watchdog`] runs a probe of the program's progress at half of `WatchdogSec` and sends
//!   `WATCHDOG=1` only when the probe answers, with a one-line `STATUS=` each time;
//! - [`stopping`] when an orderly stop begins.

use std::future::Future;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::errors::ErrorCounter;

/// Sends `states`; a failure is logged and counted, never fatal (a service manager that went
/// away must not stop the program).
fn send(states: &[NotifyState<'_>], errors: &ErrorCounter) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
        errors.count("systemd", "notify");
    }
}

/// `READY=1` with a status line.
pub fn ready(status: &str, errors: &ErrorCounter) {
    send(&[NotifyState::Ready, NotifyState::Status(status)], errors);
}

/// `RELOADING=1` (a `READY=1` follows when the reload is done or refused).
pub fn reloading(errors: &ErrorCounter) {
    send(
        &[NotifyState::Reloading, NotifyState::Status("reloading")],
        errors,
    );
}

/// `STOPPING=1`.
pub fn stopping(errors: &ErrorCounter) {
    send(
        &[NotifyState::Stopping, NotifyState::Status("stopping")],
        errors,
    );
}

/// Half of the watchdog timeout the service manager asked for, if it asked for one (the
/// timeout from `WATCHDOG_USEC`, for this process if `WATCHDOG_PID` names another).
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
}

/// Until `shutdown`: every `interval`, runs `probe`, which answers with the status line once
/// the program has shown progress (`None`: it did not answer in time), and sends
/// `WATCHDOG=1` and `STATUS=` for an answer. Without an answer it sends nothing, so a stuck
/// program is restarted by the service manager.
pub async fn watchdog<P, F>(
    interval: Duration,
    mut probe: P,
    errors: ErrorCounter,
    shutdown: CancellationToken,
) where
    P: FnMut() -> F,
    F: Future<Output = Option<String>>,
{
    let mut missed = 0u64;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        // The probe may not take longer than the interval: then the next ping would be late.
        match tokio::time::timeout(interval, probe()).await {
            Ok(Some(status)) => {
                send(
                    &[NotifyState::Watchdog, NotifyState::Status(&status)],
                    &errors,
                );
            }
            Ok(None) | Err(_) => {
                missed += 1;
                tracing::warn!(
                    missed,
                    "the watchdog probe did not answer; not notifying the service manager"
                );
                errors.count("systemd", "watchdog_probe");
            }
        }
    }
}
