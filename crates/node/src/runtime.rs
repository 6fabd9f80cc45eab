//! The async shell around the [`Engine`]: one tokio task owns the engine and
//! `select!`s over client requests, transport events, discovery candidates,
//! storage answers, a timer and shutdown. Each loop iteration handles a burst of
//! inputs and flushes the engine; its records go to the storage thread
//! ([`Writer`]: append and fsync in groups), and its messages and answers wait
//! until that thread says they are durable. The loop meanwhile goes on with the
//! next inputs (pipelining); iterations are released strictly in order, so
//! nothing leaves before its own records and every earlier iteration's are on disk.
//!
//! Relays: a batch or frontier of another origin is relayed only to peers that
//! are not directly connected to that origin, as they said in their last
//! `Neighbours` message (they get it from the origin itself). In a full mesh an
//! event then crosses N-1 links instead of (N-1)^2; a partial mesh still floods.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use orderbook_core::{Depth, MarketSpec};
use peer_protocol::{Codec, Identity, MAX_PEERS_PER_MESSAGE, Message, NodeId, PlaceOrder};
use peer_storage::{FilePeerStore, PeerStore};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use transport::{TcpNetwork, Transport, TransportEvent};

use crate::config::Config;
use crate::engine::{
    ClientError, Effect, Engine, EngineConfig, EngineStatus, Input, OrderView, TradeView,
};
use crate::error::Error;
use crate::ids::ApiOrderId;
use crate::storage::{Closed, Committed, KEY_FILE, Op, Store, Writer};

/// Most inputs handled per loop iteration before flushing (bounds latency under load).
const MAX_BURST: usize = 512;
/// The engine's timer resolution.
const TICK: Duration = Duration::from_millis(5);
/// A member sponsors only peers connected to it at least this long.
const SPONSOR_MIN_CONNECTED: Duration = Duration::from_secs(2);
/// Loop iterations at most waiting for the storage thread; beyond it the loop takes no new
/// input until the disk catches up (backpressure).
const MAX_IN_FLIGHT: usize = 64;
/// Storage jobs at most unanswered before the loop waits for the disk: one being synced and
/// one more iteration's worth prepared meanwhile. Deeper pipelines made more, smaller
/// iterations (more batches to sign, more frontiers) and measured worse tail latency on the
/// shared 2-core machine (2026-11-25 load tests).
const MAX_JOBS_IN_FLIGHT: usize = 2;

/// The full status of a node, as `/v1/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// This node's id (hex).
    pub node_id: String,
    /// The network id.
    pub network_id: String,
    /// The bound P2P address.
    pub p2p_addr: SocketAddr,
    /// The bound API address.
    pub api_addr: SocketAddr,
    /// The bound Grenache RPC address (hybrid mode only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rpc_addr: Option<SocketAddr>,
    /// The number of connected peers.
    pub peers: usize,
    /// Median time from acknowledging one of this node's orders to settling it, over the
    /// last 1024 settled orders (milliseconds; None before any).
    pub settlement_ms_p50: Option<f64>,
    /// The 99th percentile of the same.
    pub settlement_ms_p99: Option<f64>,
    /// Relayed batches and frontiers sent to a peer, since start.
    pub relays_sent: u64,
    /// Relays not sent because the peer is directly connected to the origin (or is it).
    pub relays_skipped: u64,
    /// Batches this node lacked and got through anti-entropy (`SyncResponse`) since start:
    /// what a stale neighbour list, a lost connection or a restart left to repair.
    pub batches_repaired: u64,
    /// Replication state.
    #[serde(flatten)]
    pub engine: EngineStatus,
}

/// Relay and anti-entropy counters, as [`Status`] shows them.
#[derive(Debug, Clone, Copy, Default)]
struct RelayStats {
    relays_sent: u64,
    relays_skipped: u64,
    batches_repaired: u64,
}

/// A connected peer, as `/v1/peers` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PeerView {
    /// Its node id (hex).
    pub node_id: String,
    /// The connection's remote address.
    pub addr: SocketAddr,
    /// Where it accepts connections.
    pub listen_addr: SocketAddr,
    /// Whether it dialled us.
    pub inbound: bool,
    /// The last measured round-trip time.
    pub rtt_ms: Option<f64>,
    /// Its agent string.
    pub agent: String,
    /// Unix seconds since it connected.
    pub connected_since: u64,
}

pub(crate) enum Request {
    Place(PlaceOrder, oneshot::Sender<Result<OrderView, ClientError>>),
    PlaceMany(
        Vec<PlaceOrder>,
        oneshot::Sender<Vec<Result<OrderView, ClientError>>>,
    ),
    Cancel(ApiOrderId, oneshot::Sender<Result<OrderView, ClientError>>),
    Order(ApiOrderId, oneshot::Sender<Option<OrderView>>),
    Book(String, usize, oneshot::Sender<Option<Depth>>),
    Trades(String, usize, oneshot::Sender<Option<Vec<TradeView>>>),
    Status(oneshot::Sender<Status>),
    /// Messages a member sent through the Grenache RPC fallback; answered with the encoded
    /// messages queued for it.
    #[cfg_attr(not(feature = "grenache"), allow(dead_code))]
    RpcDeliver {
        from: NodeId,
        messages: Vec<Message>,
        /// Whether the reply carries what is queued for `from` (an RPC request being
        /// answered) or nothing (the pump handing over the messages of a reply it got).
        drain: bool,
        reply: oneshot::Sender<Result<Vec<Vec<u8>>, String>>,
    },
    /// The pump asks for the members to reach through RPC (answered with every linked member,
    /// and what is queued for each of them in `ready`: those whose endpoint it knows).
    #[cfg_attr(not(feature = "grenache"), allow(dead_code))]
    RpcPoll {
        ready: Vec<NodeId>,
        reply: oneshot::Sender<RpcOutboxes>,
    },
    /// An envelope to this member was lost: start its link over (a fresh `Connected`, so the
    /// handshake messages are sent again and anti-entropy fetches the rest).
    #[cfg_attr(not(feature = "grenache"), allow(dead_code))]
    RpcReset(NodeId),
}

/// What the RPC pump gets from one poll.
#[derive(Debug, Default)]
#[cfg_attr(not(feature = "grenache"), allow(dead_code))]
pub(crate) struct RpcOutboxes {
    /// Every member currently linked through RPC.
    pub(crate) links: Vec<NodeId>,
    /// The encoded messages queued for each ready link.
    pub(crate) outboxes: Vec<(NodeId, Vec<Vec<u8>>)>,
}

