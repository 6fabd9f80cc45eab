//! `cargo xtask loadtest`: drives a cluster through its public HTTP API and measures it.
//!
//! Starts a fresh cluster (or targets running nodes with `--target`) and, from this separate
//! process, places and cancels orders with tokio + reqwest over keep-alive connections, either
//! open loop on a fixed timetable (`--rate`, latency measured from the *scheduled* send time, so
//! it stays honest when the nodes push back) or closed loop (`--max`). `--batch N` uses
//! `POST /v1/orders/batch` with N orders per request.
//!
//! How "settled on all nodes" is measured: every acknowledged order carries the Lamport
//! timestamp of its event, and every node reports in `/v1/status` the `settled_lamport` of the
//! last event it applied (settlement applies events in `(lamport, origin, seq)` order, so an
//! order is settled on a node exactly when that node's `settled_lamport` reaches the order's
//! `lamport`). A poller reads `/v1/status` of every node every `--poll-ms` and keeps the history
//! of `settled_lamport`; after the run each order's settle time on each node is the first poll
//! that saw it settled, and submit -> settled-everywhere is the latest of those minus the submit
//! time. This covers every acknowledged order (no sampling) and is an upper bound: it includes up
//! to one poll interval plus the status round trip.
//!
//! At the end it waits (with a deadline) until every node has `pending_events == 0` and the same
//! `settled_events`, then compares the digests; the run fails if they differ or never converge.

use crate::cluster;
use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The options of `cargo xtask loadtest`.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct Args {
    /// Nodes of the cluster to start (ignored with --target).
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// First P2P port of the started cluster (APIs on base+5000...); distinct from the default
    /// cluster's 3000 so both can run.
    #[arg(long, default_value_t = 4100)]
    base_port: u16,
    /// Drive running nodes instead of starting a cluster: comma-separated API URLs on loopback,
    /// e.g. http://127.0.0.1:8000,http://127.0.0.1:8001.
    #[arg(long, value_delimiter = ',')]
    target: Vec<String>,
    /// Markets to trade, comma-separated (tick and lot sizes are read from GET /v1/markets).
    #[arg(long, value_delimiter = ',', default_value = "BTC-USD,ETH-USD")]
    markets: Vec<String>,
    /// Open loop: operations (placements + cancels) per second on a fixed timetable; 2000 when
    /// neither --rate nor --max is given.
    #[arg(long, conflicts_with = "max")]
    rate: Option<u64>,
    /// Closed loop: every worker sends its next request as soon as the previous one is answered.
    #[arg(long)]
    max: bool,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Percentages of resting (GTC away from the touch), crossing (IOC through the touch) and
    /// cancel operations, e.g. "60,25,15".
    #[arg(long, default_value = "60,25,15")]
    mix: Mix,
    /// Concurrent requests in flight (each a keep-alive connection). An open loop needs about
    /// rate x acknowledgement latency of them, or it measures its own queue.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Orders per request: 1 uses POST /v1/orders; more use POST /v1/orders/batch (at most
    /// 1000). A batch's share of cancels is sent alongside as DELETE requests.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Print the report as JSON (on one line, last on stdout) instead of tables.
    #[arg(long)]
    json: bool,
    /// Milliseconds between two /v1/status polls of each node (the resolution of the settle
    /// latency).
    #[arg(long, default_value_t = 5)]
    poll_ms: u64,
    /// Seconds to wait after the load for every node to settle everything and agree.
    #[arg(long, default_value_t = 30)]
    settle_timeout: u64,
    /// Seed of the order generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Build and run the debug binary instead of the release one (started clusters only).
    #[arg(long)]
    debug: bool,
}

/// The default open-loop rate when neither `--rate` nor `--max` is given.
const DEFAULT_RATE: u64 = 2_000;
/// How long an open-loop run may fall behind its timetable before the rest is dropped.
const BEHIND_GRACE: Duration = Duration::from_secs(5);
/// Timeout of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Acknowledged orders remembered for the settle latency (about 24 bytes each).
const MAX_TRACKED_ORDERS: usize = 4_000_000;
/// Resting order ids remembered per node for cancels.
const MAX_CANCEL_POOL: usize = 100_000;
/// Distinct error kinds kept; more are counted as "other".
const MAX_ERROR_KINDS: usize = 64;
/// The mid price of every market, in ticks.
const MID_TICKS: u64 = 1_000_000;
/// Resting orders are placed 1..=this many ticks away from the mid.
const RESTING_SPREAD_TICKS: u64 = 200;
/// Crossing orders are priced this many ticks through the mid (IOC, so they never rest).
const CROSSING_TICKS: u64 = 250;
/// Largest order size, in lots.
const MAX_LOTS: u64 = 10;

pub(crate) fn run(args: Args) -> Result<()> {
    validate(&args)?;
    let started_cluster;
    let (apis, pids) = if args.target.is_empty() {
        let cluster_args = cluster::Args {
            nodes: args.nodes,
            base_port: args.base_port,
            fresh: true,
            mdns: false,
            grenache: false,
            debug: args.debug,
            release: !args.debug,
            check: true,
        };
        let cluster = cluster::start(&cluster_args)?;
        eprintln!(
            "loadtest: {} nodes meshed in {:.1} s",
            cluster.nodes.len(),
            cluster.meshed_in.as_secs_f64()
        );
        let apis: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("http://{}", n.api))
            .collect();
        let pids = cluster.nodes.iter().map(|n| n.child.id()).collect();
        started_cluster = Some(cluster);
        (apis, pids)
    } else {
        started_cluster = None;
        let apis: Vec<String> = args
            .target
            .iter()
            .map(|t| t.trim_end_matches('/').to_owned())
            .collect();
        let pids = apis.iter().map(|api| pid_of_api(api)).collect();
        (apis, pids)
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let report = runtime.block_on(drive(&args, apis, pids));
    drop(runtime);
    // Stop the nodes before printing, so their last log lines come first.
    drop(started_cluster);
    let report = report?;
    if args.json {
        std::thread::sleep(Duration::from_millis(200));
        println!("{}", serde_json::to_string(&report.json)?);
    } else {
        println!("{}", report.table);
    }
    if let Some(failure) = report.failure {
        bail!("{failure}");
    }
    Ok(())
}

