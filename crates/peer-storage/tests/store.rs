//! Integration tests of `peer-storage`: the table rules on both stores, and
//! the file store's persistence (atomic writes, corruption recovery,
//! debounce, round trips).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use peer_storage::{
    BAN_BASE_SECS, BAN_MAX_SECS, BAN_THRESHOLD, Config, DEFAULT_FILE_NAME, Error, FAILURE_PENALTY,
    FilePeerStore, MISBEHAVIOUR_PENALTY, MemoryPeerStore, PeerRecord, PeerStore,
    RECENT_SUCCESS_SECS, SCORE_MAX, SCORE_MIN, SUCCESS_REWARD, Source,
};
use proptest::prelude::*;

const T0: u64 = 1_700_000_000;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn node_id(byte: u8) -> String {
    format!("{byte:02x}").repeat(32)
}

/// A config whose debounce never fires during a test: only `flush` and
/// `Drop` write.
fn manual(max_entries: usize) -> Config {
    Config {
        max_entries,
        debounce: Duration::from_secs(3600),
    }
}

/// Runs the same test against both implementations.
fn both(max_entries: usize, test: impl Fn(&dyn PeerStore)) {
    test(&MemoryPeerStore::new(max_entries));
    let dir = tempfile::tempdir().expect("temp dir");
    let store = FilePeerStore::open(dir.path().join(DEFAULT_FILE_NAME), manual(max_entries))
        .expect("open store");
    test(&store);
}

fn wait_for(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn read_peers(path: &Path) -> Option<serde_json::Value> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn file_addrs(path: &Path) -> Vec<String> {
    read_peers(path)
        .and_then(|v| v.get("peers").and_then(|p| p.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.get("addr").and_then(|a| a.as_str()).map(str::to_owned))
        .collect()
}

fn corrupt_files(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".peers.json.corrupt-"))
        })
        .collect();
    found.sort();
    found
}

// ---- table rules, on both stores ----

#[test]
fn upsert_inserts_then_refreshes() {
    both(10, |store| {
        store.upsert(addr(1), Source::Exchange, None, T0);
        let record = store.get(addr(1)).expect("stored");
        assert_eq!(
            record,
            PeerRecord {
                addr: addr(1),
                node_id: None,
                first_seen: T0,
                last_seen: T0,
                successes: 0,
                failures: 0,
                misbehaviour: 0,
                score: 0,
                banned_until: None,
                source: Source::Exchange,
            }
        );
        store.upsert(addr(1), Source::Mdns, Some(node_id(7)), T0 + 10);
        // A stale announcement never moves last_seen back.
        store.upsert(addr(1), Source::Grenache, None, T0 + 5);
        let record = store.get(addr(1)).expect("stored");
        assert_eq!(record.first_seen, T0);
        assert_eq!(record.last_seen, T0 + 10);
        assert_eq!(
            record.node_id,
            Some(node_id(7)),
            "a missing node id keeps the known one"
        );
        assert_eq!(
            record.source,
            Source::Exchange,
            "the first discovered source is kept"
        );
        store.upsert(addr(1), Source::Bootstrap, None, T0 + 11);
        assert_eq!(
            store.get(addr(1)).map(|r| r.source),
            Some(Source::Bootstrap)
        );
        store.upsert(addr(1), Source::Mdns, None, T0 + 12);
        assert_eq!(
            store.get(addr(1)).map(|r| r.source),
            Some(Source::Bootstrap)
        );
    });
}

