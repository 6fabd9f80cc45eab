//! `transport`: authenticated peer connections for p2p-exchange nodes.
//!
//! A [`Transport`] listens for peers, dials them, proves identities in a handshake and
//! then keeps one connection per peer [`NodeId`] alive: heartbeats with measured RTT,
//! an idle timeout, redials with backoff and a circuit breaker, and limits on peers,
//! per-IP connections and per-peer queues. The node talks to it through a cheap,
//! cloneable [`Handle`] and reads [`TransportEvent`]s from a bounded channel.
//!
//! # Main types
//!
//! - [`Transport::start`] binds the listener and returns a [`Handle`] and the event
//!   receiver.
//! - [`Handle`]: [`dial`](Handle::dial) once, [`add_peer_addr`](Handle::add_peer_addr)
//!   to keep an address connected, [`send`](Handle::send) /
//!   [`broadcast`](Handle::broadcast) (encoded once, shared by every peer),
//!   [`peers`](Handle::peers), [`disconnect`](Handle::disconnect),
//!   [`report_misbehaviour`](Handle::report_misbehaviour) and
//!   [`shutdown`](Handle::shutdown).
//! - [`Network`] is the byte-stream layer: [`TcpNetwork`] for real sockets and
//!   [`MemoryNetwork`] for fast, in-process tests that can also cut links.
//! - [`Config`] holds every knob with sensible defaults; [`Error`] is the crate's one
//!   error type.
//!
//! # Handshake
//!
//! Both sides send a `Hello` (protocol version, `NETWORK_ID`, market hash, node id,
//! listen port, a fresh nonce). A version, network or market mismatch is logged at
//! `warn` and answered with a `Goodbye`. Each side then signs
//! `handshake_transcript(network_id, own id, other's nonce)` in a `HelloAck`, and a
//! signature that does not verify is recorded as misbehaviour. A connection to
//! ourselves is dropped and its address never dialled again. When two nodes dial each
//! other at once, both keep the connection dialled by the lower node id; a newer
//! connection from the same dialer replaces an older one (the dialer restarted), and
//! so does any new connection when the older one had carried frames but then heard
//! nothing for one and a half heartbeats (the peer crashed silently and came back, so
//! it need not wait for the idle timeout).
//!
//! # Behaviour worth knowing
//!
//! - **Events** arrive per peer in order: `Connected`, its messages, `Disconnected`.
//!   The event channel is bounded: while it is full, peers' readers wait (TCP
//!   backpressure), and so do [`Handle::dial`] calls, which complete only once their
//!   `Connected` event has room; do not await `dial` in the task that drains events
//!   without draining concurrently.
//! - **Sending never waits**: [`Handle::send`] queues into a bounded per-peer queue; a
//!   full queue disconnects that peer as too slow. Bulk senders pace themselves on
//!   [`Handle::send_capacity`].
//! - **Liveness**: each connection sends a `Ping` every `heartbeat_interval` (the RTT
//!   comes from the `Pong`) and is closed after `idle_timeout` without any frame.
//! - **Redials**: addresses given to [`Handle::add_peer_addr`] are redialled with
//!   exponential backoff and jitter, behind a per-address circuit breaker; a peer that
//!   was connected is probed about every second for `reconnect_fast_window`, so it is
//!   back within a second of restarting.
//! - **Misbehaviour** (an oversize or undecodable frame, a forged handshake, a
//!   handshake message out of place, or [`Handle::report_misbehaviour`]) disconnects
//!   the peer and is recorded in the `PeerStore`, which bans repeat offenders; banned
//!   addresses are neither dialled nor accepted. Misbehaviour also counts against the
//!   peer's whole IP (`peer_storage::ip_wide`; loopback excepted, since every node of
//!   a host shares it), so a banned peer cannot come back from another port:
//!   connections from a banned IP are closed as soon as they are accepted. Unknown
//!   message types from newer peers are skipped.
//! - **Shutdown**: [`Handle::shutdown`] says `Goodbye{Shutdown}` to every peer and
//!   returns when every task has ended; dropping the last `Handle` starts the same
//!   shutdown in the background.
//! - **Metrics** (through the `metrics` facade): `transport_peers` (gauge),
//!   `transport_connections_total{direction}`, `transport_dials_total`,
//!   `transport_dial_failures_total`, `transport_handshake_failures_total`,
//!   `transport_refused_total{reason}`, `transport_misbehaviour_total`,
//!   `transport_drops_total{reason}` (`queue_full`, `idle`),
//!   `transport_messages_in_total{kind}`, `transport_messages_out_total`,
//!   `transport_bytes_in_total`, `transport_bytes_out_total` and the
//!   `transport_rtt_seconds` histogram.
//!
//! # What it does not do
//!
//! It does not interpret messages beyond `Hello`, `HelloAck`, `Ping`, `Pong` and
//! `Goodbye`: everything else (and signature checks on events) is the node's. It does
//! not discover peers (that is `discovery`; feed addresses in with
//! [`Handle::add_peer_addr`]) and does not install a metrics exporter; it only emits
//! `transport_*` metrics through the `metrics` facade.
//!
//! # Example
//!
//! Two transports on an in-memory network connect and exchange a message.
//!
//! ```
//! use std::sync::Arc;
//! use peer_protocol::{Identity, Message};
//! use peer_storage::MemoryPeerStore;
//! use transport::{Config, MemoryNetwork, Transport, TransportEvent};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), transport::Error> {
//! let network = MemoryNetwork::new();
//! let config = Config { listen: "127.0.0.1:0".parse().expect("address"), ..Config::default() };
//! let start = |network: MemoryNetwork| {
//!     let store = Arc::new(MemoryPeerStore::new(100));
//!     Transport::start(config.clone(), Arc::new(Identity::generate()), network, store)
//! };
//! let (alice, _alice_events) = start(network.clone()).await?;
//! let (bob, mut bob_events) = start(network).await?;
//!
//! let bob_id = alice.dial(bob.local_addr()).await?;
//! assert_eq!(bob_id, bob.node_id());
//! alice.send(&bob_id, &Message::GetPeers)?;
//!
//! loop {
//!     match bob_events.recv().await {
//!         Some(TransportEvent::Message { peer, message }) => {
//!             assert_eq!((peer, message), (alice.node_id(), Message::GetPeers));
//!             break;
//!         }
//!         Some(_) => continue,
//!         None => panic!("transport stopped"),
//!     }
//! }
//! alice.shutdown().await;
//! bob.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod backoff;
mod connection;
mod error;
mod network;
mod transport;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime};

