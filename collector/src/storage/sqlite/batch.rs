//! Storing one batch inside the group's transaction: points above the mark, the quarantine,
//! rejects, marks, the agent's figures; and the pure gap accounting.

use super::*;

/// Adds one value to the group.
pub(super) fn record<'a>(state: &mut GroupState<'a>, id: i64, ts: i64, value: &'a FieldValue) {
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
pub(super) fn type_conflict(entry: &Entry, point: &Point) -> Option<Rejection> {
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
pub(super) const POISON_KEPT: usize = 4096;

pub(super) fn cut(text: &[u8], poison: bool) -> &[u8] {
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
pub(super) fn store_batch<'a>(
    tx: &rusqlite::Transaction<'_>,
    series: &mut SeriesCache,
    state: &mut GroupState<'a>,
    pending: &'a BatchAttempt,
    metrics: &Metrics,
) -> rusqlite::Result<Stored> {
    let job = &pending.job;
    let batch = &job.batch;
    let agent_origin = job.origin == Origin::Agent;
    let mark = if agent_origin {
        read_mark(tx, &job.agent_id, &batch.epoch)?
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
        let mut insert_series = tx.prepare_cached(
            "INSERT INTO series (name, tags, field, kind, first_ts, last_ts, exact) VALUES (?1, ?2, ?3, ?4, ?5, ?5, 1)",
        )?;
        let mut quarantine = tx.prepare_cached(
            "INSERT INTO quarantine (received_at, origin, agent_id, epoch, source, topic, ts, payload, reason)
             VALUES (?1, 'collector', ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
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
                quarantine.execute(params![
                    job.received_at,
                    job.agent_id,
                    batch.epoch,
                    source,
                    if agent_origin {
                        format!("seq {seq}")
                    } else {
                        format!("line {}", index.saturating_add(1))
                    },
                    point.ts,
                    cut(line.as_bytes(), poison),
                    reason
                ])?;
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
                        insert_series.execute(params![
                            point.name,
                            tags_json,
                            field,
                            value.kind(),
                            point.ts
                        ])?;
                        let id = tx.last_insert_rowid();
                        state.first_created.get_or_insert(id);
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
        let mut insert = tx.prepare_cached(
            "INSERT INTO quarantine (received_at, origin, agent_id, epoch, agent_reject_id, source, topic, ts, payload, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
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
            insert.execute(params![
                job.received_at,
                origin,
                job.agent_id,
                batch.epoch,
                i64::try_from(reject.id).unwrap_or(i64::MAX),
                reject.source,
                reject.topic,
                reject.received_at,
                cut(&reject.payload, poison),
                reject.reason
            ])?;
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
        tx.execute(
            "INSERT INTO marks (agent_id, epoch, last_seq, last_reject, dropped, explained, first_seen, last_seen)
             VALUES (?1, ?2, ?3, ?4, ?5, ?7, ?6, ?6)
             ON CONFLICT (agent_id, epoch) DO UPDATE SET
                 last_seq = max(last_seq, excluded.last_seq),
                 last_reject = max(last_reject, excluded.last_reject),
                 dropped = max(dropped, excluded.dropped),
                 explained = max(explained, excluded.explained),
                 last_seen = excluded.last_seen",
            params![
                job.agent_id,
                batch.epoch,
                as_sql(new_mark),
                as_sql(new_reject_mark),
                as_sql(batch.dropped),
                job.received_at,
                as_sql(gap.explained)
            ],
        )?;
    }
    tx.execute(
        "INSERT INTO agents (agent_id, first_seen, last_seen, batches, points_received, duplicates, quarantined, gaps,
                             backlog_points, backlog_bytes, oldest_unsent_ts, clock_skew_ns, clock_error_ns)
         VALUES (?1, ?2, ?2, ?11, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?12)
         ON CONFLICT (agent_id) DO UPDATE SET
             last_seen = excluded.last_seen,
             batches = batches + excluded.batches,
             points_received = points_received + excluded.points_received,
             duplicates = duplicates + excluded.duplicates,
             quarantined = quarantined + excluded.quarantined,
             gaps = gaps + excluded.gaps,
             backlog_points = coalesce(excluded.backlog_points, backlog_points),
             backlog_bytes = coalesce(excluded.backlog_bytes, backlog_bytes),
             oldest_unsent_ts = CASE WHEN excluded.backlog_points IS NULL THEN oldest_unsent_ts ELSE excluded.oldest_unsent_ts END,
             clock_skew_ns = coalesce(excluded.clock_skew_ns, clock_skew_ns),
             clock_error_ns = CASE WHEN excluded.clock_skew_ns IS NULL THEN clock_error_ns ELSE excluded.clock_error_ns END",
        params![
            job.agent_id,
            job.received_at,
            as_sql(stored),
            as_sql(duplicates),
            as_sql(rejects_stored.saturating_add(quarantined)),
            as_sql(gap.gaps),
            agent_origin.then_some(as_sql(batch.status.backlog_points)),
            agent_origin.then_some(as_sql(batch.status.backlog_bytes)),
            batch.status.oldest_unsent_ts.filter(|_| agent_origin),
            batch.status.clock.filter(|_| agent_origin).map(|c| c.offset_ns),
            i64::from(starts_batch),
            batch.status.clock.filter(|_| agent_origin).map(|c| as_sql(c.error_ns)),
        ],
    )?;
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