#[test]
fn scoring_follows_the_documented_formula() {
    both(10, |store| {
        store.upsert(addr(1), Source::Bootstrap, None, T0);
        store.record_success(addr(1), Some(node_id(1)), T0 + 1);
        store.record_success(addr(1), None, T0 + 2);
        let r = store.get(addr(1)).expect("stored");
        assert_eq!(
            (r.successes, r.score, r.last_seen),
            (2, 2 * SUCCESS_REWARD, T0 + 2)
        );
        assert_eq!(r.node_id, Some(node_id(1)));

        store.record_failure(addr(1), T0 + 3);
        let r = store.get(addr(1)).expect("stored");
        assert_eq!(
            (r.failures, r.score),
            (1, 2 * SUCCESS_REWARD - FAILURE_PENALTY)
        );
        assert_eq!(r.last_seen, T0 + 2, "a failure is not a sighting");

        store.record_misbehaviour(addr(1), T0 + 4);
        let r = store.get(addr(1)).expect("stored");
        assert_eq!(
            (r.misbehaviour, r.score),
            (
                1,
                2 * SUCCESS_REWARD - FAILURE_PENALTY - MISBEHAVIOUR_PENALTY
            )
        );

        // Clamped at the top ...
        for t in 0..100 {
            store.record_success(addr(2), None, T0 + t);
        }
        assert_eq!(store.get(addr(2)).map(|r| r.score), Some(SCORE_MAX));
        // ... so a long good history does not outweigh a run of failures.
        let failures_to_zero = u32::try_from(SCORE_MAX / FAILURE_PENALTY).expect("small");
        for _ in 0..failures_to_zero {
            store.record_failure(addr(2), T0 + 200);
        }
        assert_eq!(store.get(addr(2)).map(|r| r.score), Some(0));
        // ... and at the bottom.
        for _ in 0..1000 {
            store.record_failure(addr(2), T0 + 300);
        }
        let r = store.get(addr(2)).expect("stored");
        assert_eq!(r.score, SCORE_MIN);
        assert_eq!(r.failures, 1000 + failures_to_zero);
    });
}

#[test]
fn unknown_addresses_on_success_misbehaviour_and_failure() {
    both(10, |store| {
        store.record_failure(addr(1), T0);
        assert_eq!(store.get(addr(1)), None, "a failure alone stores nothing");
        store.record_success(addr(2), None, T0);
        assert_eq!(store.get(addr(2)).map(|r| r.source), Some(Source::Inbound));
        store.record_misbehaviour(addr(3), T0);
        assert_eq!(store.get(addr(3)).map(|r| r.source), Some(Source::Inbound));
    });
}

#[test]
fn repeated_misbehaviour_bans_exponentially_and_bans_expire() {
    both(10, |store| {
        store.upsert(addr(1), Source::Exchange, None, T0);
        store.upsert(addr(2), Source::Exchange, None, T0);
        for i in 1..BAN_THRESHOLD {
            store.record_misbehaviour(addr(1), T0);
            assert!(
                !store.is_banned(addr(1), T0),
                "not banned after {i} misbehaviours"
            );
        }
        store.record_misbehaviour(addr(1), T0);
        let first_ban_end = T0 + BAN_BASE_SECS;
        assert_eq!(
            store.get(addr(1)).and_then(|r| r.banned_until),
            Some(first_ban_end)
        );
        assert!(store.is_banned(addr(1), T0));
        assert!(store.is_banned(addr(1), first_ban_end - 1));
        assert!(
            !store.is_banned(addr(1), first_ban_end),
            "the ban has expired"
        );
        assert!(!store.is_banned(addr(2), T0));
        assert!(
            !store.is_banned(addr(99), T0),
            "unknown addresses are not banned"
        );

        // Banned peers are not offered by best(), and come back after expiry.
        let best: Vec<_> = store.best(10, T0).iter().map(|r| r.addr).collect();
        assert_eq!(best, vec![addr(2)]);
        let best: Vec<_> = store
            .best(10, first_ban_end)
            .iter()
            .map(|r| r.addr)
            .collect();
        assert_eq!(best, vec![addr(2), addr(1)]);
        assert_eq!(store.all().len(), 2, "all() includes banned peers");

        // The next misbehaviour after expiry doubles the ban.
        store.record_misbehaviour(addr(1), first_ban_end + 10);
        assert_eq!(
            store.get(addr(1)).and_then(|r| r.banned_until),
            Some(first_ban_end + 10 + 2 * BAN_BASE_SECS)
        );
        // Many more are capped.
        for _ in 0..40 {
            store.record_misbehaviour(addr(1), T0 + 1000);
        }
        assert_eq!(
            store.get(addr(1)).and_then(|r| r.banned_until),
            Some(T0 + 1000 + BAN_MAX_SECS)
        );
        // A misbehaviour reported with an older timestamp never shortens a ban.
        store.record_misbehaviour(addr(1), T0);
        assert_eq!(
            store.get(addr(1)).and_then(|r| r.banned_until),
            Some(T0 + 1000 + BAN_MAX_SECS)
        );
    });
}

