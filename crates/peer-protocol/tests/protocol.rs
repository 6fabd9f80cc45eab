//! The peer protocol's specification as tests: every message round-trips, hostile bytes never
//! panic the decoder, signatures cover every field, and limits hold on the wire.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use orderbook_core::{OrderType, Side, TimeInForce};
use peer_protocol::{
    Codec, Error, Event, EventBody, GoodbyeReason, Hello, HelloAck, Identity, KNOWN_MESSAGE_TAGS,
    MAX_EVENTS_PER_BATCH, MAX_FRAME_LEN, MAX_PEERS_PER_MESSAGE, Message, NodeId, PeerAddress,
    PlaceOrder, Signature, SignedBatch, SignedFrontier, decode, encode, handshake_transcript,
    join_transcript, verify, vote_transcript,
};
use proptest::prelude::*;
use rust_decimal::Decimal;
use tokio_util::codec::{Decoder, Encoder, FramedRead, FramedWrite};
use vector_clock::VectorClock;

// ---------------------------------------------------------------------------------------------
// Strategies

fn node_id() -> impl Strategy<Value = NodeId> {
    any::<[u8; 32]>().prop_map(NodeId::from_bytes)
}

fn signature() -> impl Strategy<Value = Signature> {
    (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| {
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&a);
        bytes[32..].copy_from_slice(&b);
        Signature::from_bytes(bytes)
    })
}

/// Strings of up to `max` bytes, including multi-byte characters.
fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..=max / 4)
        .prop_map(|chars| chars.into_iter().collect())
}

fn decimal() -> impl Strategy<Value = Decimal> {
    (any::<i64>(), 0u32..=12).prop_map(|(mantissa, scale)| Decimal::new(mantissa, scale))
}

fn place_order() -> impl Strategy<Value = PlaceOrder> {
    (
        proptest::option::of(text(64)),
        text(32),
        prop_oneof![Just(Side::Buy), Just(Side::Sell)],
        prop_oneof![Just(OrderType::Limit), Just(OrderType::Market)],
        proptest::option::of(decimal()),
        decimal(),
        prop_oneof![
            Just(TimeInForce::Gtc),
            Just(TimeInForce::Ioc),
            Just(TimeInForce::Fok),
            Just(TimeInForce::PostOnly)
        ],
    )
        .prop_map(
            |(client_order_id, market, side, order_type, price, quantity, time_in_force)| {
                PlaceOrder {
                    client_order_id,
                    market,
                    side,
                    order_type,
                    price,
                    quantity,
                    time_in_force,
                }
            },
        )
}

fn event_body() -> impl Strategy<Value = EventBody> {
    prop_oneof![
        (text(64), any::<[u8; 32]>()).prop_map(|(network_id, market_hash)| EventBody::Genesis {
            network_id,
            market_hash
        }),
        place_order().prop_map(EventBody::Place),
        any::<u64>().prop_map(|order_seq| EventBody::Cancel { order_seq }),
        (node_id(), any::<u64>())
            .prop_map(|(member, first_seq)| EventBody::Join { member, first_seq }),
        Just(EventBody::Leave),
        (
            node_id(),
            any::<u64>(),
            any::<u64>(),
            any::<u32>(),
            proptest::collection::vec((node_id(), signature()), 0..4)
        )
            .prop_map(|(target, last_seq, epoch, round, votes)| EventBody::Evict {
                target,
                last_seq,
                epoch,
                round,
                votes
            }),
    ]
}

/// Well-formed consecutive events of one origin: `seq` from `first_seq`, increasing `lamport`.
fn events_of(origin: NodeId, max: usize) -> impl Strategy<Value = Vec<Event>> {
    (
        1u64..1_000_000,
        1u64..1_000_000,
        proptest::collection::vec((1u64..1000, event_body()), 1..=max),
    )
        .prop_map(move |(first_seq, first_lamport, steps)| {
            let mut lamport = first_lamport;
            steps
                .into_iter()
                .enumerate()
                .map(|(i, (step, body))| {
                    let event = Event {
                        origin,
                        seq: first_seq + i as u64,
                        lamport,
                        body,
                    };
                    lamport += step;
                    event
                })
                .collect()
        })
}

/// Batches with arbitrary (unverified) signatures: the codec does not check them.
fn batch() -> impl Strategy<Value = SignedBatch> {
    (node_id(), signature())
        .prop_flat_map(|(origin, sig)| {
            events_of(origin, 5).prop_map(move |events| SignedBatch::from_parts(events, sig))
        })
        .prop_map(|batch| batch.expect("1 to 5 events"))
}

