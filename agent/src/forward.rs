//! The forwarder: reads the oldest buffered points, sends them to the collector in batches,
//! and has them deleted only after a 2xx answer that names the sequence committed through.
//!
//! One batch is in flight at a time, always starting from the oldest unconfirmed point, so the
//! collector sees each agent's sequences in order and its high-water mark can skip retries.
//! Failures are classified once ([`classify`]): network errors, 5xx, 429 and 503 are retried
//! after a backoff with jitter (or the server's `Retry-After`); 401/403 are logged as errors on
//! every attempt while data keeps buffering; 400/413 split the batch until the one point the
//! collector refuses is found, which is then moved to the quarantine, with the collector's reason.
//! There is no retry limit: a device may be offline for days.
//!
//! A confirmed range is never sent again while its delete is pending: if the delete fails (a
//! full disk), the forwarder moves on past it and retries the delete before each send.
//!
//! Each answered request also measures the agent's clock against the collector's
//! ([`crate::clock`]); the best recent estimate travels in every batch's status, and before the
//! first batch (or after a quiet quarter of an hour) the forwarder asks `GET /api/v1/time`.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use tributary_wire::codec::{self, BatchHeader, Encoding};
use tributary_wire::{AgentStatus, BatchAck, TimeAnswer};

use crate::backoff::Backoff;
use crate::buffer::{Control, ForwarderLink, Reader, StoreError, StoredBatch, WriterGone};
use crate::clock::ClockFilter;
use crate::config::{ForwardSettings, WireEncoding};
use crate::format::truncate;
use crate::metrics::Metrics;

/// Longest `Retry-After` honoured; a larger value is taken as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What one attempt achieved.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// A batch was confirmed and deleted. `full`: it was as large as batches may be, so more
    /// data is likely waiting.
    Sent { points: usize, full: bool },
    /// Nothing to send.
    Idle,
    /// Try again after this long.
    Retry(Duration),
}

/// How an answer (or its absence) is handled.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Stored: delete through this sequence.
    Confirmed,
    /// Transient: retry the same batch after a delay (`Retry-After` if given).
    Retry(Option<Duration>),
    /// The token was refused: keep buffering, keep trying, say so loudly.
    Unauthorized,
    /// The content was refused (400, 413, 422): split the batch.
    Refused,
}

/// Classifies a status code; `retry_after` is the parsed header, if any.
pub fn classify(status: StatusCode, retry_after: Option<Duration>) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Confirmed,
        401 | 403 => Verdict::Unauthorized,
        400 | 413 | 422 => Verdict::Refused,
        // Everything else, including 404 (a wrong URL is fixed by the operator, not by
        // dropping data), waits and retries.
        _ => Verdict::Retry(retry_after),
    }
}

/// Parses `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Forwards batches until shutdown.
pub struct Forwarder {
    settings: ForwardSettings,
    agent_id: String,
    epoch: String,
    reader: Arc<Mutex<Reader>>,
    link: ForwarderLink,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    backoff: Backoff,
    /// Points per batch now; halved on a refusal, restored on success.
    max_points: usize,
    /// Everything through these has been confirmed and deleted.
    confirmed_seq: u64,
    confirmed_reject: u64,
    /// The batch after the one in flight, read and encoded while the collector was storing
    /// that one (see [`Prepared`]).
    prepared: Option<Prepared>,
    /// Confirmed, but not yet deleted (the delete failed): retried before the next send;
    /// the points are not read or sent again meanwhile.
    pending_delete: Option<PendingDelete>,
    /// The agent's clock against the collector's.
    clock: ClockFilter,
    /// When the collector's time was last asked for.
    last_probe: Option<Instant>,
    /// `TRIBUTARY_TEST_UNSAFE_RESEND_NEW_EPOCH=1`: after the first confirmed batch, keep it
    /// and send everything again under a new epoch, so the collector stores it twice. Exists
    /// only to prove the tests can see doubles (the duplicate canary).
    resend_canary: bool,
    /// Which of `settings.collectors` batches go to now.
    active: usize,
    /// Since when batches go elsewhere than the first collector.
    away_since: Option<Instant>,
    /// Collectors that failed in a row: a whole round of them failing waits the backoff.
    failed_in_row: usize,
    /// A backlog being delivered after sends failed: since when, and how many points were
    /// buffered then; progress is logged every [`BACKLOG_PROGRESS`].
    backlog: Option<Backlog>,
}