#[test]
fn an_ip_wide_ban_covers_every_port_of_that_ip_only() {
    both(10, |store| {
        let other_ip = SocketAddr::from(([10, 0, 0, 9], 4000));
        store.upsert(addr(1), Source::Exchange, None, T0);
        store.upsert(other_ip, Source::Exchange, None, T0);
        let whole = peer_storage::ip_wide(addr(1).ip());
        assert_eq!(whole, addr(0));
        // An IPv4-mapped IPv6 address keys the same IPv4 entry.
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5".parse().expect("address");
        assert_eq!(peer_storage::ip_wide(mapped.ip()), whole);

        for _ in 1..BAN_THRESHOLD {
            store.record_misbehaviour(whole, T0);
        }
        assert!(!store.is_banned(addr(1), T0), "below the threshold");
        // Not yet banned, an IP-wide entry is still never offered for dialling.
        let best: Vec<_> = store.best(10, T0).iter().map(|r| r.addr).collect();
        assert_eq!(best, vec![other_ip, addr(1)]);

        store.record_misbehaviour(whole, T0);
        for port in [1, 2, 65535] {
            assert!(
                store.is_banned(addr(port), T0),
                "port {port} of the banned ip"
            );
        }
        assert!(!store.is_banned(other_ip, T0), "another ip is unaffected");
        let best: Vec<_> = store.best(10, T0).iter().map(|r| r.addr).collect();
        assert_eq!(
            best,
            vec![other_ip],
            "every port of the banned ip is left out"
        );
        assert!(
            !store.is_banned(addr(1), T0 + BAN_BASE_SECS),
            "the ban expires"
        );
    });
}

#[test]
fn best_orders_by_score_then_address_and_respects_limit() {
    both(10, |store| {
        for port in [5, 4, 3, 2, 1] {
            store.upsert(addr(port), Source::Mdns, None, T0);
        }
        store.record_success(addr(4), None, T0);
        store.record_success(addr(2), None, T0);
        store.record_failure(addr(1), T0);
        let best: Vec<_> = store.best(10, T0).iter().map(|r| r.addr).collect();
        assert_eq!(best, vec![addr(2), addr(4), addr(3), addr(5), addr(1)]);
        let best: Vec<_> = store.best(3, T0).iter().map(|r| r.addr).collect();
        assert_eq!(best, vec![addr(2), addr(4), addr(3)]);
        assert!(store.best(0, T0).is_empty());
        let all: Vec<_> = store.all().iter().map(|r| r.addr).collect();
        assert_eq!(all, vec![addr(1), addr(2), addr(3), addr(4), addr(5)]);
    });
}