fn clock() -> impl Strategy<Value = VectorClock<NodeId>> {
    proptest::collection::vec((node_id(), any::<u64>()), 0..6).prop_map(|entries| {
        let mut clock = VectorClock::new();
        for (node, seq) in entries {
            clock.set(node, seq);
        }
        clock
    })
}

/// Addresses as peer exchange carries them: an IPv6 scope id or flow label is meaningful only
/// on the host that has it, and serde does not carry it.
fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    any::<SocketAddr>().prop_map(|addr| SocketAddr::new(addr.ip(), addr.port()))
}

fn goodbye_reason() -> impl Strategy<Value = GoodbyeReason> {
    prop_oneof![
        Just(GoodbyeReason::Shutdown),
        Just(GoodbyeReason::NetworkMismatch),
        Just(GoodbyeReason::MarketMismatch),
        Just(GoodbyeReason::SelfConnection),
        Just(GoodbyeReason::DuplicateConnection),
        Just(GoodbyeReason::Misbehaviour),
        Just(GoodbyeReason::TooManyPeers),
        Just(GoodbyeReason::Evicted),
        text(256).prop_map(GoodbyeReason::Other),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            any::<u16>(),
            text(64),
            any::<[u8; 32]>(),
            node_id(),
            any::<u16>(),
            any::<[u8; 32]>(),
            text(128)
        )
            .prop_map(
                |(version, network_id, market_hash, node_id, listen_port, nonce, agent)| {
                    Message::Hello(Hello {
                        version,
                        network_id,
                        market_hash,
                        node_id,
                        listen_port,
                        nonce,
                        agent,
                    })
                }
            ),
        signature().prop_map(|signature| Message::HelloAck(HelloAck { signature })),
        any::<u64>().prop_map(|nonce| Message::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Message::Pong { nonce }),
        Just(Message::GetPeers),
        proptest::collection::vec(
            (socket_addr(), proptest::option::of(node_id()))
                .prop_map(|(addr, node_id)| PeerAddress { addr, node_id }),
            0..=MAX_PEERS_PER_MESSAGE
        )
        .prop_map(Message::Peers),
        batch().prop_map(Message::Batch),
        (
            node_id(),
            any::<u64>(),
            any::<u64>(),
            proptest::collection::vec((node_id(), any::<u64>()), 0..4),
            signature()
        )
            .prop_map(|(origin, seq, lamport, acks, signature)| Message::Frontier(
                SignedFrontier {
                    origin,
                    seq,
                    lamport,
                    acks,
                    signature
                }
            )),
        clock().prop_map(|clock| Message::SyncRequest { clock }),
        (proptest::collection::vec(batch(), 0..3), any::<bool>())
            .prop_map(|(batches, done)| Message::SyncResponse { batches, done }),
        (any::<u64>(), any::<u64>(), any::<[u8; 32]>()).prop_map(
            |(lamport, settled_events, digest)| Message::Digest {
                lamport,
                settled_events,
                digest
            }
        ),
        (
            proptest::option::of(any::<[u8; 32]>()),
            any::<bool>(),
            proptest::collection::vec(node_id(), 0..5),
            clock()
        )
            .prop_map(
                |(genesis, has_orders, members, clock)| Message::NetworkInfo {
                    genesis,
                    has_orders,
                    members,
                    clock
                }
            ),
        (node_id(), signature())
            .prop_map(|(node_id, signature)| Message::JoinRequest { node_id, signature }),
        (
            (node_id(), any::<u64>()),
            node_id(),
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            signature()
        )
            .prop_map(
                |((voter, voter_epoch), target, epoch, round, last_seq, signature)| Message::Vote {
                    voter,
                    voter_epoch,
                    target,
                    epoch,
                    round,
                    last_seq,
                    signature
                }
            ),
        goodbye_reason().prop_map(|reason| Message::Goodbye { reason }),
        proptest::collection::vec(node_id(), 0..=MAX_PEERS_PER_MESSAGE)
            .prop_map(|peers| Message::Neighbours { peers }),
    ]
}

/// A field of a signed batch to alter.
#[derive(Clone, Debug)]
enum Tamper {
    Seq(usize, u64),
    Lamport(usize, u64),
    Origin(usize, NodeId),
    Body(usize, EventBody),
    SignatureBit(usize),
}

fn tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        (any::<usize>(), 1u64..10).prop_map(|(i, d)| Tamper::Seq(i, d)),
        (any::<usize>(), 1u64..10).prop_map(|(i, d)| Tamper::Lamport(i, d)),
        (any::<usize>(), node_id()).prop_map(|(i, n)| Tamper::Origin(i, n)),
        (any::<usize>(), event_body()).prop_map(|(i, b)| Tamper::Body(i, b)),
        (0usize..512).prop_map(Tamper::SignatureBit),
    ]
}

