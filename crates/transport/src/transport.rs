//! The transport itself: shared state, the accept and redial loops, and the [`Handle`].

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use peer_protocol::{Codec, GoodbyeReason, Identity, Message, NodeId};
use peer_storage::{PeerStore, Source};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::backoff::{Policy, Redial};
use crate::connection::{self, ConnCtl, ConnStats};
use crate::network::{Listener, Network, TcpNetwork};
use crate::{Config, Error, PeerInfo, TransportEvent};

/// The redial backoff cap while a lost peer is in its fast window.
const FAST_RECONNECT_MAX: Duration = Duration::from_secs(1);
/// Connections being refused with an explanation at any one time.
const MAX_REFUSING: usize = 32;

/// Entry point: [`Transport::start`] binds the listener and spawns the transport's
/// tasks. The type only names the [`Network`] in use; everything afterwards goes
/// through the returned [`Handle`].
#[derive(Debug)]
pub struct Transport<N: Network = TcpNetwork> {
    _network: PhantomData<fn() -> N>,
}

impl<N: Network> Transport<N> {
    /// Validates `config`, binds `config.listen` on `network` and starts accepting and
    /// redialling.
    ///
    /// Returns the [`Handle`] and the bounded receiver of [`TransportEvent`]s. Keep
    /// draining the receiver: while it is full, peers' messages wait (and their
    /// heartbeats with them). `peers` is updated with successes, failures and
    /// misbehaviour, and consulted for bans.
    pub async fn start(
        config: Config,
        identity: Arc<Identity>,
        network: N,
        peers: Arc<dyn PeerStore>,
    ) -> Result<(Handle, mpsc::Receiver<TransportEvent>), Error> {
        config.validate()?;
        let listener = network.bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let (events, events_rx) = mpsc::channel(config.event_queue.max(1));
        let policy = Policy {
            initial: config.reconnect_initial,
            max: config.reconnect_max.max(config.reconnect_initial),
            threshold: config.breaker_threshold.max(1),
            cooldown: config.reconnect_max.max(config.reconnect_initial),
            fast_window: config.reconnect_fast_window,
            fast_max: FAST_RECONNECT_MAX.max(config.reconnect_initial),
        };
        let mut own = HashSet::new();
        if !local_addr.ip().is_unspecified() {
            own.insert(local_addr);
        }
        let node_id = identity.node_id();
        let shared = Arc::new(Shared {
            node_id,
            local_addr,
            identity,
            store: peers,
            connector: Box::new(network),
            events,
            state: Mutex::new(State {
                own,
                ..State::default()
            }),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            redial_wake: Notify::new(),
            refusals: Arc::new(Semaphore::new(MAX_REFUSING)),
            policy,
            next_conn_id: AtomicU64::new(1),
            config,
        });
        info!(node = %node_id.short(), addr = %local_addr, "transport listening");
        shared
            .tracker
            .spawn(accept_loop(Arc::clone(&shared), listener));
        shared.tracker.spawn(redial_loop(Arc::clone(&shared)));
        let owner = Arc::new(Owner {
            shutdown: shared.shutdown.clone(),
        });
        Ok((
            Handle {
                shared,
                _owner: owner,
            },
            events_rx,
        ))
    }
}

/// A cheap, cloneable handle to a running transport.
///
/// Every method is safe to call from any task; the non-`async` ones never block on
/// the network.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

/// Shuts the transport down when the last [`Handle`] is dropped (the transport's own
/// tasks hold the shared state, not an `Owner`, so they cannot keep it alive).
struct Owner {
    shutdown: CancellationToken,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("node_id", &self.shared.node_id)
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

impl Handle {
    /// The address the transport listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// This transport's node id.
    pub fn node_id(&self) -> NodeId {
        self.shared.node_id
    }