#[test]
fn a_full_table_evicts_the_worst_scored_then_least_recently_seen() {
    both(4, |store| {
        store.upsert(addr(1), Source::Exchange, None, T0); // score 0, seen T0
        store.upsert(addr(2), Source::Exchange, None, T0 + 5); // score 0, seen T0+5
        store.upsert(addr(3), Source::Exchange, None, T0);
        store.record_failure(addr(3), T0); // score -5
        store.upsert(addr(4), Source::Exchange, None, T0);
        store.record_failure(addr(4), T0);
        store.record_failure(addr(4), T0); // score -10

        let t = T0 + 10;
        store.upsert(addr(10), Source::Exchange, None, t);
        assert_eq!(store.get(addr(4)), None, "lowest score goes first");
        store.upsert(addr(11), Source::Exchange, None, t);
        assert_eq!(store.get(addr(3)), None, "then the next lowest");
        store.upsert(addr(12), Source::Exchange, None, t);
        assert_eq!(
            store.get(addr(1)),
            None,
            "equal scores: the least recently seen"
        );
        store.upsert(addr(13), Source::Exchange, None, t);
        assert_eq!(store.get(addr(2)), None);
        let all: Vec<_> = store.all().iter().map(|r| r.addr).collect();
        assert_eq!(all, vec![addr(10), addr(11), addr(12), addr(13)]);
        // Equal score and last_seen: the highest address goes first.
        store.upsert(addr(14), Source::Exchange, None, t);
        assert_eq!(store.get(addr(13)), None);
        assert_eq!(store.all().len(), 4);
    });
}

#[test]
fn eviction_never_takes_a_recent_success_or_an_active_ban() {
    both(3, |store| {
        // A very good peer from long ago: evictable despite its score.
        for _ in 0..5 {
            store.record_success(addr(1), None, T0);
        }
        // A mediocre peer with a recent success.
        store.record_success(addr(2), None, T0 + 2 * RECENT_SUCCESS_SECS);
        for _ in 0..10 {
            store.record_failure(addr(2), T0);
        }
        // A banned peer: the worst score, but its ban must survive a flood.
        for _ in 0..BAN_THRESHOLD {
            store.record_misbehaviour(addr(3), T0 + 2 * RECENT_SUCCESS_SECS);
        }
        let now = T0 + 2 * RECENT_SUCCESS_SECS + 1;
        assert!(store.is_banned(addr(3), now));

        store.upsert(addr(10), Source::Exchange, None, now);
        assert_eq!(store.get(addr(1)), None, "the only evictable entry goes");
        assert!(store.get(addr(2)).is_some());
        assert!(store.get(addr(3)).is_some());

        // A flood of new addresses only evicts each other.
        for port in 11..100 {
            store.upsert(addr(port), Source::Exchange, None, now);
        }
        assert!(store.get(addr(2)).is_some());
        assert!(store.is_banned(addr(3), now));
        assert!(store.get(addr(99)).is_some());
        assert_eq!(store.all().len(), 3);

        // When everything is protected, a new address is simply not stored.
        store.record_success(addr(99), None, now);
        store.upsert(addr(200), Source::Exchange, None, now);
        assert_eq!(store.get(addr(200)), None);
        store.record_success(addr(201), None, now);
        assert_eq!(store.get(addr(201)), None);

        // After the hour and the ban, protection lapses.
        let later = now + BAN_MAX_SECS + RECENT_SUCCESS_SECS;
        store.upsert(addr(200), Source::Exchange, None, later);
        assert!(store.get(addr(200)).is_some());
        assert_eq!(
            store.get(addr(3)),
            None,
            "the expired-ban, lowest-scored entry went"
        );
    });
}

#[test]
fn memory_store_is_bounded_and_flush_is_a_no_op() {
    let store = MemoryPeerStore::new(2);
    assert!(store.is_empty());
    for port in 0..10 {
        store.upsert(addr(port), Source::Mdns, None, T0);
    }
    assert_eq!(store.len(), 2);
    assert!(store.flush().is_ok());
    // A bound of zero is raised to one.
    let store = MemoryPeerStore::new(0);
    store.upsert(addr(1), Source::Mdns, None, T0);
    store.upsert(addr(2), Source::Mdns, None, T0);
    assert_eq!(store.len(), 1);
}

#[test]
fn source_serializes_in_lowercase() {
    let names: Vec<String> = [
        Source::Bootstrap,
        Source::Mdns,
        Source::Exchange,
        Source::Grenache,
        Source::Inbound,
        Source::Manual,
    ]
    .iter()
    .map(|s| serde_json::to_string(s).expect("serialize"))
    .collect();
    assert_eq!(
        names,
        [
            "\"bootstrap\"",
            "\"mdns\"",
            "\"exchange\"",
            "\"grenache\"",
            "\"inbound\"",
            "\"manual\""
        ]
    );
    assert_eq!(Source::Mdns.to_string(), "mdns");
}

