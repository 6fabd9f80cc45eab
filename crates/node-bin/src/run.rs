//! `p2p-exchange node`: load the settings, set up logging, run a node until
//! SIGINT or SIGTERM, then shut it down gracefully.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context, anyhow};
use tracing_subscriber::EnvFilter;

use crate::cli::NodeArgs;
use crate::settings::{ENV_VARS, LogFormat, Settings, merge_env, parse_dotenv};

/// Runs a node with the layered settings until a signal stops it.
pub async fn node(args: &NodeArgs) -> anyhow::Result<()> {
    let env = merge_env(dotenv(args)?, process_env()?);
    let settings = Settings::load(args.config.as_deref(), env, &args.overrides())?;
    init_logging(&settings)?;
    // Installed before the node starts, so an early SIGTERM still shuts it
    // down gracefully instead of killing the process.
    let mut signals = Signals::install()?;
    let config = settings.to_node_config();
    // Without the `grenache` feature the node itself logs clearly that
    // Grenache is not compiled in when DISCOVERY_GRENACHE asks for it.
    tracing::info!(
        network_id = %config.network_id,
        data_dir = %config.resolved_data_dir().display(),
        p2p_port = config.p2p_port,
        api_port = config.resolved_api_port(),
        "starting node"
    );
    tracing::debug!(?config, "settings");
    let network_id = config.network_id.clone();
    let node = node::Node::start(config)
        .await
        .context("cannot start the node")?;
    println!("node id:  {}", node.node_id());
    println!("p2p:      {}", node.p2p_addr());
    println!("api:      http://{}", reachable(node.api_addr()));
    if let Some(rpc) = node.rpc_addr() {
        println!("rpc:      {}", reachable(rpc));
    }
    println!("network:  {network_id}");
    println!("data dir: {}", node.data_dir().display());

    let (reason, unexpected) = tokio::select! {
        signal = signals.recv() => (signal, false),
        () = parent_gone(), if exit_with_parent() => ("the parent process exited", false),
        () = node.wait() => ("the node stopped on its own", true),
    };
    tracing::info!(reason, "shutting down");
    tokio::select! {
        result = node.shutdown() => result.context("shutdown failed")?,
        signal = signals.recv() => {
            return Err(anyhow!("{signal} again; stopped without a clean shutdown"));
        }
    }
    tracing::info!("stopped");
    if unexpected {
        return Err(anyhow!("the node stopped on its own (see the log above)"));
    }
    Ok(())
}

/// `EXIT_WITH_PARENT=1`: a supervisor (`cargo xtask cluster`, the end-to-end tests) asks the node
/// to stop gracefully when the process that started it goes away, even if that process was
/// killed with SIGKILL and could not stop its children itself.
fn exit_with_parent() -> bool {
    std::env::var("EXIT_WITH_PARENT").is_ok_and(|v| matches!(v.as_str(), "1" | "true" | "yes"))
}

/// Resolves once this process has been re-parented (its parent exited).
async fn parent_gone() {
    #[cfg(unix)]
    {
        let parent = std::os::unix::process::parent_id();
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            if std::os::unix::process::parent_id() != parent {
                return;
            }
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await
}

/// The `--env-file` (default `.env` in the current directory, if present),
/// read dotenv style.
fn dotenv(args: &NodeArgs) -> anyhow::Result<Vec<(String, String)>> {
    let (path, required) = match &args.env_file {
        Some(path) => (path.clone(), true),
        None => (std::path::PathBuf::from(".env"), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(parse_dotenv(&text)),
        Err(error) if !required && error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(anyhow!("cannot read {}: {error}", path.display())),
    }
}

/// The process environment's node settings. A setting whose value is not
/// valid Unicode is an error rather than silently skipped.
fn process_env() -> anyhow::Result<Vec<(String, String)>> {
    let mut env = Vec::new();
    for (key, value) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if !ENV_VARS.contains(&key) {
            continue;
        }
        let value = value
            .into_string()
            .map_err(|_| anyhow!("environment variable {key} is not valid unicode"))?;
        env.push((key.to_owned(), value));
    }
    Ok(env)
}

/// Logs to stderr, filtered by `rust_log` (default `info`), as text or JSON
/// lines.
fn init_logging(settings: &Settings) -> anyhow::Result<()> {
    let directives = settings.rust_log.as_deref().unwrap_or("info");
    let filter = EnvFilter::try_new(directives)
        .with_context(|| format!("invalid RUST_LOG filter {directives:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let installed = match settings.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|error| anyhow!("cannot install the logger: {error}"))
}

/// The signals that stop a node: SIGINT and SIGTERM (Ctrl-C elsewhere).
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Starts listening; from here on the signals no longer kill the process.
    fn install() -> anyhow::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
                terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The name of the next signal received.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => "Ctrl-C",
                Err(_) => std::future::pending().await,
            }
        }
    }
}

/// An address a client on this machine can use: an unspecified listen
/// address (`0.0.0.0`, `::`) becomes the loopback address.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_become_loopback() {
        let any4: SocketAddr = "0.0.0.0:8000".parse().unwrap();
        assert_eq!(reachable(any4).to_string(), "127.0.0.1:8000");
        let any6: SocketAddr = "[::]:8000".parse().unwrap();
        assert_eq!(reachable(any6).to_string(), "[::1]:8000");
        let lan: SocketAddr = "192.168.1.5:8000".parse().unwrap();
        assert_eq!(reachable(lan), lan);
    }
}