fn alice() -> Identity {
    Identity::from_secret_bytes(&[1; 32])
}

fn bob() -> Identity {
    Identity::from_secret_bytes(&[2; 32])
}

fn order_event(origin: NodeId, seq: u64, lamport: u64) -> Event {
    Event {
        origin,
        seq,
        lamport,
        body: EventBody::Place(PlaceOrder {
            client_order_id: Some(format!("client-{seq}")),
            market: "BTC-USD".into(),
            side: if seq.is_multiple_of(2) {
                Side::Buy
            } else {
                Side::Sell
            },
            order_type: OrderType::Limit,
            price: Some(Decimal::new(10_050, 2)),
            quantity: Decimal::new(2, 0),
            time_in_force: TimeInForce::Gtc,
        }),
    }
}

fn frame(payload: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(payload);
    buf
}

// ---------------------------------------------------------------------------------------------
// Round trips and hostile input

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_message_round_trips_through_encode_and_decode(message in message()) {
        let payload = encode(&message).unwrap();
        prop_assert_eq!(payload[0] as u32, message.tag());
        prop_assert_eq!(decode(&payload).unwrap(), message);
    }

    #[test]
    fn every_message_round_trips_through_the_codec_in_any_chunking(
        messages in proptest::collection::vec(message(), 1..4),
        chunk in 1usize..64,
    ) {
        let mut codec = Codec::default();
        let mut wire = BytesMut::new();
        for message in &messages {
            codec.encode(message, &mut wire).unwrap();
        }
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for piece in wire.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(message) = codec.decode(&mut buf).unwrap() {
                decoded.push(message);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoded, messages);
    }

    #[test]
    fn arbitrary_bytes_never_panic_decode(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_codec(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        chunk in 1usize..32,
    ) {
        let mut codec = Codec::new(256);
        let mut buf = BytesMut::new();
        'feed: for piece in bytes.chunks(chunk) {
            buf.extend_from_slice(piece);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
        }
    }

    #[test]
    fn mutated_valid_payloads_never_panic_decode(
        message in message(),
        index in any::<usize>(),
        bit in 0u8..8,
    ) {
        let mut payload = encode(&message).unwrap();
        let i = index % payload.len();
        payload[i] ^= 1 << bit;
        // Whatever the flip did, decoding returns instead of panicking.
        let _ = decode(&payload);
    }

    #[test]
    fn signed_batches_verify_and_survive_the_wire(events in events_of(alice().node_id(), 8)) {
        let batch = SignedBatch::sign(&alice(), events.clone()).unwrap();
        let Message::Batch(received) = decode(&encode(&Message::Batch(batch)).unwrap()).unwrap()
        else { unreachable!() };
        let verified = received.verify().unwrap();
        prop_assert_eq!(verified.events(), &events[..]);
        prop_assert_eq!(verified.first_seq(), events[0].seq);
        prop_assert_eq!(verified.last_seq(), events[events.len() - 1].seq);
    }

    #[test]
    fn tampering_any_field_of_a_signed_batch_fails_verification(
        events in events_of(alice().node_id(), 6),
        tamper in tamper(),
    ) {
        let batch = SignedBatch::sign(&alice(), events.clone()).unwrap();
        let mut events = batch.events().to_vec();
        let mut sig = *batch.signature().as_bytes();
        let n = events.len();
        match tamper {
            Tamper::Seq(i, d) => events[i % n].seq = events[i % n].seq.wrapping_add(d),
            Tamper::Lamport(i, d) => events[i % n].lamport = events[i % n].lamport.wrapping_add(d),
            Tamper::Origin(i, node) => {
                prop_assume!(node != alice().node_id());
                events[i % n].origin = node;
            }
            Tamper::Body(i, body) => {
                prop_assume!(body != events[i % n].body);
                events[i % n].body = body;
            }
            Tamper::SignatureBit(bit) => sig[bit / 8] ^= 1 << (bit % 8),
        }
        let tampered = SignedBatch::from_parts(events, Signature::from_bytes(sig)).unwrap();
        prop_assert!(tampered.verify().is_err());
    }

    #[test]
    fn flipping_any_bit_of_an_encoded_signed_batch_never_yields_a_different_verified_batch(
        events in events_of(alice().node_id(), 3),
        index in any::<usize>(),
        bit in 0u8..8,
    ) {
        let original = Message::Batch(SignedBatch::sign(&alice(), events).unwrap());
        let mut payload = encode(&original).unwrap();
        let i = index % payload.len();
        payload[i] ^= 1 << bit;
        if let Ok(decoded) = decode(&payload) {
            let Message::Batch(batch) = &decoded else {
                // The tag changed: another message kind, which carries no trusted events.
                return Ok(());
            };
            prop_assert!(decoded == original || batch.clone().verify().is_err());
        }
    }

    #[test]
    fn tampering_any_field_of_a_signed_frontier_fails_verification(
        seq in any::<u64>(),
        lamport in any::<u64>(),
        ack in any::<u64>(),
        which in 0usize..7,
        delta in 1u64..1000,
        bit in 0usize..512,
    ) {
        let acks = vec![(bob().node_id(), ack), (alice().node_id(), seq)];
        let frontier = SignedFrontier::sign_with_acks(&alice(), seq, lamport, acks).unwrap();
        let verified = frontier.clone().verify().unwrap();
        prop_assert_eq!((verified.origin(), verified.seq(), verified.lamport()), (alice().node_id(), seq, lamport));
        // Signing sorts the acks by node id.
        prop_assert!(verified.acks().windows(2).all(|w| w[0].0 < w[1].0));
        prop_assert_eq!(verified.acks().len(), 2);
        let mut tampered = frontier;
        match which {
            0 => tampered.seq = seq.wrapping_add(delta),
            1 => tampered.lamport = lamport.wrapping_add(delta),
            2 => tampered.origin = bob().node_id(),
            3 => tampered.acks[0].1 = tampered.acks[0].1.wrapping_add(delta),
            4 => {
                tampered.acks.pop();
            }
            5 => tampered.acks.clear(),
            _ => {
                let mut sig = *tampered.signature.as_bytes();
                sig[bit / 8] ^= 1 << (bit % 8);
                tampered.signature = Signature::from_bytes(sig);
            }
        }
        prop_assert!(matches!(tampered.verify(), Err(Error::BadSignature)));
    }
}