// ---- the file store ----

#[test]
fn round_trip_through_reopen_keeps_every_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("data").join(DEFAULT_FILE_NAME);
    let before = {
        let store = FilePeerStore::open(&path, manual(10)).expect("open");
        store.upsert(addr(1), Source::Bootstrap, Some(node_id(1)), T0);
        store.record_success(addr(1), None, T0 + 1);
        store.record_failure(addr(1), T0 + 2);
        store.upsert(addr(2), Source::Grenache, None, T0 + 3);
        for _ in 0..BAN_THRESHOLD {
            store.record_misbehaviour(addr(2), T0 + 4);
        }
        store.upsert(
            "[::1]:4000".parse().expect("v6"),
            Source::Manual,
            None,
            T0 + 5,
        );
        store.all()
    }; // dropped: the pending change is written on close
    let store = FilePeerStore::open(&path, manual(10)).expect("reopen");
    assert_eq!(store.all(), before);
    assert!(store.is_banned(addr(2), T0 + 4));
    assert_eq!(store.path(), path);

    // The recent-success protection (kept in the file) survives a reopen.
    let store = {
        drop(store);
        FilePeerStore::open(&path, manual(3)).expect("reopen smaller")
    };
    store.upsert(addr(3), Source::Exchange, None, T0 + 10);
    assert!(
        store.get(addr(1)).is_some(),
        "recent success protects addr 1"
    );
    assert!(store.get(addr(2)).is_some(), "active ban protects addr 2");
    assert_eq!(store.get("[::1]:4000".parse().expect("v6")), None);
}

#[test]
fn the_file_is_plain_json_with_lowercase_sources() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(DEFAULT_FILE_NAME);
    let store = FilePeerStore::open(&path, manual(10)).expect("open");
    store.upsert(addr(1), Source::Mdns, None, T0);
    store.flush().expect("flush");
    let json = read_peers(&path).expect("valid json");
    assert_eq!(json["version"], 1);
    assert_eq!(json["peers"][0]["addr"], "127.0.0.1:1");
    assert_eq!(json["peers"][0]["source"], "mdns");
    assert_eq!(json["peers"][0]["first_seen"], T0);
}

#[test]
fn a_crash_between_write_and_rename_leaves_the_old_file_valid() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(DEFAULT_FILE_NAME);
    let tmp = dir.path().join(format!("{DEFAULT_FILE_NAME}.tmp"));
    let before = {
        let store = FilePeerStore::open(&path, manual(10)).expect("open");
        store.upsert(addr(1), Source::Bootstrap, None, T0);
        store.flush().expect("flush");
        assert!(!tmp.exists(), "a completed write leaves no temporary file");
        store.all()
    };
    // What a crash in the middle of the next write leaves behind: a
    // half-written temporary file that was never renamed.
    let valid = std::fs::read(&path).expect("read");
    std::fs::write(&tmp, &valid[..valid.len() / 2]).expect("write tmp");

    let store = FilePeerStore::open(&path, manual(10)).expect("reopen");
    assert_eq!(store.all(), before, "the old file loads");
    assert!(!tmp.exists(), "the leftover temporary file is removed");
    assert!(
        corrupt_files(dir.path()).is_empty(),
        "nothing was treated as corrupt"
    );
    store.upsert(addr(2), Source::Mdns, None, T0);
    store.flush().expect("flush");
    assert_eq!(file_addrs(&path), vec!["127.0.0.1:1", "127.0.0.1:2"]);
}

