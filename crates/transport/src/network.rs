//! The byte-stream layer under the transport: a small [`Network`] trait, real TCP
//! ([`TcpNetwork`]) and an in-process network for tests ([`MemoryNetwork`]).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A way to listen for and open byte streams.
///
/// The transport only needs ordered, reliable byte streams; everything above them
/// (framing, handshake, heartbeats) is the transport's own. Implementations are cheap
/// to clone and shared by all of a transport's tasks.
pub trait Network: Clone + Send + Sync + 'static {
    /// A connected byte stream.
    type Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static;
    /// A bound listener producing [`Network::Stream`]s.
    type Listener: Listener<Stream = Self::Stream>;

    /// Binds a listener on `addr` (port 0 picks a free port).
    fn bind(&self, addr: SocketAddr) -> impl Future<Output = io::Result<Self::Listener>> + Send;

    /// Opens a stream to `remote`. `local` is the dialing transport's own listen
    /// address; real networks ignore it, [`MemoryNetwork`] uses it to know which link a
    /// connection travels on (so that link can be cut).
    fn connect(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// A bound listener.
pub trait Listener: Send + 'static {
    /// The stream type accepted connections produce.
    type Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static;

    /// Waits for the next inbound connection and returns it with the remote address.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;

    /// The address this listener is bound to (with the real port when bound to port 0).
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// Real TCP via tokio. Streams have `TCP_NODELAY` set.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpNetwork;

impl Network for TcpNetwork {
    type Stream = TcpStream;
    type Listener = TcpListener;

    async fn bind(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        TcpListener::bind(addr).await
    }

    async fn connect(&self, _local: SocketAddr, remote: SocketAddr) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(remote).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

impl Listener for TcpListener {
    type Stream = TcpStream;

    async fn accept(&mut self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, addr) = TcpListener::accept(self).await?;
        stream.set_nodelay(true)?;
        Ok((stream, addr))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpListener::local_addr(self)
    }
}

/// Bytes buffered in each direction of an in-memory connection.
const MEMORY_PIPE_BYTES: usize = 256 * 1024;
/// Pending, not yet accepted connections per in-memory listener (the "backlog").
const MEMORY_BACKLOG: usize = 128;
/// First port handed out for port 0 binds and for dialers' ephemeral ports.
const MEMORY_FIRST_PORT: u16 = 40_000;

/// An in-process network: streams are [`tokio::io::duplex`] pipes and addresses are
/// entries in a registry shared by every clone.
///
/// Addresses look like socket addresses but are never bound on a real interface, so
/// tests may give each transport its own IP (`10.0.0.1:0`, `10.0.0.2:0`, ...) to
/// exercise per-IP limits. A binding on an unspecified IP (`0.0.0.0`) is registered
/// as `127.0.0.1`.
///
/// For fault tests a link between two listen addresses can be cut with
/// [`MemoryNetwork::set_blocked`], or every link of one address with
/// [`MemoryNetwork::set_address_blocked`]. A cut link behaves like a partition, not a
/// reset: bytes written into it vanish, nothing arrives, and new connections across it
/// are refused, so the transport notices only through its idle timeout.
#[derive(Debug, Clone, Default)]
pub struct MemoryNetwork {
    registry: Arc<Mutex<Registry>>,
}

#[derive(Debug, Default)]
struct Registry {
    listeners: HashMap<SocketAddr, mpsc::Sender<(MemoryStream, SocketAddr)>>,
    next_port: u16,
    blocked_pairs: HashSet<(SocketAddr, SocketAddr)>,
    blocked_addrs: HashSet<SocketAddr>,
    links: Vec<Weak<Link>>,
}

#[derive(Debug)]
struct Link {
    /// The dialer's listen address.
    a: SocketAddr,
    /// The listener's address.
    b: SocketAddr,
    blocked: AtomicBool,
}

impl Registry {
    fn is_blocked(&self, a: SocketAddr, b: SocketAddr) -> bool {
        self.blocked_addrs.contains(&a)
            || self.blocked_addrs.contains(&b)
            || self.blocked_pairs.contains(&ordered(a, b))
    }

    fn refresh_links(&mut self) {
        self.links.retain(|link| link.strong_count() > 0);
        for link in self.links.iter().filter_map(Weak::upgrade) {
            link.blocked
                .store(self.is_blocked(link.a, link.b), Ordering::SeqCst);
        }
    }

    /// Hands out a port not used by any listener on `ip`.
    fn free_port(&mut self, ip: IpAddr) -> io::Result<u16> {
        for _ in 0..=u16::MAX {
            if self.next_port < MEMORY_FIRST_PORT {
                self.next_port = MEMORY_FIRST_PORT;
            }
            let port = self.next_port;
            self.next_port = self.next_port.wrapping_add(1);
            if !self.listeners.contains_key(&SocketAddr::new(ip, port)) {
                return Ok(port);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "no free in-memory port",
        ))
    }
}

fn ordered(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a <= b { (a, b) } else { (b, a) }
}

fn normalize_ip(ip: IpAddr) -> IpAddr {
    if ip.is_unspecified() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        ip
    }
}

