//! A child process whose output is captured line by line, killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running child. Its stdout and stderr are read by two threads into `logs`, so a chatty
/// process never blocks on a full pipe. If the test panics, the logs are printed on drop.
pub struct Process {
    name: String,
    child: Child,
    logs: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Process {
    /// Starts `command` with piped output.
    pub fn spawn(name: &str, mut command: Command) -> anyhow::Result<Process> {
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = command
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {name} ({command:?}): {e}"))?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(capture(out, Arc::clone(&logs)));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(capture(err, Arc::clone(&logs)));
        }
        Ok(Process {
            name: name.to_owned(),
            child,
            logs,
            readers,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process printed so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Whether some output line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.logs
            .lock()
            .map(|l| l.iter().any(|line| line.contains(needle)))
            .unwrap_or(false)
    }

    /// How many output lines contain `needle`.
    pub fn count_logged(&self, needle: &str) -> usize {
        self.logs
            .lock()
            .map(|l| l.iter().filter(|line| line.contains(needle)).count())
            .unwrap_or(0)
    }

    /// Waits until a line containing `needle` appears (or the process exits, or time runs out).
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> bool {
        self.wait_for_any_log(&[needle], timeout)
    }

    /// Waits until a line containing any of `needles` appears.
    pub fn wait_for_any_log(&mut self, needles: &[&str], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let found = |p: &Process| needles.iter().any(|n| p.logged(n));
        while Instant::now() < deadline {
            if found(self) {
                return true;
            }
            if !self.is_running() {
                return found(self);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn is_running(&mut self) -> bool {
        if self.status.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exited(status);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Records the exit and collects the rest of the output (the pipes close with the process).
    fn exited(&mut self, status: ExitStatus) {
        self.status = Some(status);
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.exited(status);
            }
        }
    }

    /// SIGTERM, then wait up to `timeout` for the exit; SIGKILL if it does not come.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.is_running() {
            send_sigterm(self.pid());
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline && self.is_running() {
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.is_running() {
                eprintln!(
                    "{} did not stop within {timeout:?} of SIGTERM; killing it",
                    self.name
                );
                self.kill9();
                return None;
            }
        }
        self.status
    }

    /// Sends SIGTERM and returns at once (see `terminate` to wait for the exit).
    pub fn sigterm(&self) {
        send_sigterm(self.pid());
    }

    /// The exit status, once it has exited.
    pub fn status(&mut self) -> Option<ExitStatus> {
        self.is_running();
        self.status
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "---- output of {} (pid {}) ----",
                self.name,
                self.child.id()
            );
            for line in self.logs() {
                eprintln!("{line}");
            }
        }
    }
}

/// Sends SIGTERM to `pid`.
fn send_sigterm(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) only sends a signal; `pid` is our own child, not yet reaped (so its id
    // cannot have been reused), and a failure is harmless here.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

fn capture(
    stream: impl std::io::Read + Send + 'static,
    logs: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut logs) = logs.lock() {
                logs.push(line);
            }
        }
    })
}
