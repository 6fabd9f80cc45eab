//! `cargo xtask demo`: a fresh local exchange with example clients trading on every node, and a
//! live summary every second.
//!
//! It starts a fresh cluster exactly as `cargo xtask cluster N --fresh` does, but in its own
//! folder (`target/demo/<base port>/`, node logs in `nodeN.log` there) so it never touches a
//! user's cluster, and with the nodes in their own process group, so a Ctrl-C reaches only this
//! process, which then stops things in order. On every node two clients trade through the public
//! HTTP API, paced to `--rate` operations per second in total:
//!
//! - a **market maker** keeps a ladder of post-only bids and asks, [`LEVELS`] levels a side, every
//!   [`SPACING_TICKS`] ticks around a mid price; each [`WALK_STEP`] the mid takes one step of a
//!   slow random walk and the maker moves its ladder (cancels what left it, places what is
//!   missing, refills what was filled);
//! - a **taker** sends crossing IOC limit orders and market orders against those ladders, and
//!   some GTC orders inside the spread that it cancels later.
//!
//! Every choice a client makes (market, side, size, price, kind) comes from a generator seeded by
//! `--seed`, the node and the client's role, and the mid price is a pure function of the seed,
//! the market and the step number, so every maker quotes around the same mid. What differs from
//! run to run is only timing: which orders meet first.
//!
//! Each second a table shows, per node: the orders and cancels its clients had accepted, its
//! pending and settled events, its settled trades and last price per market, its digest and
//! whether it agrees with the others. Agreement is judged at equal settled positions only (equal
//! `settled_events` means the same prefix of the log, so the digests must be equal): the status
//! of every node is polled every [`POLL_EVERY`] and the digest seen at each settled position is
//! kept, so two nodes are compared at the position the one behind has reached.
//!
//! Ctrl-C (or `--duration`) stops the clients, waits until every node has settled everything
//! (a Ctrl-C meanwhile skips the wait), checks the digests, stops the nodes gracefully and prints
//! one final line. The hidden `--check` (for CI) runs non-interactively, 5 s unless told, and
//! fails if no trade happened, if the nodes do not settle, or if any digests differ.

use crate::cluster::{self, Cluster, Layout, Logs};
use crate::loadtest::Step;
use anyhow::{Context, Result, bail};
use p2p_exchange_tests::http;
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Options of `cargo xtask demo`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Number of nodes.
    #[arg(default_value_t = 3)]
    nodes: u16,
    /// First P2P port; node i listens on base+i-1 (its API on that + 5000). Distinct from the
    /// cluster's default 3000, so a demo can run beside `cargo xtask cluster`.
    #[arg(long, default_value_t = 3100)]
    base_port: u16,
    /// Build and run the debug binary instead of the release one.
    #[arg(long)]
    debug: bool,
    /// Seconds of trading; without it the demo trades until Ctrl-C.
    #[arg(long)]
    duration: Option<f64>,
    /// Orders and cancels per second, over all clients of all nodes.
    #[arg(long, default_value_t = 30)]
    rate: u32,
    /// Seed of every client's choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run non-interactively (5 s unless --duration says otherwise) and fail if no trade happened
    /// or the digests differ once every node has settled everything.
    #[arg(long, hide = true)]
    check: bool,
}

