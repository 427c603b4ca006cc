//! Inputs whose work blocks (the file input's globbing, `stat`, opens and reads) run on a
//! thread of their own, so that a hung network mount or a FIFO never stops the event loop
//! that acknowledges MQTT deliveries, forwards batches and pings the watchdog.
//!
//! A dedicated thread, not the blocking pool: the pool is small (SQLite's commits run there)
//! and a thread stuck in the kernel would hold one of its places for good.
//!
//! At shutdown or reload the input is told to stop and given [`GRACE`] to do so. A thread
//! still stuck in a system call after that is abandoned, logged and counted; it can never
//! hand anything to the buffer afterwards, because every hand-over checks [`Stop`] first and
//! the stop is raised before the grace starts. What it had read but not handed over was not
//! committed, so the next run reads it again.

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::buffer::{BufferHandle, Ingest};
use crate::metrics::Metrics;

/// How long a stopped input's thread has to finish before it is abandoned.
pub const GRACE: Duration = Duration::from_secs(5);

/// Raised when the input must stop; what its thread sleeps on between turns.
#[derive(Default)]
pub struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

/// The input must end: it was stopped, or the buffer writer is gone.
#[derive(Debug, PartialEq, Eq)]
pub struct Halt;

impl Stop {
    pub fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn raise(&self) {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_all();
    }

    /// Sleeps for `wait` or until stopped; `Err` once stopped.
    pub fn sleep(&self, wait: Duration) -> Result<(), Halt> {
        let stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        let (stopped, _) = self
            .wake
            .wait_timeout_while(stopped, wait, |stopped| !*stopped)
            .unwrap_or_else(PoisonError::into_inner);
        if *stopped { Err(Halt) } else { Ok(()) }
    }

    /// Hands `item` to the buffer, waiting while its queue is full; `Err` if the input was
    /// stopped first (nothing is handed over then) or the writer is gone.
    pub fn send(&self, buffer: &BufferHandle, item: Ingest) -> Result<(), Halt> {
        if self.is_stopped() {
            return Err(Halt);
        }
        block_on(buffer.send(item)).map_err(|_| Halt)
    }
}

/// Runs `work` on a thread named `name` until it returns or `stop` is cancelled (then it is
/// given [`GRACE`], and abandoned after). `label` and `kind` name the input in logs and in
/// `input_errors`.
pub async fn run_on_thread<F>(
    name: &str,
    label: &str,
    kind: &'static str,
    metrics: &Metrics,
    stop: CancellationToken,
    work: F,
) where
    F: FnOnce(&Stop) + Send + 'static,
{
    let signal = Arc::new(Stop::default());
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    let thread_signal = Arc::clone(&signal);
    let spawned = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            work(&thread_signal);
            let _ = done.send(());
        });
    if let Err(e) = spawned {
        error!(input = %label, error = %e, "cannot start the input's thread; the input is disabled");
        metrics.input_error(label, kind, "thread");
        return;
    }
    let mut finished = finished;
    tokio::select! {
        _ = &mut finished => return,
        _ = stop.cancelled() => {}
    }
    signal.raise();
    if tokio::time::timeout(GRACE, finished).await.is_err() {
        warn!(input = %label, grace = ?GRACE, "the input's thread did not stop (stuck in the file system: a hung mount?); abandoning it, what it read but did not hand over will be read again");
        metrics.input_error(label, kind, "stuck");
    }
}

/// Runs a future to completion on this (non-async) thread, parking between wake-ups. For the
/// buffer's queue, whose futures need no runtime driver.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_ends_early_when_stopped_and_send_refuses_after() {
        let stop = Arc::new(Stop::default());
        assert_eq!(stop.sleep(Duration::from_millis(1)), Ok(()));
        let raiser = Arc::clone(&stop);
        let started = std::time::Instant::now();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            raiser.raise();
        });
        assert_eq!(stop.sleep(Duration::from_secs(60)), Err(Halt));
        assert!(started.elapsed() < Duration::from_secs(30));
        thread.join().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let buffer = BufferHandle::new(tx);
        assert_eq!(stop.send(&buffer, Ingest::default()), Err(Halt));
        assert!(
            rx.try_recv().is_err(),
            "nothing is handed over after the stop"
        );
    }

    #[test]
    fn send_waits_for_room_in_the_queue() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let buffer = BufferHandle::new(tx);
        let stop = Stop::default();
        assert_eq!(stop.send(&buffer, Ingest::default()), Ok(()));
        // The queue holds one item; the second send waits until the reader takes the first.
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let first = rx.blocking_recv();
            let second = rx.blocking_recv();
            (first.is_some(), second.is_some())
        });
        assert_eq!(stop.send(&buffer, Ingest::default()), Ok(()));
        assert_eq!(reader.join().unwrap(), (true, true));
    }

    #[tokio::test(start_paused = true)]
    async fn a_thread_that_does_not_stop_is_abandoned_after_the_grace() {
        let metrics = Metrics::new();
        let stop = CancellationToken::new();
        let (release, held) = std::sync::mpsc::channel::<()>();
        let runner = run_on_thread(
            "stuck",
            "file:x",
            "file",
            &metrics,
            stop.clone(),
            move |_| {
                // Stuck, as in a system call on a hung mount, until the test lets go.
                let _ = held.recv();
            },
        );
        stop.cancel();
        // Paused time: the grace passes without waiting for it.
        runner.await;
        let text = metrics.render();
        assert!(
            text.contains("component=\"file\",kind=\"stuck\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("input_errors_total{input=\"file:x\"} 1"),
            "{text}"
        );
        drop(release);
    }
}
