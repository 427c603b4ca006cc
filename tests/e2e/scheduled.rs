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
    // Wall-clock bounds here are wide on purpose and say why: the machine has two cores shared
    // with the tests running in parallel, so start-up, timer wake-ups and process spawns can
    // each be late by hundreds of milliseconds. What is checked is what a late machine does
    // not blur: runs on whole seconds, one per second, stamped before the command ran.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let answer = loop {
        let answer = query_json(&collector.url(), "/api/v1/query?name=clock&field=value")
            .await
            .unwrap();
        let count = answer["series"][0]["points"].as_array().map_or(0, Vec::len);
        if count >= 6 {
            break answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "six runs of a per-second schedule within 30 s: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let points = answer["series"][0]["points"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let stamps: Vec<i64> = points
        .iter()
        .map(|p| tributary_wire::time::parse_rfc3339(p[0].as_str().unwrap()).unwrap())
        .collect();
    // Cron with seconds runs on the second: each stamp (when the poll started) is a timer
    // wake-up shortly after a whole second. Six stamps at random offsets would all land in
    // the first half of their second with a chance of 1 in 64.
    for stamp in &stamps {
        let offset = Duration::from_nanos(stamp.rem_euclid(1_000_000_000).unsigned_abs());
        assert!(
            offset < Duration::from_millis(500),
            "a run {offset:?} after its second: {stamps:?}"
        );
    }
    // One run per second: consecutive runs are whole seconds apart; a gap of two means a run
    // was skipped because the previous one was still busy, which a loaded machine may cause
    // once, not as a rule.
    let seconds: Vec<i64> = stamps.iter().map(|s| s.div_euclid(1_000_000_000)).collect();
    let gaps: Vec<i64> = seconds.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|&g| g >= 1),
        "two runs in one second: {gaps:?}"
    );
    let ones = gaps.iter().filter(|&&g| g == 1).count();
    assert!(
        ones * 4 >= gaps.len() * 3,
        "runs one second apart as a rule: {gaps:?}"
    );
    for (point, stamp) in points.iter().zip(&stamps) {
        // Each point's time is when the poll started: the command ran after it, within the
        // time a loaded machine may take to start a process (2 s, not the next tick's).
        let ran_at = point[1].as_f64().unwrap() as i64;
        assert!(
            (0..2_000_000_000).contains(&(ran_at - stamp)),
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
    // Each 2.5 s run lets the two 1 s ticks that fall due meanwhile go (skipped), so runs
    // cannot outnumber the skips; had the ticks been queued instead, they would.
    assert!(
        slow >= 1 && slow as f64 <= skipped + 1.0,
        "{slow} slow runs completed, {skipped} skipped"
    );
    assert_eq!(
        agent
            .terminate(Duration::from_secs(15))
            .map(|s| s.success()),
        Some(true)
    );
}
