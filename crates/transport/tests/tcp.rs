//! Integration tests of the transport: real TCP on 127.0.0.1 (and a few on the
//! in-memory network), with short timeouts. Every wait is a condition with a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use futures::{SinkExt, StreamExt};
use peer_protocol::{
    Codec, GoodbyeReason, Hello, HelloAck, Identity, Message, NodeId, PROTOCOL_VERSION,
    PeerAddress, handshake_transcript,
};
use peer_storage::{MemoryPeerStore, PeerStore, Source};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use transport::{
    Config, Error, Handle, MemoryNetwork, Network, TcpNetwork, Transport, TransportEvent,
};

const NETWORK: &str = "test-net";
/// Generous upper bound for things that should take milliseconds.
const SOON: Duration = Duration::from_secs(5);

fn config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("address"),
        network_id: NETWORK.to_owned(),
        handshake_timeout: Duration::from_secs(1),
        heartbeat_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        reconnect_initial: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(500),
        ..Config::default()
    }
}

struct Node {
    handle: Handle,
    events: mpsc::Receiver<TransportEvent>,
    store: Arc<MemoryPeerStore>,
    identity: Arc<Identity>,
}

async fn start_with<N: Network>(config: Config, identity: Arc<Identity>, network: N) -> Node {
    init_logs();
    let store = Arc::new(MemoryPeerStore::new(1000));
    let (handle, events) = Transport::start(config, Arc::clone(&identity), network, store.clone())
        .await
        .expect("transport starts");
    Node {
        handle,
        events,
        store,
        identity,
    }
}

async fn start(config: Config) -> Node {
    start_with(config, Arc::new(Identity::generate()), TcpNetwork).await
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "transport=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `condition` until it holds, failing the test after `deadline`.
async fn wait_until(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !condition() {
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Receives events until one matches `pick`, failing after `deadline`.
async fn next_event<T>(
    events: &mut mpsc::Receiver<TransportEvent>,
    deadline: Duration,
    mut pick: impl FnMut(TransportEvent) -> Option<T>,
) -> T {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        match tokio::time::timeout_at(end, events.recv()).await {
            Ok(Some(event)) => {
                if let Some(found) = pick(event) {
                    return found;
                }
            }
            Ok(None) => panic!("event channel closed"),
            Err(_) => panic!("no matching event within {deadline:?}"),
        }
    }
}

fn misbehaviour_at(store: &MemoryPeerStore, addr: SocketAddr) -> u32 {
    store.get(addr).map_or(0, |record| record.misbehaviour)
}

/// A hand-driven peer speaking the codec over raw TCP.
struct RawPeer {
    framed: Framed<TcpStream, Codec>,
    local: SocketAddr,
}

impl RawPeer {
    async fn connect(addr: SocketAddr) -> RawPeer {
        let stream = TcpStream::connect(addr).await.expect("raw connect");
        let local = stream.local_addr().expect("local addr");
        RawPeer {
            framed: Framed::new(stream, Codec::default()),
            local,
        }
    }

    fn hello(node_id: NodeId, network_id: &str, listen_port: u16, nonce: [u8; 32]) -> Message {
        Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            network_id: network_id.to_owned(),
            market_hash: [0; 32],
            node_id,
            listen_port,
            nonce,
            agent: "raw-test-peer".to_owned(),
        })
    }

    async fn recv(&mut self) -> Option<Message> {
        match tokio::time::timeout(SOON, self.framed.next()).await {
            Ok(Some(Ok(message))) => Some(message),
            Ok(Some(Err(_)) | None) => None,
            Err(_) => panic!("raw peer: nothing received within {SOON:?}"),
        }
    }

    /// Completes an honest handshake as `identity`, claiming `listen_port`.
    async fn handshake(identity: &Identity, addr: SocketAddr, listen_port: u16) -> RawPeer {
        let mut raw = RawPeer::connect(addr).await;
        let nonce = [7u8; 32];
        raw.framed
            .send(Self::hello(identity.node_id(), NETWORK, listen_port, nonce))
            .await
            .expect("send hello");
        let Some(Message::Hello(theirs)) = raw.recv().await else {
            panic!("expected hello")
        };
        let transcript = handshake_transcript(NETWORK, &identity.node_id(), &theirs.nonce);
        let ack = HelloAck {
            signature: identity.sign(&transcript),
        };
        raw.framed
            .send(Message::HelloAck(ack))
            .await
            .expect("send ack");
        let Some(Message::HelloAck(_)) = raw.recv().await else {
            panic!("expected hello ack")
        };
        raw
    }

    /// Reads until the transport closes the connection; returns its goodbye, if any.
    async fn wait_closed(&mut self) -> Option<GoodbyeReason> {
        let mut goodbye = None;
        while let Some(message) = self.recv().await {
            if let Message::Goodbye { reason } = message {
                goodbye = Some(reason);
            }
        }
        goodbye
    }
}

