//! The discrete-event simulator: real engines, simulated links, time and faults.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

use node::default_markets;
use node::engine::{
    ClientError, Effect, Engine, EngineConfig, Input, OrderStatus, OrderView, Phase, Record,
    TradeView,
};
use node::ids::ApiOrderId;
use orderbook_core::{MarketSpec, OrderType, Side, TimeInForce};
use peer_protocol::{Codec, Identity, Message, NodeId, PlaceOrder};
use rust_decimal::Decimal;

use super::checks;
use super::rng::Rng;
use super::schedule::{Fault, FaultCounts, Schedule, Timed};

/// How long the network may take to form before the run fails (sim ms).
const FORM_DEADLINE_MS: u64 = 20_000;
/// How long the healed network may take to quiesce before the run fails (sim ms).
const QUIESCE_DEADLINE_MS: u64 = 60_000;
/// The interval of the periodic checks (checks 1, 2 and 4) while the run goes on.
const CHECK_EVERY_MS: u64 = 500;
/// The granularity at which run conditions are polled.
const STEP_MS: u64 = 10;
/// After this long without hearing from its peer, the transport closes a connection
/// (its idle timeout): a one-way loss that lasts longer cuts the connection.
const IDLE_TIMEOUT_MS: u64 = 500;
/// Most messages handled in one loop iteration.
const MAX_BURST: usize = 64;
/// An upper bound on processed events per run: a message storm fails instead of hanging.
const MAX_EVENTS: u64 = 5_000_000;
/// How often a node repeats its `NetworkInfo` on lossy links (the runtime's RPC links: 2 s).
const INFO_REPEAT_MS: u64 = 2_000;

/// A check failed: which one (1-5 as in issue 7, 0 for anything else) and what happened.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The check's number.
    pub check: u8,
    /// What was seen, with sim time.
    pub message: String,
}

/// What a finished run reports.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Faults injected.
    pub faults: FaultCounts,
    /// Orders acknowledged to clients.
    pub acked_orders: u64,
    /// Cancels acknowledged to clients.
    pub acked_cancels: u64,
    /// Client commands refused (not a member yet, order finished ...).
    pub refused: u64,
    /// Settled events on every node at the end.
    pub settled_events: u64,
    /// Settled trades on every node at the end.
    pub trades: u64,
    /// Messages delivered / lost to faults.
    pub delivered: u64,
    /// Messages dropped (cut connection, one-way loss, crash).
    pub dropped: u64,
    /// Evictions applied (as node 0 counts them; only with `Schedule::evict`).
    pub evictions: u64,
    /// Sim time at the end.
    pub end_ms: u64,
    /// The final digest every node agrees on.
    pub digest: [u8; 32],
}

/// An order acknowledged to a client.
#[derive(Debug, Clone)]
pub struct Ack {
    /// The order.
    pub id: ApiOrderId,
    /// The node that acknowledged it.
    pub node: usize,
    /// What the client sent.
    pub order: PlaceOrder,
}

#[derive(Debug)]
enum Ev {
    Deliver {
        from: usize,
        to: usize,
        epoch: u64,
        message: Message,
    },
    Tick {
        node: usize,
        boot: u64,
    },
    Reconnect {
        a: usize,
        b: usize,
    },
    Client,
    Fault(usize),
    Activate(Active),
    Deactivate(u64),
    Restart {
        node: usize,
        boot: u64,
    },
    Check,
}

/// One step of a node's loop iteration.
#[derive(Debug)]
enum Step {
    /// An input as is.
    Input(Input),
    /// A peer message, still to be checked.
    Message { from: usize, message: Message },
}

