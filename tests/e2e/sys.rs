//! What the fault matrix needs from the system, each undone when dropped: a small tmpfs (a
//! disk that fills), a network namespace with a veth pair and iptables (a partition), a memory
//! cgroup (a machine with a memory bound), and signals (a paused process).
//!
//! These need root, as CI has; a test that cannot get them fails and says why, rather than
//! passing without having tested anything.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Runs a command, panicking with its output if it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Fails the test unless it runs as root.
pub fn require_root(what: &str) {
    let uid = run("id", &["-u"]);
    assert_eq!(
        uid.trim(),
        "0",
        "this test needs root to {what} (CI runs scripts/test as root)"
    );
}

/// A tmpfs of a given size, mounted at a directory; unmounted when dropped.
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    pub fn mount(path: &Path, size_mib: u64) -> Tmpfs {
        require_root("mount a small tmpfs (a disk that fills)");
        std::fs::create_dir_all(path).unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_mib}m"),
                "tmpfs",
                path.to_str().unwrap(),
            ],
        );
        Tmpfs {
            path: path.to_owned(),
        }
    }

    /// Bytes free on it.
    pub fn free(&self) -> u64 {
        let text = run(
            "df",
            &["--output=avail", "-B1", self.path.to_str().unwrap()],
        );
        text.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Writes a file that leaves about `leave` bytes free (for a disk that is nearly full).
    pub fn fill(&self, name: &str, leave: u64) -> PathBuf {
        let path = self.path.join(name);
        let size = self.free().saturating_sub(leave);
        let file = std::fs::File::create(&path).unwrap();
        // Real blocks: a tmpfs counts what is written.
        let chunk = vec![0xA5u8; 1 << 20];
        let mut left = size;
        let mut writer = std::io::BufWriter::new(file);
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            if std::io::Write::write_all(&mut writer, &chunk[..n]).is_err() {
                break;
            }
            left -= n as u64;
        }
        let _ = std::io::Write::flush(&mut writer);
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process of the test may still hold a file open for a moment.
        let _ = Command::new("umount")
            .args(["-l", self.path.to_str().unwrap()])
            .status();
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace joined to this one by a veth pair (this side 10.213.x.y+1, the other
/// `ns_ip`). Deleting the namespace (on drop) deletes the pair.
pub struct Netns {
    pub name: String,
    pub ns_ip: std::net::Ipv4Addr,
    host_dev: String,
}

impl Netns {
    pub fn create() -> Netns {
        require_root("make a network namespace (a partition)");
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("trib{pid}x{n}");
        // A /30 per namespace, from the pid and a counter, so parallel tests do not meet.
        let block = (pid % 200) as u8;
        let sub = ((n % 60) * 4) as u8;
        let host_ip = std::net::Ipv4Addr::new(10, 213, block, sub + 1);
        let ns_ip = std::net::Ipv4Addr::new(10, 213, block, sub + 2);
        let host_dev = format!("th{pid}x{n}");
        let ns_dev = format!("tn{pid}x{n}");
        let host_dev = host_dev.chars().take(15).collect::<String>();
        let ns_dev = ns_dev.chars().take(15).collect::<String>();
        run("ip", &["netns", "add", &name]);
        let ns = Netns {
            name: name.clone(),
            ns_ip,
            host_dev: host_dev.clone(),
        };
        run(
            "ip",
            &[
                "link", "add", &host_dev, "type", "veth", "peer", "name", &ns_dev,
            ],
        );
        run("ip", &["link", "set", &ns_dev, "netns", &name]);
        run(
            "ip",
            &["addr", "add", &format!("{host_ip}/30"), "dev", &host_dev],
        );
        run("ip", &["link", "set", &host_dev, "up"]);
        ns.exec(&["ip", "addr", "add", &format!("{ns_ip}/30"), "dev", &ns_dev]);
        ns.exec(&["ip", "link", "set", &ns_dev, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", self.name.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// The prefix that runs a program inside the namespace.
    pub fn wrapper(&self) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.name.clone(),
        ]
    }

    /// Drops every packet to `port` inside the namespace: connections hang, nothing is
    /// refused (a blackhole, not a closed port).
    pub fn blackhole(&self, port: u16) {
        let port = port.to_string();
        for chain in ["INPUT", "OUTPUT"] {
            let flag = if chain == "INPUT" {
                "--dport"
            } else {
                "--sport"
            };
            self.exec(&[
                "iptables", "-A", chain, "-p", "tcp", flag, &port, "-j", "DROP",
            ]);
        }
    }

    /// Lets the packets through again.
    pub fn heal(&self) {
        self.exec(&["iptables", "-F", "INPUT"]);
        self.exec(&["iptables", "-F", "OUTPUT"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_dev])
            .status();
    }
}

/// A memory cgroup with a hard limit (cgroup v2, or v1's memory controller); removed when
/// dropped (after its processes are gone).
pub struct MemoryCgroup {
    dir: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    pub fn create(limit_bytes: u64) -> MemoryCgroup {
        require_root("make a memory cgroup");
        let name = format!(
            "tributary-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers");
        let (dir, is_v2) = if v2.exists() {
            let controllers = std::fs::read_to_string(v2).unwrap_or_default();
            assert!(
                controllers.contains("memory"),
                "cgroup v2 without the memory controller"
            );
            let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+memory");
            (Path::new("/sys/fs/cgroup").join(&name), true)
        } else if v1.exists() {
            (v1.join(&name), false)
        } else {
            panic!("no memory cgroup controller (neither cgroup v2 nor v1's memory)");
        };
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("cannot make {dir:?}: {e}"));
        let cgroup = MemoryCgroup { dir, v2: is_v2 };
        if is_v2 {
            cgroup.write("memory.max", &limit_bytes.to_string());
            cgroup.write("memory.swap.max", "0");
        } else {
            cgroup.write("memory.limit_in_bytes", &limit_bytes.to_string());
            // No swap either, where the kernel accounts it.
            let _ = std::fs::write(
                cgroup.dir.join("memory.memsw.limit_in_bytes"),
                limit_bytes.to_string(),
            );
        }
        cgroup
    }

    fn write(&self, file: &str, value: &str) {
        std::fs::write(self.dir.join(file), value)
            .unwrap_or_else(|e| panic!("cannot write {file}: {e}"));
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    /// Moves a process into the cgroup.
    pub fn add(&self, pid: u32) {
        self.write("cgroup.procs", &pid.to_string());
    }

    /// The most memory the cgroup has held (bytes).
    pub fn peak(&self) -> u64 {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        self.read(file).trim().parse().unwrap_or(0)
    }

    /// Processes the kernel killed for the limit.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = if self.v2 {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        self.read(file)
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// Sends `signal` (e.g. "STOP", "CONT", "KILL") to `pid`.
pub fn signal(pid: u32, signal: &str) {
    run("kill", &[&format!("-{signal}"), &pid.to_string()]);
}