// ---------------------------------------------------------------------------------------------
// Wire format

#[test]
fn wire_format_is_stable() {
    // Changing these bytes breaks compatibility with deployed nodes: append variants instead.
    assert_eq!(encode(&Message::Ping { nonce: 7 }).unwrap(), [2, 7]);
    assert_eq!(encode(&Message::GetPeers).unwrap(), [4]);
    assert_eq!(
        encode(&Message::Goodbye {
            reason: GoodbyeReason::Shutdown
        })
        .unwrap(),
        [14, 0]
    );
    assert_eq!(
        Codec::encode_frame(&Message::Pong { nonce: 300 }).unwrap(),
        Bytes::from_static(&[0, 0, 0, 3, 3, 0xac, 0x02])
    );
}

#[test]
fn the_last_known_tag_is_one_below_known_message_tags() {
    let neighbours = Message::Neighbours {
        peers: vec![alice().node_id()],
    };
    assert_eq!(neighbours.tag(), KNOWN_MESSAGE_TAGS - 1);
    assert_eq!(
        encode(&neighbours).unwrap()[0] as u32,
        KNOWN_MESSAGE_TAGS - 1
    );
    assert_eq!(neighbours.kind(), "neighbours");
}

#[test]
fn neighbours_are_appended_after_goodbye_and_round_trip() {
    // Appended, so a version-1 peer that predates it skips it as an unknown message.
    let empty = Message::Neighbours { peers: vec![] };
    assert_eq!(encode(&empty).unwrap(), [15, 0]);
    let two = Message::Neighbours {
        peers: vec![alice().node_id(), bob().node_id()],
    };
    let bytes = encode(&two).unwrap();
    assert_eq!(bytes.len(), 2 + 2 * 32);
    assert_eq!(decode(&bytes).unwrap(), two);
}

#[test]
fn unknown_tags_are_reported_as_unknown_messages() {
    for (bytes, tag) in [
        (vec![16u8], 16u32),
        (vec![16, 1, 2, 3], 16),
        (vec![0x80, 0x01], 128),
        (vec![0xff, 0xff, 0xff, 0xff, 0x0f], u32::MAX),
    ] {
        let err = decode(&bytes).unwrap_err();
        assert!(
            matches!(err, Error::UnknownMessage { tag: t } if t == tag),
            "{bytes:?}: {err}"
        );
        assert!(!err.is_misbehaviour());
    }
    // A tag that is not a valid varint u32 is a decode failure, not an unknown message.
    for bytes in [vec![], vec![0x80], vec![0xff, 0xff, 0xff, 0xff, 0x1f]] {
        let err = decode(&bytes).unwrap_err();
        assert!(matches!(err, Error::Decode(_)), "{bytes:?}: {err}");
        assert!(err.is_misbehaviour());
    }
}

