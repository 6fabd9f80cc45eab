//! `cargo xtask chaos`: Jepsen-style fault injection with real processes (issue 7).
//!
//! Builds the `p2p-exchange` binary, puts N nodes in N network namespaces on one bridge (node 1
//! founds the network, the others bootstrap; mDNS and Grenache off), waits until they are meshed,
//! then for `--duration` seconds runs concurrent clients that place random orders and cancels on
//! every node through the HTTP API while a schedule drawn from `--seed` injects faults one at a
//! time, each healed after a bounded hold:
//!
//! | kind      | what                                                                  |
//! |-----------|-----------------------------------------------------------------------|
//! | crash     | `kill -9` of a node, restarted on the same data directory             |
//! | pause     | SIGSTOP of a node, then SIGCONT                                       |
//! | isolate   | one node cut from all others, both ways                               |
//! | split     | a minority (`(n-1)/2` nodes) cut from the majority, both ways         |
//! | link      | one link cut both ways (the two ends still reach each other via relays) |
//! | one-way   | every packet a node sends (or every packet sent to it) dropped        |
//! | flap      | a node's links to all others cut and healed every 200-800 ms          |
//!
//! Links are cut with blackhole routes inside the namespaces (this kernel has no `netem`).
//! During the run a monitor polls every node's status and recent trades and checks that settled
//! trades agree across nodes (prefixes) and that a node's settled log only grows. Afterwards
//! everything is healed, the run waits for quiescence (with a deadline) and checks the five
//! properties of issue 7; it prints a table and exits non-zero on any failure, with the seed.
//! The fault schedule and the clients' orders are a function of the seed; the timing of real
//! processes is not, so a seed replays the same faults, not the same interleaving.
//!
//! Needs root and `ip` (it prints SKIPPED otherwise, or fails when `P2P_EXCHANGE_REQUIRE_ALL=1`).
//! Namespaces and processes are removed on every exit (guards; Ctrl-C stops the run), and
//! namespaces left by a chaos run that was killed are removed at the next start.

use anyhow::{Context, Result, bail};
use clap::Args as ClapArgs;
use p2p_exchange_tests::{
    Netns, NsNode, netns_unavailable, ns_http_many, ns_http_timeout, require_all, wait_for,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use xshell::{Shell, cmd};

/// Options of `cargo xtask chaos`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Number of nodes (each in its own network namespace).
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// Seconds of load and faults (then heal, quiescence and the checks).
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Seed of the fault schedule and the clients' orders (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Build and run the debug binary instead of the release one.
    #[arg(long)]
    pub debug: bool,
    /// `EVICT_AFTER_MS` of every node: silence before members vote to evict (0 = never).
    #[arg(long, default_value_t = 3000)]
    pub evict_after_ms: u64,
    /// Concurrent clients per node.
    #[arg(long, default_value_t = 2)]
    pub clients: usize,
    /// `HEARTBEAT_MS` of every node.
    #[arg(long, default_value_t = 250)]
    pub heartbeat_ms: u64,
    /// Seconds allowed for quiescence after the heal (every node a member, nothing pending, one
    /// digest).
    #[arg(long, default_value_t = 90)]
    pub settle_timeout: u64,
    /// Print the fault schedule of the seed and exit (no root needed).
    #[arg(long)]
    pub plan: bool,
}

/// Runs the command.
pub fn run(args: Args) -> Result<()> {
    if !(3..=20).contains(&args.nodes) {
        bail!("--nodes must be between 3 and 20");
    }
    if args.duration == 0 || args.duration > 3600 {
        bail!("--duration must be between 1 and 3600 seconds");
    }
    if !(1..=16).contains(&args.clients) {
        bail!("--clients must be between 1 and 16");
    }
    if args.plan {
        let seed = args.seed.context("--plan needs --seed")?;
        print_schedule(
            &schedule(seed, args.nodes, Duration::from_secs(args.duration)),
            args.nodes,
        );
        return Ok(());
    }
    if let Some(reason) = netns_unavailable() {
        if require_all() {
            bail!("P2P_EXCHANGE_REQUIRE_ALL=1 but `cargo xtask chaos` cannot run: {reason}");
        }
        eprintln!("\n*** SKIPPED: cargo xtask chaos needs root and `ip`: {reason} ***\n");
        return Ok(());
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64 % 1_000_000_000)
            .unwrap_or(1)
    });
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    println!("chaos: seed {seed} (replay with `cargo xtask chaos --seed {seed}`)");
    let outcome = run_seeded(&args, seed, &stop);
    match outcome {
        Ok(report) => {
            println!("{}", report.render(&args, seed));
            if report.passed() {
                println!("chaos: PASSED (seed {seed})");
                Ok(())
            } else {
                bail!(
                    "chaos: FAILED with seed {seed}; replay with `cargo xtask chaos --nodes {} --duration {} --evict-after-ms {} --seed {seed}`",
                    args.nodes,
                    args.duration,
                    args.evict_after_ms
                )
            }
        }
        Err(e) => Err(e.context(format!("chaos run with seed {seed} did not complete"))),
    }
}

// ---- The fault schedule ----------------------------------------------------------------------

/// One kind of fault.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Fault {
    Crash { node: usize },
    Pause { node: usize },
    Isolate { node: usize },
    Split { minority: Vec<usize> },
    Link { a: usize, b: usize },
    OneWay { node: usize, outgoing: bool },
    Flap { node: usize, period_ms: u64 },
}

impl Fault {
    const KINDS: [&'static str; 7] = [
        "crash", "pause", "isolate", "split", "link", "one-way", "flap",
    ];