impl MemoryNetwork {
    /// A new, empty network. Transports that should reach each other need clones of
    /// the same `MemoryNetwork`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cuts (`true`) or restores (`false`) the link between listen addresses `a` and
    /// `b`, in both directions, including connections that are already open.
    pub fn set_blocked(&self, a: SocketAddr, b: SocketAddr, blocked: bool) {
        let mut registry = self.lock();
        let pair = ordered(a, b);
        if blocked {
            registry.blocked_pairs.insert(pair);
        } else {
            registry.blocked_pairs.remove(&pair);
        }
        registry.refresh_links();
    }

    /// Cuts (`true`) or restores (`false`) every link to and from listen address `addr`.
    pub fn set_address_blocked(&self, addr: SocketAddr, blocked: bool) {
        let mut registry = self.lock();
        if blocked {
            registry.blocked_addrs.insert(addr);
        } else {
            registry.blocked_addrs.remove(&addr);
        }
        registry.refresh_links();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // The registry holds no invariant a panicking holder could break half-way.
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Network for MemoryNetwork {
    type Stream = MemoryStream;
    type Listener = MemoryListener;

    async fn bind(&self, addr: SocketAddr) -> io::Result<MemoryListener> {
        let mut registry = self.lock();
        let ip = normalize_ip(addr.ip());
        let port = if addr.port() == 0 {
            registry.free_port(ip)?
        } else {
            addr.port()
        };
        let addr = SocketAddr::new(ip, port);
        if registry
            .listeners
            .get(&addr)
            .is_some_and(|tx| !tx.is_closed())
        {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{addr} is in use"),
            ));
        }
        let (tx, rx) = mpsc::channel(MEMORY_BACKLOG);
        registry.listeners.insert(addr, tx);
        Ok(MemoryListener {
            addr,
            incoming: rx,
            registry: Arc::downgrade(&self.registry),
        })
    }

    async fn connect(&self, local: SocketAddr, remote: SocketAddr) -> io::Result<MemoryStream> {
        let mut registry = self.lock();
        let local = SocketAddr::new(normalize_ip(local.ip()), local.port());
        let remote = SocketAddr::new(normalize_ip(remote.ip()), remote.port());
        let Some(listener) = registry.listeners.get(&remote).cloned() else {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("nothing listens on {remote}"),
            ));
        };
        if registry.is_blocked(local, remote) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("link {local} <-> {remote} is cut"),
            ));
        }
        let ephemeral = SocketAddr::new(local.ip(), registry.free_port(local.ip())?);
        let link = Arc::new(Link {
            a: local,
            b: remote,
            blocked: AtomicBool::new(false),
        });
        registry.links.retain(|link| link.strong_count() > 0);
        registry.links.push(Arc::downgrade(&link));
        drop(registry);

        let (ours, theirs) = tokio::io::duplex(MEMORY_PIPE_BYTES);
        let ours = MemoryStream {
            inner: ours,
            link: Arc::clone(&link),
        };
        let theirs = MemoryStream {
            inner: theirs,
            link,
        };
        listener.try_send((theirs, ephemeral)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("{remote} refused"),
            )
        })?;
        Ok(ours)
    }
}

/// A listener on a [`MemoryNetwork`]; unregisters its address when dropped.
#[derive(Debug)]
pub struct MemoryListener {
    addr: SocketAddr,
    incoming: mpsc::Receiver<(MemoryStream, SocketAddr)>,
    registry: Weak<Mutex<Registry>>,
}

