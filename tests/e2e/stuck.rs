//! File-system work never stops the agent's event loop. A FUSE mount whose `stat` and
//! `statfs` never answer (a hung NFS server, as the kernel sees it) is matched by a tail glob and
//! named for the system input's disk reads, and a FIFO is matched by another tail glob. While
//! the file input is stuck in the kernel and the mount's `statvfs` times out, the MQTT input
//! keeps storing and acknowledging every delivery, a regular file next to the FIFO is still
//! tailed, and the watchdog keeps being pinged; a stop abandons the stuck thread and exits 0.
//!
//! Needs root and `/dev/fuse`, and Debian's `python3-fusepy` (scripts/test installs it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tributary_bench::harness::{
    CollectorProcess, Mosquitto, MosquittoOptions, Oracle, Process, Supervised, token_pair,
    wait_until,
};

use crate::systemd::FakeManager;
use crate::{blocking, publish_all, settle, start_agent};

/// A FUSE file system with one file, `stuck.log`, whose attributes never come, and whose
/// `statfs` never answers; it prints a line each time a call starts hanging.
const HUNG_FS: &str = r#"
import errno, stat, sys, time
from fusepy import FUSE, FuseOSError, Operations

class Hung(Operations):
    def getattr(self, path, fh=None):
        if path == "/":
            return dict(st_mode=stat.S_IFDIR | 0o755, st_nlink=2)
        if path == "/stuck.log":
            print("hanging in getattr", flush=True)
            time.sleep(3600)
        raise FuseOSError(errno.ENOENT)

    def readdir(self, path, fh):
        return [".", "..", "stuck.log"]

    def statfs(self, path):
        print("hanging in statfs", flush=True)
        time.sleep(3600)

print("serving", flush=True)
FUSE(Hung(), sys.argv[1], foreground=True, nothreads=False)
"#;

/// The hung mount: its server, and the mount point it is unmounted from when dropped.
struct HungMount {
    server: Option<Process>,
    point: PathBuf,
}

impl HungMount {
    fn start(dir: &Path) -> HungMount {
        assert!(
            Path::new("/dev/fuse").exists(),
            "this test serves a FUSE mount: it needs /dev/fuse and root"
        );
        let script = dir.join("hung_fs.py");
        std::fs::write(&script, HUNG_FS).unwrap();
        let point = dir.join("mnt");
        std::fs::create_dir_all(&point).unwrap();
        let mut command = Command::new("/usr/bin/python3");
        command.arg(&script).arg(&point);
        let server = Process::spawn("hung-fs", command).unwrap();
        let mut mount = HungMount {
            server: Some(server),
            point,
        };
        let mounted = wait_until(Duration::from_secs(20), || mount.is_mounted());
        assert!(
            mounted,
            "the FUSE mount came up: {:?}",
            mount.server().logs()
        );
        mount
    }

    fn is_mounted(&self) -> bool {
        let wanted = self.point.to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .any(|line| line.split(' ').nth(1) == Some(wanted.as_str()))
    }

    fn server(&mut self) -> &mut Process {
        self.server.as_mut().expect("the server runs until drop")
    }
}

