//! [`Grenache`]: discovery through Grenache Grape servers (feature `grenache`).
//!
//! Without the feature the same API exists, and [`Grenache::new`] answers
//! [`Error::GrenacheNotCompiledIn`], so callers need no `cfg` of their own.

use crate::pex::Local;
#[cfg(not(feature = "grenache"))]
use crate::{BoxFuture, Candidate, Discovery, Error, Result};
use std::time::Duration;

/// Whether this build can discover peers through Grenache (the `grenache` feature).
pub const fn grenache_available() -> bool {
    cfg!(feature = "grenache")
}

/// The service name nodes of `network_id` announce their P2P port under:
/// `p2p-exchange/<network_id>`.
pub fn p2p_service_name(network_id: &str) -> String {
    format!("p2p-exchange/{network_id}")
}

/// The service name of the Grenache RPC endpoints of `network_id` (hybrid mode):
/// `p2p-exchange-rpc/<network_id>`. Every node with Grenache enabled announces its RPC port
/// under it; Node.js clients look it up with `PeerRPCClient`.
pub fn rpc_service_name(network_id: &str) -> String {
    format!("p2p-exchange-rpc/{network_id}")
}

/// The service name of one member's RPC endpoint: `p2p-exchange-rpc/<network_id>/<node_id>`.
/// A node announces its RPC port under this name too, so that a peer that cannot reach it over
/// TCP can deliver events to exactly that member through the Grenache RPC fallback.
pub fn rpc_member_service_name(network_id: &str, node_id: &peer_protocol::NodeId) -> String {
    format!("p2p-exchange-rpc/{network_id}/{node_id}")
}

/// Settings of the [`Grenache`] strategy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrenacheConfig {
    /// The Grape's HTTP API (`GRAPE_URL`, e.g. `http://127.0.0.1:30001`).
    pub grape_url: String,
    /// The network id; the service name is [`p2p_service_name`] of it.
    pub network_id: String,
    /// The P2P port announced (the Grape records our address as it sees it).
    pub p2p_port: u16,
    /// Time between announcements; well under the Grape's announcement lifetime.
    pub announce_interval: Duration,
    /// Time between lookups.
    pub lookup_interval: Duration,
    /// Who we are, so our own announcement is not offered back to us.
    pub local: Local,
}

impl GrenacheConfig {
    /// Settings with the defaults: announce every 30 s, look up every 5 s.
    pub fn new(grape_url: impl Into<String>, network_id: impl Into<String>, p2p_port: u16) -> Self {
        GrenacheConfig {
            grape_url: grape_url.into(),
            network_id: network_id.into(),
            p2p_port,
            announce_interval: Duration::from_secs(30),
            lookup_interval: Duration::from_secs(5),
            local: Local::default(),
        }
    }
}

#[cfg(feature = "grenache")]
pub use enabled::Grenache;

#[cfg(feature = "grenache")]
mod enabled {
    use super::{GrenacheConfig, p2p_service_name};
    use crate::{BoxFuture, Candidate, Discovery, Result, is_dialable, pause, send_all};
    use discovery_grenache::{Announcer, AnnouncerConfig, GrapeClient};
    use peer_storage::Source;
    use std::time::Duration;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    /// Announces our P2P port on a Grape under `p2p-exchange/<NETWORK_ID>` and looks the same
    /// name up periodically, offering every address found. An unreachable Grape is a warning
    /// with exponential backoff, never fatal.
    #[derive(Debug)]
    pub struct Grenache {
        client: GrapeClient,
        config: GrenacheConfig,
    }

    impl Grenache {
        /// A Grenache strategy; fails only on an unusable `grape_url`.
        pub fn new(config: GrenacheConfig) -> Result<Grenache> {
            let client = GrapeClient::new(&config.grape_url)?;
            Ok(Grenache { client, config })
        }

        /// Looks the service up once and returns the candidates (our own address left out).
        pub async fn lookup(&self) -> Result<Vec<Candidate>> {
            let name = p2p_service_name(&self.config.network_id);
            let found = self.client.lookup(&name).await?;
            Ok(found
                .into_iter()
                .filter(|addr| is_dialable(*addr) && !self.config.local.is_own(*addr, None))
                .map(|addr| Candidate {
                    addr,
                    node_id: None,
                    source: Source::Grenache,
                })
                .collect())
        }
    }

    impl Discovery for Grenache {
        fn name(&self) -> &'static str {
            "grenache"
        }

        fn run(
            self: Box<Self>,
            sink: mpsc::Sender<Candidate>,
            shutdown: CancellationToken,
        ) -> BoxFuture<Result<()>> {
            Box::pin(async move {
                let announcer_stop = shutdown.child_token();
                let announcer = Announcer::new(
                    self.client.clone(),
                    p2p_service_name(&self.config.network_id),
                    self.config.p2p_port,
                )
                .with_config(AnnouncerConfig {
                    interval: self.config.announce_interval,
                    ..AnnouncerConfig::default()
                })
                .spawn(announcer_stop.clone());

                let min_backoff = Duration::from_millis(500);
                let max_backoff = Duration::from_secs(30);
                let mut backoff = min_backoff;
                loop {
                    let wait = tokio::select! {
                        () = shutdown.cancelled() => break,
                        found = self.lookup() => match found {
                            Ok(candidates) => {
                                backoff = min_backoff;
                                if !send_all(&sink, candidates, &shutdown).await {
                                    break;
                                }
                                self.config.lookup_interval
                            }
                            Err(error) => {
                                tracing::warn!(grape = %self.client.base_url(), %error, retry_in_ms = backoff.as_millis() as u64, "grenache lookup failed");
                                let wait = backoff;
                                backoff = (backoff * 2).min(max_backoff);
                                wait
                            }
                        },
                    };
                    if !pause(wait, &shutdown).await {
                        break;
                    }
                }
                announcer_stop.cancel();
                let _ = announcer.await;
                Ok(())
            })
        }
    }
}

/// Grenache discovery is not compiled into this build: [`Grenache::new`] always answers
/// [`Error::GrenacheNotCompiledIn`].
#[cfg(not(feature = "grenache"))]
#[derive(Debug)]
pub struct Grenache {
    never: std::convert::Infallible,
}

#[cfg(not(feature = "grenache"))]
impl Grenache {
    /// Always [`Error::GrenacheNotCompiledIn`] in this build.
    pub fn new(config: GrenacheConfig) -> Result<Grenache> {
        let _ = config;
        Err(Error::GrenacheNotCompiledIn)
    }

    /// Never called: no value of this type exists in this build.
    pub async fn lookup(&self) -> Result<Vec<Candidate>> {
        match self.never {}
    }
}

#[cfg(not(feature = "grenache"))]
impl Discovery for Grenache {
    fn name(&self) -> &'static str {
        "grenache"
    }

    fn run(
        self: Box<Self>,
        _sink: tokio::sync::mpsc::Sender<Candidate>,
        _shutdown: tokio_util::sync::CancellationToken,
    ) -> BoxFuture<Result<()>> {
        match self.never {}
    }
}
