//! Deterministic fault-injection simulation of the replicated log (issue 7).
//!
//! N real [`node::engine::Engine`]s (real ed25519 identities from fixed seeds, real
//! signatures, real `check_message`) run on a discrete-event simulator: simulated time in
//! ms, one event queue ordered by (time, sequence number), FIFO links with random delays
//! and spikes, and faults drawn from one `u64` seed: `kill -9` and restart from the
//! persisted records (also in the middle of an fsync), minority/majority partitions,
//! one-way loss, flapping links and delay spikes. Clients place random orders and cancels
//! and record what was acknowledged. Nothing depends on wall-clock time, hash order or
//! threads, so a seed replays exactly.
//!
//! The checks (issue 7): 1. settled trade logs are prefixes of one another while running
//! and equal after quiescence (also: at the same settled count every node has the same
//! digest); 2. no overfill, trades at the maker's price, no crossed book; 3. every
//! acknowledged order is on every node at the end, settled (or rejected with a reason);
//! 4. a node's settled log only grows, across its own restarts too; 5. equal digests after
//! the heal. Honest nodes must also never score each other down or reject each other's
//! events.
//!
//! `SIM_SEEDS=n` runs n schedules (default 200) from seed `SIM_SEED_BASE` (default 0);
//! `SIM_SEED=s` replays one with tracing logs (`RUST_LOG` to filter, default `info`;
//! `RUST_LOG=info,sim=debug` also logs every delivered message):
//! `SIM_SEED=17 cargo test -p node --test sim -- --nocapture simulated_fault_schedules`.
//! Majority eviction is on in the odd seeds' schedules (partitions twice as long, so
//! majorities evict); `SIM_EVICT=1` or `0` forces it on or off for every seed. Lossy links
//! (one-way loss drops messages on a live connection, as on the runtime's RPC links, instead
//! of stalling it as TCP does; nodes repeat their `NetworkInfo` there as the runtime does) are
//! on in every third schedule (seeds `3k + 2`); `SIM_LOSSY=1` or `0` forces them. One harsher
//! mode is off by default because the engine does not pass it yet: `SIM_JOIN_FAULTS=1`
//! (faults while the network forms).

/// The simulator, split in `tests/sim/`.
mod sim {
    pub mod checks;
    pub mod rng;
    pub mod schedule;
    pub mod world;
}

use std::io::Write as _;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use node::engine::{OrderStatus, Phase};
use node::ids::ApiOrderId;
use orderbook_core::{OrderType, Side, TimeInForce};
use peer_protocol::PlaceOrder;
use rust_decimal::Decimal;

use sim::schedule::{Fault, FaultCounts, Schedule};
use sim::world::{Failure, Report, Sim};

/// How one seed is replayed (with the mode variables this run was given).
fn replay_hint(seed: u64) -> String {
    let modes: String = ["SIM_EVICT", "SIM_LOSSY", "SIM_JOIN_FAULTS"]
        .iter()
        .filter_map(|name| env_u64(name).map(|v| format!("{name}={v} ")))
        .collect();
    format!(
        "{modes}SIM_SEED={seed} cargo test -p node --test sim -- --nocapture simulated_fault_schedules"
    )
}

/// Runs one random schedule, turning a panic into a failure of that seed.
fn run_seed(seed: u64) -> Result<Report, Failure> {
    let schedule = schedule(seed);
    match std::panic::catch_unwind(AssertUnwindSafe(|| Sim::new(schedule).run())) {
        Ok(result) => result,
        Err(panic) => {
            let text = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic".to_owned());
            Err(Failure {
                check: 0,
                message: format!("panicked: {text}"),
            })
        }
    }
}

/// The random schedule of a seed, with the modes the environment turns on:
/// `SIM_JOIN_FAULTS=1` (faults while the network forms, see
/// `Schedule::join_under_faults`); eviction (partitions twice as long, see `Schedule::evict`)
/// in odd seeds, or as `SIM_EVICT=0/1` says; lossy links (see `Schedule::lossy`) in seeds
/// `3k + 2`, or as `SIM_LOSSY=0/1` says.
fn schedule(seed: u64) -> Schedule {
    schedule_with(
        seed,
        env_u64("SIM_EVICT").map_or(seed % 2 == 1, |v| v != 0),
        env_u64("SIM_LOSSY").map_or(seed % 3 == 2, |v| v != 0),
    )
}

/// The schedule of `seed`, eviction and lossy links on or off as `evict` and `lossy` say.
fn schedule_with(seed: u64, evict: bool, lossy: bool) -> Schedule {
    let mut schedule = Schedule::random(seed);
    schedule.lossy = lossy;
    schedule.join_under_faults = env_u64("SIM_JOIN_FAULTS").is_some_and(|v| v != 0);
    schedule.evict = evict;
    if schedule.evict {
        // Partitions long enough for a majority to suspect, vote and evict.
        for timed in &mut schedule.faults {
            if let Fault::Partition { heal_ms, .. } = &mut timed.fault {
                *heal_ms *= 2;
            }
        }
    }
    schedule
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name} must be a number, got {value:?}"),
    }
}

