//! Command-line flags and subcommands.

use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// A peer-to-peer exchange node, and a client for a node's HTTP API.
///
/// Without a subcommand, runs a node (the same as `p2p-exchange node`).
/// Node settings layer as: defaults < config file (--config) < environment
/// (a .env file, then the real environment) < flags. Every flag below names
/// its environment variable; .env.example lists them all.
#[derive(Debug, Parser)]
#[command(name = "p2p-exchange", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do; `node` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Node settings when no subcommand is given.
    #[command(flatten)]
    pub node: NodeArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node (the default when no subcommand is given)
    Node(Box<NodeArgs>),
    /// Place an order: `order buy BTC-USD 0.5 @ 100.25` (no price = market order)
    Order(OrderArgs),
    /// Cancel an order by id
    Cancel {
        /// The order id
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show an order's state
    #[command(alias = "get")]
    OrderStatus {
        /// The order id
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show a market's settled order book
    Book {
        /// The market, e.g. BTC-USD
        market: String,
        /// Price levels per side
        #[arg(long, default_value_t = 10)]
        depth: usize,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show a market's latest trades, newest first
    Trades {
        /// The market, e.g. BTC-USD
        market: String,
        /// How many trades
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the markets with their tick and lot sizes
    Markets {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show the node's status
    Status {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the node's peers
    Peers {
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Where the client subcommands find a node.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Base URL of the node's HTTP API
    #[arg(long, env = "API_URL", default_value = "http://127.0.0.1:8000")]
    pub api: String,
    /// Print the node's JSON answer instead of a table
    #[arg(long)]
    pub json: bool,
}

/// An order side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Side {
    /// Buy.
    Buy,
    /// Sell.
    Sell,
}

impl Side {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }
}

/// A time-in-force policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TimeInForce {
    /// Good till cancelled.
    Gtc,
    /// Immediate or cancel.
    Ioc,
    /// Fill or kill.
    Fok,
    /// Rest only; rejected if it would take.
    #[value(name = "post_only", alias = "post-only")]
    PostOnly,
}

impl TimeInForce {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeInForce::Gtc => "gtc",
            TimeInForce::Ioc => "ioc",
            TimeInForce::Fok => "fok",
            TimeInForce::PostOnly => "post_only",
        }
    }
}

/// `order buy|sell MARKET QTY [@ PRICE]`.
#[derive(Debug, Args)]
pub struct OrderArgs {
    /// buy or sell
    pub side: Side,
    /// The market, e.g. BTC-USD
    pub market: String,
    /// Quantity, a decimal string
    pub quantity: String,
    /// `@ PRICE` (or just PRICE) for a limit order; omit for a market order
    #[arg(num_args = 0..=2, value_name = "@ PRICE")]
    pub price: Vec<String>,
    /// Time in force (default gtc for limit orders, ioc for market orders)
    #[arg(long, value_enum)]
    pub tif: Option<TimeInForce>,
    /// Idempotency key: retrying with it never places a second order
    #[arg(long)]
    pub client_order_id: Option<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

impl OrderArgs {
    /// The limit price, `None` for a market order.
    pub fn limit_price(&self) -> anyhow::Result<Option<String>> {
        let parts: Vec<&str> = self.price.iter().map(String::as_str).collect();
        match parts.as_slice() {
            [] => Ok(None),
            ["@", price] => Ok(Some((*price).to_owned())),
            [price] if price.starts_with('@') && price.len() > 1 => Ok(Some(price[1..].to_owned())),
            [price] if *price != "@" => Ok(Some((*price).to_owned())),
            _ => anyhow::bail!(
                "expected `@ PRICE` after the quantity, got {:?}",
                parts.join(" ")
            ),
        }
    }
}

/// Node settings as flags; each is `None` unless given on the command line.
#[derive(Debug, Default, Clone, Args)]
pub struct NodeArgs {
    /// TOML config file (keys are the lowercase variable names, e.g. p2p_port = 3001)
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Environment file read before the environment, which wins over it [default: .env if present]
    #[arg(long, value_name = "PATH")]
    pub env_file: Option<PathBuf>,
    /// Network to join or found [env: NETWORK_ID] [default: p2p-exchange-local]
    #[arg(long, value_name = "ID")]
    pub network_id: Option<String>,
    /// Data directory (key, event log, lock) [env: DATA_DIR] [default: ./data/node-<P2P_PORT>]
    #[arg(long, value_name = "PATH")]
    pub data_dir: Option<PathBuf>,
    /// P2P listen host [env: P2P_HOST] [default: 0.0.0.0]
    #[arg(long, value_name = "HOST")]
    pub p2p_host: Option<String>,
    /// P2P listen port [env: P2P_PORT] [default: 3000]
    #[arg(long, value_name = "PORT")]
    pub p2p_port: Option<u16>,
    /// HTTP API listen host [env: API_HOST] [default: 127.0.0.1]
    #[arg(long, value_name = "HOST")]
    pub api_host: Option<String>,
    /// HTTP API port [env: API_PORT] [default: P2P_PORT + 5000]
    #[arg(long, value_name = "PORT")]
    pub api_port: Option<u16>,
    /// Peers to dial at start, comma-separated host:port [env: BOOTSTRAP_PEERS] [default: none]
    #[arg(long, value_name = "LIST")]
    pub bootstrap_peers: Option<String>,
    /// Maximum connected peers [env: MAX_PEERS] [default: 50]
    #[arg(long, value_name = "N")]
    pub max_peers: Option<usize>,
    /// Reconnect interval in ms [env: PEER_RECONNECT_INTERVAL] [default: 30000]
    #[arg(long, value_name = "MS")]
    pub peer_reconnect_interval: Option<u64>,
    /// Peer table file [env: PEER_STORAGE_PATH] [default: <DATA_DIR>/.peers.json]
    #[arg(long, value_name = "PATH")]
    pub peer_storage_path: Option<PathBuf>,
    /// mDNS discovery on the local network [env: DISCOVERY_MDNS] [default: true]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub discovery_mdns: Option<bool>,
    /// Interfaces mDNS is pinned to, comma-separated [env: MDNS_INTERFACES] [default: all non-loopback]
    #[arg(long, value_name = "LIST")]
    pub mdns_interfaces: Option<String>,
    /// Grenache (Grape DHT) discovery [env: DISCOVERY_GRENACHE] [default: true]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub discovery_grenache: Option<bool>,
    /// Grape HTTP API URL [env: GRAPE_URL] [default: http://127.0.0.1:30001]
    #[arg(long, value_name = "URL")]
    pub grape_url: Option<String>,
    /// Grenache RPC port of the hybrid mode [env: RPC_PORT] [default: P2P_PORT + 6000]
    #[arg(long, value_name = "PORT")]
    pub rpc_port: Option<u16>,
    /// Markets as NAME:TICK:LOT, comma-separated [env: MARKETS] [default: BTC-USD:0.01:0.0001,ETH-USD:0.01:0.001]
    #[arg(long, value_name = "LIST")]
    pub markets: Option<String>,
    /// Found a new network without waiting for discovery [env: FOUND] [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true",
          value_parser = BoolishValueParser::new())]
    pub found: Option<bool>,
    /// How long a fresh node looks for a network to join, in ms [env: JOIN_WINDOW_MS] [default: 3000]
    #[arg(long, value_name = "MS")]
    pub join_window_ms: Option<u64>,
    /// Transport heartbeat interval in ms [env: HEARTBEAT_MS] [default: 1000]
    #[arg(long, value_name = "MS")]
    pub heartbeat_ms: Option<u64>,
    /// Silence after which members vote to evict a member, in ms; 0 never evicts [env: EVICT_AFTER_MS] [default: 10000]
    #[arg(long, value_name = "MS")]
    pub evict_after_ms: Option<u64>,
    /// Log format, text or json [env: LOG_FORMAT] [default: text]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Log filter directives, e.g. info,node=debug [env: RUST_LOG] [default: info]
    #[arg(long, value_name = "FILTER")]
    pub rust_log: Option<String>,
}