    fn kind(&self) -> &'static str {
        match self {
            Fault::Crash { .. } => "crash",
            Fault::Pause { .. } => "pause",
            Fault::Isolate { .. } => "isolate",
            Fault::Split { .. } => "split",
            Fault::Link { .. } => "link",
            Fault::OneWay { .. } => "one-way",
            Fault::Flap { .. } => "flap",
        }
    }

    fn describe(&self, n: usize) -> String {
        match self {
            Fault::Crash { node } => format!("kill -9 node{node}, then restart it"),
            Fault::Pause { node } => format!("SIGSTOP node{node}, then SIGCONT"),
            Fault::Isolate { node } => format!("cut node{node} from everyone"),
            Fault::Split { minority } => {
                let majority: Vec<usize> = (1..=n).filter(|i| !minority.contains(i)).collect();
                format!("partition {minority:?} | {majority:?}")
            }
            Fault::Link { a, b } => format!("cut the link node{a} <-> node{b}"),
            Fault::OneWay { node, outgoing } => {
                if *outgoing {
                    format!("drop everything node{node} sends")
                } else {
                    format!("drop everything sent to node{node}")
                }
            }
            Fault::Flap { node, period_ms } => {
                format!("flap node{node}'s links every {period_ms} ms")
            }
        }
    }
}

/// A fault, when it starts (from the start of the load) and how long it is held.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Step {
    at: Duration,
    hold: Duration,
    fault: Fault,
}

/// The fault schedule of a run: a pure function of the seed, the node count and the duration.
/// Faults come one at a time, each held 1.5-6 s, with 1-3 s of calm between them; the last one
/// is healed before the end of the run.
fn schedule(seed: u64, n: usize, duration: Duration) -> Vec<Step> {
    let mut rng = Rng::new(seed ^ 0x00c4_a05c_4a05);
    let mut steps = Vec::new();
    let mut at = Duration::from_millis(2000 + rng.below(1000));
    loop {
        let hold = Duration::from_millis(1500 + rng.below(4500));
        if at + hold + Duration::from_millis(500) > duration {
            break;
        }
        let node = 1 + rng.below(n as u64) as usize;
        let fault = match rng.below(Fault::KINDS.len() as u64) {
            0 => Fault::Crash { node },
            1 => Fault::Pause { node },
            2 => Fault::Isolate { node },
            3 => {
                let mut all: Vec<usize> = (1..=n).collect();
                rng.shuffle(&mut all);
                let mut minority = all[..(n - 1) / 2].to_vec();
                minority.sort_unstable();
                Fault::Split { minority }
            }
            4 => {
                let mut b = 1 + rng.below(n as u64 - 1) as usize;
                if b >= node {
                    b += 1;
                }
                Fault::Link {
                    a: node.min(b),
                    b: node.max(b),
                }
            }
            5 => Fault::OneWay {
                node,
                outgoing: rng.below(2) == 0,
            },
            _ => Fault::Flap {
                node,
                period_ms: 200 + rng.below(600),
            },
        };
        steps.push(Step { at, hold, fault });
        at += hold + Duration::from_millis(1000 + rng.below(2000));
    }
    steps
}

/// SplitMix64: small and seedable (nothing here needs cryptographic randomness).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

// ---- The run ---------------------------------------------------------------------------------

const MARKETS: [&str; 2] = ["BTC-USD", "ETH-USD"];
/// The API port of every node (each in its own namespace).
const API_PORT: u16 = 8000;
const P2P_PORT: u16 = 4000;
/// How many recent trades the monitor compares each round.
const RECENT_TRADES: usize = 200;
/// All the trades a node keeps (`MAX_TRADES_KEPT` of the node crate).
const ALL_TRADES: usize = 10_000;

/// A node as clients and the monitor see it: where its API is.
#[derive(Clone)]
struct Endpoint {
    index: usize,
    ns: String,
    api: String,
}

impl Endpoint {
    fn get(&self, path: &str, timeout: Duration) -> Result<Value> {
        let (code, text) = ns_http_timeout(&self.ns, &self.api, "GET", path, None, timeout)?;
        if code != 200 {
            bail!("node{}: GET {path} answered {code}: {text}", self.index);
        }
        Ok(serde_json::from_str(&text)?)
    }

    fn get_many(&self, paths: &[String], timeout: Duration) -> Result<Vec<(u16, String)>> {
        ns_http_many(&self.ns, &self.api, paths, timeout)
    }
}

/// An order a node acknowledged (201).
#[derive(Clone, Debug)]
struct Acked {
    order_id: String,
    node: usize,
}

/// What the clients and the monitor share with the fault thread.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    acked: Mutex<Vec<Acked>>,
    cancels_acked: AtomicU64,
    /// Failed requests by kind (`place 503 ...`, `place timeout`, ...).
    errors: Mutex<BTreeMap<String, u64>>,
    /// Violations found while running, by check number (1-5).
    violations: Mutex<BTreeMap<u8, Vec<String>>>,
    monitor_rounds: AtomicU64,
    /// market -> trade id -> the trade as first seen.
    trades: Mutex<BTreeMap<String, BTreeMap<u64, Value>>>,
    /// node -> what the monitor saw of it so far.
    seen: Mutex<BTreeMap<usize, Seen>>,
    /// Acknowledged orders by final status on node 1 (`filled`, `rejected`, ...).
    outcomes: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn error(&self, kind: String) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        *errors.entry(kind).or_default() += 1;
    }

    fn violation(&self, check: u8, message: String) {
        let mut v = self.violations.lock().unwrap_or_else(|e| e.into_inner());
        let list = v.entry(check).or_default();
        // The monitor sees a lasting difference every round: count it once. Past a thousand
        // the count is what matters.
        if list.len() < 1000 && !list.contains(&message) {
            list.push(message);
        }
    }
}

/// The outcome of a run.
struct Report {
    faults: BTreeMap<&'static str, u64>,
    acked: usize,
    cancels_acked: u64,
    trades: usize,
    errors: BTreeMap<String, u64>,
    monitor_rounds: u64,
    /// Acknowledged orders by final status on node 1.
    outcomes: BTreeMap<String, u64>,
    /// The most evictions any node's `/v1/status` counts at the end.
    evictions: u64,
    /// check number -> violations (empty = passed).
    checks: BTreeMap<u8, Vec<String>>,
    data_dir: PathBuf,
    elapsed: Duration,
}

