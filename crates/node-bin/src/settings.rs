//! Node settings: defaults < config file < environment < command-line flags.
//!
//! All four layers go through the `config` crate. The environment layer is
//! fed a *filtered* map (only the variables in [`ENV_VARS`]) rather than the
//! whole process environment, so unrelated variables such as `PATH` never
//! reach the deserializer, and tests can pass a map instead of mutating the
//! process environment. Values from the environment and from flags arrive as
//! strings; the `config` crate coerces them to numbers and booleans
//! (`true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`), and the list settings
//! (`BOOTSTRAP_PEERS`, `MDNS_INTERFACES`, `MARKETS`) accept either a
//! comma-separated string or, in a TOML file, an array.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, bail};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, de};

/// Every environment variable a node reads, in the order `--help` and
/// `.env.example` list them.
pub const ENV_VARS: &[&str] = &[
    "NETWORK_ID",
    "DATA_DIR",
    "P2P_HOST",
    "P2P_PORT",
    "API_HOST",
    "API_PORT",
    "BOOTSTRAP_PEERS",
    "MAX_PEERS",
    "PEER_RECONNECT_INTERVAL",
    "PEER_STORAGE_PATH",
    "DISCOVERY_MDNS",
    "MDNS_INTERFACES",
    "DISCOVERY_GRENACHE",
    "GRAPE_URL",
    "RPC_PORT",
    "MARKETS",
    "FOUND",
    "JOIN_WINDOW_MS",
    "HEARTBEAT_MS",
    "EVICT_AFTER_MS",
    "LOG_FORMAT",
    "RUST_LOG",
];

/// Settings whose value is a list; for these an empty value means "empty
/// list", for every other setting an empty value counts as unset.
const LIST_VARS: &[&str] = &["BOOTSTRAP_PEERS", "MDNS_INTERFACES", "MARKETS"];

/// The fully layered settings of one node process.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Network to join or found.
    pub network_id: String,
    /// Data directory; `None` derives `./data/node-<p2p_port>`.
    pub data_dir: Option<PathBuf>,
    /// P2P listen host.
    pub p2p_host: String,
    /// P2P listen port.
    pub p2p_port: u16,
    /// HTTP API listen host.
    pub api_host: String,
    /// HTTP API port; `None` derives `p2p_port + 5000`.
    pub api_port: Option<u16>,
    /// Peers to dial at start, `host:port`.
    #[serde(deserialize_with = "string_list")]
    pub bootstrap_peers: Vec<String>,
    /// Maximum number of connected peers.
    pub max_peers: usize,
    /// Reconnect interval in milliseconds.
    pub peer_reconnect_interval: u64,
    /// Peer table file; `None` derives `<data_dir>/.peers.json`.
    pub peer_storage_path: Option<PathBuf>,
    /// Whether mDNS discovery runs.
    pub discovery_mdns: bool,
    /// Interfaces mDNS is pinned to; empty means all non-loopback ones.
    #[serde(deserialize_with = "string_list")]
    pub mdns_interfaces: Vec<String>,
    /// Whether Grenache discovery runs.
    pub discovery_grenache: bool,
    /// The Grape HTTP API.
    pub grape_url: String,
    /// Grenache RPC port (hybrid mode); `None` derives `p2p_port + 6000`.
    pub rpc_port: Option<u16>,
    /// Markets this node trades.
    #[serde(deserialize_with = "market_list")]
    pub markets: Vec<Market>,
    /// Found a new network without waiting for discovery.
    pub found: bool,
    /// How long a fresh node looks for an existing network, in milliseconds.
    pub join_window_ms: u64,
    /// Transport heartbeat interval in milliseconds.
    pub heartbeat_ms: u64,
    /// Silence after which the other members vote to evict a member, in
    /// milliseconds (0: never evict).
    pub evict_after_ms: u64,
    /// Log line format.
    pub log_format: LogFormat,
    /// `tracing` filter directives; `None` means `info`.
    pub rust_log: Option<String>,
}