impl NodeArgs {
    /// The flags as `(setting key, value)` overrides for the top layer.
    pub fn overrides(&self) -> Vec<(&'static str, Option<String>)> {
        fn text<T: ToString>(value: &Option<T>) -> Option<String> {
            value.as_ref().map(ToString::to_string)
        }
        fn path(value: &Option<PathBuf>) -> Option<String> {
            value.as_ref().map(|p| p.to_string_lossy().into_owned())
        }
        vec![
            ("network_id", text(&self.network_id)),
            ("data_dir", path(&self.data_dir)),
            ("p2p_host", text(&self.p2p_host)),
            ("p2p_port", text(&self.p2p_port)),
            ("api_host", text(&self.api_host)),
            ("api_port", text(&self.api_port)),
            ("bootstrap_peers", text(&self.bootstrap_peers)),
            ("max_peers", text(&self.max_peers)),
            (
                "peer_reconnect_interval",
                text(&self.peer_reconnect_interval),
            ),
            ("peer_storage_path", path(&self.peer_storage_path)),
            ("discovery_mdns", text(&self.discovery_mdns)),
            ("mdns_interfaces", text(&self.mdns_interfaces)),
            ("discovery_grenache", text(&self.discovery_grenache)),
            ("grape_url", text(&self.grape_url)),
            ("rpc_port", text(&self.rpc_port)),
            ("markets", text(&self.markets)),
            ("found", text(&self.found)),
            ("join_window_ms", text(&self.join_window_ms)),
            ("heartbeat_ms", text(&self.heartbeat_ms)),
            ("evict_after_ms", text(&self.evict_after_ms)),
            ("log_format", text(&self.log_format)),
            ("rust_log", text(&self.rust_log)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{ENV_VARS, Settings};
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("p2p-exchange").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn the_clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_setting_has_a_flag() {
        let keys: Vec<&str> = NodeArgs::default()
            .overrides()
            .iter()
            .map(|(k, _)| *k)
            .collect();
        let expected: Vec<String> = ENV_VARS.iter().map(|v| v.to_lowercase()).collect();
        assert_eq!(keys, expected);
    }

    #[test]
    fn no_subcommand_means_node() {
        let cli = parse(&["--p2p-port", "3001", "--found", "--discovery-mdns", "false"]);
        assert!(cli.command.is_none());
        assert_eq!(cli.node.p2p_port, Some(3001));
        assert_eq!(cli.node.found, Some(true));
        assert_eq!(cli.node.discovery_mdns, Some(false));
        assert_eq!(cli.node.discovery_grenache, None);
    }

    #[test]
    fn flags_override_the_environment() {
        let cli = parse(&[
            "node",
            "--bootstrap-peers",
            "a:1,b:2",
            "--discovery-grenache=0",
        ]);
        let Some(Command::Node(args)) = cli.command else {
            panic!("not node")
        };
        let env = vec![
            ("BOOTSTRAP_PEERS".to_owned(), "c:3".to_owned()),
            ("DISCOVERY_GRENACHE".to_owned(), "true".to_owned()),
            ("P2P_PORT".to_owned(), "3009".to_owned()),
        ];
        let settings = Settings::load(None, env, &args.overrides()).unwrap();
        assert_eq!(settings.bootstrap_peers, ["a:1", "b:2"]);
        assert!(!settings.discovery_grenache);
        assert_eq!(settings.p2p_port, 3009);
    }

    #[test]
    fn order_prices_parse_in_every_spelling() {
        let price = |args: &[&str]| {
            let cli = parse(args);
            let Some(Command::Order(order)) = cli.command else {
                panic!("not order")
            };
            order.limit_price()
        };
        assert_eq!(price(&["order", "buy", "BTC-USD", "1"]).unwrap(), None);
        let at = price(&["order", "buy", "BTC-USD", "1", "@", "100.5"]).unwrap();
        assert_eq!(at.as_deref(), Some("100.5"));
        let glued = price(&["order", "sell", "BTC-USD", "1", "@100.5"]).unwrap();
        assert_eq!(glued.as_deref(), Some("100.5"));
        let bare = price(&["order", "sell", "BTC-USD", "1", "100.5"]).unwrap();
        assert_eq!(bare.as_deref(), Some("100.5"));
        assert!(price(&["order", "sell", "BTC-USD", "1", "@"]).is_err());
        assert!(price(&["order", "sell", "BTC-USD", "1", "x", "100"]).is_err());
    }

    #[test]
    fn order_options_parse() {
        let cli = parse(&[
            "order",
            "sell",
            "ETH-USD",
            "2",
            "@",
            "10",
            "--tif",
            "post_only",
            "--client-order-id",
            "abc",
            "--api",
            "http://127.0.0.1:9",
        ]);
        let Some(Command::Order(order)) = cli.command else {
            panic!("not order")
        };
        assert_eq!(order.side, Side::Sell);
        assert_eq!(order.tif, Some(TimeInForce::PostOnly));
        assert_eq!(order.client_order_id.as_deref(), Some("abc"));
        assert_eq!(order.api.api, "http://127.0.0.1:9");
    }

    #[test]
    fn get_is_an_alias_of_order_status() {
        let cli = parse(&["get", "abc-1"]);
        assert!(matches!(cli.command, Some(Command::OrderStatus { ref id, .. }) if id == "abc-1"));
    }
}
