//! `cargo xtask cluster N`: a local N-node exchange on 127.0.0.1 that a person can use and watch.
//!
//! Builds `node-bin` once, starts N nodes with consecutive P2P and API ports and their own data
//! directories under `target/cluster/<base port>/`, waits until every node sees N-1 peers and N members, prints
//! a table and how to place an order, then follows the logs with a per-node prefix until Ctrl-C.
//! Every child is stopped (SIGTERM, then SIGKILL after a grace period) when xtask exits, and each
//! node is started with `EXIT_WITH_PARENT=1` so it also stops if xtask is killed with SIGKILL.

use crate::process::ChildGuard;
use anyhow::{Context, Result, bail};
use p2p_exchange_tests::{get_json, http, wait_for};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use xshell::{Shell, cmd};

#[derive(clap::Args, Clone)]
pub(crate) struct Args {
    /// Number of nodes.
    #[arg(default_value_t = 3)]
    pub nodes: u16,
    /// First P2P port; node i listens on base+i-1 (its API on that + 5000).
    #[arg(long, default_value_t = 3000)]
    pub base_port: u16,
    /// Wipe the nodes' data directories first (without it a restarted cluster resumes its state).
    #[arg(long)]
    pub fresh: bool,
    /// Discover peers over mDNS pinned to the loopback interface instead of a bootstrap list.
    #[arg(long)]
    pub mdns: bool,
    /// Start two real Grape servers and let the nodes discover each other through them.
    #[arg(long)]
    pub grenache: bool,
    /// Build and run the debug binary instead of the release one.
    #[arg(long, conflicts_with = "release")]
    pub debug: bool,
    /// Build and run the release binary (the default).
    #[arg(long)]
    pub release: bool,
    /// Start the nodes, wait until they are meshed, print the table and exit (stopping them).
    #[arg(long, hide = true)]
    pub check: bool,
}

/// One running node of the cluster.
pub(crate) struct ClusterNode {
    pub index: u16,
    pub p2p: SocketAddr,
    pub api: SocketAddr,
    pub node_id: String,
    pub child: ChildGuard,
}

pub(crate) fn run(args: Args) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let mut cluster = start(&args)?;
    print_table(&cluster);
    if args.check {
        return Ok(());
    }
    println!("following the logs; Ctrl-C stops every node\n");
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        for node in &mut cluster.nodes {
            if let Some(status) = node.child.try_status() {
                eprintln!("node{} exited with {status}", node.index);
                stop.store(true, Ordering::SeqCst);
            }
        }
    }
    println!("stopping {} nodes", cluster.nodes.len());
    drop(cluster);
    Ok(())
}

/// A started cluster: the nodes (stopped on drop) and the Grapes, if any.
pub(crate) struct Cluster {
    pub nodes: Vec<ClusterNode>,
    /// The binary the nodes run.
    pub binary: PathBuf,
    /// From the first node's start (after the build) until every node was meshed.
    pub meshed_in: Duration,
    _grapes: Option<crate::grape::Grapes>,
}

impl Cluster {
    /// Stops every node gracefully (SIGTERM to all, then up to `grace` each before SIGKILL) and
    /// returns each node's index and exit status (`None` if it was already reaped or could not
    /// be waited for).
    pub(crate) fn stop(&mut self, grace: Duration) -> Vec<(u16, Option<ExitStatus>)> {
        for node in &mut self.nodes {
            node.child.terminate();
        }
        self.nodes
            .iter_mut()
            .map(|node| (node.index, node.child.wait_or_kill(grace)))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Stop the nodes first (gracefully, in parallel), then the Grapes.
        self.stop(Duration::from_secs(10));
    }
}

/// Where the nodes' output goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Logs {
    /// Printed on this process's stdout with a `[nodeN]` prefix (`cargo xtask cluster`).
    Follow,
    /// Written to `<data root>/nodeN.log`, so this process's stdout stays free (the demo).
    Files,
}

