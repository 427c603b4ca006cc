//! Exports: what the collector stores, sent on to the TSDB users already run, with
//! Prometheus remote write 1.0 (`[[exports.remote_write]]`: Prometheus with
//! `--web.enable-remote-write-receiver`, VictoriaMetrics, Mimir, Thanos).
//!
//! Each export reads the store's export feed ([`crate::storage::feed`]) after its durable
//! cursor, turns the values into remote write series (named as [`crate::prometheus`] says,
//! filtered by its `match`, string fields left out), and keeps up to `concurrency` requests of
//! about `batch_size` samples in flight. Its cursor moves, in order, only past requests the
//! receiver answered with a 2xx, so after a kill -9 it resumes where it stopped and resends
//! only the requests that were in flight: identical samples, which these receivers ignore.
//! 5xx, 429 and connection failures are retried with backoff (1 s doubling to 1 min); any
//! other 4xx means the receiver will never take the request (out-of-order samples, bad
//! labels): it is dropped, logged and counted, and the cursor moves on.
//!
//! `/metrics` shows, per export, samples sent and dropped, and the lag: values not sent yet
//! and the age of the oldest of them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tributary_wire::FieldValue;

use crate::clean::rules::Matcher;
use crate::metrics::Metrics;
use crate::prometheus::remote::{self, Label, Sample, TimeSeries, WriteRequest};
use crate::storage::StorageError;
use crate::storage::feed::{FeedConn, FeedEntry, FeedStore, Position};
use crate::storage::prom::labels_of;

/// How an export authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    Bearer(String),
    Basic { username: String, password: String },
}

/// One `[[exports.remote_write]]`, checked.
#[derive(Debug, Clone)]
pub struct RemoteWriteExport {
    /// Unique: its cursor's key and its metrics' `export` label.
    pub name: String,
    pub url: String,
    pub auth: Auth,
    pub headers: Vec<(String, String)>,
    /// Which series go (all when `None`).
    pub matcher: Option<Arc<Matcher>>,
    /// Samples per request, about.
    pub batch_size: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// How long one request may take.
    pub timeout: Duration,
    /// How often the feed is looked at when everything was sent.
    pub poll_interval: Duration,
}

/// The first and the longest wait before sending a failed request again.
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// A series as the export sends it; `None`: the export's `match` leaves it out, or it holds
/// strings.
type Named = Option<Arc<Vec<Label>>>;

/// Runs every export until `shutdown`.
pub fn spawn_all(
    exports: &[RemoteWriteExport],
    store: &FeedStore,
    metrics: &Arc<Metrics>,
    shutdown: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    // reqwest's rustls needs a process-wide provider: the same *ring* the listener uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let names: Arc<Vec<String>> = Arc::new(exports.iter().map(|e| e.name.clone()).collect());
    exports
        .iter()
        .map(|export| {
            tokio::spawn(run(
                export.clone(),
                store.clone(),
                Arc::clone(metrics),
                Arc::clone(&names),
                shutdown.clone(),
            ))
        })
        .collect()
}

/// The feed, as the export uses it: its own connection (cursor updates are its only writes;
/// in SQLite, the writer thread's transactions and these wait for each other within the busy
/// timeout).
#[derive(Clone)]
struct Db(Arc<Mutex<FeedConn>>);

impl Db {
    fn open(store: &FeedStore) -> Result<Db, StorageError> {
        Ok(Db(Arc::new(Mutex::new(FeedConn::open(store)?))))
    }

    async fn with<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut FeedConn) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let db = Arc::clone(&self.0);
        tokio::task::spawn_blocking(move || {
            let mut conn = db.lock().unwrap_or_else(PoisonError::into_inner);
            work(&mut conn)
        })
        .await
        .map_err(|e| StorageError::Other(format!("export task failed: {e}")))?
    }
}

/// What became of one request.
enum Sent {
    /// 2xx: the samples arrived.
    Delivered(u64),
    /// A 4xx other than 429: the receiver will never take them.
    Dropped(u64),
    /// Shutting down before an answer.
    Stopped,
}

