//! One connection: the handshake, then a reader loop (heartbeats, idle timeout,
//! inbound messages) and a writer task that owns the socket's write half.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use peer_protocol::{
    Codec, GoodbyeReason, Hello, HelloAck, Message, NodeId, PROTOCOL_VERSION, handshake_transcript,
    verify,
};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::transport::{Admission, BoxIo, PeerEntry, Shared, SlotGuard, unix_now};
use crate::{Error, TransportEvent};

/// The reason given for a connection another one replaced.
pub(crate) const REPLACED: &str = "replaced by a newer connection";
/// How long a closing connection waits for its writer to flush the last frames.
const WRITER_LINGER: Duration = Duration::from_secs(1);
/// Frames the writer writes before it flushes, when more are queued.
const WRITE_BATCH: usize = 64;
/// The largest frame accepted before the handshake completes: a `Hello` with the
/// longest network id and agent, a `HelloAck` or a `Goodbye` take under 400 bytes.
const HANDSHAKE_MAX_FRAME_LEN: usize = 4 * 1024;
/// Read buffer growth step; the buffer only grows with bytes that arrived.
const READ_CHUNK: usize = 16 * 1024;

/// Why a connection closes, set once by whoever closes it first.
#[derive(Debug, Clone)]
pub(crate) struct Close {
    /// The `Goodbye` to send, if any (none for a slow or vanished peer).
    pub goodbye: Option<GoodbyeReason>,
    /// For the `Disconnected` event and logs.
    pub text: String,
}

/// Lets other tasks close a connection.
#[derive(Debug)]
pub(crate) struct ConnCtl {
    token: CancellationToken,
    close: Mutex<Option<Close>>,
}

impl ConnCtl {
    fn new(parent: &CancellationToken) -> Self {
        ConnCtl {
            token: parent.child_token(),
            close: Mutex::new(None),
        }
    }

    /// Closes the connection; the first reason given wins.
    pub fn close(&self, goodbye: Option<GoodbyeReason>, text: impl Into<String>) {
        {
            let mut close = self.close.lock().unwrap_or_else(PoisonError::into_inner);
            if close.is_none() {
                *close = Some(Close {
                    goodbye,
                    text: text.into(),
                });
            }
        }
        self.token.cancel();
    }

