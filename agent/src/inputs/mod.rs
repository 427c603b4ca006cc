//! The inputs: where readings come from, and the registry of their kinds.
//!
//! Each kind is a module with its config, its task and its tests; all of them write through
//! the same [`crate::buffer::BufferHandle`]. This file is the only place that lists the kinds:
//! the `[[inputs.<kind>]]` tables ([`RawInputs`]), their resolution into an [`InputConfig`],
//! what each kind recorded in the buffer and gets back across a restart or reload
//! ([`InputRecords`]), how each is started ([`InputConfig::spawn`]) and what `tributary-agent
//! test` shows of it ([`InputConfig::sample`]). A new kind is a module plus one arm in each of
//! these. The configuration (`crate::config`) sees only [`RawInputs`] and [`InputConfig`];
//! the kinds depend on `tributary-common`'s config helpers, not on `crate::config`.

pub mod exec;
pub mod file;
pub mod http;
pub mod mqtt;
pub mod own;
pub mod polled;
panic_free_mod!(
    pub mod prometheus;
);
pub mod schedule;
pub mod sql;
pub mod system;
pub mod thread;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::error;
use tributary_common::config::{ConfigError, Source};
use tributary_wire::Point;

use crate::buffer::{BufferHandle, Store, StoreError};
use crate::inputs::exec::{ExecConfig, RawExec};
use crate::inputs::file::{FileConfig, FileInput, RawFile};
use crate::inputs::http::{HttpConfig, RawHttp};
use crate::inputs::mqtt::config::{MqttConfig, RawMqtt};
use crate::inputs::mqtt::{MqttInput, TestHooks};
use crate::inputs::polled::{PolledInput, Poller};
use crate::inputs::sql::{RawSql, SqlConfig};
use crate::inputs::system::{RawSystem, SystemConfig};
use crate::metrics::Metrics;

/// `[inputs]`: one array of tables per kind.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInputs {
    /// `[[inputs.mqtt]]`
    #[serde(default)]
    pub mqtt: Vec<RawMqtt>,
    /// `[[inputs.exec]]`
    #[serde(default)]
    pub exec: Vec<RawExec>,
    /// `[[inputs.http]]`
    #[serde(default)]
    pub http: Vec<RawHttp>,
    /// `[[inputs.file]]`
    #[serde(default)]
    pub file: Vec<RawFile>,
    /// `[[inputs.system]]`
    #[serde(default)]
    pub system: Vec<RawSystem>,
    /// `[[inputs.sql]]`
    #[serde(default)]
    pub sql: Vec<RawSql>,
}

impl RawInputs {
    /// Checks every input, in the order of the kinds above and, within a kind, of the file.
    /// `agent_id` is the default MQTT client id's stem.
    pub fn resolve(self, agent_id: &str, source: &Source) -> Result<Vec<InputConfig>, ConfigError> {
        let mut inputs = Vec::new();
        let mqtt_count = self.mqtt.len();
        for (index, raw) in self.mqtt.into_iter().enumerate() {
            let input = raw.resolve(index, mqtt_count, agent_id, source)?;
            inputs.push(InputConfig::Mqtt(input));
        }
        for (index, raw) in self.exec.into_iter().enumerate() {
            inputs.push(InputConfig::Exec(raw.resolve(index, source)?));
        }
        for (index, raw) in self.http.into_iter().enumerate() {
            inputs.push(InputConfig::Http(raw.resolve(index, source)?));
        }
        for (index, raw) in self.file.into_iter().enumerate() {
            inputs.push(InputConfig::File(raw.resolve(index, source)?));
        }
        for (index, raw) in self.system.into_iter().enumerate() {
            inputs.push(InputConfig::System(raw.resolve(index, source)?));
        }
        for (index, raw) in self.sql.into_iter().enumerate() {
            inputs.push(InputConfig::Sql(raw.resolve(index, source)?));
        }
        check_unique_sessions(&inputs, source)?;
        check_unique_state(&inputs, source)?;
        Ok(inputs)
    }
}