const CHECKS: [(u8, &str); 5] = [
    (
        1,
        "settled trades identical (prefixes while running, equal after)",
    ),
    (2, "no overfill; maker price; taker limit; book not crossed"),
    (
        3,
        "every acknowledged order on every node (settled/rejected)",
    ),
    (4, "settled state only grows (trades, settled events)"),
    (5, "digests agree after the heal"),
];

impl Report {
    fn passed(&self) -> bool {
        self.checks.values().all(Vec::is_empty)
    }

    fn render(&self, args: &Args, seed: u64) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nchaos report: seed {seed}, {} nodes, {} s of faults, EVICT_AFTER_MS={}, {:.0} s in all",
            args.nodes,
            args.duration,
            args.evict_after_ms,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(out, "{:<12} {:>6}", "fault", "count");
        for kind in Fault::KINDS {
            let count = self.faults.get(kind).copied().unwrap_or(0);
            let _ = writeln!(out, "{kind:<12} {count:>6}");
        }
        let _ = writeln!(out, "evictions    {:>6}", self.evictions);
        let _ = writeln!(out, "orders acked {:>6}", self.acked);
        if !self.outcomes.is_empty() {
            let outcomes: Vec<String> = self
                .outcomes
                .iter()
                .map(|(status, count)| format!("{count} {status}"))
                .collect();
            let _ = writeln!(out, "  of which    {}", outcomes.join(", "));
        }
        let _ = writeln!(out, "cancels acked{:>6}", self.cancels_acked);
        let _ = writeln!(out, "trades       {:>6}", self.trades);
        let _ = writeln!(out, "monitor polls{:>6}", self.monitor_rounds);
        if !self.errors.is_empty() {
            let _ = writeln!(out, "failed client requests (expected under faults):");
            for (kind, count) in &self.errors {
                let _ = writeln!(out, "  {count:>6}  {kind}");
            }
        }
        let _ = writeln!(out, "{:<3} {:<64} result", "#", "check");
        for (number, name) in CHECKS {
            let violations = self.checks.get(&number).map(Vec::as_slice).unwrap_or(&[]);
            let result = if violations.is_empty() {
                "passed".to_owned()
            } else {
                format!("FAILED ({})", violations.len())
            };
            let _ = writeln!(out, "{number:<3} {name:<64} {result}");
            for v in violations.iter().take(5) {
                let _ = writeln!(out, "      - {v}");
            }
        }
        let _ = writeln!(out, "node logs: {}", self.data_dir.display());
        out
    }
}

