//! TLS between agent and collector, with a private CA made per test (`openssl`): HTTPS with the
//! CA in `forward.ca_file`; a wrong CA, which fails with a clear log line while the agent keeps
//! its data, and delivers once the CA is fixed; and mTLS, refused without a client certificate
//! and working with one.

use std::time::Duration;

use tributary_bench::harness::tls::{TestCertificates, make, make_client};
use tributary_bench::harness::{
    AgentProcess, CollectorOptions, CollectorProcess, Mosquitto, MosquittoOptions, Supervised,
    token_pair,
};

use crate::{blocking, publish_all, settle, start_agent};

/// A collector for agent `edge-1` with TLS from `certs`, and mTLS against their CA when
/// `mtls`.
fn tls_collector(
    dir: &std::path::Path,
    token: &str,
    certs: &TestCertificates,
    mtls: bool,
) -> CollectorProcess {
    let mut server_extra = format!(
        "tls_cert = {:?}\ntls_key = {:?}\n",
        certs.cert.display().to_string(),
        certs.key.display().to_string()
    );
    if mtls {
        server_extra.push_str(&format!(
            "tls_client_ca = {:?}\n",
            certs.ca.display().to_string()
        ));
    }
    CollectorProcess::start_custom(
        dir,
        &[("edge-1", token)],
        &CollectorOptions {
            server_extra,
            https: true,
            ..CollectorOptions::default()
        },
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_delivers_over_https_with_a_private_ca_and_waits_out_a_wrong_one() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make(&dir.path().join("pki")).unwrap();
    let other = make(&dir.path().join("other-pki")).unwrap();
    let (token, _) = token_pair("edge-1");
    let broker = blocking(|| {
        Mosquitto::start(&dir.path().join("broker"), &MosquittoOptions::default()).unwrap()
    });
    let collector =
        blocking(|| tls_collector(&dir.path().join("collector"), &token, &certs, false));
    assert!(collector.url().starts_with("https://"));

    // The wrong CA: nothing gets through, the log says why, the data stays buffered.
    let wrong_ca = other.ca.display().to_string();
    let mut agent: AgentProcess = blocking(|| {
        start_agent(
            &dir.path().join("agent"),
            &dir.path().join("agent/data"),
            &collector.url(),
            &broker,
            "",
            &[
                ("TRIBUTARY_TOKEN", &token),
                ("TRIBUTARY_AGENT__FORWARD__CA_FILE", &wrong_ca),
            ],
        )
    });
    let acked = publish_all(broker.port, 0..300).await;
    let logged = blocking(|| {
        agent.process().wait_for_log(
            "the collector's certificate is not trusted: check forward.ca_file",
            Duration::from_secs(30),
        )
    });
    assert!(logged, "a clear log line: {:?}", agent.process().logs());
    let line = agent
        .process()
        .logs()
        .into_iter()
        .find(|l| l.contains("TLS failed"))
        .unwrap_or_default();
    assert!(line.contains("invalid peer certificate"), "{line}");
    assert_eq!(
        agent
            .metric("tributary_agent_errors_total{component=\"forward\",kind=\"tls\"}")
            .await
            .map(|n| n >= 1.0),
        Some(true)
    );
    let buffered = agent.metric("tributary_agent_buffer_points").await;
    assert_eq!(buffered, Some(300.0), "the agent keeps its data");

    // The right CA: everything arrives, once.
    let right_ca = certs.ca.display().to_string();
    agent.set_env("TRIBUTARY_AGENT__FORWARD__CA_FILE", &right_ca);
    blocking(|| agent.restart()).unwrap();
    let verdict = settle(
        &collector.url(),
        Some(&agent),
        &acked,
        Duration::from_secs(60),
    )
    .await;
    assert!(verdict.exactly_once(), "{verdict:?}");
    assert_eq!(verdict.stored_points, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_an_agent_without_a_client_certificate_and_takes_one_with() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make(&dir.path().join("pki")).unwrap();
    let (client_cert, client_key) = make_client(&certs, "edge-1").unwrap();
    let (token, _) = token_pair("edge-1");
    let broker = blocking(|| {
        Mosquitto::start(&dir.path().join("broker"), &MosquittoOptions::default()).unwrap()
    });
    let collector = blocking(|| tls_collector(&dir.path().join("collector"), &token, &certs, true));
    let ca = certs.ca.display().to_string();

    // A client with the CA but no certificate of its own does not get through the handshake.
    tributary_bench::harness::http(); // installs rustls' provider
    let pem = std::fs::read(&certs.ca).unwrap();
    let plain = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let refused = plain
        .get(format!("{}/healthz", collector.url()))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "no client certificate, no answer: {refused:?}"
    );

    let mut agent = blocking(|| {
        start_agent(
            &dir.path().join("agent"),
            &dir.path().join("agent/data"),
            &collector.url(),
            &broker,
            "",
            &[
                ("TRIBUTARY_TOKEN", &token),
                ("TRIBUTARY_AGENT__FORWARD__CA_FILE", &ca),
            ],
        )
    });
    let acked = publish_all(broker.port, 0..200).await;
    let logged = blocking(|| {
        agent.process().wait_for_log(
            "the collector requires a client certificate: set forward.cert_file and forward.key_file",
            Duration::from_secs(30),
        )
    });
    assert!(logged, "{:?}", agent.process().logs());
    assert_eq!(
        agent.metric("tributary_agent_buffer_points").await,
        Some(200.0),
        "the agent keeps its data"
    );

    // With its certificate it delivers everything, once; the harness reads the collector with
    // the same identity.
    let (cert_text, key_text) = (
        client_cert.display().to_string(),
        client_key.display().to_string(),
    );
    agent.set_env("TRIBUTARY_AGENT__FORWARD__CERT_FILE", &cert_text);
    agent.set_env("TRIBUTARY_AGENT__FORWARD__KEY_FILE", &key_text);
    blocking(|| agent.restart()).unwrap();
    let client = identity_client(&certs, &client_cert, &client_key);
    stored_once(&client, &collector.url(), &mut agent, &acked).await;

    // `health` asks the mTLS listener with a client certificate, and says it needs one.
    let health = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new(tributary_bench::harness::bin_dir().join("tributary-collector"))
            .arg("health")
            .arg("--config")
            .arg(collector.config_path())
            .args(args)
            .output()
            .unwrap()
    };
    let without = health(&[]);
    assert!(!without.status.success());
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert!(stderr.contains("pass --cert and --key"), "{stderr}");
    let with = health(&[
        "--cert".as_ref(),
        client_cert.as_os_str(),
        "--key".as_ref(),
        client_key.as_os_str(),
    ]);
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
}

