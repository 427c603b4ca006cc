//! Polled inputs on schedules, end to end: cron with seconds, intervals, and a slow run that
//! makes the next ones skipped (and counted) rather than overlapped.

use std::time::Duration;

use tributary_bench::harness::{
    AgentProcess, CollectorProcess, Supervised, agent_config_with, free_port, query_json,
    token_pair,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_fire_on_time_and_busy_runs_are_skipped_not_overlapped() {
    let dir = tempfile::tempdir().unwrap();
    let (token, _) = token_pair("edge-1");
    let collector =
        CollectorProcess::start(&dir.path().join("collector"), &[("edge-1", &token)]).unwrap();
    let lock = dir.path().join("running");
    let overlap = dir.path().join("overlapped");
    let inputs = format!(
        r#"
[[inputs.exec]]
name = "clock"
schedule = "* * * * * *"
command = ["/bin/date", "+%s%N"]
format = "value"

[[inputs.exec]]
name = "slow"
interval = "1s"
shell = true
command = ["mkdir {lock} 2>/dev/null || touch {overlap}; sleep 2.5; rmdir {lock}; echo 1"]
format = "value"
timeout = "10s"
"#,
        lock = lock.display(),
        overlap = overlap.display()
    );
    let config = agent_config_with(
        "edge-1",
        &dir.path().join("agent/data"),
        &collector.url(),
        free_port(),
        &inputs,
    );
    let mut agent = AgentProcess::start(
        &dir.path().join("agent"),
        &config,
        &[("TRIBUTARY_TOKEN", &token)],
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(7_500)).await;

    let answer = query_json(&collector.url(), "/api/v1/query?name=clock&field=value")
        .await
        .unwrap();
    let points = answer["series"][0]["points"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        (5..=9).contains(&points.len()),
        "{} runs in 7.5 s: {answer}",
        points.len()
    );
    let stamps: Vec<i64> = points
        .iter()
        .map(|p| tributary_wire::time::parse_rfc3339(p[0].as_str().unwrap()).unwrap())
        .collect();
    for pair in stamps.windows(2) {
        let gap = Duration::from_nanos((pair[1] - pair[0]) as u64);
        assert!(
            gap > Duration::from_millis(500) && gap < Duration::from_millis(1_600),
            "{gap:?} between runs"
        );
    }
    for (point, stamp) in points.iter().zip(&stamps) {
        // Each point's time is when the poll started: the command ran just after it.
        let ran_at = point[1].as_f64().unwrap() as i64;
        assert!(
            (0..500_000_000).contains(&(ran_at - stamp)),
            "poll at {stamp}, ran at {ran_at}"
        );
    }

    let skipped = agent
        .metric("tributary_agent_skipped_runs_total{input=\"inputs.exec[1]\"}")
        .await
        .unwrap_or(0.0);
    assert!(skipped >= 2.0, "skipped runs: {skipped}");
    assert!(!overlap.exists(), "two runs of the slow input overlapped");
    let answer = query_json(&collector.url(), "/api/v1/query?name=slow&field=value")
        .await
        .unwrap();
    let slow = answer["series"][0]["points"].as_array().map_or(0, Vec::len);
    assert!((1..=3).contains(&slow), "{slow} slow runs completed");
    assert_eq!(
        agent
            .terminate(Duration::from_secs(15))
            .map(|s| s.success()),
        Some(true)
    );
}
