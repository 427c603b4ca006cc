//! MQTT over TLS with a private CA and a password.

use std::process::Command;
use std::time::Duration;

use tributary_bench::harness::{
    AgentProcess, CollectorProcess, Mosquitto, MosquittoOptions, Process, Publisher, TlsListener,
    agent_config, bin_dir, free_port, tls, token_pair,
};

use crate::{payload, settle, topic};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtts_with_a_private_ca_and_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tls::make(&dir.path().join("certs")).unwrap();
    let options = MosquittoOptions {
        tls: Some(TlsListener {
            ca: certs.ca.clone(),
            cert: certs.cert.clone(),
            key: certs.key.clone(),
            credentials: Some(("edge".into(), "s3cret".into())),
        }),
        ..MosquittoOptions::default()
    };
    let broker = Mosquitto::start(&dir.path().join("broker"), &options).unwrap();
    let (token, _) = token_pair("edge-1");
    let collector =
        CollectorProcess::start(&dir.path().join("collector"), &[("edge-1", &token)]).unwrap();
    let tls_url = broker.tls_url().unwrap();
    let input = |user: &str| {
        format!(
            "ca_file = \"{}\"\nusername = \"{user}\"\npassword = \"${{MQTT_PASSWORD}}\"",
            certs.ca.display()
        )
    };
    let config = agent_config(
        "edge-1",
        &dir.path().join("agent/data"),
        &collector.url(),
        &tls_url,
        free_port(),
        &input("edge"),
        "",
    );
    let agent = AgentProcess::start(
        &dir.path().join("agent"),
        &config,
        &[("TRIBUTARY_TOKEN", &token), ("MQTT_PASSWORD", "s3cret")],
    )
    .unwrap();

    // The publisher uses the plain listener; the agent's subscription is over TLS.
    let publisher = Publisher::connect(broker.port, "publisher", 100).await;
    for id in 0..200 {
        publisher.publish(id, &topic(id), payload(id)).await;
    }
    let acked = publisher.finish(Duration::from_secs(20)).await;
    let verdict = settle(
        &collector.url(),
        Some(&agent),
        &acked,
        Duration::from_secs(30),
    )
    .await;
    assert!(verdict.exactly_once(), "{verdict:?}");
    assert_eq!(verdict.stored_points, 200);

    // A wrong password is refused by the broker; the agent says so, counts it and retries.
    let wrong_dir = dir.path().join("wrong");
    std::fs::create_dir_all(&wrong_dir).unwrap();
    let wrong = agent_config(
        "edge-2",
        &wrong_dir.join("data"),
        &collector.url(),
        &tls_url,
        free_port(),
        &input("edge"),
        "",
    );
    std::fs::write(wrong_dir.join("agent.toml"), wrong).unwrap();
    let mut command = Command::new(bin_dir().join("tributary-agent"));
    command
        .arg("--config")
        .arg(wrong_dir.join("agent.toml"))
        .env("TRIBUTARY_TOKEN", "unused")
        .env("MQTT_PASSWORD", "wrong");
    let mut refused = Process::spawn("tributary-agent (wrong password)", command).unwrap();
    assert!(
        refused.wait_for_log("MQTT connection failed", Duration::from_secs(20)),
        "the refusal is logged"
    );
    // A second refusal, not the first line found again: it retries.
    assert!(
        crate::wait_until_logged(
            &mut refused,
            "MQTT connection failed",
            2,
            Duration::from_secs(10)
        ),
        "the connection is retried"
    );
    assert!(
        refused.is_running(),
        "a refused connection is retried, not fatal"
    );
}
