//! `GET /api/v1/agents`: every configured or seen agent, its status ([`super::fleet`]), marks
//! and what it reported, and a summary of the fleet (counts by status, the thresholds).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tributary_wire::time::{format_rfc3339, now_ns};

use super::fleet::{Status, status};
use super::{ApiError, AppState};
use crate::storage::AgentRecord;

#[derive(Serialize)]
struct AgentsAnswer {
    summary: Summary,
    agents: Vec<AgentView>,
}

#[derive(Serialize, Default)]
struct Summary {
    generated_at: String,
    late_after_seconds: f64,
    silent_after_seconds: f64,
    ok: usize,
    late: usize,
    silent: usize,
    never_seen: usize,
}

#[derive(Serialize)]
struct AgentView {
    id: String,
    /// ok, late, silent or never_seen, by the age of `last_seen` (`[fleet]`).
    status: Status,
    /// What the agent's requests call their client (`tributary-agent/0.1.0`), since the
    /// collector started.
    version: Option<String>,
    /// Points stored from it in the last whole minute (since the collector started).
    points_per_minute: u64,
    /// Has a token in collector.toml (an agent removed from the file still shows its history).
    configured: bool,
    first_seen: Option<String>,
    last_seen: Option<String>,
    #[serde(skip)]
    last_seen_ns: Option<i64>,
    batches: u64,
    points_received: u64,
    duplicates: u64,
    quarantined: u64,
    dropped: u64,
    gaps: u64,
    backlog_points: u64,
    backlog_bytes: u64,
    oldest_unsent_age_seconds: Option<f64>,
    clock_skew_seconds: Option<f64>,
    /// The newest figures the agent reported about itself (`agent.self_metrics`): buffer,
    /// sends, errors; `null` before the first report.
    health: Option<HealthView>,
    epochs: Vec<EpochView>,
}

#[derive(Serialize)]
struct HealthView {
    reported_at: String,
    #[serde(flatten)]
    figures: BTreeMap<String, serde_json::Value>,
}

#[derive(Serialize)]
struct EpochView {
    epoch: String,
    /// The high-water mark: every sequence up to here is stored.
    last_seq: u64,
    last_reject: u64,
    dropped: u64,
    last_seen: String,
}

pub async fn get_agents(State(state): State<Arc<AppState>>) -> Response {
    let read = state.storage.agents_with_reports().await;
    let (records, mut reports) = match read {
        Ok(read) => read,
        Err(e) => {
            return state
                .fail("agents", ApiError::Internal(e.to_string()))
                .into_response();
        }
    };
    let mut views: BTreeMap<String, AgentView> = records
        .into_iter()
        .map(|record| (record.agent_id.clone(), view(record)))
        .collect();
    for id in state.auth.agent_ids() {
        views
            .entry(id.clone())
            .or_insert_with(|| {
                view(AgentRecord {
                    agent_id: id.to_owned(),
                    ..AgentRecord::default()
                })
            })
            .configured = true;
    }
    let now = now_ns();
    let mut summary = Summary {
        generated_at: format_rfc3339(now),
        late_after_seconds: state.fleet.late_after.as_secs_f64(),
        silent_after_seconds: state.fleet.silent_after.as_secs_f64(),
        ..Summary::default()
    };
    for (id, view) in &mut views {
        let (version, points) = state.fleet.activity(id, now);
        view.version = version;
        view.points_per_minute = points;
        view.status = status(
            view.last_seen_ns,
            now,
            state.fleet.late_after,
            state.fleet.silent_after,
        );
        match view.status {
            Status::Ok => summary.ok = summary.ok.saturating_add(1),
            Status::Late => summary.late = summary.late.saturating_add(1),
            Status::Silent => summary.silent = summary.silent.saturating_add(1),
            Status::NeverSeen => summary.never_seen = summary.never_seen.saturating_add(1),
        }
        view.health = reports.remove(id).map(|(ts, figures)| HealthView {
            reported_at: format_rfc3339(ts),
            figures: figures
                .into_iter()
                .map(|(field, value)| (field, serde_json::to_value(&value).unwrap_or_default()))
                .collect(),
        });
    }
    axum::Json(AgentsAnswer {
        summary,
        agents: views.into_values().collect(),
    })
    .into_response()
}

fn view(record: AgentRecord) -> AgentView {
    let now = now_ns();
    AgentView {
        id: record.agent_id,
        status: Status::NeverSeen,
        version: None,
        points_per_minute: 0,
        last_seen_ns: record.last_seen,
        configured: false,
        first_seen: record.first_seen.map(format_rfc3339),
        last_seen: record.last_seen.map(format_rfc3339),
        batches: record.batches,
        points_received: record.points_received,
        duplicates: record.duplicates,
        quarantined: record.quarantined,
        dropped: record.epochs.iter().map(|e| e.dropped).sum(),
        gaps: record.gaps,
        backlog_points: record.backlog_points,
        backlog_bytes: record.backlog_bytes,
        oldest_unsent_age_seconds: record
            .oldest_unsent_ts
            .map(|ts| now.saturating_sub(ts) as f64 / 1e9),
        clock_skew_seconds: record.clock_skew_ns.map(|ns| ns as f64 / 1e9),
        health: None,
        epochs: record
            .epochs
            .into_iter()
            .map(|e| EpochView {
                epoch: e.epoch,
                last_seq: e.last_seq,
                last_reject: e.last_reject,
                dropped: e.dropped,
                last_seen: format_rfc3339(e.last_seen),
            })
            .collect(),
    }
}