/// A cheap, cloneable handle to query and drive a running node in-process
/// (what the HTTP API uses, and what tests use directly).
#[derive(Clone)]
pub struct NodeHandle {
    requests: mpsc::Sender<Request>,
    transport: transport::Handle,
    markets: Arc<Vec<MarketSpec>>,
    stream: broadcast::Sender<Arc<str>>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle").finish_non_exhaustive()
    }
}

impl NodeHandle {
    /// Sends a request to the engine task.
    #[cfg_attr(not(feature = "grenache"), allow(dead_code))]
    pub(crate) async fn send_request(&self, request: Request) -> Result<(), Error> {
        self.requests
            .send(request)
            .await
            .map_err(|_| Error::Stopped)
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Request) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(make(tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Places an order; answers once its event is durable (status `pending` until settled).
    pub async fn place(&self, order: PlaceOrder) -> Result<Result<OrderView, ClientError>, Error> {
        self.ask(|tx| Request::Place(order, tx)).await
    }

    /// Places several orders in one go (one batch, one fsync).
    pub async fn place_many(
        &self,
        orders: Vec<PlaceOrder>,
    ) -> Result<Vec<Result<OrderView, ClientError>>, Error> {
        self.ask(|tx| Request::PlaceMany(orders, tx)).await
    }

    /// Cancels one of this node's orders; answers once the cancel event is durable.
    pub async fn cancel(&self, id: ApiOrderId) -> Result<Result<OrderView, ClientError>, Error> {
        self.ask(|tx| Request::Cancel(id, tx)).await
    }

    /// An order's state.
    pub async fn order(&self, id: ApiOrderId) -> Result<Option<OrderView>, Error> {
        self.ask(|tx| Request::Order(id, tx)).await
    }

    /// The settled book of a market (None: unknown market).
    pub async fn book(&self, market: &str, depth: usize) -> Result<Option<Depth>, Error> {
        self.ask(|tx| Request::Book(market.to_owned(), depth, tx))
            .await
    }

    /// The newest settled trades of a market, newest first (None: unknown market).
    pub async fn trades(
        &self,
        market: &str,
        limit: usize,
    ) -> Result<Option<Vec<TradeView>>, Error> {
        self.ask(|tx| Request::Trades(market.to_owned(), limit, tx))
            .await
    }

    /// The node's status.
    pub async fn status(&self) -> Result<Status, Error> {
        self.ask(Request::Status).await
    }

    /// The connected peers.
    pub fn peers(&self) -> Vec<PeerView> {
        self.transport
            .peers()
            .into_iter()
            .map(|p| PeerView {
                node_id: p.node_id.to_string(),
                addr: p.addr,
                listen_addr: p.listen_addr,
                inbound: p.inbound,
                rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
                agent: p.agent,
                connected_since: p
                    .connected_since
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            })
            .collect()
    }

    /// The markets.
    pub fn markets(&self) -> &[MarketSpec] {
        &self.markets
    }

    /// The transport handle (tests use it to dial, or to cut links).
    pub fn transport(&self) -> &transport::Handle {
        &self.transport
    }

    /// Subscribes to the stream of settled trades and book updates (JSON texts).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.stream.subscribe()
    }
}

/// A running node.
pub struct Node {
    node_id: NodeId,
    p2p_addr: SocketAddr,
    api_addr: SocketAddr,
    data_dir: PathBuf,
    handle: NodeHandle,
    shutdown: CancellationToken,
    stopped: watch::Receiver<bool>,
    engine_task: Option<JoinHandle<()>>,
    api_task: Option<JoinHandle<()>>,
    discovery_tasks: Vec<JoinHandle<discovery::Result<()>>>,
    /// Resolves once the storage thread has closed the log (and freed the data directory).
    storage_closed: Option<Closed>,
    #[cfg(feature = "grenache")]
    rpc: Option<crate::rpc::Rpc>,
    rpc_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node_id", &self.node_id)
            .field("p2p_addr", &self.p2p_addr)
            .field("api_addr", &self.api_addr)
            .finish_non_exhaustive()
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Node {
    /// Starts a node: opens and locks the data directory, loads (or creates) the node key,
    /// replays the event log, binds the P2P and API listeners (port 0 picks a free port),
    /// and starts the transport, discovery, engine and API tasks.
    pub async fn start(config: Config) -> Result<Node, Error> {
        let data_dir = config.resolved_data_dir();
        let markets: Vec<MarketSpec> = config
            .markets
            .iter()
            .map(|m| MarketSpec::new(m.name.clone(), m.tick_size, m.lot_size))
            .collect();
        if markets.is_empty() {
            return Err(Error::Config("no markets configured".to_owned()));
        }
        let id = &config.network_id;
        if id.is_empty()
            || id.len() > peer_protocol::MAX_NETWORK_ID_LEN
            || !id.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Error::Config(format!(
                "network_id must be 1 to {} printable ASCII characters, got {id:?}",
                peer_protocol::MAX_NETWORK_ID_LEN
            )));
        }
        let (mut store, records) = Store::open(&data_dir)?;
        let identity = Arc::new(
            Identity::load_or_create(&data_dir.join(KEY_FILE))
                .map_err(|e| Error::Key(e.to_string()))?,
        );
        let node_id = identity.node_id();
        let engine_config = EngineConfig {
            network_id: config.network_id.clone(),
            markets: markets.clone(),
            found: config.found,
            join_window_ms: config.join_window_ms,
            heartbeat_ms: config.heartbeat_ms.max(1),
            frontier_min_interval_ms: 5,
            sponsor_min_connected_ms: SPONSOR_MIN_CONNECTED.as_millis() as u64,
            evict_after_ms: config.evict_after_ms,
        };
        let mut engine = Engine::new(identity.clone(), engine_config).map_err(Error::Config)?;
        let replayed = records.len();
        for record in records {
            engine.restore_record(record).map_err(Error::CorruptLog)?;
        }
        engine.finish_restore();
        // The replayed settled state is final; re-persisting it is not needed.
        store.sync()?;
        tracing::info!(
            node_id = %node_id,
            records = replayed,
            settled_events = engine.settled_events(),
            digest = %crate::ids::hex(&engine.digest()),
            "event log replayed"
        );

        let peer_store: Arc<dyn PeerStore> = Arc::new(
            FilePeerStore::open(config.resolved_peer_storage_path(), Default::default())
                .map_err(|e| Error::Config(format!("peer table: {e}")))?,
        );
        let listen = resolve(&config.p2p_host, config.p2p_port, "p2p")?;
        let heartbeat = Duration::from_millis(config.heartbeat_ms.max(1));
        let transport_config = transport::Config {
            listen,
            network_id: config.network_id.clone(),
            market_hash: engine.market_hash(),
            max_peers: config.max_peers,
            heartbeat_interval: heartbeat,
            idle_timeout: heartbeat * 5,
            reconnect_max: Duration::from_millis(config.peer_reconnect_interval.max(100)),
            outbound_queue: 16 * 1024,
            event_queue: 4096,
            ..transport::Config::default()
        };
        let (transport, transport_rx) = Transport::start(
            transport_config,
            identity.clone(),
            TcpNetwork,
            peer_store.clone(),
        )
        .await
        .map_err(|e| Error::Transport(format!("cannot start on {listen}: {e}")))?;
        let p2p_addr = transport.local_addr();