/// Price levels the market maker keeps on each side of each market.
pub(crate) const LEVELS: u64 = 3;
/// Ticks between two levels of the ladder, and the size of one step of the mid price.
pub(crate) const SPACING_TICKS: u64 = 5;
/// How often the mid price takes a step (and the makers move their ladders).
pub(crate) const WALK_STEP: Duration = Duration::from_secs(1);
/// How often every node's `/v1/status` is polled.
pub(crate) const POLL_EVERY: Duration = Duration::from_millis(100);
/// Order sizes are multiples of this many lots (0.01 BTC with the default markets).
const SIZE_UNIT_LOTS: u64 = 100;
/// A maker's level holds 5..=20 size units; a taker's order 1..=8.
const MAKER_UNITS: (u64, u64) = (5, 20);
const TAKER_UNITS: (u64, u64) = (1, 8);
/// The most markets the clients trade (and the table shows).
const MAX_MARKETS: usize = 4;
/// The most nodes a demo starts (each has three threads here).
const MAX_NODES: u16 = 16;
/// The taker's GTC orders it remembers for cancels; beyond that it cancels before placing more.
const TAKER_POOL: usize = 32;
/// Settled positions whose digest is remembered per node.
const HISTORY: usize = 2_000;
/// Trades asked for per poll; more only when all of those are new.
const TRADES_PAGE: usize = 200;
/// The node keeps this many trades per market (`MAX_TRADES_KEPT`): the most one request returns.
const TRADES_MAX: usize = 10_000;
/// Distinct client error kinds kept; more are counted as "other".
const MAX_ERROR_KINDS: usize = 32;
/// How long the nodes get to settle everything after the clients stop.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the command.
pub(crate) fn run(args: Args) -> Result<()> {
    validate(&args)?;
    let interrupts = Arc::new(AtomicU32::new(0));
    {
        let interrupts = interrupts.clone();
        ctrlc::set_handler(move || {
            interrupts.fetch_add(1, Ordering::SeqCst);
        })
        .context("installing the Ctrl-C handler")?;
    }
    let cluster_args = cluster::Args {
        nodes: args.nodes,
        base_port: args.base_port,
        fresh: true,
        mdns: false,
        grenache: false,
        debug: args.debug,
        release: !args.debug,
        check: args.check,
    };
    let layout = Layout {
        data_root: crate::project_root()
            .join("target/demo")
            .join(args.base_port.to_string()),
        logs: Logs::Files,
        own_process_group: true,
    };
    let began = Instant::now();
    ports_free(args.base_port, args.nodes)?;
    let mut cluster = cluster::start_in(&cluster_args, &layout)?;
    cluster::print_table(&cluster);
    println!(
        "node logs: {}/nodeN.log\n",
        layout
            .data_root
            .strip_prefix(crate::project_root())
            .unwrap_or(&layout.data_root)
            .display()
    );
    let outcome = if interrupts.load(Ordering::SeqCst) > 0 {
        println!("interrupted while starting; stopping the nodes");
        Ok(None)
    } else {
        trade(&args, &mut cluster, &interrupts).map(Some)
    };
    // Stop the nodes gracefully whatever happened, and say how each one ended.
    let mut unclean = Vec::new();
    for (index, status) in cluster.stop(Duration::from_secs(10)) {
        if !status.is_some_and(|s| s.success()) {
            unclean.push(format!(
                "node{index} ({})",
                status.map_or("not reaped".to_owned(), |s| s.to_string())
            ));
        }
    }
    let Some(summary) = outcome? else {
        return Ok(());
    };
    println!("{}", summary.line);
    if !unclean.is_empty() {
        eprintln!(
            "demo: nodes that did not stop cleanly: {}",
            unclean.join(", ")
        );
    }
    if args.check {
        if let Some(failure) = summary.failure {
            bail!("demo --check failed: {failure}");
        }
        if !unclean.is_empty() {
            bail!("demo --check failed: nodes did not stop cleanly");
        }
        println!(
            "demo --check: passed in {:.1} s (build, start, trade, settle, stop)",
            began.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    match summary.failure {
        // Divergence or a crash is an error however the demo was stopped.
        Some(failure) if summary.fatal => bail!("{failure}"),
        // Stopped early or before settling: worth saying, not a failure of an interactive run.
        Some(failure) => {
            eprintln!("demo: note: {failure}");
            Ok(())
        }
        None => Ok(()),
    }
}

fn validate(args: &Args) -> Result<()> {
    if args.nodes == 0 || args.nodes > MAX_NODES {
        bail!("a demo runs 1 to {MAX_NODES} nodes");
    }
    if args.rate == 0 || args.rate > 1_000 {
        bail!("--rate must be between 1 and 1000 (it is a demo; `cargo xtask loadtest` measures)");
    }
    if let Some(d) = args.duration
        && !(d > 0.0 && d <= 86_400.0)
    {
        bail!("--duration must be between 0 and 86400 seconds");
    }
    Ok(())
}

/// Fails unless the P2P and API ports of every node are free on 127.0.0.1: otherwise the demo
/// would wait for, and trade on, whatever already listens there.
fn ports_free(base_port: u16, nodes: u16) -> Result<()> {
    for i in 0..nodes {
        let p2p = base_port
            .checked_add(i)
            .filter(|p| p.checked_add(5000).is_some())
            .with_context(|| format!("--base-port {base_port} leaves no room for {nodes} nodes"))?;
        for port in [p2p, p2p + 5000] {
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                bail!(
                    "port {port} on 127.0.0.1 is in use (a cluster or another demo?); pick another --base-port"
                );
            }
        }
    }
    Ok(())
}

/// How the trading ended.
struct Summary {
    line: String,
    /// Why `--check` fails, if it does.
    failure: Option<String>,
    /// Whether it is an error even for an interactive run: two nodes' digests differed at the
    /// same settled position, or a node exited on its own.
    fatal: bool,
}

/// Runs the clients until Ctrl-C or the duration, then waits for the nodes to settle and judges.
fn trade(args: &Args, cluster: &mut Cluster, interrupts: &AtomicU32) -> Result<Summary> {
    let apis: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.api).collect();
    let markets = fetch_markets(apis[0])?;
    let n = apis.len();
    let duration = args
        .duration
        .or(args.check.then_some(5.0))
        .map(Duration::from_secs_f64);
    // The two clients of a node share its part of the rate.
    let per_node = f64::from(args.rate) / n as f64;
    let shared = Arc::new(Shared {
        markets,
        apis: apis.clone(),
        stop: AtomicBool::new(false),
        start: Instant::now(),
        stopped_at: std::sync::OnceLock::new(),
        seed: args.seed,
        rate: args.rate,
        counts: (0..n).map(|_| ClientCounts::default()).collect(),
        pacers: (0..n).map(|_| Pacer::new(per_node)).collect(),
        errors: Mutex::new(BTreeMap::new()),
    });
    let pollers: Vec<Arc<Poller>> = apis
        .iter()
        .map(|&api| Arc::new(Poller::new(api, &shared.markets)))
        .collect();
    let stop_polling = Arc::new(AtomicBool::new(false));
    let mut poll_threads = Vec::new();
    for poller in &pollers {
        let (poller, stop) = (poller.clone(), stop_polling.clone());
        poll_threads.push(std::thread::spawn(move || poller.run(&stop)));
    }
    let mut clients = Vec::new();
    for node in 0..n {
        let s = shared.clone();
        clients.push(std::thread::spawn(move || maker(&s, node)));
        let s = shared.clone();
        clients.push(std::thread::spawn(move || taker(&s, node)));
    }
    println!(
        "trading: {} clients on {n} nodes, {} orders and cancels per second in all, seed {}; {}\n",
        2 * n,
        args.rate,
        args.seed,
        match duration {
            Some(d) => format!("for {:.0} s", d.as_secs_f64()),
            None => "Ctrl-C stops".to_owned(),
        }
    );

    let redraw = !args.check && std::io::stdout().is_terminal();
    let mut drawn_lines = 0;
    let mut next_tick = shared.start + Duration::from_secs(1);
    let mut node_failure = None;
    let mut mismatch = None;
    loop {
        while Instant::now() < next_tick && interrupts.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        next_tick += Duration::from_secs(1);
        if interrupts.load(Ordering::SeqCst) > 0 {
            break;
        }
        for node in &mut cluster.nodes {
            if let Some(status) = node.child.try_status() {
                node_failure = Some(format!("node{} exited with {status}", node.index));
            }
        }
        let views = refresh(&pollers);
        mismatch = mismatch.or_else(|| first_mismatch(&views));
        let title = format!("t={:>4.0}s", shared.start.elapsed().as_secs_f64());
        let table = render(&shared, &title, &views, mismatch.as_ref());
        let mut out = std::io::stdout().lock();
        if redraw && drawn_lines > 0 {
            // Move up over the previous table and clear it: one table that updates in place.
            let _ = write!(out, "\x1b[{drawn_lines}A\r\x1b[J");
        }
        let _ = write!(out, "{table}");
        let _ = out.flush();
        drawn_lines = screen_lines(&table, terminal_width());
        if node_failure.is_some() || duration.is_some_and(|d| shared.start.elapsed() >= d) {
            break;
        }
    }

    // Stop the clients (each finishes the request it is in), then let the nodes settle.
    shared.stop.store(true, Ordering::SeqCst);
    let stopped_at = *shared.stopped_at.get_or_init(Instant::now);
    println!("\nstopping the clients; waiting for every node to settle everything");
    for client in clients {
        if client.join().is_err() {
            eprintln!("demo: a client thread panicked");
        }
    }
    let settled = node_failure.is_none() && wait_settled(&pollers, stopped_at, interrupts);
    stop_polling.store(true, Ordering::SeqCst);
    for thread in poll_threads {
        let _ = thread.join();
    }
    let views = refresh(&pollers);
    mismatch = mismatch.or_else(|| first_mismatch(&views));
    let table = render(&shared, "final", &views, mismatch.as_ref());
    println!("{table}");
    Ok(judge(
        &shared,
        &views,
        settled,
        mismatch,
        node_failure,
        stopped_at,
    ))
}

