//! Node configuration: every field has a default, names are the lowercase
//! environment variable names (`P2P_PORT` -> `p2p_port`).

use std::path::PathBuf;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// The configuration of one [`Node`](crate::Node).
///
/// Every field has a default ([`Config::default`]); the binary layers a
/// config file, the environment and command-line flags on top of it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Networks with different ids never talk to each other.
    pub network_id: String,
    /// Where the key, the lock and the event log live; default `./data/node-<p2p_port>`.
    pub data_dir: Option<PathBuf>,
    /// The P2P listen host.
    pub p2p_host: String,
    /// The P2P listen port (0 picks a free port).
    pub p2p_port: u16,
    /// The HTTP API listen host.
    pub api_host: String,
    /// The HTTP API port; default `p2p_port + 5000` (0 stays 0: a free port).
    pub api_port: Option<u16>,
    /// `host:port` addresses to connect to at start and keep connected.
    pub bootstrap_peers: Vec<String>,
    /// The maximum number of connected peers.
    pub max_peers: usize,
    /// The longest reconnect backoff, in milliseconds.
    pub peer_reconnect_interval: u64,
    /// Where the peer table lives; default `<data_dir>/.peers.json`.
    pub peer_storage_path: Option<PathBuf>,
    /// Whether to discover peers with mDNS.
    pub discovery_mdns: bool,
    /// The interfaces mDNS runs on (e.g. `lo`); empty means every interface (discovery's `all`).
    pub mdns_interfaces: Vec<String>,
    /// Whether to discover peers through a Grape (needs the `grenache` feature).
    pub discovery_grenache: bool,
    /// The Grape HTTP API.
    pub grape_url: String,
    /// The port of the Grenache RPC endpoint (hybrid mode, with `discovery_grenache` and the
    /// `grenache` feature); default `p2p_port + 6000` (0 stays 0: a free port). It listens on
    /// `p2p_host`.
    pub rpc_port: Option<u16>,
    /// The markets this network trades (every member must agree).
    pub markets: Vec<MarketConfig>,
    /// Found a new network immediately instead of waiting for discovery.
    pub found: bool,
    /// How long a fresh node waits to find an existing network before founding one, in milliseconds.
    pub join_window_ms: u64,
    /// The transport heartbeat interval, in milliseconds.
    pub heartbeat_ms: u64,
    /// After this much silence a member is suspect and the others vote to evict it, in
    /// milliseconds (0: never evict).
    pub evict_after_ms: u64,
}

/// One market: its name and its tick and lot sizes.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct MarketConfig {
    /// The market name, e.g. `BTC-USD`.
    pub name: String,
    /// The price increment.
    pub tick_size: Decimal,
    /// The quantity increment.
    pub lot_size: Decimal,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            network_id: "p2p-exchange-local".to_owned(),
            data_dir: None,
            p2p_host: "0.0.0.0".to_owned(),
            p2p_port: 3000,
            api_host: "127.0.0.1".to_owned(),
            api_port: None,
            bootstrap_peers: Vec::new(),
            max_peers: 50,
            peer_reconnect_interval: 30_000,
            peer_storage_path: None,
            discovery_mdns: true,
            mdns_interfaces: Vec::new(),
            discovery_grenache: true,
            grape_url: "http://127.0.0.1:30001".to_owned(),
            rpc_port: None,
            markets: default_markets(),
            found: false,
            join_window_ms: 3000,
            heartbeat_ms: 1000,
            evict_after_ms: crate::engine::DEFAULT_EVICT_AFTER_MS,
        }
    }
}

/// The default markets: BTC-USD (tick 0.01, lot 0.0001) and ETH-USD (tick 0.01, lot 0.001).
pub fn default_markets() -> Vec<MarketConfig> {
    vec![
        MarketConfig {
            name: "BTC-USD".to_owned(),
            tick_size: Decimal::new(1, 2),
            lot_size: Decimal::new(1, 4),
        },
        MarketConfig {
            name: "ETH-USD".to_owned(),
            tick_size: Decimal::new(1, 2),
            lot_size: Decimal::new(1, 3),
        },
    ]
}

impl Config {
    /// The data directory: `data_dir`, or `./data/node-<p2p_port>` so that
    /// several nodes started from one folder never share files.
    pub fn resolved_data_dir(&self) -> PathBuf {
        match &self.data_dir {
            Some(dir) => dir.clone(),
            None => PathBuf::from("data").join(format!("node-{}", self.p2p_port)),
        }
    }

    /// The API port: `api_port`, or `p2p_port + 5000` (saturating), or 0 when
    /// the P2P port is 0 (tests).
    pub fn resolved_api_port(&self) -> u16 {
        match self.api_port {
            Some(port) => port,
            None if self.p2p_port == 0 => 0,
            None => self.p2p_port.saturating_add(5000),
        }
    }

    /// The Grenache RPC port: `rpc_port`, or `p2p_port + 6000` (saturating), or 0 when the
    /// P2P port is 0 (tests).
    pub fn resolved_rpc_port(&self) -> u16 {
        match self.rpc_port {
            Some(port) => port,
            None if self.p2p_port == 0 => 0,
            None => self.p2p_port.saturating_add(6000),
        }
    }

    /// The peer table path: `peer_storage_path`, or `<data_dir>/.peers.json`.
    pub fn resolved_peer_storage_path(&self) -> PathBuf {
        match &self.peer_storage_path {
            Some(path) => path.clone(),
            None => self.resolved_data_dir().join(".peers.json"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_derive_ports_and_dirs() {
        let config = Config::default();
        assert_eq!(config.resolved_api_port(), 8000);
        assert_eq!(config.resolved_rpc_port(), 9000);
        assert_eq!(config.resolved_data_dir(), PathBuf::from("data/node-3000"));
        assert_eq!(
            config.resolved_peer_storage_path(),
            PathBuf::from("data/node-3000/.peers.json")
        );
        let other = Config {
            p2p_port: 3001,
            ..Config::default()
        };
        assert_eq!(other.resolved_api_port(), 8001);
        assert_eq!(other.resolved_rpc_port(), 9001);
        let tests = Config {
            p2p_port: 0,
            ..Config::default()
        };
        assert_eq!(tests.resolved_rpc_port(), 0);
        assert_ne!(other.resolved_data_dir(), config.resolved_data_dir());
    }

    #[test]
    fn serde_reads_partial_documents() {
        let config: Config =
            serde_json::from_str(r#"{"p2p_port": 4000, "found": true}"#).expect("valid config");
        assert_eq!(config.p2p_port, 4000);
        assert!(config.found);
        assert_eq!(config.markets.len(), 2);
    }
}