/// One configured input.
#[derive(Debug, Clone)]
pub enum InputConfig {
    Mqtt(MqttConfig),
    Exec(ExecConfig),
    Http(HttpConfig),
    File(FileConfig),
    System(SystemConfig),
    Sql(SqlConfig),
}

impl InputConfig {
    /// `inputs.<kind>[<index>]`.
    pub fn label(&self) -> String {
        match self {
            InputConfig::Mqtt(c) => format!("inputs.mqtt[{}]", c.index),
            InputConfig::Exec(c) => c.common.label.clone(),
            InputConfig::Http(c) => c.common.label.clone(),
            InputConfig::File(c) => c.label.clone(),
            InputConfig::System(c) => c.common.label.clone(),
            InputConfig::Sql(c) => c.common.label.clone(),
        }
    }

    /// Problems that do not stop the agent but fail `check` (a command not installed yet).
    pub fn check_problems(&self) -> Vec<&ConfigError> {
        match self {
            InputConfig::Exec(c) => c.missing_program.iter().collect(),
            _ => Vec::new(),
        }
    }

    /// The source id under which the input keeps checkpoints in the buffer, if it does.
    pub fn state_source(&self) -> Option<String> {
        match self {
            InputConfig::File(c) => Some(c.id.clone()),
            InputConfig::Sql(c) => Some(c.id.clone()),
            _ => None,
        }
    }

    /// What the agent's own figures watch of this input (`inputs::own`).
    pub fn watched(&self) -> own::Watched {
        own::Watched {
            label: self.label(),
            mqtt: matches!(self, InputConfig::Mqtt(_)),
        }
    }

    /// Starts the input on `tasks` with what it recorded before (`saved`, from
    /// [`InputRecords::wanted`] loaded), until `intake` is cancelled. An input that cannot be
    /// set up is logged, counted and left out; the others run.
    pub fn spawn(
        &self,
        saved: InputRecords,
        shared: &Shared,
        intake: &CancellationToken,
        tasks: &TaskTracker,
    ) {
        let metrics = &shared.metrics;
        match self {
            InputConfig::Mqtt(mqtt) => {
                let stored = match saved {
                    InputRecords::Deliveries(_, stored) => stored,
                    _ => HashMap::new(),
                };
                let task = MqttInput::new(
                    mqtt.clone(),
                    shared.buffer.clone(),
                    Arc::clone(metrics),
                    Arc::clone(&shared.agent_tags),
                    stored,
                    shared.hooks,
                );
                tasks.spawn(task.run(intake.clone()));
            }
            InputConfig::File(file) => {
                let task = FileInput::new(
                    file.clone(),
                    saved.checkpoints(),
                    shared.buffer.clone(),
                    Arc::clone(metrics),
                    Arc::clone(&shared.agent_tags),
                );
                let (label, metrics, stop) =
                    (file.label.clone(), Arc::clone(metrics), intake.clone());
                tasks.spawn(async move {
                    let work = move |stop: &thread::Stop| task.run(stop);
                    thread::run_on_thread("file-input", &label, "file", &metrics, stop, work).await;
                });
            }
            polled => {
                let input = match PolledInput::of(polled, &saved.checkpoints()) {
                    Some(Ok(input)) => input,
                    Some(Err(e)) => {
                        error!(error = %e, "input disabled");
                        metrics.error("agent", "input_setup");
                        return;
                    }
                    None => return,
                };
                tasks.spawn(input.run(
                    shared.buffer.clone(),
                    Arc::clone(metrics),
                    Arc::clone(&shared.agent_tags),
                    intake.clone(),
                ));
            }
        }
    }