#[test]
fn the_codec_skips_unknown_messages_and_keeps_the_stream_in_sync() {
    let mut codec = Codec::default();
    let mut buf = frame(&[200, 1, 0x42, 7]); // tag 200 from a future version
    buf.extend_from_slice(&frame(&encode(&Message::Ping { nonce: 9 }).unwrap()));
    assert_eq!(
        codec.decode(&mut buf).unwrap(),
        Some(Message::Ping { nonce: 9 })
    );
    assert_eq!(codec.skipped_unknown(), 1);
    assert!(buf.is_empty());
}

#[test]
fn trailing_bytes_are_refused() {
    let mut payload = encode(&Message::Ping { nonce: 1 }).unwrap();
    payload.push(0);
    assert!(matches!(decode(&payload), Err(Error::TrailingBytes(1))));
}

#[test]
fn oversize_frames_are_refused_from_the_prefix_alone() {
    let mut codec = Codec::new(1024);
    let mut buf = BytesMut::with_capacity(8);
    buf.extend_from_slice(&1025u32.to_be_bytes());
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(matches!(
        err,
        Error::FrameTooLarge {
            len: 1025,
            max: 1024
        }
    ));
    assert!(err.is_misbehaviour());
    assert!(
        buf.capacity() < 1024,
        "nothing was reserved for the claimed frame"
    );

    let mut codec = Codec::default();
    let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
    assert!(matches!(
        codec.decode(&mut buf),
        Err(Error::FrameTooLarge {
            max: MAX_FRAME_LEN,
            ..
        })
    ));

    // An exactly maximal frame still waits for its payload, without reserving it up front.
    let mut codec = Codec::new(1024);
    let mut buf = BytesMut::with_capacity(8);
    buf.extend_from_slice(&1024u32.to_be_bytes());
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert!(buf.capacity() < 1024);
}

#[test]
fn the_encoder_refuses_frames_the_peer_would_refuse() {
    let mut codec = Codec::new(16);
    let hello = Message::Goodbye {
        reason: GoodbyeReason::Other("x".repeat(100)),
    };
    let mut buf = BytesMut::new();
    assert!(matches!(
        codec.encode(&hello, &mut buf),
        Err(Error::FrameTooLarge { max: 16, .. })
    ));
    assert!(buf.is_empty());
}

#[test]
fn encode_frame_output_is_written_verbatim_by_the_bytes_encoder() {
    let message = Message::Frontier(SignedFrontier::sign(&alice(), 3, 9));
    let frame = Codec::encode_frame(&message).unwrap();
    let mut codec = Codec::default();
    let mut buf = BytesMut::new();
    codec.encode(frame.clone(), &mut buf).unwrap();
    codec.encode(frame.clone(), &mut buf).unwrap();
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(message.clone()));
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(message));
    assert!(matches!(
        codec.encode(Bytes::from_static(&[0, 0, 0, 5, 1]), &mut buf),
        Err(Error::InvalidMessage(_))
    ));
}

#[tokio::test]
async fn framed_streams_carry_messages_both_ways() {
    let (client, server) = tokio::io::duplex(64);
    let mut writer = FramedWrite::new(client, Codec::default());
    let mut reader = FramedRead::new(server, Codec::default());
    let batch = SignedBatch::sign(
        &alice(),
        (1..=40)
            .map(|seq| order_event(alice().node_id(), seq, seq * 2))
            .collect(),
    )
    .unwrap();
    let sent = vec![
        Message::Ping { nonce: 1 },
        Message::Batch(batch),
        Message::Goodbye {
            reason: GoodbyeReason::Shutdown,
        },
    ];
    let to_send = sent.clone();
    let writing = tokio::spawn(async move {
        for message in to_send {
            writer.send(message).await?;
        }
        Ok::<_, Error>(())
    });
    let mut received = Vec::new();
    while received.len() < sent.len() {
        match reader.next().await {
            Some(message) => received.push(message.unwrap()),
            None => break,
        }
    }
    writing.await.unwrap().unwrap();
    assert_eq!(received, sent);
}

// ---------------------------------------------------------------------------------------------
// Limits

