//! Storing one batch inside a group's transaction, whatever the store: points above the
//! mark, the quarantine, rejects, the marks and the agent's figures ([`store_batch`]), through
//! the few statements a store provides ([`GroupTx`]); and the pure gap accounting.

use tracing::warn;
use tributary_wire::{BatchAck, FieldValue, Point};

use super::series::{Entry, SeriesCache, ValueClass, canonical_tags};
use super::writer::{BatchAttempt, LISTED_QUARANTINED, Mark};
use super::{Origin, Stored};
use crate::clean::Rejection;
use crate::metrics::Metrics;

/// The statements [`store_batch`] needs, inside the group's transaction.
pub(crate) trait GroupTx {
    type Error;
    /// An agent's marks for one epoch (zeros before its first batch). A store that several
    /// collectors share locks them until the transaction ends.
    fn mark(&mut self, agent_id: &str, epoch: &str) -> Result<Mark, Self::Error>;
    /// Creates a series, unless another writer just did; returns its id and whether this
    /// transaction created it.
    fn create_series(
        &mut self,
        name: &str,
        tags_json: &str,
        field: &str,
        kind: &str,
        ts: i64,
    ) -> Result<(i64, bool), Self::Error>;
    fn quarantine(&mut self, row: &QuarantineRow<'_>) -> Result<(), Self::Error>;
    /// Raises an agent's marks (each only up: `max` of stored and new).
    fn raise_mark(&mut self, update: &MarkUpdate<'_>) -> Result<(), Self::Error>;
    /// Adds to an agent's counts and keeps the newest figures it reported.
    fn update_agent(&mut self, update: &AgentUpdate<'_>) -> Result<(), Self::Error>;
}

/// A row of the quarantine.
pub(crate) struct QuarantineRow<'a> {
    pub received_at: i64,
    pub origin: &'a str,
    pub agent_id: &'a str,
    pub epoch: &'a str,
    pub agent_reject_id: Option<i64>,
    pub source: &'a str,
    pub topic: String,
    pub ts: Option<i64>,
    pub payload: &'a [u8],
    pub reason: &'a str,
}

/// New marks for an agent's epoch.
pub(crate) struct MarkUpdate<'a> {
    pub agent_id: &'a str,
    pub epoch: &'a str,
    pub last_seq: i64,
    pub last_reject: i64,
    pub dropped: i64,
    pub explained: i64,
    pub seen: i64,
}

/// What one batch adds to its agent's row.
pub(crate) struct AgentUpdate<'a> {
    pub agent_id: &'a str,
    pub seen: i64,
    pub batches: i64,
    pub points: i64,
    pub duplicates: i64,
    pub quarantined: i64,
    pub gaps: i64,
    pub backlog_points: Option<i64>,
    pub backlog_bytes: Option<i64>,
    pub oldest_unsent_ts: Option<i64>,
    pub clock_skew_ns: Option<i64>,
    pub clock_error_ns: Option<i64>,
}

/// What a group's transaction gathers from its batches.
#[derive(Default)]
pub(crate) struct GroupState<'a> {
    /// Values to store: (series id, ts, value), the value borrowed from its batch.
    pub rows: Vec<(i64, i64, &'a FieldValue)>,
    /// Series the transaction created.
    pub created: Vec<i64>,
}

/// Adds one value to the group.
pub(crate) fn record<'a>(state: &mut GroupState<'a>, id: i64, ts: i64, value: &'a FieldValue) {
    state.rows.push((id, ts, value));
}

/// What a jump in an agent's sequences means, given the drop counts it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GapAccount {
    /// Sequences missing that no drop count explains.
    pub gaps: u64,
    /// How much of the drop count is used after this jump (the new `marks.explained`).
    pub explained: u64,
}

/// Accounts for the sequences between `mark` and `first_seq` (the first point that arrived
/// after it). Drops are counted when they happen, which may be before the jump reaches the
/// collector (a salvaged buffer counts its lost rows at once, and sends the points before
/// them first): the part of the cumulative `dropped` that no earlier jump used explains this
/// one, and what it does not explain is a gap.
pub(crate) fn account_gap(mark: u64, first_seq: u64, dropped: u64, explained: u64) -> GapAccount {
    let missing = first_seq.saturating_sub(mark.saturating_add(1));
    let used = missing.min(dropped.saturating_sub(explained));
    GapAccount {
        gaps: missing.saturating_sub(used),
        explained: explained.saturating_add(used),
    }
}