        let api_listen = resolve(&config.api_host, config.resolved_api_port(), "api")?;
        let api_listener = match tokio::net::TcpListener::bind(api_listen).await {
            Ok(listener) => listener,
            Err(source) => {
                transport.shutdown().await;
                return Err(Error::Bind {
                    what: "api",
                    addr: api_listen.to_string(),
                    source,
                });
            }
        };
        let api_addr = api_listener.local_addr().map_err(|source| Error::Bind {
            what: "api",
            addr: api_listen.to_string(),
            source,
        })?;

        let shutdown = CancellationToken::new();
        let (requests_tx, requests_rx) = mpsc::channel(1024);
        let (stream, _) = broadcast::channel(4096);
        let handle = NodeHandle {
            requests: requests_tx,
            transport: transport.clone(),
            markets: Arc::new(markets),
            stream: stream.clone(),
        };

        // Discovery feeds candidate addresses to the transport.
        let (candidates_tx, candidates_rx) = mpsc::channel(256);
        let discovery_tasks = start_discovery(
            &config,
            node_id,
            p2p_addr,
            &peer_store,
            candidates_tx,
            &shutdown,
        );

        #[cfg(feature = "grenache")]
        let rpc = if config.discovery_grenache {
            let rpc_listen = resolve(&config.p2p_host, config.resolved_rpc_port(), "rpc")?;
            match crate::rpc::Rpc::start(
                rpc_listen,
                &config.grape_url,
                config.network_id.clone(),
                identity.clone(),
                handle.clone(),
                shutdown.clone(),
            )
            .await
            {
                Ok(rpc) => Some(rpc),
                Err(error) => {
                    shutdown.cancel();
                    transport.shutdown().await;
                    return Err(Error::Config(error));
                }
            }
        } else {
            None
        };
        #[cfg(feature = "grenache")]
        let rpc_addr = rpc.as_ref().map(|r| r.local_addr);
        #[cfg(not(feature = "grenache"))]
        let rpc_addr = None;

        let (writer, committed_rx, storage_closed) =
            Writer::spawn(store, MAX_IN_FLIGHT, node_id.short())?;
        let (stopped_tx, stopped) = watch::channel(false);
        let shell = Shell {
            rpc_links: BTreeSet::new(),
            outbox: HashMap::new(),
            rpc_waiting: Vec::new(),
            overflowed: BTreeSet::new(),
            last_rpc_info: Instant::now(),
            engine,
            writer,
            in_flight: VecDeque::new(),
            next_job: 0,
            jobs_in_flight: 0,
            connected: BTreeSet::new(),
            neighbours: HashMap::new(),
            neighbours_changed: false,
            relay: RelayStats::default(),
            transport: transport.clone(),
            peer_store,
            stream,
            started: Instant::now(),
            placed_at: HashMap::new(),
            latencies: VecDeque::with_capacity(LATENCY_WINDOW),
            status_base: StatusBase {
                node_id: node_id.to_string(),
                node_label: node_id.short(),
                network_id: config.network_id.clone(),
                p2p_addr,
                api_addr,
                rpc_addr,
            },
        };
        let engine_task = tokio::spawn(shell.run(
            transport_rx,
            requests_rx,
            committed_rx,
            candidates_rx,
            shutdown.clone(),
            stopped_tx,
        ));
        let metrics = crate::api::Metrics::install();
        let api_task = tokio::spawn(crate::api::serve(
            api_listener,
            handle.clone(),
            metrics,
            shutdown.clone(),
        ));
        tracing::info!(
            node_id = %node_id,
            p2p = %p2p_addr,
            api = %format!("http://{api_addr}"),
            data_dir = %data_dir.display(),
            "node started"
        );
        Ok(Node {
            node_id,
            p2p_addr,
            api_addr,
            data_dir,
            handle,
            shutdown,
            stopped,
            engine_task: Some(engine_task),
            api_task: Some(api_task),
            discovery_tasks,
            storage_closed: Some(storage_closed),
            #[cfg(feature = "grenache")]
            rpc,
            rpc_addr,
        })
    }

    /// This node's id (its public key).
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The bound P2P address.
    pub fn p2p_addr(&self) -> SocketAddr {
        self.p2p_addr
    }

    /// The bound HTTP API address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The bound Grenache RPC address, when the hybrid mode runs.
    pub fn rpc_addr(&self) -> Option<SocketAddr> {
        self.rpc_addr
    }

    /// The data directory in use.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// A handle to query and drive the node in-process.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Waits until the node has stopped (after [`Node::shutdown`] or a fatal storage error).
    pub async fn wait(&self) {
        let mut stopped = self.stopped.clone();
        let _ = stopped.wait_for(|s| *s).await;
    }