    fn reason(&self) -> Option<Close> {
        self.close
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Per-connection counters readable by [`crate::Handle::peers`].
#[derive(Debug)]
pub(crate) struct ConnStats {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Microseconds; `u64::MAX` until the first `Pong`.
    rtt_micros: AtomicU64,
    /// The last `Ping` sent and when.
    ping: Mutex<Option<(u64, Instant)>>,
    /// When the connection was admitted; the base of `last_heard_micros`.
    since: Instant,
    /// When a frame last arrived, in microseconds after `since`.
    last_heard_micros: AtomicU64,
    /// Whether any frame arrived since admission.
    heard_any: AtomicBool,
}

impl ConnStats {
    fn new() -> Self {
        ConnStats {
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            rtt_micros: AtomicU64::new(u64::MAX),
            ping: Mutex::new(None),
            since: Instant::now(),
            last_heard_micros: AtomicU64::new(0),
            heard_any: AtomicBool::new(false),
        }
    }

    /// The peer proved itself alive just now (a frame, or the handshake).
    fn alive(&self) {
        let micros = u64::try_from(self.since.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_heard_micros.fetch_max(micros, Ordering::Relaxed);
    }

    /// A frame arrived just now.
    fn heard(&self) {
        self.alive();
        self.heard_any.store(true, Ordering::Relaxed);
    }

    /// How long a connection that once worked has been silent: `None` until a frame
    /// arrived after admission (a connection whose peer has not started talking yet
    /// is young, not stale), else the time since the last frame.
    pub fn silent_for(&self) -> Option<Duration> {
        if !self.heard_any.load(Ordering::Relaxed) {
            return None;
        }
        let heard = Duration::from_micros(self.last_heard_micros.load(Ordering::Relaxed));
        Some(self.since.elapsed().saturating_sub(heard))
    }

    pub fn rtt(&self) -> Option<Duration> {
        match self.rtt_micros.load(Ordering::Relaxed) {
            u64::MAX => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    /// Remembers the last `Ping` sent; only its `Pong` is timed.
    fn ping_sent(&self, nonce: u64) {
        *self.ping.lock().unwrap_or_else(PoisonError::into_inner) = Some((nonce, Instant::now()));
    }

    /// Measures the RTT if `nonce` answers the last `Ping`.
    fn pong(&self, nonce: u64) {
        let sent_at = {
            let mut ping = self.ping.lock().unwrap_or_else(PoisonError::into_inner);
            match *ping {
                Some((sent_nonce, sent_at)) if sent_nonce == nonce => {
                    *ping = None;
                    Some(sent_at)
                }
                _ => None,
            }
        };
        if let Some(sent_at) = sent_at {
            let rtt = sent_at.elapsed();
            let micros = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX - 1);
            self.rtt_micros
                .store(micros.min(u64::MAX - 1), Ordering::Relaxed);
            metrics::histogram!("transport_rtt_seconds").record(rtt.as_secs_f64());
        }
    }
}

/// Queues a frame without waiting; a full queue disconnects the slow peer.
pub(crate) fn queue_frame(
    peer: &NodeId,
    tx: &mpsc::Sender<Bytes>,
    ctl: &ConnCtl,
    frame: Bytes,
) -> Result<(), Error> {
    match tx.try_send(frame) {
        Ok(()) => {
            metrics::counter!("transport_messages_out_total").increment(1);
            Ok(())
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            warn!(peer = %peer.short(), "outbound queue full; disconnecting slow peer");
            metrics::counter!("transport_drops_total", "reason" => "queue_full").increment(1);
            ctl.close(None, "outbound queue full (slow peer)");
            Err(Error::QueueFull(*peer))
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Err(Error::NotConnected(*peer)),
    }
}

/// Sends `Goodbye{reason}` to a connection we will not serve, then closes it.
pub(crate) async fn refuse(io: BoxIo, reason: GoodbyeReason, linger: Duration) {
    let (mut rd, mut wr) = tokio::io::split(io);
    let _ = tokio::time::timeout(linger, goodbye_and_close(&mut rd, &mut wr, reason)).await;
}

/// Writes a `Goodbye`, half-closes, and waits for the peer to close too.
async fn goodbye_and_close(
    rd: &mut ReadHalf<BoxIo>,
    wr: &mut WriteHalf<BoxIo>,
    reason: GoodbyeReason,
) {
    if write_message(wr, &Message::Goodbye { reason })
        .await
        .is_ok()
    {
        let _ = wr.shutdown().await;
        drain_until_closed(rd).await;
    }
}

/// Reads and discards until the peer closes. Closing a socket with unread bytes in it
/// makes the kernel send a reset, which can destroy our `Goodbye` before the peer
/// reads it; callers bound this with a timeout.
async fn drain_until_closed(rd: &mut ReadHalf<BoxIo>) {
    let mut scratch = [0u8; 1024];
    while let Ok(n) = rd.read(&mut scratch).await {
        if n == 0 {
            break;
        }
    }
}

/// Reads frames into an owned buffer, so bytes read past the handshake are kept for
/// the session. Cancel-safe: the only await is a `read_buf`.
struct FrameReader {
    io: ReadHalf<BoxIo>,
    buf: BytesMut,
    codec: Codec,
}

impl FrameReader {
    fn new(io: ReadHalf<BoxIo>, max_frame_len: usize) -> Self {
        FrameReader {
            io,
            buf: BytesMut::new(),
            codec: Codec::new(max_frame_len),
        }
    }

    /// The next message; `Ok(None)` at a clean end of stream.
    async fn next(&mut self, stats: Option<&ConnStats>) -> Result<Option<Message>, Error> {
        loop {
            let skipped = self.codec.skipped_unknown();
            let decoded = self.codec.decode(&mut self.buf);
            if self.codec.skipped_unknown() != skipped {
                debug!("ignored a message of an unknown type (a newer peer)");
            }
            if let Some(message) = decoded? {
                // Do not keep a large frame's buffer for the connection's lifetime.
                if self.buf.is_empty() && self.buf.capacity() > 4 * READ_CHUNK {
                    self.buf = BytesMut::new();
                }
                return Ok(Some(message));
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            let n = self.io.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into())
                };
            }
            metrics::counter!("transport_bytes_in_total").increment(n as u64);
            if let Some(stats) = stats {
                stats.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
}

async fn write_message<W: AsyncWrite + Unpin>(wr: &mut W, message: &Message) -> Result<(), Error> {
    let frame = Codec::encode_frame(message)?;
    wr.write_all(&frame).await?;
    wr.flush().await?;
    metrics::counter!("transport_bytes_out_total").increment(frame.len() as u64);
    Ok(())
}

/// Runs one connection to its end: handshake, admission, session, cleanup.
///
/// `dialed` is the address we dialled (outbound) or `None` (inbound); `done` gets the
/// handshake's outcome for [`crate::Handle::dial`].
pub(crate) async fn run(
    shared: Arc<Shared>,
    io: BoxIo,
    remote: SocketAddr,
    dialed: Option<SocketAddr>,
    mut slot: SlotGuard,
    done: Option<oneshot::Sender<Result<NodeId, Error>>>,
) {
    let inbound = dialed.is_none();
    let (rd, mut wr) = tokio::io::split(io);
    // Until the peer has proven who it is, a frame is a few hundred bytes at most:
    // an unauthenticated connection may not make us buffer megabytes.
    let mut reader = FrameReader::new(rd, HANDSHAKE_MAX_FRAME_LEN.min(shared.config.max_frame_len));

    let handshake = tokio::select! {
        () = shared.shutdown.cancelled() => Err(Error::Shutdown),
        r = tokio::time::timeout(
            shared.config.handshake_timeout,
            handshake(&shared, &mut reader, &mut wr, remote, dialed),
        ) => r.unwrap_or(Err(Error::HandshakeTimeout { addr: remote })),
    };
    slot.handshake_done();
    reader.codec = Codec::new(shared.config.max_frame_len);
    let hello = match handshake {
        Ok(hello) => hello,
        Err(e) => {
            debug!(%remote, inbound, error = %e, "handshake failed");
            metrics::counter!("transport_handshake_failures_total").increment(1);
            if let Some(done) = done {
                let _ = done.send(Err(e));
            }
            return;
        }
    };

    let peer = hello.node_id;
    let listen_addr = SocketAddr::new(remote.ip(), hello.listen_port);
    if let Some(addr) = dialed {
        shared
            .store
            .record_success(addr, Some(peer.to_string()), unix_now());
    }
    let ctl = Arc::new(ConnCtl::new(&shared.shutdown));
    let stats = Arc::new(ConnStats::new());
    let (tx, rx) = mpsc::channel::<Bytes>(shared.config.outbound_queue.max(1));
    let conn_id = shared.conn_id();
    let entry = PeerEntry {
        conn_id,
        dialer: if inbound { peer } else { shared.node_id },
        tx: tx.clone(),
        ctl: Arc::clone(&ctl),
        stats: Arc::clone(&stats),
        addr: remote,
        listen_addr,
        inbound,
        connected_since: SystemTime::now(),
        agent: hello.agent.clone(),
    };

    // Reserve room for the events first (this may wait for the node to drain), so that
    // the table change and its events happen together under the state lock: the node
    // sees each peer's Connected / Disconnected in the order they happened.
    let permits = tokio::select! {
        () = shared.shutdown.cancelled() => {
            if let Some(done) = done {
                let _ = done.send(Err(Error::Shutdown));
            }
            return;
        }
        permits = shared.events.reserve_many(2) => permits.ok(),
    };
    let connected = TransportEvent::Connected {
        peer,
        addr: remote,
        listen_addr,
        inbound,
    };
    // The handshake just proved the peer alive (reserving may have waited).
    stats.alive();
    match shared.admit(peer, entry, permits, connected) {
        Admission::Duplicate => {
            debug!(peer = %peer.short(), %remote, "duplicate connection; keeping the other one");
            if let Some(done) = done {
                let _ = done.send(Ok(peer));
            }
            let reason = GoodbyeReason::DuplicateConnection;
            let close = goodbye_and_close(&mut reader.io, &mut wr, reason);
            let _ = tokio::time::timeout(WRITER_LINGER, close).await;
            return;
        }
        Admission::Full => {
            debug!(peer = %peer.short(), %remote, "refusing peer: too many peers");
            metrics::counter!("transport_refused_total", "reason" => "too_many_peers").increment(1);
            if let Some(done) = done {
                let _ = done.send(Err(Error::TooManyPeers));
            }
            let close = goodbye_and_close(&mut reader.io, &mut wr, GoodbyeReason::TooManyPeers);
            let _ = tokio::time::timeout(WRITER_LINGER, close).await;
            return;
        }
        Admission::Replace(old) => {
            old.close(Some(GoodbyeReason::DuplicateConnection), REPLACED);
        }
        Admission::New => {}
    }
    if let Some(done) = done {
        let _ = done.send(Ok(peer));
    }
    info!(peer = %peer.short(), %remote, %listen_addr, inbound, "peer connected");
    let direction = if inbound { "inbound" } else { "outbound" };
    metrics::counter!("transport_connections_total", "direction" => direction).increment(1);

    let writer = shared.tracker.spawn(write_loop(
        wr,
        rx,
        Arc::clone(&stats),
        Arc::clone(&ctl),
        shared.config.heartbeat_interval,
    ));
    let ended = session(&shared, peer, &mut reader, &tx, &ctl, &stats).await;
    let close = ctl.reason().unwrap_or(ended);

    // Report the end (unless a newer connection took over), then say goodbye.
    let permit = tokio::select! {
        biased;
        permit = shared.events.reserve() => permit.ok(),
        () = shared.shutdown.cancelled() => None,
    };
    let addrs: Vec<SocketAddr> = [Some(listen_addr), dialed].into_iter().flatten().collect();
    let disconnected = TransportEvent::Disconnected {
        peer,
        reason: close.text.clone(),
    };
    if shared.remove(&peer, conn_id, &addrs, permit, disconnected) {
        info!(peer = %peer.short(), reason = %close.text, "peer disconnected");
    }
    let said_goodbye = close.goodbye.is_some();
    if let Some(reason) = close.goodbye
        && let Ok(frame) = Codec::encode_frame(&Message::Goodbye { reason })
    {
        let _ = tx.try_send(frame);
    }
    drop(tx);
    // Let the writer flush the goodbye, then wait (briefly) for the peer to close.
    let linger_end = tokio::time::Instant::now() + WRITER_LINGER;
    let abort = writer.abort_handle();
    if tokio::time::timeout_at(linger_end, writer).await.is_err() {
        abort.abort();
    } else if said_goodbye {
        let _ = tokio::time::timeout_at(linger_end, drain_until_closed(&mut reader.io)).await;
    }
}

/// The handshake; returns the peer's verified `Hello`.
async fn handshake(
    shared: &Shared,
    reader: &mut FrameReader,
    wr: &mut WriteHalf<BoxIo>,
    remote: SocketAddr,
    dialed: Option<SocketAddr>,
) -> Result<Hello, Error> {
    let config = &shared.config;
    let nonce: [u8; 32] = rand::random();
    let hello = Hello {
        version: PROTOCOL_VERSION,
        network_id: config.network_id.clone(),
        market_hash: config.market_hash,
        node_id: shared.node_id,
        listen_port: shared.local_addr.port(),
        nonce,
        agent: config.agent.clone(),
    };
    write_message(wr, &Message::Hello(hello)).await?;

    let theirs = match read_handshake_message(shared, reader, remote, "hello").await? {
        Message::Hello(hello) => hello,
        other => return Err(unexpected("hello", &other)),
    };
    let listen_addr = SocketAddr::new(remote.ip(), theirs.listen_port);
    let refusal = if theirs.version != PROTOCOL_VERSION {
        warn!(%remote, ours = PROTOCOL_VERSION, theirs = theirs.version, "refusing peer: protocol version mismatch");
        Some((
            GoodbyeReason::Other(format!("protocol version {PROTOCOL_VERSION} required")),
            Error::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: theirs.version,
            },
        ))
    } else if theirs.network_id != config.network_id {
        warn!(
            %remote, ours = %config.network_id, theirs = %theirs.network_id,
            "refusing peer: it belongs to another NETWORK_ID"
        );
        Some((
            GoodbyeReason::NetworkMismatch,
            Error::NetworkMismatch {
                ours: config.network_id.clone(),
                theirs: theirs.network_id.clone(),
            },
        ))
    } else if theirs.market_hash != config.market_hash {
        warn!(%remote, "refusing peer: its market configuration differs from ours");
        Some((GoodbyeReason::MarketMismatch, Error::MarketMismatch))
    } else if theirs.node_id == shared.node_id {
        Some((
            GoodbyeReason::SelfConnection,
            Error::SelfConnection {
                addr: dialed.unwrap_or(listen_addr),
            },
        ))
    } else if shared.is_banned(listen_addr) || dialed.is_some_and(|addr| shared.is_banned(addr)) {
        debug!(%remote, "refusing banned peer");
        Some((
            GoodbyeReason::Other("banned".to_owned()),
            Error::Banned { addr: listen_addr },
        ))
    } else {
        None
    };
    if let Some((reason, error)) = refusal {
        goodbye_and_close(&mut reader.io, wr, reason).await;
        return Err(error);
    }

    let transcript = handshake_transcript(&config.network_id, &shared.node_id, &theirs.nonce);
    let ack = HelloAck {
        signature: shared.identity.sign(&transcript),
    };
    write_message(wr, &Message::HelloAck(ack)).await?;

    let ack = match read_handshake_message(shared, reader, listen_addr, "hello ack").await? {
        Message::HelloAck(ack) => ack,
        other => return Err(unexpected("hello ack", &other)),
    };
    let expected = handshake_transcript(&config.network_id, &theirs.node_id, &nonce);
    if verify(&theirs.node_id, &expected, &ack.signature).is_err() {
        warn!(%remote, claimed = %theirs.node_id.short(), "refusing peer: forged identity (bad handshake signature)");
        shared.record_misbehaviour(listen_addr);
        goodbye_and_close(&mut reader.io, wr, GoodbyeReason::Misbehaviour).await;
        return Err(Error::BadSignature {
            claimed: theirs.node_id,
        });
    }
    Ok(theirs)
}

/// Reads the next handshake message; a `Goodbye` becomes [`Error::Refused`] and an
/// undecodable frame is recorded as misbehaviour of `blame`.
async fn read_handshake_message(
    shared: &Shared,
    reader: &mut FrameReader,
    blame: SocketAddr,
    expected: &'static str,
) -> Result<Message, Error> {
    match reader.next(None).await {
        Ok(Some(Message::Goodbye { reason })) => Err(Error::Refused { reason }),
        Ok(Some(message)) => Ok(message),
        Ok(None) => Err(Error::HandshakeClosed),
        Err(Error::Protocol(e)) if e.is_misbehaviour() => {
            warn!(addr = %blame, expected, error = %e, "bad frame during the handshake");
            shared.record_misbehaviour(blame);
            Err(Error::Protocol(e))
        }
        Err(e) => Err(e),
    }
}

fn unexpected(expected: &'static str, got: &Message) -> Error {
    Error::UnexpectedMessage {
        expected,
        got: got.kind(),
    }
}

/// The established connection's reader loop; returns why it ended (unless the
/// [`ConnCtl`] says otherwise).
async fn session(
    shared: &Shared,
    peer: NodeId,
    reader: &mut FrameReader,
    tx: &mpsc::Sender<Bytes>,
    ctl: &ConnCtl,
    stats: &ConnStats,
) -> Close {
    let config = &shared.config;
    let idle = tokio::time::sleep(config.idle_timeout);
    tokio::pin!(idle);
    loop {
        // Reading comes before the idle check: after a pause (the node's event channel
        // was full) frames already buffered prove the peer alive.
        tokio::select! {
            biased;
            () = ctl.token.cancelled() => {
                let text = "transport shutting down".to_owned();
                return Close { goodbye: Some(GoodbyeReason::Shutdown), text };
            }
            read = reader.next(Some(stats)) => {
                let message = match read {
                    Ok(Some(message)) => message,
                    Ok(None) => {
                        let text = "connection closed by peer".to_owned();
                        return Close { goodbye: None, text };
                    }
                    Err(Error::Protocol(e)) if e.is_misbehaviour() => {
                        return misbehaved(shared, peer, ctl, &format!("bad frame: {e}"));
                    }
                    Err(e) => return Close { goodbye: None, text: format!("read failed: {e}") },
                };
                idle.as_mut().reset(Instant::now() + config.idle_timeout);
                stats.heard();
                metrics::counter!("transport_messages_in_total", "kind" => message.kind())
                    .increment(1);
                match message {
                    Message::Ping { nonce } => {
                        if let Ok(frame) = Codec::encode_frame(&Message::Pong { nonce }) {
                            let _ = queue_frame(&peer, tx, ctl, frame);
                        }
                    }
                    Message::Pong { nonce } => stats.pong(nonce),
                    Message::Goodbye { reason } => {
                        let text = format!("peer said goodbye: {reason:?}");
                        return Close { goodbye: None, text };
                    }
                    Message::Hello(_) | Message::HelloAck(_) => {
                        return misbehaved(shared, peer, ctl, "handshake message after the handshake");
                    }
                    message => {
                        let event = TransportEvent::Message { peer, message };
                        tokio::select! {
                            biased;
                            () = ctl.token.cancelled() => {}
                            _ = shared.events.send(event) => {}
                        }
                    }
                }
            }
            () = &mut idle => {
                warn!(peer = %peer.short(), timeout = ?config.idle_timeout, "peer silent; closing idle connection");
                metrics::counter!("transport_drops_total", "reason" => "idle").increment(1);
                return Close { goodbye: None, text: "idle timeout".to_owned() };
            }
        }
    }
}

/// Records misbehaviour of the connected `peer` and closes with `Goodbye{Misbehaviour}`.
fn misbehaved(shared: &Shared, peer: NodeId, ctl: &ConnCtl, what: &str) -> Close {
    let listen_addr = shared.lock().peers.get(&peer).map(|p| p.listen_addr);
    warn!(peer = %peer.short(), what, "peer misbehaved; disconnecting");
    if let Some(addr) = listen_addr {
        shared.record_misbehaviour(addr);
    }
    let text = format!("misbehaviour: {what}");
    ctl.close(Some(GoodbyeReason::Misbehaviour), text.clone());
    Close {
        goodbye: Some(GoodbyeReason::Misbehaviour),
        text,
    }
}

/// Owns the write half: writes queued frames, flushing when the queue runs dry, and a
/// `Ping` every heartbeat (from here, so the peer hears from us even while our reader
/// waits for the node); ends when every sender is gone, shutting the write half down.
async fn write_loop(
    wr: WriteHalf<BoxIo>,
    mut rx: mpsc::Receiver<Bytes>,
    stats: Arc<ConnStats>,
    ctl: Arc<ConnCtl>,
    heartbeat_interval: Duration,
) {
    let mut wr = tokio::io::BufWriter::new(wr);
    let mut heartbeat = tokio::time::interval(heartbeat_interval.max(Duration::from_millis(1)));
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ping_nonce: u64 = rand::random();
    loop {
        let first = tokio::select! {
            frame = rx.recv() => match frame {
                Some(frame) => frame,
                None => break,
            },
            _ = heartbeat.tick() => {
                ping_nonce = ping_nonce.wrapping_add(1);
                match Codec::encode_frame(&Message::Ping { nonce: ping_nonce }) {
                    Ok(frame) => {
                        stats.ping_sent(ping_nonce);
                        frame
                    }
                    Err(_) => continue,
                }
            }
        };
        let mut written = 0usize;
        let mut next = Some(first);
        let mut batch = 0;
        let result: std::io::Result<()> = async {
            while let Some(frame) = next.take() {
                wr.write_all(&frame).await?;
                written += frame.len();
                batch += 1;
                if batch < WRITE_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            wr.flush().await
        }
        .await;
        stats.bytes_out.fetch_add(written as u64, Ordering::Relaxed);
        metrics::counter!("transport_bytes_out_total").increment(written as u64);
        if let Err(e) = result {
            ctl.close(None, format!("write failed: {e}"));
            return;
        }
    }
    let _ = wr.shutdown().await;
}
