//! `vector_clock`: vector clocks and Lamport clocks for the p2p-exchange
//! replicated log.
//!
//! # Main types
//!
//! - [`VectorClock`]: a map from node id to a counter. In the exchange it
//!   maps each origin to the highest contiguous `seq` delivered from it, and
//!   two nodes compare clocks to find what the other lacks
//!   ([`VectorClock::missing_from`]).
//! - [`Causality`]: the result of [`VectorClock::compare`]: `Before`,
//!   `After`, `Equal` or `Concurrent`.
//! - [`LamportClock`]: a single counter; [`LamportClock::tick`] stamps a new
//!   event with `1 + max(everything seen so far)`.
//!
//! Both are generic over nothing but the node id type (`K: Ord + Clone`),
//! use a `BTreeMap` so iteration and serialization are deterministic, and
//! implement serde. A vector clock serializes as a sequence of
//! `(node, counter)` pairs in node order, so it works with JSON even when
//! node ids are not strings, and with compact formats such as postcard.
//!
//! # The algebra
//!
//! A missing entry means counter `0`, and zero entries are never stored, so
//! two clocks are `==` exactly when they compare `Equal`. `a` happened
//! before `b` when every counter of `a` is `<=` the one in `b` and they
//! differ; this is a strict partial order, and [`VectorClock::merge`]
//! (per-node maximum) is the least upper bound. The crate's property tests
//! check these laws.
//!
//! # What it does not do
//!
//! No I/O, no clocks, no randomness, no networking: it is pure data. It does
//! not track which events a counter stands for; the caller keeps the events.
//!
//! # Example
//!
//! ```
//! use vector_clock::{Causality, LamportClock, VectorClock};
//!
//! // Two nodes, each delivering events.
//! let mut alice: VectorClock<&str> = VectorClock::new();
//! let mut bob = VectorClock::new();
//! alice.increment("alice");
//! alice.increment("alice");
//! bob.increment("bob");
//! assert_eq!(alice.compare(&bob), Causality::Concurrent);
//!
//! // Anti-entropy: what must alice send bob? Alice's events 1..=2.
//! let to_send: Vec<_> = bob.missing_from(&alice);
//! assert_eq!(to_send, vec![("alice", 1..=2)]);
//!
//! // After exchanging, both hold the least upper bound.
//! bob.merge(&alice);
//! assert_eq!(bob.compare(&alice), Causality::After);
//! assert!(bob.dominates(&alice));
//! assert_eq!(bob.get(&"alice"), 2);
//!
//! // Lamport stamps: 1 + the highest stamp seen.
//! let mut lamport = LamportClock::new();
//! lamport.observe(41);
//! assert_eq!(lamport.tick(), 42);
//! assert_eq!(lamport.now(), 42);
//! ```

use std::cmp::Ordering;
use std::collections::btree_map;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;
use std::ops::RangeInclusive;

use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How two vector clocks relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Causality {
    /// Every counter is `<=` the other's, and at least one is `<`.
    Before,
    /// Every counter is `>=` the other's, and at least one is `>`.
    After,
    /// All counters are equal.
    Equal,
    /// Some counter is `<` and another is `>`.
    Concurrent,
}

impl Causality {
    /// The relation seen from the other side (`Before` <-> `After`).
    pub fn reverse(self) -> Self {
        match self {
            Causality::Before => Causality::After,
            Causality::After => Causality::Before,
            other => other,
        }
    }

    /// The equivalent [`Ordering`], `None` for `Concurrent`.
    pub fn to_ordering(self) -> Option<Ordering> {
        match self {
            Causality::Before => Some(Ordering::Less),
            Causality::After => Some(Ordering::Greater),
            Causality::Equal => Some(Ordering::Equal),
            Causality::Concurrent => None,
        }
    }
}

/// A vector clock: one counter per node, absent counters are zero.
///
/// See the [crate docs](crate) for the laws it satisfies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VectorClock<K> {
    /// Never holds a zero counter, so structural equality is clock equality.
    counters: BTreeMap<K, u64>,
}

