//! Configuration of an `[[inputs.mqtt]]` table.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tributary_common::config::values::RawSize;
use tributary_common::config::{ConfigError, Source};
use url::Url;

use super::topic::{TopicTemplate, validate_filter};
use crate::format::Format;
use tributary_common::config::values::{duration, read_pem, size};

/// `[[inputs.mqtt]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
    /// Name of points whose topic template has no `{name}` level. Default: `mqtt`.
    pub name: Option<String>,
    /// `mqtt://host[:1883]` or `mqtts://host[:8883]`.
    pub broker: Option<String>,
    /// Topic filters to subscribe to; wildcards allowed.
    #[serde(default)]
    pub topics: Vec<String>,
    /// 0 (at most once) or 1 (at least once from the broker, made exactly once by the buffer).
    pub qos: Option<u8>,
    /// `json`, `influx`, `value` or `lines`.
    pub format: Option<Format>,
    /// Template turning topic levels into tags and the name, e.g. `sensors/{device}/{name}`.
    pub topic_tags: Option<String>,
    /// Tag that receives the whole topic; `""` for none. Default: `topic`, or none when
    /// `topic_tags` is set.
    pub topic_tag: Option<String>,
    /// JSON members that become tags instead of fields.
    #[serde(default)]
    pub tag_keys: Vec<String>,
    /// Tags added to every point of this input.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// MQTT client id; it names the persistent session. Default: `tributary-<agent id>`.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Extra CA certificate (PEM) to trust for `mqtts://`.
    pub ca_file: Option<PathBuf>,
    /// MQTT keep-alive interval.
    pub keep_alive: Option<String>,
    /// Payloads larger than this are quarantined (cut to 4KiB) instead of decoded.
    pub max_payload: Option<RawSize>,
    /// First delay before reconnecting after a connection error.
    pub reconnect_initial: Option<String>,
    /// Longest delay between reconnection attempts.
    pub reconnect_max: Option<String>,
}

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// A checked `[[inputs.mqtt]]`.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Position among the MQTT inputs, for messages.
    pub index: usize,
    pub name: String,
    pub broker: Broker,
    pub topics: Vec<String>,
    pub qos: rumqttc::QoS,
    pub format: Format,
    pub template: Option<TopicTemplate>,
    pub topic_tag: Option<String>,
    pub tag_keys: Vec<String>,
    pub tags: BTreeMap<String, String>,
    pub client_id: String,
    pub credentials: Option<(String, String)>,
    pub ca_pem: Option<Vec<u8>>,
    pub keep_alive: Duration,
    pub max_payload: usize,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
}

impl MqttConfig {
    /// The key under which this input's delivery state is kept in the buffer: the broker
    /// session it belongs to.
    pub fn session_key(&self) -> String {
        format!(
            "mqtt:{}@{}:{}",
            self.client_id, self.broker.host, self.broker.port
        )
    }
}