fn validate(args: &Args) -> Result<()> {
    if !(args.duration > 0.0 && args.duration <= 3600.0) {
        bail!("--duration must be between 0 and 3600 seconds");
    }
    if args.concurrency == 0 || args.concurrency > 4096 {
        bail!("--concurrency must be between 1 and 4096");
    }
    if args.batch == 0 || args.batch > 1000 {
        bail!("--batch must be between 1 and 1000 (the node's limit per batch request)");
    }
    if args.rate == Some(0) {
        bail!("--rate must be positive");
    }
    if args.markets.is_empty() {
        bail!("--markets names no market");
    }
    if args.poll_ms == 0 {
        bail!("--poll-ms must be positive");
    }
    for target in &args.target {
        let host = target
            .strip_prefix("http://")
            .context("--target URLs must start with http://")?;
        if !(host.starts_with("127.0.0.1:") || host.starts_with("[::1]:")) {
            bail!("--target {target}: the load test only talks to loopback (127.0.0.1 or [::1])");
        }
    }
    Ok(())
}

// ---- Options --------------------------------------------------------------------------------

/// The share of each kind of operation, in percent.
#[derive(Clone, Copy, Debug)]
struct Mix {
    resting: u32,
    crossing: u32,
    cancel: u32,
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Mix, String> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let [resting, crossing, cancel] = parts.as_slice() else {
            return Err("expected three percentages: resting,crossing,cancel".to_owned());
        };
        let parse = |p: &str| {
            p.parse::<u32>()
                .map_err(|_| format!("{p:?} is not a whole percentage"))
        };
        let mix = Mix {
            resting: parse(resting)?,
            crossing: parse(crossing)?,
            cancel: parse(cancel)?,
        };
        if mix.resting + mix.crossing + mix.cancel != 100 {
            return Err("the percentages must add up to 100".to_owned());
        }
        if mix.resting + mix.crossing == 0 {
            return Err("the mix must place some orders".to_owned());
        }
        Ok(mix)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Resting,
    Crossing,
    Cancel,
}

impl Mix {
    fn pick(&self, rng: &mut Rng) -> Kind {
        let roll = rng.below(100) as u32;
        if roll < self.resting {
            Kind::Resting
        } else if roll < self.resting + self.crossing {
            Kind::Crossing
        } else {
            Kind::Cancel
        }
    }
}

/// SplitMix64: a small, seedable generator (the load test needs no cryptographic randomness).
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

/// A decimal step such as a tick or lot size: `mantissa * 10^-scale`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Step {
    mantissa: u64,
    scale: u32,
}

impl Step {
    /// Parses a positive decimal such as `0.01` (at most 12 decimals).
    pub(crate) fn parse(text: &str) -> Option<Step> {
        let (int, frac) = text.split_once('.').unwrap_or((text, ""));
        let frac = frac.trim_end_matches('0');
        let scale = u32::try_from(frac.len()).ok().filter(|s| *s <= 12)?;
        let digits = format!("{int}{frac}");
        let mantissa: u64 = digits.parse().ok()?;
        (mantissa > 0).then_some(Step { mantissa, scale })
    }

    /// `count` steps as a decimal string.
    pub(crate) fn times(&self, count: u64) -> String {
        let value = count.saturating_mul(self.mantissa);
        if self.scale == 0 {
            return value.to_string();
        }
        let unit = 10u64.pow(self.scale);
        format!(
            "{}.{:0width$}",
            value / unit,
            value % unit,
            width = self.scale as usize
        )
    }

    /// How many steps make `whole` units (at least 1).
    pub(crate) fn per(&self, whole: u64) -> u64 {
        (whole.saturating_mul(10u64.pow(self.scale)) / self.mantissa).max(1)
    }
}

struct Market {
    name: String,
    tick: Step,
    lot: Step,
}

/// One operation to send.
enum Op {
    Place { body: String, resting: bool },
    Cancel { order_id: String },
}

fn order_body(market: &Market, kind: Kind, rng: &mut Rng) -> String {
    let buy = rng.below(2) == 0;
    let lots = 1 + rng.below(MAX_LOTS);
    let (ticks, tif) = match kind {
        Kind::Crossing if buy => (MID_TICKS + CROSSING_TICKS, "ioc"),
        Kind::Crossing => (MID_TICKS - CROSSING_TICKS, "ioc"),
        _ => {
            let away = 1 + rng.below(RESTING_SPREAD_TICKS);
            (
                if buy {
                    MID_TICKS - away
                } else {
                    MID_TICKS + away
                },
                "gtc",
            )
        }
    };
    format!(
        r#"{{"market":"{}","side":"{}","type":"limit","price":"{}","quantity":"{}","time_in_force":"{}"}}"#,
        market.name,
        if buy { "buy" } else { "sell" },
        market.tick.times(ticks),
        market.lot.times(lots),
        tif
    )
}

// ---- The run --------------------------------------------------------------------------------

/// What every worker shares.
struct Ctx {
    client: reqwest::Client,
    apis: Vec<String>,
    markets: Vec<Market>,
    mix: Mix,
    batch: usize,
    /// The next job number (each job is one request, or one batch plus its cancels).
    next_job: AtomicU64,
    /// `Some(nanoseconds between jobs)` for an open loop.
    job_interval_ns: Option<f64>,
    start: Instant,
    end: Instant,
    jobs_total: u64,
    jobs_started: AtomicU64,
    /// Resting orders acknowledged by each node, candidates for cancels (only an order's origin
    /// may cancel it).
    pools: Vec<Mutex<VecDeque<String>>>,
    stats: Mutex<Stats>,
    seed: u64,
}

