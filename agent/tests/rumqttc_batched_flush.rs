//! The vendored rumqttc's patch (`vendor/rumqttc/PATCHES.md`): acknowledgements queued
//! together leave in one write, not one `writev` each. A fake broker sends a burst of QoS 1
//! PUBLISH packets; the client queues a PUBACK for each, and the test counts the write system
//! calls of the event loop's thread (`syscw` in `/proc/thread-self/io`) while they go out.
//! The same run without batching is the control: it must make one write per PUBACK, so the
//! count can tell the two apart.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const MESSAGES: u16 = 200;

/// Write system calls of the calling thread so far.
fn thread_writes() -> u64 {
    let io = std::fs::read_to_string("/proc/thread-self/io").expect("/proc/thread-self/io");
    io.lines()
        .find_map(|line| line.strip_prefix("syscw: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("a syscw line")
}

/// A broker that accepts one client, answers its CONNECT, sends `MESSAGES` QoS 1 PUBLISH
/// packets in one write and counts the PUBACK packets that come back.
fn fake_broker(listener: &TcpListener, pubacks: &AtomicUsize) {
    let (mut stream, _) = listener.accept().unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    // CONNECT: one packet, small enough for one read.
    let n = stream.read(&mut buf).unwrap();
    assert!(n > 0 && buf[0] == 0x10, "CONNECT first");
    stream.write_all(&[0x20, 0x02, 0x00, 0x00]).unwrap();
    let mut burst = Vec::new();
    for id in 1..=MESSAGES {
        // PUBLISH, QoS 1: topic "t", packet id, payload "x".
        burst.extend_from_slice(&[0x32, 0x06, 0x00, 0x01, b't']);
        burst.extend_from_slice(&id.to_be_bytes());
        burst.push(b'x');
    }
    stream.write_all(&burst).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut received = Vec::new();
    while Instant::now() < deadline && received.len() < usize::from(MESSAGES) * 4 {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        let acks = received
            .chunks(4)
            .filter(|p| p.len() == 4 && p[0] == 0x40)
            .count();
        pubacks.store(acks, Ordering::SeqCst);
    }
}

/// Runs a client with `batch` as its request batch; returns the write calls its event loop
/// made while sending the PUBACKs.
fn writes_for_acks(batch: usize) -> u64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let pubacks = Arc::new(AtomicUsize::new(0));
    let broker = {
        let pubacks = Arc::clone(&pubacks);
        std::thread::spawn(move || fake_broker(&listener, &pubacks))
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let writes = runtime.block_on(async {
        let mut options = MqttOptions::new("batch-test", "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(60))
            .set_manual_acks(true)
            .set_max_request_batch(batch);
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let mut publishes = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while publishes.len() < usize::from(MESSAGES) {
            let event = tokio::time::timeout_at(deadline, eventloop.poll())
                .await
                .expect("the burst arrives in time")
                .expect("the connection holds");
            if let Event::Incoming(Packet::Publish(publish)) = event {
                assert_eq!(publish.qos, QoS::AtLeastOnce);
                publishes.push(publish);
            }
        }
        // Every PUBACK is queued before the event loop runs again, as a commit releases them.
        for publish in &publishes {
            client.try_ack(publish).unwrap();
        }
        let before = thread_writes();
        while pubacks.load(Ordering::SeqCst) < usize::from(MESSAGES) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the broker got {} of {MESSAGES} PUBACKs",
                pubacks.load(Ordering::SeqCst)
            );
            let _ = tokio::time::timeout(Duration::from_millis(20), eventloop.poll()).await;
        }
        thread_writes() - before
    });
    broker.join().unwrap();
    writes
}

#[test]
fn queued_pubacks_leave_in_one_write_per_batch() {
    // Control: without batching, each PUBACK is its own write.
    let unbatched = writes_for_acks(0);
    assert!(
        unbatched >= u64::from(MESSAGES),
        "one write per PUBACK without batching: {unbatched}"
    );
    // With a batch of 64 (the agent uses 512): four batches; measured 6 writes (the flushes
    // around the batches), bounded at 12, far from the 200 of the control.
    let batched = writes_for_acks(64);
    eprintln!("PUBACK writes: {unbatched} unbatched, {batched} in batches of 64");
    assert!(
        batched <= 12,
        "{MESSAGES} PUBACKs in {batched} writes with a batch of 64"
    );
}
