//! Measures one-way message throughput between two transports over loopback TCP.
//!
//! `cargo run --release -p transport --example throughput -- [messages] [small|large]`
//! (defaults: 200000 small messages). `small` is a `Digest` (about 50 bytes on the
//! wire), `large` a full `Peers` list (64 addresses, about 1.3 KB). The sender paces
//! itself on [`transport::Handle::send_capacity`], as a bulk sender should; the run is
//! bounded to 30 seconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use peer_protocol::{Codec, Identity, MAX_PEERS_PER_MESSAGE, Message, PeerAddress};
use peer_storage::MemoryPeerStore;
use transport::{Config, TcpNetwork, Transport, TransportEvent};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let messages: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200_000);
    let message = match args.next().as_deref() {
        Some("large") => Message::Peers(
            (0..MAX_PEERS_PER_MESSAGE)
                .map(|i| PeerAddress {
                    addr: ([10, 0, (i / 256) as u8, (i % 256) as u8], 3000).into(),
                    node_id: Some(Identity::generate().node_id()),
                })
                .collect(),
        ),
        Some("small") | None => Message::Digest {
            lamport: 1,
            settled_events: 1,
            digest: [7; 32],
        },
        Some(other) => return Err(format!("unknown size {other:?}: use small or large").into()),
    };

    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        ..Config::default()
    };
    let start = |config: Config| {
        let store = Arc::new(MemoryPeerStore::new(10));
        Transport::start(config, Arc::new(Identity::generate()), TcpNetwork, store)
    };
    let (alice, _alice_events) = start(config.clone()).await?;
    let (bob, mut bob_events) = start(config).await?;
    let bob_id = alice.dial(bob.local_addr()).await?;

    // Encoded once, shared by every send.
    let frame = Codec::encode_frame(&message)?;
    let frame_len = frame.len();

    let deadline = Instant::now() + Duration::from_secs(30);
    let receiver = tokio::spawn(async move {
        let mut received = 0u64;
        while received < messages && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_secs(5), bob_events.recv()).await {
                Ok(Some(TransportEvent::Message { .. })) => received += 1,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        received
    });

    let started = Instant::now();
    let mut sent = 0u64;
    while sent < messages && Instant::now() < deadline {
        if alice.send_capacity(&bob_id).unwrap_or(0) < 16 {
            tokio::task::yield_now().await;
            continue;
        }
        alice.send_frame(&bob_id, frame.clone())?;
        sent += 1;
    }
    let received = receiver.await?;
    let elapsed = started.elapsed();
    let rate = received as f64 / elapsed.as_secs_f64();
    println!(
        "sent {sent}, received {received} frames of {frame_len} bytes in {elapsed:.2?}: \
         {rate:.0} msg/s, {:.1} MB/s",
        rate * frame_len as f64 / 1e6
    );
    alice.shutdown().await;
    bob.shutdown().await;
    Ok(())
}