    /// Dials `addr` once and completes the handshake.
    ///
    /// Returns the peer's proven node id. If that peer was already connected, the
    /// existing connection is kept and its id returned. Does not retry; use
    /// [`Handle::add_peer_addr`] to keep an address connected.
    pub async fn dial(&self, addr: SocketAddr) -> Result<NodeId, Error> {
        let shared = Arc::clone(&self.shared);
        // Run the dial as a tracked task, so that dropping this future half-way never
        // leaves a half-registered connection behind.
        self.shared
            .tracker
            .spawn(async move { dial(&shared, addr).await })
            .await
            .unwrap_or(Err(Error::Shutdown))
    }

    /// Remembers `addr` (in the peer store too) and keeps it connected: it is dialled
    /// now and redialled whenever it is not connected, with exponential backoff and
    /// jitter from `reconnect_initial` up to `reconnect_max`, and a per-address circuit
    /// breaker. Our own addresses are ignored.
    ///
    /// At most `max_known_addrs` addresses are kept: a new one into a full set
    /// replaces the unconnected, discovered address with the most consecutive failed
    /// dials (never a bootstrap or manual one, never one without failures); if there
    /// is none, the new address is dropped (it stays in the peer store). Addresses
    /// learnt from peers therefore cannot grow this set without bound.
    pub fn add_peer_addr(&self, addr: SocketAddr, source: Source) {
        if addr.port() == 0 {
            return;
        }
        self.shared.store.upsert(addr, source, None, unix_now());
        {
            let mut state = self.shared.lock();
            if state.own.contains(&addr) {
                return;
            }
            if !state.known.contains_key(&addr)
                && state.known.len() >= self.shared.config.max_known_addrs
                && !evict_known(&mut state)
            {
                debug!(%addr, "too many known addresses; not keeping this one connected");
                return;
            }
            let now = Instant::now();
            let policy = self.shared.policy;
            let known = state
                .known
                .entry(addr)
                .or_insert_with(|| Known::new(&policy, now, source));
            if source.is_configured() {
                known.source = source;
            }
        }
        self.shared.redial_wake.notify_one();
    }

    /// Stops keeping `addr` connected (an existing connection stays up).
    pub fn remove_peer_addr(&self, addr: SocketAddr) {
        self.shared.lock().known.remove(&addr);
    }

    /// The addresses kept connected and their redial state, ordered by address.
    pub fn known_addrs(&self) -> Vec<KnownAddr> {
        let state = self.shared.lock();
        let mut known: Vec<KnownAddr> = state
            .known
            .iter()
            .map(|(addr, k)| KnownAddr {
                addr: *addr,
                node_id: k.node_id,
                breaker: k.redial.breaker(),
                failures: k.redial.failures(),
            })
            .collect();
        known.sort_by_key(|k| k.addr);
        known
    }

    /// Encodes `message` and queues it for `peer` without waiting.
    ///
    /// A full queue means the peer reads too slowly: it is disconnected (with a
    /// warning) and [`Error::QueueFull`] returned.
    pub fn send(&self, peer: &NodeId, message: &Message) -> Result<(), Error> {
        let frame = Codec::encode_frame(message)?;
        self.send_frame(peer, frame)
    }

    /// Queues a complete frame (from [`Codec::encode_frame`]) for `peer`; see
    /// [`Handle::send`].
    pub fn send_frame(&self, peer: &NodeId, frame: Bytes) -> Result<(), Error> {
        let target = {
            let state = self.shared.lock();
            state
                .peers
                .get(peer)
                .map(|p| (p.tx.clone(), Arc::clone(&p.ctl)))
        };
        let Some((tx, ctl)) = target else {
            return Err(Error::NotConnected(*peer));
        };
        connection::queue_frame(peer, &tx, &ctl, frame)
    }

    /// Free slots in `peer`'s outbound queue (`None` if not connected): a sender of
    /// bulk data (anti-entropy) paces itself on this instead of overrunning the queue,
    /// which would disconnect the peer.
    pub fn send_capacity(&self, peer: &NodeId) -> Option<usize> {
        self.shared.lock().peers.get(peer).map(|p| p.tx.capacity())
    }

