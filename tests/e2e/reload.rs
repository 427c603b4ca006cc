//! SIGHUP: the agent reloads its configuration file. Inputs restart with the new `[[inputs]]`
//! while the buffer and what it holds stay; an invalid file is refused and the running inputs
//! go on.

use std::time::Duration;

use tributary_bench::harness::{MosquittoOptions, Supervised, query_json};

use crate::{blocking, publish_all, settle, setup, wait_metric, wait_until_logged};

fn hangup(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_keeps_the_buffer_applies_new_inputs_and_refuses_a_bad_file() {
    let mut s = setup(&MosquittoOptions::default(), "", &[]);
    let config_path = s.agent.dir.join("agent.toml");
    let original = std::fs::read_to_string(&config_path).unwrap();

    // With the collector down, what the agent takes stays in its buffer.
    s.collector.kill9();
    let buffered = publish_all(s.broker.port, 0..300).await;
    wait_metric(
        &s.agent,
        "tributary_agent_buffer_points",
        300.0,
        Duration::from_secs(30),
    )
    .await;

    // A new input next to the MQTT one.
    let added = format!(
        "{original}\n[[inputs.exec]]\ncommand = [\"echo\", \"reloaded value=7i\"]\nformat = \"influx\"\ninterval = \"1s\"\n"
    );
    std::fs::write(&config_path, added).unwrap();
    hangup(s.agent.pid().unwrap());
    assert!(
        blocking(|| wait_until_logged(
            s.agent.process(),
            "configuration reloaded",
            1,
            Duration::from_secs(20)
        )),
        "the agent reloaded"
    );
    // The MQTT input restarted (its subscription is in the persistent session) and the
    // buffer kept every point it held.
    assert!(
        s.agent
            .metric("tributary_agent_buffer_points")
            .await
            .unwrap()
            >= 300.0
    );
    assert_eq!(
        s.agent.metric("tributary_agent_config_reloads_total").await,
        Some(1.0)
    );

    // A file that does not load is refused; the running inputs go on.
    std::fs::write(&config_path, "[agent\nthis is not TOML").unwrap();
    hangup(s.agent.pid().unwrap());
    assert!(
        blocking(|| wait_until_logged(
            s.agent.process(),
            "reload refused",
            1,
            Duration::from_secs(20)
        )),
        "the agent refused the file"
    );
    assert!(
        s.agent
            .metric("tributary_agent_errors_total{component=\"config\",kind=\"reload_invalid\"}")
            .await
            .is_some_and(|n| n >= 1.0)
    );
    let after = publish_all(s.broker.port, 300..500).await;
    // The input the good reload added has run (its schedule is whole seconds).
    wait_metric(
        &s.agent,
        "tributary_agent_received_total{input=\"inputs.exec[0]\"}",
        1.0,
        Duration::from_secs(20),
    )
    .await;

    // The collector comes back: everything arrives once, the new input's points too.
    blocking(|| s.collector.restart()).unwrap();
    let acked = buffered.union(&after).copied().collect();
    let verdict = settle(
        &s.collector.url(),
        Some(&s.agent),
        &acked,
        Duration::from_secs(60),
    )
    .await;
    assert!(verdict.exactly_once(), "{verdict:?}");
    assert_eq!(verdict.stored_points, 500);
    let answer = query_json(
        &s.collector.url(),
        "/api/v1/query?name=reloaded&field=value",
    )
    .await
    .unwrap();
    let points = answer["series"][0]["points"].as_array().map_or(0, Vec::len);
    assert!(points >= 1, "the input added by the reload ran: {answer}");
    assert_eq!(
        s.agent.process().count_logged("configuration reloaded"),
        1,
        "the refused file did not restart the inputs"
    );
    assert_eq!(
        s.agent.process().count_logged("connected to MQTT broker"),
        2,
        "the MQTT input was restarted once, by the good reload"
    );
}

/// The collector's SIGHUP applies `[[agents]]`: a token added to the file is accepted without
/// a restart, and a broken file is refused while the running agents keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_the_collectors_agents() {
    let dir = tempfile::tempdir().unwrap();
    let (first, _) = tributary_bench::harness::token_pair("a1");
    let (second, second_hash) = tributary_bench::harness::token_pair("a2");
    let mut collector =
        tributary_bench::harness::CollectorProcess::start(dir.path(), &[("a1", &first)]).unwrap();
    let base = collector.url();
    let write = |token: &str| {
        let url = format!("{base}/api/v2/write?precision=s");
        let token = token.to_owned();
        async move {
            tributary_bench::harness::http()
                .post(url)
                .header("Authorization", format!("Token {token}"))
                .body("m value=1 1700000000")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(write(&first).await, 204);
    assert_eq!(write(&second).await, 401);

    let path = dir.path().join("collector.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!("{text}\n[[agents]]\nid = \"a2\"\ntoken_sha256 = \"{second_hash}\"\n"),
    )
    .unwrap();
    hangup(collector.process().pid());
    assert!(blocking(|| collector.process().wait_for_log(
        "configuration reloaded",
        Duration::from_secs(20)
    )));
    assert_eq!(write(&second).await, 204, "the added agent is admitted");

    std::fs::write(&path, "[server\n").unwrap();
    hangup(collector.process().pid());
    assert!(blocking(|| collector
        .process()
        .wait_for_log("reload refused", Duration::from_secs(20))));
    assert_eq!(write(&first).await, 204, "the running configuration stays");
    assert_eq!(write(&second).await, 204);
}
