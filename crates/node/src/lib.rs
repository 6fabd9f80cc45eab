//! `node`: one p2p-exchange node (work in progress, see issue 4).
//!
//! ```
//! let config = node::Config::default();
//! assert_eq!(config.resolved_api_port(), 8000);
//! ```

mod config;
pub mod engine;
mod error;
pub mod ids;
mod wire;

use std::net::SocketAddr;

pub use config::{Config, MarketConfig, default_markets};
pub use error::Error;
pub use peer_protocol::NodeId;

/// A running node (API stub: being implemented).
#[derive(Debug)]
pub struct Node {
    node_id: NodeId,
    p2p_addr: SocketAddr,
    api_addr: SocketAddr,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Node {
    /// Starts a node: opens and locks the data directory, replays the log,
    /// binds the P2P and API listeners (port 0 picks a free port) and starts
    /// its tasks.
    pub async fn start(config: Config) -> Result<Node, Error> {
        let dir = config.resolved_data_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::storage(&dir, e))?;
        let identity = peer_protocol::Identity::load_or_create(&dir.join("node.key"))
            .map_err(|e| Error::Key(e.to_string()))?;
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let p2p_addr: SocketAddr = format!("{}:{}", config.p2p_host, config.p2p_port)
            .parse()
            .map_err(|e| Error::Config(format!("p2p address: {e}")))?;
        let api_addr: SocketAddr = format!("{}:{}", config.api_host, config.resolved_api_port())
            .parse()
            .map_err(|e| Error::Config(format!("api address: {e}")))?;
        Ok(Node {
            node_id: identity.node_id(),
            p2p_addr,
            api_addr,
            shutdown,
        })
    }

    /// This node's id (its public key).
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The bound P2P address.
    pub fn p2p_addr(&self) -> SocketAddr {
        self.p2p_addr
    }

    /// The bound HTTP API address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// Waits until the node has shut down (after [`Node::shutdown`] or a fatal error).
    pub async fn wait(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }

    /// Stops the node gracefully: peers get `Goodbye`, the log is flushed, the lock released.
    pub async fn shutdown(self) -> Result<(), Error> {
        let _ = self.shutdown.send(true);
        Ok(())
    }
}
