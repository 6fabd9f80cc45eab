//! The one error type of the crate.

use std::net::SocketAddr;

/// Everything that can go wrong talking to a Grape or to a grenache RPC peer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Grape URL is not an `http://host:port` URL.
    #[error("invalid grape url {0:?}: expected http://host:port")]
    InvalidUrl(String),
    /// The Grape could not be reached (connection refused, timeout, reset).
    #[error("grape at {url} is unreachable: {source}")]
    Unreachable {
        /// The Grape's base URL.
        url: String,
        /// The underlying HTTP error.
        #[source]
        source: reqwest::Error,
    },
    /// The Grape's DHT knows no other node yet (`"No nodes to query"`); announce and look up again.
    #[error("grape has no dht nodes to query")]
    NoNodesToQuery,
    /// The Grape answered with an error string, e.g. `"ERR_GRAPE_LOOKUP"`.
    #[error("grape answered an error: {0}")]
    Grape(String),
    /// The Grape or RPC peer answered with an unexpected HTTP status.
    #[error("unexpected http status {status}: {body}")]
    HttpStatus {
        /// The HTTP status code.
        status: u16,
        /// The start of the body, for the log.
        body: String,
    },
    /// An answer that is not what the protocol says (bad JSON, wrong shape, too large).
    #[error("invalid answer: {0}")]
    InvalidResponse(String),
    /// A lookup found no address announced under the service name.
    #[error("no address announced under {0:?}")]
    ServiceNotFound(String),
    /// An RPC peer could not be reached or the request failed on the wire.
    #[error("rpc request to {addr} failed: {source}")]
    RpcTransport {
        /// The peer's address.
        addr: SocketAddr,
        /// The underlying HTTP error.
        #[source]
        source: reqwest::Error,
    },
    /// The RPC peer answered with an error in the error slot of its reply.
    #[error("rpc peer answered an error: {0}")]
    Remote(String),
    /// The request did not complete before its deadline.
    #[error("request timed out")]
    Timeout,
    /// The RPC server could not bind or serve.
    #[error("rpc server i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether retrying later may succeed (unreachable peers, timeouts, an empty DHT).
    ///
    /// Permanent errors are configuration or protocol mistakes: a bad URL, an error string the
    /// Grape gives for a malformed request, an answer that breaks the protocol.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unreachable { .. }
                | Error::NoNodesToQuery
                | Error::ServiceNotFound(_)
                | Error::RpcTransport { .. }
                | Error::Timeout
        ) || matches!(self, Error::HttpStatus { status, .. } if *status >= 500 || *status == 408 || *status == 429)
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
