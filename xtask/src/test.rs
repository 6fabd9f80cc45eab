//! `cargo xtask test`: the README's test command and the whole of CI.

use anyhow::Result;
use xshell::{Shell, cmd};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Skip `cargo fmt --check` and clippy (for a quick local loop).
    #[arg(long)]
    quick: bool,
}

pub(crate) fn run(args: Args) -> Result<()> {
    let sh = Shell::new()?;
    sh.change_dir(crate::project_root());
    if !args.quick {
        cmd!(sh, "cargo fmt --all -- --check").run()?;
        cmd!(
            sh,
            "cargo clippy --workspace --all-targets --all-features -- -D warnings"
        )
        .run()?;
        crate::docs::build(&sh)?;
    }
    {
        let _env = prepare(&sh)?;
        // A watchdog: every test waits on conditions with deadlines, but a hang anywhere must
        // fail the run in bounded time rather than eat CI's whole budget.
        cmd!(
            sh,
            "timeout --kill-after=30 1800 cargo test --workspace --all-features"
        )
        .run()?;
    }

    // The README's other command, end to end: a 3-node cluster comes up meshed, then a short
    // load test through the public API on another cluster; it fails if the digests disagree.
    cmd!(
        sh,
        "cargo xtask cluster 3 --debug --fresh --check --base-port 5300"
    )
    .run()?;
    cmd!(
        sh,
        "cargo xtask loadtest --debug --nodes 3 --base-port 5400 --duration 3 --rate 300 --concurrency 16"
    )
    .run()?;
    // The demo's example clients trade on every node; it fails without a trade or on any
    // digest disagreement.
    cmd!(
        sh,
        "cargo xtask demo --check --debug --base-port 5500 --duration 5"
    )
    .run()?;
    // Real-process faults (kill -9, pauses, partitions, one-way loss) on 5 nodes in network
    // namespaces, one fixed seed so CI is repeatable; `cargo xtask chaos --seed N` explores.
    cmd!(
        sh,
        "cargo xtask chaos --debug --nodes 5 --duration 20 --seed 2 --settle-timeout 30"
    )
    .run()?;
    Ok(())
}

/// Installs and builds everything the tests need on a fresh machine, and sets the environment
/// that tells the tests where it is (kept while the returned guards live): Grape and the
/// grenache client libraries from npm (into the ignored `.tools/`), and the node binary the
/// end-to-end tests run. With `P2P_EXCHANGE_REQUIRE_ALL` set, a test that lacks something fails
/// instead of printing SKIPPED.
pub(crate) fn prepare(sh: &Shell) -> Result<Vec<xshell::PushEnv<'_>>> {
    let grenache = crate::grape::ensure_installed(sh)?;
    cmd!(sh, "cargo build -p node-bin --bin p2p-exchange").run()?;
    let binary = crate::project_root().join("target/debug/p2p-exchange");
    Ok(vec![
        sh.push_env("P2P_EXCHANGE_REQUIRE_ALL", "1"),
        sh.push_env("GRENACHE_NODE_MODULES", grenache.join("node_modules")),
        sh.push_env("P2P_EXCHANGE_BIN", binary),
    ])
}
