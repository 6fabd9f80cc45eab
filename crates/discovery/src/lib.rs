//! `discovery`: how a p2p-exchange node finds candidate peers.
//!
//! Every strategy implements the small [`Discovery`] trait: it runs as a task, pushes
//! [`Candidate`] addresses into a bounded channel, and ends when its shutdown token is
//! cancelled. The node merges the candidates of all strategies and lets the transport dial
//! them (the transport owns retries, backoff and the peer limit).
//!
//! Strategies:
//! - [`Bootstrap`]: the `BOOTSTRAP_PEERS` list (`host:port`, hostnames resolved, re-resolved
//!   periodically).
//! - [`Persisted`]: the best-scored peers of a [`peer_storage::PeerStore`], so a restarted node
//!   reconnects without any bootstrap list.
//! - [`Mdns`]: advertises `_p2p-exchange._tcp.local.` with the node id and network id in TXT
//!   records and browses for nodes of the same network, on configured interfaces only
//!   ([`MdnsConfig`]).
//! - [`Grenache`]: announces the P2P port on a Grape under `p2p-exchange/<NETWORK_ID>` and looks
//!   it up periodically; real with the `grenache` feature, a stub that returns
//!   [`Error::GrenacheNotCompiledIn`] without ([`grenache_available`] tells which).
//!   [`rpc_service_name`] and [`rpc_member_service_name`] name the Grenache RPC endpoints of the
//!   hybrid mode; the client and server themselves are in the `discovery-grenache` crate
//!   (re-exported as `discovery::discovery_grenache` with the feature).
//! - [`Fixed`]: a fixed list, for tests and manual peers.
//!
//! Peer exchange is not a task but helpers the node calls when a `Peers` message arrives
//! ([`pex::filter`]) or is asked for ([`pex::shareable`]).
//!
//! What it does not do: no dialing, no connection limits, no retries of failed peers (that is
//! `transport`), no deduplication across strategies (the node does that), no scoring (that is
//! `peer-storage`).
//!
//! # Example
//!
//! ```
//! use discovery::{Bootstrap, Candidate, Discovery};
//! use tokio::sync::mpsc;
//! use tokio_util::sync::CancellationToken;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), discovery::Error> {
//! let bootstrap = Bootstrap::parse("127.0.0.1:3001, localhost:3002")?;
//! let (sink, mut candidates) = mpsc::channel::<Candidate>(64);
//! let shutdown = CancellationToken::new();
//! let task = discovery::spawn(Box::new(bootstrap), sink, shutdown.clone());
//!
//! let first = candidates.recv().await.expect("a candidate");
//! assert_eq!(first.addr, "127.0.0.1:3001".parse().unwrap());
//! assert_eq!(first.source, peer_storage::Source::Bootstrap);
//! let second = candidates.recv().await.expect("localhost resolves");
//! assert_eq!(second.addr.port(), 3002);
//!
//! shutdown.cancel();
//! task.await.expect("task ran")?;
//! # Ok(())
//! # }
//! ```

mod bootstrap;
mod error;
mod fixed;
mod grenache;
mod mdns;
mod persisted;
pub mod pex;

pub use bootstrap::Bootstrap;
pub use error::{Error, Result};
pub use fixed::Fixed;
pub use grenache::{
    Grenache, GrenacheConfig, grenache_available, p2p_service_name, rpc_member_service_name,
    rpc_service_name,
};
pub use mdns::{ALL_INTERFACES, Mdns, MdnsConfig, SERVICE_TYPE, TXT_NETWORK_ID, TXT_NODE_ID};
pub use persisted::Persisted;

/// The Grenache client crate, for the RPC fallback (only with the `grenache` feature).
#[cfg(feature = "grenache")]
pub use discovery_grenache;

use peer_protocol::NodeId;
use peer_storage::Source;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// An address worth dialing, and where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Candidate {
    /// Where the peer accepts P2P connections.
    pub addr: SocketAddr,
    /// Its node id, when the strategy learnt it (mDNS TXT record, peer exchange, peer table).
    pub node_id: Option<NodeId>,
    /// The strategy that found it (store it with this source).
    pub source: Source,
}

/// A boxed future, as [`Discovery::run`] returns it.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A way of finding candidate peers.
pub trait Discovery: Send + 'static {
    /// A short name for logs (`"bootstrap"`, `"mdns"`, ...).
    fn name(&self) -> &'static str;

    /// Runs until `shutdown` is cancelled (or the sink is closed), sending candidates to
    /// `sink`. Transient trouble (an unreachable Grape, a failed DNS lookup) is logged and
    /// retried inside; an `Err` means the strategy cannot work at all.
    fn run(
        self: Box<Self>,
        sink: mpsc::Sender<Candidate>,
        shutdown: CancellationToken,
    ) -> BoxFuture<Result<()>>;
}

/// Spawns a strategy on the current tokio runtime; an error it ends with is also logged.
pub fn spawn(
    strategy: Box<dyn Discovery>,
    sink: mpsc::Sender<Candidate>,
    shutdown: CancellationToken,
) -> JoinHandle<Result<()>> {
    let name = strategy.name();
    let run = strategy.run(sink, shutdown);
    tokio::spawn(async move {
        let result = run.await;
        if let Err(error) = &result {
            tracing::error!(strategy = name, %error, "discovery strategy stopped");
        }
        result
    })
}

/// Whether `addr` is worth dialing: not unspecified, multicast or broadcast, and not port 0.
pub fn is_dialable(addr: SocketAddr) -> bool {
    let ip = addr.ip();
    let broadcast = matches!(ip, std::net::IpAddr::V4(v4) if v4.is_broadcast());
    addr.port() != 0 && !ip.is_unspecified() && !ip.is_multicast() && !broadcast
}

/// Sends `candidates` to `sink`, giving up when `shutdown` is cancelled or the sink is closed.
/// Returns whether the caller should keep running.
pub(crate) async fn send_all(
    sink: &mpsc::Sender<Candidate>,
    candidates: impl IntoIterator<Item = Candidate>,
    shutdown: &CancellationToken,
) -> bool {
    for candidate in candidates {
        tokio::select! {
            () = shutdown.cancelled() => return false,
            sent = sink.send(candidate) => if sent.is_err() { return false },
        }
    }
    true
}

/// Waits for `duration`; returns `false` if `shutdown` was cancelled first.
pub(crate) async fn pause(duration: std::time::Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(duration) => true,
    }
}

/// The current time in unix seconds, as `peer-storage` wants it.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dialable_addresses() {
        for (addr, ok) in [
            ("127.0.0.1:3000", true),
            ("10.1.2.3:1", true),
            ("[::1]:3000", true),
            ("0.0.0.0:3000", false),
            ("[::]:3000", false),
            ("127.0.0.1:0", false),
            ("224.0.0.251:5353", false),
            ("[ff02::fb]:5353", false),
            ("255.255.255.255:3000", false),
        ] {
            assert_eq!(is_dialable(addr.parse().unwrap()), ok, "{addr}");
        }
    }
}