impl Default for Settings {
    /// The node library's defaults, so the two can never drift apart.
    fn default() -> Self {
        let node = node::Config::default();
        Settings {
            network_id: node.network_id,
            data_dir: node.data_dir,
            p2p_host: node.p2p_host,
            p2p_port: node.p2p_port,
            api_host: node.api_host,
            api_port: node.api_port,
            bootstrap_peers: node.bootstrap_peers,
            max_peers: node.max_peers,
            peer_reconnect_interval: node.peer_reconnect_interval,
            peer_storage_path: node.peer_storage_path,
            discovery_mdns: node.discovery_mdns,
            mdns_interfaces: node.mdns_interfaces,
            discovery_grenache: node.discovery_grenache,
            grape_url: node.grape_url,
            rpc_port: node.rpc_port,
            markets: node
                .markets
                .into_iter()
                .map(|m| Market {
                    name: m.name,
                    tick_size: m.tick_size,
                    lot_size: m.lot_size,
                })
                .collect(),
            found: node.found,
            join_window_ms: node.join_window_ms,
            heartbeat_ms: node.heartbeat_ms,
            evict_after_ms: node.evict_after_ms,
            log_format: LogFormat::Text,
            rust_log: None,
        }
    }
}

impl Settings {
    /// Layers `file` (TOML, if given), the environment variables in `env`
    /// (any others are ignored) and the flag `overrides` over the defaults.
    ///
    /// `overrides` pairs a setting's key (the lowercase variable name) with
    /// the flag's value, `None` when the flag was not given.
    pub fn load<I>(
        file: Option<&Path>,
        env: I,
        overrides: &[(&'static str, Option<String>)],
    ) -> anyhow::Result<Settings>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let mut builder = config::Config::builder();
        if let Some(path) = file {
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        builder = builder.add_source(config::Environment::default().source(Some(env_layer(env))));
        for (key, value) in overrides {
            builder = builder
                .set_override_option(*key, value.clone())
                .with_context(|| format!("invalid flag for {key}"))?;
        }
        let layered = builder.build().context("cannot read the configuration")?;
        let settings: Settings = layered.try_deserialize().context("invalid configuration")?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what the types alone cannot.
    fn validate(&self) -> anyhow::Result<()> {
        for peer in &self.bootstrap_peers {
            let port = peer
                .rsplit_once(':')
                .map(|(host, port)| (host, port.parse::<u16>()));
            match port {
                Some((host, Ok(_))) if !host.is_empty() => {}
                _ => bail!("bootstrap peer {peer:?} is not host:port"),
            }
        }
        let mut names: Vec<&str> = self.markets.iter().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            bail!("market {} is listed twice", pair[0]);
        }
        if self.markets.is_empty() {
            bail!("at least one market is required");
        }
        Ok(())
    }

    /// The node library's configuration.
    // Assigning field by field onto the defaults (rather than a struct
    // literal) keeps this compiling when the library grows a setting.
    #[allow(clippy::field_reassign_with_default)]
    pub fn to_node_config(&self) -> node::Config {
        let mut config = node::Config::default();
        config.network_id = self.network_id.clone();
        config.data_dir = self.data_dir.clone();
        config.p2p_host = self.p2p_host.clone();
        config.p2p_port = self.p2p_port;
        config.api_host = self.api_host.clone();
        config.api_port = self.api_port;
        config.bootstrap_peers = self.bootstrap_peers.clone();
        config.max_peers = self.max_peers;
        config.peer_reconnect_interval = self.peer_reconnect_interval;
        config.peer_storage_path = self.peer_storage_path.clone();
        config.discovery_mdns = self.discovery_mdns;
        config.mdns_interfaces = self.mdns_interfaces.clone();
        config.discovery_grenache = self.discovery_grenache;
        config.grape_url = self.grape_url.clone();
        config.rpc_port = self.rpc_port;
        config.markets = self
            .markets
            .iter()
            .map(|m| node::MarketConfig {
                name: m.name.clone(),
                tick_size: m.tick_size,
                lot_size: m.lot_size,
            })
            .collect();
        config.found = self.found;
        config.join_window_ms = self.join_window_ms;
        config.heartbeat_ms = self.heartbeat_ms;
        config.evict_after_ms = self.evict_after_ms;
        config
    }
}

/// Reads a `.env` file's `KEY=value` lines (dotenv style): blank lines and
/// `#` comments are skipped, an `export ` prefix is allowed, a value may be
/// wrapped in single or double quotes, and an unquoted value ends at ` #`.
/// Lines that are not assignments are ignored.
pub fn parse_dotenv(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let value = value.trim();
        let quoted = ['"', '\'']
            .iter()
            .find(|q| value.len() >= 2 && value.starts_with(**q) && value.ends_with(**q));
        let value = match quoted {
            Some(_) => &value[1..value.len() - 1],
            None => value.split_once(" #").map_or(value, |(v, _)| v).trim_end(),
        };
        pairs.push((key.to_owned(), value.to_owned()));
    }
    pairs
}

/// The environment as a node sees it: `dotenv` entries overlaid by the
/// process environment (a variable that is really set always wins, as with
/// every dotenv implementation).
pub fn merge_env(
    dotenv: Vec<(String, String)>,
    process: Vec<(String, String)>,
) -> Vec<(String, String)> {
    let mut merged: HashMap<String, String> = dotenv.into_iter().collect();
    merged.extend(process);
    merged.into_iter().collect()
}

/// The environment layer: known variables only, keyed by their lowercase
/// name; an empty value is unset, except for lists where it means "none".
fn env_layer<I>(env: I) -> HashMap<String, String>
where
    I: IntoIterator<Item = (String, String)>,
{
    env.into_iter()
        .filter(|(key, value)| {
            ENV_VARS.contains(&key.as_str())
                && (!value.trim().is_empty() || LIST_VARS.contains(&key.as_str()))
        })
        .map(|(key, value)| (key.to_lowercase(), value))
        .collect()
}

/// One market: `NAME:TICK:LOT` on the command line and in the environment.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Market {
    /// The market's name, e.g. `BTC-USD`.
    pub name: String,
    /// Price increment.
    #[serde(with = "rust_decimal::serde::str")]
    pub tick_size: Decimal,
    /// Quantity increment.
    #[serde(with = "rust_decimal::serde::str")]
    pub lot_size: Decimal,
}