    /// Encodes `message` once and queues the same bytes for every connected peer
    /// except `except`. Returns how many peers it was queued for; peers with a full
    /// queue are disconnected as in [`Handle::send`].
    pub fn broadcast(&self, message: &Message, except: Option<&NodeId>) -> usize {
        match Codec::encode_frame(message) {
            Ok(frame) => self.broadcast_frame(frame, except),
            Err(e) => {
                warn!(kind = message.kind(), error = %e, "cannot encode message for broadcast");
                0
            }
        }
    }

    /// Queues one complete frame for every connected peer except `except`; see
    /// [`Handle::broadcast`].
    pub fn broadcast_frame(&self, frame: Bytes, except: Option<&NodeId>) -> usize {
        let targets: Vec<_> = {
            let state = self.shared.lock();
            state
                .peers
                .iter()
                .filter(|(id, _)| Some(*id) != except)
                .map(|(id, p)| (*id, p.tx.clone(), Arc::clone(&p.ctl)))
                .collect()
        };
        targets
            .into_iter()
            .filter(|(id, tx, ctl)| connection::queue_frame(id, tx, ctl, frame.clone()).is_ok())
            .count()
    }

    /// The connected peers, ordered by node id.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let state = self.shared.lock();
        let mut peers: Vec<PeerInfo> = state
            .peers
            .iter()
            .map(|(id, p)| PeerInfo {
                node_id: *id,
                addr: p.addr,
                listen_addr: p.listen_addr,
                inbound: p.inbound,
                rtt: p.stats.rtt(),
                connected_since: p.connected_since,
                agent: p.agent.clone(),
                bytes_in: p.stats.bytes_in.load(Ordering::Relaxed),
                bytes_out: p.stats.bytes_out.load(Ordering::Relaxed),
            })
            .collect();
        peers.sort_by_key(|p| p.node_id);
        peers
    }

    /// Connections (inbound and outbound) whose handshake is still running.
    pub fn handshakes_in_progress(&self) -> usize {
        self.shared.lock().handshaking
    }

    /// Whether `peer` is connected.
    pub fn is_connected(&self, peer: &NodeId) -> bool {
        self.shared.lock().peers.contains_key(peer)
    }

    /// Closes the connection to `peer` with `Goodbye{reason}`. If its address is kept
    /// connected ([`Handle::add_peer_addr`]) it will be redialled; call
    /// [`Handle::remove_peer_addr`] first to prevent that.
    pub fn disconnect(&self, peer: &NodeId, reason: GoodbyeReason) {
        let ctl = self
            .shared
            .lock()
            .peers
            .get(peer)
            .map(|p| Arc::clone(&p.ctl));
        if let Some(ctl) = ctl {
            let text = format!("disconnected locally: {reason:?}");
            ctl.close(Some(reason), text);
        }
    }

    /// Reports that `peer` misbehaved (for example sent an event with a bad
    /// signature): it is disconnected with `Goodbye{Misbehaviour}` and the
    /// misbehaviour recorded in the peer store, which bans repeat offenders.
    pub fn report_misbehaviour(&self, peer: &NodeId, what: &str) {
        let target = {
            let state = self.shared.lock();
            state
                .peers
                .get(peer)
                .map(|p| (p.listen_addr, Arc::clone(&p.ctl)))
        };
        let Some((listen_addr, ctl)) = target else {
            return;
        };
        warn!(peer = %peer.short(), addr = %listen_addr, what, "peer misbehaved");
        self.shared.record_misbehaviour(listen_addr);
        ctl.close(
            Some(GoodbyeReason::Misbehaviour),
            format!("misbehaviour: {what}"),
        );
    }

    /// Says `Goodbye{Shutdown}` to every peer, closes the listener, ends every task
    /// and flushes the peer store. Returns when all of that is done; calling it again
    /// returns at once.
    pub async fn shutdown(&self) {
        self.shared.shutdown.cancel();
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
        if let Err(e) = self.shared.store.flush() {
            warn!(error = %e, "cannot flush the peer store");
        }
    }