/// How long the forwarder waits with nothing to send before it hands freed memory back.
const RELEASE_WHEN_IDLE_FOR: Duration = Duration::from_secs(2);

/// How often the delivery of a backlog is reported.
const BACKLOG_PROGRESS: Duration = Duration::from_secs(30);

/// A backlog being delivered.
#[derive(Debug, Clone, Copy)]
struct Backlog {
    since: Instant,
    /// Points sent since `since`.
    sent: u64,
    /// The last progress line: when, and `sent` then.
    reported: (Instant, u64),
}

/// What a backlog's delivery has to report.
#[derive(Debug, Clone, PartialEq)]
enum Progress {
    /// The buffer is empty: `points` sent in `seconds`.
    Delivered { points: u64, seconds: f64 },
    /// Every [`BACKLOG_PROGRESS`]: points left, points per second since the last report,
    /// and seconds to go at that rate (`None` at 0/s).
    Draining {
        left: u64,
        rate: f64,
        eta: Option<f64>,
    },
}

impl Backlog {
    /// `points` more were confirmed at `now`, and `left` remain buffered: what to report, if
    /// anything.
    fn confirmed(&mut self, points: u64, left: u64, now: Instant) -> Option<Progress> {
        self.sent = self.sent.saturating_add(points);
        if left == 0 {
            return Some(Progress::Delivered {
                points: self.sent,
                seconds: now.duration_since(self.since).as_secs_f64(),
            });
        }
        let (at, sent_then) = self.reported;
        let elapsed = now.duration_since(at);
        if elapsed < BACKLOG_PROGRESS {
            return None;
        }
        let rate = self.sent.saturating_sub(sent_then) as f64 / elapsed.as_secs_f64();
        self.reported = (now, self.sent);
        Some(Progress::Draining {
            left,
            rate,
            eta: (rate > 0.0).then(|| left as f64 / rate),
        })
    }
}

/// What is confirmed and waits to be deleted.
#[derive(Debug, Clone, Copy, Default)]
struct PendingDelete {
    seq: u64,
    reject_id: u64,
    /// Points and buffered bytes it covers (not backlog any more).
    points: u64,
    bytes: u64,
}

/// How often the forwarder asks the collector's time while it has no recent estimate.
const PROBE_INTERVAL: Duration = Duration::from_secs(60);

/// A batch read and encoded ahead. Only one request is ever in flight; preparing the next
/// batch during it overlaps the agent's reading, encoding and compressing with the collector's
/// storing, which a fast backlog (a file tail) is bound by.
struct Prepared {
    batch: StoredBatch,
    body: Vec<u8>,
    /// Read after these; used only if they are exactly what was then confirmed.
    after: (u64, u64),
    /// The drop count when read: a drop since may have removed some of its points.
    dropped: u64,
}

/// Why the forwarder could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("no collector URL is configured")]
    NoCollector,
}