#[derive(Debug)]
struct Queued {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// An active network fault.
#[derive(Debug, Clone)]
struct Active {
    id: u64,
    kind: ActiveKind,
}

#[derive(Debug, Clone)]
enum ActiveKind {
    /// These connections are cut.
    Cut(Vec<(usize, usize)>),
    /// Messages `from -> to` are lost until the given time.
    Loss(usize, usize, u64),
    /// Messages `from -> to` are delayed.
    Spike(usize, usize, u64),
}

#[derive(Debug, Default, Clone, Copy)]
struct Link {
    up: bool,
    epoch: u64,
    reconnecting: bool,
}

struct Slot {
    engine: Option<Engine>,
    config: EngineConfig,
    /// What the node asked to persist, in order: all that survives a crash.
    durable: Vec<Record>,
    /// Incarnation: ticks and restarts of an older one are ignored.
    boot: u64,
    /// Sim time at which the current incarnation started (its clock's zero).
    boot_ms: u64,
    tick_ms: u64,
    /// A pending crash inside the next iteration: how long the node then stays down.
    torn_crash: Option<u64>,
    /// Sim time of the node's last `NetworkInfo` repeat on its links (lossy mode).
    last_info_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Forming,
    Load { start: u64 },
    Healed,
}

/// N engines, their links, clients and faults, driven by one seed.
pub struct Sim {
    schedule: Schedule,
    links_rng: Rng,
    client_rng: Rng,
    crash_rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    identities: Vec<Arc<Identity>>,
    ids: Vec<NodeId>,
    slots: Vec<Slot>,
    links: Vec<Vec<Link>>,
    /// Per directed link: the time of the last scheduled delivery (FIFO).
    last_delivery: Vec<Vec<u64>>,
    active: Vec<Active>,
    next_active: u64,
    stage: Stage,
    next_request: u64,
    events: u64,
    /// Orders acknowledged to clients.
    pub acks: Vec<Ack>,
    /// Cancels acknowledged to clients.
    pub cancels: Vec<ApiOrderId>,
    /// client_order_id -> (node, acknowledged order id).
    client_ids: BTreeMap<String, (usize, ApiOrderId)>,
    orders_placed: usize,
    /// Settled count -> digest, as first seen on any node (check 1).
    history: BTreeMap<(Option<[u8; 32]>, u64), [u8; 32]>,
    /// Per node: the genesis of its network at the last observation.
    last_genesis: Vec<Option<[u8; 32]>>,
    /// Per node (across restarts): settled count and trade log at the last observation.
    last_settled: Vec<u64>,
    last_log: Vec<Vec<TradeView>>,
    report: Report,
    failure: Option<Failure>,
}

impl Sim {
    /// A simulator for `schedule` (nothing runs yet).
    pub fn new(schedule: Schedule) -> Sim {
        let mut root = Rng::new(schedule.seed);
        let links_rng = root.fork();
        let client_rng = root.fork();
        let mut crash_rng = root.fork();
        let markets: Vec<MarketSpec> = default_markets()
            .into_iter()
            .map(|m| MarketSpec::new(m.name, m.tick_size, m.lot_size))
            .collect();
        let n = schedule.nodes;
        let identities: Vec<Arc<Identity>> = (0..n)
            .map(|i| Arc::new(Identity::from_secret_bytes(&[i as u8 + 1; 32])))
            .collect();
        let ids = identities.iter().map(|i| i.node_id()).collect();
        let slots = (0..n)
            .map(|i| {
                let config = EngineConfig {
                    network_id: "sim-net".to_owned(),
                    markets: markets.clone(),
                    found: i == 0,
                    join_window_ms: 200,
                    heartbeat_ms: schedule.heartbeat_ms,
                    frontier_min_interval_ms: schedule.frontier_min_interval_ms,
                    sponsor_min_connected_ms: 50,
                    // The hook for majority eviction (see `Schedule::evict`).
                    evict_after_ms: if schedule.evict { 400 } else { 0 },
                };
                Slot {
                    engine: None,
                    config,
                    durable: Vec::new(),
                    boot: 0,
                    boot_ms: 0,
                    tick_ms: crash_rng.range(10, 50),
                    torn_crash: None,
                    last_info_ms: 0,
                }
            })
            .collect();
        Sim {
            links_rng,
            client_rng,
            crash_rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            identities,
            ids,
            slots,
            links: vec![vec![Link::default(); n]; n],
            last_delivery: vec![vec![0; n]; n],
            active: Vec::new(),
            next_active: 1,
            stage: Stage::Forming,
            next_request: 1,
            events: 0,
            acks: Vec::new(),
            cancels: Vec::new(),
            client_ids: BTreeMap::new(),
            orders_placed: 0,
            history: BTreeMap::new(),
            last_genesis: vec![None; n],
            last_settled: vec![0; n],
            last_log: vec![Vec::new(); n],
            report: Report::default(),
            failure: None,
            schedule,
        }
    }

    /// The whole run: form the network, run the load with faults, heal, quiesce, check.
    pub fn run(mut self) -> Result<Report, Failure> {
        self.form()?;
        let load = self.schedule.load_ms;
        self.run_for(load)?;
        self.finish()
    }

    /// A live node's engine.
    pub fn engine(&self, node: usize) -> Option<&Engine> {
        self.slots.get(node).and_then(|s| s.engine.as_ref())
    }

    /// Starts every node, connects them, and runs until all are members of one network;
    /// then starts the load: clients, faults and periodic checks are scheduled from now.
    pub fn form(&mut self) -> Result<(), Failure> {
        for node in 0..self.slots.len() {
            self.boot(node);
        }
        self.refresh_links();
        if self.schedule.join_under_faults {
            // The faults start with the nodes: joining must survive them too.
            self.stage = Stage::Load { start: self.now };
            self.schedule_faults();
        }
        let deadline = self.now + FORM_DEADLINE_MS;
        self.run_until(deadline, |sim| sim.formed())?;
        if !self.formed() {
            return Err(self.fail_now(0, format!("the network did not form: {}", self.statuses())));
        }
        let start = self.now;
        self.stage = Stage::Load { start };
        if !self.schedule.join_under_faults {
            self.schedule_faults();
        }
        self.push(start + 1, Ev::Client);
        self.push(start + CHECK_EVERY_MS, Ev::Check);
        Ok(())
    }

    fn schedule_faults(&mut self) {
        for index in 0..self.schedule.faults.len() {
            let at = self.now + self.schedule.faults[index].at_ms;
            self.push(at, Ev::Fault(index));
        }
    }

    fn formed(&self) -> bool {
        let n = self.slots.len();
        (0..n).all(|i| {
            self.engine(i)
                .is_some_and(|e| e.phase() == Phase::Member && e.members().len() == n)
        })
    }

    /// Runs `ms` of sim time.
    pub fn run_for(&mut self, ms: u64) -> Result<(), Failure> {
        let until = self.now + ms;
        self.run_until(until, |_| false)
    }