    /// Whether [`Handle::shutdown`] has been called.
    pub fn is_shut_down(&self) -> bool {
        self.shared.shutdown.is_cancelled()
    }
}

/// An address the transport keeps connected, as [`Handle::known_addrs`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownAddr {
    /// The address dialled.
    pub addr: SocketAddr,
    /// The node id found there, once a dial succeeded.
    pub node_id: Option<NodeId>,
    /// The address's circuit breaker.
    pub breaker: crate::BreakerState,
    /// Consecutive failed dials.
    pub failures: u32,
}

/// A boxed byte stream, so connection code is not generic over the network.
pub(crate) type BoxIo = Box<dyn Io>;

/// The byte stream a connection runs on.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

type ConnectFuture = Pin<Box<dyn Future<Output = io::Result<BoxIo>> + Send>>;

/// [`Network::connect`] with the stream type erased.
trait Connector: Send + Sync + 'static {
    fn connect_boxed(&self, local: SocketAddr, remote: SocketAddr) -> ConnectFuture;
}

impl<N: Network> Connector for N {
    fn connect_boxed(&self, local: SocketAddr, remote: SocketAddr) -> ConnectFuture {
        let network = self.clone();
        Box::pin(async move {
            let stream = Network::connect(&network, local, remote).await?;
            Ok(Box::new(stream) as BoxIo)
        })
    }
}

/// Everything the transport's tasks share.
pub(crate) struct Shared {
    pub config: Config,
    pub node_id: NodeId,
    pub local_addr: SocketAddr,
    pub identity: Arc<Identity>,
    pub store: Arc<dyn PeerStore>,
    connector: Box<dyn Connector>,
    pub events: mpsc::Sender<TransportEvent>,
    state: Mutex<State>,
    pub shutdown: CancellationToken,
    pub tracker: TaskTracker,
    redial_wake: Notify,
    /// Bounds the tasks that explain refusals to connections we cannot serve.
    refusals: Arc<Semaphore>,
    policy: Policy,
    next_conn_id: AtomicU64,
}

#[derive(Default)]
pub(crate) struct State {
    pub peers: HashMap<NodeId, PeerEntry>,
    /// Addresses kept connected.
    known: HashMap<SocketAddr, Known>,
    /// Addresses that turned out to be ourselves.
    own: HashSet<SocketAddr>,
    inbound_per_ip: HashMap<IpAddr, usize>,
    handshaking: usize,
    /// Dials running, by address; dropping the sender wakes those waiting on it.
    in_flight: HashMap<SocketAddr, watch::Sender<()>>,
}

/// One established connection in the peer table.
pub(crate) struct PeerEntry {
    pub conn_id: u64,
    pub dialer: NodeId,
    pub tx: mpsc::Sender<Bytes>,
    pub ctl: Arc<ConnCtl>,
    pub stats: Arc<ConnStats>,
    pub addr: SocketAddr,
    pub listen_addr: SocketAddr,
    pub inbound: bool,
    pub connected_since: SystemTime,
    pub agent: String,
}

/// A known address and its redial schedule.
struct Known {
    redial: Redial,
    dialing: bool,
    node_id: Option<NodeId>,
    /// Bootstrap and manual addresses are never evicted.
    source: Source,
}

impl Known {
    fn new(policy: &Policy, now: Instant, source: Source) -> Self {
        Known {
            redial: Redial::new(policy, now),
            dialing: false,
            node_id: None,
            source,
        }
    }
}

/// Removes the known address most worth forgetting (see [`Handle::add_peer_addr`]);
/// returns whether there was one.
fn evict_known(state: &mut State) -> bool {
    let connected: HashSet<SocketAddr> = state.peers.values().map(|p| p.listen_addr).collect();
    let victim = state
        .known
        .iter()
        .filter(|(addr, k)| {
            !k.dialing
                && !k.source.is_configured()
                && k.redial.failures() > 0
                && !connected.contains(addr)
                && !k.node_id.is_some_and(|id| state.peers.contains_key(&id))
        })
        // Most failures first; ties by the highest address, so the choice is stable.
        .max_by_key(|(addr, k)| (k.redial.failures(), **addr))
        .map(|(addr, _)| *addr);
    match victim {
        Some(addr) => {
            debug!(%addr, "forgetting a failing address to make room for another");
            state.known.remove(&addr);
            true
        }
        None => false,
    }
}