/// Where a cluster keeps its files and how its nodes are attached to this process.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    /// The folder holding one data directory per node (`node1`, `node2`, ...).
    pub data_root: PathBuf,
    /// Where the nodes' output goes.
    pub logs: Logs,
    /// Start every node in its own process group, so a Ctrl-C in the terminal reaches only
    /// xtask, which then stops the nodes itself when it is ready to (they still exit with it).
    pub own_process_group: bool,
}

impl Layout {
    /// The layout of `cargo xtask cluster`: `target/cluster/<base port>/`, logs followed.
    pub(crate) fn cluster(base_port: u16) -> Layout {
        // One folder per base port, so a load test (another base port) never wipes or shares
        // the data of a running `cargo xtask cluster`.
        Layout {
            data_root: crate::project_root()
                .join("target/cluster")
                .join(base_port.to_string()),
            logs: Logs::Follow,
            own_process_group: false,
        }
    }
}

/// Builds the binary and starts a meshed cluster as `args` says, in the layout of
/// `cargo xtask cluster`.
pub(crate) fn start(args: &Args) -> Result<Cluster> {
    start_in(args, &Layout::cluster(args.base_port))
}

/// Builds the binary and starts a meshed cluster as `args` says, with its files where `layout`
/// says.
pub(crate) fn start_in(args: &Args, layout: &Layout) -> Result<Cluster> {
    let n = args.nodes;
    if n == 0 {
        bail!("a cluster needs at least one node");
    }
    let sh = Shell::new()?;
    sh.change_dir(crate::project_root());
    let binary = build_binary(&sh, !args.debug)?;
    let data_root = &layout.data_root;
    if args.fresh && data_root.exists() {
        std::fs::remove_dir_all(data_root)
            .with_context(|| format!("wiping {}", data_root.display()))?;
    }
    std::fs::create_dir_all(data_root)?;

    let grapes = if args.grenache {
        let dir = crate::grape::ensure_installed(&sh)?;
        Some(crate::grape::Grapes::start(
            &dir,
            (20001, 20002),
            (30001, 40001),
        )?)
    } else {
        None
    };

    let started = Instant::now();
    let mut nodes = Vec::new();
    for i in 1..=n {
        nodes.push(spawn_node(&binary, args, layout, i)?);
    }
    wait_meshed(&nodes, Duration::from_secs(30))?;
    Ok(Cluster {
        nodes,
        binary,
        meshed_in: started.elapsed(),
        _grapes: grapes,
    })
}

