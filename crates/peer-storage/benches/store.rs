//! Benchmarks of the peer table: the in-memory updates and queries the
//! transport and discovery make, and a full atomic write of a 1000-entry
//! file (temporary file, fsync, rename, directory fsync).
//!
//! Run with `cargo bench -p peer-storage`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use peer_storage::{Config, FilePeerStore, MemoryPeerStore, PeerStore, Source};

const T0: u64 = 1_700_000_000;
const ENTRIES: u16 = 1000;

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, (i >> 8) as u8, i as u8], 3000))
}

fn fill(store: &dyn PeerStore) {
    for i in 0..ENTRIES {
        store.upsert(addr(i), Source::Exchange, Some(format!("{i:064x}")), T0);
        for _ in 0..(i % 7) {
            store.record_success(addr(i), None, T0);
        }
        if i % 11 == 0 {
            store.record_failure(addr(i), T0);
        }
    }
}

fn benches(c: &mut Criterion) {
    let memory = MemoryPeerStore::new(usize::from(ENTRIES));
    fill(&memory);
    c.bench_function("memory/record_success_1000", |b| {
        let mut i = 0u16;
        b.iter(|| {
            i = (i + 1) % ENTRIES;
            memory.record_success(black_box(addr(i)), None, T0);
        });
    });
    c.bench_function("memory/best_50_of_1000", |b| {
        b.iter(|| memory.best(black_box(50), T0));
    });
    c.bench_function("memory/upsert_evicting_1000", |b| {
        let mut i = 0u16;
        b.iter(|| {
            i = i.wrapping_add(1);
            let new = SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 4000));
            memory.upsert(black_box(new), Source::Exchange, None, T0 + 2 * 3600);
        });
    });

    let dir = tempfile::tempdir().expect("temp dir");
    let file = FilePeerStore::open(
        dir.path().join(peer_storage::DEFAULT_FILE_NAME),
        Config {
            max_entries: usize::from(ENTRIES),
            debounce: Duration::from_secs(3600),
        },
    )
    .expect("open");
    fill(&file);
    let mut group = c.benchmark_group("file");
    group.sample_size(20);
    group.bench_function("flush_1000", |b| {
        b.iter(|| file.flush().expect("flush"));
    });
    group.finish();
}

criterion_group!(store, benches);
criterion_main!(store);