use peer_protocol::{Message, NodeId};

pub use backoff::BreakerState;
pub use error::Error;
pub use network::{Listener, MemoryListener, MemoryNetwork, MemoryStream, Network, TcpNetwork};
pub use transport::{Handle, KnownAddr, Transport};

/// The default P2P port (`P2P_PORT`).
pub const DEFAULT_PORT: u16 = 3000;
/// The default cap on connected peers (`MAX_PEERS`).
pub const DEFAULT_MAX_PEERS: usize = 50;
/// The default cap on the addresses kept connected ([`Config::max_known_addrs`]).
pub const DEFAULT_MAX_KNOWN_ADDRS: usize = 1024;
/// The default cap on the redial backoff (`PEER_RECONNECT_INTERVAL`, 30 s).
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(30);

/// Everything a [`Transport`] can be tuned with. `Config::default()` gives the
/// production values; tests shorten the timeouts.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (`P2P_HOST:P2P_PORT`; port 0 picks a free one).
    pub listen: SocketAddr,
    /// The `NETWORK_ID`: peers with another one are refused.
    pub network_id: String,
    /// A hash of the market configuration: peers with another one are refused.
    pub market_hash: [u8; 32],
    /// The most connected peers (`MAX_PEERS`); further ones get `Goodbye{TooManyPeers}`.
    pub max_peers: usize,
    /// The most inbound connections (handshaking or established) from one remote IP.
    pub max_inbound_per_ip: usize,
    /// Connecting plus the whole handshake must finish within this.
    pub handshake_timeout: Duration,
    /// How often each connection sends a `Ping`.
    pub heartbeat_interval: Duration,
    /// A connection that received nothing (not even a `Pong`) for this long is closed.
    pub idle_timeout: Duration,
    /// The first redial delay after a failure or a lost connection.
    pub reconnect_initial: Duration,
    /// The cap of the exponential redial backoff (`PEER_RECONNECT_INTERVAL`); also how
    /// long an open circuit breaker waits before its half-open probe.
    pub reconnect_max: Duration,
    /// After an established connection is lost, its address is redialled at least
    /// about once a second (and its breaker stays closed) for this long, so a
    /// restarting peer is back within a second of listening again.
    pub reconnect_fast_window: Duration,
    /// The most addresses kept connected ([`Handle::add_peer_addr`]); addresses come
    /// from peers too, so this bounds what they can make the transport remember.
    pub max_known_addrs: usize,
    /// Consecutive failed dials that open an address's circuit breaker.
    pub breaker_threshold: u32,
    /// Frames queued per peer; a peer whose queue is full is disconnected as too slow.
    pub outbound_queue: usize,
    /// Capacity of the [`TransportEvent`] channel; when full, peers' readers wait
    /// (backpressure reaches the sockets instead of growing memory).
    pub event_queue: usize,
    /// The largest inbound frame payload accepted; larger frames are misbehaviour.
    pub max_frame_len: usize,
    /// The software name sent in `Hello`.
    pub agent: String,
}