/// Starts node `i` (from 1) of the cluster `args` describes and waits until it answers
/// `/health`: node 1 founds the network, the others bootstrap from it (unless mDNS or Grenache
/// discovery is on).
pub(crate) fn spawn_node(
    binary: &Path,
    args: &Args,
    layout: &Layout,
    i: u16,
) -> Result<ClusterNode> {
    let p2p_port = args
        .base_port
        .checked_add(i - 1)
        .filter(|p| p.checked_add(5000).is_some())
        .with_context(|| {
            format!(
                "node{i}: the ports from --base-port {} overflow",
                args.base_port
            )
        })?;
    let api_port = p2p_port + 5000;
    let p2p: SocketAddr = ([127, 0, 0, 1], p2p_port).into();
    let api: SocketAddr = ([127, 0, 0, 1], api_port).into();
    let data_dir = layout.data_root.join(format!("node{i}"));
    let mut command = Command::new(binary);
    command
        .arg("node")
        .env("P2P_HOST", "127.0.0.1")
        .env("P2P_PORT", p2p_port.to_string())
        .env("API_HOST", "127.0.0.1")
        .env("API_PORT", api_port.to_string())
        .env("DATA_DIR", &data_dir)
        .env("EXIT_WITH_PARENT", "1")
        .env("DISCOVERY_MDNS", if args.mdns { "true" } else { "false" })
        .env("MDNS_INTERFACES", "lo")
        .env(
            "DISCOVERY_GRENACHE",
            if args.grenache { "true" } else { "false" },
        )
        .env("GRAPE_URL", "http://127.0.0.1:30001")
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
    match layout.logs {
        Logs::Follow => {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        Logs::Files => {
            let path = layout.data_root.join(format!("node{i}.log"));
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            command.stdout(file.try_clone()?).stderr(file);
        }
    }
    if layout.own_process_group {
        use std::os::unix::process::CommandExt as _;
        command.process_group(0);
    }
    let discovered = args.mdns || args.grenache;
    if i == 1 {
        command.env("FOUND", "true");
    } else if !discovered {
        command.env("BOOTSTRAP_PEERS", format!("127.0.0.1:{}", args.base_port));
    }
    let mut child = ChildGuard::spawn(command).with_context(|| format!("starting node{i}"))?;
    if layout.logs == Logs::Follow {
        follow_logs(i, &mut child);
    }
    wait_for(Duration::from_secs(20), "/health", || {
        Ok(http(api, "GET", "/health", None)?.0 == 200)
    })
    .with_context(|| format!("node{i} did not answer /health at http://{api}"))?;
    let status = status(api)?;
    let node_id = status["node_id"].as_str().unwrap_or_default().to_owned();
    Ok(ClusterNode {
        index: i,
        p2p,
        api,
        node_id,
        child,
    })
}

/// Waits until every node sees all the others as peers and as members.
pub(crate) fn wait_meshed(nodes: &[ClusterNode], timeout: Duration) -> Result<()> {
    let expected = nodes.len() as u64;
    wait_for(timeout, "every node meshed", || {
        Ok(nodes.iter().all(|node| {
            status(node.api).is_ok_and(|s| {
                s["peers"].as_u64() == Some(expected - 1)
                    && s["members"].as_array().map(|m| m.len() as u64) == Some(expected)
            })
        }))
    })
    .context("the cluster did not mesh (every node seeing N-1 peers and N members)")
}

/// `GET /v1/status` of the node at `api`, as JSON.
pub(crate) fn status(api: SocketAddr) -> Result<serde_json::Value> {
    get_json(api, "/v1/status")
}

fn build_binary(sh: &Shell, release: bool) -> Result<PathBuf> {
    let profile = if release { "release" } else { "debug" };
    let flag = release.then_some("--release");
    cmd!(sh, "cargo build {flag...} -p node-bin --bin p2p-exchange").run()?;
    let binary = crate::project_root()
        .join("target")
        .join(profile)
        .join("p2p-exchange");
    if !binary.exists() {
        bail!("{} was not built", binary.display());
    }
    Ok(binary)
}

fn follow_logs(index: u16, child: &mut ChildGuard) {
    for stream in child.take_output() {
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                println!("[node{index}] {line}");
            }
        });
    }
}

/// Prints the node table, how long meshing took and the CLI lines to place a crossing pair.
pub(crate) fn print_table(cluster: &Cluster) {
    let nodes = &cluster.nodes;
    println!();
    println!(
        "{:<6} {:<10} {:<16} {:<24}",
        "node", "node id", "p2p", "api"
    );
    for node in nodes {
        let short: String = node.node_id.chars().take(8).collect();
        println!(
            "{:<6} {:<10} {:<16} {:<24}",
            format!("node{}", node.index),
            short,
            node.p2p,
            format!("http://{}", node.api)
        );
    }
    println!(
        "\n{} nodes meshed in {:.1} s",
        nodes.len(),
        cluster.meshed_in.as_secs_f64()
    );
    let binary = cluster
        .binary
        .strip_prefix(crate::project_root())
        .unwrap_or(&cluster.binary)
        .display()
        .to_string();
    if let (Some(first), Some(second)) = (nodes.first(), nodes.get(1).or(nodes.first())) {
        println!("place a crossing pair of orders on two nodes:");
        println!(
            "  {binary} order sell BTC-USD 1 @ 100.00 --api http://{}",
            first.api
        );
        println!(
            "  {binary} order buy BTC-USD 1 @ 100.00 --api http://{}",
            second.api
        );
        println!("  {binary} trades BTC-USD --api http://{}", first.api);
    }
}
