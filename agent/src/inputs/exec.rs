//! The exec input: runs a command on a schedule and parses what it prints.
//!
//! The command is an argv list run without a shell, unless `shell = true` (then the one
//! string is handed to `/bin/sh -c`). It runs in its own process group, with stdin closed,
//! the agent's environment plus `env`, and `dir` as working directory. On `timeout` the
//! whole group is killed with SIGKILL, so a script's children die with it. A non-zero exit
//! or a timeout fails the poll (logged with the end of stderr, and counted); output beyond
//! `max_output` is cut at the last complete line, parsed, and the cut reported.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tributary_common::config::values::RawSize;
use tributary_common::config::{ConfigError, Source};

use super::polled::{PollError, Polled, PolledSettings, raw_timing};
use crate::format::{DecodeContext, Format, decode};
use tributary_common::config::values::{duration, size};

/// How much of stderr is kept for the log line of a failed run.
const STDERR_TAIL: usize = 2048;

/// `[[inputs.exec]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExec {
    /// Name of the points (formats other than `influx`). Default: `exec`.
    pub name: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    pub interval: Option<String>,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub jitter: Option<String>,
    /// The program and its arguments; with `shell = true`, one shell command line (a string,
    /// or a list of one).
    #[serde(default)]
    pub command: CommandLine,
    /// Run the command through `/bin/sh -c`.
    pub shell: Option<bool>,
    /// Variables added to the agent's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory. Default: the agent's.
    pub dir: Option<PathBuf>,
    /// Longest run; then the process group is killed. Default: 10s.
    pub timeout: Option<String>,
    /// `json`, `influx`, `value` or `lines`.
    pub format: Option<Format>,
    /// JSON members that become tags.
    #[serde(default)]
    pub tag_keys: Vec<String>,
    /// Most stdout bytes parsed per run. Default: 1MiB.
    pub max_output: Option<RawSize>,
}

/// A checked `[[inputs.exec]]`.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    pub common: PolledSettings,
    /// argv, with `/bin/sh -c` already in front when `shell = true`.
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub dir: Option<PathBuf>,
    pub timeout: Duration,
    pub format: Format,
    pub tag_keys: Vec<String>,
    pub max_output: usize,
    /// The program is not there (yet). `check` reports it as an error naming the key; the
    /// running agent starts anyway (the program may be installed later) and counts every
    /// failed run.
    pub missing_program: Option<ConfigError>,
}

impl RawExec {
    pub fn resolve(self, index: usize, source: &Source) -> Result<ExecConfig, ConfigError> {
        let timing = raw_timing!(self);
        let common = PolledSettings::resolve("exec", index, self.name, self.tags, &timing, source)?;
        let key = |name: &str| common.key(name);
        let shell = self.shell.unwrap_or(false);
        let argv = match (self.command, shell) {
            (CommandLine::Argv(argv), _) if argv.first().is_none_or(String::is_empty) => {
                return Err(source.error(
                    key("command"),
                    "missing; e.g. command = [\"/usr/local/bin/read-meter\", \"--json\"]",
                ));
            }
            (CommandLine::Line(line), _) if line.trim().is_empty() => {
                return Err(source.error(key("command"), "is empty"));
            }
            (CommandLine::Line(line), true) => vec!["/bin/sh".to_owned(), "-c".to_owned(), line],
            (CommandLine::Argv(mut argv), true) if argv.len() == 1 => {
                vec!["/bin/sh".to_owned(), "-c".to_owned(), argv.remove(0)]
            }
            (CommandLine::Argv(_), true) => {
                return Err(source.error(
                    key("command"),
                    "with shell = true, give the command line as one string",
                ));
            }
            (CommandLine::Line(_), false) => {
                return Err(source.error(
                    key("command"),
                    "a string is a shell command line: set shell = true, or give the program and its arguments as a list",
                ));
            }
            (CommandLine::Argv(argv), false) => argv,
        };
        let missing_program = find_program(&argv[0], self.env.get("PATH").map(String::as_str))
            .err()
            .map(|m| source.error(key("command"), m));
        if let Some(dir) = &self.dir
            && !dir.is_dir()
        {
            return Err(source.error(key("dir"), format!("{} is not a directory", dir.display())));
        }
        let timeout = duration(source, &key("timeout"), self.timeout.as_deref(), "10s")?;
        if timeout.is_zero() {
            return Err(source.error(key("timeout"), "must be above zero"));
        }
        let max_output = size(source, &key("max_output"), self.max_output, "1MiB")?;
        Ok(ExecConfig {
            common,
            argv,
            env: self.env,
            dir: self.dir,
            timeout,
            format: self.format.unwrap_or_default(),
            tag_keys: self.tag_keys,
            max_output: usize::try_from(max_output).unwrap_or(usize::MAX),
            missing_program,
        })
    }
}