    /// Runs the input once for `tributary-agent test`, without a buffer: what it would buffer
    /// now and what it would say about it. An MQTT input decodes `message` (topic, payload)
    /// when it is given and the topic is one it subscribes to.
    pub async fn sample(
        &self,
        agent_tags: &BTreeMap<String, String>,
        message: Option<(&str, &[u8])>,
    ) -> Sample {
        let mut sample = Sample::default();
        match self {
            InputConfig::Mqtt(mqtt) => match message {
                None => sample.notes.push(
                    "skipped: MQTT is event-driven; give --topic and --payload to see how a message decodes, or subscribe with mosquitto_sub"
                        .to_owned(),
                ),
                Some((topic, _))
                    if !mqtt
                        .topics
                        .iter()
                        .any(|filter| mqtt::topic::filter_matches(filter, topic)) =>
                {
                    sample.notes.push(format!(
                        "skipped: {topic:?} is not one of its topics ({})",
                        mqtt.topics.join(", ")
                    ));
                }
                Some((topic, payload)) => {
                    let (points, rejected) = mqtt::decode_message(
                        mqtt,
                        agent_tags,
                        topic,
                        payload,
                        tributary_wire::time::now_ns(),
                    );
                    for (payload, reason) in rejected {
                        sample.notes.push(format!(
                            "would quarantine: {reason}: {}",
                            crate::format::truncate(&String::from_utf8_lossy(&payload), 200)
                        ));
                    }
                    sample.summary = Some(format!("{} point(s)", points.len()));
                    sample.points = points;
                }
            },
            InputConfig::File(file) => {
                let (points, notes) = file::sample(file, agent_tags, SAMPLE_RECORDS);
                sample.points = points;
                sample.notes = notes;
            }
            polled => {
                let mut input = match PolledInput::of(polled, &[]) {
                    Some(Ok(input)) => input,
                    Some(Err(e)) => {
                        sample.notes.push(format!("error: {e}"));
                        sample.failed = true;
                        return sample;
                    }
                    None => return sample,
                };
                let at = tributary_wire::time::now_ns();
                match input.poller.poll(at).await {
                    Ok(mut polled) => {
                        input.finish(&mut polled, agent_tags, None);
                        for (_, warning) in &polled.warnings {
                            sample.notes.push(format!("warning: {warning}"));
                        }
                        for rejected in &polled.rejected {
                            sample.notes.push(format!(
                                "would quarantine: {}: {}",
                                rejected.reason,
                                crate::format::truncate(
                                    &String::from_utf8_lossy(&rejected.payload),
                                    200
                                )
                            ));
                        }
                        sample.summary = Some(format!("{} point(s)", polled.points.len()));
                        sample.points = polled.points;
                    }
                    Err(e) => {
                        sample.notes.push(format!("error ({}): {e}", e.kind));
                        sample.failed = true;
                    }
                }
            }
        }
        sample
    }
}

/// Records `test` shows per tailed file.
const SAMPLE_RECORDS: usize = 20;

/// What one run of an input for `tributary-agent test` gave.
#[derive(Debug, Default)]
pub struct Sample {
    /// The points it would buffer.
    pub points: Vec<Point>,
    /// What it says before them: warnings, rejects, errors, why it was skipped.
    pub notes: Vec<String>,
    /// What it says after them (a polled input's count).
    pub summary: Option<String>,
    /// It could not run.
    pub failed: bool,
}

/// What the inputs share: where they hand their items, the figures they keep, the agent's
/// tags, and the test switches.
pub struct Shared {
    pub buffer: BufferHandle,
    pub metrics: Arc<Metrics>,
    pub agent_tags: Arc<BTreeMap<String, String>>,
    pub hooks: TestHooks,
}

/// What an input kept in the buffer from earlier runs, handed to it when it starts again
/// (after a restart or a reload).
#[derive(Default)]
pub enum InputRecords {
    #[default]
    Nothing,
    /// An MQTT session's delivery records.
    Deliveries(String, HashMap<u16, [u8; 8]>),
    /// Checkpoints under a source id.
    Checkpoints(String, Vec<(String, Vec<u8>)>),
}

impl InputRecords {
    /// What `input` needs loaded (not loaded yet).
    pub fn wanted(input: &InputConfig) -> InputRecords {
        match input {
            InputConfig::Mqtt(mqtt) => InputRecords::Deliveries(mqtt.session_key(), HashMap::new()),
            other => match other.state_source() {
                Some(source) => InputRecords::Checkpoints(source, Vec::new()),
                None => InputRecords::Nothing,
            },
        }
    }