#[test]
fn lists_and_strings_beyond_their_limits_are_refused_on_both_sides() {
    let addr: SocketAddr = "127.0.0.1:3000".parse().unwrap();
    let too_many_peers = Message::Peers(vec![
        PeerAddress {
            addr,
            node_id: None
        };
        MAX_PEERS_PER_MESSAGE + 1
    ]);
    let long_agent = Message::Hello(Hello {
        version: 1,
        network_id: "main".into(),
        market_hash: [0; 32],
        node_id: alice().node_id(),
        listen_port: 3000,
        nonce: [0; 32],
        agent: "a".repeat(129),
    });
    let long_network = Message::Hello(Hello {
        network_id: "n".repeat(65),
        agent: String::new(),
        ..match &long_agent {
            Message::Hello(h) => h.clone(),
            _ => unreachable!(),
        }
    });
    let mut order = order_event(alice().node_id(), 1, 1);
    if let EventBody::Place(place) = &mut order.body {
        place.market = "M".repeat(33);
    }
    let long_market = Message::Batch(
        SignedBatch::from_parts(vec![order], Signature::from_bytes([0; 64])).unwrap(),
    );
    let too_many_neighbours = Message::Neighbours {
        peers: vec![alice().node_id(); MAX_PEERS_PER_MESSAGE + 1],
    };
    for message in [
        too_many_peers,
        too_many_neighbours,
        long_agent,
        long_network,
        long_market,
    ] {
        assert!(
            matches!(encode(&message), Err(Error::LimitExceeded { .. })),
            "{}",
            message.kind()
        );
        // Bypass the encoder's check, as a hostile peer would.
        let raw = postcard::to_allocvec(&message).unwrap();
        let err = decode(&raw).unwrap_err();
        assert!(
            matches!(err, Error::LimitExceeded { .. }),
            "{}: {err}",
            message.kind()
        );
        assert!(err.is_misbehaviour());
    }
    // The limits themselves are accepted.
    let peers = Message::Peers(vec![
        PeerAddress {
            addr,
            node_id: None
        };
        MAX_PEERS_PER_MESSAGE
    ]);
    assert_eq!(decode(&encode(&peers).unwrap()).unwrap(), peers);
}

#[test]
fn empty_and_oversize_batches_cannot_be_built_or_decoded() {
    let sig = Signature::from_bytes([0; 64]);
    assert!(SignedBatch::from_parts(vec![], sig).is_none());
    let many: Vec<Event> = (1..=MAX_EVENTS_PER_BATCH as u64 + 1)
        .map(|seq| Event {
            origin: alice().node_id(),
            seq,
            lamport: seq,
            body: EventBody::Leave,
        })
        .collect();
    assert!(SignedBatch::from_parts(many.clone(), sig).is_none());
    assert!(SignedBatch::sign(&alice(), many.clone()).is_err());
    assert!(SignedBatch::sign(&alice(), many[..MAX_EVENTS_PER_BATCH].to_vec()).is_ok());

    // Hand-encoded `Message::Batch` with zero events: tag 6, vec length 0, 64-byte signature.
    let mut raw = vec![6u8, 0, 64];
    raw.extend_from_slice(&[0; 64]);
    assert!(matches!(decode(&raw), Err(Error::Decode(_))));
}

// ---------------------------------------------------------------------------------------------
// Signatures and identity

#[test]
fn batch_structure_is_checked_before_signing_and_on_verify() {
    let a = alice().node_id();
    let b = bob().node_id();
    let cases: Vec<(&str, Vec<Event>)> = vec![
        ("seq 0", vec![order_event(a, 0, 1)]),
        ("lamport 0", vec![order_event(a, 1, 0)]),
        ("gap", vec![order_event(a, 1, 1), order_event(a, 3, 2)]),
        ("repeat", vec![order_event(a, 1, 1), order_event(a, 1, 2)]),
        (
            "lamport equal",
            vec![order_event(a, 1, 5), order_event(a, 2, 5)],
        ),
        (
            "lamport down",
            vec![order_event(a, 1, 5), order_event(a, 2, 4)],
        ),
        (
            "two origins",
            vec![order_event(a, 1, 1), order_event(b, 2, 2)],
        ),
        (
            "seq overflow",
            vec![order_event(a, u64::MAX, 1), order_event(a, 0, 2)],
        ),
    ];
    for (name, events) in cases {
        assert!(
            matches!(
                SignedBatch::sign(&alice(), events.clone()),
                Err(Error::InvalidBatch(_))
            ),
            "{name}"
        );
        let forged = SignedBatch::from_parts(events, Signature::from_bytes([0; 64])).unwrap();
        let err = forged.verify().unwrap_err();
        assert!(matches!(err, Error::InvalidBatch(_)), "{name}: {err}");
        assert!(err.is_misbehaviour());
    }
}

