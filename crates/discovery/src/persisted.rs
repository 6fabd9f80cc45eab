//! [`Persisted`]: reconnect to the peers of the peer table.

use crate::{BoxFuture, Candidate, Discovery, Result, is_dialable, pause, send_all, unix_now};
use peer_storage::{PeerStore, Source};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Offers the best-scored unbanned peers of a [`PeerStore`], best first, at start and then every
/// [`Persisted::interval`], so a restarted node reconnects without any bootstrap list.
///
/// Addresses only ever seen as inbound connections are skipped: their port is the peer's
/// ephemeral port, not one it listens on.
#[derive(Clone)]
pub struct Persisted {
    store: Arc<dyn PeerStore>,
    limit: usize,
    interval: Duration,
}

impl std::fmt::Debug for Persisted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persisted")
            .field("limit", &self.limit)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl Persisted {
    /// Offers up to 50 peers of `store` (like `MAX_PEERS`) every 60 s.
    pub fn new(store: Arc<dyn PeerStore>) -> Self {
        Persisted {
            store,
            limit: 50,
            interval: Duration::from_secs(60),
        }
    }

    /// Sets the most peers offered each time.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Sets how often the table is offered again.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The peers offered at `now` (unix seconds): best score first (ties by address, as
    /// [`PeerStore::best`] orders them), banned and inbound-only ones left out.
    pub fn candidates(&self, now: u64) -> Vec<Candidate> {
        // Ask for more than the limit, since inbound-only entries are dropped after.
        let wanted = self.limit.saturating_mul(2).max(self.limit);
        self.store
            .best(wanted, now)
            .into_iter()
            .filter(|r| r.source != Source::Inbound && is_dialable(r.addr))
            .take(self.limit)
            .map(|r| Candidate {
                addr: r.addr,
                node_id: r.node_id.as_deref().and_then(|id| id.parse().ok()),
                source: r.source,
            })
            .collect()
    }
}

impl Discovery for Persisted {
    fn name(&self) -> &'static str {
        "persisted"
    }

    fn run(
        self: Box<Self>,
        sink: mpsc::Sender<Candidate>,
        shutdown: CancellationToken,
    ) -> BoxFuture<Result<()>> {
        Box::pin(async move {
            loop {
                let candidates = self.candidates(unix_now());
                if !send_all(&sink, candidates, &shutdown).await
                    || !pause(self.interval, &shutdown).await
                {
                    return Ok(());
                }
            }
        })
    }
}