async fn run(
    export: RemoteWriteExport,
    store: FeedStore,
    metrics: Arc<Metrics>,
    names: Arc<Vec<String>>,
    shutdown: CancellationToken,
) {
    let label = export.name.clone();
    let db = match Db::open(&store) {
        Ok(db) => db,
        Err(e) => {
            warn!(export = %label, error = %e, "cannot open the store for the export; it does not run");
            metrics.error("export", "open");
            return;
        }
    };
    let client = match reqwest::Client::builder().timeout(export.timeout).build() {
        Ok(client) => client,
        Err(e) => {
            warn!(export = %label, error = %e, "cannot build the export's HTTP client");
            metrics.error("export", "client");
            return;
        }
    };
    // With a store that collectors share, one of them runs the export at a time; the
    // others wait to take over.
    let mut waiting_logged = false;
    loop {
        let name = export.name.clone();
        match db.with(move |c| c.claim(&name)).await {
            Ok(true) => break,
            Ok(false) => {
                if !waiting_logged {
                    info!(export = %label, "another collector runs this export; waiting to take over");
                    waiting_logged = true;
                }
            }
            Err(e) => {
                warn!(export = %label, error = %e, "cannot reach the store for the export; retrying");
                metrics.error("export", "claim");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(export.poll_interval.max(Duration::from_secs(1))) => {}
        }
    }
    let name = export.name.clone();
    let mut read_from: Position = loop {
        let name = name.clone();
        match db.with(move |c| c.cursor(&name)).await {
            Ok(cursor) => break cursor,
            Err(e) => {
                warn!(export = %label, error = %e, "cannot read the export's cursor; retrying");
                metrics.error("export", "cursor");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(BACKOFF_START) => {}
        }
    };
    info!(export = %label, url = %export.url, cursor = ?read_from, "export running");
    let export = Arc::new(export);
    let mut series: HashMap<i64, Named> = HashMap::new();
    let mut in_flight: std::collections::VecDeque<(Position, tokio::task::JoinHandle<Sent>)> =
        std::collections::VecDeque::new();
    loop {
        // Fill the window.
        while in_flight.len() < export.concurrency && !shutdown.is_cancelled() {
            let (from, size) = (read_from, export.batch_size);
            let entries = match db.with(move |c| c.read(from, size)).await {
                Ok(entries) => entries,
                Err(e) => {
                    warn!(export = %label, error = %e, "cannot read the export feed");
                    metrics.error("export", "read");
                    break;
                }
            };
            let Some(last) = entries.last().map(|e| e.position) else {
                break;
            };
            read_from = last;
            let request = match build(&db, &export, &mut series, entries).await {
                Ok(request) => request,
                Err(e) => {
                    warn!(export = %label, error = %e, "cannot read series for the export");
                    metrics.error("export", "read");
                    break;
                }
            };
            let task = tokio::spawn(send(
                client.clone(),
                Arc::clone(&export),
                request,
                Arc::clone(&metrics),
                shutdown.clone(),
            ));
            in_flight.push_back((last, task));
        }
        let Some((last, task)) = in_flight.pop_front() else {
            report_lag(&db, &export.name, &metrics).await;
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(export.poll_interval) => continue,
            }
        };
        let outcome = task.await.unwrap_or(Sent::Stopped);
        let samples = match outcome {
            Sent::Stopped => return,
            Sent::Delivered(n) => {
                metrics.export_sent(&export.name, n);
                n
            }
            Sent::Dropped(n) => {
                metrics.export_dropped(&export.name, n);
                n
            }
        };
        let _ = samples;
        let (name, now) = (export.name.clone(), tributary_wire::time::now_ns());
        if let Err(e) = db.with(move |c| c.commit(&name, last, now)).await {
            warn!(export = %label, error = %e, "cannot store the export's cursor; the request may be sent again");
            metrics.error("export", "cursor");
        }
        if in_flight.is_empty() {
            let names = Arc::clone(&names);
            if let Err(e) = db.with(move |c| c.prune(&names)).await {
                warn!(export = %label, error = %e, "cannot prune the export feed");
                metrics.error("export", "prune");
            }
            report_lag(&db, &export.name, &metrics).await;
        }
    }
}

async fn report_lag(db: &Db, name: &str, metrics: &Metrics) {
    let owned = name.to_owned();
    let lag = db.with(move |c| c.lag(&owned)).await;
    if let Ok((points, oldest)) = lag {
        let seconds = oldest.map_or(0.0, |t| {
            tributary_wire::time::now_ns().saturating_sub(t).max(0) as f64 / 1e9
        });
        metrics.export_lag(name, points, seconds);
    }
}

/// The remote write request for `entries`: their values grouped by series, in time order.
async fn build(
    db: &Db,
    export: &RemoteWriteExport,
    cache: &mut HashMap<i64, Named>,
    entries: Vec<FeedEntry>,
) -> Result<(WriteRequest, u64), StorageError> {
    let unknown: Vec<i64> = entries
        .iter()
        .map(|e| e.series_id)
        .filter(|id| !cache.contains_key(id))
        .collect();
    if !unknown.is_empty() {
        let matcher = export.matcher.clone();
        let rows = db.with(move |c| c.series(&unknown)).await?;
        let named = rows.into_iter().map(|(id, row)| {
            let named = row.and_then(|(name, tags, field, kind)| {
                if kind == "string" {
                    return None;
                }
                let tags: BTreeMap<String, String> =
                    serde_json::from_str(&tags).unwrap_or_default();
                if let Some(m) = &matcher
                    && !m.matches_series(&name, &tags, &field)
                {
                    return None;
                }
                let labels = labels_of(&name, &tags, &field)
                    .into_iter()
                    .map(|(name, value)| Label { name, value })
                    .collect();
                Some(Arc::new(labels))
            });
            (id, named)
        });
        cache.extend(named);
    }
    let mut by_series: BTreeMap<i64, Vec<Sample>> = BTreeMap::new();
    for entry in entries {
        if cache.get(&entry.series_id).is_none_or(Option::is_none) {
            continue;
        }
        let samples = by_series.entry(entry.series_id).or_default();
        for (ts, value) in entry.values {
            let value = match value {
                FieldValue::F64(v) => v,
                FieldValue::I64(v) => v as f64,
                FieldValue::Bool(b) => f64::from(u8::from(b)),
                FieldValue::Str(_) => continue,
            };
            samples.push(Sample {
                value,
                timestamp: ts.div_euclid(1_000_000),
            });
        }
    }
    let mut count = 0u64;
    let timeseries = by_series
        .into_iter()
        .filter_map(|(id, mut samples)| {
            let labels = cache.get(&id)?.as_ref()?;
            samples.sort_by_key(|s| s.timestamp);
            count = count.saturating_add(samples.len() as u64);
            (!samples.is_empty()).then(|| TimeSeries {
                labels: labels.as_ref().clone(),
                samples,
                histograms: Vec::new(),
            })
        })
        .collect();
    Ok((
        WriteRequest {
            timeseries,
            metadata: Vec::new(),
        },
        count,
    ))
}

/// Sends one request until the receiver takes it or refuses it for good.
async fn send(
    client: reqwest::Client,
    export: Arc<RemoteWriteExport>,
    (request, samples): (WriteRequest, u64),
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Sent {
    if samples == 0 {
        return Sent::Delivered(0);
    }
    let body = match remote::encode(&request) {
        Ok(body) => body,
        Err(e) => {
            warn!(export = %export.name, error = %e, "cannot encode an export request; dropped");
            metrics.error("export", "encode");
            return Sent::Dropped(samples);
        }
    };
    let mut backoff = BACKOFF_START;
    loop {
        let mut builder = client
            .post(&export.url)
            .header("Content-Type", remote::CONTENT_TYPE)
            .header("Content-Encoding", "snappy")
            .header(remote::VERSION_HEADER, remote::VERSION)
            .header(
                "User-Agent",
                concat!("tributary-collector/", env!("CARGO_PKG_VERSION")),
            );
        for (name, value) in &export.headers {
            builder = builder.header(name, value);
        }
        builder = match &export.auth {
            Auth::None => builder,
            Auth::Bearer(token) => builder.bearer_auth(token),
            Auth::Basic { username, password } => builder.basic_auth(username, Some(password)),
        };
        let answer = tokio::select! {
            () = shutdown.cancelled() => return Sent::Stopped,
            answer = builder.body(body.clone()).send() => answer,
        };
        let retry = match answer {
            Ok(response) if response.status().is_success() => return Sent::Delivered(samples),
            Ok(response)
                if response.status().is_client_error()
                    && response.status() != reqwest::StatusCode::TOO_MANY_REQUESTS =>
            {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                warn!(export = %export.name, %status, body = %text.chars().take(300).collect::<String>(), samples, "the receiver refused an export request for good; dropped");
                metrics.error("export", "refused");
                return Sent::Dropped(samples);
            }
            Ok(response) => format!("answered {}", response.status()),
            Err(e) => format!("{e}"),
        };
        warn!(export = %export.name, url = %export.url, error = %retry, retry_in = ?backoff, "export request failed; retrying");
        metrics.error("export", "send");
        tokio::select! {
            () = shutdown.cancelled() => return Sent::Stopped,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = backoff.saturating_mul(2).min(BACKOFF_MAX);
    }
}