#[test]
fn a_batch_is_only_valid_under_its_origins_key() {
    let events = vec![
        order_event(alice().node_id(), 1, 1),
        order_event(alice().node_id(), 2, 3),
    ];
    assert!(matches!(
        SignedBatch::sign(&bob(), events.clone()),
        Err(Error::WrongSigner { .. })
    ));
    // Bob signs the canonical bytes himself, then claims the events are Alice's.
    let bobs: Vec<Event> = events
        .iter()
        .cloned()
        .map(|e| Event {
            origin: bob().node_id(),
            ..e
        })
        .collect();
    let signed_by_bob = SignedBatch::sign(&bob(), bobs).unwrap();
    let forged = SignedBatch::from_parts(events, *signed_by_bob.signature()).unwrap();
    assert!(matches!(forged.verify(), Err(Error::BadSignature)));
    // A node id that is not a curve point cannot verify anything.
    let bogus = NodeId::from_bytes([0xff; 32]);
    assert!(matches!(
        verify(&bogus, b"m", signed_by_bob.signature()),
        Err(Error::BadSignature)
    ));
}

#[test]
fn the_handshake_proves_the_key_for_this_network_and_nonce_only() {
    let (alice, bob) = (alice(), bob());
    let bob_nonce = [42u8; 32];
    let ack = HelloAck {
        signature: alice.sign(&handshake_transcript("main", &alice.node_id(), &bob_nonce)),
    };
    let transcript = handshake_transcript("main", &alice.node_id(), &bob_nonce);
    verify(&alice.node_id(), &transcript, &ack.signature).unwrap();
    // Replayed on another connection (another nonce), another network, or claimed by Bob.
    for (network, signer, nonce) in [
        ("main", alice.node_id(), [43u8; 32]),
        ("test", alice.node_id(), bob_nonce),
        ("main", bob.node_id(), bob_nonce),
    ] {
        let transcript = handshake_transcript(network, &signer, &nonce);
        assert!(verify(&signer, &transcript, &ack.signature).is_err());
    }
}

#[test]
fn hello_and_hello_ack_helpers_run_the_handshake() {
    let (alice, bob) = (alice(), bob());
    let hello_a = Hello::new(&alice, "main", [1; 32], 3000, "test/1").unwrap();
    let hello_b = Hello::new(&bob, "main", [1; 32], 3001, "test/1").unwrap();
    assert_eq!(hello_a.version, peer_protocol::PROTOCOL_VERSION);
    assert_ne!(hello_a.nonce, hello_b.nonce, "nonces are fresh");
    // Each side signs the other's nonce; each checks the answer against its own nonce.
    let ack_a = HelloAck::new(&alice, "main", &hello_b.nonce);
    let ack_b = HelloAck::new(&bob, "main", &hello_a.nonce);
    ack_a
        .verify("main", &hello_a.node_id, &hello_b.nonce)
        .unwrap();
    ack_b
        .verify("main", &hello_b.node_id, &hello_a.nonce)
        .unwrap();
    // A forger claiming Alice's id without her key, or replaying her ack elsewhere, fails.
    let forged = HelloAck::new(&bob, "main", &hello_b.nonce);
    assert!(
        forged
            .verify("main", &alice.node_id(), &hello_b.nonce)
            .is_err()
    );
    assert!(
        ack_a
            .verify("main", &alice.node_id(), &hello_a.nonce)
            .is_err()
    );
    assert!(
        ack_a
            .verify("test", &alice.node_id(), &hello_b.nonce)
            .is_err()
    );
}

#[test]
fn vector_clocks_are_bounded_and_unambiguous_on_the_wire() {
    // Hand-encoded `SyncRequest` (tag 8) with `n` pairs of (node id, counter).
    let sync_request = |nodes: &[([u8; 32], u8)]| {
        let mut raw = vec![8u8];
        let mut len = nodes.len();
        while len >= 0x80 {
            raw.push((len as u8) | 0x80);
            len >>= 7;
        }
        raw.push(len as u8);
        for (node, counter) in nodes {
            raw.extend_from_slice(node);
            raw.push(*counter);
        }
        raw
    };
    let node = |i: usize| {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&(i as u64).to_be_bytes());
        id
    };
    let at_limit: Vec<_> = (0..peer_protocol::MAX_MEMBERS)
        .map(|i| (node(i), 1))
        .collect();
    let Message::SyncRequest { clock } = decode(&sync_request(&at_limit)).unwrap() else {
        panic!("a sync request")
    };
    assert_eq!(clock.len(), peer_protocol::MAX_MEMBERS);
    // One more entry, even with a zero counter, is refused while decoding.
    let mut over = at_limit.clone();
    over.push((node(usize::MAX), 0));
    assert!(decode(&sync_request(&over)).unwrap_err().is_misbehaviour());
    // A repeated node is refused, zero counters are dropped.
    assert!(decode(&sync_request(&[(node(1), 1), (node(1), 2)])).is_err());
    let Message::SyncRequest { clock } =
        decode(&sync_request(&[(node(1), 0), (node(2), 3)])).unwrap()
    else {
        panic!("a sync request")
    };
    assert_eq!(clock.len(), 1);
}