struct Stats {
    place_ack: Histogram<u64>,
    cancel_ack: Histogram<u64>,
    placed: u64,
    cancelled: u64,
    requests: u64,
    errors: BTreeMap<String, u64>,
    /// `(lamport, submit time)` of every acknowledged order, for the settle latency.
    orders: Vec<(u64, Instant)>,
    untracked: u64,
}

impl Stats {
    fn new() -> Result<Stats> {
        Ok(Stats {
            place_ack: latency_histogram()?,
            cancel_ack: latency_histogram()?,
            placed: 0,
            cancelled: 0,
            requests: 0,
            errors: BTreeMap::new(),
            orders: Vec::new(),
            untracked: 0,
        })
    }

    fn error(&mut self, kind: String, count: u64) {
        let full = self.errors.len() >= MAX_ERROR_KINDS && !self.errors.contains_key(&kind);
        let key = if full { "other".to_owned() } else { kind };
        *self.errors.entry(key).or_default() += count;
    }

    fn track(&mut self, lamport: u64, submitted: Instant) {
        if self.orders.len() < MAX_TRACKED_ORDERS {
            self.orders.push((lamport, submitted));
        } else {
            self.untracked += 1;
        }
    }
}

/// Microseconds from 1 µs to 10 minutes, 3 significant digits.
fn latency_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 3).context("creating a histogram")
}

