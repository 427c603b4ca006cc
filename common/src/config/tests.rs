use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::*;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    server: Server,
    #[serde(default)]
    inputs: Inputs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Server {
    #[allow(dead_code)]
    listen: Option<String>,
    token: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Inputs {
    #[serde(default)]
    mqtt: Vec<Mqtt>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mqtt {
    #[allow(dead_code)]
    broker: String,
    #[serde(default)]
    qos: u8,
}

const TEXT: &str = r#"
[server]
listen = "127.0.0.1:1"
token = "${SETTINGS_TEST_TOKEN:-fallback}"
tags = { Site = "north" }

[[inputs.mqtt]]
broker = "mqtt://a"

[[inputs.mqtt]]
broker = "mqtt://b"
qos = 1
"#;

fn load_text(text: &str) -> Result<Raw, ConfigError> {
    load_str::<Raw>(text, Path::new("test.toml"), "SETTINGS_TEST").map(|(raw, _)| raw)
}

#[test]
fn loads_arrays_of_tables_and_keeps_key_case() {
    let raw = load_text(TEXT).unwrap();
    assert_eq!(raw.inputs.mqtt.len(), 2);
    assert_eq!(raw.inputs.mqtt[1].qos, 1);
    assert_eq!(raw.server.token.as_deref(), Some("fallback"));
    assert_eq!(raw.server.tags["Site"], "north");
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let text = TEXT.replace("qos = 1", "qos = 1\nqoss = 2");
    let error = load_text(&text).unwrap_err();
    assert_eq!(error.key, "inputs.mqtt[1].qoss");
    assert_eq!(error.line, Some(13));
    assert!(error.message.contains("unknown field"), "{error}");
    assert!(
        error
            .to_string()
            .starts_with("test.toml:13: inputs.mqtt[1].qoss: ")
    );
}

#[test]
fn wrong_type_is_named() {
    let error = load_text(&TEXT.replace("qos = 1", "qos = \"high\"")).unwrap_err();
    assert_eq!(error.key, "inputs.mqtt[1].qos");
    assert_eq!(error.line, Some(12));
}

#[test]
fn missing_variable_names_the_key() {
    let error = load_text("[server]\ntoken = \"${SETTINGS_TEST_SURELY_UNSET}\"\n").unwrap_err();
    assert_eq!(error.key, "server.token");
    assert_eq!(error.line, Some(2));
    assert!(error.message.contains("SETTINGS_TEST_SURELY_UNSET"));
}

#[test]
fn syntax_error_has_a_line() {
    let error = load_text("[server]\nlisten = \n").unwrap_err();
    assert_eq!(error.line, Some(2));
    assert!(error.message.starts_with("invalid TOML"), "{error}");
}

#[test]
fn later_stage_errors_find_their_line() {
    let (_, source) = load_str::<Raw>(TEXT, Path::new("t.toml"), "SETTINGS_TEST").unwrap();
    assert_eq!(source.error("inputs.mqtt[1].broker", "bad").line, Some(11));
    assert_eq!(source.error("server.tags.Site", "bad").line, Some(5));
    assert_eq!(source.error("server.nothing", "bad").line, Some(2));
}
