//! `peer_storage`: the persisted peer table of a p2p-exchange node.
//!
//! Every node remembers the peers it has heard of and how they behaved, so
//! that after a restart it can reconnect to good peers first and keep
//! refusing the bad ones. This crate holds that table.
//!
//! # Main types
//!
//! - [`PeerStore`]: the small trait the transport and discovery code against.
//! - [`FilePeerStore`]: the real store, a JSON file (by default
//!   [`DEFAULT_FILE_NAME`]) written atomically (temporary file, fsync, rename,
//!   fsync of the directory) and debounced by a background writer thread.
//! - [`MemoryPeerStore`]: the same table without a file, for tests.
//! - [`PeerRecord`] and [`Source`]: one row of the table and where it came from.
//!
//! # Rules of the table
//!
//! - **Scoring.** A new peer starts at score `0`. Every success adds
//!   [`SUCCESS_REWARD`], every failure subtracts [`FAILURE_PENALTY`], every
//!   misbehaviour subtracts [`MISBEHAVIOUR_PENALTY`]; after each step the score
//!   is clamped to `[SCORE_MIN, SCORE_MAX]`. Because of the clamp the score
//!   reflects recent behaviour: a peer that was good for a month and then fails
//!   `SCORE_MAX / FAILURE_PENALTY` (20) times in a row is back at zero. In
//!   short: `score = clamp(score + delta, SCORE_MIN, SCORE_MAX)` per event,
//!   with `delta` = `+10` (success), `-5` (failure), `-25` (misbehaviour).
//! - **Bans.** From the [`BAN_THRESHOLD`]-th misbehaviour on, every further
//!   misbehaviour bans the address for `BAN_BASE_SECS * 2^(n - BAN_THRESHOLD)`
//!   seconds (`n` = misbehaviour count), at most [`BAN_MAX_SECS`]. A ban never
//!   shortens an existing one.
//! - **Bounds.** The table holds at most `max_entries` addresses. Inserting a
//!   new one into a full table evicts the lowest-scored entry (ties: the
//!   least recently seen, then the highest address), but never an entry with
//!   a success in the last [`RECENT_SUCCESS_SECS`] seconds nor one that is
//!   banned right now (so flooding the table cannot lift a ban). If nothing
//!   can be evicted the new address is not stored.
//! - **Whole IPs.** An entry whose port is `0` ([`ip_wide`]) stands for
//!   every port of its IP: while it is banned, every address of that IP is
//!   ([`PeerStore::is_banned`]); it is never returned by [`PeerStore::best`].
//! - **Order.** [`PeerStore::best`] returns unbanned peers by score, highest
//!   first, ties broken by address; [`PeerStore::all`] returns every entry in
//!   address order. Both are deterministic.
//!
//! # File format
//!
//! Pretty-printed JSON, `{"version": 1, "peers": [...]}`, one object per
//! entry in address order with the fields of [`PeerRecord`] (`source` in
//! lowercase, `addr` as `"ip:port"`) plus `last_success` (unix seconds or
//! `null`), which the eviction rule needs. A file of another version is
//! treated as corrupt (set aside, never overwritten in place).
//!
//! Time is passed in (`now`, unix seconds), so tests control it; only the
//! debounce of [`FilePeerStore`] uses the real monotonic clock.
//!
//! # What it does not do
//!
//! It opens no sockets and knows nothing of the wire protocol: it does not
//! verify node ids (they are stored as given) and it bans socket addresses
//! and, through entries with port 0 ([`ip_wide`]), whole IPs, never keys.
//! Deciding *when* a peer succeeded, failed or misbehaved is the caller's
//! job.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use peer_storage::{Config, FilePeerStore, PeerStore, Source};
//!
//! # fn main() -> Result<(), peer_storage::Error> {
//! let dir = std::env::temp_dir().join(format!(
//!     "peer-storage-doctest-{}-{}",
//!     std::process::id(),
//!     std::time::SystemTime::now()
//!         .duration_since(std::time::UNIX_EPOCH)
//!         .map(|d| d.as_nanos())
//!         .unwrap_or_default()
//! ));
//! let path = dir.join(peer_storage::DEFAULT_FILE_NAME);
//! let config = Config { max_entries: 100, debounce: Duration::from_millis(200) };
//!
//! let addr = "127.0.0.1:3001".parse().expect("valid address");
//! let now = 1_700_000_000;
//! {
//!     let store = FilePeerStore::open(&path, config.clone())?;
//!     store.upsert(addr, Source::Bootstrap, None, now);
//!     store.record_success(addr, Some("ab".repeat(32)), now + 1);
//!     store.flush()?; // dropping the store would flush too
//! }
//!
//! let store = FilePeerStore::open(&path, config)?;
//! let best = store.best(10, now + 2);
//! assert_eq!(best.len(), 1);
//! assert_eq!(best[0].addr, addr);
//! assert_eq!(best[0].successes, 1);
//! assert_eq!(best[0].score, peer_storage::SUCCESS_REWARD);
//! # drop(store);
//! # let _ = std::fs::remove_dir_all(&dir);
//! # Ok(())
//! # }
//! ```

