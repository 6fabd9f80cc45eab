//! [`Fixed`]: a strategy that hands out a fixed list once.

use crate::{BoxFuture, Candidate, Discovery, Result, send_all};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Sends a fixed list of candidates once, then idles until shutdown. The in-memory strategy
/// for tests, and a way to feed operator-given peers.
#[derive(Clone, Debug, Default)]
pub struct Fixed {
    candidates: Vec<Candidate>,
}

impl Fixed {
    /// A strategy that sends `candidates`.
    pub fn new(candidates: Vec<Candidate>) -> Self {
        Fixed { candidates }
    }
}

impl Discovery for Fixed {
    fn name(&self) -> &'static str {
        "fixed"
    }

    fn run(
        self: Box<Self>,
        sink: mpsc::Sender<Candidate>,
        shutdown: CancellationToken,
    ) -> BoxFuture<Result<()>> {
        Box::pin(async move {
            if send_all(&sink, self.candidates, &shutdown).await {
                shutdown.cancelled().await;
            }
            Ok(())
        })
    }
}