/// Under mTLS an agent configured without a token is known by its client certificate alone;
/// a token of another agent sent with that certificate is refused with 403 (the token wins,
/// and must agree with the certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_known_by_its_client_certificate_alone_delivers_once() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make(&dir.path().join("pki")).unwrap();
    let (client_cert, client_key) = make_client(&certs, "edge-1").unwrap();
    let (other_token, _) = token_pair("edge-2");
    let broker = blocking(|| {
        Mosquitto::start(&dir.path().join("broker"), &MosquittoOptions::default()).unwrap()
    });
    let collector = blocking(|| {
        let server_extra = format!(
            "tls_cert = {:?}\ntls_key = {:?}\ntls_client_ca = {:?}\n",
            certs.cert.display().to_string(),
            certs.key.display().to_string(),
            certs.ca.display().to_string()
        );
        CollectorProcess::start_custom(
            &dir.path().join("collector"),
            &[("edge-2", &other_token)],
            &CollectorOptions {
                server_extra,
                // edge-1 has no token_sha256: its certificate names it.
                extra: "[[agents]]\nid = \"edge-1\"\n".into(),
                https: true,
                ..CollectorOptions::default()
            },
        )
        .unwrap()
    });
    tributary_bench::harness::http(); // installs rustls' provider
    let client = identity_client(&certs, &client_cert, &client_key);
    let write = format!("{}/api/v2/write", collector.url());
    let line = format!("probe value=1 {}", tributary_wire::time::now_ns());
    let answer = client
        .post(&write)
        .header("Authorization", format!("Bearer {other_token}"))
        .body(line.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 403);
    let body: serde_json::Value = answer.json().await.unwrap();
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with(
            "the client certificate names agent \"edge-1\" but the token is agent \"edge-2\"'s"
        ),
        "{body}"
    );
    let answer = client.post(&write).body(line).send().await.unwrap();
    assert_eq!(answer.status(), 204, "{:?}", answer.text().await);

    let (cert_text, key_text, ca) = (
        client_cert.display().to_string(),
        client_key.display().to_string(),
        certs.ca.display().to_string(),
    );
    let mut agent = blocking(|| {
        start_agent(
            &dir.path().join("agent"),
            &dir.path().join("agent/data"),
            &collector.url(),
            &broker,
            "",
            &[
                ("TRIBUTARY_TOKEN", ""),
                ("TRIBUTARY_AGENT__FORWARD__CA_FILE", &ca),
                ("TRIBUTARY_AGENT__FORWARD__CERT_FILE", &cert_text),
                ("TRIBUTARY_AGENT__FORWARD__KEY_FILE", &key_text),
            ],
        )
    });
    let acked = publish_all(broker.port, 0..200).await;
    stored_once(&client, &collector.url(), &mut agent, &acked).await;
    let agents: serde_json::Value = client
        .get(format!("{}/api/v1/agents", collector.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(agents.to_string().contains("edge-1"), "{agents}");
}

/// A client trusting `certs`' CA and presenting `cert` and `key`.
fn identity_client(
    certs: &TestCertificates,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> reqwest::Client {
    let pem = std::fs::read(&certs.ca).unwrap();
    let mut identity = std::fs::read(cert).unwrap();
    identity.extend(std::fs::read(key).unwrap());
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .identity(reqwest::Identity::from_pem(&identity).unwrap())
        .build()
        .unwrap()
}

/// Waits (bounded) until every acknowledged message is stored, then checks once more after
/// the agent's buffer is empty, so a double sent late would be seen: each is stored once.
async fn stored_once(
    client: &reqwest::Client,
    collector_url: &str,
    agent: &mut AgentProcess,
    acked: &std::collections::HashSet<u64>,
) {
    let query = format!(
        "{}/api/v1/query?name={}&field=id",
        collector_url,
        crate::NAME
    );
    let expected: Vec<i64> = {
        let mut all: Vec<i64> = acked.iter().map(|&id| id as i64).collect();
        all.sort_unstable();
        all
    };
    // Until everything arrived (bounded), then once more after the agent's buffer is empty,
    // so a double sent late would be seen.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (ids, answer) = loop {
        let answer: serde_json::Value = client
            .get(&query)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut ids: Vec<i64> = answer["series"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|series| series["points"].as_array().cloned().unwrap_or_default())
            .filter_map(|point| point[1].as_i64())
            .collect();
        ids.sort_unstable();
        if ids.len() >= expected.len()
            && agent.metric("tributary_agent_buffer_points").await == Some(0.0)
        {
            break (ids, answer);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent delivered with its certificate: {} of {} stored; {:?}",
            ids.len(),
            expected.len(),
            agent.process().logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        ids, expected,
        "every acknowledged message stored once: {answer}"
    );
}
