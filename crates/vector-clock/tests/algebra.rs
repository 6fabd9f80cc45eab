//! Tests of `vector-clock`: table-driven cases of every operation, and
//! property tests of the algebra (merge is a commutative, associative,
//! idempotent least upper bound; happens-before is a strict partial order).

use proptest::prelude::*;
use vector_clock::{Causality, LamportClock, VectorClock};

type Clock = VectorClock<u8>;

/// `(clock a, clock b, how a relates to b)`.
type CompareCase = (&'static [(u8, u64)], &'static [(u8, u64)], Causality);

fn clock(pairs: &[(u8, u64)]) -> Clock {
    pairs.iter().copied().collect()
}

// ---- cases ----

#[test]
fn compare_cases() {
    let cases: &[CompareCase] = &[
        (&[], &[], Causality::Equal),
        (&[(1, 1)], &[(1, 1)], Causality::Equal),
        (&[(1, 0)], &[], Causality::Equal),
        (&[], &[(1, 1)], Causality::Before),
        (&[(1, 1)], &[], Causality::After),
        (&[(1, 1)], &[(1, 2)], Causality::Before),
        (&[(1, 1), (2, 5)], &[(1, 2), (2, 5)], Causality::Before),
        (
            &[(1, 1), (3, 1)],
            &[(1, 1), (2, 1), (3, 1)],
            Causality::Before,
        ),
        (&[(1, 2)], &[(2, 1)], Causality::Concurrent),
        (&[(1, 2), (2, 1)], &[(1, 1), (2, 2)], Causality::Concurrent),
        (&[(1, 2), (2, 1)], &[(1, 2), (3, 1)], Causality::Concurrent),
        (&[(3, 1)], &[(1, 1), (2, 1)], Causality::Concurrent),
        (&[(1, 1), (2, 1)], &[(1, 1)], Causality::After),
    ];
    for (a, b, expected) in cases {
        let (a, b) = (clock(a), clock(b));
        assert_eq!(a.compare(&b), *expected, "{a:?} vs {b:?}");
        assert_eq!(b.compare(&a), expected.reverse(), "{b:?} vs {a:?}");
        assert_eq!(a.partial_cmp(&b), expected.to_ordering());
        assert_eq!(
            a.dominates(&b),
            matches!(expected, Causality::After | Causality::Equal)
        );
        assert_eq!(a.happened_before(&b), *expected == Causality::Before);
        assert_eq!(a.is_concurrent(&b), *expected == Causality::Concurrent);
        assert_eq!(a == b, *expected == Causality::Equal);
    }
}

#[test]
fn get_increment_observe_set() {
    let mut c = Clock::new();
    assert!(c.is_empty());
    assert_eq!(c.get(&7), 0);
    assert_eq!(c.increment(7), 1);
    assert_eq!(c.increment(7), 2);
    assert!(c.observe(7, 5));
    assert!(!c.observe(7, 3), "observe never lowers");
    assert_eq!(c.get(&7), 5);
    assert!(!c.set(7, 4), "set takes the maximum too");
    assert!(c.set(7, 6));
    assert!(!c.observe(9, 0), "a zero counter is not stored");
    assert_eq!(c.len(), 1);
    assert!(c.observe(2, 3));
    assert_eq!(c.iter().collect::<Vec<_>>(), vec![(&2, 3), (&7, 6)]);
    assert_eq!((&c).into_iter().count(), 2);
    assert_eq!(c.total(), 9);

    let mut top = clock(&[(1, u64::MAX)]);
    assert_eq!(top.increment(1), u64::MAX, "saturates");
}

#[test]
fn merge_takes_the_maximum_per_node() {
    let mut a = clock(&[(1, 3), (2, 1)]);
    a.merge(&clock(&[(2, 4), (3, 2)]));
    assert_eq!(a, clock(&[(1, 3), (2, 4), (3, 2)]));
    let mut extended = clock(&[(1, 1)]);
    extended.extend([(1, 4), (2, 2), (1, 2)]);
    assert_eq!(extended, clock(&[(1, 4), (2, 2)]));
}