impl Forwarder {
    pub fn new(
        settings: ForwardSettings,
        agent_id: String,
        epoch: String,
        reader: Reader,
        link: ForwarderLink,
        metrics: Arc<Metrics>,
    ) -> Result<Forwarder, ForwarderError> {
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("tributary-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &settings.ca_pem {
            for certificate in reqwest::Certificate::from_pem_bundle(pem)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        if let Some(pem) = &settings.identity_pem {
            builder = builder.identity(reqwest::Identity::from_pem(pem)?);
        }
        if settings.ca_pem.is_none()
            && settings
                .collectors
                .iter()
                .all(|c| c.batches.scheme() == "http")
        {
            // Plain HTTP to every collector: the system's CA bundle is not read and parsed
            // (0.2 MiB of the idle agent's memory, issue 18). A redirect to HTTPS fails its
            // certificate check, as a misconfiguration should.
            builder = builder.tls_certs_only([]);
        }
        if settings.collectors.is_empty() {
            return Err(ForwarderError::NoCollector);
        }
        let forwarder = Forwarder {
            client: builder.build()?,
            backoff: Backoff::new(settings.backoff_initial, settings.backoff_max),
            max_points: settings.batch_max_points,
            settings,
            agent_id,
            epoch,
            reader: Arc::new(Mutex::new(reader)),
            link,
            metrics,
            confirmed_seq: 0,
            confirmed_reject: 0,
            prepared: None,
            pending_delete: None,
            clock: ClockFilter::default(),
            last_probe: None,
            resend_canary: std::env::var("TRIBUTARY_TEST_UNSAFE_RESEND_NEW_EPOCH")
                .is_ok_and(|v| v == "1"),
            active: 0,
            away_since: None,
            failed_in_row: 0,
            backlog: None,
        };
        forwarder.show_active();
        Ok(forwarder)
    }

    /// Sends until `shutdown`; then waits for `drained` (the writer has committed what the
    /// inputs handed it) and makes one last attempt within `final_attempt_timeout`.
    pub async fn run(mut self, shutdown: CancellationToken, drained: CancellationToken) {
        let mut committed = self.link.committed.clone();
        'forwarding: loop {
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                step = self.step() => step,
            };
            let wait = match step {
                Step::Sent { full: true, .. } => continue,
                // A partial batch: wait for more, so a steady stream travels in batches of
                // about `linger` worth of data instead of one per round trip.
                Step::Sent { full: false, .. } => self.settings.linger,
                Step::Retry(delay) => delay,
                Step::Idle => {
                    let mut released = false;
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => break 'forwarding,
                            changed = committed.changed() => {
                                if changed.is_err() {
                                    break 'forwarding;
                                }
                                break;
                            }
                            // Nothing new for a while: the agent is idle, so the memory the
                            // last batches freed goes back to the system. Never while busy.
                            () = tokio::time::sleep(RELEASE_WHEN_IDLE_FOR), if !released => {
                                crate::memory::release();
                                released = true;
                            }
                        }
                    }
                    // New data: linger so a trickle travels as one batch, not many.
                    self.settings.linger
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        self.final_attempt(drained).await;
    }

    async fn final_attempt(&mut self, drained: CancellationToken) {
        let deadline = tokio::time::Instant::now() + self.settings.final_attempt_timeout;
        let _ = tokio::time::timeout_at(deadline, drained.cancelled()).await;
        let result = tokio::time::timeout_at(deadline, async {
            loop {
                match self.step().await {
                    Step::Sent { .. } => continue,
                    Step::Idle => return true,
                    Step::Retry(_) => return false,
                }
            }
        })
        .await;
        let backlog = self.link.depth.points();
        match result {
            Ok(true) => info!("final forward attempt sent everything"),
            _ => info!(
                backlog,
                "final forward attempt did not send everything; the rest stays buffered for the next start"
            ),
        }
    }

    /// One attempt: read a batch, send it, act on the answer.
    pub async fn step(&mut self) -> Step {
        self.retry_pending_delete().await;
        if !self.clock.has_recent(Instant::now())
            && self
                .last_probe
                .is_none_or(|at| at.elapsed() >= PROBE_INTERVAL)
        {
            self.probe_clock().await;
        }
        let after = (self.confirmed_seq, self.confirmed_reject);
        let prepared = self
            .prepared
            .take()
            .filter(|p| p.after == after && p.dropped == self.link.depth.removed_total());
        let (batch, body) = match prepared {
            Some(prepared) => (prepared.batch, prepared.body),
            None => {
                let batch = match self.read(after).await {
                    Ok(batch) => batch,
                    Err(e) => {
                        error!(error = %e, "cannot read the buffer");
                        self.metrics.error("forward", "read_buffer");
                        return Step::Retry(self.backoff.next_random());
                    }
                };
                if batch.is_empty() {
                    return Step::Idle;
                }
                match self.encode(batch, None).await {
                    (batch, Ok(body)) => (batch, body),
                    (_, Err(e)) => {
                        error!(error = %e, "cannot encode a batch");
                        self.metrics.error("forward", "encode");
                        return Step::Retry(self.backoff.next_random());
                    }
                }
            }
        };
        // A prepared batch outlives this call only if it starts right after what this one
        // confirmed (checked when taken above); a retry or refusal leaves it unusable.
        self.send(batch, body).await
    }

    /// Reads and encodes the batch after `batch`, assuming it will be confirmed.
    async fn prepare_after(&self, batch: &StoredBatch) -> Option<Prepared> {
        if !batch.more {
            return None;
        }
        let after = (
            batch.last_seq(),
            batch.rejects.last().map_or(self.confirmed_reject, |r| r.id),
        );
        let dropped = self.link.depth.removed_total();
        let next = self.read(after).await.ok().filter(|b| !b.is_empty())?;
        match self.encode(next, Some(batch)).await {
            (batch, Ok(body)) => Some(Prepared {
                batch,
                body,
                after,
                dropped,
            }),
            (_, Err(_)) => None,
        }
    }