fn micros_since(t0: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(t0).as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// One poll of `/v1/status`.
#[derive(Clone, Debug, Default)]
struct NodeStatus {
    at: Option<Instant>,
    settled_events: u64,
    pending_events: u64,
    events_delivered: u64,
    settled_lamport: u64,
    digest: String,
    peers: u64,
}

impl NodeStatus {
    fn from_json(v: &Value, at: Instant) -> NodeStatus {
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        NodeStatus {
            at: Some(at),
            settled_events: n("settled_events"),
            pending_events: n("pending_events"),
            events_delivered: n("events_delivered"),
            settled_lamport: n("settled_lamport"),
            digest: v["digest"].as_str().unwrap_or_default().to_owned(),
            peers: n("peers"),
        }
    }
}

/// What a status poller hands back: `(time, settled_lamport)` each time it grew.
struct Poller {
    latest: Mutex<NodeStatus>,
    history: Mutex<Vec<(Instant, u64)>>,
    errors: AtomicU64,
}

struct Report {
    json: Value,
    table: String,
    failure: Option<String>,
}

async fn drive(args: &Args, apis: Vec<String>, pids: Vec<Option<u32>>) -> Result<Report> {
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(args.concurrency * 2 + 16)
        .pool_idle_timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(3))
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let markets = fetch_markets(&client, &apis[0], &args.markets).await?;
    for api in &apis {
        let status = get_json(&client, &format!("{api}/v1/status"))
            .await
            .with_context(|| format!("GET {api}/v1/status"))?;
        if status["members"].as_array().map(Vec::len) != Some(apis.len()) {
            eprintln!(
                "loadtest: warning: {api} has {} members, {} nodes are driven",
                status["members"].as_array().map_or(0, Vec::len),
                apis.len()
            );
        }
    }

    let n = apis.len();
    let mode = match (args.max, args.rate) {
        (true, _) => "closed loop (max)".to_owned(),
        (false, rate) => format!("open loop at {} ops/s", rate.unwrap_or(DEFAULT_RATE)),
    };
    let rate = (!args.max).then(|| args.rate.unwrap_or(DEFAULT_RATE));
    let job_interval_ns = rate.map(|r| args.batch as f64 * 1e9 / r as f64);
    let duration = Duration::from_secs_f64(args.duration);
    let jobs_total = job_interval_ns.map_or(0, |ns| (args.duration * 1e9 / ns).ceil() as u64);

    // Pollers run from before the load until the nodes have converged.
    let pollers: Vec<Arc<Poller>> = (0..n)
        .map(|_| {
            Arc::new(Poller {
                latest: Mutex::new(NodeStatus::default()),
                history: Mutex::new(Vec::new()),
                errors: AtomicU64::new(0),
            })
        })
        .collect();
    let stop_polling = Arc::new(AtomicBool::new(false));
    let mut poll_tasks = Vec::new();
    for (api, poller) in apis.iter().zip(&pollers) {
        poll_tasks.push(tokio::spawn(poll(
            client.clone(),
            format!("{api}/v1/status"),
            poller.clone(),
            stop_polling.clone(),
            Duration::from_millis(args.poll_ms),
        )));
    }

    let before = statuses(&client, &apis).await?;
    let metrics_before = scrape_all(&client, &apis).await;
    let cpu_before: Vec<Option<f64>> = pids.iter().map(|p| p.and_then(cpu_seconds)).collect();
    let self_cpu_before = cpu_seconds_of("self");
    let start = Instant::now() + Duration::from_millis(20);
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        apis: apis.clone(),
        markets,
        mix: args.mix,
        batch: args.batch,
        next_job: AtomicU64::new(0),
        job_interval_ns,
        start,
        end: start + duration,
        jobs_total,
        jobs_started: AtomicU64::new(0),
        pools: (0..n).map(|_| Mutex::new(VecDeque::new())).collect(),
        stats: Mutex::new(Stats::new()?),
        seed: args.seed,
    });
    eprintln!(
        "loadtest: {mode}, {n} nodes, {} s, mix {}/{}/{} (resting/crossing/cancel), batch {}, concurrency {}",
        args.duration,
        args.mix.resting,
        args.mix.crossing,
        args.mix.cancel,
        args.batch,
        args.concurrency
    );
    let mut workers = Vec::new();
    for w in 0..args.concurrency {
        workers.push(tokio::spawn(worker(ctx.clone(), w as u64)));
    }
    for w in workers {
        w.await.context("a load worker panicked")?;
    }
    let load_end = Instant::now();
    let load_secs = load_end.duration_since(start).as_secs_f64();
    // A node that stopped answering shows up as "not settled" below, not as an abort here.
    let at_end = statuses(&client, &apis).await.unwrap_or_else(|_| {
        pollers
            .iter()
            .map(|p| p.latest.lock().map(|s| s.clone()).unwrap_or_default())
            .collect()
    });

    // Wait until every node has settled everything and they agree.
    eprintln!("loadtest: load done; waiting for every node to settle");
    let deadline = load_end + Duration::from_secs(args.settle_timeout);
    let (converged_at, outcome) = loop {
        let latest: Vec<NodeStatus> = pollers
            .iter()
            .map(|p| p.latest.lock().map(|s| s.clone()).unwrap_or_default())
            .collect();
        let fresh = latest.iter().all(|s| s.at.is_some_and(|at| at > load_end));
        let settled = fresh
            && latest.iter().all(|s| s.pending_events == 0)
            && latest
                .iter()
                .all(|s| s.settled_events == latest[0].settled_events);
        if settled && latest.iter().all(|s| s.digest == latest[0].digest) {
            break (Instant::now(), Outcome::Agree(latest));
        }
        if Instant::now() >= deadline {
            let outcome = if settled {
                Outcome::Differ(latest)
            } else {
                Outcome::NotSettled(latest)
            };
            break (Instant::now(), outcome);
        }
        tokio::time::sleep(Duration::from_millis(args.poll_ms)).await;
    };
    stop_polling.store(true, Ordering::SeqCst);
    for task in poll_tasks {
        task.await.context("a status poller panicked")?;
    }
    let after = statuses(&client, &apis).await.unwrap_or_default();
    let metrics_after = scrape_all(&client, &apis).await;
    let cpu_after: Vec<Option<f64>> = pids.iter().map(|p| p.and_then(cpu_seconds)).collect();
    let self_cpu_after = cpu_seconds_of("self");
    let window = converged_at.duration_since(start).as_secs_f64();

    let stats = std::mem::replace(
        &mut *ctx
            .stats
            .lock()
            .map_err(|_| anyhow::anyhow!("stats poisoned"))?,
        Stats::new()?,
    );
    let histories: Vec<Vec<(Instant, u64)>> = pollers
        .iter()
        .map(|p| p.history.lock().map(|h| h.clone()).unwrap_or_default())
        .collect();
    let (settle_hist, unsettled) = settle_latencies(&stats.orders, &histories)?;
    let behind = ctx
        .jobs_total
        .saturating_sub(ctx.jobs_started.load(Ordering::SeqCst));

    // ---- Assemble the report.
    let mut node_rows = Vec::new();
    let (mut messages_out, mut bytes_out) = (0.0, 0.0);
    for i in 0..n {
        let delta = |name: &str| {
            let a = metrics_before[i].get(name).copied().unwrap_or(0.0);
            metrics_after[i].get(name).map(|b| b - a)
        };
        let fsyncs = delta(FSYNCS);
        let fsync_ms = match (delta(FSYNC_SECONDS), fsyncs) {
            (Some(total), Some(count)) if count > 0.0 => Some(1000.0 * total / count),
            _ => None,
        };
        messages_out += delta(MESSAGES_OUT).unwrap_or(0.0);
        bytes_out += delta(BYTES_OUT).unwrap_or(0.0);
        let settled_load = at_end[i]
            .settled_events
            .saturating_sub(before[i].settled_events);
        let settled_total = after.get(i).map_or(0, |s| {
            s.settled_events.saturating_sub(before[i].settled_events)
        });
        let cpu = match (cpu_before[i], cpu_after[i]) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        node_rows.push(json!({
            "api": apis[i],
            "pid": pids[i],
            "settled_events_during_load": settled_load,
            "settled_per_s_during_load": settled_load as f64 / load_secs,
            "settled_events_total": settled_total,
            "settled_per_s_until_converged": settled_total as f64 / window,
            "cpu_seconds": cpu,
            "cpu_percent": cpu.map(|c| 100.0 * c / window),
            "peak_rss_mb": pids[i].and_then(|p| peak_rss_kb(&p.to_string())).map(|kb| kb as f64 / 1024.0),
            "status_poll_errors": pollers[i].errors.load(Ordering::Relaxed),
            "fsyncs": fsyncs,
            "mean_fsync_ms": fsync_ms,
            "peer_messages_out": delta(MESSAGES_OUT),
            "peer_bytes_out": delta(BYTES_OUT),
            "peer_send_drops": delta(DROPS),
        }));
    }
    let (agree, failure, final_nodes) = match &outcome {
        Outcome::Agree(s) => (true, None, s.clone()),
        Outcome::Differ(s) => (
            false,
            Some("digests differ after every node settled everything".to_owned()),
            s.clone(),
        ),
        Outcome::NotSettled(s) => (
            false,
            Some(format!(
                "the nodes did not all settle everything (pending 0, same settled count) within {} s",
                args.settle_timeout
            )),
            s.clone(),
        ),
    };
    let self_cpu = match (self_cpu_before, self_cpu_after) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let errors_total: u64 = stats.errors.values().sum();
    let ops = (stats.placed + stats.cancelled).max(1) as f64;
    let json = json!({
        "config": {
            "mode": mode,
            "nodes": n,
            "targets": apis,
            "markets": args.markets,
            "rate_ops_per_s": rate,
            "duration_s": args.duration,
            "mix": {"resting": args.mix.resting, "crossing": args.mix.crossing, "cancel": args.mix.cancel},
            "batch": args.batch,
            "concurrency": args.concurrency,
            "poll_ms": args.poll_ms,
            "seed": args.seed,
        },
        "load_seconds": load_secs,
        "converged_after_load_s": converged_at.duration_since(load_end).as_secs_f64(),
        "requests": stats.requests,
        "orders_accepted": stats.placed,
        "orders_accepted_per_s": stats.placed as f64 / load_secs,
        "cancels_accepted": stats.cancelled,
        "cancels_accepted_per_s": stats.cancelled as f64 / load_secs,
        "jobs_behind_schedule_dropped": behind,
        "latency_us": {
            "submit_to_ack_place": percentiles(&stats.place_ack),
            "submit_to_ack_cancel": percentiles(&stats.cancel_ack),
            "submit_to_settled_all_nodes": percentiles(&settle_hist),
            "latency_from": if rate.is_some() { "scheduled send time (open loop)" } else { "actual send time (closed loop)" },
            "settle_method": format!(
                "every acknowledged order; settled on a node at the first /v1/status poll (every {} ms) whose settled_lamport >= the order's lamport; upper bound",
                args.poll_ms
            ),
            "orders_never_seen_settled": unsettled,
            "orders_not_tracked": stats.untracked,
        },
        "errors": stats.errors,
        "errors_total": errors_total,
        "nodes": node_rows,
        "loadtest_client_cpu_seconds": self_cpu,
        "peer_messages_per_accepted_op": messages_out / ops,
        "peer_bytes_per_accepted_op": bytes_out / ops,
        "digests_agree": agree,
        "final": final_nodes.iter().map(|s| json!({
            "settled_events": s.settled_events,
            "pending_events": s.pending_events,
            "events_delivered": s.events_delivered,
            "peers": s.peers,
            "digest": s.digest,
        })).collect::<Vec<_>>(),
        "failure": failure,
    });
    let table = render_table(&json);
    Ok(Report {
        json,
        table,
        failure,
    })
}