    /// Stops gracefully: pending work is flushed and fsynced, peers get `Goodbye`, the API
    /// stops, the data directory lock is released.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.shutdown.cancel();
        if let Some(task) = self.engine_task.take() {
            let _ = task.await;
        }
        if let Some(closed) = self.storage_closed.take() {
            closed.wait().await;
        }
        if let Some(task) = self.api_task.take() {
            let _ = task.await;
        }
        for task in self.discovery_tasks.drain(..) {
            let _ = task.await;
        }
        #[cfg(feature = "grenache")]
        if let Some(rpc) = self.rpc.take() {
            rpc.join().await;
        }
        Ok(())
    }

    /// Stops abruptly, as close to `kill -9` as in-process allows: the engine task is
    /// aborted without flushing (whatever was not fsynced is lost; records already handed to
    /// the storage thread may still reach the disk, as writes in the kernel would),
    /// connections drop.
    pub async fn crash(mut self) {
        if let Some(task) = self.engine_task.take() {
            task.abort();
            let _ = task.await;
        }
        if let Some(closed) = self.storage_closed.take() {
            closed.wait().await;
        }
        self.shutdown.cancel();
        self.handle.transport.shutdown().await;
        if let Some(task) = self.api_task.take() {
            let _ = task.await;
        }
        for task in self.discovery_tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn resolve(host: &str, port: u16, what: &'static str) -> Result<SocketAddr, Error> {
    let text = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    text.parse()
        .map_err(|e| Error::Config(format!("{what} address {text:?}: {e}")))
}

fn start_discovery(
    config: &Config,
    node_id: NodeId,
    p2p_addr: SocketAddr,
    peer_store: &Arc<dyn PeerStore>,
    sink: mpsc::Sender<discovery::Candidate>,
    shutdown: &CancellationToken,
) -> Vec<JoinHandle<discovery::Result<()>>> {
    let mut tasks = Vec::new();
    let token = shutdown.child_token();
    if !config.bootstrap_peers.is_empty() {
        match discovery::Bootstrap::new(&config.bootstrap_peers) {
            Ok(bootstrap) => tasks.push(discovery::spawn(
                Box::new(bootstrap),
                sink.clone(),
                token.clone(),
            )),
            Err(error) => tracing::warn!(%error, "ignoring invalid BOOTSTRAP_PEERS"),
        }
    }
    tasks.push(discovery::spawn(
        Box::new(discovery::Persisted::new(peer_store.clone())),
        sink.clone(),
        token.clone(),
    ));
    if config.discovery_mdns {
        let interfaces = if config.mdns_interfaces.is_empty() {
            discovery::MdnsConfig::parse("all")
        } else {
            discovery::MdnsConfig::parse(&config.mdns_interfaces.join(","))
        };
        match discovery::Mdns::new(
            interfaces,
            node_id,
            config.network_id.clone(),
            p2p_addr.port(),
        ) {
            Ok(mdns) => tasks.push(discovery::spawn(
                Box::new(mdns),
                sink.clone(),
                token.clone(),
            )),
            Err(error) => tracing::warn!(%error, "mDNS discovery disabled"),
        }
    }
    if config.discovery_grenache {
        if discovery::grenache_available() {
            let grenache_config = discovery::GrenacheConfig::new(
                config.grape_url.clone(),
                config.network_id.clone(),
                p2p_addr.port(),
            );
            match discovery::Grenache::new(grenache_config) {
                Ok(grenache) => tasks.push(discovery::spawn(Box::new(grenache), sink, token)),
                Err(error) => tracing::warn!(%error, "Grenache discovery disabled"),
            }
        } else {
            tracing::warn!(
                "DISCOVERY_GRENACHE is on but Grenache support is not compiled in (build with the `grenache` feature)"
            );
        }
    }
    tasks
}

struct StatusBase {
    node_id: String,
    /// The short node id, as the `node` label of metrics.
    node_label: String,
    network_id: String,
    p2p_addr: SocketAddr,
    api_addr: SocketAddr,
    rpc_addr: Option<SocketAddr>,
}

struct Shell {
    /// Members reached through the Grenache RPC fallback (not connected over TCP); the engine
    /// sees each as a connected peer.
    rpc_links: BTreeSet<NodeId>,
    /// Messages for RPC-linked members, bounded per member (oldest dropped; anti-entropy
    /// fetches what was lost).
    outbox: HashMap<NodeId, VecDeque<Message>>,
    /// RPC requests answered once this iteration's effects are executed.
    rpc_waiting: Vec<RpcWaiting>,
    /// Links whose outbox overflowed, restarted at the next poll.
    overflowed: BTreeSet<NodeId>,
    /// When `NetworkInfo` was last repeated on the RPC links.
    last_rpc_info: Instant,
    engine: Engine,
    /// The storage thread.
    writer: Writer,
    /// Iterations whose effects wait, in order, for their records to be durable.
    in_flight: VecDeque<Iteration>,
    /// The id of the last storage job submitted.
    next_job: u64,
    /// Storage jobs submitted and not answered yet.
    jobs_in_flight: usize,
    /// The peers connected over TCP (as the transport's events said).
    connected: BTreeSet<NodeId>,
    /// Each connected peer's own connected peers, from its last `Neighbours` message.
    neighbours: HashMap<NodeId, BTreeSet<NodeId>>,
    /// Whether `connected` changed since the last `Neighbours` broadcast.
    neighbours_changed: bool,
    relay: RelayStats,
    transport: transport::Handle,
    peer_store: Arc<dyn PeerStore>,
    stream: broadcast::Sender<Arc<str>>,
    started: Instant,
    status_base: StatusBase,
    /// When each own pending order was acknowledged (bounded), to measure settlement latency.
    placed_at: HashMap<u128, Instant>,
    /// The most recent settlement latencies, in microseconds (a ring).
    latencies: VecDeque<u64>,
}

/// How often `NetworkInfo` is repeated on RPC links.
const RPC_INFO_INTERVAL: Duration = Duration::from_secs(2);
/// Messages queued at most for one RPC-linked member.
const MAX_OUTBOX: usize = 1024;
/// The most messages handed out for one RPC envelope.
const MAX_RPC_MESSAGES: usize = 256;
/// The most encoded bytes handed out for one RPC envelope.
const MAX_RPC_BYTES: usize = 1 << 20;

enum RpcWaiting {
    Deliver(NodeId, oneshot::Sender<Result<Vec<Vec<u8>>, String>>),
    Poll(Vec<NodeId>, oneshot::Sender<RpcOutboxes>),
}

fn message_kind(message: &Message) -> &'static str {
    match message {
        Message::Batch(_) => "batch",
        Message::Frontier(_) => "frontier",
        Message::SyncRequest { .. } => "sync_request",
        Message::SyncResponse { .. } => "sync_response",
        Message::Digest { .. } => "digest",
        Message::NetworkInfo { .. } => "network_info",
        _ => "other",
    }
}

/// Whether a message kind may arrive through the RPC fallback (log replication only).
fn rpc_allowed(message: &Message) -> bool {
    matches!(
        message,
        Message::Batch(_)
            | Message::Frontier(_)
            | Message::SyncRequest { .. }
            | Message::SyncResponse { .. }
            | Message::Digest { .. }
            | Message::NetworkInfo { .. }
    )
}

/// Own orders whose acknowledgement time is remembered at most.
const MAX_TRACKED_ORDERS: usize = 100_000;
/// Settlement latencies kept for the status percentiles.
const LATENCY_WINDOW: usize = 1024;

/// One loop iteration's effects, waiting for its storage job (if it has one).
struct Iteration {
    /// The storage job not answered yet; `None` once durable (or when there was none).
    job: Option<u64>,
    effects: Vec<Effect>,
    deferred: Vec<Deferred>,
    rpc_waiting: Vec<RpcWaiting>,
}

enum Deferred {
    One(
        oneshot::Sender<Result<OrderView, ClientError>>,
        Result<OrderView, ClientError>,
    ),
    Many(
        oneshot::Sender<Vec<Result<OrderView, ClientError>>>,
        Vec<Result<OrderView, ClientError>>,
    ),
    Read(Request),
}