    /// Sends one encoded batch and acts on the answer.
    async fn send(&mut self, batch: StoredBatch, body: Vec<u8>) -> Step {
        self.fail_back_when_due();
        let url = self.collector().batches.clone();
        let mut request = self
            .client
            .post(url.clone())
            .header(CONTENT_TYPE, self.encoding().content_type())
            .body(body);
        if self.settings.compression_level > 0 {
            request = request.header(CONTENT_ENCODING, codec::ENCODING_ZSTD);
        }
        if let Some(token) = &self.settings.token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        // The exchange's times on this side, for the clock estimate: the answer's arrival is
        // stamped as it comes, not after the batch prepared alongside.
        let sent = tributary_wire::time::now_ns();
        let send = async {
            let response = request.send().await;
            (response, tributary_wire::time::now_ns(), Instant::now())
        };
        let ((response, answered, answered_at), next) =
            tokio::join!(send, self.prepare_after(&batch));
        self.prepared = next;
        let response = match response {
            Ok(response) => response,
            Err(e) => {
                let delay = self.fail_over();
                let error = error_chain(&e);
                match tls_hint(&error) {
                    Some(hint) => {
                        warn!(%url, %error, retry_in = ?delay, backlog = self.link.depth.points(), "cannot reach the collector: TLS failed ({hint})");
                        self.metrics.error("forward", "tls");
                    }
                    None => {
                        warn!(%url, %error, retry_in = ?delay, backlog = self.link.depth.points(), "cannot reach the collector");
                        self.metrics.error("forward", "unreachable");
                    }
                }
                self.metrics.send_outcome("retry");
                return Step::Retry(delay);
            }
        };
        let status = response.status();
        let retry_after = parse_retry_after(response.headers());
        match classify(status, retry_after) {
            Verdict::Confirmed => {
                self.confirmed(batch, response, (sent, answered, answered_at))
                    .await
            }
            Verdict::Retry(after) => {
                let body = response.text().await.unwrap_or_default();
                // A collector that fails (5xx) is left for the next; one that only asks to
                // slow down (429) is kept.
                let delay = if status.is_server_error() {
                    let next = self.fail_over();
                    // Another collector is not bound by this one's Retry-After.
                    if self.settings.collectors.len() > 1 {
                        next
                    } else {
                        after.unwrap_or(next)
                    }
                } else {
                    self.backlog_begins();
                    after.unwrap_or_else(|| self.backoff.next_random())
                };
                warn!(%status, body = %truncate(&body, 300), retry_in = ?delay, "the collector asked to retry");
                self.metrics.error("forward", "retry_status");
                self.metrics.send_outcome("retry");
                Step::Retry(delay)
            }
            Verdict::Unauthorized => {
                let body = response.text().await.unwrap_or_default();
                let delay = self.backoff.next_random();
                self.backlog_begins();
                if status == reqwest::StatusCode::FORBIDDEN {
                    // The token is known, and may not do this: it is another agent's (the
                    // batch names this agent's id) or a reader's.
                    error!(%status, body = %truncate(&body, 300), agent = %self.agent_id, retry_in = ?delay, backlog = self.link.depth.points(), "the collector knows this token but refuses it for this agent; data keeps buffering (the token belongs to another agent id or to a reader: check agent.id against the id of this token's [[agents]] entry in collector.toml)");
                    self.metrics.error("forward", "forbidden");
                    self.metrics.send_outcome("unauthorized");
                    return Step::Retry(delay);
                }
                let hint = if self.settings.token.is_none() {
                    "forward.token is not set, and no client certificate (forward.cert_file) names an [[agents]] id the collector knows"
                } else {
                    "check forward.token against the agent's token_sha256 in collector.toml"
                };
                error!(%status, body = %truncate(&body, 300), retry_in = ?delay, backlog = self.link.depth.points(), "the collector refused this agent's token; data keeps buffering ({hint})");
                self.metrics.error("forward", "unauthorized");
                self.metrics.send_outcome("unauthorized");
                Step::Retry(delay)
            }
            Verdict::Refused => {
                let reason = response.text().await.unwrap_or_default();
                self.refused(batch, status, reason).await
            }
        }
    }