fn run_seeded(args: &Args, seed: u64, interrupted: &Arc<AtomicBool>) -> Result<Report> {
    let started = Instant::now();
    let n = args.nodes;
    let duration = Duration::from_secs(args.duration);
    let steps = schedule(seed, n, duration);
    print_schedule(&steps, n);

    let root = crate::project_root();
    let binary = build_binary(&root, !args.debug)?;
    p2p_exchange_tests::set_binary(binary)?;
    remove_stale_namespaces();
    let data_dir = root.join("target/chaos").join(format!("seed-{seed}"));
    if data_dir.exists() {
        std::fs::remove_dir_all(&data_dir)
            .with_context(|| format!("wiping {}", data_dir.display()))?;
    }
    std::fs::create_dir_all(&data_dir)?;

    // Declared before the nodes, so it is dropped (the namespaces deleted) after them.
    let net = Netns::up("chaos", n)?;
    let mut nodes = start_nodes(&net, &data_dir, args, seed)?;
    let endpoints: Vec<Endpoint> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| Endpoint {
            index: i + 1,
            ns: node.ns.clone(),
            api: node.api.clone(),
        })
        .collect();
    wait_for(Duration::from_secs(60), "every node meshed", || {
        Ok(endpoints.iter().all(|e| {
            e.get("/v1/status", Duration::from_secs(2)).is_ok_and(|s| {
                s["peers"].as_u64() == Some(n as u64 - 1)
                    && s["members"].as_array().map(Vec::len) == Some(n)
            })
        }))
    })
    .with_context(|| {
        format!(
            "the nodes did not mesh; node{n} log:\n{}",
            nodes[n - 1].log_tail()
        )
    })?;
    if interrupted.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    println!(
        "{n} nodes meshed after {:.1} s; running {} s of load and faults",
        started.elapsed().as_secs_f64(),
        args.duration
    );

    let shared = Arc::new(Shared::default());
    let mut threads = Vec::new();
    for endpoint in &endpoints {
        for c in 0..args.clients {
            let (shared, endpoint) = (shared.clone(), endpoint.clone());
            let client_seed = seed ^ ((endpoint.index as u64) << 32) ^ (c as u64) << 48;
            threads.push(std::thread::spawn(move || {
                client(&shared, &endpoint, c, client_seed, seed);
            }));
        }
    }
    let monitor = {
        let (shared, endpoints) = (shared.clone(), endpoints.clone());
        std::thread::spawn(move || {
            while !shared.stop.load(Ordering::SeqCst) {
                monitor_round(&shared, &endpoints, RECENT_TRADES);
                sleep_unless(&shared.stop, Duration::from_millis(1000));
            }
        })
    };

    let load_start = Instant::now();
    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut crashed_by_us = BTreeSet::new();
    let run_faults = (|| -> Result<()> {
        for step in &steps {
            if !wait_until(interrupted, load_start + step.at) {
                return Ok(());
            }
            println!(
                "[{:>5.1} s] {} for {:.1} s",
                load_start.elapsed().as_secs_f64(),
                step.fault.describe(n),
                step.hold.as_secs_f64()
            );
            *faults.entry(step.fault.kind()).or_default() += 1;
            inject(&net, &mut nodes, step, interrupted, &mut crashed_by_us)?;
        }
        wait_until(interrupted, load_start + duration);
        Ok(())
    })();
    shared.stop.store(true, Ordering::SeqCst);
    for t in threads {
        if t.join().is_err() {
            shared.violation(3, "a client thread panicked".into());
        }
    }
    let _ = monitor.join();
    run_faults?;
    if interrupted.load(Ordering::SeqCst) {
        bail!("interrupted");
    }

    // Heal everything: links, pauses, dead processes. A node that died without being crashed
    // by the schedule is a failure in itself.
    println!(
        "[{:>5.1} s] healing everything; waiting up to {} s for quiescence",
        load_start.elapsed().as_secs_f64(),
        args.settle_timeout
    );
    net.heal_all()?;
    for (i, node) in nodes.iter_mut().enumerate() {
        if !node.is_running() {
            shared.violation(
                5,
                format!("node{} exited by itself; log:\n{}", i + 1, node.log_tail()),
            );
            node.restart()?;
        } else {
            let _ = node.resume();
        }
    }
    let quiescence = wait_for(
        Duration::from_secs(args.settle_timeout),
        "quiescence (n members everywhere, nothing pending, one digest)",
        || {
            let statuses = endpoints
                .iter()
                .map(|e| e.get("/v1/status", Duration::from_secs(3)))
                .collect::<Result<Vec<Value>>>()?;
            let quiet = statuses.iter().all(|s| {
                s["members"].as_array().map(Vec::len) == Some(n)
                    && s["pending_events"].as_u64() == Some(0)
            }) && statuses.windows(2).all(|w| {
                w[0]["digest"] == w[1]["digest"] && w[0]["settled_events"] == w[1]["settled_events"]
            });
            if !quiet {
                bail!("not yet: {}", summarize(&statuses));
            }
            Ok(true)
        },
    );
    println!(
        "[{:>5.1} s] {}",
        load_start.elapsed().as_secs_f64(),
        match &quiescence {
            Ok(()) => "quiescent; checking".to_owned(),
            Err(e) => format!("no quiescence: {e:#}"),
        }
    );
    if let Err(e) = quiescence {
        shared.violation(5, format!("{e:#}"));
        // What each node's settlement waits for: enough to tell a stalled vote from a gap.
        for (i, endpoint) in endpoints.iter().enumerate() {
            match endpoint.get("/v1/status", Duration::from_secs(3)) {
                Ok(s) => println!(
                    "  node{}: phase {} epoch {} waiting_for {} suspects {} votes {} cut {}",
                    i + 1,
                    s["phase"],
                    s["epoch"],
                    s["waiting_for"],
                    s["suspects"],
                    s["votes"],
                    s["cut"]
                ),
                Err(e) => println!("  node{}: no status: {e:#}", i + 1),
            }
        }
    }
    // One more monitor round over the whole logs: prefixes, growth, equality.
    monitor_round(&shared, &endpoints, ALL_TRADES);
    let trades = final_checks(&shared, &endpoints);
    let evictions = endpoints
        .iter()
        .filter_map(|e| e.get("/v1/status", Duration::from_secs(3)).ok())
        .filter_map(|s| s["evictions"].as_u64())
        .max()
        .unwrap_or(0);

    let acked = shared.acked.lock().map(|a| a.len()).unwrap_or_default();
    let report = Report {
        faults,
        acked,
        cancels_acked: shared.cancels_acked.load(Ordering::SeqCst),
        trades,
        errors: shared.errors.lock().map(|e| e.clone()).unwrap_or_default(),
        monitor_rounds: shared.monitor_rounds.load(Ordering::SeqCst),
        outcomes: shared
            .outcomes
            .lock()
            .map(|o| o.clone())
            .unwrap_or_default(),
        evictions,
        checks: shared
            .violations
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default(),
        data_dir,
        elapsed: started.elapsed(),
    };
    drop(nodes);
    drop(net);
    Ok(report)
}

fn print_schedule(steps: &[Step], n: usize) {
    println!(
        "fault schedule ({} faults; start, hold, fault):",
        steps.len()
    );
    for step in steps {
        println!(
            "  {:>6.1} s  {:>4.1} s  {}",
            step.at.as_secs_f64(),
            step.hold.as_secs_f64(),
            step.fault.describe(n)
        );
    }
}

fn build_binary(root: &Path, release: bool) -> Result<PathBuf> {
    let sh = Shell::new()?;
    sh.change_dir(root);
    let (profile, flag) = if release {
        ("release", Some("--release"))
    } else {
        ("debug", None)
    };
    cmd!(sh, "cargo build {flag...} -p node-bin --bin p2p-exchange").run()?;
    let binary = root.join("target").join(profile).join("p2p-exchange");
    if !binary.exists() {
        bail!("{} was not built", binary.display());
    }
    Ok(binary)
}

/// Deletes the namespaces of chaos runs whose xtask process no longer exists (killed with
/// SIGKILL, so its guards never ran). Only names this command makes (`pxt<pid>-chaos-...`).
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("pxt")
            .and_then(|rest| rest.split_once("-chaos-"))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            println!("removing namespace {name} left by an earlier chaos run");
            let _ = p2p_exchange_tests::ip(&["netns", "del", name]);
        }
    }
}

fn start_nodes(net: &Netns, dir: &Path, args: &Args, seed: u64) -> Result<Vec<NsNode>> {
    let n = args.nodes;
    let mut nodes = Vec::new();
    for i in 1..=n {
        let mut env = vec![
            ("NETWORK_ID", format!("chaos-{seed}")),
            ("P2P_HOST", net.addr(i)),
            ("P2P_PORT", P2P_PORT.to_string()),
            ("DISCOVERY_MDNS", "false".to_owned()),
            ("DISCOVERY_GRENACHE", "false".to_owned()),
            ("HEARTBEAT_MS", args.heartbeat_ms.to_string()),
            ("PEER_RECONNECT_INTERVAL", "1000".to_owned()),
            ("EVICT_AFTER_MS", args.evict_after_ms.to_string()),
            ("RUST_LOG", "info".to_owned()),
        ];
        if i == 1 {
            env.push(("FOUND", "true".to_owned()));
        } else {
            // Every other node, so a restarted node finds the network whichever part is up.
            let peers: Vec<String> = (1..=n)
                .filter(|&j| j != i)
                .map(|j| format!("{}:{P2P_PORT}", net.addr(j)))
                .collect();
            env.push(("BOOTSTRAP_PEERS", peers.join(",")));
        }
        let node = NsNode::start(&net.host_ns(i), &dir.join(format!("n{i}")), API_PORT, &env)
            .with_context(|| format!("starting node{i}"))?;
        nodes.push(node);
    }
    Ok(nodes)
}