/// Waits until every node answered a poll after the clients stopped with no pending event and
/// the same delivered and settled counts; `false` after [`SETTLE_TIMEOUT`] or another Ctrl-C.
fn wait_settled(pollers: &[Arc<Poller>], stopped_at: Instant, interrupts: &AtomicU32) -> bool {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let already = interrupts.load(Ordering::SeqCst);
    while Instant::now() < deadline {
        if interrupts.load(Ordering::SeqCst) > already {
            println!("Ctrl-C: not waiting for the nodes to settle");
            return false;
        }
        if settled(&snapshot(pollers), stopped_at) {
            return true;
        }
        std::thread::sleep(POLL_EVERY);
    }
    false
}

fn settled(views: &[NodeView], after: Instant) -> bool {
    let Some(first) = views.first() else {
        return true;
    };
    views.iter().all(|v| {
        v.polled_at.is_some_and(|at| at > after)
            && v.pending_events == 0
            && v.settled_events == first.settled_events
            && v.events_delivered == first.events_delivered
    })
}

/// The final line, and why `--check` fails if it does.
fn judge(
    shared: &Shared,
    views: &[NodeView],
    settled: bool,
    mismatch: Option<Mismatch>,
    node_failure: Option<String>,
    stopped_at: Instant,
) -> Summary {
    let orders: u64 = shared
        .counts
        .iter()
        .map(|c| c.orders.load(Ordering::Relaxed))
        .sum();
    let cancels: u64 = shared
        .counts
        .iter()
        .map(|c| c.cancels.load(Ordering::Relaxed))
        .sum();
    // Trades are counted on the node that saw the most (all equal once settled).
    let per_market: Vec<u64> = (0..shared.markets.len())
        .map(|m| views.iter().map(|v| v.trades[m].count).max().unwrap_or(0))
        .collect();
    let trades: u64 = per_market.iter().sum();
    let market_list = shared
        .markets
        .iter()
        .zip(&per_market)
        .map(|(m, c)| format!("{} {c}", m.name))
        .collect::<Vec<_>>()
        .join(", ");
    let digests_equal = settled
        && mismatch.is_none()
        && views
            .iter()
            .all(|v| v.digest == views[0].digest && !v.digest.is_empty());
    let equal = if digests_equal {
        format!(
            "yes (settled {} events on every node, digest {})",
            views[0].settled_events,
            short(&views[0].digest)
        )
    } else if let Some(m) = &mismatch {
        format!(
            "NO (node{} and node{} differ at settled {})",
            m.nodes.0 + 1,
            m.nodes.1 + 1,
            m.position
        )
    } else if settled {
        "NO (every node settled everything, the digests differ)".to_owned()
    } else {
        "unknown (the nodes did not settle everything)".to_owned()
    };
    let line = format!(
        "demo: traded {:.1} s: {orders} orders and {cancels} cancels accepted, {trades} trades ({market_list}); digests equal: {equal}",
        stopped_at.duration_since(shared.start).as_secs_f64()
    );
    let fatal = node_failure.is_some() || mismatch.is_some() || (settled && !digests_equal);
    let failure = if let Some(failure) = node_failure {
        Some(failure)
    } else if let Some(m) = mismatch {
        Some(format!(
            "digests differ at settled position {}: node{} and node{}",
            m.position,
            m.nodes.0 + 1,
            m.nodes.1 + 1
        ))
    } else if !settled {
        Some(format!(
            "the nodes did not all settle everything (pending 0, same delivered and settled counts) within {} s",
            SETTLE_TIMEOUT.as_secs()
        ))
    } else if !digests_equal {
        Some("digests differ after every node settled everything".to_owned())
    } else if let Some((i, v)) = views
        .iter()
        .enumerate()
        .find(|(_, v)| v.digest_mismatches > 0)
    {
        Some(format!(
            "node{} counted {} digest mismatches with its peers",
            i + 1,
            v.digest_mismatches
        ))
    } else if trades == 0 {
        Some("no trade happened".to_owned())
    } else {
        None
    };
    Summary {
        line,
        failure,
        fatal,
    }
}

// ---- Clients --------------------------------------------------------------------------------

/// What every client shares.
struct Shared {
    markets: Vec<Market>,
    apis: Vec<SocketAddr>,
    stop: AtomicBool,
    start: Instant,
    /// When the clients were told to stop.
    stopped_at: std::sync::OnceLock<Instant>,
    seed: u64,
    /// The configured orders and cancels per second.
    rate: u32,
    counts: Vec<ClientCounts>,
    /// One per node, shared by its two clients.
    pacers: Vec<Pacer>,
    errors: Mutex<BTreeMap<String, u64>>,
}