    /// Reads what was wanted from `store`.
    pub fn load(self, store: &Store) -> Result<InputRecords, StoreError> {
        Ok(match self {
            InputRecords::Nothing => InputRecords::Nothing,
            InputRecords::Deliveries(session, _) => {
                let stored = store.deliveries(&session)?;
                InputRecords::Deliveries(session, stored)
            }
            InputRecords::Checkpoints(source, _) => {
                let saved = store.checkpoints(&source)?;
                InputRecords::Checkpoints(source, saved)
            }
        })
    }

    fn checkpoints(self) -> Vec<(String, Vec<u8>)> {
        match self {
            InputRecords::Checkpoints(_, saved) => saved,
            _ => Vec::new(),
        }
    }
}

impl PolledInput {
    /// The polled input for `config`, or `None` for inputs that are not polled (MQTT, file).
    /// `saved` holds the checkpoints the input committed before.
    fn of(
        config: &InputConfig,
        saved: &[(String, Vec<u8>)],
    ) -> Option<Result<PolledInput, String>> {
        let (common, poller) = match config {
            InputConfig::Mqtt(_) | InputConfig::File(_) => return None,
            InputConfig::Exec(c) => (
                c.common.clone(),
                Poller::Exec(exec::ExecPoller::new(c.clone())),
            ),
            InputConfig::Http(c) => match http::HttpPoller::new(c.clone()) {
                Ok(poller) => (c.common.clone(), Poller::Http(Box::new(poller))),
                Err(e) => {
                    return Some(Err(format!(
                        "{}: cannot set up the HTTP client: {e}",
                        c.common.label
                    )));
                }
            },
            InputConfig::System(c) => (
                c.common.clone(),
                Poller::System(system::SystemPoller::new(c.clone())),
            ),
            InputConfig::Sql(c) => {
                let last = saved
                    .iter()
                    .find(|(key, _)| key == sql::TRACKING_KEY)
                    .map(|(_, v)| v.as_slice());
                (
                    c.common.clone(),
                    Poller::Sql(sql::SqlPoller::new(c.clone(), last)),
                )
            }
        };
        Some(Ok(PolledInput { common, poller }))
    }
}

/// Adds configured tags to a point without overriding the ones it already has: the point's
/// own tags win over the input's `tags`, which win over the agent's `tags`.
pub fn add_tags(point: &mut Point, tags: &BTreeMap<String, String>) {
    for (key, value) in tags {
        if !point.tags.contains_key(key) {
            point.tags.insert(key.clone(), value.clone());
        }
    }
}

/// Two MQTT inputs with one client id on one broker would take the session from each other.
fn check_unique_sessions(inputs: &[InputConfig], source: &Source) -> Result<(), ConfigError> {
    let mut seen = BTreeMap::new();
    for input in inputs {
        let InputConfig::Mqtt(mqtt) = input else {
            continue;
        };
        let key = (
            mqtt.broker.host.clone(),
            mqtt.broker.port,
            mqtt.client_id.clone(),
        );
        if let Some(first) = seen.insert(key, mqtt.index) {
            return Err(source.error(
                format!("inputs.mqtt[{}].client_id", mqtt.index),
                format!(
                    "client id {:?} is already used by inputs.mqtt[{first}] on the same broker; each input needs its own session",
                    mqtt.client_id
                ),
            ));
        }
    }
    Ok(())
}

/// Two inputs that keep positions under one id would overwrite each other's.
fn check_unique_state(inputs: &[InputConfig], source: &Source) -> Result<(), ConfigError> {
    let mut seen = BTreeMap::new();
    for input in inputs {
        if let Some(id) = input.state_source()
            && let Some(first) = seen.insert(id.clone(), input.label())
        {
            return Err(source.error(
                format!("{}.id", input.label()),
                format!("{id:?} is already the id of {first}; give each input its own id"),
            ));
        }
    }
    Ok(())
}