/// Applies one fault, holds it, and heals it.
fn inject(
    net: &Netns,
    nodes: &mut [NsNode],
    step: &Step,
    interrupted: &AtomicBool,
    crashed: &mut BTreeSet<usize>,
) -> Result<()> {
    let n = nodes.len();
    let others = |node: usize| -> Vec<usize> { (1..=n).filter(|&j| j != node).collect() };
    let until = Instant::now() + step.hold;
    match &step.fault {
        Fault::Crash { node } => {
            crashed.insert(*node);
            nodes[node - 1].kill9();
            wait_until(interrupted, until);
            nodes[node - 1]
                .restart()
                .with_context(|| format!("restarting node{node}"))?;
        }
        Fault::Pause { node } => {
            nodes[node - 1].pause()?;
            wait_until(interrupted, until);
            nodes[node - 1].resume()?;
        }
        Fault::Isolate { node } => {
            net.partition(&[*node], &others(*node))?;
            wait_until(interrupted, until);
            net.heal_all()?;
        }
        Fault::Split { minority } => {
            let majority: Vec<usize> = (1..=n).filter(|i| !minority.contains(i)).collect();
            net.partition(minority, &majority)?;
            wait_until(interrupted, until);
            net.heal_all()?;
        }
        Fault::Link { a, b } => {
            net.partition(&[*a], &[*b])?;
            wait_until(interrupted, until);
            net.heal_all()?;
        }
        Fault::OneWay { node, outgoing } => {
            for other in others(*node) {
                if *outgoing {
                    net.block(*node, other)?;
                } else {
                    net.block(other, *node)?;
                }
            }
            wait_until(interrupted, until);
            net.heal_all()?;
        }
        Fault::Flap { node, period_ms } => {
            let mut cut = false;
            while Instant::now() < until && !interrupted.load(Ordering::SeqCst) {
                if cut {
                    net.heal_all()?;
                } else {
                    net.partition(&[*node], &others(*node))?;
                }
                cut = !cut;
                let next = (Instant::now() + Duration::from_millis(*period_ms)).min(until);
                wait_until(interrupted, next);
            }
            net.heal_all()?;
        }
    }
    Ok(())
}

/// Sleeps until `deadline` in short steps; false if interrupted first.
fn wait_until(stop: &AtomicBool, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep((deadline - Instant::now()).min(Duration::from_millis(50)));
    }
    !stop.load(Ordering::SeqCst)
}

fn sleep_unless(stop: &AtomicBool, pause: Duration) {
    wait_until(stop, Instant::now() + pause);
}

// ---- Clients ---------------------------------------------------------------------------------

/// One client of one node: random limit orders (GTC, IOC, FOK, post-only) and a few market
/// orders on two markets, priced so that buys and sells often cross, and cancels of its own
/// earlier orders, until the run stops.
fn client(shared: &Shared, node: &Endpoint, c: usize, client_seed: u64, seed: u64) {
    let mut rng = Rng::new(client_seed);
    let mut own: Vec<String> = Vec::new();
    let timeout = Duration::from_secs(3);
    let mut k = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        if rng.below(100) < 80 || own.is_empty() {
            k += 1;
            let body = order_body(&mut rng, &format!("s{seed}-n{}-c{c}-{k}", node.index));
            match ns_http_timeout(
                &node.ns,
                &node.api,
                "POST",
                "/v1/orders",
                Some(&body),
                timeout,
            ) {
                Ok((201, text)) => {
                    let id = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v["order_id"].as_str().map(str::to_owned));
                    match id {
                        Some(order_id) => {
                            if own.len() >= 256 {
                                own.swap_remove(0);
                            }
                            own.push(order_id.clone());
                            let mut acked = shared.acked.lock().unwrap_or_else(|e| e.into_inner());
                            acked.push(Acked {
                                order_id,
                                node: node.index,
                            });
                        }
                        None => shared.violation(3, format!("201 without an order id: {text}")),
                    }
                }
                Ok((code, text)) => shared.error(format!("place {code} {}", error_code(&text))),
                Err(_) => shared.error("place: no answer (node down, paused or cut)".into()),
            }
        } else {
            let i = rng.below(own.len() as u64) as usize;
            let id = own.swap_remove(i);
            let path = format!("/v1/orders/{id}");
            match ns_http_timeout(&node.ns, &node.api, "DELETE", &path, None, timeout) {
                Ok((202, _)) => {
                    shared.cancels_acked.fetch_add(1, Ordering::SeqCst);
                }
                Ok((code, text)) => shared.error(format!("cancel {code} {}", error_code(&text))),
                Err(_) => shared.error("cancel: no answer (node down, paused or cut)".into()),
            }
        }
        sleep_unless(&shared.stop, Duration::from_millis(20 + rng.below(60)));
    }
}

fn error_code(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "(no error code)".into())
}