/// What the clients of one node had accepted.
#[derive(Default)]
struct ClientCounts {
    orders: AtomicU64,
    cancels: AtomicU64,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The number of the current step of the mid price.
    fn step(&self) -> u64 {
        (self.start.elapsed().as_nanos() / WALK_STEP.as_nanos()) as u64
    }

    fn error(&self, kind: String) {
        if let Ok(mut errors) = self.errors.lock() {
            let full = errors.len() >= MAX_ERROR_KINDS && !errors.contains_key(&kind);
            *errors
                .entry(if full { "other".to_owned() } else { kind })
                .or_default() += 1;
        }
    }

    /// Places `body` on `node`: the order's id and whether it may still rest, or `None` (the
    /// error is counted).
    fn place(&self, node: usize, body: &str) -> Option<(String, bool)> {
        match http(self.apis[node], "POST", "/v1/orders", Some(body)) {
            Ok((201, text)) => {
                let view: Value = serde_json::from_str(&text).unwrap_or_default();
                let Some(id) = view["order_id"].as_str() else {
                    self.error("place: unexpected answer".to_owned());
                    return None;
                };
                self.counts[node].orders.fetch_add(1, Ordering::Relaxed);
                Some((id.to_owned(), is_live(&view)))
            }
            Ok((code, text)) => {
                self.error(format!("place: http {code} {}", error_code(&text)));
                None
            }
            Err(_) => {
                self.error("place: request failed".to_owned());
                None
            }
        }
    }

    /// Cancels `order_id` on `node`; `true` once the order is gone (cancelled now, or already
    /// finished or unknown), `false` if it may still rest.
    fn cancel(&self, node: usize, order_id: &str) -> bool {
        let path = format!("/v1/orders/{order_id}");
        match http(self.apis[node], "DELETE", &path, None) {
            Ok((202, _)) => {
                self.counts[node].cancels.fetch_add(1, Ordering::Relaxed);
                true
            }
            // Filled (or cancelled) before the cancel arrived: an expected race, not an error.
            Ok((404 | 409, _)) => true,
            Ok((code, text)) => {
                self.error(format!("cancel: http {code} {}", error_code(&text)));
                false
            }
            Err(_) => {
                self.error("cancel: request failed".to_owned());
                false
            }
        }
    }

    /// Whether `order_id` on `node` may still rest (pending, open or partially filled).
    fn live(&self, node: usize, order_id: &str) -> bool {
        let path = format!("/v1/orders/{order_id}");
        match http(self.apis[node], "GET", &path, None) {
            Ok((200, text)) => {
                serde_json::from_str::<Value>(&text).is_ok_and(|view| is_live(&view))
            }
            Ok((404, _)) => false,
            // Unknown: keep it, and look again at the next step.
            _ => true,
        }
    }
}

fn is_live(view: &Value) -> bool {
    !matches!(
        view["status"].as_str(),
        Some("filled" | "cancelled" | "rejected")
    )
}