mod file;
mod memory;
mod table;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use file::FilePeerStore;
pub use memory::MemoryPeerStore;

/// The default file name of the peer table inside a node's data directory.
pub const DEFAULT_FILE_NAME: &str = ".peers.json";

/// The default bound on the number of addresses in the table.
pub const DEFAULT_MAX_ENTRIES: usize = 1000;

/// The default debounce of [`FilePeerStore`] writes.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_secs(1);

/// The lowest score a peer can have.
pub const SCORE_MIN: i32 = -100;
/// The highest score a peer can have.
pub const SCORE_MAX: i32 = 100;
/// Added to the score on every success.
pub const SUCCESS_REWARD: i32 = 10;
/// Subtracted from the score on every failure.
pub const FAILURE_PENALTY: i32 = 5;
/// Subtracted from the score on every misbehaviour.
pub const MISBEHAVIOUR_PENALTY: i32 = 25;

/// The misbehaviour count from which an address is banned.
pub const BAN_THRESHOLD: u32 = 3;
/// The length of the first ban, in seconds; each further misbehaviour doubles it.
pub const BAN_BASE_SECS: u64 = 60;
/// The longest ban, in seconds (one day).
pub const BAN_MAX_SECS: u64 = 24 * 60 * 60;
/// An entry with a success this recent (in seconds) is never evicted.
pub const RECENT_SUCCESS_SECS: u64 = 60 * 60;
/// The longest node id stored (a 32-byte key in hex is 64 characters);
/// longer ones are ignored, so a caller bug cannot bloat the file.
pub const MAX_NODE_ID_LEN: usize = 128;

/// The key under which misbehaviour of a whole IP is recorded: `ip` (IPv4-mapped
/// IPv6 addresses as IPv4) with port `0`.
///
/// A peer that misbehaves can reconnect from another source port and claim another
/// listen port, so callers record its misbehaviour under this key as well as under
/// its address; once this key is banned, [`PeerStore::is_banned`] holds for every
/// port of the IP. Such entries are never returned by [`PeerStore::best`].
pub fn ip_wide(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip.to_canonical(), 0)
}

/// Where the node learnt of a peer address.
///
/// Serialized in lowercase (`"bootstrap"`, `"mdns"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Configured in `BOOTSTRAP_PEERS`.
    Bootstrap,
    /// Found by mDNS on the local network.
    Mdns,
    /// Learnt from another peer (peer exchange).
    Exchange,
    /// Found through a Grenache Grape.
    Grenache,
    /// The peer connected to us.
    Inbound,
    /// Added by the operator.
    Manual,
}

