//! The node's error type.

use std::path::PathBuf;

/// Everything that can go wrong when starting or running a [`Node`](crate::Node).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another process (or another node in this process) holds the data directory.
    #[error(
        "data directory {path} is locked by another node (two nodes can never share a data directory; set DATA_DIR or P2P_PORT)"
    )]
    DataDirLocked {
        /// The locked directory.
        path: PathBuf,
    },
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A listener could not be bound.
    #[error("cannot bind {what} listener on {addr}: {source}")]
    Bind {
        /// `p2p` or `api`.
        what: &'static str,
        /// The requested address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file in the data directory could not be read or written.
    #[error("storage error at {path}: {source}")]
    Storage {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The event log is unreadable beyond repair.
    #[error("corrupt event log: {0}")]
    CorruptLog(String),
    /// The node key could not be loaded or created.
    #[error("node key: {0}")]
    Key(String),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(String),
    /// The node has stopped and cannot answer.
    #[error("node is shut down")]
    Stopped,
}

impl Error {
    pub(crate) fn storage(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Storage {
            path: path.into(),
            source,
        }
    }
}
