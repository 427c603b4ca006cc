//! What every polled input (exec, http, system, sql) shares: its common settings, the task
//! that runs it on its schedule, and the step that turns a poll's result into buffer items.
//!
//! An input sleeps until its next run ([`super::schedule`]); a run still busy when the next
//! is due makes that next one skipped and counted (`tributary_agent_skipped_runs`). The
//! timestamp of points that carry none is taken when the poll starts. A failed poll (non-zero
//! exit, timeout, HTTP error, …) is logged and counted; what a poll could not decode is
//! quarantined with its reason, like an MQTT payload.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};
use tributary_common::config::{ConfigError, Source};
use tributary_wire::Point;

use super::exec::ExecPoller;
use super::http::HttpPoller;
use super::schedule::Schedule;
use super::sql::SqlPoller;
use super::system::SystemPoller;
use crate::buffer::{BufferHandle, Checkpoint, Ingest, NewReject};
use crate::format::Rejected;
use crate::inputs::add_tags;
use crate::metrics::Metrics;

/// Settings every polled input has.
#[derive(Debug, Clone)]
pub struct PolledSettings {
    /// `inputs.<kind>[<index>]`, for messages and metric labels.
    pub label: String,
    /// The kind, e.g. `exec`: the component in error counts.
    pub kind: &'static str,
    /// Name of points whose format does not carry one.
    pub name: String,
    pub tags: BTreeMap<String, String>,
    pub schedule: Schedule,
}

/// The schedule keys as written in an input's table.
pub struct RawTiming<'a> {
    pub interval: Option<&'a str>,
    pub schedule: Option<&'a str>,
    pub timezone: Option<&'a str>,
    pub jitter: Option<&'a str>,
}

/// The schedule keys of a raw input table that has the fields `interval`, `schedule`,
/// `timezone` and `jitter` (every polled input's table does).
macro_rules! raw_timing {
    ($raw:expr) => {
        $crate::inputs::polled::RawTiming {
            interval: $raw.interval.as_deref(),
            schedule: $raw.schedule.as_deref(),
            timezone: $raw.timezone.as_deref(),
            jitter: $raw.jitter.as_deref(),
        }
    };
}
pub(crate) use raw_timing;

impl PolledSettings {
    /// Checks the settings every polled input shares, at `inputs.<kind>[<index>]`.
    pub fn resolve(
        kind: &'static str,
        index: usize,
        name: Option<String>,
        tags: BTreeMap<String, String>,
        timing: &RawTiming<'_>,
        source: &Source,
    ) -> Result<PolledSettings, ConfigError> {
        let label = format!("inputs.{kind}[{index}]");
        let schedule = Schedule::resolve(
            timing.interval,
            timing.schedule,
            timing.timezone,
            timing.jitter,
            "10s",
        )
        .map_err(|(key, message)| source.error(format!("{label}.{key}"), message))?;
        let name = name.unwrap_or_else(|| kind.to_owned());
        if name.is_empty() {
            return Err(source.error(format!("{label}.name"), "must not be empty"));
        }
        Ok(PolledSettings {
            label,
            kind,
            name,
            tags,
            schedule,
        })
    }

    /// The key of a setting of this input, for messages.
    pub fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.label)
    }
}

/// What one poll produced.
#[derive(Debug, Default)]
pub struct Polled {
    pub points: Vec<Point>,
    /// Parts that could not be decoded, for the quarantine.
    pub rejected: Vec<Rejected>,
    /// Where the data came from (the command, URL or query), recorded with rejects.
    pub origin: String,
    /// Input state to commit with these points: `(key, value)` under the input's source id.
    pub checkpoint: Option<(String, Vec<u8>)>,
    /// Problems that did not fail the poll (output cut at the size limit, …): logged and
    /// counted by the runner.
    pub warnings: Vec<(&'static str, String)>,
}

/// A poll that failed as a whole.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct PollError {
    /// Short kind for the error count, e.g. `timeout` or `exit_status`.
    pub kind: &'static str,
    pub message: String,
}

impl PollError {
    pub fn new(kind: &'static str, message: impl Into<String>) -> PollError {
        PollError {
            kind,
            message: message.into(),
        }
    }
}

/// The polled input kinds.
pub enum Poller {
    Exec(ExecPoller),
    Http(Box<HttpPoller>),
    System(SystemPoller),
    Sql(SqlPoller),
}

impl Poller {
    /// Polls once; `at` (UTC ns) stamps points that carry no time.
    pub async fn poll(&mut self, at: i64) -> Result<Polled, PollError> {
        match self {
            Poller::Exec(poller) => poller.poll(at).await,
            Poller::Http(poller) => poller.poll(at).await,
            Poller::System(poller) => poller.poll(at).await,
            Poller::Sql(poller) => poller.poll(at).await,
        }
    }