/// Finds the program the way `execvp` will: a name with a `/` is a path, anything else is
/// looked up in `PATH` (the configured one if `env` sets it).
fn find_program(program: &str, path_override: Option<&str>) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |path: &Path| {
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = PathBuf::from(program);
        return if executable(&path) {
            Ok(path)
        } else if path.exists() {
            Err(format!("{program} is not an executable file"))
        } else {
            Err(format!("{program} does not exist"))
        };
    }
    let search = path_override
        .map(str::to_owned)
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".to_owned());
    search
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| executable(candidate))
        .ok_or_else(|| format!("{program:?} is not found in PATH ({search})"))
}

/// `command` as written: a list (argv), or a string (a shell command line).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum CommandLine {
    Argv(Vec<String>),
    Line(String),
}

impl Default for CommandLine {
    fn default() -> Self {
        CommandLine::Argv(Vec::new())
    }
}

/// Runs the command of one `[[inputs.exec]]`.
pub struct ExecPoller {
    config: ExecConfig,
    origin: String,
}

impl ExecPoller {
    pub fn new(config: ExecConfig) -> ExecPoller {
        let origin = config.argv.join(" ");
        ExecPoller { config, origin }
    }

    /// Why the program cannot run, if it is missing.
    pub fn missing_program(&self) -> Option<&ConfigError> {
        self.config.missing_program.as_ref()
    }

    pub async fn poll(&mut self, at: i64) -> Result<Polled, PollError> {
        let config = &self.config;
        let mut command = Command::new(&config.argv[0]);
        command
            .args(&config.argv[1..])
            .envs(&config.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(dir) = &config.dir {
            command.current_dir(dir);
        }
        let mut child = command.spawn().map_err(|e| {
            PollError::new("spawn", format!("cannot start {}: {e}", config.argv[0]))
        })?;
        let group = child.id();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let run = async {
            let (out, err, status) = tokio::join!(
                read_limited(stdout, config.max_output),
                read_tail(stderr, STDERR_TAIL),
                child.wait()
            );
            (out, err, status)
        };
        let ((stdout, cut), stderr, status) = match tokio::time::timeout(config.timeout, run).await
        {
            Ok(done) => done,
            Err(_) => {
                kill_group(group);
                // Reap it; the group was killed, so this returns at once.
                let _ = child.wait().await;
                return Err(PollError::new(
                    "timeout",
                    format!(
                        "{} did not finish within {:?}; its process group was killed",
                        self.origin, config.timeout
                    ),
                ));
            }
        };
        let status = status
            .map_err(|e| PollError::new("wait", format!("waiting for {}: {e}", self.origin)))?;
        if !status.success() {
            let stderr = String::from_utf8_lossy(&stderr);
            return Err(PollError::new(
                "exit_status",
                format!(
                    "{} failed ({status}); stderr ends: {:?}",
                    self.origin,
                    stderr.trim_end()
                ),
            ));
        }
        let mut polled = Polled {
            origin: self.origin.clone(),
            ..Polled::default()
        };
        let mut stdout = stdout;
        if cut {
            // Keep whole lines only; the rest of the output is not read.
            let keep = stdout
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            stdout.truncate(keep);
            polled.warnings.push((
                "output_truncated",
                format!(
                    "{} printed more than max_output ({} bytes); only the first {keep} bytes (whole lines) were parsed",
                    self.origin, config.max_output
                ),
            ));
        }
        let ctx = DecodeContext {
            name: &config.common.name,
            received_at: at,
            tag_keys: &config.tag_keys,
        };
        let decoded = decode(config.format, &stdout, &ctx);
        polled.points = decoded.points;
        polled.rejected = decoded.rejected;
        Ok(polled)
    }
}

/// Kills the process group led by `pid` (the child was started with `process_group(0)`).
fn kill_group(pid: Option<u32>) {
    let Some(pid) = pid.and_then(|p| rustix::process::Pid::from_raw(p as i32)) else {
        return;
    };
    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
}

/// Reads up to `limit` bytes, then drains (and drops) the rest so the child never blocks on a
/// full pipe. Returns the bytes and whether anything was cut.
async fn read_limited(mut reader: impl AsyncRead + Unpin, limit: usize) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut cut = false;
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(out.len());
                if n > room {
                    cut = true;
                }
                out.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
    (out, cut)
}

/// Reads everything, keeping the last `keep` bytes.
async fn read_tail(mut reader: impl AsyncRead + Unpin, keep: usize) -> Vec<u8> {
    let mut tail = Vec::new();
    let mut chunk = vec![0u8; 8 * 1024];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                tail.extend_from_slice(&chunk[..n]);
                if tail.len() > 2 * keep {
                    tail.drain(..tail.len() - keep);
                }
            }
        }
    }
    if tail.len() > keep {
        tail.drain(..tail.len() - keep);
    }
    tail
}

#[cfg(test)]
mod tests;