#[tokio::test]
async fn two_transports_connect_and_exchange_messages() {
    let mut a = start(config()).await;
    let mut b = start(config()).await;

    let b_id = a.handle.dial(b.handle.local_addr()).await.expect("dial");
    assert_eq!(b_id, b.handle.node_id());

    let (peer, listen_addr, inbound) = next_event(&mut b.events, SOON, |e| match e {
        TransportEvent::Connected {
            peer,
            listen_addr,
            inbound,
            ..
        } => Some((peer, listen_addr, inbound)),
        _ => None,
    })
    .await;
    assert_eq!(peer, a.handle.node_id());
    assert_eq!(
        listen_addr,
        a.handle.local_addr(),
        "listen addr = connection ip + hello port"
    );
    assert!(inbound);

    let peers = vec![PeerAddress {
        addr: b.handle.local_addr(),
        node_id: Some(b_id),
    }];
    a.handle
        .send(&b_id, &Message::Peers(peers.clone()))
        .expect("send");
    let got = next_event(&mut b.events, SOON, |e| match e {
        TransportEvent::Message { peer, message } => Some((peer, message)),
        _ => None,
    })
    .await;
    assert_eq!(got, (a.handle.node_id(), Message::Peers(peers)));

    b.handle
        .send(&a.handle.node_id(), &Message::GetPeers)
        .expect("send back");
    let got = next_event(&mut a.events, SOON, |e| match e {
        TransportEvent::Message { message, .. } => Some(message),
        _ => None,
    })
    .await;
    assert_eq!(got, Message::GetPeers);

    // Heartbeats measure the round trip.
    wait_until("an rtt measurement", SOON, || {
        a.handle.peers().first().is_some_and(|p| p.rtt.is_some())
    })
    .await;
    assert!(
        a.store
            .get(b.handle.local_addr())
            .is_some_and(|r| r.successes == 1)
    );

    // A graceful shutdown says goodbye: the other side learns at once, not by timeout.
    b.handle.shutdown().await;
    let reason = next_event(&mut a.events, SOON, |e| match e {
        TransportEvent::Disconnected { reason, .. } => Some(reason),
        _ => None,
    })
    .await;
    assert!(reason.contains("Shutdown"), "reason: {reason}");
    a.handle.shutdown().await;
}

#[tokio::test]
async fn five_transports_form_a_mesh_and_broadcast() {
    let mut nodes = Vec::new();
    for _ in 0..5 {
        nodes.push(start(config()).await);
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.handle.local_addr()).collect();
    // Everyone keeps everyone connected: many simultaneous dials.
    for node in &nodes {
        for addr in &addrs {
            node.handle.add_peer_addr(*addr, Source::Bootstrap);
        }
    }
    // Settled: four peers each, no handshake running, and both ends of every pair
    // agree on who dialled (so no connection is about to be replaced).
    let handles: Vec<Handle> = nodes.iter().map(|n| n.handle.clone()).collect();
    wait_until("a settled full mesh", SOON, || mesh_settled(&handles)).await;

    for (i, node) in nodes.iter().enumerate() {
        let sent = node.handle.broadcast(&Message::Ping { nonce: 0 }, None);
        assert_eq!(sent, 4, "node {i}");
        let digest = Message::Digest {
            lamport: i as u64,
            settled_events: 0,
            digest: [i as u8; 32],
        };
        assert_eq!(node.handle.broadcast(&digest, None), 4);
    }
    for (i, node) in nodes.iter_mut().enumerate() {
        let mut from = Vec::new();
        while from.len() < 4 {
            let (peer, lamport) = next_event(&mut node.events, SOON, |e| match e {
                TransportEvent::Message {
                    peer,
                    message: Message::Digest { lamport, .. },
                } => Some((peer, lamport)),
                _ => None,
            })
            .await;
            assert_ne!(lamport, i as u64, "no echo of our own broadcast");
            from.push(peer);
        }
        from.sort();
        from.dedup();
        assert_eq!(from.len(), 4, "one digest from each other node");
    }
    // Self-dials were detected and remembered, never retried.
    for node in &nodes {
        assert!(
            node.handle
                .known_addrs()
                .iter()
                .all(|k| k.addr != node.handle.local_addr())
        );
    }
    for node in &nodes {
        node.handle.shutdown().await;
    }
}