fn order_body(rng: &mut Rng, client_order_id: &str) -> String {
    let (market, mid) = if rng.below(2) == 0 {
        (MARKETS[0], 10_000)
    } else {
        (MARKETS[1], 200_000)
    };
    let buy = rng.below(2) == 0;
    // In cents: buys 7 ticks below to 3 above the mid, sells 3 below to 7 above.
    let offset = rng.below(11) as i64;
    let cents = if buy {
        mid - 7 + offset
    } else {
        mid - 3 + offset
    };
    let price = format!("{}.{:02}", cents / 100, cents % 100);
    let quantity = format!("0.0{}", 1 + rng.below(5));
    let side = if buy { "buy" } else { "sell" };
    let roll = rng.below(100);
    let body = if roll < 5 {
        json!({"market": market, "side": side, "type": "market", "quantity": quantity,
               "time_in_force": "ioc", "client_order_id": client_order_id})
    } else {
        let tif = match roll {
            5..=79 => "gtc",
            80..=89 => "ioc",
            90..=94 => "fok",
            _ => "post_only",
        };
        json!({"market": market, "side": side, "type": "limit", "price": price,
               "quantity": quantity, "time_in_force": tif, "client_order_id": client_order_id})
    };
    body.to_string()
}

// ---- Checks ----------------------------------------------------------------------------------

/// Per-node state the monitor compares against: the highest trade id per market and the
/// settled event count seen so far.
#[derive(Default)]
struct Seen {
    newest: BTreeMap<String, u64>,
    settled: u64,
}