fn error_code(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Paces the clients of one node to a fixed rate together: each operation takes the next free
/// slot, so the taker uses whatever the maker leaves. Never bursts to catch up.
struct Pacer {
    next: Mutex<Instant>,
    interval: Duration,
}

impl Pacer {
    fn new(per_second: f64) -> Pacer {
        Pacer {
            next: Mutex::new(Instant::now()),
            interval: Duration::from_secs_f64(1.0 / per_second.max(0.01)),
        }
    }

    /// Takes the next slot: now if the last one is more than a slot in the past (the clients
    /// were busy elsewhere), else one interval after the last.
    fn reserve(&self) -> Instant {
        let now = Instant::now();
        let Ok(mut next) = self.next.lock() else {
            return now;
        };
        let slot = if *next + self.interval < now {
            now
        } else {
            *next
        };
        *next = slot + self.interval;
        slot
    }

    /// Waits for the caller's slot; `false` if the demo stopped meanwhile.
    fn wait(&self, shared: &Shared) -> bool {
        wait_until(shared, self.reserve())
    }
}

/// Waits until `until` or until the demo stops; `false` if it stopped.
fn wait_until(shared: &Shared, until: Instant) -> bool {
    loop {
        if shared.stopped() {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Buy,
    Sell,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }
}

/// The generator of one client: seeded by the demo's seed, the node and the role.
fn client_rng(seed: u64, node: usize, role: u64) -> Rng {
    let mut rng = Rng(seed ^ (node as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F) ^ role << 56);
    rng.next();
    rng
}

/// The market maker of `node`: keeps a ladder of post-only orders around the mid price.
fn maker(shared: &Shared, node: usize) {
    let mut rng = client_rng(shared.seed, node, 1);
    let mut walks: Vec<Walk> = (0..shared.markets.len())
        .map(|m| Walk::new(shared.seed, m, shared.markets[m].start_ticks))
        .collect();
    // (market, side, price in ticks) -> the resting order there.
    let mut resting: BTreeMap<(usize, Side, u64), String> = BTreeMap::new();
    let pacer = &shared.pacers[node];
    let mut last_step = None;
    while !shared.stopped() {
        let step = shared.step();
        if last_step == Some(step) {
            let next = shared.start + WALK_STEP * u32::try_from(step + 1).unwrap_or(u32::MAX);
            if !wait_until(shared, next) {
                return;
            }
            continue;
        }
        last_step = Some(step);
        for (m, walk) in walks.iter_mut().enumerate() {
            let wanted = ladder(walk.advance_to(step));
            // Cancel what left the ladder.
            let gone: Vec<(usize, Side, u64)> = resting
                .keys()
                .filter(|(market, side, price)| *market == m && !wanted.contains(&(*side, *price)))
                .copied()
                .collect();
            for key in gone {
                if !pacer.wait(shared) {
                    return;
                }
                if let Some(id) = resting.get(&key)
                    && shared.cancel(node, id)
                {
                    resting.remove(&key);
                }
            }
            // Refill what is missing or was filled.
            for (side, price) in wanted {
                let key = (m, side, price);
                if resting.get(&key).is_some_and(|id| !shared.live(node, id)) {
                    resting.remove(&key);
                }
                // Drawn for every level, placed or not, so the stream of sizes is the seed's.
                let units = MAKER_UNITS.0 + rng.below(MAKER_UNITS.1 - MAKER_UNITS.0 + 1);
                if resting.contains_key(&key) {
                    continue;
                }
                if !pacer.wait(shared) {
                    return;
                }
                let market = &shared.markets[m];
                let body = order_json(market, side, "limit", Some(price), units, "post_only");
                if let Some((id, true)) = shared.place(node, &body) {
                    resting.insert(key, id);
                }
            }
        }
    }
}

/// The ladder around `mid`: bids below it, asks above it, [`LEVELS`] each.
fn ladder(mid: u64) -> Vec<(Side, u64)> {
    let mut out = Vec::with_capacity(2 * LEVELS as usize);
    for level in 1..=LEVELS {
        out.push((Side::Buy, mid.saturating_sub(level * SPACING_TICKS)));
        out.push((Side::Sell, mid + level * SPACING_TICKS));
    }
    out
}

/// The taker of `node`: crossing IOC and market orders, and GTC orders inside the spread that it
/// cancels later.
fn taker(shared: &Shared, node: usize) {
    let mut rng = client_rng(shared.seed, node, 2);
    let mut walks: Vec<Walk> = (0..shared.markets.len())
        .map(|m| Walk::new(shared.seed, m, shared.markets[m].start_ticks))
        .collect();
    let mut pool: VecDeque<String> = VecDeque::new();
    let pacer = &shared.pacers[node];
    while pacer.wait(shared) {
        // The same draws for every operation, whatever the node answered before.
        let m = rng.below(shared.markets.len() as u64) as usize;
        let side = if rng.below(2) == 0 {
            Side::Buy
        } else {
            Side::Sell
        };
        let units = TAKER_UNITS.0 + rng.below(TAKER_UNITS.1 - TAKER_UNITS.0 + 1);
        let through = SPACING_TICKS * (1 + rng.below(2));
        let roll = rng.below(100);
        let market = &shared.markets[m];
        let mid = walks[m].advance_to(shared.step());
        let cross = match side {
            Side::Buy => mid + through,
            Side::Sell => mid.saturating_sub(through),
        };
        let wants_cancel = roll >= 85 || pool.len() >= TAKER_POOL;
        if wants_cancel && let Some(id) = pool.pop_front() {
            if !shared.cancel(node, &id) {
                pool.push_front(id);
            }
            continue;
        }
        let body = match roll {
            0..45 => order_json(market, side, "limit", Some(cross), units, "ioc"),
            45..70 => order_json(market, side, "market", None, units, "ioc"),
            70..85 => order_json(market, side, "limit", Some(mid), units, "gtc"),
            _ => order_json(market, side, "limit", Some(cross), units, "ioc"),
        };
        if let Some((id, true)) = shared.place(node, &body)
            && (70..85).contains(&roll)
        {
            pool.push_back(id);
        }
    }
}

fn order_json(
    market: &Market,
    side: Side,
    kind: &str,
    price_ticks: Option<u64>,
    units: u64,
    time_in_force: &str,
) -> String {
    let mut order = serde_json::json!({
        "market": market.name,
        "side": side.name(),
        "type": kind,
        "quantity": market.lot.times(units * SIZE_UNIT_LOTS),
        "time_in_force": time_in_force,
    });
    if let Some(ticks) = price_ticks {
        order["price"] = Value::String(market.tick.times(ticks));
    }
    order.to_string()
}

/// The mid price of one market in ticks: a slow random walk in steps of [`SPACING_TICKS`] that
/// depends only on the seed, the market and the step number, so every client computes the same.
#[derive(Clone, Debug)]
struct Walk {
    rng: Rng,
    step: u64,
    mid: u64,
    floor: u64,
}

impl Walk {
    fn new(seed: u64, market: usize, start_ticks: u64) -> Walk {
        Walk {
            rng: Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ (market as u64 + 1)),
            step: 0,
            mid: start_ticks,
            floor: (start_ticks / 2).max((LEVELS + 1) * SPACING_TICKS),
        }
    }

    /// The mid at `step` (steps only move forward; an earlier step answers the current mid).
    fn advance_to(&mut self, step: u64) -> u64 {
        while self.step < step {
            self.step += 1;
            // Half the steps stay put, a quarter go up, a quarter go down.
            match self.rng.below(4) {
                0 => self.mid = self.mid.saturating_sub(SPACING_TICKS).max(self.floor),
                1 => self.mid += SPACING_TICKS,
                _ => {}
            }
        }
        self.mid
    }
}

/// SplitMix64: a small, seedable generator (the demo needs no cryptographic randomness).
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

// ---- Markets --------------------------------------------------------------------------------

struct Market {
    name: String,
    tick: Step,
    lot: Step,
    /// Where its mid price starts, in ticks.
    start_ticks: u64,
}

/// The node's markets (at most [`MAX_MARKETS`]), with their mid prices starting at 100, 50, ...
fn fetch_markets(api: SocketAddr) -> Result<Vec<Market>> {
    let list = p2p_exchange_tests::get_json(api, "/v1/markets")?;
    let list = list.as_array().context("/v1/markets is not a list")?;
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut markets = Vec::new();
    for (i, m) in list.iter().take(MAX_MARKETS).enumerate() {
        let name = m["name"].as_str().context("a market without a name")?;
        let tick = Step::parse(&text(&m["tick_size"]))
            .with_context(|| format!("{name}: unreadable tick_size {}", m["tick_size"]))?;
        let lot = Step::parse(&text(&m["lot_size"]))
            .with_context(|| format!("{name}: unreadable lot_size {}", m["lot_size"]))?;
        markets.push(Market {
            name: name.to_owned(),
            tick,
            lot,
            start_ticks: tick.per(100 / (i as u64 + 1)).max(100 * SPACING_TICKS),
        });
    }
    if markets.is_empty() {
        bail!("the nodes trade no market");
    }
    Ok(markets)
}

// ---- Watching the nodes ---------------------------------------------------------------------

/// What the demo knows of one node, from its polls.
#[derive(Clone, Debug, Default)]
struct NodeView {
    polled_at: Option<Instant>,
    /// Whether the last poll failed.
    unreachable: bool,
    settled_events: u64,
    pending_events: u64,
    events_delivered: u64,
    digest: String,
    digest_mismatches: u64,
    /// The digest seen at each settled position (the last [`HISTORY`] of them).
    history: BTreeMap<u64, String>,
    /// Per market, in the order of [`Shared::markets`].
    trades: Vec<MarketTrades>,
}

/// The settled trades of one market as seen on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct MarketTrades {
    count: u64,
    last_id: u64,
    last_price: Option<String>,
}

