use std::path::Path;

use super::*;

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::load_str(text, Path::new("agent.toml"))
}

/// The one input `text` configures (for the inputs' own tests).
pub(crate) fn one_input(text: &str) -> InputConfig {
    let mut config =
        load(&format!("[agent]\nid = \"test\"\n{text}")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.inputs.len(), 1);
    config.inputs.remove(0)
}

/// The message of the error `text` causes.
pub(crate) fn error(text: &str) -> String {
    load(&format!("[agent]\nid = \"test\"\n{text}"))
        .unwrap_err()
        .to_string()
}

/// The documented example must load, and every default in it must match the code.
#[test]
fn documented_example_loads_with_the_defaults_it_states() {
    let text = include_str!("../../../config/agent.toml");
    let config = load(text).unwrap_or_else(|e| panic!("config/agent.toml: {e}"));
    let defaults = load("[agent]\nid = \"pump-7\"\n[[inputs.mqtt]]\nbroker = \"mqtt://127.0.0.1:1883\"\ntopics = [\"sensors/#\"]\ntopic_tags = \"sensors/{device}/{name}\"\n").unwrap();

    assert_eq!(config.agent.data_dir, defaults.agent.data_dir);
    assert_eq!(config.agent.listen, defaults.agent.listen);
    assert_eq!(
        config.agent.shutdown_timeout,
        defaults.agent.shutdown_timeout
    );
    assert_eq!(config.agent.tags["site"], "plant-1");

    let (b, d) = (&config.buffer, &defaults.buffer);
    assert_eq!(
        (
            b.max_size,
            b.when_full,
            b.disk_reserve,
            b.flush_interval,
            b.flush_points,
            b.queue_capacity
        ),
        (
            d.max_size,
            d.when_full,
            d.disk_reserve,
            d.flush_interval,
            d.flush_points,
            d.queue_capacity
        )
    );

    let (f, d) = (&config.forward, &defaults.forward);
    assert_eq!(f.batches_url, d.batches_url);
    assert_eq!(
        f.batches_url.as_str(),
        "http://127.0.0.1:8080/api/v1/batches"
    );
    assert_eq!(
        (
            f.batch_max_points,
            f.batch_max_bytes,
            f.linger,
            f.timeout,
            f.connect_timeout
        ),
        (
            d.batch_max_points,
            d.batch_max_bytes,
            d.linger,
            d.timeout,
            d.connect_timeout
        )
    );
    assert_eq!(
        (
            f.backoff_initial,
            f.backoff_max,
            f.encoding,
            f.compression_level,
            f.final_attempt_timeout
        ),
        (
            d.backoff_initial,
            d.backoff_max,
            d.encoding,
            d.compression_level,
            d.final_attempt_timeout
        )
    );

    let (InputConfig::Mqtt(m), InputConfig::Mqtt(d)) = (&config.inputs[0], &defaults.inputs[0])
    else {
        panic!("the first input of both is MQTT")
    };
    assert_eq!(
        (m.qos, m.format, &m.topic_tag, &m.name, &m.client_id),
        (d.qos, d.format, &d.topic_tag, &d.name, &d.client_id)
    );
    assert_eq!(
        (
            m.keep_alive,
            m.max_payload,
            m.reconnect_initial,
            m.reconnect_max
        ),
        (
            d.keep_alive,
            d.max_payload,
            d.reconnect_initial,
            d.reconnect_max
        )
    );
    assert_eq!(m.client_id, "tributary-pump-7");
}

/// The minimal configuration the README shows (the tables this agent has) works as written.
#[test]
fn minimal_configuration_from_the_design_works() {
    let config = load(
        r#"
[agent]
id = "pump-7"
data_dir = "/var/lib/tributary"

[forward]
url = "http://127.0.0.1:8080"
token = "${PATH}"

[[inputs.mqtt]]
broker = "mqtt://127.0.0.1:1883"
topics = ["sensors/#"]
qos = 1
format = "json"
topic_tags = "sensors/{device}/{name}"
"#,
    )
    .unwrap();
    assert_eq!(config.agent.id, "pump-7");
    assert_eq!(
        config.forward.token.as_deref(),
        std::env::var("PATH").ok().as_deref()
    );
    let InputConfig::Mqtt(mqtt) = &config.inputs[0] else {
        panic!("the first input is MQTT")
    };
    assert_eq!(mqtt.qos, rumqttc::QoS::AtLeastOnce);
    assert!(mqtt.template.is_some());
    assert_eq!(mqtt.topic_tag, None);
}

fn error_of(text: &str) -> ConfigError {
    load(text).expect_err("configuration should be refused")
}

