//! The crate's one error type.

use std::io;
use std::net::SocketAddr;

use peer_protocol::{GoodbyeReason, NodeId};

/// Everything that can go wrong in the transport.
///
/// [`Error::is_transient`] separates conditions worth retrying later (an unreachable
/// address, a timeout, a full peer) from permanent ones (another network, a forged
/// identity, our own address).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Binding, connecting, reading or writing a socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The peer sent something the protocol codec refused, or a message could not be
    /// encoded.
    #[error("protocol error: {0}")]
    Protocol(#[from] peer_protocol::Error),
    /// Opening the connection took longer than the handshake timeout.
    #[error("connecting to {addr} timed out")]
    ConnectTimeout {
        /// The address dialled.
        addr: SocketAddr,
    },
    /// The handshake did not complete within the handshake timeout.
    #[error("handshake with {addr} timed out")]
    HandshakeTimeout {
        /// The remote address.
        addr: SocketAddr,
    },
    /// The peer closed the connection before the handshake completed.
    #[error("connection closed during the handshake")]
    HandshakeClosed,
    /// The peer sent something other than the handshake message expected next.
    #[error("expected {expected} during the handshake, got {got}")]
    UnexpectedMessage {
        /// The message expected.
        expected: &'static str,
        /// The message received.
        got: &'static str,
    },
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: ours {ours}, theirs {theirs}")]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// Theirs.
        theirs: u16,
    },
    /// The peer belongs to another network.
    #[error("network id mismatch: ours {ours:?}, theirs {theirs:?}")]
    NetworkMismatch {
        /// Our `NETWORK_ID`.
        ours: String,
        /// Theirs.
        theirs: String,
    },
    /// The peer's market configuration differs from ours.
    #[error("market configuration mismatch")]
    MarketMismatch,
    /// The address leads back to this very transport.
    #[error("{addr} is our own address")]
    SelfConnection {
        /// The address dialled.
        addr: SocketAddr,
    },
    /// The peer could not prove it holds the key of the node id it claimed.
    #[error("peer failed to prove its identity {claimed}")]
    BadSignature {
        /// The node id it claimed.
        claimed: NodeId,
    },
    /// The peer closed the connection with a `Goodbye`.
    #[error("peer refused the connection: {reason:?}")]
    Refused {
        /// The reason it gave.
        reason: GoodbyeReason,
    },
    /// The address is banned for misbehaviour.
    #[error("{addr} is banned")]
    Banned {
        /// The banned address.
        addr: SocketAddr,
    },
    /// The transport already has `max_peers` peers.
    #[error("too many peers")]
    TooManyPeers,
    /// No connection to that peer.
    #[error("peer {0} is not connected")]
    NotConnected(NodeId),
    /// The peer's outbound queue was full; the peer has been disconnected.
    #[error("outbound queue of peer {0} is full; peer disconnected")]
    QueueFull(NodeId),
    /// The [`Config`](crate::Config) cannot work.
    #[error("invalid transport config: {0}")]
    InvalidConfig(String),
    /// The transport has been shut down.
    #[error("transport is shut down")]
    Shutdown,
}

impl Error {
    /// Whether retrying later may succeed (the breaker and backoff handle these);
    /// `false` for mismatches, forged identities, our own address and a shut-down
    /// transport.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Io(_)
            | Error::ConnectTimeout { .. }
            | Error::HandshakeTimeout { .. }
            | Error::HandshakeClosed
            | Error::Banned { .. }
            | Error::TooManyPeers
            | Error::NotConnected(_)
            | Error::QueueFull(_) => true,
            Error::Refused { reason } => !matches!(
                reason,
                GoodbyeReason::NetworkMismatch
                    | GoodbyeReason::MarketMismatch
                    | GoodbyeReason::SelfConnection
            ),
            Error::Protocol(_)
            | Error::UnexpectedMessage { .. }
            | Error::VersionMismatch { .. }
            | Error::NetworkMismatch { .. }
            | Error::MarketMismatch
            | Error::SelfConnection { .. }
            | Error::BadSignature { .. }
            | Error::InvalidConfig(_)
            | Error::Shutdown => false,
        }
    }
}