impl Default for Config {
    fn default() -> Self {
        let heartbeat_interval = Duration::from_secs(1);
        Config {
            listen: SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_PORT)),
            network_id: "p2p-exchange".to_owned(),
            market_hash: [0; 32],
            max_peers: DEFAULT_MAX_PEERS,
            max_inbound_per_ip: 16,
            handshake_timeout: Duration::from_secs(5),
            heartbeat_interval,
            idle_timeout: heartbeat_interval * 3,
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: DEFAULT_RECONNECT_MAX,
            reconnect_fast_window: Duration::from_secs(60),
            max_known_addrs: DEFAULT_MAX_KNOWN_ADDRS,
            breaker_threshold: 5,
            outbound_queue: 1024,
            event_queue: 1024,
            max_frame_len: peer_protocol::MAX_FRAME_LEN,
            agent: concat!("p2p-exchange/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

impl Config {
    /// Checks the settings that would make every handshake or connection fail.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |what: String| Err(Error::InvalidConfig(what));
        if self.network_id.len() > peer_protocol::MAX_NETWORK_ID_LEN {
            return invalid(format!(
                "network id is longer than {} bytes",
                peer_protocol::MAX_NETWORK_ID_LEN
            ));
        }
        if self.agent.len() > peer_protocol::MAX_AGENT_LEN {
            return invalid(format!(
                "agent is longer than {} bytes",
                peer_protocol::MAX_AGENT_LEN
            ));
        }
        if self.max_peers == 0 {
            return invalid("max_peers must be at least 1".to_owned());
        }
        if self.heartbeat_interval.is_zero() || self.idle_timeout <= self.heartbeat_interval {
            return invalid(format!(
                "idle_timeout ({:?}) must exceed a non-zero heartbeat_interval ({:?})",
                self.idle_timeout, self.heartbeat_interval
            ));
        }
        if self.max_known_addrs == 0 {
            return invalid("max_known_addrs must be at least 1".to_owned());
        }
        if self.handshake_timeout.is_zero() {
            return invalid("handshake_timeout must not be zero".to_owned());
        }
        Ok(())
    }
}

/// What the transport tells the node, in order per peer: `Connected`, then that
/// peer's `Message`s, then `Disconnected`.
///
/// A peer whose connection is replaced (the other side redialled) is reported as
/// `Disconnected` followed by a new `Connected`; messages in flight on the old
/// connection may be lost, so the node should resynchronise on every `Connected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportEvent {
    /// A peer completed the handshake.
    Connected {
        /// Its proven identity.
        peer: NodeId,
        /// The remote address of the connection.
        addr: SocketAddr,
        /// Where it accepts connections: the connection's IP and its `Hello.listen_port`.
        listen_addr: SocketAddr,
        /// Whether it dialled us.
        inbound: bool,
    },
    /// A message from a connected peer (never `Hello`, `HelloAck`, `Ping`, `Pong` or
    /// `Goodbye`: the transport handles those).
    Message {
        /// The sender.
        peer: NodeId,
        /// What it said.
        message: Message,
    },
    /// A peer's connection ended.
    Disconnected {
        /// The peer.
        peer: NodeId,
        /// Why, in words.
        reason: String,
    },
}

/// A connected peer, as [`Handle::peers`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its proven identity.
    pub node_id: NodeId,
    /// The remote address of the connection.
    pub addr: SocketAddr,
    /// Where it accepts connections.
    pub listen_addr: SocketAddr,
    /// Whether it dialled us.
    pub inbound: bool,
    /// The last measured round-trip time, once a `Pong` came back.
    pub rtt: Option<Duration>,
    /// When the handshake completed.
    pub connected_since: SystemTime,
    /// The software it announced.
    pub agent: String,
    /// Bytes received on this connection (frames, prefixes included).
    pub bytes_in: u64,
    /// Bytes written to this connection.
    pub bytes_out: u64,
}