impl FromStr for Market {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Market> {
        let parts: Vec<&str> = s.trim().split(':').map(str::trim).collect();
        let [name, tick, lot] = parts.as_slice() else {
            bail!("market {s:?} is not NAME:TICK:LOT");
        };
        if name.is_empty() {
            bail!("market {s:?} has no name");
        }
        let decimal = |what: &str, text: &str| -> anyhow::Result<Decimal> {
            let value = Decimal::from_str(text)
                .with_context(|| format!("market {name}: {what} {text:?} is not a decimal"))?;
            if value <= Decimal::ZERO {
                bail!("market {name}: {what} must be positive");
            }
            Ok(value)
        };
        Ok(Market {
            name: (*name).to_owned(),
            tick_size: decimal("tick size", tick)?,
            lot_size: decimal("lot size", lot)?,
        })
    }
}

impl fmt::Display for Market {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.name, self.tick_size, self.lot_size)
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<LogFormat> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => bail!("log format {other:?} is neither text nor json"),
        }
    }
}

impl<'de> Deserialize<'de> for LogFormat {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// Splits a comma-separated string, trimming and dropping empty items.
fn split_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|item| !item.is_empty())
}

/// A list given as an array (TOML) or as a comma-separated string.
#[derive(Deserialize)]
#[serde(untagged)]
enum ListOrString<T> {
    List(Vec<T>),
    String(String),
}

fn string_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    Ok(match ListOrString::<String>::deserialize(deserializer)? {
        ListOrString::List(items) => items
            .iter()
            .map(|item| item.trim())
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect(),
        ListOrString::String(s) => split_list(&s).map(str::to_owned).collect(),
    })
}

/// A market as `NAME:TICK:LOT` or as a table of decimal strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum MarketRepr {
    Spec(String),
    Table(Market),
}