#[test]
fn missing_from_lists_what_the_other_side_must_send() {
    let peer = clock(&[(1, 3), (2, 7), (4, 1)]);
    let mine = clock(&[(1, 5), (2, 2), (3, 4)]);
    // What I must send the peer: the events it lacks.
    assert_eq!(peer.missing_from(&mine), vec![(1, 4..=5), (3, 1..=4)]);
    // What the peer must send me.
    assert_eq!(mine.missing_from(&peer), vec![(2, 3..=7), (4, 1..=1)]);
    assert!(mine.missing_from(&mine).is_empty());
    assert!(mine.missing_from(&Clock::new()).is_empty());
}

#[test]
fn json_form_is_a_list_of_pairs_in_node_order() {
    let c: VectorClock<String> = [("bob".to_owned(), 2), ("alice".to_owned(), 1)]
        .into_iter()
        .collect();
    let json = serde_json::to_string(&c).expect("serialize");
    assert_eq!(json, r#"[["alice",1],["bob",2]]"#);
    let back: VectorClock<String> = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, c);
    // Non-string node ids work in JSON too.
    let bytes_keyed: VectorClock<[u8; 2]> = [([1, 2], 3)].into_iter().collect();
    let json = serde_json::to_string(&bytes_keyed).expect("serialize");
    assert_eq!(json, "[[[1,2],3]]");
    assert_eq!(
        serde_json::from_str::<VectorClock<[u8; 2]>>(&json).expect("deserialize"),
        bytes_keyed
    );
}

#[test]
fn decoding_is_canonical_and_rejects_duplicates() {
    let zeroes: Clock = serde_json::from_str("[[1,0],[2,3]]").expect("zero dropped");
    assert_eq!(zeroes, clock(&[(2, 3)]));
    assert_eq!(zeroes.len(), 1);
    for dup in [
        "[[1,2],[1,3]]",
        "[[1,0],[1,3]]",
        "[[1,3],[1,0]]",
        "[[1,0],[1,0]]",
    ] {
        let err = serde_json::from_str::<Clock>(dup).expect_err(dup);
        assert!(err.to_string().contains("duplicate node"), "{err}");
    }
    assert!(serde_json::from_str::<Clock>("{}").is_err());
    assert!(serde_json::from_str::<Clock>("[[1,-1]]").is_err());
}

#[test]
fn postcard_round_trip_and_hostile_lengths() {
    let c = clock(&[(1, 1), (200, u64::MAX)]);
    let bytes = postcard::to_allocvec(&c).expect("encode");
    assert_eq!(postcard::from_bytes::<Clock>(&bytes).expect("decode"), c);
    // A length prefix claiming billions of pairs must fail cleanly, not allocate.
    let hostile = [0xff, 0xff, 0xff, 0xff, 0x0f, 1, 1];
    assert!(postcard::from_bytes::<Clock>(&hostile).is_err());
}

#[test]
fn lamport_ticks_past_everything_seen() {
    let mut l = LamportClock::new();
    assert_eq!(l.now(), 0);
    assert_eq!(l.tick(), 1);
    assert_eq!(l.tick(), 2);
    l.observe(10);
    assert_eq!(l.now(), 10);
    l.observe(3);
    assert_eq!(l.now(), 10, "observe never goes back");
    assert_eq!(l.tick(), 11);
    assert_eq!(LamportClock::at(41).tick(), 42);
    assert_eq!(LamportClock::at(u64::MAX).tick(), u64::MAX);
    assert_eq!(serde_json::to_string(&l).expect("serialize"), "11");
    assert_eq!(
        serde_json::from_str::<LamportClock>("11").expect("deserialize"),
        l
    );
}

// ---- properties ----

fn any_clock() -> impl Strategy<Value = Clock> {
    proptest::collection::vec((0u8..6, 0u64..5), 0..8).prop_map(|pairs| pairs.into_iter().collect())
}

fn merged(a: &Clock, b: &Clock) -> Clock {
    let mut m = a.clone();
    m.merge(b);
    m
}

/// A clock strictly after `base`: `base` merged with `extra`, plus one
/// increment, so chains `a < b < c` actually occur.
fn after(base: &Clock, extra: &Clock, node: u8) -> Clock {
    let mut c = merged(base, extra);
    c.increment(node);
    c
}

/// The reference definition of `<=`: every counter, node by node.
fn le_by_definition(a: &Clock, b: &Clock) -> bool {
    (0u8..=255).all(|n| a.get(&n) <= b.get(&n))
}

