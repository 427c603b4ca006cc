//! The exec input against real child processes.

use std::time::Instant;

use tributary_wire::FieldValue;

use super::*;
use crate::config::tests::{error, one_input};
use crate::inputs::InputConfig;

fn poller(table: &str) -> ExecPoller {
    match one_input(&format!("[[inputs.exec]]\n{table}")) {
        InputConfig::Exec(config) => ExecPoller::new(config),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn parses_json_from_a_command_with_env_and_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mut exec = poller(&format!(
        "command = [\"/bin/sh\", \"-c\", \"echo '{{\\\"temp\\\": 21.5, \\\"where\\\": \\\"'$WHERE'\\\", \\\"dir\\\": \\\"'$(pwd)'\\\"}}'\"]\nenv = {{ WHERE = \"roof\" }}\ndir = {:?}\nname = \"meter\"\n",
        dir.path()
    ));
    let polled = exec.poll(1_000).await.unwrap();
    assert!(polled.rejected.is_empty(), "{:?}", polled.rejected);
    assert_eq!(polled.points.len(), 1);
    let point = &polled.points[0];
    assert_eq!(point.name, "meter");
    assert_eq!(point.ts, 1_000);
    assert_eq!(point.fields["temp"], FieldValue::F64(21.5));
    assert_eq!(point.fields["where"], FieldValue::Str("roof".into()));
    let pwd = std::fs::canonicalize(dir.path()).unwrap();
    assert_eq!(
        point.fields["dir"],
        FieldValue::Str(pwd.display().to_string())
    );
}

#[tokio::test]
async fn a_hanging_command_is_killed_with_its_children() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("child.pid");
    // The shell starts a grandchild that would outlive a plain kill of the shell.
    let mut exec = poller(&format!(
        "command = [\"sleep 30 & echo $! > {}; wait\"]\nshell = true\ntimeout = \"500ms\"\n",
        marker.display()
    ));
    let started = Instant::now();
    let error = exec.poll(0).await.unwrap_err();
    assert_eq!(error.kind, "timeout", "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let pid: i32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The grandchild is gone too (killed with the group, reaped by init).
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        let status = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if status.split_whitespace().nth(2) == Some("Z") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        status.is_empty() || status.split_whitespace().nth(2) == Some("Z"),
        "sleep {pid} still runs: {status}"
    );
}

#[tokio::test]
async fn garbage_is_quarantined_with_its_reason() {
    let mut exec = poller("command = [\"/bin/echo\", \"this is {not json\"]\nformat = \"json\"\n");
    let polled = exec.poll(0).await.unwrap();
    assert!(polled.points.is_empty());
    assert_eq!(polled.rejected.len(), 1);
    assert!(
        polled.rejected[0].reason.contains("JSON"),
        "{}",
        polled.rejected[0].reason
    );
    assert_eq!(polled.rejected[0].payload, b"this is {not json\n");
    assert_eq!(polled.origin, "/bin/echo this is {not json");
}

#[tokio::test]
async fn a_failing_command_reports_the_end_of_stderr() {
    let mut exec = poller(
        "command = [\"/bin/sh\", \"-c\", \"echo 'meter offline' >&2; echo 42; exit 3\"]\nformat = \"value\"\n",
    );
    let error = exec.poll(0).await.unwrap_err();
    assert_eq!(error.kind, "exit_status");
    assert!(
        error.message.contains("meter offline") && error.message.contains('3'),
        "{error}"
    );
}

#[tokio::test]
async fn output_over_the_limit_is_cut_at_a_line_and_reported() {
    let mut exec = poller(
        "command = [\"/bin/sh\", \"-c\", \"i=0; while [ $i -lt 200 ]; do echo \\\"m,k=v x=$i,y=1\\\"; i=$((i+1)); done\"]\nformat = \"influx\"\nmax_output = \"1KiB\"\n",
    );
    let polled = exec.poll(0).await.unwrap();
    // Lines of 14 bytes (x = 0..9), then 15: the 1,024th byte falls inside line 69, so the
    // first 68 whole lines (1,010 bytes) are kept and the part of line 69 is not parsed.
    assert!(polled.rejected.is_empty(), "{:?}", polled.rejected);
    assert_eq!(polled.points.len(), 68);
    assert_eq!(polled.warnings.len(), 1);
    assert_eq!(polled.warnings[0].0, "output_truncated");
    assert!(
        polled.warnings[0].1.contains("first 1010 bytes"),
        "{}",
        polled.warnings[0].1
    );
}

#[test]
fn check_names_a_missing_command() {
    let problem = |table: &str| match one_input(table) {
        InputConfig::Exec(config) => config
            .missing_program
            .map(|e| e.to_string())
            .unwrap_or_default(),
        _ => unreachable!(),
    };
    let message = problem("[[inputs.exec]]\ncommand = [\"/no/such/meter\"]\n");
    assert!(
        message.contains("inputs.exec[0].command") && message.contains("does not exist"),
        "{message}"
    );
    let message = problem("[[inputs.exec]]\ncommand = [\"no-such-program-here\"]\n");
    assert!(message.contains("not found in PATH"), "{message}");
    assert!(problem("[[inputs.exec]]\ncommand = [\"/bin/true\"]\n").is_empty());
    let message = error("[[inputs.exec]]\ncommand = [\"/bin/true\"]\nschedule = \"*/5 * *\"\n");
    assert!(
        message.contains("inputs.exec[0].schedule") && message.contains("3 fields"),
        "{message}"
    );
}

/// `shell = true` takes the command line as one string, as `config/agent.toml` shows; a list
/// of one still works, and a string without `shell` is refused with the way out.
#[tokio::test]
async fn a_shell_command_line_is_one_string() {
    let mut exec =
        poller("command = \"echo 'm v=1' | tr m n\"\nshell = true\nformat = \"influx\"\n");
    let polled = exec.poll(0).await.unwrap();
    assert_eq!(polled.points.len(), 1, "{:?}", polled.rejected);
    assert_eq!(polled.points[0].name, "n");
    let mut listed = poller("command = [\"echo 'm v=1'\"]\nshell = true\nformat = \"influx\"\n");
    assert_eq!(listed.poll(0).await.unwrap().points.len(), 1);
    let message = error("[[inputs.exec]]\ncommand = \"echo hi\"\n");
    assert!(
        message.contains("inputs.exec[0].command") && message.contains("set shell = true"),
        "{message}"
    );
    let message = error("[[inputs.exec]]\ncommand = [\"a\", \"b\"]\nshell = true\n");
    assert!(message.contains("one string"), "{message}");
}
