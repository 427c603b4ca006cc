//! `check` validates a configuration and names the file, the key and the line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tributary_bench::harness::bin_dir;

fn run(program: &str, config: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(bin_dir().join(program));
    command.arg("check").arg("--config").arg(config);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the binary runs")
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn the_documented_examples_pass() {
    let output = run("tributary-agent", &repo("config/agent.toml"), &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = run("tributary-collector", &repo("config/collector.toml"), &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The compose demo's configurations load as the containers would load them.
#[test]
fn the_compose_demo_configurations_pass() {
    let env = [
        ("TRIBUTARY_AGENT_ID", "edge-1"),
        ("TRIBUTARY_TOKEN", "demo"),
        ("TRIBUTARY_COLLECTOR_URL", "http://collector:8080"),
    ];
    for (program, file) in [
        ("tributary-agent", "packaging/compose/agent.toml"),
        ("tributary-collector", "packaging/compose/collector.toml"),
    ] {
        let output = run(program, &repo(file), &env);
        assert!(
            output.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn problems_are_named_with_file_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "tributary-agent",
            "[agent]\nid = \"a\"\n[forward]\nurll = \"http://x\"\n",
            "forward.urll",
            4,
            "unknown field",
        ),
        (
            "tributary-agent",
            "[agent]\nid = \"a\"\n[forward\n",
            "",
            3,
            "invalid TOML",
        ),
        (
            "tributary-agent",
            "[buffer]\nflush_interval = \"fast\"\n",
            "buffer.flush_interval",
            2,
            "not a duration",
        ),
        (
            "tributary-agent",
            "[buffer]\nmax_size = \"huge\"\n",
            "buffer.max_size",
            2,
            "not a size",
        ),
        (
            "tributary-agent",
            "[forward]\nurl = \"localhost:8080\"\n",
            "forward.url",
            2,
            "http",
        ),
        (
            "tributary-agent",
            "[[inputs.mqtt]]\nbroker = \"mqtt://b\"\ntopics = [\"a/#/b\"]\n",
            "inputs.mqtt[0].topics[0]",
            3,
            "'#'",
        ),
        (
            "tributary-agent",
            // (forward.token may be unset for check: commands_that_send_nothing_need_no_token)
            "[forward]\nurl = \"${E2E_SURELY_UNSET}\"\n",
            "forward.url",
            2,
            "E2E_SURELY_UNSET is not set",
        ),
        (
            "tributary-collector",
            "[server]\nlisten = \"127.0.0.1:1\"\nlistne = \"x\"\n",
            "server.listne",
            3,
            "unknown field",
        ),
        (
            "tributary-collector",
            "[[agents]]\nid = \"a\"\ntoken_sha256 = \"XYZ\"\n",
            "agents[0].token_sha256",
            3,
            "SHA-256",
        ),
    ];
    for (index, (program, text, key, line, words)) in cases.into_iter().enumerate() {
        let path = write(&dir, &format!("case{index}.toml"), text);
        let output = run(program, &path, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{program} {text:?}: {stderr}"
        );
        let location = format!("{}:{line}: {key}", path.display());
        let location = location.trim_end_matches(": ");
        assert!(
            stderr.contains(location),
            "{text:?}: expected {location:?} in {stderr}"
        );
        assert!(
            stderr.contains(words),
            "{text:?}: expected {words:?} in {stderr}"
        );
    }
}

#[test]
fn environment_overrides_are_checked_too() {
    let path = repo("config/agent.toml");
    let output = run(
        "tributary-agent",
        &path,
        &[("TRIBUTARY_AGENT__FORWARD__URL", "ftp://nowhere")],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("forward.url"), "{stderr}");
    let output = run(
        "tributary-agent",
        &path,
        &[("TRIBUTARY_AGENT__FORWARD__URL", "https://collector.example")],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("https://collector.example/api/v1/batches"),
        "{stdout}"
    );
    // An override naming an unknown key says it came from the environment, not a line.
    let output = run(
        "tributary-agent",
        &path,
        &[("TRIBUTARY_AGENT__FORWARD__URLX", "1")],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("agent.toml: forward.urlx: unknown field")
            && stderr.contains("(from the environment: TRIBUTARY_AGENT__FORWARD__URLX)"),
        "{stderr}"
    );
    // A key inside [[inputs.*]] cannot be overridden: refused, with the way out.
    let output = run(
        "tributary-agent",
        &path,
        &[("TRIBUTARY_AGENT__INPUTS__MQTT__QOS", "0")],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot be overridden from the environment"),
        "{stderr}"
    );
}

/// `test` runs every input once and prints what it would buffer on stdout, as line protocol,
/// and what it has to say on stderr; a failing input makes it exit 1.
#[test]
fn test_runs_each_input_once_and_prints_its_points() {
    let dir = tempfile::tempdir().unwrap();
    let log = write(&dir, "app.log", "tailed id=1i\ntailed id=2i\n");
    let config = write(
        &dir,
        "agent.toml",
        &format!(
            r#"[agent]
id = "t"
data_dir = {data:?}
tags = {{ site = "lab" }}

[forward]
url = "http://127.0.0.1:9"

[[inputs.mqtt]]
broker = "mqtt://127.0.0.1:9"
topics = ["a/#"]

[[inputs.exec]]
command = ["/bin/sh", "-c", "echo 'polled value=1.5 1700000000000000000'; echo 'not line protocol'"]
format = "influx"

[[inputs.file]]
paths = [{log:?}]
format = "influx"
start_at = "beginning"

[[inputs.exec]]
name = "multi"
command = ["/bin/echo", "{{\"msg\": \"a\\nb\"}}"]
format = "json"
"#,
            data = dir.path().join("data"),
        ),
    );
    let output = Command::new(bin_dir().join("tributary-agent"))
        .arg("test")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines.len(), 4, "one line per point: {stdout}");
    // A string with a newline is printed on one line, the newline spelled out.
    assert!(
        lines[0].starts_with(r#"multi,site=lab msg="a\\nb" "#),
        "{stdout}"
    );
    assert_eq!(lines[1], "polled,site=lab value=1.5 1700000000000000000");
    let tailed = format!("tailed,path={},site=lab", log.display());
    assert!(
        lines[2].starts_with(&format!("{tailed} id=1i ")),
        "{stdout}"
    );
    assert!(
        lines[3].starts_with(&format!("{tailed} id=2i ")),
        "{stdout}"
    );
    assert!(
        stderr.contains("# inputs.mqtt[0]: skipped: MQTT is event-driven"),
        "{stderr}"
    );
    assert!(
        stderr.contains("# inputs.exec[0]: would quarantine: "),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("not line protocol").count(),
        1,
        "a quarantine is reported once: {stderr}"
    );
    assert!(stderr.contains("# inputs.exec[0]: 1 point(s)"), "{stderr}");

    // A message for the MQTT input, decoded as if it had arrived.
    let output = Command::new(bin_dir().join("tributary-agent"))
        .arg("test")
        .arg("--config")
        .arg(&config)
        .args(["--topic", "a/b", "--payload", r#"{"v": 2}"#])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("mqtt,site=lab,topic=a/b v=2i ")),
        "{stdout}\n{stderr}"
    );
    assert!(stderr.contains("# inputs.mqtt[0]: 1 point(s)"), "{stderr}");

    // An input that cannot run fails the command.
    let failing = write(
        &dir,
        "failing.toml",
        &format!(
            "[agent]\nid = \"t\"\ndata_dir = {data:?}\n\n[forward]\nurl = \"http://127.0.0.1:9\"\n\n[[inputs.exec]]\ncommand = [\"/bin/false\"]\n\n[[inputs.http]]\nurl = \"http://127.0.0.1:9/metrics\"\n",
            data = dir.path().join("data"),
        ),
    );
    let output = Command::new(bin_dir().join("tributary-agent"))
        .arg("test")
        .arg("--config")
        .arg(&failing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("# inputs.exec[0]: error ("), "{stderr}");
    // An HTTP failure says why, down to the socket.
    assert!(
        stderr.contains("# inputs.http[0]: error (request)")
            && stderr.contains("Connection refused"),
        "{stderr}"
    );
}

/// `check`, `test` and `health` send nothing, so an unset `${TRIBUTARY_TOKEN}` does not stop
/// them; running the agent still needs it, and says which key.
#[test]
fn commands_that_send_nothing_need_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        &dir,
        "agent.toml",
        &format!(
            "[agent]\nid = \"p\"\ndata_dir = {:?}\n[forward]\nurl = \"http://127.0.0.1:9\"\ntoken = \"${{TRIBUTARY_SURELY_UNSET_TOKEN}}\"\n[[inputs.exec]]\ncommand = [\"/bin/echo\", \"1\"]\nformat = \"value\"\n",
            dir.path().join("data")
        ),
    );
    for command in ["check", "test"] {
        let output = Command::new(bin_dir().join("tributary-agent"))
            .arg(command)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let output = Command::new(bin_dir().join("tributary-agent"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("forward.token") && stderr.contains("TRIBUTARY_SURELY_UNSET_TOKEN"),
        "{stderr}"
    );
}

/// `quickstart` runs a collector and an agent whose readings can be read back without a token
/// (it opens reads on loopback), and refuses a port that is taken instead of saying "running".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickstart_runs_and_refuses_a_taken_port() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let output = Command::new(bin_dir().join("tributary-agent"))
        .args(["quickstart", "--port", &port.to_string(), "--dir"])
        .arg(dir.path().join("q1"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("port {port} on 127.0.0.1 is not free")),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&output.stdout).contains("running"));
    drop(taken);

    let port = tributary_bench::harness::free_port();
    let mut command = Command::new(bin_dir().join("tributary-agent"));
    command
        .args(["quickstart", "--port", &port.to_string(), "--dir"])
        .arg(dir.path().join("q2"));
    let mut quickstart = tributary_bench::harness::Process::spawn("quickstart", command).unwrap();
    let running = crate::blocking(|| {
        quickstart.wait_for_log("Tributary is running", std::time::Duration::from_secs(30))
    });
    assert!(running, "{:?}", quickstart.logs());
    let url = format!("http://127.0.0.1:{port}/api/v1/query?name=mem&field=used_percent");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let answer = tributary_bench::harness::http()
            .get(&url)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), 200, "reads are open on loopback");
        let body: serde_json::Value = answer.json().await.unwrap();
        if body["series"].as_array().is_some_and(|s| !s.is_empty()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the system input's points arrive"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let status = crate::blocking(|| quickstart.terminate(std::time::Duration::from_secs(30)));
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

/// `--config` defaults to the packages' path, commands that read no configuration do not
/// offer it, and `check` warns about an agent without inputs and a collector without agents.
#[test]
fn config_defaults_help_and_warnings() {
    for (program, default) in [
        ("tributary-agent", "/etc/tributary/agent.toml"),
        ("tributary-collector", "/etc/tributary/collector.toml"),
    ] {
        let help = Command::new(bin_dir().join(program))
            .args(["check", "--help"])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&help.stdout).contains(default),
            "{program}"
        );
    }
    for (program, command) in [
        ("tributary-agent", "quickstart"),
        ("tributary-collector", "token"),
    ] {
        let help = Command::new(bin_dir().join(program))
            .args([command, "--help"])
            .output()
            .unwrap();
        assert!(
            !String::from_utf8_lossy(&help.stdout).contains("--config"),
            "{program} {command} reads no configuration"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let agent = write(&dir, "agent.toml", "[agent]\nid = \"x\"\n");
    let output = run("tributary-agent", &agent, &[]);
    assert!(output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("warning:")
            && String::from_utf8_lossy(&output.stderr).contains("no [[inputs.*]]")
    );
    let collector = write(
        &dir,
        "collector.toml",
        "[server]\nlisten = \"127.0.0.1:1\"\n",
    );
    let output = run("tributary-collector", &collector, &[]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no [[agents]]"));
}