enum Outcome {
    Agree(Vec<NodeStatus>),
    Differ(Vec<NodeStatus>),
    NotSettled(Vec<NodeStatus>),
}

async fn worker(ctx: Arc<Ctx>, w: u64) {
    let mut rng = Rng(ctx.seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ (w + 1));
    let n = ctx.apis.len() as u64;
    loop {
        let job = ctx.next_job.fetch_add(1, Ordering::Relaxed);
        let submitted = match ctx.job_interval_ns {
            Some(interval) => {
                if job >= ctx.jobs_total {
                    break;
                }
                if Instant::now() > ctx.end + BEHIND_GRACE {
                    // Too far behind the timetable: the rest is reported as dropped.
                    break;
                }
                let at = ctx.start + Duration::from_nanos((job as f64 * interval) as u64);
                tokio::time::sleep_until(at.into()).await;
                at
            }
            None => {
                let now = Instant::now();
                if now >= ctx.end {
                    break;
                }
                if now < ctx.start {
                    tokio::time::sleep_until(ctx.start.into()).await;
                }
                Instant::now()
            }
        };
        ctx.jobs_started.fetch_add(1, Ordering::Relaxed);
        let node = (job % n) as usize;
        let ops = ops_for_job(&ctx, node, &mut rng);
        run_job(&ctx, node, ops, submitted).await;
    }
}

fn ops_for_job(ctx: &Ctx, node: usize, rng: &mut Rng) -> Vec<Op> {
    let mut ops = Vec::with_capacity(ctx.batch);
    for _ in 0..ctx.batch {
        let market = &ctx.markets[rng.below(ctx.markets.len() as u64) as usize];
        let kind = ctx.mix.pick(rng);
        if kind == Kind::Cancel {
            let candidate = ctx.pools[node].lock().ok().and_then(|mut p| p.pop_back());
            if let Some(order_id) = candidate {
                ops.push(Op::Cancel { order_id });
                continue;
            }
        }
        let kind = if kind == Kind::Cancel {
            Kind::Resting
        } else {
            kind
        };
        ops.push(Op::Place {
            body: order_body(market, kind, rng),
            resting: kind == Kind::Resting,
        });
    }
    ops
}

async fn run_job(ctx: &Arc<Ctx>, node: usize, ops: Vec<Op>, submitted: Instant) {
    let mut places = Vec::new();
    let mut cancels = tokio::task::JoinSet::new();
    for op in ops {
        match op {
            Op::Place { body, resting } => places.push((body, resting)),
            Op::Cancel { order_id } => {
                let ctx = ctx.clone();
                cancels.spawn(async move { cancel(&ctx, node, &order_id, submitted).await });
            }
        }
    }
    if ctx.batch == 1 {
        if let Some((body, resting)) = places.pop() {
            place_one(ctx, node, body, resting, submitted).await;
        }
    } else if !places.is_empty() {
        place_batch(ctx, node, places, submitted).await;
    }
    while cancels.join_next().await.is_some() {}
}

fn request_error(op: &str, e: &reqwest::Error) -> String {
    if e.is_timeout() {
        format!("{op}: timeout")
    } else if e.is_connect() {
        format!("{op}: connect")
    } else if e.is_body() || e.is_decode() {
        format!("{op}: reading the answer")
    } else {
        format!("{op}: request failed")
    }
}

async fn http_error(op: &str, response: reqwest::Response) -> String {
    let status = response.status().as_u16();
    let code = match response.bytes().await {
        Ok(body) => serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned)),
        Err(_) => None,
    };
    format!("{op}: http {status} {}", code.unwrap_or_default())
        .trim_end()
        .to_owned()
}

fn record_error(ctx: &Ctx, kind: String, count: u64) {
    if let Ok(mut stats) = ctx.stats.lock() {
        stats.requests += 1;
        stats.error(kind, count);
    }
}

/// An acknowledged order: its id, its Lamport timestamp and whether it may still rest.
fn acknowledged(view: &Value) -> Option<(String, u64, bool)> {
    let id = view["order_id"].as_str()?.to_owned();
    let lamport = view["lamport"].as_u64()?;
    let live = !matches!(
        view["status"].as_str(),
        Some("rejected" | "cancelled" | "filled")
    );
    Some((id, lamport, live))
}