    /// A send failed: from here on, what is buffered is a backlog until it is delivered.
    fn backlog_begins(&mut self) {
        if self.backlog.is_none() && self.link.depth.points() > 0 {
            let now = Instant::now();
            self.backlog = Some(Backlog {
                since: now,
                sent: 0,
                reported: (now, 0),
            });
        }
    }

    /// After `points` were confirmed: the backlog's end once the buffer is empty ("backlog
    /// delivered: N points in T s"), and every 30 s meanwhile the points left, the rate and
    /// the time it may take.
    fn backlog_progress(&mut self, points: u64) {
        let Some(backlog) = self.backlog.as_mut() else {
            return;
        };
        match backlog.confirmed(points, self.link.depth.points(), Instant::now()) {
            None => {}
            Some(Progress::Delivered { points, seconds }) => {
                info!(
                    points,
                    seconds = format!("{seconds:.1}"),
                    "backlog delivered: {points} points in {seconds:.1} s"
                );
                self.backlog = None;
            }
            Some(Progress::Draining { left, rate, eta }) => {
                let eta = eta.map_or_else(|| "unknown".to_owned(), |s| format!("{s:.0} s"));
                info!(left, rate = format!("{rate:.0}/s"), eta = %eta, "delivering the backlog: {left} points left at {rate:.0} points/s, about {eta} to go");
            }
        }
    }

    /// The collector batches go to now.
    fn collector(&self) -> &crate::config::CollectorUrls {
        self.settings
            .collectors
            .get(self.active)
            .or_else(|| self.settings.collectors.first())
            .expect("forward settings name at least one collector")
    }

    /// Moves to the next collector after a failure (with several configured), and says how
    /// long to wait: nothing while the round has collectors left to try, the backoff once each
    /// has failed in a row.
    fn fail_over(&mut self) -> Duration {
        self.backlog_begins();
        let count = self.settings.collectors.len();
        self.failed_in_row = self.failed_in_row.saturating_add(1);
        if count > 1 {
            let from = self.collector().base.clone();
            self.active = (self.active + 1) % count;
            if self.active == 0 {
                self.away_since = None;
            } else if self.away_since.is_none() {
                self.away_since = Some(Instant::now());
            }
            let to = self.collector().base.clone();
            warn!(%from, %to, "failing over to the next collector");
            self.metrics.error("forward", "failover");
            self.metrics.failovers.inc();
            self.show_active();
        }
        if count > 1 && !self.failed_in_row.is_multiple_of(count) {
            Duration::ZERO
        } else {
            self.backoff.next_random()
        }
    }

    /// Back to the first collector once `failback_after` has passed elsewhere.
    fn fail_back_when_due(&mut self) {
        if let Some(since) = self.away_since
            && since.elapsed() >= self.settings.failback_after
        {
            let from = self.collector().base.clone();
            self.active = 0;
            self.away_since = None;
            info!(%from, to = %self.collector().base, after = ?self.settings.failback_after, "returning to the first collector");
            self.metrics.failovers.inc();
            self.show_active();
        }
    }

    /// `collector_active{url}`: 1 for the one in use.
    fn show_active(&self) {
        for (index, collector) in self.settings.collectors.iter().enumerate() {
            self.metrics
                .collector_active
                .get_or_create(&crate::metrics::UrlLabels {
                    url: collector.base.clone(),
                })
                .set(i64::from(index == self.active));
        }
    }

    fn encoding(&self) -> Encoding {
        match self.settings.encoding {
            WireEncoding::Msgpack => Encoding::MsgPack,
            WireEncoding::Json => Encoding::Json,
        }
    }

    async fn read(&self, after: (u64, u64)) -> Result<StoredBatch, StoreError> {
        let reader = Arc::clone(&self.reader);
        let (after_seq, after_reject) = after;
        let (max_points, max_bytes) = (self.max_points, self.settings.batch_max_bytes);
        tokio::task::spawn_blocking(move || {
            reader
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .read_batch(after_seq, after_reject, max_points, max_bytes)
        })
        .await
        .unwrap_or_else(|e| Err(StoreError::Task(e.to_string())))
    }

