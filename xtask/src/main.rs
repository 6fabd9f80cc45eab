//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! One module per command. Child processes are held by guards that kill them on drop, so
//! nothing an xtask starts outlives it.

mod chaos;
mod cluster;
mod coverage;
mod demo;
mod docs;
mod fuzz;
mod grape;
mod loadtest;
mod process;
mod test;

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "p2p-exchange project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything CI checks: fmt, clippy -D warnings, docs, and every test of the workspace.
    Test(test::Args),
    /// A local N-node exchange on 127.0.0.1, meshed, with its logs followed until Ctrl-C.
    Cluster(cluster::Args),
    /// A cluster plus example clients trading on every node, with a live summary each second.
    Demo(demo::Args),
    /// Real-process fault injection (kill -9, partitions, pauses) with consistency checks.
    Chaos(chaos::Args),
    /// Drive a cluster through its HTTP API and report throughput, latency and agreement.
    Loadtest(loadtest::Args),
    /// Line coverage per crate with cargo-llvm-cov (installed when missing).
    Coverage,
    /// Run every cargo-fuzz target for a bounded time (nightly; installs cargo-fuzz when missing).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Build the API documentation of every crate (lands in target/doc).
    Docs {
        /// Open the documentation in a browser afterwards.
        #[arg(long)]
        open: bool,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Test(args) => test::run(args),
        Command::Cluster(args) => cluster::run(args),
        Command::Loadtest(args) => loadtest::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Chaos(args) => chaos::run(args),
        Command::Coverage => coverage::run(),
        Command::Docs { open } => docs::run(open),
        Command::Fuzz { seconds } => fuzz::run(seconds),
    }
}

/// The workspace root (the parent of the xtask crate).
pub(crate) fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}