async fn place_one(ctx: &Ctx, node: usize, body: String, resting: bool, submitted: Instant) {
    let url = format!("{}/v1/orders", ctx.apis[node]);
    let sent = ctx
        .client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(r) if r.status().as_u16() == 201 => r,
        Ok(r) => return record_error(ctx, http_error("place", r).await, 1),
        Err(e) => return record_error(ctx, request_error("place", &e), 1),
    };
    let view = match response.bytes().await {
        Ok(body) => serde_json::from_slice::<Value>(&body).ok(),
        Err(e) => return record_error(ctx, request_error("place", &e), 1),
    };
    let done = Instant::now();
    let Some((id, lamport, live)) = view.as_ref().and_then(acknowledged) else {
        return record_error(ctx, "place: unexpected answer".to_owned(), 1);
    };
    if let Ok(mut stats) = ctx.stats.lock() {
        stats.requests += 1;
        stats.placed += 1;
        let _ = stats.place_ack.record(micros_since(submitted, done));
        stats.track(lamport, submitted);
    }
    if resting && live {
        remember(ctx, node, id);
    }
}

async fn place_batch(ctx: &Ctx, node: usize, orders: Vec<(String, bool)>, submitted: Instant) {
    let count = orders.len() as u64;
    let mut body = String::with_capacity(orders.iter().map(|o| o.0.len() + 1).sum::<usize>() + 2);
    body.push('[');
    for (i, (order, _)) in orders.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(order);
    }
    body.push(']');
    let url = format!("{}/v1/orders/batch", ctx.apis[node]);
    let sent = ctx
        .client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    let response = match sent {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => return record_error(ctx, http_error("batch", r).await, count),
        Err(e) => return record_error(ctx, request_error("batch", &e), count),
    };
    let answers = match response.bytes().await {
        Ok(body) => serde_json::from_slice::<Vec<Value>>(&body).ok(),
        Err(e) => return record_error(ctx, request_error("batch", &e), count),
    };
    let done = Instant::now();
    let Some(answers) = answers.filter(|a| a.len() == orders.len()) else {
        return record_error(ctx, "batch: unexpected answer".to_owned(), count);
    };
    let mut rest = Vec::new();
    if let Ok(mut stats) = ctx.stats.lock() {
        stats.requests += 1;
        let mut ok = 0;
        for (answer, (_, resting)) in answers.iter().zip(&orders) {
            match (answer["status"].as_u64(), acknowledged(&answer["order"])) {
                (Some(201), Some((id, lamport, live))) => {
                    ok += 1;
                    stats.track(lamport, submitted);
                    if *resting && live {
                        rest.push(id);
                    }
                }
                (status, _) => {
                    let code = answer["error"]["code"].as_str().unwrap_or_default();
                    stats.error(
                        format!("batch item: http {} {code}", status.unwrap_or(0))
                            .trim_end()
                            .to_owned(),
                        1,
                    );
                }
            }
        }
        stats.placed += ok;
        if ok > 0 {
            let _ = stats.place_ack.record_n(micros_since(submitted, done), ok);
        }
    }
    for id in rest {
        remember(ctx, node, id);
    }
}

async fn cancel(ctx: &Ctx, node: usize, order_id: &str, submitted: Instant) {
    let url = format!("{}/v1/orders/{order_id}", ctx.apis[node]);
    let outcome = match ctx.client.delete(url).send().await {
        Ok(r) if r.status().as_u16() == 202 => match r.bytes().await {
            Ok(_) => Ok(Instant::now()),
            Err(e) => Err(request_error("cancel", &e)),
        },
        Ok(r) => Err(http_error("cancel", r).await),
        Err(e) => Err(request_error("cancel", &e)),
    };
    match outcome {
        Ok(done) => {
            if let Ok(mut stats) = ctx.stats.lock() {
                stats.requests += 1;
                stats.cancelled += 1;
                let _ = stats.cancel_ack.record(micros_since(submitted, done));
            }
        }
        Err(kind) => record_error(ctx, kind, 1),
    }
}

fn remember(ctx: &Ctx, node: usize, order_id: String) {
    if let Ok(mut pool) = ctx.pools[node].lock() {
        if pool.len() >= MAX_CANCEL_POOL {
            pool.pop_front();
        }
        pool.push_back(order_id);
    }
}