impl MarketTrades {
    /// Takes in a newest-first list of trades fetched with `limit`. Returns `false`, changing
    /// nothing, when every trade of a full list is new (some may have been left out: ask again
    /// with a larger limit), unless `last_try`.
    fn merge(&mut self, trades: &[Value], limit: usize, last_try: bool) -> bool {
        let id = |t: &Value| t["trade_id"].as_u64().unwrap_or(0);
        let new = trades.iter().filter(|t| id(t) > self.last_id).count();
        if new == 0 {
            return true;
        }
        if new == trades.len() && trades.len() >= limit && !last_try {
            return false;
        }
        self.count += new as u64;
        if let Some(newest) = trades.iter().max_by_key(|t| id(t)) {
            self.last_id = id(newest);
            self.last_price = match &newest["price"] {
                Value::String(s) => Some(s.clone()),
                Value::Null => None,
                other => Some(other.to_string()),
            };
        }
        true
    }
}

/// Polls one node's status every [`POLL_EVERY`] (for the digest history) and, when asked, its
/// trades.
struct Poller {
    api: SocketAddr,
    markets: Vec<String>,
    view: Mutex<NodeView>,
}

impl Poller {
    fn new(api: SocketAddr, markets: &[Market]) -> Poller {
        Poller {
            api,
            markets: markets.iter().map(|m| m.name.clone()).collect(),
            view: Mutex::new(NodeView {
                trades: vec![MarketTrades::default(); markets.len()],
                ..NodeView::default()
            }),
        }
    }

    fn run(&self, stop: &AtomicBool) {
        let mut next = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            self.poll_status();
            next += POLL_EVERY;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else {
                next = now;
            }
        }
    }

    /// Polls the status; returns the settled position, if the node answered.
    fn poll_status(&self) -> Option<u64> {
        let status = p2p_exchange_tests::get_json(self.api, "/v1/status");
        let Ok(mut view) = self.view.lock() else {
            return None;
        };
        let Ok(s) = status else {
            view.unreachable = true;
            return None;
        };
        let n = |k: &str| s[k].as_u64().unwrap_or(0);
        view.polled_at = Some(Instant::now());
        view.unreachable = false;
        view.settled_events = n("settled_events");
        view.pending_events = n("pending_events");
        view.events_delivered = n("events_delivered");
        view.digest_mismatches = n("digest_mismatches");
        view.digest = s["digest"].as_str().unwrap_or_default().to_owned();
        let (position, digest) = (view.settled_events, view.digest.clone());
        view.history.insert(position, digest);
        while view.history.len() > HISTORY {
            view.history.pop_first();
        }
        Some(position)
    }

    fn poll_trades(&self) {
        for (m, market) in self.markets.iter().enumerate() {
            let mut limit = TRADES_PAGE;
            loop {
                let path = format!("/v1/markets/{market}/trades?limit={limit}");
                let Ok(list) = p2p_exchange_tests::get_json(self.api, &path) else {
                    break;
                };
                let Some(list) = list.as_array() else { break };
                let last_try = limit >= TRADES_MAX;
                let Ok(mut view) = self.view.lock() else {
                    return;
                };
                if view.trades[m].merge(list, limit, last_try) {
                    break;
                }
                limit = TRADES_MAX;
            }
        }
    }
}

/// Fetches every node's trades between two status polls, again while settlement moved in
/// between (a few times at most), so each row shows the trades of the settled position beside
/// them; returns the views.
fn refresh(pollers: &[Arc<Poller>]) -> Vec<NodeView> {
    for poller in pollers {
        let mut before = poller.poll_status();
        for _ in 0..3 {
            poller.poll_trades();
            let after = poller.poll_status();
            if after.is_some() && after == before {
                break;
            }
            before = after;
        }
    }
    snapshot(pollers)
}

fn snapshot(pollers: &[Arc<Poller>]) -> Vec<NodeView> {
    pollers
        .iter()
        .map(|p| p.view.lock().map(|v| v.clone()).unwrap_or_default())
        .collect()
}

/// Two nodes whose digests differ at the same settled position.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mismatch {
    position: u64,
    nodes: (usize, usize),
}

/// The first pair of nodes that recorded different digests at the same settled position.
fn first_mismatch(views: &[NodeView]) -> Option<Mismatch> {
    for (i, a) in views.iter().enumerate() {
        for (j, b) in views.iter().enumerate().skip(i + 1) {
            for (position, digest) in &a.history {
                if b.history.get(position).is_some_and(|other| other != digest) {
                    return Some(Mismatch {
                        position: *position,
                        nodes: (i, j),
                    });
                }
            }
        }
    }
    None
}

/// Whether one node's digests agree with the others'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Agreement {
    /// Every other node had the same digest at the position where the two last met.
    Yes,
    /// Some node had another digest at the same settled position.
    No,
    /// Some node has not been seen at a position this one was seen at (yet).
    CatchingUp,
}

impl Agreement {
    fn text(self) -> &'static str {
        match self {
            Agreement::Yes => "yes",
            Agreement::No => "NO",
            Agreement::CatchingUp => "catching up",
        }
    }
}