    /// Encodes and compresses off the executor; also looks up the oldest point left behind.
    /// The batch moves into the blocking task and comes back with the body. `ahead` is the
    /// batch in flight when this one is prepared during it: the backlog the status reports is
    /// what is left once both are stored (and what is confirmed but not yet deleted is not
    /// backlog either).
    async fn encode(
        &self,
        batch: StoredBatch,
        ahead: Option<&StoredBatch>,
    ) -> (StoredBatch, Result<Vec<u8>, String>) {
        let depth = &self.link.depth;
        let (ahead_points, ahead_bytes) =
            ahead.map_or((0, 0), |b| (b.points.len() as u64, b.buffered_size()));
        let now = tributary_wire::time::now_ns();
        let mut header = BatchHeader {
            agent_id: self.agent_id.clone(),
            epoch: self.epoch.clone(),
            first_seq: batch.first_seq,
            last_seq: batch.last_seq(),
            dropped: depth.removed_total(),
            sent_at: now,
            status: AgentStatus {
                backlog_points: depth
                    .points()
                    .saturating_sub(batch.points.len() as u64)
                    .saturating_sub(ahead_points)
                    .saturating_sub(self.pending_delete.map_or(0, |p| p.points)),
                backlog_bytes: depth
                    .bytes()
                    .saturating_sub(batch.buffered_size())
                    .saturating_sub(ahead_bytes)
                    .saturating_sub(self.pending_delete.map_or(0, |p| p.bytes)),
                oldest_unsent_ts: None,
                clock: self.clock.estimate(now, Instant::now()),
            },
        };
        let encoding = self.encoding();
        let level = self.settings.compression_level;
        let reader = Arc::clone(&self.reader);
        let oldest_gauge = self.metrics.oldest_unsent.clone();
        let task = tokio::task::spawn_blocking(move || {
            let oldest = reader
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .oldest_ts_after(header.last_seq);
            let body = oldest.map_err(|e| e.to_string()).and_then(|oldest| {
                header.status.oldest_unsent_ts = oldest;
                oldest_gauge.set(oldest.map_or(0.0, |ts| ts as f64 / 1e9));
                codec::encode_stored_batch_compressed(
                    &header,
                    batch.points.iter(),
                    &batch.rejects,
                    encoding,
                    level,
                )
                .map_err(|e| e.to_string())
            });
            (batch, body)
        });
        match task.await {
            Ok(done) => done,
            // The task panicked and took the batch with it; the points are still in the buffer
            // and are read again on the next attempt.
            Err(e) => (
                StoredBatch::default(),
                Err(format!("encode task failed: {e}")),
            ),
        }
    }

    async fn confirmed(
        &mut self,
        batch: StoredBatch,
        response: reqwest::Response,
        (sent, answered, answered_at): (i64, i64, Instant),
    ) -> Step {
        let ack: BatchAck = match response.json().await {
            Ok(ack) => ack,
            Err(e) => {
                let delay = self.backoff.next_random();
                warn!(error = %e, retry_in = ?delay, "the collector's answer is not a batch acknowledgement; retrying");
                self.metrics.error("forward", "bad_ack");
                self.metrics.send_outcome("retry");
                return Step::Retry(delay);
            }
        };
        let last_seq = batch.last_seq();
        if !batch.points.is_empty() && ack.committed_through < last_seq {
            let delay = self.backoff.next_random();
            error!(committed_through = ack.committed_through, last_seq, retry_in = ?delay, "the collector confirmed less than the batch; keeping it");
            self.metrics.error("forward", "short_ack");
            self.metrics.send_outcome("retry");
            return Step::Retry(delay);
        }
        if let (Some(received), Some(replied)) = (ack.received_at, ack.replied_at) {
            self.clock
                .record(sent, received, replied, answered, answered_at);
        }
        if self.resend_canary {
            // The duplicate canary (test only): forget the confirmation and start over under
            // another epoch, whose mark at the collector is empty.
            self.resend_canary = false;
            self.epoch = format!("{}-canary", self.epoch);
            self.confirmed_seq = 0;
            self.confirmed_reject = 0;
            self.prepared = None;
            warn!(epoch = %self.epoch, "test switch: sending confirmed points again under a new epoch");
            self.metrics.error("forward", "test_resend_canary");
            return Step::Retry(Duration::ZERO);
        }
        let reject_id = batch.rejects.last().map_or(self.confirmed_reject, |r| r.id);
        // Confirmed: never read or sent again, whether or not the delete goes through now.
        self.confirmed_seq = self.confirmed_seq.max(last_seq);
        self.confirmed_reject = reject_id;
        let pending = self.pending_delete.unwrap_or_default();
        self.pending_delete = Some(PendingDelete {
            seq: pending.seq.max(last_seq),
            reject_id: pending.reject_id.max(reject_id),
            points: pending.points.saturating_add(batch.points.len() as u64),
            bytes: pending.bytes.saturating_add(batch.buffered_size()),
        });
        self.retry_pending_delete().await;
        self.backoff.reset();
        self.failed_in_row = 0;
        let limit = self.max_points;
        self.max_points = (self.max_points * 2).min(self.settings.batch_max_points);
        let points = batch.points.len();
        let full = batch.more
            || points >= limit
            || batch.points.byte_len() * 10 >= self.settings.batch_max_bytes * 9;
        self.metrics.points_sent.inc_by(points as u64);
        self.metrics.send_outcome("ok");
        self.backlog_progress(points as u64);
        self.metrics
            .last_send_success
            .set(tributary_wire::time::now_ns() as f64 / 1e9);
        debug!(
            points,
            rejects = batch.rejects.len(),
            stored = ack.stored,
            duplicates = ack.duplicates,
            through = last_seq,
            "batch confirmed"
        );
        Step::Sent { points, full }
    }

