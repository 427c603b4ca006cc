//! A PostgreSQL server of its own for a test: `initdb` into a temporary directory (as the
//! `postgres` user when the tests run as root, since PostgreSQL refuses root), a free port on
//! 127.0.0.1, its socket in that directory, stopped with `pg_ctl stop -m immediate` when
//! dropped. Nothing depends on a system-wide cluster. `scripts/test` installs Debian's
//! `postgresql` package; without it the test fails saying so.
//!
//! The end-to-end harness (`tributary-bench`) compiles this same file as its
//! `harness::postgres`.

// What the harness uses, the collector's own tests may not.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// Server settings (`-c name=value` each).
    settings: String,
}

/// Settings for tests: no fsync (a test's server is thrown away; crashes are `stop -m
/// immediate`, which loses nothing a committed transaction wrote to the WAL buffers in a
/// live kernel).
const TEST_SETTINGS: &str = "-c fsync=off -c max_connections=200";

fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path().join("bin"))
                .filter(|bin| bin.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .pop()
        .expect("PostgreSQL is not installed: apt-get install postgresql (scripts/test does)")
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A PostgreSQL program, to run as `postgres` when we are root.
fn command(program: &Path) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(program: &Path, args: &[&str]) {
    let output = command(program)
        .args(args)
        .output()
        .expect("run a PostgreSQL program");
    assert!(
        output.status.success(),
        "{} {args:?}: {}{}",
        program.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl PgServer {
    pub fn start() -> PgServer {
        Self::start_with(TEST_SETTINGS)
    }

    /// Starts a server with `settings` (`-c name=value …`) in place of the tests' (which turn
    /// fsync off): benchmarks run it durable, with PostgreSQL's defaults.
    pub fn start_with(settings: &str) -> PgServer {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("a temporary directory");
        if running_as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success());
        }
        let data = dir.path().join("data");
        let data = data.to_str().expect("a UTF-8 path");
        run(
            &bin.join("initdb"),
            &[
                "-D",
                data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let server = PgServer {
            dir,
            bin,
            port: free_port(),
            settings: settings.to_owned(),
        };
        server.start_again();
        server
    }

    /// Starts the server (again, after [`PgServer::stop_immediate`]) on the same port.
    pub fn start_again(&self) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("log");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 {}",
            self.port,
            self.dir.path().display(),
            self.settings
        );
        run(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap_or_default(),
                "-l",
                log.to_str().unwrap_or_default(),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// `pg_ctl stop -m immediate`: as a crash, no shutdown checkpoint.
    pub fn stop_immediate(&self) {
        let data = self.dir.path().join("data");
        run(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// The postmaster's process id (the server's backends are its children).
    pub fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("data").join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// The URL of database `name` on this server.
    pub fn database_url(&self, name: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{name}?sslmode=disable",
            self.port
        )
    }

    /// Creates database `name` (empty) and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        let port = self.port.to_string();
        let host = self.dir.path().display().to_string();
        run(
            &self.bin.join("createdb"),
            &["-h", &host, "-p", &port, "-U", "postgres", name],
        );
        self.database_url(name)
    }

    /// Runs `psql -c sql` on database `name` and returns what it printed (unaligned, tuples
    /// only).
    pub fn psql(&self, name: &str, sql: &str) -> String {
        self.run_psql(name, sql, std::process::Stdio::null())
    }

    /// Runs `psql -c sql` on database `name` with `input` as its standard input (for `COPY …
    /// FROM STDIN`) and returns what it printed.
    pub fn psql_with_input(&self, name: &str, sql: &str, input: std::fs::File) -> String {
        self.run_psql(name, sql, input.into())
    }

    fn run_psql(&self, name: &str, sql: &str, input: std::process::Stdio) -> String {
        let port = self.port.to_string();
        let host = self.dir.path().display().to_string();
        let output = command(&self.bin.join("psql"))
            .args(["-h", &host, "-p", &port, "-U", "postgres", "-d", name])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(input)
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Has a watcher stop the server and remove its directory once process `pid` is gone:
    /// for a server shared by a whole test process (a static), which no destructor stops.
    pub fn stop_when_gone(&self, pid: u32) {
        let data = self.dir.path().join("data");
        let watcher = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} -D '{data}' -m immediate -w stop >/dev/null 2>&1; rm -rf '{dir}'",
            stop = if running_as_root() {
                format!(
                    "runuser -u postgres -- '{}'",
                    self.bin.join("pg_ctl").display()
                )
            } else {
                format!("'{}'", self.bin.join("pg_ctl").display())
            },
            data = data.display(),
            dir = self.dir.path().display(),
        );
        let _ = Command::new("setsid")
            .args(["sh", "-c", &watcher])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = command(&self.bin.join("pg_ctl"))
            .args([
                "-D",
                data.to_str().unwrap_or_default(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
    }
}