#[test]
fn simulated_fault_schedules() {
    if let Some(seed) = env_u64("SIM_SEED") {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_test_writer()
            .try_init();
        let schedule = schedule(seed);
        println!("seed {seed}: {schedule:#?}");
        match Sim::new(schedule).run() {
            Ok(report) => println!("seed {seed} passed: {report:?}"),
            Err(failure) => panic!(
                "seed {seed}: check {} failed {}",
                failure.check, failure.message
            ),
        }
        return;
    }
    let seeds = env_u64("SIM_SEEDS").unwrap_or(200);
    let first = env_u64("SIM_SEED_BASE").unwrap_or(0);
    let started = Instant::now();
    let mut faults = FaultCounts::default();
    let mut failures = Vec::new();
    let (mut acked, mut trades, mut settled, mut evictions) = (0, 0, 0, 0);
    for seed in first..first.saturating_add(seeds) {
        match run_seed(seed) {
            Ok(report) => {
                faults.add(&report.faults);
                acked += report.acked_orders;
                trades += report.trades;
                settled += report.settled_events;
                evictions += report.evictions;
            }
            Err(failure) => failures.push((seed, failure)),
        }
    }
    let elapsed = started.elapsed();
    // Written straight to stderr so the summary shows even when the harness captures output.
    let _ = writeln!(
        std::io::stderr(),
        "simulated_fault_schedules: {} runs (seeds {first}..{}), {} failed, {:.1} s; faults: \
         {} crashes ({} mid-fsync), {} partitions, {} one-way losses, {} flaps, {} delay spikes, {} slow messages; \
         {acked} acknowledged orders, {settled} settled events, {trades} trades, \
         {evictions} evictions",
        seeds,
        first.saturating_add(seeds),
        failures.len(),
        elapsed.as_secs_f64(),
        faults.crashes,
        faults.torn_crashes,
        faults.partitions,
        faults.one_way_losses,
        faults.flaps,
        faults.delay_spikes,
        faults.slow_messages,
    );
    if !failures.is_empty() {
        let mut text = String::new();
        for (seed, failure) in &failures {
            text.push_str(&format!(
                "\nseed {seed}: check {} failed {}\n  replay: {}",
                failure.check,
                failure.message,
                replay_hint(*seed)
            ));
        }
        panic!("{} of {seeds} schedules failed:{text}", failures.len());
    }
}