/// What to do with a freshly authenticated connection.
pub(crate) enum Admission {
    /// The peer was not connected: keep this connection.
    New,
    /// Keep this connection and close the older one.
    Replace(Arc<ConnCtl>),
    /// Another connection to the peer wins: close this one.
    Duplicate,
    /// No room for another peer.
    Full,
}

/// How long an established connection that has carried frames may go without one
/// before a new, authenticated connection from the same peer replaces it whatever
/// its dialer.
///
/// Every connection sends a `Ping` each heartbeat, starting at once, so a live one
/// is never quiet for much more than one; half a heartbeat more absorbs scheduling
/// jitter.
pub(crate) fn stale_after(heartbeat_interval: Duration) -> Duration {
    heartbeat_interval + heartbeat_interval / 2
}

/// The rule both ends of a pair of connections compute identically.
///
/// Two connections dialled by different nodes (a simultaneous dial): keep the one
/// dialled by the lower node id. Two dialled by the same node: that node only does
/// so after it lost (or restarted without) the first one, so the newer wins.
pub(crate) fn resolve_duplicate(
    existing_dialer: NodeId,
    new_dialer: NodeId,
    a: NodeId,
    b: NodeId,
) -> bool {
    if existing_dialer == new_dialer {
        return true;
    }
    new_dialer == a.min(b)
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // The state's invariants hold between statements, so a panic elsewhere while
        // holding the lock leaves nothing half-done worth refusing to read.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Records misbehaviour at `addr` and, so that reconnecting from (or claiming)
    /// another port does not escape a ban, against its whole IP
    /// ([`peer_storage::ip_wide`]). Loopback is exempt from the IP-wide record: the
    /// nodes of one host all share it, and one bad local node must not cut them all.
    pub fn record_misbehaviour(&self, addr: SocketAddr) {
        metrics::counter!("transport_misbehaviour_total").increment(1);
        let now = unix_now();
        self.store.record_misbehaviour(addr, now);
        if !addr.ip().to_canonical().is_loopback() {
            self.store
                .record_misbehaviour(peer_storage::ip_wide(addr.ip()), now);
        }
    }

    /// Whether `addr` or its whole IP is banned.
    pub fn is_banned(&self, addr: SocketAddr) -> bool {
        self.store.is_banned(addr, unix_now())
    }

    /// Decides whether an authenticated connection to `peer` joins the peer table and
    /// inserts it if so, sending `Disconnected` (for a replaced connection) and
    /// `connected` through `permits` under the same lock.
    pub fn admit(
        &self,
        peer: NodeId,
        entry: PeerEntry,
        permits: Option<mpsc::PermitIterator<'_, TransportEvent>>,
        connected: TransportEvent,
    ) -> Admission {
        let mut state = self.lock();
        let admission = match state.peers.get(&peer) {
            Some(existing) => {
                let silent = existing.stats.silent_for();
                let stale = stale_after(self.config.heartbeat_interval);
                if resolve_duplicate(existing.dialer, entry.dialer, self.node_id, peer) {
                    Admission::Replace(Arc::clone(&existing.ctl))
                } else if silent.is_some_and(|silent| silent > stale) {
                    // The old connection worked, then missed a heartbeat, while the
                    // peer proved itself on a new one: it crashed or lost the link
                    // silently and came back. Waiting for the idle timeout would
                    // refuse it until then. (In a simultaneous dial the other
                    // connection is young, or its heartbeats are flowing, so the
                    // deterministic rule above decides.)
                    info!(
                        peer = %peer.short(), silent = ?silent,
                        "replacing a silent connection with the peer's new one"
                    );
                    Admission::Replace(Arc::clone(&existing.ctl))
                } else {
                    Admission::Duplicate
                }
            }
            None if state.peers.len() >= self.config.max_peers => Admission::Full,
            None => Admission::New,
        };
        if matches!(admission, Admission::New | Admission::Replace(_)) {
            let listen_addr = entry.listen_addr;
            state.peers.insert(peer, entry);
            // Remember which known address leads to this peer.
            if let Some(known) = state.known.get_mut(&listen_addr) {
                known.node_id = Some(peer);
            }
            metrics::gauge!("transport_peers").set(state.peers.len() as f64);
            if let Some(mut permits) = permits {
                if matches!(admission, Admission::Replace(_)) {
                    let reason = crate::connection::REPLACED.to_owned();
                    if let Some(permit) = permits.next() {
                        permit.send(TransportEvent::Disconnected { peer, reason });
                    }
                }
                if let Some(permit) = permits.next() {
                    permit.send(connected);
                }
            }
        }
        admission
    }

    /// Removes connection `conn_id` of `peer` if it is still the current one, sends
    /// `disconnected` through `permit` under the same lock, and schedules a quick
    /// redial of its known address. Returns whether it was current.
    pub fn remove(
        &self,
        peer: &NodeId,
        conn_id: u64,
        addrs: &[SocketAddr],
        permit: Option<mpsc::Permit<'_, TransportEvent>>,
        disconnected: TransportEvent,
    ) -> bool {
        let mut state = self.lock();
        if state.peers.get(peer).is_none_or(|p| p.conn_id != conn_id) {
            return false;
        }
        state.peers.remove(peer);
        if let Some(permit) = permit {
            permit.send(disconnected);
        }
        metrics::gauge!("transport_peers").set(state.peers.len() as f64);
        let now = Instant::now();
        let policy = self.policy;
        for known in state.known.iter_mut().filter_map(|(addr, known)| {
            (known.node_id == Some(*peer) || addrs.contains(addr)).then_some(known)
        }) {
            known.redial.on_disconnected(&policy, now, rand::random());
        }
        drop(state);
        self.redial_wake.notify_one();
        true
    }

    /// Takes a handshake slot, or says why there is none.
    pub fn begin_handshake(
        self: &Arc<Self>,
        inbound_ip: Option<IpAddr>,
    ) -> Result<SlotGuard, Error> {
        let mut state = self.lock();
        if state.peers.len() + state.handshaking >= self.config.max_peers {
            return Err(Error::TooManyPeers);
        }
        if let Some(ip) = inbound_ip {
            let count = state.inbound_per_ip.entry(ip).or_default();
            if *count >= self.config.max_inbound_per_ip {
                return Err(Error::TooManyPeers);
            }
            *count += 1;
        }
        state.handshaking += 1;
        Ok(SlotGuard {
            shared: Arc::clone(self),
            inbound_ip,
            handshaking: true,
        })
    }
}