/// One round: every node's status and its newest `limit` trades of every market. Checks 1
/// (trades with the same id are identical on every node and over time, ids are contiguous)
/// and 4 (a node's newest trade id and settled count never go down). Nodes that do not answer
/// (down, paused) are skipped.
fn monitor_round(shared: &Shared, nodes: &[Endpoint], limit: usize) {
    let mut paths = vec!["/v1/status".to_owned()];
    paths.extend(
        MARKETS
            .iter()
            .map(|m| format!("/v1/markets/{m}/trades?limit={limit}")),
    );
    for node in nodes {
        let Ok(answers) = node.get_many(&paths, Duration::from_secs(2)) else {
            continue;
        };
        if answers.iter().any(|(code, _)| *code != 200) {
            continue;
        }
        let Ok(status) = serde_json::from_str::<Value>(&answers[0].1) else {
            continue;
        };
        let mut seen_all = shared.seen.lock().unwrap_or_else(|e| e.into_inner());
        let seen = seen_all.entry(node.index).or_default();
        let settled = status["settled_events"].as_u64().unwrap_or(0);
        if settled < seen.settled {
            shared.violation(
                4,
                format!(
                    "node{}: settled_events went down from {} to {settled}",
                    node.index, seen.settled
                ),
            );
        }
        seen.settled = seen.settled.max(settled);
        for (market, (_, text)) in MARKETS.iter().zip(&answers[1..]) {
            let Ok(Value::Array(list)) = serde_json::from_str::<Value>(text) else {
                shared.violation(
                    1,
                    format!("node{}: unreadable trades of {market}", node.index),
                );
                continue;
            };
            let ids: Vec<u64> = list.iter().filter_map(|t| t["trade_id"].as_u64()).collect();
            if ids.len() != list.len() || ids.windows(2).any(|w| w[0] <= w[1]) {
                shared.violation(
                    1,
                    format!(
                        "node{}: {market} trade ids are not strictly newest first",
                        node.index
                    ),
                );
            }
            let newest = ids.first().copied().unwrap_or(0);
            let before = seen.newest.entry((*market).to_owned()).or_default();
            if newest < *before {
                shared.violation(
                    4,
                    format!(
                        "node{}: {market} newest trade id went down from {before} to {newest}",
                        node.index
                    ),
                );
            }
            *before = (*before).max(newest);
            let mut all = shared.trades.lock().unwrap_or_else(|e| e.into_inner());
            let known = all.entry((*market).to_owned()).or_default();
            for trade in &list {
                let Some(id) = trade["trade_id"].as_u64() else {
                    continue;
                };
                match known.get(&id) {
                    Some(first) if first != trade => shared.violation(
                        1,
                        format!(
                            "node{}: {market} trade {id} is {trade}, but was {first}",
                            node.index
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        known.insert(id, trade.clone());
                    }
                }
            }
        }
    }
    shared.monitor_rounds.fetch_add(1, Ordering::SeqCst);
}

/// Checks 1, 2 and 3 on the quiescent cluster; returns the number of trades.
fn final_checks(shared: &Shared, nodes: &[Endpoint]) -> usize {
    let timeout = Duration::from_secs(10);
    // 1: the whole trade logs are equal on every node.
    let mut logs: Vec<Vec<Value>> = Vec::new();
    for node in nodes {
        let mut per_node = Vec::new();
        for market in MARKETS {
            match node.get(
                &format!("/v1/markets/{market}/trades?limit={ALL_TRADES}"),
                timeout,
            ) {
                Ok(v) => per_node.push(v),
                Err(e) => shared.violation(1, format!("{e:#}")),
            }
        }
        logs.push(per_node);
    }
    for (i, log) in logs.iter().enumerate().skip(1) {
        if *log != logs[0] {
            shared.violation(
                1,
                format!("node{}'s settled trades differ from node1's", i + 1),
            );
        }
    }
    // Trade ids count the network's settled trades over all markets: together they are
    // 1..=N, with no hole (while nothing fell out of the kept window).
    for (i, log) in logs.iter().enumerate() {
        let lists: Vec<&Vec<Value>> = log.iter().filter_map(Value::as_array).collect();
        if lists.iter().any(|l| l.len() >= ALL_TRADES) {
            continue;
        }
        let mut ids: Vec<u64> = lists
            .iter()
            .flat_map(|l| l.iter().filter_map(|t| t["trade_id"].as_u64()))
            .collect();
        ids.sort_unstable();
        if ids.iter().zip(1..).any(|(id, expected)| *id != expected) {
            shared.violation(
                1,
                format!("node{}: the settled trade ids have holes or repeats", i + 1),
            );
        }
    }
    let trades: Vec<Value> = logs
        .first()
        .into_iter()
        .flatten()
        .filter_map(Value::as_array)
        .flatten()
        .cloned()
        .collect();

    // 3: every acknowledged order on every node, settled or rejected with a reason; 2: never
    // overfilled.
    let acked: Vec<Acked> = shared.acked.lock().map(|a| a.clone()).unwrap_or_default();
    let paths: Vec<String> = acked
        .iter()
        .map(|a| format!("/v1/orders/{}", a.order_id))
        .collect();
    let mut orders_on_first: BTreeMap<String, Value> = BTreeMap::new();
    // Every node's answers first, so a missing order's report can say what the node that
    // acknowledged it shows.
    let answers: Vec<Vec<(u16, String)>> = nodes
        .iter()
        .map(|node| {
            node.get_many(&paths, timeout).unwrap_or_else(|e| {
                shared.violation(3, format!("node{}: {e:#}", node.index));
                Vec::new()
            })
        })
        .collect();
    let on_origin = |k: usize, a: &Acked| -> String {
        let Some((200, text)) = answers.get(a.node - 1).and_then(|list| list.get(k)) else {
            return format!("node{} lacks it too", a.node);
        };
        let order: Value = serde_json::from_str(text).unwrap_or_default();
        format!(
            "node{} shows it {} ({})",
            a.node,
            order["status"].as_str().unwrap_or("?"),
            order["reason"].as_str().unwrap_or("no reason")
        )
    };
    for (node, answers) in nodes.iter().zip(&answers) {
        for (k, (a, (code, text))) in acked.iter().zip(answers).enumerate() {
            let order = match (code, serde_json::from_str::<Value>(text)) {
                (200, Ok(order)) => order,
                _ => {
                    shared.violation(
                        3,
                        format!(
                            "order {} is missing on node{} ({code} {}); {}",
                            a.order_id,
                            node.index,
                            error_code(text),
                            on_origin(k, a)
                        ),
                    );
                    continue;
                }
            };
            check_order(shared, node.index, &a.order_id, &order);
            if node.index == 1 {
                let status = order["status"].as_str().unwrap_or("?").to_owned();
                let mut outcomes = shared.outcomes.lock().unwrap_or_else(|e| e.into_inner());
                *outcomes.entry(status).or_default() += 1;
                drop(outcomes);
                orders_on_first.insert(a.order_id.clone(), order);
            }
        }
        // A crossed settled book would mean a missed match.
        for market in MARKETS {
            match node.get(&format!("/v1/markets/{market}/book?depth=1"), timeout) {
                Ok(book) => {
                    let bid = book["bids"][0][0].as_str().and_then(fixed);
                    let ask = book["asks"][0][0].as_str().and_then(fixed);
                    if let (Some(bid), Some(ask)) = (bid, ask)
                        && bid >= ask
                    {
                        shared.violation(
                            2,
                            format!("node{}: {market} book is crossed: {book}", node.index),
                        );
                    }
                }
                Err(e) => shared.violation(2, format!("{e:#}")),
            }
        }
    }

    // 2: every trade at the maker's price, within the taker's limit, maker before taker; each
    // order's filled quantity is the sum of its trades (when no trade was dropped from the kept
    // window).
    if let Some(first) = nodes.first() {
        let mut ids: BTreeSet<String> = BTreeSet::new();
        for t in &trades {
            for side in ["maker_order_id", "taker_order_id"] {
                if let Some(id) = t[side].as_str()
                    && !orders_on_first.contains_key(id)
                {
                    ids.insert(id.to_owned());
                }
            }
        }
        let ids: Vec<String> = ids.into_iter().collect();
        let paths: Vec<String> = ids.iter().map(|id| format!("/v1/orders/{id}")).collect();
        if let Ok(answers) = first.get_many(&paths, timeout) {
            for (id, (code, text)) in ids.into_iter().zip(answers) {
                match serde_json::from_str::<Value>(&text) {
                    Ok(order) if code == 200 => {
                        orders_on_first.insert(id, order);
                    }
                    _ => shared.violation(2, format!("traded order {id} missing: {code} {text}")),
                }
            }
        }
        check_trades(shared, &trades, &orders_on_first);
    }
    trades.len()
}

/// Check 2 and 3 on one order as one node shows it.
fn check_order(shared: &Shared, node: usize, id: &str, order: &Value) {
    let quantity = order["quantity"].as_str().and_then(fixed);
    let filled = order["filled_quantity"].as_str().and_then(fixed);
    let remaining = order["remaining_quantity"].as_str().and_then(fixed);
    match (quantity, filled, remaining) {
        (Some(q), Some(f), Some(r)) => {
            if f > q || f < 0 || r < 0 || f + r > q {
                shared.violation(
                    2,
                    format!("node{node}: order {id} overfilled or inconsistent: {order}"),
                );
            }
        }
        _ => shared.violation(
            2,
            format!("node{node}: order {id} has no quantities: {order}"),
        ),
    }
    match order["status"].as_str() {
        Some("pending") | None => shared.violation(
            3,
            format!("node{node}: order {id} not settled after quiescence: {order}"),
        ),
        Some("rejected") => {
            if order["reason"].as_str().is_none_or(str::is_empty) {
                shared.violation(
                    3,
                    format!("node{node}: order {id} rejected without a reason"),
                );
            }
        }
        Some(_) => {}
    }
}

/// Check 2 over the settled trades, against the orders as node 1 shows them.
fn check_trades(shared: &Shared, trades: &[Value], orders: &BTreeMap<String, Value>) {
    let mut filled: BTreeMap<&str, i128> = BTreeMap::new();
    for t in trades {
        let (Some(maker_id), Some(taker_id)) =
            (t["maker_order_id"].as_str(), t["taker_order_id"].as_str())
        else {
            shared.violation(2, format!("trade without order ids: {t}"));
            continue;
        };
        let price = t["price"].as_str().and_then(fixed);
        let quantity = t["quantity"].as_str().and_then(fixed).unwrap_or(0);
        *filled.entry(maker_id).or_default() += quantity;
        *filled.entry(taker_id).or_default() += quantity;
        let (Some(maker), Some(taker)) = (orders.get(maker_id), orders.get(taker_id)) else {
            continue;
        };
        if maker["price"].as_str().and_then(fixed) != price {
            shared.violation(
                2,
                format!("trade not at the maker's price: {t} maker {maker}"),
            );
        }
        if let (Some(limit), Some(price)) = (taker["price"].as_str().and_then(fixed), price) {
            let within = match taker["side"].as_str() {
                Some("buy") => price <= limit,
                _ => price >= limit,
            };
            if !within {
                shared.violation(
                    2,
                    format!("trade beyond the taker's limit: {t} taker {taker}"),
                );
            }
        }
        if maker["lamport"].as_u64() > taker["lamport"].as_u64() {
            shared.violation(2, format!("maker placed after the taker: {t}"));
        }
    }
    // Sums are only complete when no trade fell out of the kept window.
    if trades.len() < ALL_TRADES {
        for (id, sum) in filled {
            if let Some(order) = orders.get(id)
                && order["filled_quantity"].as_str().and_then(fixed) != Some(sum)
            {
                shared.violation(
                    2,
                    format!("order {id}: filled_quantity is not the sum of its trades: {order}"),
                );
            }
        }
    }
}

/// A decimal string as an integer count of 10^-12 (quantities and prices here have at most 4
/// decimals).
fn fixed(text: &str) -> Option<i128> {
    const SCALE: u32 = 12;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > SCALE as usize || int.is_empty() {
        return None;
    }
    let int: i128 = int.parse().ok()?;
    let frac_value: i128 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    let value = int * 10i128.pow(SCALE) + frac_value * 10i128.pow(SCALE - frac.len() as u32);
    Some(if negative { -value } else { value })
}

fn summarize(statuses: &[Value]) -> String {
    statuses
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "node{}: members {} pending {} settled {} digest {}",
                i + 1,
                s["members"].as_array().map_or(0, Vec::len),
                s["pending_events"],
                s["settled_events"],
                s["digest"]
                    .as_str()
                    .unwrap_or("?")
                    .chars()
                    .take(8)
                    .collect::<String>()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_a_function_of_the_seed_and_fits_the_duration() {
        let duration = Duration::from_secs(60);
        let a = schedule(7, 5, duration);
        assert_eq!(a, schedule(7, 5, duration));
        assert_ne!(a, schedule(8, 5, duration));
        assert!(a.len() >= 6, "{a:?}");
        for w in a.windows(2) {
            assert!(w[0].at + w[0].hold < w[1].at, "faults overlap: {w:?}");
        }
        let last = a.last().unwrap();
        assert!(last.at + last.hold <= duration);
        for step in &a {
            match &step.fault {
                Fault::Split { minority } => assert_eq!(minority.len(), 2),
                Fault::Link { a, b } => assert!(a < b && *b <= 5),
                _ => {}
            }
        }
    }

    #[test]
    fn every_fault_kind_shows_up_over_a_few_seeds() {
        let kinds: BTreeSet<&str> = (0..20)
            .flat_map(|seed| schedule(seed, 5, Duration::from_secs(60)))
            .map(|s| s.fault.kind())
            .collect();
        assert_eq!(kinds.len(), Fault::KINDS.len(), "{kinds:?}");
    }

    #[test]
    fn decimals_compare_exactly() {
        assert_eq!(fixed("0.0300"), fixed("0.03"));
        assert!(fixed("0.05").unwrap() > fixed("0.0499").unwrap());
        assert_eq!(fixed("100"), Some(100 * 10i128.pow(12)));
        assert_eq!(fixed("-1.5"), Some(-15 * 10i128.pow(11)));
        assert_eq!(fixed("abc"), None);
        assert_eq!(fixed(".5"), None);
    }

    #[test]
    fn an_overfilled_order_is_a_violation() {
        let shared = Shared::default();
        let ok = json!({"quantity": "0.05", "filled_quantity": "0.05",
                        "remaining_quantity": "0", "status": "filled"});
        check_order(&shared, 1, "a", &ok);
        assert!(shared.violations.lock().unwrap().is_empty());
        let over = json!({"quantity": "0.05", "filled_quantity": "0.06",
                          "remaining_quantity": "0", "status": "filled"});
        check_order(&shared, 1, "b", &over);
        let pending = json!({"quantity": "0.05", "filled_quantity": "0",
                             "remaining_quantity": "0.05", "status": "pending"});
        check_order(&shared, 1, "c", &pending);
        let silent = json!({"quantity": "0.05", "filled_quantity": "0",
                            "remaining_quantity": "0", "status": "rejected"});
        check_order(&shared, 1, "d", &silent);
        let v = shared.violations.lock().unwrap();
        assert_eq!(v[&2].len(), 1);
        assert_eq!(v[&3].len(), 2);
    }

    #[test]
    fn trades_off_the_makers_price_are_violations() {
        let shared = Shared::default();
        let orders: BTreeMap<String, Value> = [
            (
                "m".to_owned(),
                json!({"price": "100.00", "side": "sell", "lamport": 1,
                                     "filled_quantity": "0.01"}),
            ),
            (
                "t".to_owned(),
                json!({"price": "100.02", "side": "buy", "lamport": 2,
                                     "filled_quantity": "0.01"}),
            ),
        ]
        .into();
        let good = json!({"trade_id": 1, "price": "100.00", "quantity": "0.01",
                          "maker_order_id": "m", "taker_order_id": "t"});
        check_trades(&shared, std::slice::from_ref(&good), &orders);
        assert!(shared.violations.lock().unwrap().is_empty());
        let bad = json!({"trade_id": 1, "price": "100.01", "quantity": "0.01",
                         "maker_order_id": "m", "taker_order_id": "t"});
        check_trades(&shared, &[bad], &orders);
        assert!(!shared.violations.lock().unwrap().is_empty());
    }
}