fn check_corrupt_recovery(content: &[u8]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(DEFAULT_FILE_NAME);
    std::fs::write(&path, content).expect("write corrupt file");

    let store = FilePeerStore::open(&path, manual(10)).expect("open despite corruption");
    assert!(store.is_empty(), "a corrupt file gives an empty table");
    let aside = corrupt_files(dir.path());
    assert_eq!(aside.len(), 1, "the corrupt file is set aside");
    assert_eq!(
        std::fs::read(&aside[0]).expect("read aside"),
        content,
        "and kept intact"
    );
    assert!(!path.exists());

    // The store works normally afterwards.
    store.upsert(addr(1), Source::Mdns, None, T0);
    store.flush().expect("flush");
    drop(store);
    let store = FilePeerStore::open(&path, manual(10)).expect("reopen");
    assert_eq!(store.len(), 1);
    assert_eq!(corrupt_files(dir.path()).len(), 1);
}

#[test]
fn garbage_is_set_aside() {
    check_corrupt_recovery(b"\x00\xff\xfe not json at all \x13\x37");
}

#[test]
fn an_empty_file_is_set_aside() {
    check_corrupt_recovery(b"");
}

#[test]
fn truncated_json_is_set_aside() {
    let valid = {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(DEFAULT_FILE_NAME);
        let store = FilePeerStore::open(&path, manual(10)).expect("open");
        for port in 1..5 {
            store.upsert(addr(port), Source::Mdns, None, T0);
        }
        store.flush().expect("flush");
        std::fs::read(&path).expect("read")
    };
    check_corrupt_recovery(&valid[..valid.len() * 2 / 3]);
}

#[test]
fn wrong_shape_and_unknown_version_are_set_aside() {
    check_corrupt_recovery(br#"{"version":1,"peers":[{"addr":"not an address"}]}"#);
    check_corrupt_recovery(br#"{"version":2,"peers":[]}"#);
    check_corrupt_recovery(br#"[1,2,3]"#);
}

#[test]
fn a_file_over_the_bound_is_trimmed_to_the_best_entries() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(DEFAULT_FILE_NAME);
    {
        let store = FilePeerStore::open(&path, manual(10)).expect("open");
        for port in 1..=10 {
            store.upsert(addr(port), Source::Mdns, None, T0);
        }
        store.record_success(addr(7), None, T0);
        store.record_success(addr(3), None, T0);
    }
    let store = FilePeerStore::open(&path, manual(2)).expect("reopen smaller");
    let kept: Vec<_> = store.all().iter().map(|r| r.addr).collect();
    assert_eq!(kept, vec![addr(3), addr(7)]);
}

#[test]
fn invalid_configs_and_paths_are_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let result = FilePeerStore::open(dir.path().join(DEFAULT_FILE_NAME), manual(0));
    assert!(matches!(result, Err(Error::InvalidConfig(_))));
    let result = FilePeerStore::open(dir.path().join(".."), manual(10));
    assert!(matches!(result, Err(Error::InvalidPath(_))));
    // A directory where the file should be cannot be read.
    let result = FilePeerStore::open(dir.path(), manual(10));
    assert!(matches!(result, Err(Error::Io { .. })), "{result:?}");
}

#[test]
fn with_a_long_debounce_only_flush_and_drop_write() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(DEFAULT_FILE_NAME);
    let store = FilePeerStore::open(&path, manual(10)).expect("open");
    store.upsert(addr(1), Source::Mdns, None, T0);
    // Give the writer thread every chance to (wrongly) write.
    std::thread::sleep(Duration::from_millis(50));
    assert!(!path.exists(), "the debounce holds the write back");
    assert_eq!(store.writes(), 0);
    store.flush().expect("flush");
    assert_eq!(file_addrs(&path), vec!["127.0.0.1:1"]);
    assert_eq!(store.writes(), 1);
    store.upsert(addr(2), Source::Mdns, None, T0);
    drop(store);
    assert_eq!(file_addrs(&path), vec!["127.0.0.1:1", "127.0.0.1:2"]);
}

