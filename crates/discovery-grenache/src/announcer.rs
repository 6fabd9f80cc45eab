//! [`Announcer`]: keeps one service announced on a Grape until shut down.

use crate::{Error, GrapeClient};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often and how patiently an [`Announcer`] announces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnouncerConfig {
    /// Time between successful announcements. Must stay well under the Grape's announcement
    /// lifetime (`--dpa`, 120 s by default; peers are cached for half of it): 30 s is safe.
    pub interval: Duration,
    /// The first wait after a failure; doubled on each further failure.
    pub min_backoff: Duration,
    /// The longest wait after failures.
    pub max_backoff: Duration,
}

impl Default for AnnouncerConfig {
    fn default() -> Self {
        AnnouncerConfig {
            interval: Duration::from_secs(30),
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Announces `name` on `port` periodically, forever, until its shutdown token is cancelled.
///
/// A Grape that is unreachable or answers an error is a warning, never fatal: the announcer
/// waits with exponential backoff and tries again. When the Grape answers
/// `"No nodes to query"` (its DHT has not met another node yet) it looks the name up, which
/// makes the DHT query its bootstrap nodes, and announces again.
#[derive(Clone, Debug)]
pub struct Announcer {
    client: GrapeClient,
    name: String,
    port: u16,
    config: AnnouncerConfig,
}

impl Announcer {
    /// An announcer of `name` on `port` through `client`, with the default [`AnnouncerConfig`].
    pub fn new(client: GrapeClient, name: impl Into<String>, port: u16) -> Self {
        Announcer {
            client,
            name: name.into(),
            port,
            config: AnnouncerConfig::default(),
        }
    }

    /// Replaces the configuration.
    pub fn with_config(mut self, config: AnnouncerConfig) -> Self {
        self.config = config;
        self
    }

    /// One announcement, with the `"No nodes to query"` recovery (lookup, then announce again).
    pub async fn announce_once(&self) -> Result<(), Error> {
        match self.client.announce(&self.name, self.port).await {
            Err(Error::NoNodesToQuery) => {
                tracing::debug!(service = %self.name, "grape has no dht nodes yet; looking up and announcing again");
                // The lookup's own answer does not matter: it populates the DHT routing table.
                let _ = self.client.lookup(&self.name).await;
                self.client.announce(&self.name, self.port).await
            }
            other => other,
        }
    }

    /// Runs until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = self.config.min_backoff;
        let mut failing = false;
        loop {
            let wait = tokio::select! {
                () = shutdown.cancelled() => break,
                result = self.announce_once() => match result {
                    Ok(()) => {
                        if failing {
                            tracing::info!(grape = %self.client.base_url(), service = %self.name, port = self.port, "announcing again");
                        } else {
                            tracing::debug!(service = %self.name, port = self.port, "announced");
                        }
                        failing = false;
                        backoff = self.config.min_backoff;
                        self.config.interval
                    }
                    Err(error) => {
                        tracing::warn!(
                            grape = %self.client.base_url(),
                            service = %self.name,
                            %error,
                            retry_in_ms = backoff.as_millis() as u64,
                            "grenache announce failed"
                        );
                        failing = true;
                        let wait = backoff;
                        backoff = (backoff * 2).min(self.config.max_backoff);
                        wait
                    }
                },
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        tracing::debug!(service = %self.name, "announcer stopped");
    }

    /// Spawns [`Announcer::run`] on the current tokio runtime.
    pub fn spawn(self, shutdown: CancellationToken) -> JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }
}