    /// Deletes what is confirmed and not yet deleted, if anything. A failure (a full disk)
    /// is logged and counted; the points stay buffered but are never sent again, and the
    /// delete is tried again before the next send.
    async fn retry_pending_delete(&mut self) {
        let Some(pending) = self.pending_delete else {
            return;
        };
        match self.delete(pending.seq, pending.reject_id).await {
            Ok(()) => self.pending_delete = None,
            Err(e) => {
                error!(error = %e, through = pending.seq, "cannot delete confirmed points from the buffer; they will not be sent again, and the delete is retried");
                self.metrics.error("forward", "delete");
            }
        }
    }

    /// Asks the collector's time, for a first clock estimate. A collector without
    /// `/api/v1/time` (or one that cannot be reached) only means no estimate for now.
    async fn probe_clock(&mut self) {
        self.last_probe = Some(Instant::now());
        let sent = tributary_wire::time::now_ns();
        let time_url = self.collector().time.clone();
        let response = self.client.get(time_url).send().await;
        let (answered, answered_at) = (tributary_wire::time::now_ns(), Instant::now());
        let answer = match response {
            Ok(response) if response.status().is_success() => {
                response.json::<TimeAnswer>().await.ok()
            }
            _ => None,
        };
        match answer {
            Some(time) => {
                self.clock.record(
                    sent,
                    time.received_at,
                    time.replied_at,
                    answered,
                    answered_at,
                );
                debug!(estimate = ?self.clock.estimate(answered, answered_at), "measured the clock against the collector's");
            }
            None => debug!(
                "the collector's time is not available; batches go without a clock estimate for now"
            ),
        }
    }

    async fn delete(&self, seq: u64, reject_id: u64) -> Result<(), StoreError> {
        let (done, result) = oneshot::channel();
        self.link
            .control
            .send(Control::Delete {
                seq,
                reject_id,
                done,
            })
            .map_err(|_| WriterGone)?;
        result
            .await
            .unwrap_or(Err(StoreError::WriterGone(WriterGone)))
    }

    /// The collector refused the content: split until the refused point is alone, then move it
    /// to the quarantine so the points behind it can flow.
    async fn refused(&mut self, batch: StoredBatch, status: StatusCode, reason: String) -> Step {
        self.metrics.send_outcome("refused");
        let points = batch.points.len();
        if points > 1 {
            self.max_points = (points / 2).max(1);
            warn!(%status, reason = %truncate(&reason, 300), points, next = self.max_points, "the collector refused a batch; splitting it");
            self.metrics.error("forward", "refused_split");
            return Step::Retry(Duration::ZERO);
        }
        let reason = format!(
            "refused by the collector ({status}): {}",
            truncate(&reason, 500)
        );
        error!(seq = batch.first_seq, reason = %reason, "moving a point the collector refuses to the quarantine");
        self.metrics.error("forward", "refused_point");
        let (done, result) = oneshot::channel();
        let request = if points == 1 {
            Control::Quarantine {
                seq: batch.first_seq,
                reason,
                done,
            }
        } else {
            // Only rejects, and the collector refuses them: nothing else can be done with them.
            Control::Delete {
                seq: self.confirmed_seq,
                reject_id: batch.rejects.last().map_or(self.confirmed_reject, |r| r.id),
                done,
            }
        };
        if self.link.control.send(request).is_err() {
            return Step::Retry(self.backoff.next_random());
        }
        match result.await {
            Ok(Ok(())) => Step::Retry(Duration::ZERO),
            _ => {
                self.metrics.error("forward", "quarantine_failed");
                Step::Retry(self.backoff.next_random())
            }
        }
    }
}