/// A field whose value is of another class than its series holds (a string into a number
/// series): the point is refused whole, as InfluxDB refuses such a line, so a series keeps one
/// class and its rollups stay those of its numbers.
pub(crate) fn type_conflict(entry: &Entry, point: &Point) -> Option<Rejection> {
    point.fields.iter().find_map(|(field, value)| {
        let (_, class) = entry.field_class(field)?;
        let got = ValueClass::of(value);
        (got != class).then(|| Rejection {
            rule: "type".into(),
            reason: format!(
                "field type conflict: {field:?} holds {} in this series, this point has {}",
                class.name(),
                got.name()
            ),
        })
    })
}

/// Caps what a poisoned batch keeps of a text it quarantines, so the quarantine row itself
/// cannot be what fails.
pub(crate) const POISON_KEPT: usize = 4096;

pub(crate) fn cut(text: &[u8], poison: bool) -> &[u8] {
    if poison {
        text.get(..POISON_KEPT).unwrap_or(text)
    } else {
        text
    }
}

/// Stores one batch (its points in `pending.range`) inside the group's transaction: points
/// above the mark (or the reason cleaning gave, in the quarantine), rejects above the reject
/// mark (with the part that starts the batch), the marks themselves, and the agent's figures.
/// Line protocol writes have no marks: all their points are new.
pub(crate) fn store_batch<'a, T: GroupTx>(
    tx: &mut T,
    series: &mut SeriesCache,
    state: &mut GroupState<'a>,
    pending: &'a BatchAttempt,
    metrics: &Metrics,
) -> Result<Stored, T::Error> {
    let job = &pending.job;
    let batch = &job.batch;
    let agent_origin = job.origin == Origin::Agent;
    let mark = if agent_origin {
        tx.mark(&job.agent_id, &batch.epoch)?
    } else {
        Mark::default()
    };
    let verdicts = pending.verdicts.as_deref().unwrap_or(&[]);
    let range = pending.range.clone();
    let first_seq = batch.first_seq.saturating_add(range.start as u64);
    let poison = pending.poison.is_some();

    let mut out = Stored::nothing();
    let (mut stored, mut duplicates, mut quarantined) = (0u64, 0u64, 0u64);
    {
        let source = job.origin.source();
        let points = batch.points.get(range.clone()).unwrap_or_default();
        for ((index, seq), point) in range.clone().zip(first_seq..).zip(points) {
            if agent_origin && seq <= mark.last_seq {
                duplicates = duplicates.saturating_add(1);
                continue;
            }
            // The agent tag comes from the token, so a device cannot write as another.
            // One lookup for the point serves the type check and, for a known series (the
            // common case), its ids.
            let entry = series.entry(&point.name, &point.tags, &job.agent_id);
            let rejection = match (&pending.poison, verdicts.get(index)) {
                (Some(reason), _) => Some(Rejection {
                    rule: "storage".into(),
                    reason: reason.clone(),
                }),
                (None, Some(Some(rejection))) => Some(rejection.clone()),
                _ => entry.and_then(|entry| type_conflict(entry, point)),
            };
            if let Some(rejection) = rejection {
                let line = tributary_wire::line_protocol::format_point(point);
                let reason = rejection.to_string();
                tx.quarantine(&QuarantineRow {
                    received_at: job.received_at,
                    origin: "collector",
                    agent_id: &job.agent_id,
                    epoch: &batch.epoch,
                    agent_reject_id: None,
                    source,
                    topic: if agent_origin {
                        format!("seq {seq}")
                    } else {
                        format!("line {}", index.saturating_add(1))
                    },
                    ts: Some(point.ts),
                    payload: cut(line.as_bytes(), poison),
                    reason: &reason,
                })?;
                metrics.quarantined(&rejection.rule);
                quarantined = quarantined.saturating_add(1);
                if out.quarantined.len() < LISTED_QUARANTINED {
                    out.quarantined.push((index, reason));
                }
                continue;
            }
            if let Some(entry) = entry
                && point.fields.keys().all(|f| entry.field(f).is_some())
            {
                for (field, value) in &point.fields {
                    if let Some(id) = entry.field(field) {
                        record(state, id, point.ts, value);
                    }
                }
                stored = stored.saturating_add(1);
                continue;
            }
            let mut canonical = None;
            for (field, value) in &point.fields {
                let id = match series.get(&point.name, &point.tags, &job.agent_id, field) {
                    Some(id) => id,
                    None => {
                        let tags = canonical
                            .get_or_insert_with(|| canonical_tags(&point.tags, &job.agent_id));
                        let tags_json = serde_json::to_string(&*tags).unwrap_or_default();
                        let (id, new) = tx.create_series(
                            &point.name,
                            &tags_json,
                            field,
                            value.kind(),
                            point.ts,
                        )?;
                        if new {
                            state.created.push(id);
                        }
                        series.insert(&point.name, tags, field, id, ValueClass::of(value));
                        id
                    }
                };
                record(state, id, point.ts, value);
            }
            stored = stored.saturating_add(1);
        }
    }

    // Rejects travel with the part that starts the batch (every batch has one).
    let starts_batch = range.start == 0;
    let mut rejects_stored = 0u64;
    if starts_batch {
        let origin = if agent_origin {
            "agent"
        } else {
            job.origin.source()
        };
        for reject in batch
            .rejects
            .iter()
            .filter(|r| !agent_origin || r.id > mark.last_reject)
        {
            tx.quarantine(&QuarantineRow {
                received_at: job.received_at,
                origin,
                agent_id: &job.agent_id,
                epoch: &batch.epoch,
                agent_reject_id: Some(i64::try_from(reject.id).unwrap_or(i64::MAX)),
                source: &reject.source,
                topic: reject.topic.clone(),
                ts: Some(reject.received_at),
                payload: cut(&reject.payload, poison),
                reason: &reject.reason,
            })?;
            metrics.quarantined(origin);
            rejects_stored = rejects_stored.saturating_add(1);
        }
    }

    // A jump past the mark that the agent's drop count does not explain is a gap.
    let mut gap = GapAccount {
        gaps: 0,
        explained: mark.explained,
    };
    if agent_origin && !range.is_empty() {
        gap = account_gap(mark.last_seq, first_seq, batch.dropped, mark.explained);
        if gap.gaps > 0 {
            warn!(agent = %job.agent_id, epoch = %batch.epoch, mark = mark.last_seq, first_seq, gaps = gap.gaps, "sequences missing from an agent without a drop count to explain them");
            metrics.error("storage", "sequence_gap");
        }
    }

    // The last sequence of this part (of an empty batch: `first_seq - 1`, its `last_seq`).
    let part_last = batch
        .first_seq
        .saturating_add(range.end as u64)
        .saturating_sub(1);
    let new_mark = mark.last_seq.max(part_last);
    let new_reject_mark = match batch.rejects.last() {
        Some(last) if starts_batch => mark.last_reject.max(last.id),
        _ => mark.last_reject,
    };
    let as_sql = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    if agent_origin {
        tx.raise_mark(&MarkUpdate {
            agent_id: &job.agent_id,
            epoch: &batch.epoch,
            last_seq: as_sql(new_mark),
            last_reject: as_sql(new_reject_mark),
            dropped: as_sql(batch.dropped),
            explained: as_sql(gap.explained),
            seen: job.received_at,
        })?;
    }
    let clock = batch.status.clock.filter(|_| agent_origin);
    tx.update_agent(&AgentUpdate {
        agent_id: &job.agent_id,
        seen: job.received_at,
        batches: i64::from(starts_batch),
        points: as_sql(stored),
        duplicates: as_sql(duplicates),
        quarantined: as_sql(rejects_stored.saturating_add(quarantined)),
        gaps: as_sql(gap.gaps),
        backlog_points: agent_origin.then_some(as_sql(batch.status.backlog_points)),
        backlog_bytes: agent_origin.then_some(as_sql(batch.status.backlog_bytes)),
        oldest_unsent_ts: batch.status.oldest_unsent_ts.filter(|_| agent_origin),
        clock_skew_ns: clock.map(|c| c.offset_ns),
        clock_error_ns: clock.map(|c| as_sql(c.error_ns)),
    })?;
    out.ack = BatchAck {
        committed_through: new_mark,
        stored,
        duplicates,
        rejects_stored,
        quarantined,
        received_at: None,
        replied_at: None,
    };
    Ok(out)
}

/// A stored batch on its way to be freed, with the ingest memory it holds.
pub(crate) fn run_is_exact(run: &[(i64, i64, &FieldValue)]) -> bool {
    let whole = run.iter().all(|(_, ts, v)| {
        ts.rem_euclid(1_000_000) == 0
            && match v {
                FieldValue::F64(x) => x.is_finite() || crate::promql::is_stale(*x),
                _ => true,
            }
    });
    whole && run.windows(2).all(|w| matches!(w, [a, b] if a.1 < b.1))
}
