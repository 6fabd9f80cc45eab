//! The in-memory table both stores share: scoring, bans and eviction.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::{
    BAN_BASE_SECS, BAN_MAX_SECS, BAN_THRESHOLD, FAILURE_PENALTY, MAX_NODE_ID_LEN,
    MISBEHAVIOUR_PENALTY, PeerRecord, RECENT_SUCCESS_SECS, SCORE_MAX, SCORE_MIN, SUCCESS_REWARD,
    Source,
};

/// A stored row: the public record plus what only the table needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    #[serde(flatten)]
    pub(crate) record: PeerRecord,
    /// The time of the last success, which protects the entry from eviction.
    #[serde(default)]
    pub(crate) last_success: Option<u64>,
}

/// The bounded peer table.
#[derive(Debug)]
pub(crate) struct PeerTable {
    entries: BTreeMap<SocketAddr, Entry>,
    max_entries: usize,
}

impl PeerTable {
    /// An empty table holding at most `max_entries` (at least 1) addresses.
    pub(crate) fn new(max_entries: usize) -> Self {
        PeerTable {
            entries: BTreeMap::new(),
            max_entries: max_entries.max(1),
        }
    }

    /// A table from loaded entries; when there are more than `max_entries`,
    /// the lowest-scored are dropped (the file may come from a larger config).
    pub(crate) fn from_entries(max_entries: usize, loaded: Vec<Entry>) -> Self {
        let mut table = PeerTable::new(max_entries);
        for entry in loaded {
            table.entries.insert(entry.record.addr, entry);
        }
        while table.entries.len() > table.max_entries {
            let worst = table
                .entries
                .values()
                .min_by(|a, b| eviction_key(a).cmp(&eviction_key(b)))
                .map(|entry| entry.record.addr);
            match worst {
                Some(addr) => {
                    table.entries.remove(&addr);
                }
                None => break,
            }
        }
        table
    }

    /// The number of stored addresses.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Every entry in address order.
    pub(crate) fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// See [`crate::PeerStore::upsert`]. Returns whether the table changed.
    pub(crate) fn upsert(
        &mut self,
        addr: SocketAddr,
        source: Source,
        node_id: Option<String>,
        now: u64,
    ) -> bool {
        let is_new = !self.entries.contains_key(&addr);
        let Some(entry) = self.get_or_insert(addr, source, now) else {
            return false;
        };
        let record = &mut entry.record;
        let before = record.clone();
        record.last_seen = record.last_seen.max(now);
        set_node_id(record, node_id);
        if source.is_configured() && !record.source.is_configured() {
            record.source = source;
        }
        is_new || *record != before
    }

    /// See [`crate::PeerStore::record_success`].
    pub(crate) fn record_success(
        &mut self,
        addr: SocketAddr,
        node_id: Option<String>,
        now: u64,
    ) -> bool {
        let Some(entry) = self.get_or_insert(addr, Source::Inbound, now) else {
            return false;
        };
        entry.last_success = Some(entry.last_success.map_or(now, |t| t.max(now)));
        let record = &mut entry.record;
        record.successes = record.successes.saturating_add(1);
        record.score = adjust(record.score, SUCCESS_REWARD);
        record.last_seen = record.last_seen.max(now);
        set_node_id(record, node_id);
        true
    }

    /// See [`crate::PeerStore::record_failure`].
    pub(crate) fn record_failure(&mut self, addr: SocketAddr) -> bool {
        let Some(entry) = self.entries.get_mut(&addr) else {
            return false;
        };
        let record = &mut entry.record;
        record.failures = record.failures.saturating_add(1);
        record.score = adjust(record.score, -FAILURE_PENALTY);
        true
    }

    /// See [`crate::PeerStore::record_misbehaviour`].
    pub(crate) fn record_misbehaviour(&mut self, addr: SocketAddr, now: u64) -> bool {
        let Some(entry) = self.get_or_insert(addr, Source::Inbound, now) else {
            return false;
        };
        let record = &mut entry.record;
        record.misbehaviour = record.misbehaviour.saturating_add(1);
        record.score = adjust(record.score, -MISBEHAVIOUR_PENALTY);
        record.last_seen = record.last_seen.max(now);
        if let Some(duration) = ban_duration(record.misbehaviour) {
            let until = now.saturating_add(duration);
            record.banned_until = Some(record.banned_until.map_or(until, |t| t.max(until)));
        }
        true
    }

    /// See [`crate::PeerStore::is_banned`].
    /// An address is banned if its own entry is, or its IP's ([`crate::ip_wide`]).
    pub(crate) fn is_banned(&self, addr: SocketAddr, now: u64) -> bool {
        let banned = |addr: &SocketAddr| {
            self.entries
                .get(addr)
                .is_some_and(|entry| entry.record.is_banned(now))
        };
        banned(&addr) || banned(&crate::ip_wide(addr.ip()))
    }