/// What to check when a connection failed in its TLS handshake (by rustls' messages), or
/// `None` for other failures.
fn tls_hint(error: &str) -> Option<&'static str> {
    if error.contains("invalid peer certificate") {
        Some(
            "the collector's certificate is not trusted: check forward.ca_file and the name in forward.url",
        )
    } else if error.contains("CertificateRequired") || error.contains("certificate required") {
        Some(
            "the collector requires a client certificate: set forward.cert_file and forward.key_file",
        )
    } else if error.contains("peer sent no certificates")
        || error.contains("BadCertificate")
        || error.contains("UnknownCA")
        || error.contains("unknown ca")
    {
        Some("the collector refused this agent's client certificate: check forward.cert_file")
    } else {
        None
    }
}

/// An error with its causes, e.g. "error sending request: connection refused".
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn a_draining_backlog_reports_every_30_s_and_once_when_delivered() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut backlog = Backlog {
            since: start,
            sent: 0,
            reported: (start, 0),
        };
        // 9,000 points buffered; 100 confirmed a second. Nothing until 30 s have passed.
        let mut left = 9_000;
        let mut reports = Vec::new();
        for second in 1..=90 {
            left -= 100;
            if let Some(progress) = backlog.confirmed(100, left, at(second)) {
                reports.push((second, progress));
            }
        }
        assert_eq!(
            reports,
            vec![
                (
                    30,
                    Progress::Draining {
                        left: 6_000,
                        rate: 100.0,
                        eta: Some(60.0)
                    }
                ),
                (
                    60,
                    Progress::Draining {
                        left: 3_000,
                        rate: 100.0,
                        eta: Some(30.0)
                    }
                ),
                (
                    90,
                    Progress::Delivered {
                        points: 9_000,
                        seconds: 90.0
                    }
                ),
            ]
        );
        // A stalled delivery (nothing confirmed for 30 s) has no estimate.
        let mut stalled = Backlog {
            since: start,
            sent: 0,
            reported: (start, 0),
        };
        assert_eq!(
            stalled.confirmed(0, 500, at(31)),
            Some(Progress::Draining {
                left: 500,
                rate: 0.0,
                eta: None
            })
        );
    }

    #[test]
    fn statuses_are_classified_once() {
        assert_eq!(classify(StatusCode::OK, None), Verdict::Confirmed);
        assert_eq!(
            classify(StatusCode::UNAUTHORIZED, None),
            Verdict::Unauthorized
        );
        assert_eq!(classify(StatusCode::FORBIDDEN, None), Verdict::Unauthorized);
        assert_eq!(
            classify(StatusCode::PAYLOAD_TOO_LARGE, None),
            Verdict::Refused
        );
        assert_eq!(classify(StatusCode::BAD_REQUEST, None), Verdict::Refused);
        assert_eq!(classify(StatusCode::NOT_FOUND, None), Verdict::Retry(None));
        assert_eq!(
            classify(StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(3))),
            Verdict::Retry(Some(Duration::from_secs(3)))
        );
        assert_eq!(
            classify(StatusCode::BAD_GATEWAY, None),
            Verdict::Retry(None)
        );
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        assert_eq!(parse_retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(parse_retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("999999"));
        assert_eq!(parse_retry_after(&headers), Some(MAX_RETRY_AFTER));
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&soon).unwrap());
        let delay = parse_retry_after(&headers).unwrap();
        assert!(
            delay > Duration::from_secs(25) && delay <= Duration::from_secs(30),
            "{delay:?}"
        );
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(parse_retry_after(&headers), Some(Duration::ZERO));
    }
}