    /// Ends the faults and the load (every fault healed, every node up), runs until every
    /// node agrees and nothing is pending, then runs the final checks.
    pub fn finish(mut self) -> Result<Report, Failure> {
        self.heal();
        let deadline = self.now + QUIESCE_DEADLINE_MS;
        self.run_until(deadline, |sim| sim.quiescent())?;
        if !self.quiescent() {
            return Err(self.fail_now(
                1,
                format!(
                    "no quiescence within {QUIESCE_DEADLINE_MS} ms after the heal: {}",
                    self.statuses()
                ),
            ));
        }
        self.periodic_checks();
        if let Some(failure) = self.failure.take() {
            return Err(failure);
        }
        let engines: Vec<&Engine> = self
            .slots
            .iter()
            .filter_map(|s| s.engine.as_ref())
            .collect();
        checks::final_checks(&engines, &self.acks, &self.cancels).map_err(|(check, message)| {
            Failure {
                check,
                message: format!("at {} ms: {message}", self.now),
            }
        })?;
        let first = engines[0];
        self.report.settled_events = first.settled_events();
        self.report.trades = checks::trade_log(first).len() as u64;
        self.report.digest = first.digest();
        self.report.evictions = first.evictions();
        self.report.acked_orders = self.acks.len() as u64;
        self.report.acked_cancels = self.cancels.len() as u64;
        self.report.end_ms = self.now;
        Ok(self.report)
    }

    /// Places an order at `node` as a client would (`None` if the node is down).
    pub fn place(
        &mut self,
        node: usize,
        order: PlaceOrder,
    ) -> Option<Result<OrderView, ClientError>> {
        self.place_many(node, vec![order])?.pop()
    }

    /// Places several orders in one loop iteration (one batch, one fsync), as the batch
    /// endpoint or concurrent clients do. `None` if the node is down or died in it.
    pub fn place_many(
        &mut self,
        node: usize,
        orders: Vec<PlaceOrder>,
    ) -> Option<Vec<Result<OrderView, ClientError>>> {
        self.engine(node)?;
        let first = self.next_request;
        self.next_request += orders.len() as u64;
        let inputs = orders
            .iter()
            .zip(first..)
            .map(|(order, request)| Input::Place {
                request,
                order: order.clone(),
            })
            .collect();
        let mut replies = self.iterate(node, inputs);
        if replies.is_empty() {
            // The node died inside the iteration: no client hears back.
            return None;
        }
        replies.sort_by_key(|(request, _)| *request);
        let mut answers = Vec::new();
        for ((_, reply), order) in replies.into_iter().zip(orders) {
            match &reply {
                Ok(view) => match view.order_id.parse::<ApiOrderId>() {
                    Ok(id) => {
                        if let Some(client_id) = &order.client_order_id {
                            self.client_ids
                                .entry(client_id.clone())
                                .or_insert((node, id));
                        }
                        if !self.acks.iter().any(|a| a.id == id) {
                            self.acks.push(Ack { id, node, order });
                        }
                    }
                    Err(error) => self.fail(
                        0,
                        format!(
                            "node {node} acknowledged a bad order id {:?}: {error}",
                            view.order_id
                        ),
                    ),
                },
                Err(_) => self.report.refused += 1,
            }
            answers.push(reply);
        }
        Some(answers)
    }

    /// Cancels an order at `node` as a client would (`None` if the node is down).
    pub fn cancel(
        &mut self,
        node: usize,
        id: ApiOrderId,
    ) -> Option<Result<OrderView, ClientError>> {
        self.engine(node)?;
        let request = self.next_request;
        self.next_request += 1;
        let replies = self.iterate(
            node,
            vec![Input::Cancel {
                request,
                order_id: id,
            }],
        );
        let reply = replies
            .into_iter()
            .find(|(r, _)| *r == request)
            .map(|(_, reply)| reply)?;
        match &reply {
            Ok(_) => self.cancels.push(id),
            Err(_) => self.report.refused += 1,
        }
        Some(reply)
    }

    /// Injects a fault now, exactly as a scheduled one (after [`Sim::form`]).
    pub fn inject(&mut self, fault: Fault) {
        self.schedule.faults.push(Timed { at_ms: 0, fault });
        self.start_fault(self.schedule.faults.len() - 1);
    }

