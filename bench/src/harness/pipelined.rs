//! A load generator that speaks just enough MQTT 3.1.1 to publish QoS 1 messages fast: it
//! writes many PUBLISH packets per syscall, within an in-flight window, and counts PUBACKs.
//! Its counterpart [`subscribe_and_discard`] is the cheapest possible QoS 1 subscriber, to
//! measure what the broker alone can deliver.
//!
//! rumqttc (used by [`super::Publisher`] for the tests, where reconnects and exact ack
//! bookkeeping matter) writes one packet per syscall, which makes the publisher and the broker
//! spend most of a benchmark's CPU on syscalls. Many devices publishing at once reach a broker
//! as a dense stream; this reproduces that from one process.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Encodes an MQTT "remaining length" (variable-length integer).
fn put_remaining_length(out: &mut Vec<u8>, mut length: usize) {
    loop {
        let mut byte = (length % 128) as u8;
        length /= 128;
        if length > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if length == 0 {
            break;
        }
    }
}

fn put_string(out: &mut Vec<u8>, text: &[u8]) {
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text);
}

/// Connects as `client_id` with a clean session and a 60 s keep-alive: the handshake both
/// tools share.
async fn connect(port: u16, client_id: &str) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let mut body = Vec::new();
    put_string(&mut body, b"MQTT");
    body.extend_from_slice(&[4, 0x02, 0, 60]);
    put_string(&mut body, client_id.as_bytes());
    let mut packet = vec![0x10];
    put_remaining_length(&mut packet, body.len());
    packet.extend_from_slice(&body);
    stream.write_all(&packet).await?;
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await?;
    anyhow::ensure!(
        connack[0] == 0x20 && connack[3] == 0,
        "CONNECT refused: {connack:?}"
    );
    Ok(stream)
}

/// Subscribes to `filter` at QoS 1 and acknowledges every message at once, storing nothing,
/// until `count` have arrived. Acks for everything read in one go leave in one write.
pub async fn subscribe_and_discard(port: u16, filter: &str, count: u64) -> anyhow::Result<()> {
    let mut stream = connect(port, "bench-null-subscriber").await?;
    let mut body = vec![0, 1];
    put_string(&mut body, filter.as_bytes());
    body.push(1);
    let mut packet = vec![0x82];
    put_remaining_length(&mut packet, body.len());
    packet.extend_from_slice(&body);
    stream.write_all(&packet).await?;
    let mut input = vec![0u8; 1 << 16];
    let mut pending: Vec<u8> = Vec::new();
    let mut acks = Vec::new();
    let mut received = 0u64;
    while received < count {
        let read = tokio::time::timeout(Duration::from_secs(60), stream.read(&mut input)).await??;
        anyhow::ensure!(read > 0, "the broker closed the connection");
        pending.extend_from_slice(&input[..read]);
        let mut at = 0;
        acks.clear();
        loop {
            // Fixed header: type byte, then the remaining length (1 to 4 bytes).
            let mut length = 0usize;
            let mut shift = 0;
            let mut header = 1;
            let complete = loop {
                let Some(&byte) = pending.get(at + header) else {
                    break false;
                };
                length |= usize::from(byte & 0x7f) << shift;
                shift += 7;
                header += 1;
                if byte & 0x80 == 0 {
                    break true;
                }
            };
            if !complete || pending.len() < at + header + length {
                break;
            }
            let kind = pending[at] >> 4;
            if kind == 3 {
                let topic_length = usize::from(u16::from_be_bytes([
                    pending[at + header],
                    pending[at + header + 1],
                ]));
                let id_at = at + header + 2 + topic_length;
                acks.extend_from_slice(&[0x40, 2, pending[id_at], pending[id_at + 1]]);
                received += 1;
            }
            at += header + length;
        }
        pending.drain(..at);
        if !acks.is_empty() {
            stream.write_all(&acks).await?;
        }
    }
    Ok(())
}

/// Publishes `count` QoS 1 messages made by `message(i)` with at most `window` unacknowledged;
/// returns when all are acknowledged.
pub async fn publish_pipelined(
    port: u16,
    client_id: &str,
    count: u64,
    window: u16,
    message: impl Fn(u64) -> (String, Vec<u8>),
) -> anyhow::Result<()> {
    let stream = connect(port, client_id).await?;
    let (mut reader, mut writer) = stream.into_split();
    // The reader counts PUBACKs; the writer refills the window a quarter at a time, so each
    // write carries many packets. Packet ids cycle through 1..=window*2, which stays clear of
    // ids still in flight because at most `window` are.
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let progress = std::sync::Arc::new(tokio::sync::Notify::new());
    let reading = {
        let (acked, progress) = (
            std::sync::Arc::clone(&acked),
            std::sync::Arc::clone(&progress),
        );
        tokio::spawn(async move {
            let mut input = vec![0u8; 1 << 16];
            let mut pending = Vec::new();
            let mut total = 0u64;
            while total < count {
                let read = tokio::time::timeout(Duration::from_secs(60), reader.read(&mut input))
                    .await??;
                anyhow::ensure!(read > 0, "the broker closed the connection");
                pending.extend_from_slice(&input[..read]);
                let whole = pending.len() / 4 * 4;
                for ack in pending[..whole].chunks_exact(4) {
                    anyhow::ensure!(
                        ack[0] == 0x40 && ack[1] == 2,
                        "unexpected packet {:#x}",
                        ack[0]
                    );
                }
                total += (whole / 4) as u64;
                pending.drain(..whole);
                acked.store(total, std::sync::atomic::Ordering::Release);
                progress.notify_one();
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    let window = u64::from(window.max(4));
    let chunk = (window / 4).max(1);
    let cycle = (window * 2).min(65_535);
    let mut sent = 0u64;
    let mut out = Vec::with_capacity(1 << 20);
    while sent < count {
        while sent - acked.load(std::sync::atomic::Ordering::Acquire) > window - chunk {
            progress.notified().await;
        }
        out.clear();
        let free = window - (sent - acked.load(std::sync::atomic::Ordering::Acquire));
        for _ in 0..free.min(count - sent) {
            let (topic, payload) = message(sent);
            let pkid = (sent % cycle + 1) as u16;
            out.push(0x32); // PUBLISH, QoS 1
            put_remaining_length(&mut out, 2 + topic.len() + 2 + payload.len());
            put_string(&mut out, topic.as_bytes());
            out.extend_from_slice(&pkid.to_be_bytes());
            out.extend_from_slice(&payload);
            sent += 1;
        }
        writer.write_all(&out).await?;
    }
    reading.await??;
    writer.write_all(&[0xe0, 0]).await?; // DISCONNECT
    Ok(())
}