/// Holds a handshake slot, then (for inbound connections) a per-IP slot, until
/// dropped.
pub(crate) struct SlotGuard {
    shared: Arc<Shared>,
    inbound_ip: Option<IpAddr>,
    handshaking: bool,
}

impl SlotGuard {
    /// The handshake is over: free the handshake slot, keep the per-IP one.
    pub fn handshake_done(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            let mut state = self.shared.lock();
            state.handshaking = state.handshaking.saturating_sub(1);
        }
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if self.handshaking {
            state.handshaking = state.handshaking.saturating_sub(1);
        }
        if let Some(ip) = self.inbound_ip
            && let Some(count) = state.inbound_per_ip.get_mut(&ip)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.inbound_per_ip.remove(&ip);
            }
        }
    }
}

/// Seconds since the Unix epoch, the peer store's clock.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One outbound attempt: checks, connect, handshake, registration.
async fn dial(shared: &Arc<Shared>, addr: SocketAddr) -> Result<NodeId, Error> {
    let result = dial_once(shared, addr).await;
    dial_finished(shared, addr, &result);
    result
}

async fn dial_once(shared: &Arc<Shared>, addr: SocketAddr) -> Result<NodeId, Error> {
    if shared.shutdown.is_cancelled() {
        return Err(Error::Shutdown);
    }
    // One dial per address at a time: two connections from the same dialer could be
    // admitted in opposite orders by the two ends, and both would be lost. A second
    // caller waits for the first and reuses its connection.
    let _in_flight = loop {
        let mut done = {
            let mut state = shared.lock();
            if state.own.contains(&addr) {
                return Err(Error::SelfConnection { addr });
            }
            if let Some((id, _)) = state
                .peers
                .iter()
                .find(|(_, p)| p.listen_addr == addr || p.addr == addr)
            {
                return Ok(*id);
            }
            match state.in_flight.get(&addr) {
                Some(sender) => sender.subscribe(),
                None => {
                    state.in_flight.insert(addr, watch::channel(()).0);
                    break InFlight {
                        shared: Arc::clone(shared),
                        addr,
                    };
                }
            }
        };
        // Resolves when the other dial drops its sender.
        tokio::select! {
            () = shared.shutdown.cancelled() => return Err(Error::Shutdown),
            _ = done.changed() => {}
        }
    };
    if shared.is_banned(addr) {
        return Err(Error::Banned { addr });
    }
    let slot = shared.begin_handshake(None)?;
    metrics::counter!("transport_dials_total").increment(1);
    let timeout = shared.config.handshake_timeout;
    let connect = shared.connector.connect_boxed(shared.local_addr, addr);
    let io = tokio::select! {
        () = shared.shutdown.cancelled() => return Err(Error::Shutdown),
        r = tokio::time::timeout(timeout, connect) => match r {
            Ok(io) => io?,
            Err(_) => return Err(Error::ConnectTimeout { addr }),
        },
    };
    let (done_tx, done_rx) = oneshot::channel();
    let task = connection::run(
        Arc::clone(shared),
        io,
        addr,
        Some(addr),
        slot,
        Some(done_tx),
    );
    shared.tracker.spawn(task);
    done_rx.await.unwrap_or(Err(Error::Shutdown))
}