/// Node `i` against every other node, each pair compared at the position of the one behind.
fn agreement(i: usize, views: &[NodeView]) -> Agreement {
    let me = &views[i];
    let mut result = Agreement::Yes;
    for (j, other) in views.iter().enumerate() {
        if j == i {
            continue;
        }
        let position = me.settled_events.min(other.settled_events);
        match (me.history.get(&position), other.history.get(&position)) {
            (Some(a), Some(b)) if a != b => return Agreement::No,
            (Some(_), Some(_)) => {}
            _ => result = Agreement::CatchingUp,
        }
    }
    result
}

fn short(digest: &str) -> String {
    digest.chars().take(8).collect()
}

/// The live summary: one row per node and a footer.
fn render(shared: &Shared, title: &str, views: &[NodeView], mismatch: Option<&Mismatch>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{title}  {} nodes  {} orders+cancels/s (of {})  seed {}",
        views.len(),
        shared_rate(shared),
        shared.rate,
        shared.seed
    );
    let mut header = format!(
        "{:<6}{:>7}{:>8}{:>8}{:>8}",
        "node", "orders", "cancels", "pending", "settled"
    );
    for market in &shared.markets {
        // "BTC-USD trades @ last" over "  263 @ 99.85".
        let _ = write!(header, " | {:<16}", format!("{} trades", market.name));
    }
    let _ = write!(header, " | {:<8} equal", "digest");
    let _ = writeln!(out, "{header}");
    for (i, view) in views.iter().enumerate() {
        let counts = &shared.counts[i];
        let mut row = format!(
            "{:<6}{:>7}{:>8}",
            format!("node{}", i + 1),
            counts.orders.load(Ordering::Relaxed),
            counts.cancels.load(Ordering::Relaxed)
        );
        if view.polled_at.is_none() || view.unreachable {
            let _ = write!(row, "{:>8}{:>8}", "-", "-");
        } else {
            let _ = write!(row, "{:>8}{:>8}", view.pending_events, view.settled_events);
        }
        for trades in &view.trades {
            let _ = write!(
                row,
                " | {:>5} @ {:<8}",
                trades.count,
                trades.last_price.as_deref().unwrap_or("-")
            );
        }
        let equal = if view.unreachable {
            "unreachable"
        } else {
            agreement(i, views).text()
        };
        let _ = write!(row, " | {:<8} {equal}", short(&view.digest));
        let _ = writeln!(out, "{row}");
    }
    let errors: Vec<(String, u64)> = shared
        .errors
        .lock()
        .map(|e| e.iter().map(|(k, v)| (k.clone(), *v)).collect())
        .unwrap_or_default();
    let total: u64 = errors.iter().map(|(_, v)| v).sum();
    let worst = errors
        .iter()
        .max_by_key(|(_, v)| *v)
        .map(|(k, v)| format!(" (most: {k} x{v})"))
        .unwrap_or_default();
    let overall = match mismatch {
        Some(m) => format!(
            "NO: node{} and node{} differ at settled {}",
            m.nodes.0 + 1,
            m.nodes.1 + 1,
            m.position
        ),
        None if views.iter().all(|v| {
            v.settled_events == views[0].settled_events && v.digest == views[0].digest
        }) =>
        {
            "yes".to_owned()
        }
        None => "catching up".to_owned(),
    };
    let _ = writeln!(
        out,
        "all digests equal: {overall}; client errors: {total}{worst}"
    );
    out
}

/// The rows `text` takes on a terminal `width` columns wide (long lines wrap).
fn screen_lines(text: &str, width: Option<usize>) -> usize {
    text.lines()
        .map(|line| match width {
            Some(w) if w > 0 => line.chars().count().div_ceil(w).max(1),
            _ => 1,
        })
        .sum()
}