impl RawMqtt {
    /// Checks the table at `inputs.mqtt[index]`.
    pub fn resolve(
        self,
        index: usize,
        count: usize,
        agent_id: &str,
        source: &Source,
    ) -> Result<MqttConfig, ConfigError> {
        let key = |name: &str| format!("inputs.mqtt[{index}].{name}");

        let broker_text = self.broker.ok_or_else(|| {
            source.error(
                key("broker"),
                "missing; e.g. broker = \"mqtt://127.0.0.1:1883\"",
            )
        })?;
        let broker = parse_broker(&broker_text).map_err(|m| source.error(key("broker"), m))?;

        if self.topics.is_empty() {
            return Err(source.error(
                key("topics"),
                "needs at least one topic filter, e.g. [\"sensors/#\"]",
            ));
        }
        for (i, filter) in self.topics.iter().enumerate() {
            validate_filter(filter).map_err(|m| source.error(key(&format!("topics[{i}]")), m))?;
        }
        let qos = match self.qos.unwrap_or(1) {
            0 => rumqttc::QoS::AtMostOnce,
            1 => rumqttc::QoS::AtLeastOnce,
            other => {
                return Err(source.error(
                    key("qos"),
                    format!("{other} is not supported; use 1 (the buffer makes delivery exactly once) or 0"),
                ));
            }
        };
        let template = match &self.topic_tags {
            Some(text) => Some(
                TopicTemplate::parse(text)
                    .map_err(|m| source.error(key("topic_tags"), format!("{text:?}: {m}")))?,
            ),
            None => None,
        };
        let topic_tag = match self.topic_tag {
            Some(tag) if tag.is_empty() => None,
            Some(tag) => Some(tag),
            None if template.is_some() => None,
            None => Some("topic".to_owned()),
        };
        let client_id = match self.client_id {
            Some(id) if id.is_empty() || id.len() > 65_535 => {
                return Err(source.error(key("client_id"), "must be 1 to 65535 bytes"));
            }
            Some(id) => id,
            None if count <= 1 => format!("tributary-{agent_id}"),
            None => format!("tributary-{agent_id}-{index}"),
        };
        let credentials = match (self.username, self.password) {
            (Some(user), password) => Some((user, password.unwrap_or_default())),
            (None, Some(_)) => {
                return Err(source.error(key("password"), "is set without a username"));
            }
            (None, None) => None,
        };
        let ca_pem = match &self.ca_file {
            Some(path) => Some(read_pem(source, &key("ca_file"), path)?),
            None => None,
        };
        if ca_pem.is_some() && !broker.tls {
            return Err(source.error(key("ca_file"), "is set but the broker URL is not mqtts://"));
        }
        let keep_alive = duration(
            source,
            &key("keep_alive"),
            self.keep_alive.as_deref(),
            "30s",
        )?;
        if keep_alive < Duration::from_secs(5) || keep_alive > Duration::from_secs(65_535) {
            return Err(source.error(key("keep_alive"), "must be between 5s and 65535s"));
        }
        let max_payload = size(source, &key("max_payload"), self.max_payload, "1MiB")?;
        let reconnect_initial = duration(
            source,
            &key("reconnect_initial"),
            self.reconnect_initial.as_deref(),
            "500ms",
        )?;
        let reconnect_max = duration(
            source,
            &key("reconnect_max"),
            self.reconnect_max.as_deref(),
            "30s",
        )?;
        if reconnect_initial.is_zero() || reconnect_max < reconnect_initial {
            return Err(source.error(
                key("reconnect_max"),
                "reconnect_initial must be above zero and reconnect_max at least reconnect_initial",
            ));
        }
        Ok(MqttConfig {
            index,
            name: self.name.unwrap_or_else(|| "mqtt".to_owned()),
            broker,
            topics: self.topics,
            qos,
            format: self.format.unwrap_or_default(),
            template,
            topic_tag,
            tag_keys: self.tag_keys,
            tags: self.tags,
            client_id,
            credentials,
            ca_pem,
            keep_alive,
            max_payload: usize::try_from(max_payload).unwrap_or(usize::MAX),
            reconnect_initial,
            reconnect_max,
        })
    }
}

fn parse_broker(text: &str) -> Result<Broker, String> {
    let url = Url::parse(text)
        .map_err(|e| format!("{text:?} is not a URL ({e}); e.g. mqtt://127.0.0.1:1883"))?;
    let tls = match url.scheme() {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" | "tls" => true,
        other => {
            return Err(format!(
                "{text:?}: scheme {other:?} is not mqtt:// or mqtts://"
            ));
        }
    };
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("{text:?} has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if !url.path().is_empty() && url.path() != "/" {
        return Err(format!("{text:?}: a broker URL has no path"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{text:?}: put credentials in username and password, not in the URL"
        ));
    }
    let port = url.port().unwrap_or(if tls { 8883 } else { 1883 });
    Ok(Broker { host, port, tls })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        assert_eq!(
            parse_broker("mqtt://127.0.0.1").unwrap(),
            Broker {
                host: "127.0.0.1".into(),
                port: 1883,
                tls: false
            }
        );
        assert_eq!(
            parse_broker("mqtts://broker.example:9000").unwrap().port,
            9000
        );
        assert!(parse_broker("mqtts://b").unwrap().tls);
        assert!(parse_broker("http://b").is_err());
        assert!(parse_broker("mqtt://u:p@b").is_err());
        assert!(parse_broker("mqtt://b/x").is_err());
        assert!(parse_broker("not a url").is_err());
    }
}