async fn poll(
    client: reqwest::Client,
    url: String,
    poller: Arc<Poller>,
    stop: Arc<AtomicBool>,
    every: Duration,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::SeqCst) {
        ticker.tick().await;
        match get_json(&client, &url).await {
            Ok(v) => {
                let at = Instant::now();
                let status = NodeStatus::from_json(&v, at);
                if let Ok(mut history) = poller.history.lock()
                    && history
                        .last()
                        .is_none_or(|(_, l)| status.settled_lamport > *l)
                {
                    history.push((at, status.settled_lamport));
                }
                if let Ok(mut latest) = poller.latest.lock() {
                    *latest = status;
                }
            }
            Err(_) => {
                poller.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Submit -> settled on every node, from each node's `settled_lamport` history.
fn settle_latencies(
    orders: &[(u64, Instant)],
    histories: &[Vec<(Instant, u64)>],
) -> Result<(Histogram<u64>, u64)> {
    let mut hist = latency_histogram()?;
    let mut unsettled = 0;
    'orders: for &(lamport, submitted) in orders {
        let mut last = submitted;
        for history in histories {
            let i = history.partition_point(|(_, settled)| *settled < lamport);
            match history.get(i) {
                Some((at, _)) => last = last.max(*at),
                None => {
                    unsettled += 1;
                    continue 'orders;
                }
            }
        }
        let _ = hist.record(micros_since(submitted, last));
    }
    Ok((hist, unsettled))
}

fn percentiles(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    json!({
        "count": h.len(),
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p99_9": h.value_at_quantile(0.999),
        "max": h.max(),
    })
}

async fn get_json(client: &reqwest::Client, url: &str) -> Result<Value> {
    let response = client.get(url).send().await?;
    let status = response.status();
    let body = response.bytes().await?;
    if !status.is_success() {
        bail!("GET {url}: {status}");
    }
    Ok(serde_json::from_slice(&body)?)
}

async fn statuses(client: &reqwest::Client, apis: &[String]) -> Result<Vec<NodeStatus>> {
    let mut out = Vec::with_capacity(apis.len());
    for api in apis {
        let v = get_json(client, &format!("{api}/v1/status"))
            .await
            .with_context(|| format!("GET {api}/v1/status"))?;
        out.push(NodeStatus::from_json(&v, Instant::now()));
    }
    Ok(out)
}

async fn fetch_markets(
    client: &reqwest::Client,
    api: &str,
    wanted: &[String],
) -> Result<Vec<Market>> {
    let list = get_json(client, &format!("{api}/v1/markets"))
        .await
        .with_context(|| format!("GET {api}/v1/markets"))?;
    let list = list.as_array().context("/v1/markets is not a list")?;
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut markets = Vec::new();
    for name in wanted {
        let m = list
            .iter()
            .find(|m| m["name"].as_str() == Some(name.as_str()))
            .with_context(|| format!("the nodes do not trade {name}"))?;
        let tick = Step::parse(&text(&m["tick_size"]))
            .with_context(|| format!("{name}: unreadable tick_size {}", m["tick_size"]))?;
        let lot = Step::parse(&text(&m["lot_size"]))
            .with_context(|| format!("{name}: unreadable lot_size {}", m["lot_size"]))?;
        markets.push(Market {
            name: name.clone(),
            tick,
            lot,
        });
    }
    Ok(markets)
}

/// The node metrics read from `/metrics` before and after the run (summed over labels).
const FSYNCS: &str = "p2p_exchange_fsyncs_total";
const FSYNC_SECONDS: &str = "p2p_exchange_fsync_seconds_sum";
const MESSAGES_OUT: &str = "transport_messages_out_total";
const BYTES_OUT: &str = "transport_bytes_out_total";
const DROPS: &str = "transport_drops_total";

async fn scrape_all(client: &reqwest::Client, apis: &[String]) -> Vec<BTreeMap<String, f64>> {
    let mut out = Vec::with_capacity(apis.len());
    for api in apis {
        let text = async {
            let response = client.get(format!("{api}/metrics")).send().await.ok()?;
            response.text().await.ok()
        }
        .await;
        out.push(text.map(|t| parse_metrics(&t)).unwrap_or_default());
    }
    out
}

/// Sums the samples of the metrics above in Prometheus text, over their label sets.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        if ![FSYNCS, FSYNC_SECONDS, MESSAGES_OUT, BYTES_OUT, DROPS].contains(&name) {
            continue;
        }
        if let Some(value) = line
            .split_whitespace()
            .last()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *sums.entry(name.to_owned()).or_insert(0.0) += value;
        }
    }
    sums
}

// ---- Process accounting (Linux /proc) -------------------------------------------------------