/// The width of the controlling terminal, from `stty size` (`None` when there is none).
fn terminal_width() -> Option<usize> {
    let tty = std::fs::File::open("/dev/tty").ok()?;
    let output = std::process::Command::new("stty")
        .arg("size")
        .stdin(tty)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// The orders and cancels accepted per second of trading, over all nodes.
fn shared_rate(shared: &Shared) -> String {
    let end = shared
        .stopped_at
        .get()
        .copied()
        .unwrap_or_else(Instant::now);
    let elapsed = end.duration_since(shared.start).as_secs_f64().max(1.0);
    let ops: u64 = shared
        .counts
        .iter()
        .map(|c| c.orders.load(Ordering::Relaxed) + c.cancels.load(Ordering::Relaxed))
        .sum();
    format!("{:.0}", ops as f64 / elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn steps_parse_and_format_decimals() {
        let tick = Step::parse("0.01").expect("tick");
        assert_eq!(tick.times(10_005), "100.05");
        assert_eq!(tick.per(100), 10_000);
        let lot = Step::parse("0.0001").expect("lot");
        assert_eq!(lot.times(100), "0.0100");
        assert_eq!(Step::parse("5").expect("step").times(3), "15");
        assert_eq!(Step::parse("0"), None);
        assert_eq!(Step::parse("x"), None);
    }

    #[test]
    fn the_mid_price_is_a_function_of_seed_market_and_step() {
        let mut a = Walk::new(7, 0, 10_000);
        let mut b = Walk::new(7, 0, 10_000);
        // One walker jumps, the other goes step by step: the same path.
        let jumped = a.advance_to(500);
        let stepped = (1..=500).map(|s| b.advance_to(s)).last();
        assert_eq!(Some(jumped), stepped);
        // It moves, slowly, on the spacing grid, and never below its floor.
        let mut walk = Walk::new(7, 0, 10_000);
        let mut previous = walk.advance_to(0);
        let mut moves = 0;
        for step in 1..=2_000 {
            let mid = walk.advance_to(step);
            assert!(mid.abs_diff(previous) == 0 || mid.abs_diff(previous) == SPACING_TICKS);
            assert!(mid >= walk.floor);
            moves += usize::from(mid != previous);
            previous = mid;
        }
        assert!((700..1_300).contains(&moves), "{moves}");
        // Another seed or market walks elsewhere.
        assert_ne!(Walk::new(8, 0, 10_000).advance_to(500), jumped);
        assert_ne!(Walk::new(7, 1, 10_000).advance_to(500), jumped);
    }

    #[test]
    fn the_ladder_never_crosses_itself() {
        let rungs = ladder(10_000);
        assert_eq!(rungs.len(), 2 * LEVELS as usize);
        let best_bid = rungs.iter().filter(|r| r.0 == Side::Buy).map(|r| r.1).max();
        let best_ask = rungs
            .iter()
            .filter(|r| r.0 == Side::Sell)
            .map(|r| r.1)
            .min();
        assert_eq!(best_bid, Some(10_000 - SPACING_TICKS));
        assert_eq!(best_ask, Some(10_000 + SPACING_TICKS));
    }

    #[test]
    fn clients_draw_the_same_choices_from_the_same_seed() {
        let draws = |seed, node, role| {
            let mut rng = client_rng(seed, node, role);
            (0..8).map(|_| rng.next()).collect::<Vec<_>>()
        };
        assert_eq!(draws(1, 0, 1), draws(1, 0, 1));
        assert_ne!(draws(1, 0, 1), draws(1, 1, 1));
        assert_ne!(draws(1, 0, 1), draws(1, 0, 2));
        assert_ne!(draws(1, 0, 1), draws(2, 0, 1));
    }

    fn trades(ids: &[u64]) -> Vec<Value> {
        ids.iter()
            .map(|id| json!({"trade_id": id, "price": format!("100.{id:02}")}))
            .collect()
    }

    #[test]
    fn trades_are_counted_once_and_a_full_page_of_new_ones_asks_for_more() {
        let mut seen = MarketTrades::default();
        assert!(seen.merge(&trades(&[5, 3, 2]), 10, false));
        assert_eq!(seen.count, 3);
        assert_eq!(seen.last_price.as_deref(), Some("100.05"));
        // The same list again, and an overlapping one: only the new trade counts.
        assert!(seen.merge(&trades(&[5, 3, 2]), 10, false));
        assert!(seen.merge(&trades(&[9, 5, 3]), 10, false));
        assert_eq!((seen.count, seen.last_id), (4, 9));
        // A full page of new trades may have left some out: nothing counted, ask again.
        let before = seen.clone();
        assert!(!seen.merge(&trades(&[12, 11, 10]), 3, false));
        assert_eq!(seen, before);
        assert!(seen.merge(&trades(&[12, 11, 10]), 3, true));
        assert_eq!(seen.count, 7);
    }

    fn view(position: u64, history: &[(u64, &str)]) -> NodeView {
        NodeView {
            polled_at: Some(Instant::now()),
            settled_events: position,
            digest: history
                .iter()
                .find(|(p, _)| *p == position)
                .map(|(_, d)| d.to_string())
                .unwrap_or_default(),
            history: history.iter().map(|(p, d)| (*p, d.to_string())).collect(),
            ..NodeView::default()
        }
    }

    #[test]
    fn digests_are_compared_only_at_equal_settled_positions() {
        // Same position, same digest.
        let views = [view(10, &[(10, "a")]), view(10, &[(10, "a")])];
        assert_eq!(agreement(0, &views), Agreement::Yes);
        assert_eq!(first_mismatch(&views), None);
        // The one ahead was seen at the position of the one behind, with the same digest.
        let views = [view(12, &[(10, "a"), (12, "b")]), view(10, &[(10, "a")])];
        assert_eq!(agreement(0, &views), Agreement::Yes);
        assert_eq!(agreement(1, &views), Agreement::Yes);
        // It passed that position between two polls: no verdict yet.
        let views = [view(12, &[(8, "z"), (12, "b")]), view(10, &[(10, "a")])];
        assert_eq!(agreement(0, &views), Agreement::CatchingUp);
        assert_eq!(agreement(1, &views), Agreement::CatchingUp);
        // Different digests at one position: a divergence, whenever it was seen.
        let views = [
            view(12, &[(10, "a"), (12, "b")]),
            view(12, &[(10, "x"), (12, "b")]),
        ];
        assert_eq!(
            first_mismatch(&views),
            Some(Mismatch {
                position: 10,
                nodes: (0, 1)
            })
        );
        let views = [view(10, &[(10, "a")]), view(10, &[(10, "x")])];
        assert_eq!(agreement(0, &views), Agreement::No);
    }

    #[test]
    fn settled_means_fresh_polls_nothing_pending_and_equal_counts() {
        let before = Instant::now();
        let node = |settled, pending, delivered| NodeView {
            polled_at: Some(Instant::now()),
            settled_events: settled,
            pending_events: pending,
            events_delivered: delivered,
            ..NodeView::default()
        };
        assert!(settled(&[node(5, 0, 5), node(5, 0, 5)], before));
        assert!(!settled(&[node(5, 0, 5), node(5, 1, 6)], before));
        assert!(!settled(&[node(5, 0, 5), node(4, 0, 4)], before));
        assert!(!settled(&[node(5, 0, 5), node(5, 0, 5)], Instant::now()));
    }

    #[test]
    fn a_redrawn_table_counts_its_wrapped_lines() {
        let text = format!("{}\nshort\n\n", "x".repeat(25));
        assert_eq!(screen_lines(&text, None), 3);
        assert_eq!(screen_lines(&text, Some(80)), 3);
        assert_eq!(screen_lines(&text, Some(10)), 5);
    }

    #[test]
    fn orders_are_on_the_market_grid() {
        let market = Market {
            name: "BTC-USD".to_owned(),
            tick: Step::parse("0.01").expect("tick"),
            lot: Step::parse("0.0001").expect("lot"),
            start_ticks: 10_000,
        };
        let body: Value = serde_json::from_str(&order_json(
            &market,
            Side::Sell,
            "limit",
            Some(10_005),
            3,
            "post_only",
        ))
        .expect("json");
        assert_eq!(body["price"], "100.05");
        assert_eq!(body["quantity"], "0.0300");
        assert_eq!(body["side"], "sell");
        let body: Value =
            serde_json::from_str(&order_json(&market, Side::Buy, "market", None, 1, "ioc"))
                .expect("json");
        assert!(body.get("price").is_none());
    }
}
