//! Benchmarks of the vector clock operations the replicated log runs on
//! every anti-entropy round: `compare` (concurrent clocks, which stop early,
//! and a full scan), `merge` (including a clone) and `missing_from`, with
//! 32-byte node ids (like `NodeId`) and 8 or 128 members.
//!
//! Run with `cargo bench -p vector-clock`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use vector_clock::{LamportClock, VectorClock};

type NodeId = [u8; 32];

fn node(i: usize) -> NodeId {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&(i as u64).to_be_bytes());
    id[31] = 0xa5;
    id
}

/// Two clocks over the same members that differ in a few counters each
/// way (the usual shape between two connected nodes).
fn pair(members: usize) -> (VectorClock<NodeId>, VectorClock<NodeId>) {
    let mut a = VectorClock::new();
    let mut b = VectorClock::new();
    for i in 0..members {
        let base = 1_000 + i as u64 * 7;
        a.observe(node(i), base + u64::from(i % 3 == 0));
        b.observe(node(i), base + u64::from(i % 5 == 0));
    }
    (a, b)
}

fn benches(c: &mut Criterion) {
    for members in [8usize, 128] {
        let (a, b) = pair(members);
        let mut group = c.benchmark_group("vector_clock");
        group.bench_with_input(
            BenchmarkId::new("compare", members),
            &members,
            |bench, _| {
                bench.iter(|| black_box(&a).compare(black_box(&b)));
            },
        );
        // A clock one event ahead of its merge: `compare` must scan every
        // member to answer `Before`.
        let mut ahead = a.clone();
        ahead.merge(&b);
        let behind = ahead.clone();
        ahead.increment(node(members - 1));
        group.bench_with_input(
            BenchmarkId::new("compare_full_scan", members),
            &members,
            |bench, _| {
                bench.iter(|| black_box(&behind).compare(black_box(&ahead)));
            },
        );
        group.bench_with_input(BenchmarkId::new("merge", members), &members, |bench, _| {
            bench.iter(|| {
                let mut m = black_box(&a).clone();
                m.merge(black_box(&b));
                m
            });
        });
        group.bench_with_input(
            BenchmarkId::new("missing_from", members),
            &members,
            |bench, _| {
                bench.iter(|| black_box(&a).missing_from(black_box(&b)));
            },
        );
        group.finish();
    }
    c.bench_function("lamport/observe_tick", |bench| {
        let mut clock = LamportClock::new();
        let mut seen = 0u64;
        bench.iter(|| {
            seen += 2;
            clock.observe(black_box(seen));
            clock.tick()
        });
    });
}

criterion_group!(clock, benches);
criterion_main!(clock);