impl Drop for HungMount {
    fn drop(&mut self) {
        // Killing the server fails every call still waiting on it; then the mount goes.
        drop(self.server.take());
        let _ = Command::new("umount").arg("-l").arg(&self.point).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_mount_and_a_fifo_stop_neither_mqtt_nor_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    // Declared before the mount so that the mount goes first on every way out of the test: a
    // process with a thread in a FUSE call the server has taken cannot exit (not even on
    // SIGKILL) until the server answers or dies.
    let mut agent_slot = None;
    let mut mount = blocking(|| HungMount::start(dir.path()));
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let fifo = logs.join("pipe.log");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo");
    std::fs::write(
        logs.join("app.log"),
        "tailed id=1i,value=1.5\ntailed id=2i,value=2.5\n",
    )
    .unwrap();

    let broker = blocking(|| {
        Mosquitto::start(&dir.path().join("broker"), &MosquittoOptions::default()).unwrap()
    });
    let (token, _) = token_pair("edge-1");
    let collector = blocking(|| {
        CollectorProcess::start(&dir.path().join("collector"), &[("edge-1", &token)]).unwrap()
    });
    let socket = dir.path().join("notify.sock");
    let mut manager = FakeManager::bind(&socket);
    let extra = format!(
        r#"
[[inputs.file]]
paths = ["{mnt}/*.log"]
start_at = "beginning"
scan_interval = "200ms"

[[inputs.file]]
paths = ["{logs}/*.log"]
format = "influx"
start_at = "beginning"
scan_interval = "200ms"

[[inputs.system]]
interval = "1s"
collect = ["disk", "mem"]
mount_points = ["/", "{mnt}"]
"#,
        mnt = mount.point.display(),
        logs = logs.display(),
    );
    let socket_text = socket.to_string_lossy().into_owned();
    let agent = agent_slot.insert(blocking(|| {
        start_agent(
            &dir.path().join("agent"),
            &dir.path().join("agent/data"),
            &collector.url(),
            &broker,
            &extra,
            &[
                ("TRIBUTARY_TOKEN", &token),
                ("NOTIFY_SOCKET", &socket_text),
                ("WATCHDOG_USEC", "400000"),
            ],
        )
    }));
    assert!(
        blocking(|| manager.wait_for("READY=1", Duration::from_secs(20))),
        "the agent said it was ready"
    );

    // The file input and the disk reads are both stuck in the kernel now.
    let hung = blocking(|| {
        wait_until(Duration::from_secs(20), || {
            let server = mount.server();
            server.logged("hanging in getattr") && server.logged("hanging in statfs")
        })
    });
    assert!(
        hung,
        "the agent reached the hung mount: {:?}",
        mount.server().logs()
    );

    // The event loop goes on: watchdog pings every ~200 ms ...
    let pings = blocking(|| manager.count_for("WATCHDOG=1", Duration::from_secs(2)));
    assert!(
        pings >= 5,
        "the watchdog was pinged while the mount hung: {pings} in 2 s"
    );
    // ... every MQTT delivery is stored exactly once (the broker only sends more as the agent
    // acknowledges, so all of them arriving means the acknowledgements flowed) ...
    let acked = publish_all(broker.port, 0..2_000).await;
    let verdict = settle(
        &collector.url(),
        Some(agent),
        &acked,
        Duration::from_secs(60),
    )
    .await;
    assert!(verdict.exactly_once(), "{verdict:?}");
    assert_eq!(verdict.stored_points, 2_000);
    // ... the file next to the FIFO is tailed ...
    let tailed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(oracle) = Oracle::read(&collector.url(), "tailed").await
                && oracle.points == 2
            {
                return oracle;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("both lines of app.log were stored");
    assert_eq!(tailed.counts.len(), 2);
    // ... and the mount that did not answer is named and counted.
    let timeouts = agent
        .metric("tributary_agent_errors_total{component=\"system\",kind=\"mount_timeout\"}")
        .await;
    assert_eq!(
        timeouts,
        Some(1.0),
        "one timeout: the mount is skipped while stuck"
    );
    assert!(agent.process().logged("did not answer within"));

    // A stop abandons the stuck file input's thread after its grace and finishes its work: the
    // buffer is committed and closed. The kernel holds the process until the call the thread is
    // in ends, as it would for a hung NFS server; when the server goes, it exits 0.
    agent.process().sigterm();
    let stopped = blocking(|| {
        agent
            .process()
            .wait_for_log("agent stopped", Duration::from_secs(30))
    });
    assert!(
        stopped,
        "the agent finished its shutdown with a thread still stuck"
    );
    assert!(agent.process().logged("abandoning it"));
    drop(mount);
    let exited = blocking(|| wait_until(Duration::from_secs(20), || !agent.process().is_running()));
    assert!(exited, "the agent exited once the hung call failed");
    let status = agent.process().status();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "the agent exits 0");
}