fn mesh_settled(handles: &[Handle]) -> bool {
    handles.iter().all(|h| {
        let peers = h.peers();
        h.handshakes_in_progress() == 0
            && peers.len() == handles.len() - 1
            && peers.iter().all(|p| {
                handles
                    .iter()
                    .filter(|o| o.node_id() == p.node_id)
                    .all(|o| {
                        o.peers()
                            .iter()
                            .any(|q| q.node_id == h.node_id() && q.inbound != p.inbound)
                    })
            })
    })
}

#[tokio::test]
async fn a_restarted_peer_is_reconnected_within_a_second() {
    // A breaker that would open after two failures for a minute, to show that a peer
    // we were connected to is still probed about every second while it restarts.
    let patient = Config {
        breaker_threshold: 2,
        reconnect_max: Duration::from_secs(60),
        ..config()
    };
    let mut a = start(patient).await;
    let b = start(config()).await;
    let b_addr = b.handle.local_addr();
    let b_identity = Arc::clone(&b.identity);
    a.handle.add_peer_addr(b_addr, Source::Bootstrap);
    wait_until("a connected to b", SOON, || {
        a.handle.is_connected(&b.handle.node_id())
    })
    .await;

    b.handle.shutdown().await;
    drop(b);
    next_event(&mut a.events, SOON, |e| {
        matches!(e, TransportEvent::Disconnected { .. }).then_some(())
    })
    .await;
    // Down long enough for several failed redials.
    wait_until("three failed redials", SOON, || {
        a.handle
            .known_addrs()
            .first()
            .is_some_and(|k| k.failures >= 3)
    })
    .await;
    assert_eq!(
        a.handle.known_addrs()[0].breaker,
        transport::BreakerState::Closed
    );

    // Same identity, same port: "the same peer, restarted".
    let b = start_with(
        Config {
            listen: b_addr,
            ..config()
        },
        b_identity,
        TcpNetwork,
    )
    .await;
    let back = Instant::now();
    next_event(&mut a.events, Duration::from_secs(2), |e| match e {
        TransportEvent::Connected { peer, .. } => (peer == b.handle.node_id()).then_some(()),
        _ => None,
    })
    .await;
    assert!(
        back.elapsed() < Duration::from_millis(1200),
        "reconnected after {:?}",
        back.elapsed()
    );
    a.handle.shutdown().await;
    b.handle.shutdown().await;
}