/// Eviction schedules that once stalled after the heal (found by `SIM_EVICT=1` sweeps), kept
/// as regressions: 1514 (a restarted voter's stored vote was never re-sent), 556 and 769
/// (split votes: a complete round without a majority, fixed by voting rounds), 514 (the only
/// member that could complete a blocking vote had learned of its own eviction and did not
/// vote), 397 (two equal votes below events that settled while an evicted member still acked
/// them block the target once that member is gone). Replay one with
/// `SIM_EVICT=1 SIM_LOSSY=0 SIM_SEED=<seed>`.
#[test]
fn eviction_stall_regressions() {
    let mut failures = Vec::new();
    for seed in [397, 514, 556, 769, 1514] {
        let schedule = schedule_with(seed, true, false);
        match Sim::new(schedule).run() {
            Ok(report) => assert!(report.evictions > 0, "seed {seed} evicted nobody"),
            Err(failure) => failures.push(format!(
                "seed {seed}: check {} failed {}",
                failure.check, failure.message
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_seed_replays_exactly() {
    let a = run_seed(3).map_err(|f| f.message);
    let b = run_seed(3).map_err(|f| f.message);
    let (a, b) = (a.expect("seed 3 passes"), b.expect("seed 3 passes"));
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.end_ms, b.end_ms);
    assert_eq!(a.delivered, b.delivered);
    assert_eq!(a.faults, b.faults);
    assert!(a.acked_orders > 0, "the clients placed orders: {a:?}");
}

fn limit(side: Side, price: &str, quantity: &str) -> PlaceOrder {
    PlaceOrder {
        client_order_id: None,
        market: "BTC-USD".to_owned(),
        side,
        order_type: OrderType::Limit,
        price: Some(price.parse::<Decimal>().expect("price")),
        quantity: quantity.parse::<Decimal>().expect("quantity"),
        time_in_force: TimeInForce::Gtc,
    }
}

fn settled(sim: &Sim, node: usize) -> u64 {
    sim.engine(node).map_or(0, |e| e.settled_events())
}

/// Places an order that must be accepted as pending; returns its id.
fn place_pending(sim: &mut Sim, node: usize, order: PlaceOrder) -> ApiOrderId {
    let view = sim
        .place(node, order)
        .expect("node is up")
        .expect("order accepted");
    assert_eq!(view.status, OrderStatus::Pending, "accepted as pending");
    view.order_id.parse().expect("order id")
}

#[test]
fn a_minority_partition_stalls_settlement_then_converges() {
    // Five nodes, no random faults; clients run for the whole load phase.
    let mut schedule = Schedule::quiet(101, 5);
    schedule.load_ms = 3000;
    let mut sim = Sim::new(schedule);
    sim.form().expect("network forms");
    sim.run_for(300).expect("load runs");
    sim.inject(Fault::Partition {
        side: vec![3, 4],
        heal_ms: 1800,
    });
    // Let what was in flight before the cut settle where it can.
    sim.run_for(300).expect("partitioned");
    let before: Vec<u64> = (0..5).map(|n| settled(&sim, n)).collect();
    // Both sides keep accepting orders, as pending.
    let minority = place_pending(&mut sim, 3, limit(Side::Buy, "99.00", "0.5"));
    let majority = place_pending(&mut sim, 0, limit(Side::Sell, "99.00", "0.5"));
    sim.run_for(1500).expect("partitioned");
    for node in [3, 4] {
        assert_eq!(
            settled(&sim, node),
            before[node],
            "the minority side settles nothing while cut off"
        );
    }
    // Without eviction (`Schedule::evict` false) a silent member also stalls the majority;
    // with eviction the majority evicts 3 and 4 and keeps settling.
    for node in [0, 1, 2] {
        assert_eq!(
            settled(&sim, node),
            before[node],
            "no eviction: everyone waits"
        );
    }
    for (node, id) in [(3, minority), (0, majority)] {
        let status = sim.engine(node).and_then(|e| e.order(id)).map(|v| v.status);
        assert_eq!(status, Some(OrderStatus::Pending));
    }
    let report = sim.finish().expect("converges after the heal");
    assert!(report.settled_events > before[0], "settlement resumed");
    assert!(report.trades > 0, "the crossing orders traded: {report:?}");
}

#[test]
fn a_crash_during_load_loses_nothing_acknowledged() {
    let mut schedule = Schedule::quiet(202, 4);
    schedule.load_ms = 2500;
    schedule.max_orders = 150;
    let mut sim = Sim::new(schedule);
    sim.form().expect("network forms");
    sim.run_for(400).expect("load runs");
    // Orders acknowledged by node 2, then node 2 is killed at once (nothing it had not
    // persisted survives) and stays down for a while under load.
    let ids: Vec<ApiOrderId> = (0..5)
        .map(|i| {
            let price = format!("{}.00", 97 + i);
            place_pending(&mut sim, 2, limit(Side::Buy, &price, "0.1"))
        })
        .collect();
    let settled_before = settled(&sim, 2);
    sim.inject(Fault::Crash {
        node: 2,
        down_ms: 700,
        torn: false,
    });
    assert!(sim.engine(2).is_none(), "node 2 is down");
    sim.run_for(700).expect("load runs while node 2 is down");
    let engine = sim.engine(2).expect("node 2 restarted");
    assert_eq!(
        engine.phase(),
        Phase::Member,
        "a restarted node is still a member"
    );
    assert!(
        engine.settled_events() >= settled_before,
        "replay restores the settled state"
    );
    for id in &ids {
        assert!(
            engine.order(*id).is_some(),
            "acknowledged order {id} survived the crash"
        );
    }
    sim.run_for(800).expect("load runs after the restart");
    let report = sim.finish().expect("converges");
    assert!(report.acked_orders >= 5);
    assert!(report.faults.crashes == 1);
}

#[test]
fn a_crash_inside_an_fsync_acknowledges_nothing_of_that_iteration() {
    let mut schedule = Schedule::quiet(303, 3);
    schedule.max_orders = 20;
    let mut sim = Sim::new(schedule);
    sim.form().expect("network forms");
    sim.run_for(200).expect("load runs");
    let acked_before = place_pending(&mut sim, 1, limit(Side::Sell, "101.00", "0.2"));
    // The next iteration of node 1 dies between computing its effects and the end of its
    // fsync: the client whose order it carried gets no answer.
    sim.inject(Fault::Crash {
        node: 1,
        down_ms: 300,
        torn: true,
    });
    let reply = sim.place(1, limit(Side::Buy, "101.00", "0.1"));
    assert!(
        reply.is_none(),
        "no acknowledgement from a crashed iteration: {reply:?}"
    );
    assert!(sim.engine(1).is_none(), "node 1 is down");
    sim.run_for(600).expect("node 1 restarts");
    let engine = sim.engine(1).expect("node 1 restarted");
    assert!(
        engine.order(acked_before).is_some(),
        "the earlier acknowledged order survived"
    );
    let report = sim.finish().expect("converges");
    assert_eq!(report.faults.torn_crashes, 1);
}