impl<K> Default for VectorClock<K> {
    fn default() -> Self {
        VectorClock {
            counters: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone> VectorClock<K> {
    /// An empty clock: every counter is zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter of `node` (zero if absent).
    pub fn get(&self, node: &K) -> u64 {
        self.counters.get(node).copied().unwrap_or(0)
    }

    /// Adds one to the counter of `node` and returns the new value
    /// (saturating at `u64::MAX`).
    pub fn increment(&mut self, node: K) -> u64 {
        let counter = self.counters.entry(node).or_insert(0);
        *counter = counter.saturating_add(1);
        *counter
    }

    /// Raises the counter of `node` to `value` if it is lower; never lowers
    /// it. Returns whether the counter changed.
    pub fn observe(&mut self, node: K, value: u64) -> bool {
        if value == 0 {
            return false;
        }
        match self.counters.entry(node) {
            btree_map::Entry::Vacant(entry) => {
                entry.insert(value);
                true
            }
            btree_map::Entry::Occupied(mut entry) => {
                if *entry.get() < value {
                    entry.insert(value);
                    true
                } else {
                    false
                }
            }
        }
    }

    /// The same as [`VectorClock::observe`]: takes the maximum, so a clock
    /// can only move forward.
    pub fn set(&mut self, node: K, value: u64) -> bool {
        self.observe(node, value)
    }

    /// Raises every counter to at least `other`'s (the per-node maximum, the
    /// least upper bound of the two clocks).
    pub fn merge(&mut self, other: &Self) {
        for (node, &value) in &other.counters {
            match self.counters.get_mut(node) {
                Some(counter) => *counter = (*counter).max(value),
                None => {
                    self.counters.insert(node.clone(), value);
                }
            }
        }
    }

    /// How `self` relates to `other`.
    pub fn compare(&self, other: &Self) -> Causality {
        let mut less = false;
        let mut greater = false;
        // Both maps iterate in node order: walk them together once. A node
        // only one side holds is a positive counter against zero.
        let mut mine = self.counters.iter().peekable();
        let mut theirs = other.counters.iter().peekable();
        loop {
            let (order, advance_mine, advance_theirs) = match (mine.peek(), theirs.peek()) {
                (None, None) => break,
                (Some(_), None) => (Ordering::Greater, true, false),
                (None, Some(_)) => (Ordering::Less, false, true),
                (Some((a, x)), Some((b, y))) => match a.cmp(b) {
                    Ordering::Less => (Ordering::Greater, true, false),
                    Ordering::Greater => (Ordering::Less, false, true),
                    Ordering::Equal => (x.cmp(y), true, true),
                },
            };
            if advance_mine {
                mine.next();
            }
            if advance_theirs {
                theirs.next();
            }
            match order {
                Ordering::Less => less = true,
                Ordering::Greater => greater = true,
                Ordering::Equal => {}
            }
            if less && greater {
                return Causality::Concurrent;
            }
        }
        match (less, greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }

    /// Whether every counter of `self` is `>=` the one in `other` (`After` or
    /// `Equal`): `self` has seen everything `other` has.
    pub fn dominates(&self, other: &Self) -> bool {
        other
            .counters
            .iter()
            .all(|(node, &value)| self.get(node) >= value)
    }

    /// Whether `self` happened strictly before `other`.
    pub fn happened_before(&self, other: &Self) -> bool {
        self.compare(other) == Causality::Before
    }

    /// Whether neither clock dominates the other.
    pub fn is_concurrent(&self, other: &Self) -> bool {
        self.compare(other) == Causality::Concurrent
    }

    /// For each node where `other` is ahead of `self`, the counters `other`
    /// has and `self` lacks: `self.get(node) + 1 ..= other.get(node)`, in node
    /// order.
    ///
    /// This is the anti-entropy helper: with `peer` the clock a peer sent,
    /// `peer.missing_from(&mine)` lists exactly the events to send it. It is
    /// empty exactly when `self` dominates `other`.
    pub fn missing_from(&self, other: &Self) -> Vec<(K, RangeInclusive<u64>)> {
        other
            .counters
            .iter()
            .filter_map(|(node, &theirs)| {
                let mine = self.get(node);
                (mine < theirs).then(|| (node.clone(), mine + 1..=theirs))
            })
            .collect()
    }

    /// The non-zero counters in node order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&K, u64)> + '_ {
        self.counters.iter().map(|(node, &value)| (node, value))
    }

    /// The number of non-zero counters.
    pub fn len(&self) -> usize {
        self.counters.len()
    }

    /// Whether every counter is zero.
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    /// The sum of all counters (for an origin -> seq clock: the number of
    /// events it covers), saturating.
    pub fn total(&self) -> u64 {
        self.counters
            .values()
            .fold(0u64, |sum, &value| sum.saturating_add(value))
    }
}

impl<K: Ord + Clone> PartialOrd for VectorClock<K> {
    /// The causal order: `None` for concurrent clocks.
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        self.compare(other).to_ordering()
    }
}

impl<K: Ord + Clone> FromIterator<(K, u64)> for VectorClock<K> {
    /// Builds a clock, taking the maximum when a node repeats.
    fn from_iter<I: IntoIterator<Item = (K, u64)>>(iter: I) -> Self {
        let mut clock = VectorClock::new();
        for (node, value) in iter {
            clock.observe(node, value);
        }
        clock
    }
}

impl<K: Ord + Clone> Extend<(K, u64)> for VectorClock<K> {
    /// Observes every pair (taking the maximum).
    fn extend<I: IntoIterator<Item = (K, u64)>>(&mut self, iter: I) {
        for (node, value) in iter {
            self.observe(node, value);
        }
    }
}

impl<'a, K: Ord + Clone> IntoIterator for &'a VectorClock<K> {
    type Item = (&'a K, u64);
    type IntoIter =
        std::iter::Map<btree_map::Iter<'a, K, u64>, fn((&'a K, &'a u64)) -> (&'a K, u64)>;

    fn into_iter(self) -> Self::IntoIter {
        self.counters.iter().map(|(node, &value)| (node, value))
    }
}

impl<K: Serialize> Serialize for VectorClock<K> {
    /// A sequence of `(node, counter)` pairs in node order.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.counters.len()))?;
        for pair in &self.counters {
            seq.serialize_element(&pair)?;
        }
        seq.end()
    }
}

impl<'de, K: Deserialize<'de> + Ord + Clone> Deserialize<'de> for VectorClock<K> {
    /// Accepts a sequence of `(node, counter)` pairs. Zero counters are
    /// dropped and a repeated node is an error, so every clock has one
    /// encoding. Nothing is preallocated from the declared length.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(ClockVisitor(PhantomData))
    }
}