    // ---- The event loop ------------------------------------------------------------------

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at,
            seq: self.seq,
            ev,
        }));
    }

    /// Processes events up to `until`, stopping early when `done` holds (polled every
    /// [`STEP_MS`] of sim time) or a check fails.
    fn run_until(&mut self, until: u64, done: impl Fn(&Sim) -> bool) -> Result<(), Failure> {
        loop {
            if let Some(failure) = &self.failure {
                return Err(failure.clone());
            }
            if done(self) || self.now >= until {
                return Ok(());
            }
            let poll = until.min(self.now + STEP_MS);
            while self
                .queue
                .peek()
                .is_some_and(|Reverse(head)| head.at <= poll)
            {
                let Some(Reverse(item)) = self.queue.pop() else {
                    break;
                };
                self.now = self.now.max(item.at);
                self.events += 1;
                if self.events > MAX_EVENTS {
                    return Err(
                        self.fail_now(0, format!("more than {MAX_EVENTS} events: a message storm"))
                    );
                }
                self.handle(item.ev);
                if self.failure.is_some() {
                    break;
                }
            }
            if self.failure.is_none() {
                self.now = poll;
            }
        }
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver {
                from,
                to,
                epoch,
                message,
            } => {
                // What reaches the node at the same instant is one loop iteration (one
                // Flush, one fsync), as in the runtime's bursts.
                let mut burst: Vec<(usize, Message)> = Vec::new();
                burst.extend(self.arrive(from, to, epoch, message));
                while burst.len() < MAX_BURST
                    && self.queue.peek().is_some_and(|Reverse(head)| {
                        head.at == self.now
                            && matches!(head.ev, Ev::Deliver { to: t, .. } if t == to)
                    })
                {
                    let Some(Reverse(Queued {
                        ev:
                            Ev::Deliver {
                                from,
                                epoch,
                                message,
                                ..
                            },
                        ..
                    })) = self.queue.pop()
                    else {
                        break;
                    };
                    burst.extend(self.arrive(from, to, epoch, message));
                }
                if !burst.is_empty() {
                    let steps = burst
                        .into_iter()
                        .map(|(from, message)| Step::Message { from, message })
                        .collect();
                    self.iterate_steps(to, steps);
                }
            }
            Ev::Tick { node, boot } => {
                if self.slots[node].boot == boot && self.slots[node].engine.is_some() {
                    let now_ms = self.local_now(node);
                    self.iterate(node, vec![Input::Tick { now_ms }]);
                    self.repeat_network_info(node);
                    let slot = &self.slots[node];
                    let jitter = self.crash_rng.range(0, slot.tick_ms / 4);
                    let at = self.now + slot.tick_ms + jitter;
                    self.push(at, Ev::Tick { node, boot });
                }
            }
            Ev::Reconnect { a, b } => {
                self.links[a][b].reconnecting = false;
                self.links[b][a].reconnecting = false;
                if self.wants_link(a, b) && !self.links[a][b].up {
                    self.connect(a, b);
                }
            }
            Ev::Client => self.client_action(),
            Ev::Fault(index) => self.start_fault(index),
            Ev::Activate(active) => {
                if matches!(self.stage, Stage::Load { .. }) {
                    self.active.push(active);
                    self.refresh_links();
                }
            }
            Ev::Deactivate(id) => {
                let before = self.active.len();
                self.active.retain(|a| a.id != id);
                if self.active.len() != before {
                    self.refresh_links();
                }
            }
            Ev::Restart { node, boot } => {
                if self.slots[node].engine.is_none() && self.slots[node].boot == boot {
                    self.restart(node);
                }
            }
            Ev::Check => {
                self.periodic_checks();
                self.push(self.now + CHECK_EVERY_MS, Ev::Check);
            }
        }
    }

    fn local_now(&self, node: usize) -> u64 {
        self.now.saturating_sub(self.slots[node].boot_ms)
    }

    // ---- Nodes ---------------------------------------------------------------------------

    /// Starts a node's current incarnation from its durable records.
    fn boot(&mut self, node: usize) {
        let slot = &mut self.slots[node];
        let mut engine = match Engine::new(self.identities[node].clone(), slot.config.clone()) {
            Ok(engine) => engine,
            Err(error) => {
                self.fail(0, format!("node {node}: engine does not start: {error}"));
                return;
            }
        };
        for record in slot.durable.clone() {
            if let Err(error) = engine.restore_record(record) {
                self.fail(0, format!("node {node}: its log does not replay: {error}"));
                return;
            }
        }
        engine.finish_restore();
        let slot = &mut self.slots[node];
        slot.engine = Some(engine);
        slot.boot_ms = self.now;
        let boot = slot.boot;
        // A restart replays to what it had settled before the crash, or beyond (check 4).
        self.observe(node);
        self.check_growth(node);
        // The runtime ticks once before anything else.
        self.iterate(node, vec![Input::Tick { now_ms: 0 }]);
        let at = self.now + self.slots[node].tick_ms;
        self.push(at, Ev::Tick { node, boot });
    }

    fn restart(&mut self, node: usize) {
        tracing::info!(node, t = self.now, "restart");
        self.boot(node);
        self.refresh_links();
    }

    fn kill(&mut self, node: usize, down_ms: u64) {
        tracing::info!(node, t = self.now, down_ms, "kill -9");
        let slot = &mut self.slots[node];
        slot.engine = None;
        slot.torn_crash = None;
        slot.boot += 1;
        let boot = slot.boot;
        self.refresh_links();
        self.push(self.now + down_ms, Ev::Restart { node, boot });
    }

    /// One loop iteration of the node's shell: the inputs, a `Flush`, then the effects
    /// (durable records first, then everything else). Returns the client replies.
    fn iterate(
        &mut self,
        node: usize,
        inputs: Vec<Input>,
    ) -> Vec<(u64, Result<OrderView, ClientError>)> {
        self.iterate_steps(node, inputs.into_iter().map(Step::Input).collect())
    }

    /// [`Sim::iterate`] over inputs and peer messages (each message is checked with
    /// `check_message` against the state the previous steps left, as the runtime does).
    fn iterate_steps(
        &mut self,
        node: usize,
        steps: Vec<Step>,
    ) -> Vec<(u64, Result<OrderView, ClientError>)> {
        let now_ms = self.local_now(node);
        let now = self.now;
        let Some(engine) = self.slots[node].engine.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut refused = Vec::new();
        {
            let _span = tracing::info_span!("node", n = node, t = now).entered();
            for step in steps {
                match step {
                    Step::Input(input) => engine.handle(input, &mut out),
                    Step::Message { from, message } => {
                        let from_id = self.ids[from];
                        match engine.check_message(&from_id, message) {
                            Ok(Some(message)) => engine.handle(
                                Input::Peer {
                                    from: from_id,
                                    message,
                                },
                                &mut out,
                            ),
                            Ok(None) => {}
                            Err(what) => refused.push((from, what)),
                        }
                    }
                }
            }
            engine.handle(Input::Flush { now_ms }, &mut out);
        }
        for (from, what) in refused {
            self.fail(
                0,
                format!("node {node} refused a message of honest node {from}: {what}"),
            );
        }
        if let Some(down_ms) = self.slots[node].torn_crash.take() {
            // kill -9 during the fsync: a prefix of the records is on disk, nothing left.
            let records = out
                .iter()
                .filter(|e| matches!(e, Effect::Persist(_) | Effect::WipeLog))
                .count();
            let keep = self.crash_rng.range(0, records as u64) as usize;
            tracing::info!(node, t = now, records, keep, "kill -9 inside an iteration");
            let slot = &mut self.slots[node];
            for effect in out
                .iter()
                .filter(|e| matches!(e, Effect::Persist(_) | Effect::WipeLog))
                .take(keep)
            {
                match effect {
                    Effect::Persist(record) => slot.durable.push(record.clone()),
                    _ => slot.durable.clear(),
                }
            }
            self.kill(node, down_ms);
            return Vec::new();
        }
        let slot = &mut self.slots[node];
        for effect in &out {
            match effect {
                Effect::Persist(record) => slot.durable.push(record.clone()),
                Effect::WipeLog => slot.durable.clear(),
                _ => {}
            }
        }
        let mut replies = Vec::new();
        for effect in out {
            match effect {
                Effect::Persist(_) | Effect::WipeLog => {}
                Effect::Send { to, message } => {
                    if let Some(to) = self.index(&to) {
                        self.send(node, to, message);
                    }
                }
                Effect::Broadcast { message, except } => {
                    for to in 0..self.slots.len() {
                        if to != node && Some(self.ids[to]) != except && self.links[node][to].up {
                            self.send(node, to, message.clone());
                        }
                    }
                }
                Effect::Reply { request, reply } => replies.push((request, reply)),
                Effect::Disconnect { peer, reason } => {
                    self.fail(
                        0,
                        format!(
                            "node {node} disconnected honest peer {} ({reason:?})",
                            peer.short()
                        ),
                    );
                }
                Effect::Misbehaviour { peer, what } => {
                    self.fail(
                        0,
                        format!(
                            "node {node} scored honest peer {} down: {what}",
                            peer.short()
                        ),
                    );
                }
                Effect::Trade(_) | Effect::Settled(_) | Effect::BookChanged(_) => {}
            }
        }
        self.observe(node);
        replies
    }

    /// After every iteration: the settled count never goes back (check 4), and the digest at
    /// a settled count is the same on every node (check 1: settled states are prefixes).
    fn observe(&mut self, node: usize) {
        let Some(engine) = self.slots[node].engine.as_ref() else {
            return;
        };
        let genesis = engine.genesis();
        if genesis != self.last_genesis[node] {
            // A fresh network that met another one may give way (wipe its log and join the
            // other), but only while it holds no orders: nothing settled is ever lost.
            if !self.last_log[node].is_empty() {
                self.fail(
                    4,
                    format!("node {node} left a network in which it had settled trades"),
                );
                return;
            }
            self.last_genesis[node] = genesis;
            self.last_settled[node] = 0;
        }
        let settled = engine.settled_events();
        let last = self.last_settled[node];
        if settled < last {
            self.fail(
                4,
                format!("node {node} settled count went back from {last} to {settled}"),
            );
            return;
        }
        if settled == last && settled != 0 {
            return;
        }
        let digest = engine.digest();
        match self.history.get(&(genesis, settled)) {
            Some(seen) if *seen != digest => {
                self.fail(
                    1,
                    format!("node {node} has a different state digest at settled event {settled} than another node had"),
                );
            }
            Some(_) => {}
            None => {
                self.history.insert((genesis, settled), digest);
            }
        }
        self.last_settled[node] = settled;
    }

    fn index(&self, id: &NodeId) -> Option<usize> {
        self.ids.iter().position(|i| i == id)
    }

    // ---- Links ---------------------------------------------------------------------------

    /// On lossy links (see [`Schedule::lossy`]) the node repeats its `NetworkInfo` every
    /// [`INFO_REPEAT_MS`] on every live link, as the runtime does on its RPC links: a lost
    /// handshake would otherwise leave the peer ignoring this node's log messages for the
    /// whole connection.
    fn repeat_network_info(&mut self, node: usize) {
        if !self.schedule.lossy || self.now < self.slots[node].last_info_ms + INFO_REPEAT_MS {
            return;
        }
        self.slots[node].last_info_ms = self.now;
        let Some(info) = self.slots[node]
            .engine
            .as_ref()
            .map(|engine| engine.network_info_message())
        else {
            return;
        };
        for to in (0..self.slots.len()).filter(|to| *to != node) {
            if self.links[node][to].up {
                self.send(node, to, info.clone());
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, message: Message) {
        if !self.links[from][to].up {
            return;
        }
        if let Message::SyncResponse { .. } = &message
            && let Err(error) = Codec::encode_frame(&message)
        {
            self.fail(
                0,
                format!("node {from} built a sync response the wire refuses: {error}"),
            );
            return;
        }
        let mut delay = self.links_rng.range(1, 30);
        if self.links_rng.chance(1) {
            // The link's own occasional latency spike.
            delay += self.links_rng.range(100, 300);
            self.report.faults.slow_messages += 1;
        }
        for active in &self.active {
            if let ActiveKind::Spike(f, t, extra) = active.kind
                && (f, t) == (from, to)
            {
                delay += extra;
            }
        }
        let epoch = self.links[from][to].epoch;
        self.deliver_at(self.now + delay, from, to, epoch, message);
    }

    /// Queues `message` on the link `from -> to` (connection `epoch`) for `at`, or later:
    /// never before the last message queued on that link (links are FIFO, as TCP is).
    fn deliver_at(&mut self, at: u64, from: usize, to: usize, epoch: u64, message: Message) {
        let at = at.max(self.last_delivery[from][to]);
        self.last_delivery[from][to] = at;
        self.push(
            at,
            Ev::Deliver {
                from,
                to,
                epoch,
                message,
            },
        );
    }

    /// A message reaches `to`: `Some` if it is delivered now (its connection is still the
    /// one it was sent on and no loss holds it back).
    fn arrive(
        &mut self,
        from: usize,
        to: usize,
        epoch: u64,
        message: Message,
    ) -> Option<(usize, Message)> {
        let link = self.links[from][to];
        if !link.up || link.epoch != epoch || self.slots[to].engine.is_none() {
            self.report.dropped += 1;
            return None;
        }
        let loss_end = self.active.iter().find_map(|a| match a.kind {
            ActiveKind::Loss(f, t, end) if (f, t) == (from, to) => Some(end),
            _ => None,
        });
        if let Some(end) = loss_end {
            if self.schedule.lossy {
                self.report.dropped += 1;
            } else {
                // TCP retransmits: the message arrives, in order, once the loss heals.
                self.deliver_at(end.max(self.now + 1), from, to, epoch, message);
            }
            return None;
        }
        self.report.delivered += 1;
        if tracing::enabled!(tracing::Level::DEBUG) {
            trace_message(self.now, from, to, &message);
        }
        Some((from, message))
    }

    fn cut(&self, a: usize, b: usize) -> bool {
        self.active.iter().any(|x| match &x.kind {
            ActiveKind::Cut(pairs) => pairs
                .iter()
                .any(|&(p, q)| (p, q) == (a, b) || (p, q) == (b, a)),
            _ => false,
        })
    }

    fn wants_link(&self, a: usize, b: usize) -> bool {
        !self.cut(a, b) && self.slots[a].engine.is_some() && self.slots[b].engine.is_some()
    }

    /// Brings every connection in line with the faults: a cut or a dead end drops the
    /// connection (both live ends see `Disconnected`, whatever is in flight is lost); a
    /// healed one reconnects after a short, random delay (the transport's backoff).
    fn refresh_links(&mut self) {
        let n = self.slots.len();
        for a in 0..n {
            for b in a + 1..n {
                let want = self.wants_link(a, b);
                let link = self.links[a][b];
                if link.up && !want {
                    for (x, y) in [(a, b), (b, a)] {
                        self.links[x][y].up = false;
                        self.links[x][y].epoch += 1;
                    }
                    for (x, y) in [(a, b), (b, a)] {
                        let peer = self.ids[y];
                        self.iterate(x, vec![Input::Disconnected { peer }]);
                    }
                } else if !link.up && want && !link.reconnecting {
                    self.links[a][b].reconnecting = true;
                    self.links[b][a].reconnecting = true;
                    let at = self.now + self.links_rng.range(5, 60);
                    self.push(at, Ev::Reconnect { a, b });
                }
            }
        }
    }

    fn connect(&mut self, a: usize, b: usize) {
        for (x, y) in [(a, b), (b, a)] {
            self.links[x][y].up = true;
            self.links[x][y].epoch += 1;
            self.last_delivery[x][y] = self.now;
        }
        // Both ends learn of the connection before any message on it arrives (messages
        // take at least 1 ms).
        for (x, y) in [(a, b), (b, a)] {
            let peer = self.ids[y];
            self.iterate(x, vec![Input::Connected { peer }]);
        }
    }

    fn split_pairs(&self, side: &[usize]) -> Vec<(usize, usize)> {
        let mut pairs = Vec::new();
        for &a in side {
            for b in 0..self.slots.len() {
                if !side.contains(&b) {
                    pairs.push((a, b));
                }
            }
        }
        pairs
    }

    // ---- Faults --------------------------------------------------------------------------

    fn start_fault(&mut self, index: usize) {
        if !matches!(self.stage, Stage::Load { .. }) {
            return;
        }
        let fault = self.schedule.faults[index].fault.clone();
        tracing::info!(t = self.now, ?fault, "fault");
        let id = self.next_active;
        self.next_active += 1;
        match fault {
            Fault::Crash {
                node,
                down_ms,
                torn,
            } => {
                if self.slots[node].engine.is_none() {
                    return;
                }
                self.report.faults.crashes += 1;
                if torn {
                    self.report.faults.torn_crashes += 1;
                    self.slots[node].torn_crash = Some(down_ms);
                } else {
                    self.kill(node, down_ms);
                }
            }
            Fault::Partition { side, heal_ms } => {
                self.report.faults.partitions += 1;
                let pairs = self.split_pairs(&side);
                self.active.push(Active {
                    id,
                    kind: ActiveKind::Cut(pairs),
                });
                self.refresh_links();
                self.push(self.now + heal_ms, Ev::Deactivate(id));
            }
            Fault::OneWayLoss { from, to, heal_ms } => {
                self.report.faults.one_way_losses += 1;
                let end = self.now + heal_ms;
                self.active.push(Active {
                    id,
                    kind: ActiveKind::Loss(from, to, end),
                });
                self.push(end, Ev::Deactivate(id));
                if !self.schedule.lossy && heal_ms > IDLE_TIMEOUT_MS {
                    // `to` hears nothing for its idle timeout and closes the connection;
                    // it cannot reconnect before the loss heals.
                    let cut = self.next_active;
                    self.next_active += 1;
                    let kind = ActiveKind::Cut(vec![(from, to)]);
                    self.push(
                        self.now + IDLE_TIMEOUT_MS,
                        Ev::Activate(Active { id: cut, kind }),
                    );
                    self.push(end, Ev::Deactivate(cut));
                }
            }
            Fault::Flap {
                a,
                b,
                down_ms,
                up_ms,
                flips,
            } => {
                self.report.faults.flaps += 1;
                let mut at = self.now;
                for _ in 0..flips {
                    let id = self.next_active;
                    self.next_active += 1;
                    self.push(
                        at,
                        Ev::Activate(Active {
                            id,
                            kind: ActiveKind::Cut(vec![(a, b)]),
                        }),
                    );
                    self.push(at + down_ms, Ev::Deactivate(id));
                    at += down_ms + up_ms;
                }
            }
            Fault::DelaySpike {
                from,
                to,
                extra_ms,
                heal_ms,
            } => {
                self.report.faults.delay_spikes += 1;
                self.active.push(Active {
                    id,
                    kind: ActiveKind::Spike(from, to, extra_ms),
                });
                self.push(self.now + heal_ms, Ev::Deactivate(id));
            }
        }
    }

    /// The final heal: no more faults or clients, every node up, every connection back.
    fn heal(&mut self) {
        tracing::info!(t = self.now, "heal");
        self.stage = Stage::Healed;
        self.active.clear();
        for node in 0..self.slots.len() {
            self.slots[node].torn_crash = None;
            if self.slots[node].engine.is_none() {
                self.slots[node].boot += 1;
                self.restart(node);
            }
        }
        self.refresh_links();
    }

    /// Every node up and a member, the same membership, clock and settled count, nothing
    /// pending.
    fn quiescent(&self) -> bool {
        let engines: Vec<&Engine> = self
            .slots
            .iter()
            .filter_map(|s| s.engine.as_ref())
            .collect();
        if engines.len() != self.slots.len() {
            return false;
        }
        let first = engines[0];
        let clock = first.clock();
        engines.iter().all(|e| {
            e.phase() == Phase::Member
                && e.pending_events() == 0
                && e.settled_events() == first.settled_events()
                && e.members() == first.members()
                && e.clock() == clock
        })
    }

    // ---- Clients -------------------------------------------------------------------------

    fn client_action(&mut self) {
        let Stage::Load { start } = self.stage else {
            return;
        };
        if self.now >= start + self.schedule.load_ms
            || self.orders_placed >= self.schedule.max_orders
        {
            return;
        }
        let gap = self.schedule.client_gap_ms;
        let next = self.now + self.client_rng.range(1, 2 * gap);
        self.push(next, Ev::Client);
        let live: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.engine(i).is_some_and(|e| e.phase() == Phase::Member))
            .collect();
        if live.is_empty() {
            return;
        }
        let node = live[self.client_rng.index(live.len())];
        let roll = self.client_rng.below(100);
        if roll < 20 {
            // Cancel one of this node's acknowledged orders that may still rest.
            let open: Vec<ApiOrderId> = self
                .acks
                .iter()
                .filter(|a| a.node == node)
                .filter(|a| {
                    self.engine(node)
                        .and_then(|e| e.order(a.id))
                        .is_some_and(|v| {
                            matches!(
                                v.status,
                                OrderStatus::Pending
                                    | OrderStatus::Open
                                    | OrderStatus::PartiallyFilled
                            )
                        })
                })
                .map(|a| a.id)
                .collect();
            if !open.is_empty() {
                let id = open[self.client_rng.index(open.len())];
                self.cancel(node, id);
                return;
            }
        }
        if roll >= 95 {
            // A client retries an acknowledged order with the same client_order_id: it
            // must get the same order back, never a second one.
            let mine: Vec<(String, ApiOrderId)> = self
                .client_ids
                .iter()
                .filter(|(_, (n, _))| *n == node)
                .map(|(c, (_, id))| (c.clone(), *id))
                .collect();
            if !mine.is_empty() {
                let (client_id, id) = mine[self.client_rng.index(mine.len())].clone();
                let Some(ack) = self.acks.iter().find(|a| a.id == id).cloned() else {
                    return;
                };
                if let Some(Ok(view)) = self.place(node, ack.order)
                    && view.order_id != id.to_string()
                {
                    self.fail(3, format!("retry of client_order_id {client_id} at node {node} gave {} instead of {id}", view.order_id));
                }
                return;
            }
        }
        // Sometimes several clients' orders land in one iteration (one signed batch).
        let count = if self.client_rng.chance(20) {
            self.client_rng.range(2, 4) as usize
        } else {
            1
        };
        let mut orders = Vec::new();
        for _ in 0..count {
            self.orders_placed += 1;
            orders.push(self.random_order());
        }
        self.place_many(node, orders);
    }

    fn random_order(&mut self) -> PlaceOrder {
        let rng = &mut self.client_rng;
        let btc = rng.chance(70);
        let (market, mid, step, lot) = if btc {
            (
                "BTC-USD",
                Decimal::new(10000, 2),
                Decimal::new(5, 2),
                Decimal::new(1, 2),
            )
        } else {
            (
                "ETH-USD",
                Decimal::new(2000, 2),
                Decimal::new(5, 2),
                Decimal::new(1, 1),
            )
        };
        let side = if rng.chance(50) {
            Side::Buy
        } else {
            Side::Sell
        };
        let market_order = rng.chance(15);
        let (order_type, price, time_in_force) = if market_order {
            let tif = [
                TimeInForce::Ioc,
                TimeInForce::Ioc,
                TimeInForce::Fok,
                TimeInForce::Gtc,
            ][rng.index(4)];
            (OrderType::Market, None, tif)
        } else {
            let offset = rng.range(0, 16) as i64 - 8;
            let price = mid + step * Decimal::from(offset);
            let tif = match rng.below(100) {
                0..55 => TimeInForce::Gtc,
                55..70 => TimeInForce::Ioc,
                70..85 => TimeInForce::Fok,
                _ => TimeInForce::PostOnly,
            };
            (OrderType::Limit, Some(price), tif)
        };
        let quantity = lot * Decimal::from(rng.range(1, 20));
        let client_order_id = rng.chance(25).then(|| format!("c{}", self.orders_placed));
        PlaceOrder {
            client_order_id,
            market: market.to_owned(),
            side,
            order_type,
            price,
            quantity,
            time_in_force,
        }
    }

    // ---- Checks --------------------------------------------------------------------------

    /// Checks 1, 2 and 4 on every live node: trade logs are prefixes of one another, the
    /// invariants of the books and fills hold, and each node's log extends its last one.
    fn periodic_checks(&mut self) {
        let mut logs = Vec::new();
        for node in 0..self.slots.len() {
            let Some(engine) = self.engine(node) else {
                continue;
            };
            if let Err(message) = checks::book_invariants(engine, &self.acks) {
                self.fail(2, format!("node {node}: {message}"));
                return;
            }
            let status = engine.status();
            if status.rejected_events != 0 || status.digest_mismatches != 0 {
                self.fail(
                    0,
                    format!(
                        "node {node}: {} rejected events, {} digest mismatches among honest nodes",
                        status.rejected_events, status.digest_mismatches
                    ),
                );
                return;
            }
            logs.push((node, engine.genesis(), checks::trade_log(engine)));
            self.check_growth(node);
        }
        for (i, (a, genesis_a, log_a)) in logs.iter().enumerate() {
            for (b, genesis_b, log_b) in &logs[i + 1..] {
                if genesis_a != genesis_b {
                    // Two fresh networks before their merge.
                    continue;
                }
                if !checks::is_prefix(log_a, log_b) && !checks::is_prefix(log_b, log_a) {
                    let at = checks::first_difference(log_a, log_b);
                    self.fail(
                        1,
                        format!(
                            "the settled trade logs of nodes {a} and {b} diverge at trade {at}: \
                             {:?} vs {:?}",
                            log_a.get(at),
                            log_b.get(at)
                        ),
                    );
                    return;
                }
            }
        }
    }

    /// Check 4: the node's settled trade log extends what it had at its last check (also
    /// across its own restarts).
    fn check_growth(&mut self, node: usize) {
        let Some(engine) = self.engine(node) else {
            return;
        };
        let log = checks::trade_log(engine);
        if !checks::is_prefix(&self.last_log[node], &log) {
            let at = checks::first_difference(&self.last_log[node], &log);
            self.fail(
                4,
                format!(
                    "node {node}'s settled trade log changed: had {} trades, now {}, first difference at {at}",
                    self.last_log[node].len(),
                    log.len()
                ),
            );
            return;
        }
        self.last_log[node] = log;
    }

    fn statuses(&self) -> String {
        let mut text = String::from("\n  connections up:");
        for a in 0..self.slots.len() {
            for b in a + 1..self.slots.len() {
                if self.links[a][b].up {
                    text.push_str(&format!(" {a}-{b}"));
                }
            }
        }
        for (i, slot) in self.slots.iter().enumerate() {
            match &slot.engine {
                Some(e) => {
                    let s = e.status();
                    text.push_str(&format!(
                        "\n  node {i} ({}): {:?} members {} settled {} pending {} lamport {} settled_frontier {:?} waiting_for {:?} clock {:?}",
                        self.ids[i].short(),
                        s.phase,
                        s.members.len(),
                        s.settled_events,
                        s.pending_events,
                        s.lamport,
                        s.settled_frontier,
                        s.waiting_for.iter().map(|w| &w[..8]).collect::<Vec<_>>(),
                        s.clock.values().collect::<Vec<_>>()
                    ));
                }
                None => text.push_str(&format!("\n  node {i}: down")),
            }
        }
        text
    }

    fn fail(&mut self, check: u8, message: String) {
        if self.failure.is_none() {
            tracing::error!(check, t = self.now, %message, "check failed");
            self.failure = Some(Failure {
                check,
                message: format!("at {} ms: {message}", self.now),
            });
        }
    }

    fn fail_now(&mut self, check: u8, message: String) -> Failure {
        self.fail(check, message);
        self.failure.clone().unwrap_or(Failure {
            check,
            message: String::new(),
        })
    }
}