    /// See [`crate::PeerStore::best`].
    pub(crate) fn best(&self, limit: usize, now: u64) -> Vec<PeerRecord> {
        let mut unbanned: Vec<&PeerRecord> = self
            .entries
            .values()
            .map(|entry| &entry.record)
            // IP-wide entries (port 0) cannot be dialled.
            .filter(|record| record.addr.port() != 0 && !self.is_banned(record.addr, now))
            .collect();
        unbanned.sort_by_key(|record| (std::cmp::Reverse(record.score), record.addr));
        unbanned.into_iter().take(limit).cloned().collect()
    }

    /// See [`crate::PeerStore::all`].
    pub(crate) fn all(&self) -> Vec<PeerRecord> {
        self.entries
            .values()
            .map(|entry| entry.record.clone())
            .collect()
    }

    /// See [`crate::PeerStore::get`].
    pub(crate) fn get(&self, addr: SocketAddr) -> Option<PeerRecord> {
        self.entries.get(&addr).map(|entry| entry.record.clone())
    }

    /// The entry of `addr`, inserted if it is new and there is room (after
    /// evicting one entry if needed); `None` if the table is full of entries
    /// that may not be evicted.
    fn get_or_insert(&mut self, addr: SocketAddr, source: Source, now: u64) -> Option<&mut Entry> {
        if !self.entries.contains_key(&addr) {
            if self.entries.len() >= self.max_entries && !self.evict_one(now) {
                tracing::debug!(%addr, "peer table full of protected entries, address not stored");
                return None;
            }
            let record = PeerRecord {
                addr,
                node_id: None,
                first_seen: now,
                last_seen: now,
                successes: 0,
                failures: 0,
                misbehaviour: 0,
                score: 0,
                banned_until: None,
                source,
            };
            self.entries.insert(
                addr,
                Entry {
                    record,
                    last_success: None,
                },
            );
        }
        self.entries.get_mut(&addr)
    }

    /// Evicts the worst evictable entry; returns whether one was evicted.
    fn evict_one(&mut self, now: u64) -> bool {
        let victim = self
            .entries
            .values()
            .filter(|entry| is_evictable(entry, now))
            .min_by(|a, b| eviction_key(a).cmp(&eviction_key(b)))
            .map(|entry| entry.record.addr);
        match victim {
            Some(addr) => {
                tracing::debug!(%addr, "peer table full, evicting the worst-scored entry");
                self.entries.remove(&addr);
                true
            }
            None => false,
        }
    }
}

/// Entries with a recent success or an active ban are never evicted.
fn is_evictable(entry: &Entry, now: u64) -> bool {
    let recently_good = entry
        .last_success
        .is_some_and(|t| now.saturating_sub(t) < RECENT_SUCCESS_SECS);
    !recently_good && !entry.record.is_banned(now)
}

/// The smallest key is evicted first: lowest score, then least recently
/// seen, then the highest address.
fn eviction_key(entry: &Entry) -> (i32, u64, std::cmp::Reverse<SocketAddr>) {
    (
        entry.record.score,
        entry.record.last_seen,
        std::cmp::Reverse(entry.record.addr),
    )
}

/// Replaces the stored node id with a given, plausibly sized one.
fn set_node_id(record: &mut PeerRecord, node_id: Option<String>) {
    match node_id {
        Some(id) if id.len() <= MAX_NODE_ID_LEN => record.node_id = Some(id),
        Some(id) => {
            tracing::debug!(addr = %record.addr, len = id.len(), "oversized node id ignored");
        }
        None => {}
    }
}

/// Applies `delta` to `score` and clamps it to the allowed range.
fn adjust(score: i32, delta: i32) -> i32 {
    score.saturating_add(delta).clamp(SCORE_MIN, SCORE_MAX)
}

/// How long the `count`-th misbehaviour bans an address, if at all.
pub(crate) fn ban_duration(count: u32) -> Option<u64> {
    let excess = count.checked_sub(BAN_THRESHOLD)?;
    // 2^17 * 60 s is already far above the cap, so the shift cannot overflow.
    let doubled = BAN_BASE_SECS << excess.min(17);
    Some(doubled.min(BAN_MAX_SECS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ban_durations_double_up_to_the_cap() {
        assert_eq!(ban_duration(0), None);
        assert_eq!(ban_duration(BAN_THRESHOLD - 1), None);
        assert_eq!(ban_duration(BAN_THRESHOLD), Some(BAN_BASE_SECS));
        assert_eq!(ban_duration(BAN_THRESHOLD + 1), Some(2 * BAN_BASE_SECS));
        assert_eq!(ban_duration(BAN_THRESHOLD + 2), Some(4 * BAN_BASE_SECS));
        assert_eq!(ban_duration(BAN_THRESHOLD + 20), Some(BAN_MAX_SECS));
        assert_eq!(ban_duration(u32::MAX), Some(BAN_MAX_SECS));
    }

    #[test]
    fn score_is_clamped() {
        assert_eq!(adjust(SCORE_MAX, SUCCESS_REWARD), SCORE_MAX);
        assert_eq!(adjust(SCORE_MIN, -MISBEHAVIOUR_PENALTY), SCORE_MIN);
        assert_eq!(adjust(0, SUCCESS_REWARD), SUCCESS_REWARD);
    }
}