#[test]
fn a_dirty_table_is_written_in_the_background_at_most_once_per_debounce() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(DEFAULT_FILE_NAME);
    let debounce = Duration::from_millis(100);
    let start = Instant::now();
    let store = FilePeerStore::open(
        &path,
        Config {
            max_entries: 1000,
            debounce,
        },
    )
    .expect("open");
    for port in 1..=300 {
        store.upsert(addr(port), Source::Exchange, None, T0);
        if port % 30 == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // Without any flush, the writer thread gets everything to disk.
    wait_for("the background write", Duration::from_secs(20), || {
        file_addrs(&path).len() == 300
    });
    let elapsed = start.elapsed();
    // `flush` waits for any write in progress (it takes the same lock), so
    // after it the counter is final: the background writes plus this one.
    store.flush().expect("flush");
    let settled = store.writes();
    let background = settled - 1;
    let allowed = elapsed.as_millis() / debounce.as_millis() + 1;
    assert!(background >= 1, "the background writer wrote the file");
    assert!(
        u128::from(background) <= allowed,
        "{background} writes in {elapsed:?} with a debounce of {debounce:?}"
    );
    // Nothing more is written while the table is clean.
    std::thread::sleep(3 * debounce);
    assert_eq!(store.writes(), settled);
    // An update that changes nothing does not make the table dirty.
    store.record_failure(addr(9999), T0);
    std::thread::sleep(3 * debounce);
    assert_eq!(store.writes(), settled);
}

#[test]
fn concurrent_updates_are_all_persisted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(DEFAULT_FILE_NAME);
    let store = Arc::new(
        FilePeerStore::open(
            &path,
            Config {
                max_entries: 100,
                debounce: Duration::from_millis(1),
            },
        )
        .expect("open"),
    );
    let threads: Vec<_> = (0..4u16)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..250u64 {
                    store.record_success(addr(t), None, T0 + i);
                    if i % 50 == 0 {
                        store.flush().expect("flush");
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("thread");
    }
    drop(Arc::into_inner(store).expect("sole owner"));
    let store = FilePeerStore::open(&path, manual(100)).expect("reopen");
    let successes: Vec<u32> = store.all().iter().map(|r| r.successes).collect();
    assert_eq!(successes, vec![250; 4]);
}

#[test]
fn a_failed_write_is_reported_and_retried() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(DEFAULT_FILE_NAME);
    let tmp = dir.path().join(format!("{DEFAULT_FILE_NAME}.tmp"));
    let store = FilePeerStore::open(&path, manual(10)).expect("open");
    store.upsert(addr(1), Source::Mdns, None, T0);
    store.flush().expect("flush");
    // A directory where the temporary file goes makes every write fail.
    std::fs::create_dir(&tmp).expect("block the temporary path");
    store.upsert(addr(2), Source::Mdns, None, T0);
    let error = store.flush().expect_err("the write must fail");
    assert!(matches!(error, Error::Io { .. }), "{error}");
    assert!(
        error.to_string().starts_with("peer storage i/o error on "),
        "{error}"
    );
    assert_eq!(
        file_addrs(&path),
        vec!["127.0.0.1:1"],
        "the old file is intact"
    );
    assert_eq!(store.writes(), 1);
    // Once the obstacle is gone, the pending change is written on close.
    std::fs::remove_dir(&tmp).expect("unblock");
    drop(store);
    assert_eq!(file_addrs(&path), vec!["127.0.0.1:1", "127.0.0.1:2"]);
}

#[test]
fn a_background_write_failure_is_retried_until_it_succeeds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(DEFAULT_FILE_NAME);
    let tmp = dir.path().join(format!("{DEFAULT_FILE_NAME}.tmp"));
    let store = FilePeerStore::open(
        &path,
        Config {
            max_entries: 10,
            debounce: Duration::from_millis(10),
        },
    )
    .expect("open");
    std::fs::create_dir(&tmp).expect("block the temporary path");
    store.upsert(addr(1), Source::Mdns, None, T0);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(store.writes(), 0, "the write cannot succeed yet");
    std::fs::remove_dir(&tmp).expect("unblock");
    wait_for("the retried write", Duration::from_secs(20), || {
        // The file becomes visible a moment before the counter moves.
        file_addrs(&path) == vec!["127.0.0.1:1"] && store.writes() >= 1
    });
    assert_eq!(store.writes(), 1, "one successful write, no more");
}

