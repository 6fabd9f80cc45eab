//! The one error type of the crate.

/// What can go wrong setting up or running a discovery strategy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A bootstrap entry is not `host:port`.
    #[error("invalid bootstrap peer {entry:?}: {reason}")]
    InvalidBootstrapPeer {
        /// The entry as given.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The network id cannot be advertised (empty, too long, or not printable ASCII).
    #[error("invalid network id {0:?}")]
    InvalidNetworkId(String),
    /// The mDNS daemon failed.
    #[error("mdns error: {0}")]
    Mdns(String),
    /// An mDNS strategy is already running in this process (there is one daemon, and one
    /// browser per service type, per process).
    #[error("an mdns discovery is already running in this process")]
    MdnsAlreadyRunning,
    /// Grenache discovery was asked for, but this build has no `grenache` feature.
    #[error("grenache discovery is not compiled in (build with the `grenache` feature)")]
    GrenacheNotCompiledIn,
    /// The Grenache client could not be set up (e.g. a bad `GRAPE_URL`).
    #[cfg(feature = "grenache")]
    #[error("grenache: {0}")]
    Grenache(#[from] discovery_grenache::Error),
}

impl From<mdns_sd::Error> for Error {
    fn from(error: mdns_sd::Error) -> Self {
        Error::Mdns(error.to_string())
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
