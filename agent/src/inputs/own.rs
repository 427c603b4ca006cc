//! The agent's own figures as readings: every `agent.self_metrics` it buffers a
//! `tributary_agent` point (buffer depth, oldest unsent age, dropped and quarantined counts,
//! sends ok and failed, the last success) and a `tributary_agent_input` point per input
//! (receipts, quarantined payloads, skipped runs, errors, MQTT connection). They travel exactly once
//! like any reading, so the collector holds every device's health as series (the collector
//! adds the `agent` tag from the token).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tributary_wire::{FieldValue, Point};

use crate::buffer::{BufferHandle, Depth, Ingest, Points};
use crate::metrics::Metrics;

/// An input the agent watches: its label, and whether it keeps an MQTT connection.
#[derive(Debug, Clone)]
pub struct Watched {
    pub label: String,
    pub mqtt: bool,
}

/// Outcomes of a forward attempt that are not a success.
const FAILED_OUTCOMES: [&str; 4] = ["retry", "unauthorized", "too_large", "rejected"];

/// The points of one sample, taken at `now` (ns).
pub fn sample(metrics: &Metrics, depth: &Depth, inputs: &[Watched], now: i64) -> Vec<Point> {
    let input_counter =
        |family: &prometheus_client::metrics::family::Family<
            crate::metrics::InputLabels,
            prometheus_client::metrics::counter::Counter,
        >,
         label: &str| { family.get_or_create(&Metrics::input(label)).get() as i64 };
    let sends = |outcome: &str| {
        metrics
            .sends
            .get_or_create(&crate::metrics::OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .get() as i64
    };
    let oldest = metrics.oldest_unsent.get();
    let oldest_age = if depth.points() == 0 || oldest <= 0.0 {
        0.0
    } else {
        (now as f64 / 1e9 - oldest).max(0.0)
    };
    let quarantined: i64 = inputs
        .iter()
        .map(|i| input_counter(&metrics.rejected, &i.label))
        .sum();
    let mut points = vec![
        Point::new("tributary_agent", now)
            .with_field("buffer_points", FieldValue::count(depth.points()))
            .with_field("buffer_bytes", FieldValue::count(depth.bytes()))
            .with_field("oldest_unsent_age_seconds", oldest_age)
            .with_field("dropped_total", FieldValue::count(depth.dropped_total()))
            .with_field("quarantined_total", quarantined)
            .with_field(
                "points_buffered_total",
                metrics.points_buffered.get() as i64,
            )
            .with_field(
                "points_sent_total",
                FieldValue::count(metrics.points_sent.get()),
            )
            .with_field("sends_ok_total", sends("ok"))
            .with_field(
                "sends_failed_total",
                FAILED_OUTCOMES.iter().map(|o| sends(o)).sum::<i64>(),
            )
            .with_field("last_send_success_seconds", metrics.last_send_success.get())
            .with_field("errors_total", FieldValue::count(metrics.errors.total())),
    ];
    for input in inputs {
        let mut point = Point::new("tributary_agent_input", now)
            .with_tag("input", input.label.clone())
            .with_field(
                "received_total",
                input_counter(&metrics.received, &input.label),
            )
            .with_field(
                "rejected_total",
                input_counter(&metrics.rejected, &input.label),
            )
            .with_field(
                "skipped_runs_total",
                input_counter(&metrics.skipped_runs, &input.label),
            )
            .with_field(
                "errors_total",
                input_counter(&metrics.input_errors, &input.label),
            );
        if input.mqtt {
            let connected = metrics
                .mqtt_connected
                .get_or_create(&Metrics::input(&input.label))
                .get();
            point = point
                .with_field("mqtt_connected", connected == 1)
                .with_field(
                    "redeliveries_total",
                    input_counter(&metrics.redeliveries, &input.label),
                );
        }
        points.push(point);
    }
    points
}

/// Buffers a sample every `interval` until `intake` is cancelled.
pub async fn run(
    interval: Duration,
    inputs: Vec<Watched>,
    metrics: Arc<Metrics>,
    depth: Arc<Depth>,
    buffer: BufferHandle,
    intake: CancellationToken,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: the first sample comes one interval after the start.
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = intake.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let mut points = Points::new();
        for point in sample(&metrics, &depth, &inputs, tributary_wire::time::now_ns()) {
            points.push(&point);
        }
        let item = Ingest {
            points,
            ..Ingest::default()
        };
        if buffer.send(item).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_wire::FieldValue;

    #[test]
    fn a_sample_carries_the_agents_figures() {
        let metrics = Metrics::new();
        let depth = Depth::default();
        depth.points.store(7, std::sync::atomic::Ordering::Relaxed);
        metrics.points_sent.inc_by(40);
        metrics.send_outcome("ok");
        metrics.send_outcome("retry");
        metrics.send_outcome("retry");
        metrics.oldest_unsent.set(100.0);
        metrics
            .received
            .get_or_create(&Metrics::input("inputs.mqtt[0]"))
            .inc_by(5);
        metrics.set_mqtt_connected(&Metrics::input("inputs.mqtt[0]"), true);
        metrics.set_mqtt_connected(&Metrics::input("inputs.mqtt[0]"), true);
        metrics.input_error("inputs.mqtt[0]", "mqtt", "connection");
        let inputs = [Watched {
            label: "inputs.mqtt[0]".into(),
            mqtt: true,
        }];
        let points = sample(&metrics, &depth, &inputs, 160_000_000_000);
        assert_eq!(points.len(), 2);
        let agent = &points[0].fields;
        assert_eq!(agent["buffer_points"], FieldValue::I64(7));
        assert_eq!(agent["points_sent_total"], FieldValue::I64(40));
        assert_eq!(agent["sends_ok_total"], FieldValue::I64(1));
        assert_eq!(agent["sends_failed_total"], FieldValue::I64(2));
        assert_eq!(agent["oldest_unsent_age_seconds"], FieldValue::F64(60.0));
        assert_eq!(agent["errors_total"], FieldValue::I64(1));
        let input = &points[1];
        assert_eq!(input.tags["input"], "inputs.mqtt[0]");
        assert_eq!(input.fields["received_total"], FieldValue::I64(5));
        assert_eq!(input.fields["mqtt_connected"], FieldValue::Bool(true));
        assert_eq!(input.fields["errors_total"], FieldValue::I64(1));
        // The status line counts connections, not connect events.
        assert!(
            metrics.status_line(&depth, 1).contains("1 MQTT connected"),
            "{}",
            metrics.status_line(&depth, 1)
        );
        metrics.set_mqtt_connected(&Metrics::input("inputs.mqtt[0]"), false);
        assert!(metrics.status_line(&depth, 1).contains("0 MQTT connected"));
    }
}
