//! An MQTT publisher that knows which of its messages the broker acknowledged.
//!
//! Every message has a caller-chosen id. rumqttc reports each outgoing PUBLISH with its packet
//! id in the order the messages were queued, and each PUBACK by packet id, so the publisher can
//! tell exactly which ids the broker has taken responsibility for: the set the exactly-once
//! oracle requires to be stored.
//!
//! QoS 1 on the publisher's own hop is at least once: if the broker goes away after taking a
//! message but before its PUBACK reaches us, the message is sent again and the broker, which
//! does not deduplicate QoS 1, forwards it as a new message that no subscriber can tell from a
//! second reading. Tests that restart the broker under a publisher therefore publish with
//! QoS 2 ([`Publisher::connect_qos`]): the broker then takes each message once, and the oracle
//! checks only the hop under test (broker -> agent -> collector, QoS 1 on the subscription).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::task::JoinHandle;

#[derive(Default)]
struct Tracking {
    /// Ids queued but not yet seen going out, in order.
    queued: VecDeque<u64>,
    /// Packet id -> message id, while the broker has not acknowledged it (PUBACK for QoS 1,
    /// PUBREC for QoS 2: either way the broker has taken the message).
    in_flight: HashMap<u16, u64>,
    acked: HashSet<u64>,
    connections: u64,
    /// The broker lost our session on a reconnect, so rumqttc dropped queued messages and the
    /// id bookkeeping can no longer be trusted.
    session_lost: bool,
}

/// A QoS 1 publisher with a persistent session (so rumqttc resends what was in flight after a
/// reconnect, in order); it reconnects on its own.
pub struct Publisher {
    client: AsyncClient,
    qos: QoS,
    tracking: Arc<Mutex<Tracking>>,
    task: JoinHandle<()>,
}

impl Publisher {
    /// Connects to the broker on 127.0.0.1:`port` to publish with QoS 1; `inflight` bounds
    /// unacknowledged messages.
    pub async fn connect(port: u16, client_id: &str, inflight: u16) -> Publisher {
        Publisher::connect_qos(port, client_id, inflight, QoS::AtLeastOnce).await
    }

    /// Like [`Publisher::connect`], publishing with `qos` (1 or 2).
    pub async fn connect_qos(port: u16, client_id: &str, inflight: u16, qos: QoS) -> Publisher {
        assert!(
            qos != QoS::AtMostOnce,
            "QoS 0 messages are never acknowledged"
        );
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_inflight(inflight)
            .set_max_packet_size(1 << 20, 1 << 20)
            .set_clean_session(false);
        let (client, mut eventloop) = AsyncClient::new(options, 10_000);
        let tracking = Arc::new(Mutex::new(Tracking::default()));
        let state = Arc::clone(&tracking);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        let mut t = state.lock().expect("tracking lock");
                        // A packet id already in flight is a retransmission after a reconnect.
                        if !t.in_flight.contains_key(&pkid)
                            && let Some(id) = t.queued.pop_front()
                        {
                            t.in_flight.insert(pkid, id);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(rumqttc::PubAck { pkid })))
                    | Ok(Event::Incoming(Packet::PubRec(rumqttc::PubRec { pkid }))) => {
                        let mut t = state.lock().expect("tracking lock");
                        if let Some(id) = t.in_flight.remove(&pkid) {
                            t.acked.insert(id);
                        }
                    }
                    Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                        let mut t = state.lock().expect("tracking lock");
                        t.connections += 1;
                        if t.connections > 1 && !connack.session_present {
                            t.session_lost = true;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Publisher {
            client,
            qos,
            tracking,
            task,
        }
    }

    /// Queues message `id` (waits while rumqttc's queue is full).
    pub async fn publish(&self, id: u64, topic: &str, payload: Vec<u8>) {
        self.tracking
            .lock()
            .expect("tracking lock")
            .queued
            .push_back(id);
        if self
            .client
            .publish(topic, self.qos, false, payload)
            .await
            .is_err()
        {
            // The event loop is gone; the message was never sent.
            let mut t = self.tracking.lock().expect("tracking lock");
            t.queued.retain(|queued| *queued != id);
        }
    }

    /// Whether a reconnect lost the session (then [`Publisher::acked`] is not trustworthy).
    pub fn session_lost(&self) -> bool {
        self.tracking.lock().expect("tracking lock").session_lost
    }

    /// Ids the broker acknowledged so far.
    pub fn acked(&self) -> HashSet<u64> {
        self.tracking.lock().expect("tracking lock").acked.clone()
    }

    pub fn acked_count(&self) -> usize {
        self.tracking.lock().expect("tracking lock").acked.len()
    }

    /// Times the publisher connected (1 unless the broker went away).
    pub fn connections(&self) -> u64 {
        self.tracking.lock().expect("tracking lock").connections
    }

    /// Waits until `count` messages are acknowledged, or `timeout`.
    pub async fn wait_acked(&self, count: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self.acked_count() >= count {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.acked_count() >= count
    }

    /// Waits (bounded) for acks in flight, then disconnects.
    pub async fn finish(self, timeout: Duration) -> HashSet<u64> {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            let done = {
                let t = self.tracking.lock().expect("tracking lock");
                t.queued.is_empty() && t.in_flight.is_empty()
            };
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.task.abort();
        self.acked()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
