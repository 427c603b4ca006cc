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
