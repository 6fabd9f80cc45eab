//! `p2p-exchange`: run a peer-to-peer exchange node, or talk to one.
//!
//! `p2p-exchange node` (the default when no subcommand is given) runs a node
//! of the `node` library. Its settings layer as defaults < TOML config file
//! (`--config`) < environment (`P2P_PORT`, `BOOTSTRAP_PEERS`, `MARKETS`, ...,
//! all listed in `.env.example` and `--help`; a `.env` file in the current
//! directory is read first, and the real environment wins over it) <
//! command-line flags. At start
//! it prints the node id, the P2P address and the API URL; it logs with
//! `tracing` (`RUST_LOG`, `LOG_FORMAT=json`) to stderr and shuts down
//! gracefully on SIGINT or SIGTERM.
//!
//! The client subcommands (`order`, `cancel`, `order-status`, `book`,
//! `trades`, `markets`, `status`, `peers`) call a node's HTTP API
//! (`--api`, env `API_URL`, default `http://127.0.0.1:8000`) and print
//! aligned tables; an API error prints the server's message and exits 1.
//!
//! ```text
//! P2P_PORT=3001 BOOTSTRAP_PEERS=127.0.0.1:3000 p2p-exchange
//! p2p-exchange order buy BTC-USD 0.5 @ 100.25 --api http://127.0.0.1:8001
//! p2p-exchange book BTC-USD --depth 5
//! ```
//!
//! This binary holds no exchange logic: replication, matching, storage and
//! the HTTP API all live in the `node` crate.

mod cli;
mod client;
mod run;
mod settings;
mod table;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            None => run::node(&cli.node).await,
            Some(Command::Node(ref args)) => run::node(args).await,
            Some(ref command) => client::run(command).await.map(|text| print!("{text}")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", describe(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes joined by `: `, skipping a cause whose text an
/// outer message already contains (some errors repeat their source).
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_causes_print_once() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "address in use");
        let error = anyhow::Error::new(io)
            .context("cannot bind api listener: address in use")
            .context("cannot start the node");
        assert_eq!(
            describe(&error),
            "cannot start the node: cannot bind api listener: address in use"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(describe(&plain), "outer: inner");
    }
}