    /// The checkpoint source id, for inputs that keep state in the buffer.
    pub fn state_source(&self) -> Option<Arc<str>> {
        match self {
            Poller::Sql(poller) => Some(poller.source()),
            _ => None,
        }
    }
}

/// A polled input at run time.
pub struct PolledInput {
    pub common: PolledSettings,
    pub poller: Poller,
}

impl PolledInput {
    /// Applies the input's and the agent's tags, logs what the poll reported, and makes the
    /// buffer item. Shared by the running agent and `tributary-agent test`.
    pub fn finish(
        &self,
        polled: &mut Polled,
        agent_tags: &BTreeMap<String, String>,
        metrics: Option<&Metrics>,
    ) {
        let common = &self.common;
        for point in &mut polled.points {
            add_tags(point, &common.tags);
            add_tags(point, agent_tags);
        }
        // Logged and counted while running (`metrics`); `tributary-agent test` prints them
        // itself, once.
        for (kind, message) in &polled.warnings {
            if let Some(metrics) = metrics {
                warn!(input = %common.label, "{message}");
                metrics.input_error(&common.label, common.kind, kind);
            }
        }
        if let Some(first) = polled.rejected.first()
            && let Some(metrics) = metrics
        {
            warn!(input = %common.label, origin = %polled.origin, reason = %first.reason, count = polled.rejected.len(), "quarantined output that could not be decoded");
            metrics.input_error(&common.label, common.kind, "output_quarantined");
            metrics
                .rejected
                .get_or_create(&Metrics::input(&common.label))
                .inc_by(polled.rejected.len() as u64);
        }
    }

    /// Runs on the schedule until `shutdown`. Runs are sequential: the ones that fall due
    /// while a poll is still busy are skipped and counted, never overlapped or queued.
    pub async fn run(
        mut self,
        buffer: BufferHandle,
        metrics: Arc<Metrics>,
        agent_tags: Arc<BTreeMap<String, String>>,
        shutdown: CancellationToken,
    ) {
        let labels = Metrics::input(&self.common.label);
        let skipped = metrics.skipped_runs.get_or_create(&labels).clone();
        let received = metrics.received.get_or_create(&labels).clone();
        let source = self.poller.state_source();
        if let Poller::Exec(exec) = &self.poller
            && let Some(problem) = exec.missing_program()
        {
            warn!(input = %self.common.label, "{problem}; every run will fail until it is installed");
            metrics.input_error(&self.common.label, self.common.kind, "missing_program");
        }
        let mut runs = self.common.schedule.runs_after(Utc::now());
        debug!(input = %self.common.label, schedule = %self.common.schedule.describe(), "input scheduled");
        loop {
            let Some(due) = runs.next() else {
                error!(input = %self.common.label, "the schedule has no further occurrence; the input stops");
                metrics.input_error(&self.common.label, self.common.kind, "schedule_ended");
                return;
            };
            let now = Utc::now();
            if due < now - chrono::Duration::seconds(1) {
                // Fell due while the previous run was busy (or the machine slept).
                skipped.inc();
                continue;
            }
            let mut wait = (due - now).to_std().unwrap_or(Duration::ZERO);
            let jitter = self.common.schedule.jitter;
            if !jitter.is_zero() {
                wait += Duration::from_nanos(rand::random_range(0..=jitter.as_nanos() as u64));
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            let at = tributary_wire::time::now_ns();
            received.inc();
            let polled = tokio::select! {
                // A poll in progress at shutdown is abandoned: nothing of it was acknowledged
                // to anyone, and checkpoints only advance with committed data.
                _ = shutdown.cancelled() => break,
                polled = self.poller.poll(at) => polled,
            };
            let mut polled = match polled {
                Ok(polled) => polled,
                Err(e) => {
                    warn!(input = %self.common.label, kind = e.kind, error = %e, "poll failed");
                    metrics.input_error(&self.common.label, self.common.kind, e.kind);
                    continue;
                }
            };
            self.finish(&mut polled, &agent_tags, Some(&metrics));
            let ingest = self.ingest(polled, at, source.as_ref());
            if buffer.send(ingest).await.is_err() {
                break;
            }
        }
    }

    /// The buffer item for a poll's result.
    fn ingest(&self, polled: Polled, at: i64, source: Option<&Arc<str>>) -> Ingest {
        let checkpoint = match (polled.checkpoint, source) {
            (Some((key, value)), Some(source)) => Some(Checkpoint::State {
                source: Arc::clone(source),
                key,
                value,
            }),
            _ => None,
        };
        Ingest {
            points: polled.points.iter().collect(),
            rejects: polled
                .rejected
                .into_iter()
                .map(|rejected| NewReject {
                    received_at: at,
                    source: self.common.label.clone(),
                    topic: polled.origin.clone(),
                    payload: rejected.payload,
                    reason: rejected.reason,
                })
                .collect(),
            checkpoint,
            ..Ingest::default()
        }
    }
}