fn market_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Market>, D::Error> {
    let specs: Vec<MarketRepr> = match ListOrString::<MarketRepr>::deserialize(deserializer)? {
        ListOrString::List(items) => items,
        ListOrString::String(s) => split_list(&s)
            .map(|spec| MarketRepr::Spec(spec.to_owned()))
            .collect(),
    };
    specs
        .into_iter()
        .map(|repr| match repr {
            MarketRepr::Spec(spec) => spec.parse().map_err(de::Error::custom),
            MarketRepr::Table(market) => Ok(market),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn load_env(pairs: &[(&str, &str)]) -> anyhow::Result<Settings> {
        Settings::load(None, env(pairs), &[])
    }

    fn write_toml(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn nothing_given_yields_the_node_defaults() {
        let settings = load_env(&[]).unwrap();
        assert_eq!(settings, Settings::default());
        assert_eq!(settings.p2p_port, 3000);
        assert_eq!(settings.p2p_host, "0.0.0.0");
        assert_eq!(settings.max_peers, 50);
        assert_eq!(settings.peer_reconnect_interval, 30_000);
        assert!(settings.discovery_mdns);
        assert!(settings.discovery_grenache);
        assert_eq!(settings.grape_url, "http://127.0.0.1:30001");
        assert_eq!(settings.log_format, LogFormat::Text);
        assert_eq!(settings.to_node_config().resolved_api_port(), 8000);
    }

    #[test]
    fn each_layer_overrides_the_one_below() {
        let file = write_toml("p2p_port = 3001\nmax_peers = 7\nnetwork_id = \"from-file\"\n");
        let env = env(&[("P2P_PORT", "3002"), ("MAX_PEERS", "8")]);
        let flags = [("p2p_port", Some("3003".to_owned())), ("max_peers", None)];
        let settings = Settings::load(Some(file.path()), env, &flags).unwrap();
        assert_eq!(settings.p2p_port, 3003, "flag beats environment");
        assert_eq!(settings.max_peers, 8, "environment beats file");
        assert_eq!(settings.network_id, "from-file", "file beats default");
        assert_eq!(settings.heartbeat_ms, Settings::default().heartbeat_ms);
    }

    #[test]
    fn derived_api_port_follows_the_layered_p2p_port() {
        let settings = load_env(&[("P2P_PORT", "3005")]).unwrap();
        assert_eq!(settings.api_port, None);
        assert_eq!(settings.to_node_config().resolved_api_port(), 8005);
        let settings = load_env(&[("P2P_PORT", "3005"), ("API_PORT", "9999")]).unwrap();
        assert_eq!(settings.to_node_config().resolved_api_port(), 9999);
    }

    #[test]
    fn lists_parse_from_comma_separated_strings() {
        let settings =
            load_env(&[("BOOTSTRAP_PEERS", "a:1, b:2,,"), ("MDNS_INTERFACES", "lo")]).unwrap();
        assert_eq!(settings.bootstrap_peers, ["a:1", "b:2"]);
        assert_eq!(settings.mdns_interfaces, ["lo"]);
        let single = load_env(&[("BOOTSTRAP_PEERS", "127.0.0.1:3000")]).unwrap();
        assert_eq!(single.bootstrap_peers, ["127.0.0.1:3000"]);
        let ipv6 = load_env(&[("BOOTSTRAP_PEERS", "[::1]:3000")]).unwrap();
        assert_eq!(ipv6.bootstrap_peers, ["[::1]:3000"]);
    }

    #[test]
    fn an_empty_list_variable_clears_the_file_list() {
        let file = write_toml("bootstrap_peers = [\"a:1\", \"b:2\"]\n");
        let from_file = Settings::load(Some(file.path()), env(&[]), &[]).unwrap();
        assert_eq!(from_file.bootstrap_peers, ["a:1", "b:2"]);
        let cleared =
            Settings::load(Some(file.path()), env(&[("BOOTSTRAP_PEERS", "")]), &[]).unwrap();
        assert!(cleared.bootstrap_peers.is_empty());
    }

    #[test]
    fn an_empty_scalar_variable_counts_as_unset() {
        let settings = load_env(&[("API_PORT", ""), ("P2P_PORT", " ")]).unwrap();
        assert_eq!(settings.api_port, None);
        assert_eq!(settings.p2p_port, 3000);
    }

    #[test]
    fn markets_parse_from_the_environment() {
        let settings = load_env(&[(
            "MARKETS",
            "BTC-USD:0.01:0.0001,ETH-USD:0.01:0.001, SOL-USD:0.001:1",
        )])
        .unwrap();
        let expected = [
            ("BTC-USD", dec!(0.01), dec!(0.0001)),
            ("ETH-USD", dec!(0.01), dec!(0.001)),
            ("SOL-USD", dec!(0.001), dec!(1)),
        ];
        assert_eq!(settings.markets.len(), expected.len());
        for (market, (name, tick, lot)) in settings.markets.iter().zip(expected) {
            assert_eq!(
                (market.name.as_str(), market.tick_size, market.lot_size),
                (name, tick, lot)
            );
        }
    }

    #[test]
    fn markets_parse_from_a_file_as_strings_or_tables() {
        let file = write_toml(
            "markets = [\"BTC-USD:0.5:1\", { name = \"ETH-USD\", tick_size = \"0.01\", lot_size = \"0.1\" }]\n",
        );
        let settings = Settings::load(Some(file.path()), env(&[]), &[]).unwrap();
        let names: Vec<String> = settings.markets.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["BTC-USD:0.5:1", "ETH-USD:0.01:0.1"]);
    }

    #[test]
    fn bad_markets_are_rejected() {
        for bad in [
            "BTC-USD",
            "BTC-USD:0.01",
            "BTC-USD:x:1",
            "BTC-USD:0:1",
            "BTC-USD:0.01:-1",
            ":0.01:1",
            "BTC-USD:0.01:1,BTC-USD:0.1:1",
            "",
        ] {
            assert!(load_env(&[("MARKETS", bad)]).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn booleans_accept_the_usual_spellings() {
        for (text, expected) in [
            ("false", false),
            ("0", false),
            ("no", false),
            ("off", false),
            ("FALSE", false),
            ("true", true),
            ("1", true),
            ("yes", true),
            ("on", true),
        ] {
            let settings = load_env(&[
                ("DISCOVERY_MDNS", text),
                ("DISCOVERY_GRENACHE", text),
                ("FOUND", text),
            ])
            .unwrap();
            assert_eq!(settings.discovery_mdns, expected, "{text}");
            assert_eq!(settings.discovery_grenache, expected, "{text}");
            assert_eq!(settings.found, expected, "{text}");
        }
        assert!(load_env(&[("FOUND", "maybe")]).is_err());
    }

    #[test]
    fn bad_scalars_are_rejected() {
        for (key, bad) in [
            ("P2P_PORT", "70000"),
            ("P2P_PORT", "abc"),
            ("MAX_PEERS", "-1"),
            ("LOG_FORMAT", "xml"),
            ("BOOTSTRAP_PEERS", "nohost"),
            ("BOOTSTRAP_PEERS", "a:notaport"),
            ("BOOTSTRAP_PEERS", ":3000"),
        ] {
            assert!(load_env(&[(key, bad)]).is_err(), "{key}={bad} accepted");
        }
    }

    #[test]
    fn unrelated_variables_are_ignored() {
        let settings = load_env(&[
            ("PATH", "/usr/bin"),
            ("HOME", "/root"),
            ("p2p_port", "1"),
            ("P2P_PORTS", "1"),
        ])
        .unwrap();
        assert_eq!(settings, Settings::default());
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let file = write_toml("p2p_prot = 3001\n");
        let err = Settings::load(Some(file.path()), env(&[]), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("p2p_prot"), "{err:#}");
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let path = Path::new("/nonexistent/p2p-exchange.toml");
        assert!(Settings::load(Some(path), env(&[]), &[]).is_err());
    }

    #[test]
    fn log_settings_layer_like_the_rest() {
        let settings =
            load_env(&[("LOG_FORMAT", "JSON"), ("RUST_LOG", "debug,node=trace")]).unwrap();
        assert_eq!(settings.log_format, LogFormat::Json);
        assert_eq!(settings.rust_log.as_deref(), Some("debug,node=trace"));
    }

    #[test]
    fn every_field_is_reachable_from_the_environment() {
        let settings = load_env(&[
            ("NETWORK_ID", "net-7"),
            ("DATA_DIR", "/tmp/d"),
            ("P2P_HOST", "127.0.0.1"),
            ("P2P_PORT", "4000"),
            ("API_HOST", "0.0.0.0"),
            ("API_PORT", "4001"),
            ("BOOTSTRAP_PEERS", "127.0.0.1:3000"),
            ("MAX_PEERS", "9"),
            ("PEER_RECONNECT_INTERVAL", "1234"),
            ("PEER_STORAGE_PATH", "/tmp/p.json"),
            ("DISCOVERY_MDNS", "false"),
            ("MDNS_INTERFACES", "lo,eth0"),
            ("DISCOVERY_GRENACHE", "0"),
            ("GRAPE_URL", "http://127.0.0.1:1"),
            ("RPC_PORT", "4002"),
            ("MARKETS", "X-Y:1:1"),
            ("FOUND", "1"),
            ("JOIN_WINDOW_MS", "10"),
            ("HEARTBEAT_MS", "20"),
            ("EVICT_AFTER_MS", "0"),
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "warn"),
        ])
        .unwrap();
        let config = settings.to_node_config();
        assert_eq!(config.network_id, "net-7");
        assert_eq!(config.data_dir.as_deref(), Some(Path::new("/tmp/d")));
        assert_eq!(config.p2p_host, "127.0.0.1");
        assert_eq!(config.p2p_port, 4000);
        assert_eq!(config.api_host, "0.0.0.0");
        assert_eq!(config.api_port, Some(4001));
        assert_eq!(config.bootstrap_peers, ["127.0.0.1:3000"]);
        assert_eq!(config.max_peers, 9);
        assert_eq!(config.peer_reconnect_interval, 1234);
        assert_eq!(
            config.peer_storage_path.as_deref(),
            Some(Path::new("/tmp/p.json"))
        );
        assert!(!config.discovery_mdns);
        assert_eq!(config.mdns_interfaces, ["lo", "eth0"]);
        assert!(!config.discovery_grenache);
        assert_eq!(config.grape_url, "http://127.0.0.1:1");
        assert_eq!(config.rpc_port, Some(4002));
        assert_eq!(config.markets.len(), 1);
        assert_eq!(config.markets[0].name, "X-Y");
        assert!(config.found);
        assert_eq!(config.join_window_ms, 10);
        assert_eq!(config.heartbeat_ms, 20);
        assert_eq!(config.evict_after_ms, 0, "0 disables eviction");
        assert_eq!(settings.log_format, LogFormat::Json);
        assert_eq!(settings.rust_log.as_deref(), Some("warn"));
        // Every variable was used above.
        assert_eq!(ENV_VARS.len(), 22);
    }

    /// `.env.example` lists every setting once, and loading it as the
    /// environment yields exactly the defaults it documents.
    #[test]
    fn env_example_matches_the_defaults() {
        let text = include_str!("../../../.env.example");
        let mut seen = Vec::new();
        let mut pairs = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            let assignment = line.strip_prefix("# ").unwrap_or(line);
            let Some((key, value)) = assignment.split_once('=') else {
                continue;
            };
            if !key
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                continue;
            }
            seen.push(key.to_owned());
            if !line.starts_with('#') {
                pairs.push((key.to_owned(), value.to_owned()));
            }
        }
        for var in ENV_VARS {
            assert!(
                seen.iter().any(|key| key == var),
                "{var} missing from .env.example"
            );
        }
        let loaded = Settings::load(None, pairs, &[]).unwrap();
        assert_eq!(loaded, Settings::default());
    }

    #[test]
    fn dotenv_files_parse_like_dotenv() {
        let text = "\
# a comment
NETWORK_ID=net-1
export P2P_PORT=3001
BOOTSTRAP_PEERS=\"a:1,b:2\"
GRAPE_URL='http://127.0.0.1:1'
MAX_PEERS=9 # trailing comment
MARKETS=
not an assignment
BAD KEY=1
";
        let pairs = parse_dotenv(text);
        let expected = [
            ("NETWORK_ID", "net-1"),
            ("P2P_PORT", "3001"),
            ("BOOTSTRAP_PEERS", "a:1,b:2"),
            ("GRAPE_URL", "http://127.0.0.1:1"),
            ("MAX_PEERS", "9"),
            ("MARKETS", ""),
        ];
        let got: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn the_process_environment_beats_the_dotenv_file() {
        let dotenv = parse_dotenv("P2P_PORT=3001\nMAX_PEERS=9\n");
        let merged = merge_env(dotenv, env(&[("P2P_PORT", "3002")]));
        let settings = Settings::load(None, merged, &[]).unwrap();
        assert_eq!(settings.p2p_port, 3002);
        assert_eq!(settings.max_peers, 9);
    }

    /// `.env.example` is itself a valid dotenv file: copied to `.env`
    /// unchanged, it yields exactly the defaults it documents.
    #[test]
    fn env_example_as_a_dotenv_file_yields_the_defaults() {
        let pairs = parse_dotenv(include_str!("../../../.env.example"));
        assert!(pairs.len() >= 10, "{pairs:?}");
        assert_eq!(
            Settings::load(None, pairs, &[]).unwrap(),
            Settings::default()
        );
    }
}