/// Logs a delivered message at debug level (`RUST_LOG=sim=debug` when replaying a seed).
fn trace_message(t: u64, from: usize, to: usize, message: &Message) {
    match message {
        Message::Batch(batch) => tracing::debug!(
            t,
            from,
            to,
            origin = %batch.origin().short(),
            seqs = ?(batch.first_seq()..=batch.last_seq()),
            last_lamport = batch.last_lamport(),
            "batch"
        ),
        Message::Frontier(frontier) => tracing::debug!(
            t,
            from,
            to,
            origin = %frontier.origin.short(),
            seq = frontier.seq,
            lamport = frontier.lamport,
            acks = ?frontier
                .acks
                .iter()
                .map(|(node, seq)| format!("{}:{seq}", node.short()))
                .collect::<Vec<_>>(),
            "frontier"
        ),
        Message::Vote {
            voter,
            target,
            epoch,
            round,
            last_seq,
            ..
        } => tracing::debug!(
            t,
            from,
            to,
            voter = %voter.short(),
            target = %target.short(),
            epoch,
            round,
            last_seq,
            "vote"
        ),
        Message::SyncResponse { batches, done } => {
            let spans: Vec<String> = batches
                .iter()
                .map(|b| {
                    format!(
                        "{}:{}..={}",
                        b.origin().short(),
                        b.first_seq(),
                        b.last_seq()
                    )
                })
                .collect();
            tracing::debug!(t, from, to, ?spans, done, "sync response");
        }
        other => tracing::debug!(t, from, to, kind = ?std::mem::discriminant(other), "message"),
    }
}