/// Marks a dial to `addr` in flight until dropped.
struct InFlight {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.lock().in_flight.remove(&self.addr);
    }
}

/// Updates the known address's schedule and the peer store after a dial.
fn dial_finished(shared: &Shared, addr: SocketAddr, result: &Result<NodeId, Error>) {
    let now = Instant::now();
    let policy = shared.policy;
    let mut state = shared.lock();
    match result {
        Ok(id) => {
            if let Some(known) = state.known.get_mut(&addr) {
                known.dialing = false;
                known.node_id = Some(*id);
                known.redial.on_success(&policy);
            }
            // The peer store hears of the success from the connection itself (a
            // dial that found the peer already connected is not a contact).
        }
        Err(Error::SelfConnection { .. }) => {
            info!(%addr, "address is our own; not dialling it again");
            state.own.insert(addr);
            state.known.remove(&addr);
        }
        Err(Error::Shutdown) => {}
        Err(Error::TooManyPeers) => {
            // Our own limit, not the address's fault: try again later, no backoff.
            if let Some(known) = state.known.get_mut(&addr) {
                known.dialing = false;
            }
        }
        Err(e) => {
            if let Some(known) = state.known.get_mut(&addr) {
                known.dialing = false;
                known.redial.on_failure(&policy, now, rand::random());
            }
            drop(state);
            debug!(%addr, error = %e, "dial failed");
            metrics::counter!("transport_dial_failures_total").increment(1);
            if !matches!(e, Error::Banned { .. } | Error::TooManyPeers) {
                shared.store.record_failure(addr, unix_now());
            }
        }
    }
}