// ---- properties ----

#[derive(Debug, Clone)]
enum Op {
    Upsert(u16, Source, Option<u8>, u64),
    Success(u16, Option<u8>, u64),
    Failure(u16, u64),
    Misbehaviour(u16, u64),
}

fn source() -> impl Strategy<Value = Source> {
    prop_oneof![
        Just(Source::Bootstrap),
        Just(Source::Mdns),
        Just(Source::Exchange),
        Just(Source::Grenache),
        Just(Source::Inbound),
        Just(Source::Manual),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let port = 0u16..24;
    let time = 0u64..20_000;
    prop_oneof![
        (
            port.clone(),
            source(),
            proptest::option::of(0u8..4),
            time.clone()
        )
            .prop_map(|(p, s, n, t)| Op::Upsert(p, s, n, t)),
        (port.clone(), proptest::option::of(0u8..4), time.clone())
            .prop_map(|(p, n, t)| Op::Success(p, n, t)),
        (port.clone(), time.clone()).prop_map(|(p, t)| Op::Failure(p, t)),
        (port, time).prop_map(|(p, t)| Op::Misbehaviour(p, t)),
    ]
}

fn apply(store: &dyn PeerStore, op: &Op) {
    match *op {
        Op::Upsert(p, s, n, t) => store.upsert(addr(p), s, n.map(node_id), T0 + t),
        Op::Success(p, n, t) => store.record_success(addr(p), n.map(node_id), T0 + t),
        Op::Failure(p, t) => store.record_failure(addr(p), T0 + t),
        Op::Misbehaviour(p, t) => store.record_misbehaviour(addr(p), T0 + t),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The table's invariants hold after any sequence of updates.
    #[test]
    fn invariants_hold(ops in proptest::collection::vec(op(), 0..200), max in 1usize..12, now in 0u64..25_000) {
        let store = MemoryPeerStore::new(max);
        for op in &ops {
            apply(&store, op);
            prop_assert!(store.len() <= max);
        }
        let now = T0 + now;
        let all = store.all();
        for r in &all {
            prop_assert!((SCORE_MIN..=SCORE_MAX).contains(&r.score));
            prop_assert!(r.first_seen <= r.last_seen);
        }
        prop_assert!(all.windows(2).all(|w| w[0].addr < w[1].addr));
        let best = store.best(usize::MAX, now);
        prop_assert!(best.iter().all(|r| !store.is_banned(r.addr, now)));
        prop_assert!(best.windows(2).all(|w| (w[1].score, w[0].addr) < (w[0].score, w[1].addr)));
        // Port 0 is the IP-wide entry: never dialable, and its ban covers every port.
        let ip_banned = all.iter().any(|r| r.addr.port() == 0 && r.is_banned(now));
        let dialable = all.iter().filter(|r| r.addr.port() != 0 && !r.is_banned(now) && !ip_banned);
        prop_assert_eq!(best.len(), dialable.count());
    }

    /// The file store follows the same rules as the memory store, and a
    /// reopen gives back exactly what was there.
    #[test]
    fn file_store_matches_memory_store_across_reopen(ops in proptest::collection::vec(op(), 0..60), max in 1usize..8) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(DEFAULT_FILE_NAME);
        let memory = MemoryPeerStore::new(max);
        let (split, rest) = ops.split_at(ops.len() / 2);
        {
            let file = FilePeerStore::open(&path, manual(max)).expect("open");
            for op in split {
                apply(&memory, op);
                apply(&file, op);
            }
            prop_assert_eq!(file.all(), memory.all());
        }
        let file = FilePeerStore::open(&path, manual(max)).expect("reopen");
        prop_assert_eq!(file.all(), memory.all());
        for op in rest {
            apply(&memory, op);
            apply(&file, op);
        }
        prop_assert_eq!(file.all(), memory.all());
    }
}