#[tokio::test]
async fn a_silent_peer_is_dropped_within_the_idle_timeout() {
    let mut a = start(config()).await;
    let silent = Identity::generate();
    let mut raw = RawPeer::handshake(&silent, a.handle.local_addr(), 1).await;
    next_event(&mut a.events, SOON, |e| {
        matches!(e, TransportEvent::Connected { .. }).then_some(())
    })
    .await;

    // The raw peer never answers a Ping.
    let silent_since = Instant::now();
    let reason = next_event(&mut a.events, SOON, |e| match e {
        TransportEvent::Disconnected { peer, reason } => {
            (peer == silent.node_id()).then_some(reason)
        }
        _ => None,
    })
    .await;
    let idle = config().idle_timeout;
    assert!(reason.contains("idle"), "reason: {reason}");
    assert!(
        silent_since.elapsed() < idle + Duration::from_millis(600),
        "dropped after {:?}",
        silent_since.elapsed()
    );
    assert_eq!(
        raw.wait_closed().await,
        None,
        "an idle close sends no goodbye"
    );

    // A connection that never says Hello is closed at the handshake timeout.
    let mut mute = TcpStream::connect(a.handle.local_addr())
        .await
        .expect("connect");
    let started = Instant::now();
    let mut buf = vec![0u8; 1024];
    loop {
        let n = tokio::time::timeout(SOON, mute.read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
    }
    assert!(started.elapsed() < config().handshake_timeout + Duration::from_secs(1));
    a.handle.shutdown().await;
}

#[tokio::test]
async fn a_wrong_network_id_is_refused() {
    let a = start(config()).await;
    let b = start(Config {
        network_id: "other-net".to_owned(),
        ..config()
    })
    .await;
    let result = a.handle.dial(b.handle.local_addr()).await;
    assert!(
        matches!(
            result,
            Err(Error::NetworkMismatch { .. }
                | Error::Refused {
                    reason: GoodbyeReason::NetworkMismatch
                })
        ),
        "{result:?}"
    );
    assert!(result.is_err_and(|e| !e.is_transient()));
    wait_until("no peers", SOON, || {
        a.handle.peers().is_empty() && b.handle.peers().is_empty()
    })
    .await;

    // A raw peer of another network gets a clear Goodbye.
    let mut raw = RawPeer::connect(a.handle.local_addr()).await;
    raw.framed
        .send(RawPeer::hello(
            Identity::generate().node_id(),
            "other-net",
            1,
            [1; 32],
        ))
        .await
        .expect("send");
    assert_eq!(
        raw.wait_closed().await,
        Some(GoodbyeReason::NetworkMismatch)
    );
    a.handle.shutdown().await;
    b.handle.shutdown().await;
}

#[tokio::test]
async fn a_forged_identity_is_refused_and_recorded() {
    let a = start(config()).await;
    let victim = Identity::generate();
    let forger = Identity::generate();
    let claimed_listen_port = 4444;

    let mut raw = RawPeer::connect(a.handle.local_addr()).await;
    raw.framed
        .send(RawPeer::hello(
            victim.node_id(),
            NETWORK,
            claimed_listen_port,
            [9; 32],
        ))
        .await
        .expect("send");
    let Some(Message::Hello(theirs)) = raw.recv().await else {
        panic!("expected hello")
    };
    // Signed with the forger's key, not the victim's.
    let transcript = handshake_transcript(NETWORK, &victim.node_id(), &theirs.nonce);
    raw.framed
        .send(Message::HelloAck(HelloAck {
            signature: forger.sign(&transcript),
        }))
        .await
        .expect("send");
    assert_eq!(raw.wait_closed().await, Some(GoodbyeReason::Misbehaviour));

    assert!(a.handle.peers().is_empty());
    let listen_addr = SocketAddr::new(raw.local.ip(), claimed_listen_port);
    wait_until("misbehaviour recorded", SOON, || {
        misbehaviour_at(&a.store, listen_addr) == 1
    })
    .await;
    a.handle.shutdown().await;
}

#[tokio::test]
async fn oversize_and_garbage_frames_are_refused_and_recorded() {
    let mut a = start(Config {
        max_frame_len: 64 * 1024,
        ..config()
    })
    .await;
    let local = a.handle.local_addr();

    // Garbage before any handshake: blamed on the connection's address.
    let mut garbage = TcpStream::connect(local).await.expect("connect");
    let garbage_addr = garbage.local_addr().expect("local addr");
    garbage
        .write_all(&[0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
        .await
        .expect("write");
    wait_until("garbage recorded", SOON, || {
        misbehaviour_at(&a.store, garbage_addr) == 1
    })
    .await;

    // Before the handshake, a frame far below `max_frame_len` but far above any
    // handshake message is refused from its prefix: strangers cannot make us buffer.
    let mut big_hello = TcpStream::connect(local).await.expect("connect");
    let big_hello_addr = big_hello.local_addr().expect("local addr");
    big_hello
        .write_all(&(32u32 * 1024).to_be_bytes())
        .await
        .expect("write");
    wait_until("oversize hello recorded", SOON, || {
        misbehaviour_at(&a.store, big_hello_addr) == 1
    })
    .await;

    // An oversize frame after an honest handshake: blamed on the peer's listen address.
    let big = Identity::generate();
    let mut raw = RawPeer::handshake(&big, local, 5001).await;
    let mut frame = BytesMut::new();
    // Only the prefix: the transport must refuse before any payload arrives.
    frame.put_u32(10 * 1024 * 1024);
    raw.framed.get_mut().write_all(&frame).await.expect("write");
    assert_eq!(raw.wait_closed().await, Some(GoodbyeReason::Misbehaviour));
    let big_listen = SocketAddr::new(raw.local.ip(), 5001);
    wait_until("oversize recorded", SOON, || {
        misbehaviour_at(&a.store, big_listen) == 1
    })
    .await;

    // An undecodable payload in a well-formed frame, after a handshake.
    let bad = Identity::generate();
    let mut raw = RawPeer::handshake(&bad, local, 5002).await;
    raw.framed
        .get_mut()
        .write_all(&[0, 0, 0, 3, 5, 0xff, 0xff])
        .await
        .expect("write");
    assert_eq!(raw.wait_closed().await, Some(GoodbyeReason::Misbehaviour));
    let bad_listen = SocketAddr::new(raw.local.ip(), 5002);
    wait_until("garbage recorded", SOON, || {
        misbehaviour_at(&a.store, bad_listen) == 1
    })
    .await;

    // An unknown message type from a newer peer is ignored, not misbehaviour.
    let newer = Identity::generate();
    let mut raw = RawPeer::handshake(&newer, local, 5003).await;
    raw.framed
        .get_mut()
        .write_all(&[0, 0, 0, 2, 0x7f, 0])
        .await
        .expect("write");
    raw.framed.send(Message::GetPeers).await.expect("send");
    let got = next_event(&mut a.events, SOON, |e| match e {
        TransportEvent::Message { peer, message } => (peer == newer.node_id()).then_some(message),
        _ => None,
    })
    .await;
    assert_eq!(got, Message::GetPeers);
    assert!(a.handle.is_connected(&newer.node_id()));

    // Repeated misbehaviour bans: a banned address is refused.
    for _ in 0..3 {
        a.store.record_misbehaviour(big_listen, transport_now());
    }
    let mut raw = RawPeer::connect(local).await;
    raw.framed
        .send(RawPeer::hello(big.node_id(), NETWORK, 5001, [3; 32]))
        .await
        .expect("send");
    assert!(matches!(
        raw.wait_closed().await,
        Some(GoodbyeReason::Other(_))
    ));

    // Still serving honest peers.
    let b = start(config()).await;
    b.handle
        .dial(local)
        .await
        .expect("honest dial after all that");
    a.handle.shutdown().await;
    b.handle.shutdown().await;
}

fn transport_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[tokio::test]
async fn simultaneous_dials_resolve_to_exactly_one_connection() {
    for round in 0..5 {
        let a = start(config()).await;
        let b = start(config()).await;
        let (ra, rb) = tokio::join!(
            a.handle.dial(b.handle.local_addr()),
            b.handle.dial(a.handle.local_addr())
        );
        assert_eq!(ra.expect("a dials b"), b.handle.node_id());
        assert_eq!(rb.expect("b dials a"), a.handle.node_id());

        let lower_dialed = |h: &Handle, other: &Handle| {
            let peers = h.peers();
            // The surviving connection was dialled by the lower node id.
            peers.len() == 1 && peers[0].inbound == (other.node_id() < h.node_id())
        };
        wait_until("one connection, the same on both sides", SOON, || {
            lower_dialed(&a.handle, &b.handle) && lower_dialed(&b.handle, &a.handle)
        })
        .await;
        // The pair stays connected (heartbeats keep flowing over the survivor).
        let rtt_seen = |h: &Handle| h.peers().first().is_some_and(|p| p.rtt.is_some());
        wait_until("heartbeats on the survivor", SOON, || {
            rtt_seen(&a.handle) && rtt_seen(&b.handle)
        })
        .await;
        assert!(
            lower_dialed(&a.handle, &b.handle) && lower_dialed(&b.handle, &a.handle),
            "round {round}"
        );
        a.handle.shutdown().await;
        b.handle.shutdown().await;
    }
}

#[tokio::test]
async fn concurrent_dials_of_one_address_share_one_connection() {
    let a = start(config()).await;
    let mut b = start(config()).await;
    let b_addr = b.handle.local_addr();
    a.handle.add_peer_addr(b_addr, Source::Manual);
    let (r1, r2, r3) = tokio::join!(
        a.handle.dial(b_addr),
        a.handle.dial(b_addr),
        a.handle.dial(b_addr)
    );
    for result in [r1, r2, r3] {
        assert_eq!(result.expect("dial"), b.handle.node_id());
    }
    // A message sent after the dials arrives after every lifecycle event of the pair.
    a.handle
        .send(&b.handle.node_id(), &Message::GetPeers)
        .expect("send");
    let mut lifecycle = Vec::new();
    next_event(&mut b.events, SOON, |e| match e {
        TransportEvent::Message { .. } => Some(()),
        other => {
            lifecycle.push(other);
            None
        }
    })
    .await;
    assert_eq!(
        lifecycle.len(),
        1,
        "exactly one Connected, no churn: {lifecycle:?}"
    );
    assert_eq!(a.handle.peers().len(), 1);
    a.handle.shutdown().await;
    b.handle.shutdown().await;
}

#[tokio::test]
async fn max_peers_is_respected() {
    let a = start(Config {
        max_peers: 2,
        ..config()
    })
    .await;
    let mut others = Vec::new();
    for _ in 0..4 {
        others.push(start(config()).await);
    }
    let mut refused = 0;
    for other in &others {
        match other.handle.dial(a.handle.local_addr()).await {
            Ok(_) => {}
            Err(Error::Refused {
                reason: GoodbyeReason::TooManyPeers,
            }) => refused += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(refused, 2);
    assert_eq!(a.handle.peers().len(), 2);
    // Dialling out is capped too.
    assert!(matches!(
        a.handle.dial(others[3].handle.local_addr()).await,
        Err(Error::TooManyPeers)
    ));
    a.handle.shutdown().await;
    for other in &others {
        other.handle.shutdown().await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_peer_that_does_not_read_is_disconnected_when_its_queue_fills() {
    let mut a = start(Config {
        outbound_queue: 8,
        ..config()
    })
    .await;
    let lazy = Identity::generate();
    let _raw = RawPeer::handshake(&lazy, a.handle.local_addr(), 1).await;
    next_event(&mut a.events, SOON, |e| {
        matches!(e, TransportEvent::Connected { .. }).then_some(())
    })
    .await;

    // Nothing else runs on this thread while we send, so the queue fills.
    let message = Message::GetPeers;
    let mut result = Ok(());
    for _ in 0..100 {
        result = a.handle.send(&lazy.node_id(), &message);
        if result.is_err() {
            break;
        }
    }
    assert!(
        matches!(result, Err(Error::QueueFull(peer)) if peer == lazy.node_id()),
        "{result:?}"
    );
    let reason = next_event(&mut a.events, SOON, |e| match e {
        TransportEvent::Disconnected { reason, .. } => Some(reason),
        _ => None,
    })
    .await;
    assert!(reason.contains("queue full"), "reason: {reason}");
    a.handle.shutdown().await;
}

#[tokio::test]
async fn a_node_that_stops_draining_events_keeps_its_connections() {
    let a = start(config()).await;
    let mut b = start(Config {
        event_queue: 2,
        ..config()
    })
    .await;
    let b_id = a.handle.dial(b.handle.local_addr()).await.expect("dial");
    for lamport in 0..20 {
        let digest = Message::Digest {
            lamport,
            settled_events: 0,
            digest: [0; 32],
        };
        a.handle.send(&b_id, &digest).expect("send");
    }
    // b's reader now waits for room in its event channel. Its writer keeps sending
    // heartbeats, so neither side may time the other out. This checks that nothing
    // happens during a window, which only a fixed wait can show.
    tokio::time::sleep(config().idle_timeout * 3).await;
    assert!(a.handle.is_connected(&b_id) && b.handle.is_connected(&a.handle.node_id()));

    // Once drained, every message arrives, in order.
    let mut lamports = Vec::new();
    while lamports.len() < 20 {
        let lamport = next_event(&mut b.events, SOON, |e| match e {
            TransportEvent::Message {
                message: Message::Digest { lamport, .. },
                ..
            } => Some(lamport),
            TransportEvent::Disconnected { reason, .. } => panic!("disconnected: {reason}"),
            _ => None,
        })
        .await;
        lamports.push(lamport);
    }
    assert_eq!(lamports, (0..20).collect::<Vec<_>>());
    a.handle.shutdown().await;
    b.handle.shutdown().await;
}

#[tokio::test]
async fn memory_network_cut_link_drops_then_reconnects() {
    let network = MemoryNetwork::new();
    let mem = |ip: &str| Config {
        listen: format!("{ip}:0").parse().expect("address"),
        ..config()
    };
    let mut a = start_with(
        mem("10.0.0.1"),
        Arc::new(Identity::generate()),
        network.clone(),
    )
    .await;
    let mut b = start_with(
        mem("10.0.0.2"),
        Arc::new(Identity::generate()),
        network.clone(),
    )
    .await;
    let (a_addr, b_addr) = (a.handle.local_addr(), b.handle.local_addr());
    a.handle.add_peer_addr(b_addr, Source::Manual);
    wait_until("connected", SOON, || {
        a.handle.peers().len() == 1 && b.handle.peers().len() == 1
    })
    .await;
    next_event(&mut b.events, SOON, |e| {
        matches!(e, TransportEvent::Connected { .. }).then_some(())
    })
    .await;

    network.set_blocked(a_addr, b_addr, true);
    let cut = Instant::now();
    for events in [&mut a.events, &mut b.events] {
        let reason = next_event(events, SOON, |e| match e {
            TransportEvent::Disconnected { reason, .. } => Some(reason),
            _ => None,
        })
        .await;
        assert!(reason.contains("idle"), "reason: {reason}");
    }
    assert!(cut.elapsed() < config().idle_timeout + Duration::from_millis(600));

    network.set_blocked(a_addr, b_addr, false);
    wait_until("reconnected after the heal", SOON, || {
        a.handle.peers().len() == 1 && b.handle.peers().len() == 1
    })
    .await;
    a.handle.shutdown().await;
    b.handle.shutdown().await;
}

#[tokio::test]
async fn memory_network_caps_inbound_connections_per_ip() {
    let network = MemoryNetwork::new();
    let mem = |ip: &str| Config {
        listen: format!("{ip}:0").parse().expect("address"),
        ..config()
    };
    let a = start_with(
        Config {
            max_inbound_per_ip: 1,
            ..mem("10.0.0.1")
        },
        Arc::new(Identity::generate()),
        network.clone(),
    )
    .await;
    let same_ip_1 = start_with(
        mem("10.0.0.2"),
        Arc::new(Identity::generate()),
        network.clone(),
    )
    .await;
    let same_ip_2 = start_with(
        mem("10.0.0.2"),
        Arc::new(Identity::generate()),
        network.clone(),
    )
    .await;
    let other_ip = start_with(
        mem("10.0.0.3"),
        Arc::new(Identity::generate()),
        network.clone(),
    )
    .await;

    same_ip_1
        .handle
        .dial(a.handle.local_addr())
        .await
        .expect("first from 10.0.0.2");
    let second = same_ip_2.handle.dial(a.handle.local_addr()).await;
    assert!(
        matches!(
            second,
            Err(Error::Refused {
                reason: GoodbyeReason::TooManyPeers
            })
        ),
        "{second:?}"
    );
    other_ip
        .handle
        .dial(a.handle.local_addr())
        .await
        .expect("first from 10.0.0.3");
    assert_eq!(a.handle.peers().len(), 2);
    for node in [&a, &same_ip_1, &same_ip_2, &other_ip] {
        node.handle.shutdown().await;
    }
}

#[tokio::test]
async fn unusable_configs_are_refused_at_start() {
    let store: Arc<MemoryPeerStore> = Arc::new(MemoryPeerStore::new(10));
    let bad = [
        Config {
            network_id: "n".repeat(1000),
            ..config()
        },
        Config {
            max_peers: 0,
            ..config()
        },
        Config {
            idle_timeout: config().heartbeat_interval,
            ..config()
        },
    ];
    for config in bad {
        let started = Transport::start(
            config,
            Arc::new(Identity::generate()),
            TcpNetwork,
            store.clone(),
        )
        .await;
        assert!(matches!(started, Err(Error::InvalidConfig(_))));
    }
}

#[tokio::test]
async fn dialling_ourselves_is_detected_and_never_retried() {
    let a = start(config()).await;
    let own = a.handle.local_addr();
    let result = a.handle.dial(own).await;
    assert!(
        matches!(result, Err(Error::SelfConnection { .. })),
        "{result:?}"
    );
    a.handle.add_peer_addr(own, Source::Exchange);
    assert!(a.handle.known_addrs().is_empty());
    assert!(a.handle.peers().is_empty());
    a.handle.shutdown().await;
}

#[tokio::test]
async fn a_dead_address_opens_its_circuit_breaker() {
    // A port nothing listens on: bind, note the port, close.
    let dead = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        listener.local_addr().expect("addr")
    };
    let a = start(Config {
        breaker_threshold: 3,
        reconnect_initial: Duration::from_millis(10),
        reconnect_max: Duration::from_secs(60),
        ..config()
    })
    .await;
    a.handle.add_peer_addr(dead, Source::Mdns);
    wait_until("breaker open", SOON, || {
        a.handle
            .known_addrs()
            .iter()
            .any(|k| matches!(k.breaker, transport::BreakerState::Open { .. }))
    })
    .await;
    assert_eq!(a.handle.known_addrs()[0].failures, 3, "no dial while open");
    assert_eq!(a.store.get(dead).map(|r| r.failures), Some(3));
    a.handle.shutdown().await;
}

#[tokio::test]
async fn a_banned_ip_cannot_come_back_from_another_port() {
    let network = MemoryNetwork::new();
    let mem = |ip: &str| Config {
        listen: format!("{ip}:0").parse().expect("address"),
        ..config()
    };
    let victim = start_with(
        mem("10.0.0.1"),
        Arc::new(Identity::generate()),
        network.clone(),
    )
    .await;
    let victim_addr = victim.handle.local_addr();

    // Each offence comes from a fresh identity, listen port and source port on
    // 10.0.0.2, so only the IP ties them together.
    for offence in 1..=peer_storage::BAN_THRESHOLD {
        let attacker = start_with(
            mem("10.0.0.2"),
            Arc::new(Identity::generate()),
            network.clone(),
        )
        .await;
        let id = attacker.identity.node_id();
        attacker
            .handle
            .dial(victim_addr)
            .await
            .unwrap_or_else(|e| panic!("offence {offence}: not yet banned: {e}"));
        victim.handle.report_misbehaviour(&id, "test offence");
        wait_until("the offender dropped", SOON, || {
            !victim.handle.is_connected(&id)
        })
        .await;
        attacker.handle.shutdown().await;
    }
    let whole_ip = peer_storage::ip_wide("10.0.0.2".parse().expect("ip"));
    assert!(victim.store.is_banned(whole_ip, transport_now()));

    // A new identity on a new port of the banned IP is refused at accept.
    let returning = start_with(
        mem("10.0.0.2"),
        Arc::new(Identity::generate()),
        network.clone(),
    )
    .await;
    let result = returning.handle.dial(victim_addr).await;
    assert!(result.is_err(), "a banned ip got in: {result:?}");
    assert!(!victim.handle.is_connected(&returning.identity.node_id()));
    assert!(victim.handle.peers().is_empty());
    // The victim does not dial the banned IP either.
    let dialled = victim.handle.dial(returning.handle.local_addr()).await;
    assert!(matches!(dialled, Err(Error::Banned { .. })), "{dialled:?}");

    // Another IP is still welcome.
    let honest = start_with(
        mem("10.0.0.3"),
        Arc::new(Identity::generate()),
        network.clone(),
    )
    .await;
    honest.handle.dial(victim_addr).await.expect("honest peer");
    for node in [&victim, &returning, &honest] {
        node.handle.shutdown().await;
    }
}

#[tokio::test]
async fn a_peer_back_from_a_silent_crash_replaces_its_stale_connection_at_once() {
    let network = MemoryNetwork::new();
    // An idle timeout far beyond the deadline below: only replacing the stale
    // connection can let the restarted peer in in time.
    let mem = |ip: &str| Config {
        listen: format!("{ip}:0").parse().expect("address"),
        idle_timeout: Duration::from_secs(30),
        ..config()
    };
    let (low, high) = {
        let (x, y) = (Identity::generate(), Identity::generate());
        if x.node_id() < y.node_id() {
            (Arc::new(x), Arc::new(y))
        } else {
            (Arc::new(y), Arc::new(x))
        }
    };
    let low_node = start_with(mem("10.0.0.1"), low, network.clone()).await;
    let old_high = start_with(mem("10.0.0.2"), Arc::clone(&high), network.clone()).await;
    let (low_addr, old_high_addr) = (low_node.handle.local_addr(), old_high.handle.local_addr());
    // The lower id dialled: a redial by the higher one loses the simultaneous-dial rule.
    low_node.handle.dial(old_high_addr).await.expect("dial");
    wait_until("heartbeats flowing", SOON, || {
        low_node
            .handle
            .peers()
            .first()
            .is_some_and(|p| p.rtt.is_some())
    })
    .await;

    // The high node goes silent without closing anything, and comes back as a new
    // process with the same key on another port.
    network.set_address_blocked(old_high_addr, true);
    let high_node = start_with(mem("10.0.0.2"), Arc::clone(&high), network.clone()).await;
    high_node.handle.add_peer_addr(low_addr, Source::Bootstrap);
    let connected = |node: &Node, other: &Identity| {
        node.handle
            .peers()
            .iter()
            .any(|p| p.node_id == other.node_id() && p.rtt.is_some())
    };
    let came_back = Instant::now();
    wait_until("the restarted peer connected on both sides", SOON, || {
        let fresh = low_node
            .handle
            .peers()
            .first()
            .is_some_and(|p| p.listen_addr == high_node.handle.local_addr());
        fresh && connected(&high_node, &low_node.identity) && connected(&low_node, &high)
    })
    .await;
    assert!(
        came_back.elapsed() < Duration::from_secs(2),
        "took {:?}",
        came_back.elapsed()
    );
    for node in [&low_node, &high_node, &old_high] {
        node.handle.shutdown().await;
    }
}

#[tokio::test]
async fn addresses_from_peers_cannot_grow_the_known_set_without_bound() {
    let network = MemoryNetwork::new();
    let a = start_with(
        Config {
            listen: "10.0.0.1:0".parse().expect("address"),
            max_known_addrs: 3,
            reconnect_initial: Duration::from_millis(10),
            ..config()
        },
        Arc::new(Identity::generate()),
        network,
    )
    .await;
    // Nothing listens on these: every dial fails at once.
    let dead = |i: u16| SocketAddr::from(([10, 9, 0, 1], 1000 + i));
    a.handle.add_peer_addr(dead(0), Source::Bootstrap);
    a.handle.add_peer_addr(dead(1), Source::Exchange);
    a.handle.add_peer_addr(dead(2), Source::Exchange);
    // A full set of addresses that were never tried keeps them: the newcomer waits.
    // (No await since the first add: on this single-threaded runtime no dial has run.)
    a.handle.add_peer_addr(dead(3), Source::Exchange);
    assert_eq!(a.handle.known_addrs().len(), 3);
    assert!(a.handle.known_addrs().iter().all(|k| k.addr != dead(3)));

    wait_until("every known address failed once", SOON, || {
        a.handle.known_addrs().iter().all(|k| k.failures > 0)
    })
    .await;
    for i in 10..60 {
        a.handle.add_peer_addr(dead(i), Source::Exchange);
        let known = a.handle.known_addrs();
        assert!(known.len() <= 3, "{} known addresses", known.len());
        assert!(
            known.iter().any(|k| k.addr == dead(0)),
            "the bootstrap address is never evicted"
        );
    }
    // Port 0 is never an address to dial.
    a.handle
        .add_peer_addr(SocketAddr::from(([10, 9, 0, 2], 0)), Source::Exchange);
    assert!(a.handle.known_addrs().iter().all(|k| k.addr.port() != 0));
    a.handle.shutdown().await;
}
