//! Codec and signature benchmarks: encode/decode of a single order event and of a 256-event
//! batch, and signing and verifying a batch of 1 versus 256 events (the per-event cost of
//! signing in batches).
//!
//! Run with `cargo bench -p peer-protocol --bench codec` (about a minute).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use orderbook_core::{OrderType, Side, TimeInForce};
use peer_protocol::{Event, EventBody, Identity, Message, PlaceOrder, SignedBatch, decode, encode};
use rust_decimal::Decimal;

fn order_events(identity: &Identity, count: u64) -> Vec<Event> {
    (1..=count)
        .map(|seq| Event {
            origin: identity.node_id(),
            seq,
            lamport: seq * 3,
            body: EventBody::Place(PlaceOrder {
                client_order_id: Some(format!("client-order-{seq}")),
                market: "BTC-USD".into(),
                side: if seq.is_multiple_of(2) {
                    Side::Buy
                } else {
                    Side::Sell
                },
                order_type: OrderType::Limit,
                price: Some(Decimal::new(10_050 + seq as i64, 2)),
                quantity: Decimal::new(125, 2),
                time_in_force: TimeInForce::Gtc,
            }),
        })
        .collect()
}

fn codec(c: &mut Criterion) {
    let identity = Identity::from_secret_bytes(&[7; 32]);
    for count in [1u64, 256] {
        let batch = SignedBatch::sign(&identity, order_events(&identity, count))
            .expect("well-formed events");
        let message = Message::Batch(batch);
        let payload = encode(&message).expect("encodable");
        let mut group = c.benchmark_group(format!("codec/{count}_events"));
        group.throughput(Throughput::Elements(count));
        group.bench_function("encode", |b| b.iter(|| encode(black_box(&message))));
        group.bench_function("decode", |b| b.iter(|| decode(black_box(&payload))));
        group.finish();
    }
}

fn signatures(c: &mut Criterion) {
    let identity = Identity::from_secret_bytes(&[7; 32]);
    for count in [1u64, 256] {
        let events = order_events(&identity, count);
        let signed = SignedBatch::sign(&identity, events.clone()).expect("well-formed events");
        let mut group = c.benchmark_group(format!("signature/{count}_events"));
        group.throughput(Throughput::Elements(count));
        group.bench_function("sign", |b| {
            b.iter_batched(
                || events.clone(),
                |events| SignedBatch::sign(&identity, events),
                BatchSize::SmallInput,
            )
        });
        group.bench_function("verify", |b| {
            b.iter_batched(
                || signed.clone(),
                SignedBatch::verify,
                BatchSize::SmallInput,
            )
        });
        group.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = codec, signatures
}
criterion_main!(benches);