async fn accept_loop<L: Listener>(shared: Arc<Shared>, mut listener: L) {
    loop {
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (io, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Typically out of file descriptors: back off briefly, keep serving.
                warn!(error = %e, "accept failed");
                tokio::select! {
                    () = shared.shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
        };
        if shared.is_banned(remote) {
            // A banned IP gets no handshake slot and no explanation.
            debug!(%remote, "refusing inbound connection: banned");
            metrics::counter!("transport_refused_total", "reason" => "banned").increment(1);
            drop(io);
            continue;
        }
        let io: BoxIo = Box::new(io);
        match shared.begin_handshake(Some(remote.ip())) {
            Ok(slot) => {
                let task = connection::run(Arc::clone(&shared), io, remote, None, slot, None);
                shared.tracker.spawn(task);
            }
            Err(_) => {
                debug!(%remote, "refusing inbound connection: no room");
                metrics::counter!("transport_refused_total", "reason" => "too_many_peers")
                    .increment(1);
                // Explaining the refusal is a courtesy bounded by a few tasks; under a
                // flood, further connections are just closed.
                if let Ok(permit) = Arc::clone(&shared.refusals).try_acquire_owned() {
                    let linger = shared.config.handshake_timeout.min(Duration::from_secs(1));
                    shared.tracker.spawn(async move {
                        connection::refuse(io, GoodbyeReason::TooManyPeers, linger).await;
                        drop(permit);
                    });
                }
            }
        }
    }
    debug!("accept loop ended");
}

async fn redial_loop(shared: Arc<Shared>) {
    let tick = (shared.config.reconnect_initial / 2)
        .clamp(Duration::from_millis(10), Duration::from_millis(250));
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => break,
            () = shared.redial_wake.notified() => {}
            () = tokio::time::sleep(tick) => {}
        }
        let due = due_addrs(&shared);
        for addr in due {
            let shared = Arc::clone(&shared);
            shared.tracker.clone().spawn(async move {
                let _ = dial(&shared, addr).await;
            });
        }
    }
    debug!("redial loop ended");
}

/// Known addresses to dial now; marks them as dialling.
fn due_addrs(shared: &Shared) -> Vec<SocketAddr> {
    let now = Instant::now();
    let mut state = shared.lock();
    // Never start more dials than there are free peer slots: a dial refused locally
    // would only cost the address backoff it did not deserve.
    let free = shared
        .config
        .max_peers
        .saturating_sub(state.peers.len() + state.handshaking);
    let State {
        peers, known, own, ..
    } = &mut *state;
    let connected: HashSet<SocketAddr> = peers.values().map(|p| p.listen_addr).collect();
    let mut due = Vec::new();
    for (addr, k) in known.iter_mut() {
        if due.len() >= free {
            break;
        }
        let is_connected =
            connected.contains(addr) || k.node_id.is_some_and(|id| peers.contains_key(&id));
        if k.dialing || is_connected || own.contains(addr) || !k.redial.ready(now) {
            continue;
        }
        k.dialing = true;
        due.push(*addr);
    }
    drop(state);
    due.retain(|addr| {
        let banned = shared.is_banned(*addr);
        if banned {
            // Keep it known but quiet until the ban expires.
            let mut state = shared.lock();
            if let Some(k) = state.known.get_mut(addr) {
                k.dialing = false;
                k.redial.on_failure(&shared.policy, now, rand::random());
            }
        }
        !banned
    });
    due
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(byte: u8) -> NodeId {
        NodeId::from_bytes([byte; 32])
    }

    #[test]
    fn simultaneous_dials_keep_the_lower_ids_connection_on_both_sides() {
        let (low, high) = (id(1), id(2));
        // At `low`: existing = dialled by high (inbound), new = dialled by low.
        assert!(resolve_duplicate(high, low, low, high));
        // At `high`: existing = dialled by low, new = dialled by high -> drop new.
        assert!(!resolve_duplicate(low, high, high, low));
        // The same two connections in the other arrival order.
        assert!(!resolve_duplicate(low, high, low, high));
        assert!(resolve_duplicate(high, low, high, low));
    }

    #[test]
    fn a_redial_from_the_same_dialer_replaces_the_old_connection() {
        let (a, b) = (id(1), id(2));
        assert!(resolve_duplicate(a, a, a, b));
        assert!(resolve_duplicate(b, b, a, b));
    }
}