#[test]
fn join_and_vote_signatures_are_bound_to_their_fields() {
    let (alice, bob) = (alice(), bob());
    let join = alice.sign(&join_transcript("main", &alice.node_id()));
    verify(
        &alice.node_id(),
        &join_transcript("main", &alice.node_id()),
        &join,
    )
    .unwrap();
    assert!(
        verify(
            &alice.node_id(),
            &join_transcript("other", &alice.node_id()),
            &join
        )
        .is_err()
    );
    let vote = alice.sign(&vote_transcript("main", 1, &bob.node_id(), 3, 0, 17));
    verify(
        &alice.node_id(),
        &vote_transcript("main", 1, &bob.node_id(), 3, 0, 17),
        &vote,
    )
    .unwrap();
    for other in [
        vote_transcript("main", 2, &bob.node_id(), 3, 0, 17),
        vote_transcript("main", 1, &bob.node_id(), 4, 0, 17),
        vote_transcript("main", 1, &bob.node_id(), 3, 1, 17),
        vote_transcript("main", 1, &bob.node_id(), 3, 0, 16),
    ] {
        assert!(verify(&alice.node_id(), &other, &vote).is_err());
    }
}

#[test]
fn frontier_acks_are_bounded_sorted_and_distinct() {
    let node = |i: usize| {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&(i as u64).to_be_bytes());
        NodeId::from_bytes(id)
    };
    let max = peer_protocol::MAX_MEMBERS;
    // At the limit: signs, verifies, round-trips.
    let at_limit: Vec<(NodeId, u64)> = (0..max).rev().map(|i| (node(i), i as u64)).collect();
    let frontier = SignedFrontier::sign_with_acks(&alice(), 5, 9, at_limit).unwrap();
    assert_eq!(frontier.acks.len(), max);
    let message = Message::Frontier(frontier.clone());
    message.check_limits().unwrap();
    assert_eq!(decode(&encode(&message).unwrap()).unwrap(), message);
    frontier.clone().verify().unwrap();
    // One more: refused when signing, by the limits check and while decoding.
    let over: Vec<(NodeId, u64)> = (0..=max).map(|i| (node(i), 1)).collect();
    assert!(matches!(
        SignedFrontier::sign_with_acks(&alice(), 5, 9, over.clone()),
        Err(Error::LimitExceeded { .. })
    ));
    let mut oversized = frontier.clone();
    oversized.acks = over;
    let message = Message::Frontier(oversized);
    assert!(matches!(
        message.check_limits(),
        Err(Error::LimitExceeded { .. })
    ));
    assert!(encode(&message).is_err());
    // Decoding stops at one past the limit: the at-limit bytes with one more pair spliced in.
    let Message::Frontier(ones) = &message else {
        unreachable!()
    };
    let at_limit = SignedFrontier {
        acks: ones.acks[..max].to_vec(),
        ..ones.clone()
    };
    let mut raw = encode(&Message::Frontier(at_limit)).unwrap().to_vec();
    // tag (1) + origin (32) + seq 5 (1) + lamport 9 (1), then the count as a varint.
    assert_eq!(&raw[35..37], &[0x80, 0x08], "1024 as a varint");
    raw[35] = 0x81;
    let acks_end = raw.len() - 64;
    let mut extra = node(max + 7).as_bytes().to_vec();
    extra.push(1);
    raw.splice(acks_end..acks_end, extra);
    assert!(decode(&raw).unwrap_err().is_misbehaviour());
    // A node twice, or acks out of order: refused even with a valid signature elsewhere.
    assert!(
        SignedFrontier::sign_with_acks(&alice(), 1, 1, vec![(node(1), 1), (node(1), 2)]).is_err()
    );
    let mut unsorted = frontier;
    unsorted.acks.swap(0, 1);
    assert!(matches!(unsorted.verify(), Err(Error::InvalidMessage(_))));
    // Without acks, `sign` and `sign_with_acks` agree.
    assert_eq!(
        SignedFrontier::sign(&alice(), 3, 4),
        SignedFrontier::sign_with_acks(&alice(), 3, 4, Vec::new()).unwrap()
    );
}