struct ClockVisitor<K>(PhantomData<K>);

impl<'de, K: Deserialize<'de> + Ord + Clone> Visitor<'de> for ClockVisitor<K> {
    type Value = VectorClock<K>;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a sequence of (node, counter) pairs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut counters = BTreeMap::new();
        // A set, not a list: a hostile input of many zero pairs stays O(n log n).
        let mut seen_zero = BTreeSet::new();
        while let Some((node, value)) = seq.next_element::<(K, u64)>()? {
            if value == 0 {
                // Zero counters are not stored, but a repeat must still be caught.
                if counters.contains_key(&node) || seen_zero.contains(&node) {
                    return Err(serde::de::Error::custom("duplicate node in vector clock"));
                }
                seen_zero.insert(node);
                continue;
            }
            if seen_zero.contains(&node) || counters.insert(node, value).is_some() {
                return Err(serde::de::Error::custom("duplicate node in vector clock"));
            }
        }
        Ok(VectorClock { counters })
    }
}

/// A Lamport clock: the highest timestamp seen or issued.
///
/// Serializes as its current time (a plain `u64`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct LamportClock {
    time: u64,
}

impl LamportClock {
    /// A clock at time zero (no event seen).
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock that has already seen `time` (e.g. restored from a log).
    pub fn at(time: u64) -> Self {
        LamportClock { time }
    }

    /// The highest timestamp seen or issued so far.
    pub fn now(&self) -> u64 {
        self.time
    }

    /// Issues a timestamp for a new local event: one more than anything seen
    /// (saturating at `u64::MAX`).
    pub fn tick(&mut self) -> u64 {
        self.time = self.time.saturating_add(1);
        self.time
    }

    /// Records a timestamp seen on a received event; the next
    /// [`LamportClock::tick`] is greater than it.
    pub fn observe(&mut self, time: u64) {
        self.time = self.time.max(time);
    }
}