impl Shell {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn run(
        mut self,
        mut transport_rx: mpsc::Receiver<TransportEvent>,
        mut requests_rx: mpsc::Receiver<Request>,
        mut committed_rx: mpsc::Receiver<Committed>,
        mut candidates_rx: mpsc::Receiver<discovery::Candidate>,
        shutdown: CancellationToken,
        stopped: watch::Sender<bool>,
    ) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut effects = Vec::new();
        let mut deferred = Vec::new();
        let own_addr = self.transport.local_addr();
        let mut last_tick = Instant::now();
        // One tick before any request: a node told to found its network is a member before
        // its first client request is handled.
        let now_ms = self.now_ms();
        self.engine.handle(Input::Tick { now_ms }, &mut effects);
        self.engine.handle(Input::Flush { now_ms }, &mut effects);
        let mut failed = self.end_iteration(&mut effects, &mut deferred).is_err();
        while !failed {
            // Backpressure: with too many iterations waiting for the disk, only storage
            // answers (and shutdown) are taken.
            let open = self.has_room();
            // Not biased: under a flood of peer messages, clients and timers still get turns.
            tokio::select! {
                () = shutdown.cancelled() => break,
                committed = committed_rx.recv() => {
                    if self.on_committed(committed).is_err() {
                        break;
                    }
                }
                Some(event) = transport_rx.recv(), if open => {
                    self.on_transport(event, &mut effects);
                }
                Some(request) = requests_rx.recv(), if open => {
                    self.on_request(request, &mut effects, &mut deferred);
                }
                Some(candidate) = candidates_rx.recv(), if open => {
                    let ours = candidate.node_id == Some(self.engine.node_id());
                    if candidate.addr != own_addr && !ours {
                        self.transport.add_peer_addr(candidate.addr, candidate.source);
                    }
                }
                _ = ticker.tick(), if open => {}
            }
            // Answers that are already in release their iterations before new work starts.
            while let Ok(committed) = committed_rx.try_recv() {
                if self.on_committed(Some(committed)).is_err() {
                    failed = true;
                    break;
                }
            }
            if failed || !self.has_room() {
                continue;
            }
            // A burst: whatever else is ready, bounded, taking turns between the queues.
            for _ in 0..MAX_BURST {
                let mut any = false;
                if let Ok(event) = transport_rx.try_recv() {
                    self.on_transport(event, &mut effects);
                    any = true;
                }
                if let Ok(request) = requests_rx.try_recv() {
                    self.on_request(request, &mut effects, &mut deferred);
                    any = true;
                }
                if !any {
                    break;
                }
            }
            // Timers run at least every TICK even when the queues never run dry.
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                let now_ms = self.now_ms();
                self.engine.handle(Input::Tick { now_ms }, &mut effects);
            }
            let now_ms = self.now_ms();
            self.engine.handle(Input::Flush { now_ms }, &mut effects);
            self.announce_neighbours();
            failed = self.end_iteration(&mut effects, &mut deferred).is_err();
        }
        if failed {
            // Nothing of this iteration is durable: no acknowledgement, no broadcast.
            self.discard_iteration(&mut effects, &mut deferred);
        } else {
            // Graceful end: make this iteration's work durable, wait for everything in
            // flight, say goodbye.
            let now_ms = self.now_ms();
            self.engine.handle(Input::Flush { now_ms }, &mut effects);
            if self.end_iteration(&mut effects, &mut deferred).is_ok() {
                while !self.in_flight.is_empty() {
                    if self.on_committed(committed_rx.recv().await).is_err() {
                        break;
                    }
                }
            }
        }
        self.transport.shutdown().await;
        if let Err(error) = self.peer_store.flush() {
            tracing::warn!(%error, "cannot save the peer table");
        }
        let _ = stopped.send(true);
    }

    /// Whether the loop may take new input, or must wait for the storage thread first.
    fn has_room(&self) -> bool {
        self.in_flight.len() < MAX_IN_FLIGHT && self.jobs_in_flight < MAX_JOBS_IN_FLIGHT
    }

    /// Tells every peer which nodes this one is connected to, when that changed.
    fn announce_neighbours(&mut self) {
        if !std::mem::take(&mut self.neighbours_changed) {
            return;
        }
        // A cut list only makes the others relay more to us.
        let peers: Vec<NodeId> = self
            .connected
            .iter()
            .copied()
            .take(MAX_PEERS_PER_MESSAGE)
            .collect();
        self.transport
            .broadcast(&Message::Neighbours { peers }, None);
    }

    fn on_transport(&mut self, event: TransportEvent, effects: &mut Vec<Effect>) {
        match event {
            TransportEvent::Connected { peer, .. } => {
                self.connected.insert(peer);
                self.neighbours.remove(&peer);
                self.neighbours_changed = true;
                self.engine.handle(Input::Connected { peer }, effects);
                // Peer exchange: ask every new peer whom it knows.
                let _ = self.transport.send(&peer, &Message::GetPeers);
            }
            TransportEvent::Disconnected { peer, .. } => {
                self.connected.remove(&peer);
                self.neighbours.remove(&peer);
                self.neighbours_changed = true;
                self.engine.handle(Input::Disconnected { peer }, effects);
                // The next RPC poll links it again (with a fresh `Connected`) if still a member.
                self.rpc_links.remove(&peer);
                self.outbox.remove(&peer);
            }
            TransportEvent::Message {
                peer,
                message: Message::GetPeers,
            } => self.answer_get_peers(&peer),
            TransportEvent::Message {
                peer: _,
                message: Message::Peers(list),
            } => {
                let local = discovery::pex::Local {
                    node_id: Some(self.engine.node_id()),
                    addrs: vec![self.transport.local_addr()],
                };
                let now = now_unix();
                for candidate in discovery::pex::filter(list, &local, &*self.peer_store, now) {
                    let known = candidate
                        .node_id
                        .is_some_and(|id| self.transport.is_connected(&id));
                    if !known {
                        self.transport
                            .add_peer_addr(candidate.addr, candidate.source);
                    }
                }
            }
            TransportEvent::Message {
                peer,
                message: Message::Neighbours { peers },
            } => {
                // Bounded by the protocol limit; kept only while the peer is connected.
                if self.connected.contains(&peer) {
                    self.neighbours.insert(peer, peers.into_iter().collect());
                }
            }
            TransportEvent::Message { peer, message } => {
                match self.engine.check_message(&peer, message) {
                    Ok(Some(message)) => {
                        if let crate::engine::PeerInput::SyncResponse { batches, .. } = &message {
                            self.relay.batches_repaired += batches.len() as u64;
                        }
                        self.engine.handle(
                            Input::Peer {
                                from: peer,
                                message,
                            },
                            effects,
                        )
                    }
                    Ok(None) => {}
                    Err(what) => {
                        metrics::counter!("p2p_exchange_misbehaviour_total", "node" => self.status_base.node_label.clone())
                            .increment(1);
                        tracing::warn!(peer = %peer.short(), %what, "misbehaving peer");
                        self.transport.report_misbehaviour(&peer, &what);
                    }
                }
            }
        }
    }

    /// Answers `GetPeers` with our connected peers' listen addresses and the best of the
    /// peer table (bounded by the protocol limit).
    fn answer_get_peers(&self, peer: &NodeId) {
        let mut list: Vec<peer_protocol::PeerAddress> = self
            .transport
            .peers()
            .into_iter()
            .filter(|p| p.node_id != *peer && discovery::is_dialable(p.listen_addr))
            .map(|p| peer_protocol::PeerAddress {
                addr: p.listen_addr,
                node_id: Some(p.node_id),
            })
            .collect();
        for shared in discovery::pex::shareable(&*self.peer_store, 32, now_unix()) {
            if !list.iter().any(|p| p.addr == shared.addr) {
                list.push(shared);
            }
        }
        list.truncate(peer_protocol::MAX_PEERS_PER_MESSAGE);
        let _ = self.transport.send(peer, &Message::Peers(list));
    }

    fn on_request(
        &mut self,
        request: Request,
        effects: &mut Vec<Effect>,
        deferred: &mut Vec<Deferred>,
    ) {
        match request {
            Request::Place(order, tx) => {
                let reply = self.client_input(|request| Input::Place { request, order }, effects);
                deferred.push(Deferred::One(tx, reply));
            }
            Request::PlaceMany(orders, tx) => {
                let replies = orders
                    .into_iter()
                    .map(|order| {
                        self.client_input(|request| Input::Place { request, order }, effects)
                    })
                    .collect();
                deferred.push(Deferred::Many(tx, replies));
            }
            Request::Cancel(order_id, tx) => {
                let reply =
                    self.client_input(|request| Input::Cancel { request, order_id }, effects);
                deferred.push(Deferred::One(tx, reply));
            }
            Request::RpcDeliver {
                from,
                messages,
                drain,
                reply,
            } => self.on_rpc_deliver(from, messages, drain, reply, effects),
            Request::RpcPoll { ready, reply } => {
                self.update_rpc_links(effects);
                self.rpc_waiting.push(RpcWaiting::Poll(ready, reply));
            }
            Request::RpcReset(peer) => self.reset_link(peer, effects),
            read => deferred.push(Deferred::Read(read)),
        }
    }

    /// Links (or unlinks) members by whether they are connected over TCP.
    fn update_rpc_links(&mut self, effects: &mut Vec<Effect>) {
        for peer in std::mem::take(&mut self.overflowed) {
            self.reset_link(peer, effects);
        }
        let me = self.engine.node_id();
        let members: Vec<NodeId> = self
            .engine
            .members()
            .iter()
            .copied()
            .filter(|m| *m != me)
            .collect();
        let stale: Vec<NodeId> = self
            .rpc_links
            .iter()
            .copied()
            .filter(|l| !members.contains(l) || self.transport.is_connected(l))
            .collect();
        for peer in stale {
            self.rpc_links.remove(&peer);
            self.outbox.remove(&peer);
            if !self.transport.is_connected(&peer) {
                self.engine.handle(Input::Disconnected { peer }, effects);
            }
        }
        for member in members {
            if !self.transport.is_connected(&member) {
                self.link(member, effects);
            }
        }
        // A lost envelope may have carried the handshake; repeating `NetworkInfo` (idempotent)
        // keeps the link usable without a restart.
        if !self.rpc_links.is_empty() && self.last_rpc_info.elapsed() >= RPC_INFO_INTERVAL {
            self.last_rpc_info = Instant::now();
            let info = self.engine.network_info_message();
            let links: Vec<NodeId> = self.rpc_links.iter().copied().collect();
            for link in links {
                self.queue_rpc(link, info.clone());
            }
        }
    }

    fn reset_link(&mut self, peer: NodeId, effects: &mut Vec<Effect>) {
        if self.rpc_links.contains(&peer) && !self.transport.is_connected(&peer) {
            tracing::debug!(peer = %peer.short(), "restarting the rpc link");
            self.outbox.remove(&peer);
            self.engine.handle(Input::Disconnected { peer }, effects);
            self.engine.handle(Input::Connected { peer }, effects);
        }
    }

    fn link(&mut self, peer: NodeId, effects: &mut Vec<Effect>) {
        if self.rpc_links.insert(peer) {
            tracing::info!(peer = %peer.short(), "member not connected over tcp; using the grenache rpc fallback");
            self.engine.handle(Input::Connected { peer }, effects);
        }
    }

    fn on_rpc_deliver(
        &mut self,
        from: NodeId,
        messages: Vec<Message>,
        drain: bool,
        reply: oneshot::Sender<Result<Vec<Vec<u8>>, String>>,
        effects: &mut Vec<Effect>,
    ) {
        if !self.engine.members().contains(&from) || from == self.engine.node_id() {
            let _ = reply.send(Err(format!(
                "not_member: {} is not a member of this network",
                from.short()
            )));
            return;
        }
        if !self.transport.is_connected(&from) {
            self.link(from, effects);
        }
        tracing::trace!(peer = %from.short(), messages = messages.len(), "rpc messages received");
        for message in messages.into_iter().filter(rpc_allowed) {
            tracing::trace!(peer = %from.short(), ?message, "rpc message");
            // Exactly the verification of TCP input.
            match self.engine.check_message(&from, message) {
                Ok(Some(message)) => self.engine.handle(Input::Peer { from, message }, effects),
                Ok(None) => {}
                Err(what) => {
                    metrics::counter!("p2p_exchange_misbehaviour_total", "node" => self.status_base.node_label.clone())
                        .increment(1);
                    tracing::warn!(peer = %from.short(), %what, "misbehaving member (rpc)");
                    let _ = reply.send(Err(format!("rejected: {what}")));
                    return;
                }
            }
        }
        if drain {
            self.rpc_waiting.push(RpcWaiting::Deliver(from, reply));
        } else {
            let _ = reply.send(Ok(Vec::new()));
        }
    }

    /// Queues a message for an RPC-linked member. Bounded: on overflow the queue is dropped
    /// and the link restarted at the next poll (handshake again, then anti-entropy).
    fn queue_rpc(&mut self, to: NodeId, message: Message) {
        tracing::trace!(peer = %to.short(), kind = message_kind(&message), "queued for rpc");
        let queue = self.outbox.entry(to).or_default();
        if queue.len() >= MAX_OUTBOX {
            tracing::debug!(peer = %to.short(), "rpc outbox full; the link restarts");
            queue.clear();
            self.overflowed.insert(to);
            return;
        }
        queue.push_back(message);
    }

    /// Takes and encodes what is queued for `peer`, bounded per envelope.
    fn drain_outbox(&mut self, peer: &NodeId) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let Some(queue) = self.outbox.get_mut(peer) else {
            return out;
        };
        let mut bytes = 0;
        while out.len() < MAX_RPC_MESSAGES {
            let Some(message) = queue.pop_front() else {
                break;
            };
            let Ok(encoded) = postcard::to_allocvec(&message) else {
                continue;
            };
            if encoded.len() > MAX_RPC_BYTES {
                tracing::warn!(
                    bytes = encoded.len(),
                    "message too large for the rpc fallback; dropped"
                );
                continue;
            }
            if bytes + encoded.len() > MAX_RPC_BYTES {
                queue.push_front(message);
                break;
            }
            bytes += encoded.len();
            out.push(encoded);
        }
        out
    }

    fn answer_rpc(&mut self, rpc_waiting: Vec<RpcWaiting>) {
        for waiting in rpc_waiting {
            match waiting {
                RpcWaiting::Deliver(from, reply) => {
                    let messages = self.drain_outbox(&from);
                    let _ = reply.send(Ok(messages));
                }
                RpcWaiting::Poll(ready, reply) => {
                    let links: Vec<NodeId> = self.rpc_links.iter().copied().collect();
                    let mut outboxes = Vec::new();
                    for peer in &links {
                        if ready.contains(peer) && !self.overflowed.contains(peer) {
                            outboxes.push((*peer, self.drain_outbox(peer)));
                        }
                    }
                    let _ = reply.send(RpcOutboxes { links, outboxes });
                }
            }
        }
    }

    /// Runs one client command and takes its reply out of the effects.
    fn client_input(
        &mut self,
        make: impl FnOnce(u64) -> Input,
        effects: &mut Vec<Effect>,
    ) -> Result<OrderView, ClientError> {
        let mut out = Vec::new();
        self.engine.handle(make(0), &mut out);
        let mut reply = None;
        for effect in out {
            match effect {
                Effect::Reply { reply: r, .. } => reply = Some(r),
                other => effects.push(other),
            }
        }
        if let Some(Ok(view)) = &reply
            && view.status == crate::engine::OrderStatus::Pending
            && let Ok(id) = view.order_id.parse::<ApiOrderId>()
        {
            if self.placed_at.len() >= MAX_TRACKED_ORDERS {
                // Orders that never settle (a silent member) must not grow this forever.
                self.placed_at.clear();
            }
            self.placed_at.entry(id.0.0).or_insert_with(Instant::now);
        }
        reply.unwrap_or_else(|| {
            Err(ClientError {
                kind: crate::engine::ClientErrorKind::Unavailable,
                code: "internal",
                message: "no reply".to_owned(),
            })
        })
    }

    /// Ends a loop iteration: its records go to the storage thread as one job, the rest
    /// waits in line until they (and every earlier iteration's) are durable.
    fn end_iteration(
        &mut self,
        effects: &mut Vec<Effect>,
        deferred: &mut Vec<Deferred>,
    ) -> Result<(), Error> {
        let mut ops = Vec::new();
        let mut rest = Vec::with_capacity(effects.len());
        for effect in effects.drain(..) {
            match effect {
                Effect::Persist(record) => ops.push(Op::Append(record)),
                Effect::WipeLog => ops.push(Op::Wipe),
                other => rest.push(other),
            }
        }
        let rpc_waiting = std::mem::take(&mut self.rpc_waiting);
        if ops.is_empty() && rest.is_empty() && deferred.is_empty() && rpc_waiting.is_empty() {
            return Ok(());
        }
        let job = (!ops.is_empty()).then(|| {
            self.next_job += 1;
            self.jobs_in_flight += 1;
            self.next_job
        });
        self.in_flight.push_back(Iteration {
            job,
            effects: rest,
            deferred: std::mem::take(deferred),
            rpc_waiting,
        });
        if let Some(id) = job
            && let Err(error) = self.writer.submit(id, ops)
        {
            tracing::error!(%error, "storage failed; stopping the node");
            self.fail_in_flight();
            return Err(error);
        }
        self.release();
        Ok(())
    }

    /// A storage answer: releases what became durable, or fails everything in flight.
    fn on_committed(&mut self, committed: Option<Committed>) -> Result<(), Error> {
        let error = match committed {
            Some(Committed { id, result: Ok(()) }) => {
                self.jobs_in_flight = self.jobs_in_flight.saturating_sub(1);
                if let Some(iteration) = self.in_flight.iter_mut().find(|i| i.job == Some(id)) {
                    iteration.job = None;
                }
                self.release();
                return Ok(());
            }
            Some(Committed {
                result: Err(error), ..
            }) => error,
            None => Error::storage(
                crate::storage::LOG_FILE,
                std::io::Error::other("the storage thread stopped"),
            ),
        };
        tracing::error!(%error, "storage failed; stopping the node");
        self.fail_in_flight();
        Err(error)
    }

    /// Executes, in order, every iteration at the head of the line that is durable.
    fn release(&mut self) {
        while self.in_flight.front().is_some_and(|i| i.job.is_none()) {
            if let Some(iteration) = self.in_flight.pop_front() {
                self.dispatch(iteration);
            }
        }
    }

    /// After a storage failure nothing in flight is durable: no acknowledgement, no message.
    fn fail_in_flight(&mut self) {
        self.jobs_in_flight = 0;
        while let Some(mut iteration) = self.in_flight.pop_front() {
            self.discard_iteration(&mut iteration.effects, &mut iteration.deferred);
        }
    }

    /// Sends a durable iteration's messages and answers its clients.
    fn dispatch(&mut self, iteration: Iteration) {
        let Iteration {
            mut effects,
            mut deferred,
            rpc_waiting,
            ..
        } = iteration;
        let effects = &mut effects;
        let deferred = &mut deferred;
        let mut books = BTreeSet::new();
        for effect in effects.drain(..) {
            match effect {
                Effect::Persist(_) | Effect::WipeLog | Effect::Reply { .. } => {}
                Effect::Send { to, message } => {
                    if self.rpc_links.contains(&to) && !self.transport.is_connected(&to) {
                        self.queue_rpc(to, message);
                    } else if let Err(error) = self.transport.send(&to, &message) {
                        tracing::debug!(peer = %to.short(), %error, "send failed");
                    }
                }
                Effect::Broadcast { message, except } => {
                    self.broadcast(&message, except);
                    if !self.rpc_links.is_empty() {
                        let links: Vec<NodeId> = self
                            .rpc_links
                            .iter()
                            .copied()
                            .filter(|l| Some(*l) != except && !self.transport.is_connected(l))
                            .collect();
                        for link in links {
                            self.queue_rpc(link, message.clone());
                        }
                    }
                }
                Effect::Disconnect { peer, reason } => self.transport.disconnect(&peer, reason),
                Effect::Misbehaviour { peer, what } => {
                    metrics::counter!("p2p_exchange_misbehaviour_total", "node" => self.status_base.node_label.clone())
                        .increment(1);
                    self.transport.report_misbehaviour(&peer, &what);
                }
                Effect::Trade(trade) => {
                    if self.stream.receiver_count() > 0
                        && let Ok(text) = serde_json::to_string(&StreamItem::Trade(&trade))
                    {
                        let _ = self.stream.send(text.into());
                    }
                }
                Effect::BookChanged(market) => {
                    books.insert(market);
                }
                Effect::Settled(id) => {
                    if let Some(at) = self.placed_at.remove(&id.0.0) {
                        let latency = at.elapsed();
                        metrics::histogram!("p2p_exchange_settlement_seconds", "node" => self.status_base.node_label.clone())
                            .record(latency.as_secs_f64());
                        if self.latencies.len() >= LATENCY_WINDOW {
                            self.latencies.pop_front();
                        }
                        self.latencies.push_back(latency.as_micros() as u64);
                    }
                }
            }
        }
        if self.stream.receiver_count() > 0 {
            for market in books {
                if let Some(book) = self.engine.book(&market) {
                    let depth = book.depth(10);
                    let item = StreamItem::Book {
                        market: &market,
                        bids: &depth.bids,
                        asks: &depth.asks,
                    };
                    if let Ok(text) = serde_json::to_string(&item) {
                        let _ = self.stream.send(text.into());
                    }
                }
            }
        }
        for item in deferred.drain(..) {
            match item {
                Deferred::One(tx, reply) => {
                    let _ = tx.send(reply);
                }
                Deferred::Many(tx, replies) => {
                    let _ = tx.send(replies);
                }
                Deferred::Read(request) => self.answer(request),
            }
        }
        self.answer_rpc(rpc_waiting);
    }

    /// Broadcasts over TCP. A relay (a batch or frontier of another origin) skips the peers
    /// directly connected to its origin: they have it from the origin itself. A stale list
    /// costs at most a duplicate, or a gap that anti-entropy fills.
    fn broadcast(&mut self, message: &Message, except: Option<NodeId>) {
        let origin = match message {
            Message::Batch(batch) => Some(batch.origin()),
            Message::Frontier(frontier) => Some(frontier.origin),
            _ => None,
        };
        let Some(origin) = origin.filter(|o| *o != self.engine.node_id()) else {
            self.transport.broadcast(message, except.as_ref());
            return;
        };
        let frame = match Codec::encode_frame(message) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::warn!(%error, "cannot encode a relay");
                return;
            }
        };
        let (mut sent, mut skipped) = (0, 0);
        for peer in &self.connected {
            if Some(*peer) == except {
                continue;
            }
            let has_it = *peer == origin
                || self
                    .neighbours
                    .get(peer)
                    .is_some_and(|n| n.contains(&origin));
            if has_it {
                skipped += 1;
            } else if self.transport.send_frame(peer, frame.clone()).is_ok() {
                sent += 1;
            }
        }
        self.relay.relays_sent += sent;
        self.relay.relays_skipped += skipped;
    }

    /// After a storage failure: drops the iteration's effects (nothing is sent or
    /// broadcast) and answers its clients 503; reads get no answer (the node is stopping).
    fn discard_iteration(&mut self, effects: &mut Vec<Effect>, deferred: &mut Vec<Deferred>) {
        effects.clear();
        let failed = || ClientError {
            kind: crate::engine::ClientErrorKind::Unavailable,
            code: "storage_failed",
            message: "the node's event log failed; the node is shutting down".to_owned(),
        };
        for item in deferred.drain(..) {
            match item {
                Deferred::One(tx, _) => {
                    let _ = tx.send(Err(failed()));
                }
                Deferred::Many(tx, replies) => {
                    let _ = tx.send(replies.iter().map(|_| Err(failed())).collect());
                }
                Deferred::Read(_) => {}
            }
        }
    }

    fn latency_percentile(&self, percent: usize) -> Option<f64> {
        let mut sorted: Vec<u64> = self.latencies.iter().copied().collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_unstable();
        let index = (sorted.len() * percent / 100).min(sorted.len() - 1);
        Some(sorted[index] as f64 / 1000.0)
    }

    fn answer(&mut self, request: Request) {
        match request {
            Request::Order(id, tx) => {
                let _ = tx.send(self.engine.order(id));
            }
            Request::Book(market, depth, tx) => {
                let _ = tx.send(self.engine.book(&market).map(|b| b.depth(depth)));
            }
            Request::Trades(market, limit, tx) => {
                let known = self.engine.markets().iter().any(|m| m.name == market);
                let _ = tx.send(known.then(|| self.engine.trades(&market, limit)));
            }
            Request::Status(tx) => {
                let _ = tx.send(Status {
                    node_id: self.status_base.node_id.clone(),
                    network_id: self.status_base.network_id.clone(),
                    p2p_addr: self.status_base.p2p_addr,
                    api_addr: self.status_base.api_addr,
                    rpc_addr: self.status_base.rpc_addr,
                    peers: self.transport.peers().len(),
                    settlement_ms_p50: self.latency_percentile(50),
                    settlement_ms_p99: self.latency_percentile(99),
                    relays_sent: self.relay.relays_sent,
                    relays_skipped: self.relay.relays_skipped,
                    batches_repaired: self.relay.batches_repaired,
                    engine: self.engine.status(),
                });
            }
            // Writes never reach here.
            Request::Place(_, tx) | Request::Cancel(_, tx) => {
                let _ = tx.send(Err(ClientError {
                    kind: crate::engine::ClientErrorKind::Unavailable,
                    code: "internal",
                    message: "misrouted request".to_owned(),
                }));
            }
            Request::PlaceMany(_, tx) => {
                let _ = tx.send(Vec::new());
            }
            Request::RpcDeliver { reply, .. } => {
                let _ = reply.send(Err("internal: misrouted request".to_owned()));
            }
            Request::RpcPoll { reply, .. } => {
                let _ = reply.send(RpcOutboxes::default());
            }
            Request::RpcReset(_) => {}
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StreamItem<'a> {
    Trade(&'a TradeView),
    Book {
        market: &'a str,
        bids: &'a [(rust_decimal::Decimal, rust_decimal::Decimal)],
        asks: &'a [(rust_decimal::Decimal, rust_decimal::Decimal)],
    },
}