impl Source {
    /// The lowercase name used in the file and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Bootstrap => "bootstrap",
            Source::Mdns => "mdns",
            Source::Exchange => "exchange",
            Source::Grenache => "grenache",
            Source::Inbound => "inbound",
            Source::Manual => "manual",
        }
    }

    /// Whether the operator configured this address (bootstrap or manual).
    ///
    /// An operator-given source replaces a discovered one on
    /// [`PeerStore::upsert`]; otherwise the first source is kept.
    pub fn is_configured(self) -> bool {
        matches!(self, Source::Bootstrap | Source::Manual)
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of the peer table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// The address we dial (or that dialled us).
    pub addr: SocketAddr,
    /// The hex of the peer's 32-byte ed25519 public key, once known (at
    /// most [`MAX_NODE_ID_LEN`] characters).
    pub node_id: Option<String>,
    /// When the address was first stored (unix seconds).
    pub first_seen: u64,
    /// When the address was last announced or contacted successfully (unix seconds).
    pub last_seen: u64,
    /// Successful contacts (saturating).
    pub successes: u32,
    /// Failed contacts (saturating).
    pub failures: u32,
    /// Misbehaviours: undecodable frames, bad signatures, protocol violations (saturating).
    pub misbehaviour: u32,
    /// The score, see the crate docs for the formula.
    pub score: i32,
    /// The address is banned until this time (unix seconds), if set and in the future.
    pub banned_until: Option<u64>,
    /// Where we learnt of the address.
    pub source: Source,
}

impl PeerRecord {
    /// Whether the address is banned at `now` (unix seconds).
    pub fn is_banned(&self, now: u64) -> bool {
        self.banned_until.is_some_and(|until| now < until)
    }
}

/// The peer table: what the transport and discovery read and update.
///
/// All methods take `&self` (implementations use interior mutability) and
/// never fail except [`PeerStore::flush`]: updating the table is in memory,
/// persistence happens in the background.
pub trait PeerStore: Send + Sync + 'static {
    /// Stores `addr` if it is new, or refreshes it: `last_seen` moves forward
    /// to `now`, a given `node_id` replaces the stored one (unless longer than
    /// [`MAX_NODE_ID_LEN`], then it is ignored), and a configured
    /// source ([`Source::is_configured`]) replaces a discovered one.
    fn upsert(&self, addr: SocketAddr, source: Source, node_id: Option<String>, now: u64);
    /// Records a successful contact (a completed handshake). Stores the address
    /// as [`Source::Inbound`] if it is unknown.
    fn record_success(&self, addr: SocketAddr, node_id: Option<String>, now: u64);
    /// Records a failed contact (dial error, handshake timeout). Unknown
    /// addresses are ignored.
    fn record_failure(&self, addr: SocketAddr, now: u64);
    /// Records a misbehaviour; repeated misbehaviour bans the address for an
    /// exponentially growing time (see the crate docs). Stores the address as
    /// [`Source::Inbound`] if it is unknown.
    fn record_misbehaviour(&self, addr: SocketAddr, now: u64);
    /// Whether `addr` is banned at `now`: its own entry is, or its IP's entry
    /// ([`ip_wide`]) is.
    fn is_banned(&self, addr: SocketAddr, now: u64) -> bool;
    /// Up to `limit` unbanned, dialable peers (no [`ip_wide`] entries), best score
    /// first, ties by address.
    fn best(&self, limit: usize, now: u64) -> Vec<PeerRecord>;
    /// Every entry, banned or not, in address order.
    fn all(&self) -> Vec<PeerRecord>;
    /// Writes the table now (a no-op for in-memory stores).
    fn flush(&self) -> Result<(), Error>;
    /// The entry of `addr`, if stored.
    fn get(&self, addr: SocketAddr) -> Option<PeerRecord> {
        self.all().into_iter().find(|record| record.addr == addr)
    }
}

/// Settings of a [`FilePeerStore`] (and the bound of a [`MemoryPeerStore`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The most addresses the table holds; at least 1.
    pub max_entries: usize,
    /// The shortest time between two writes of the file while it is dirty.
    pub debounce: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_entries: DEFAULT_MAX_ENTRIES,
            debounce: DEFAULT_DEBOUNCE,
        }
    }
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration cannot be used.
    #[error("invalid peer storage config: {0}")]
    InvalidConfig(&'static str),
    /// The path has no file name.
    #[error("peer storage path has no file name: {0}")]
    InvalidPath(PathBuf),
    /// Reading, writing or renaming a file failed.
    #[error("peer storage i/o error on {path}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The table could not be encoded as JSON.
    #[error("cannot encode the peer table: {0}")]
    Encode(#[from] serde_json::Error),
    /// The background writer thread could not be started.
    #[error("cannot start the peer storage writer thread: {0}")]
    Thread(#[source] std::io::Error),
}