impl Listener for MemoryListener {
    type Stream = MemoryStream;

    async fn accept(&mut self) -> io::Result<(MemoryStream, SocketAddr)> {
        self.incoming
            .recv()
            .await
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "memory network gone"))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

impl Drop for MemoryListener {
    fn drop(&mut self) {
        // Closing our receiver marks our registry entry closed; a newer listener on the
        // same address (whose entry is open) is left alone.
        self.incoming.close();
        if let Some(registry) = self.registry.upgrade() {
            let mut registry = registry
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if registry
                .listeners
                .get(&self.addr)
                .is_some_and(mpsc::Sender::is_closed)
            {
                registry.listeners.remove(&self.addr);
            }
        }
    }
}

/// One end of an in-memory connection.
#[derive(Debug)]
pub struct MemoryStream {
    inner: DuplexStream,
    link: Arc<Link>,
}

impl AsyncRead for MemoryStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.link.blocked.load(Ordering::SeqCst) {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        // A cut link delivers nothing: drain what arrives and stay pending. The inner
        // pipe keeps our waker, so we look again when more bytes (or EOF) arrive.
        let mut scratch = [0u8; 4096];
        loop {
            let mut discard = ReadBuf::new(&mut scratch);
            match Pin::new(&mut self.inner).poll_read(cx, &mut discard) {
                Poll::Ready(Ok(())) if discard.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncWrite for MemoryStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.link.blocked.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[tokio::test]
    async fn memory_streams_carry_bytes_both_ways() {
        let net = MemoryNetwork::new();
        let mut listener = net.bind(addr("10.0.0.1:0")).await.expect("bind");
        let server = listener.local_addr().expect("local addr");
        assert_eq!(server.ip(), addr("10.0.0.1:1").ip());
        let mut client = net
            .connect(addr("10.0.0.2:7000"), server)
            .await
            .expect("connect");
        let (mut accepted, from) = listener.accept().await.expect("accept");
        assert_eq!(from.ip(), addr("10.0.0.2:1").ip());
        client.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        accepted.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
        accepted.write_all(b"pong").await.expect("write");
        client.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"pong");
    }

    #[tokio::test]
    async fn binding_a_used_address_fails_and_dropping_frees_it() {
        let net = MemoryNetwork::new();
        let listener = net.bind(addr("10.0.0.1:5000")).await.expect("bind");
        let again = net.bind(addr("10.0.0.1:5000")).await;
        assert_eq!(
            again.err().map(|e| e.kind()),
            Some(io::ErrorKind::AddrInUse)
        );
        drop(listener);
        let refused = net.connect(addr("10.0.0.2:1"), addr("10.0.0.1:5000")).await;
        assert_eq!(
            refused.err().map(|e| e.kind()),
            Some(io::ErrorKind::ConnectionRefused)
        );
        net.bind(addr("10.0.0.1:5000"))
            .await
            .expect("rebind after drop");
    }

    #[tokio::test]
    async fn a_cut_link_swallows_bytes_and_refuses_new_connections() {
        let net = MemoryNetwork::new();
        let a = addr("10.0.0.1:1000");
        let mut listener = net.bind(addr("10.0.0.2:2000")).await.expect("bind");
        let b = listener.local_addr().expect("local addr");
        let mut client = net.connect(a, b).await.expect("connect");
        let (mut accepted, _) = listener.accept().await.expect("accept");

        net.set_blocked(a, b, true);
        client
            .write_all(b"lost")
            .await
            .expect("write into a cut link succeeds");
        let mut buf = [0u8; 4];
        let read = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            accepted.read_exact(&mut buf),
        )
        .await;
        assert!(read.is_err(), "nothing may arrive over a cut link");
        assert!(net.connect(a, b).await.is_err());

        net.set_blocked(a, b, false);
        client.write_all(b"back").await.expect("write");
        accepted.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"back");

        // Cutting an address cuts all its links, until restored.
        net.set_address_blocked(b, true);
        assert!(net.connect(addr("10.0.0.9:1"), b).await.is_err());
        net.set_address_blocked(b, false);
        net.connect(addr("10.0.0.9:1"), b)
            .await
            .expect("connect after restore");
    }
}