/// User + system CPU seconds of a process (`pid` or "self").
fn cpu_seconds_of(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; the fields after it are fixed.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14 and stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks())
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_seconds_of(&pid.to_string())
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// Peak resident set size (VmHWM) in kB.
fn peak_rss_kb(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The pid of the local process listening on the port of `api` (for `--target`), found through
/// `/proc/net/tcp*` and the processes' open sockets; `None` if it is not visible to this user.
fn pid_of_api(api: &str) -> Option<u32> {
    let port: u16 = api.rsplit_once(':')?.1.parse().ok()?;
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let listening = *state == "0A";
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if listening && local_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| link.as_os_str() == i.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

// ---- Output ---------------------------------------------------------------------------------

fn render_table(r: &Value) -> String {
    let mut out = String::new();
    let c = &r["config"];
    let f = |v: &Value| v.as_f64().map_or("n/a".to_owned(), |x| format!("{x:.0}"));
    let f1 = |v: &Value| v.as_f64().map_or("n/a".to_owned(), |x| format!("{x:.1}"));
    let _ = writeln!(
        out,
        "\nload test: {}, {} nodes, {} s, mix {}/{}/{} (resting/crossing/cancel), batch {}, concurrency {}\n",
        c["mode"].as_str().unwrap_or_default(),
        c["nodes"],
        c["duration_s"],
        c["mix"]["resting"],
        c["mix"]["crossing"],
        c["mix"]["cancel"],
        c["batch"],
        c["concurrency"]
    );
    let _ = writeln!(out, "| metric | value |\n|---|---|");
    let _ = writeln!(
        out,
        "| orders accepted | {} ({} /s) |",
        r["orders_accepted"],
        f(&r["orders_accepted_per_s"])
    );
    let _ = writeln!(
        out,
        "| cancels accepted | {} ({} /s) |",
        r["cancels_accepted"],
        f(&r["cancels_accepted_per_s"])
    );
    let _ = writeln!(out, "| HTTP requests | {} |", r["requests"]);
    let _ = writeln!(
        out,
        "| open-loop jobs dropped (client > 5 s behind) | {} |",
        r["jobs_behind_schedule_dropped"]
    );
    let _ = writeln!(
        out,
        "| all settled and equal, after load | {:.2} s |",
        r["converged_after_load_s"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        out,
        "| load-test client CPU | {} s |",
        f1(&r["loadtest_client_cpu_seconds"])
    );
    let _ = writeln!(
        out,
        "| peer messages (bytes) sent per accepted op, all nodes | {:.2} ({}) |",
        r["peer_messages_per_accepted_op"].as_f64().unwrap_or(0.0),
        f(&r["peer_bytes_per_accepted_op"])
    );
    let _ = writeln!(
        out,
        "| digests agree | {} |",
        if r["digests_agree"].as_bool() == Some(true) {
            "yes"
        } else {
            "NO"
        }
    );

    let _ = writeln!(
        out,
        "\n| latency (ms) | count | p50 | p90 | p99 | p99.9 | max |\n|---|---|---|---|---|---|---|"
    );
    let ms = |v: &Value| {
        v.as_u64()
            .map_or("-".to_owned(), |us| format!("{:.2}", us as f64 / 1000.0))
    };
    for (name, key) in [
        ("submit -> ack (place)", "submit_to_ack_place"),
        ("submit -> ack (cancel)", "submit_to_ack_cancel"),
        (
            "submit -> settled on all nodes",
            "submit_to_settled_all_nodes",
        ),
    ] {
        let h = &r["latency_us"][key];
        let _ = writeln!(
            out,
            "| {name} | {} | {} | {} | {} | {} | {} |",
            h["count"],
            ms(&h["p50"]),
            ms(&h["p90"]),
            ms(&h["p99"]),
            ms(&h["p99_9"]),
            ms(&h["max"])
        );
    }
    let _ = writeln!(
        out,
        "\nlatency measured from the {}; settle: {} (never seen settled: {})",
        r["latency_us"]["latency_from"].as_str().unwrap_or_default(),
        r["latency_us"]["settle_method"]
            .as_str()
            .unwrap_or_default(),
        r["latency_us"]["orders_never_seen_settled"]
    );

    let _ = writeln!(
        out,
        "\n| node | settled/s during load | settled/s until converged | CPU s | CPU % | peak RSS MB | fsyncs | mean fsync ms | digest |\n|---|---|---|---|---|---|---|---|---|"
    );
    let empty = Vec::new();
    let finals = r["final"].as_array().unwrap_or(&empty);
    for (i, node) in r["nodes"].as_array().unwrap_or(&empty).iter().enumerate() {
        let digest: String = finals
            .get(i)
            .and_then(|s| s["digest"].as_str())
            .unwrap_or_default()
            .chars()
            .take(12)
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            node["api"].as_str().unwrap_or_default(),
            f(&node["settled_per_s_during_load"]),
            f(&node["settled_per_s_until_converged"]),
            f1(&node["cpu_seconds"]),
            f(&node["cpu_percent"]),
            f1(&node["peak_rss_mb"]),
            f(&node["fsyncs"]),
            node["mean_fsync_ms"]
                .as_f64()
                .map_or("n/a".to_owned(), |x| format!("{x:.2}")),
            digest
        );
    }
    let _ = writeln!(
        out,
        "\nsettled counts events (placements and cancels); CPU over load + convergence."
    );
    if r["errors"]
        .as_object()
        .is_some_and(|e| e.keys().any(|k| k.contains("order_finished")))
    {
        let _ = writeln!(
            out,
            "(cancel 409 order_finished: the order filled before its cancel arrived, an expected outcome of the mix)"
        );
    }
    if let Some(errors) = r["errors"].as_object().filter(|e| !e.is_empty()) {
        let _ = writeln!(out, "\n| error | count |\n|---|---|");
        for (kind, count) in errors {
            let _ = writeln!(out, "| {kind} | {count} |");
        }
    } else {
        let _ = writeln!(out, "\nno errors");
    }
    if let Some(failure) = r["failure"].as_str() {
        let _ = writeln!(out, "\nFAILED: {failure}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_and_format_decimals() {
        let tick = Step::parse("0.01").expect("tick");
        assert_eq!(
            tick,
            Step {
                mantissa: 1,
                scale: 2
            }
        );
        assert_eq!(tick.times(1_000_000), "10000.00");
        assert_eq!(tick.times(999_995), "9999.95");
        let lot = Step::parse("0.0001").expect("lot");
        assert_eq!(lot.times(7), "0.0007");
        assert_eq!(Step::parse("0.050").expect("step").times(3), "0.15");
        assert_eq!(Step::parse("5").expect("step").times(3), "15");
        assert_eq!(Step::parse("0"), None);
        assert_eq!(Step::parse("abc"), None);
    }

    #[test]
    fn mix_parses_and_rejects() {
        let mix: Mix = "60,25,15".parse().expect("mix");
        assert_eq!((mix.resting, mix.crossing, mix.cancel), (60, 25, 15));
        assert!("60,25".parse::<Mix>().is_err());
        assert!("60,25,10".parse::<Mix>().is_err());
        assert!("0,0,100".parse::<Mix>().is_err());
        let mut rng = Rng(7);
        let cancels = (0..10_000)
            .filter(|_| mix.pick(&mut rng) == Kind::Cancel)
            .count();
        assert!((1_200..1_800).contains(&cancels), "{cancels}");
    }

    #[test]
    fn settle_latency_is_the_last_node_to_settle() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let histories = vec![
            vec![(at(5), 10), (at(10), 20)],
            vec![(at(7), 12), (at(30), 25)],
        ];
        let orders = [(10, t0), (20, t0), (26, t0)];
        let (hist, unsettled) = settle_latencies(&orders, &histories).expect("histogram");
        assert_eq!(unsettled, 1);
        assert_eq!(hist.len(), 2);
        assert_eq!(hist.value_at_quantile(0.0) / 1000, 7);
        assert_eq!(hist.max() / 1000, 30);
    }

    #[test]
    fn metrics_are_summed_over_labels() {
        let text = "# TYPE transport_messages_out_total counter\n\
            transport_messages_out_total 5\n\
            p2p_exchange_fsyncs_total{node=\"ab\"} 3\n\
            p2p_exchange_fsync_seconds{node=\"ab\",quantile=\"0.5\"} 0.001\n\
            p2p_exchange_fsync_seconds_sum{node=\"ab\"} 0.25\n\
            transport_drops_total{reason=\"idle\"} 1\n\
            transport_drops_total{reason=\"queue_full\"} 2\n";
        let sums = parse_metrics(text);
        assert_eq!(sums.get(MESSAGES_OUT), Some(&5.0));
        assert_eq!(sums.get(FSYNCS), Some(&3.0));
        assert_eq!(sums.get(FSYNC_SECONDS), Some(&0.25));
        assert_eq!(sums.get(DROPS), Some(&3.0));
        assert_eq!(sums.len(), 4);
    }

    #[test]
    fn proc_accounting_reads_this_process() {
        assert!(cpu_seconds_of("self").is_some());
        assert!(peak_rss_kb("self").is_some_and(|kb| kb > 0));
    }
}