proptest! {
    #[test]
    fn merge_is_commutative(a in any_clock(), b in any_clock()) {
        prop_assert_eq!(merged(&a, &b), merged(&b, &a));
    }

    #[test]
    fn merge_is_associative(a in any_clock(), b in any_clock(), c in any_clock()) {
        prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
    }

    #[test]
    fn merge_is_idempotent(a in any_clock(), b in any_clock()) {
        prop_assert_eq!(merged(&a, &a), a.clone());
        let m = merged(&a, &b);
        prop_assert_eq!(merged(&m, &b), m);
    }

    #[test]
    fn merge_is_the_least_upper_bound(a in any_clock(), b in any_clock(), c in any_clock()) {
        let m = merged(&a, &b);
        prop_assert!(m.dominates(&a));
        prop_assert!(m.dominates(&b));
        // Any upper bound of a and b is above the merge.
        let upper = merged(&m, &c);
        prop_assert!(upper.dominates(&m));
        if c.dominates(&a) && c.dominates(&b) {
            prop_assert!(c.dominates(&m));
        }
        // And the merge has no counter that neither input has.
        for (node, value) in m.iter() {
            prop_assert!(value == a.get(node) || value == b.get(node));
        }
    }

    #[test]
    fn compare_agrees_with_the_definition(a in any_clock(), b in any_clock()) {
        let le = le_by_definition(&a, &b);
        let ge = le_by_definition(&b, &a);
        let expected = match (le, ge) {
            (true, true) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (false, false) => Causality::Concurrent,
        };
        prop_assert_eq!(a.compare(&b), expected);
        prop_assert_eq!(b.compare(&a), expected.reverse());
        prop_assert_eq!(a.dominates(&b), ge);
        prop_assert_eq!(a == b, expected == Causality::Equal);
    }

    #[test]
    fn happens_before_is_irreflexive_and_asymmetric(a in any_clock(), b in any_clock()) {
        prop_assert!(!a.happened_before(&a));
        prop_assert!(!(a.happened_before(&b) && b.happened_before(&a)));
    }

    #[test]
    fn happens_before_is_transitive(
        a in any_clock(), x in any_clock(), y in any_clock(), n in 0u8..6, m in 0u8..6,
        other in any_clock(),
    ) {
        let b = after(&a, &x, n);
        let c = after(&b, &y, m);
        prop_assert!(a.happened_before(&b));
        prop_assert!(b.happened_before(&c));
        prop_assert!(a.happened_before(&c));
        // Random triples too: whenever the premise holds, so does the conclusion.
        if a.happened_before(&other) && other.happened_before(&c) {
            prop_assert!(a.happened_before(&c));
        }
    }

    #[test]
    fn increment_moves_strictly_forward(a in any_clock(), n in 0u8..6) {
        let mut b = a.clone();
        b.increment(n);
        prop_assert_eq!(a.compare(&b), Causality::Before);
        prop_assert_eq!(b.get(&n), a.get(&n) + 1);
    }

    #[test]
    fn missing_ranges_bring_self_up_to_the_merge(a in any_clock(), b in any_clock()) {
        let missing = a.missing_from(&b);
        prop_assert_eq!(missing.is_empty(), a.dominates(&b));
        let mut filled = a.clone();
        for (node, range) in &missing {
            prop_assert_eq!(*range.start(), a.get(node) + 1);
            prop_assert_eq!(*range.end(), b.get(node));
            filled.observe(*node, *range.end());
        }
        prop_assert_eq!(filled, merged(&a, &b));
        prop_assert!(missing.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn serde_round_trips(a in any_clock()) {
        let json = serde_json::to_string(&a).expect("json");
        prop_assert_eq!(serde_json::from_str::<Clock>(&json).expect("json back"), a.clone());
        let bytes = postcard::to_allocvec(&a).expect("postcard");
        prop_assert_eq!(postcard::from_bytes::<Clock>(&bytes).expect("postcard back"), a);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = postcard::from_bytes::<Clock>(&bytes);
    }

    #[test]
    fn lamport_stamps_exceed_everything_observed(seen in proptest::collection::vec(0u64..1000, 0..20)) {
        let mut l = LamportClock::new();
        let mut last = 0;
        for s in &seen {
            l.observe(*s);
            let t = l.tick();
            prop_assert!(t > *s);
            prop_assert!(t > last);
            last = t;
        }
        prop_assert_eq!(l.now(), last);
    }
}