#[test]
fn bad_values_name_their_key_and_line() {
    let cases = [
        (
            "[buffer]\nmax_size = \"lots\"\n",
            "buffer.max_size",
            2,
            "not a size",
        ),
        (
            "[forward]\nlinger = \"soon\"\n",
            "forward.linger",
            2,
            "not a duration",
        ),
        ("[forward]\nurl = \"ftp://x\"\n", "forward.url", 2, "http"),
        // Types as written, not coerced: "1" is not a number, "no" not a boolean.
        (
            "[[inputs.mqtt]]\nbroker = \"mqtt://b\"\ntopics = [\"a\"]\nqos = \"1\"\n",
            "inputs.mqtt[0].qos",
            4,
            "invalid type: string \"1\"",
        ),
        (
            "[[inputs.system]]\npercpu = \"no\"\n",
            "inputs.system[0].percpu",
            2,
            "expected a boolean",
        ),
        (
            "[[inputs.mqtt]]\nbroker = \"mqtt://b\"\ntopics = [\"a\"]\nqos = true\n",
            "inputs.mqtt[0].qos",
            4,
            "invalid type: boolean",
        ),
        (
            "[forward]\nurl = \"http://a\"\nurls = [\"http://b\"]\n",
            "forward.urls",
            3,
            "not both",
        ),
        ("[forward]\nurls = []\n", "forward.urls", 2, "is empty"),
        (
            "[forward]\nurls = [\"http://a\", \"ftp://b\"]\n",
            "forward.urls[1]",
            2,
            "http",
        ),
        (
            "[forward]\nurls = [\"http://a\", \"http://a/\"]\n",
            "forward.urls[1]",
            2,
            "named twice",
        ),
        (
            "[forward]\n\ncert_file = \"/nonexistent/c.pem\"\n",
            "forward.key_file",
            1,
            "needs its private key",
        ),
        (
            "[forward]\ncert_file = \"/nonexistent/c.pem\"\nkey_file = \"/nonexistent/k.pem\"\n",
            "forward.cert_file",
            2,
            "cannot read",
        ),
        ("[forward]\nurl = \"::\"\n", "forward.url", 2, "not a URL"),
        (
            "[[inputs.mqtt]]\nbroker = \"mqtt://b\"\ntopics = [\"a/#/b\"]\n",
            "inputs.mqtt[0].topics[0]",
            3,
            "'#'",
        ),
        (
            "[[inputs.mqtt]]\nbroker = \"mqtt://b\"\ntopics = [\"a\"]\nqos = 2\n",
            "inputs.mqtt[0].qos",
            4,
            "not supported",
        ),
        (
            "[[inputs.mqtt]]\nbroker = \"http://b\"\ntopics = [\"a\"]\n",
            "inputs.mqtt[0].broker",
            2,
            "scheme",
        ),
        (
            "[[inputs.mqtt]]\nbroker = \"mqtt://b\"\ntopics = [\"a\"]\ntopic_tags = \"a/{x}/{x}\"\n",
            "inputs.mqtt[0].topic_tags",
            4,
            "twice",
        ),
        (
            "[[inputs.mqtt]]\nbroker = \"mqtt://b\"\ntopics = [\"a\"]\nformat = \"xml\"\n",
            "inputs.mqtt[0].format",
            4,
            "is not a payload format; choose one of \"json\", \"influx\", \"value\", \"lines\"",
        ),
        ("[agent]\nidd = \"x\"\n", "agent.idd", 2, "unknown field"),
        (
            "[forward]\ntoken = \"${TRIBUTARY_SURELY_UNSET_VAR}\"\n",
            "forward.token",
            2,
            "TRIBUTARY_SURELY_UNSET_VAR",
        ),
        (
            "[[inputs.modbus]]\nport = 502\n",
            "inputs.modbus",
            1,
            "unknown field",
        ),
        (
            "[[inputs.exec]]\ncommand = [\"/bin/true\"]\ninterval = \"1500ms\"\n",
            "inputs.exec[0].interval",
            3,
            "whole number of seconds",
        ),
    ];
    for (text, key, line, words) in cases {
        let error = error_of(text);
        assert_eq!(error.key, key, "{text}: {error}");
        assert_eq!(error.line, Some(line), "{text}: {error}");
        assert!(error.message.contains(words), "{text}: {error}");
    }
}

#[test]
fn two_inputs_may_not_share_a_session() {
    let error = error_of(
        "[agent]\nid = \"a\"\n[[inputs.mqtt]]\nbroker = \"mqtt://b\"\ntopics = [\"x\"]\nclient_id = \"c\"\n[[inputs.mqtt]]\nbroker = \"mqtt://b:1883\"\ntopics = [\"y\"]\nclient_id = \"c\"\n",
    );
    assert_eq!(error.key, "inputs.mqtt[1].client_id");
    let config = load("[agent]\nid = \"a\"\n[[inputs.mqtt]]\nbroker = \"mqtt://b\"\ntopics = [\"x\"]\n[[inputs.mqtt]]\nbroker = \"mqtt://b\"\ntopics = [\"y\"]\n").unwrap();
    let ids: Vec<_> = config
        .inputs
        .iter()
        .filter_map(|input| match input {
            InputConfig::Mqtt(m) => Some(m.client_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(ids, vec!["tributary-a-0", "tributary-a-1"]);
}

#[test]
fn forward_url_keeps_a_path_prefix() {
    let config = load("[forward]\nurl = \"https://c.example/tributary\"\n").unwrap();
    assert_eq!(
        config.forward.batches_url.as_str(),
        "https://c.example/tributary/api/v1/batches"
    );
}
