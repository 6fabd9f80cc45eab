//! `node`: one p2p-exchange node — the replicated log, settlement, matching,
//! durable storage and the HTTP API, assembled from the lower crates.
//!
//! Main types: [`Config`] (every setting, with defaults), [`Node`] (a running node:
//! [`Node::start`], [`Node::shutdown`], [`Node::handle`]), [`NodeHandle`] (query and drive
//! a node in-process), and the pure core [`engine::Engine`].
//!
//! # How it works
//! - **Pure core.** [`engine::Engine`] is a deterministic state machine: no tokio, no I/O,
//!   no clocks, no randomness. Inputs are an enum (client place/cancel, verified peer
//!   messages, `Tick{now_ms}`, `Flush`), outputs are effects (persist, send, broadcast,
//!   reply). The tokio task in `runtime.rs` is a thin shell around it.
//! - **Events** are `peer_protocol::Event{origin, seq, lamport, body}`; local events get
//!   `lamport = 1 + max seen` and are signed in batches: the events created during one loop
//!   iteration (up to 512 inputs) become one `SignedBatch` (ed25519 cost amortized), go to
//!   a storage thread that appends and fsyncs whatever is waiting (group commit), and only
//!   once they and all earlier records are durable are clients answered and the batch
//!   broadcast (the loop meanwhile goes on with the next iterations). An order's id is `prefix(origin) << 64 | seq` where `prefix` is the first 8
//!   bytes of the node id; its API form is `<16 hex digits>-<seq>`
//!   ([`ids::ApiOrderId`]); the owner of every order of a node is that prefix
//!   ([`ids::owner_of`]), and self-trade prevention is off (one owner, many clients).
//! - **Delivery** is per origin in seq order; batches ahead of a gap are buffered
//!   (bounded) and a `SyncRequest` is sent; duplicates are dropped before their signature
//!   is even checked; each newly delivered batch is relayed to the other peers (flood with
//!   dedup, so a partial mesh works), except to peers that list its origin as a neighbour
//!   (`Message::Neighbours`: they have it from the origin). Anti-entropy: `SyncRequest{clock}` on connect and
//!   every 2 s, answered with the stored batches the other lacks, in order, bounded.
//! - **Frontiers.** A member announces `SignedFrontier{seq, lamport = its clock, acks}`
//!   (acks: the highest seq it holds of every member) whenever its clock or acks moved (at
//!   most every 5 ms) and at least every heartbeat. A frontier is trusted once its origin's
//!   events up to its `seq` are delivered. The settled frontier `S` is the minimum over
//!   current members; events with `lamport <= S` that a majority of the members acks are
//!   applied to `orderbook_core::Exchange` in `(lamport, origin, seq)` order. An event arriving at or
//!   below `S` is rejected, logged and its sender scored down. Settled is final.
//! - **Membership** is in the log: the founder's first event is `Genesis` (genesis id =
//!   sha256 of founder, network id and market hash, [`engine::genesis_id`]). A fresh node
//!   waits `join_window_ms` for a peer with a genesis (`NetworkInfo` is exchanged on
//!   connect); if it finds one it syncs the log and sends `JoinRequest` to a member, which
//!   issues `Join{member}` in its own log (a sponsored join, so the newcomer's first events
//!   can never be stamped below `S`). The join takes effect at its settled position, the
//!   newcomer's frontier starts at the join's lamport, and it places orders once it sees
//!   itself a member. With no network found (or `found: true`) it founds one. Two fresh
//!   networks that meet: the one without orders (or with the higher genesis id when both
//!   are empty) wipes its log and joins the other; two with orders refuse each other
//!   (`Goodbye{NetworkMismatch}`, error log), never merging. A silent member stalls
//!   settlement (orders stay `pending`); `/v1/status` lists it in `waiting_for`. After
//!   `evict_after_ms` of silence a majority evicts it by signed votes (the rules and their
//!   known limits are in the [`engine`] module docs); the evicted node rejoins by itself.
//! - **Durability.** The data directory holds `node.key` (0600), `LOCK` (held with
//!   `File::try_lock`: a second node gets [`Error::DataDirLocked`]) and `events.log`, an
//!   append-only log of every delivered batch plus "settled up to" markers, each record
//!   length- and CRC-32-framed ([`storage`]). A torn tail is truncated with a warning on
//!   start; replay rebuilds the same settled state and digest, then peers fill the rest.
//!   An order is acknowledged (201) only after its batch is fsynced; no frontier leaves
//!   the node before the events it covers are durable.
//! - **Digest**: sha256 over the settled position, the matcher's digest and a hash chain of
//!   all trades; gossiped every second as `Message::Digest`; a mismatch at the same
//!   settled position is logged as an error and counted (`digest_mismatches`).
//! - **API** (axum): `POST /v1/orders`, `POST /v1/orders/batch`, `DELETE|GET
//!   /v1/orders/{id}`, `GET /v1/markets`, `/v1/markets/{m}/book?depth=N`,
//!   `/v1/markets/{m}/trades?limit=N`, `/v1/status`, `/v1/peers`, `/health`, `/metrics`,
//!   `/v1/stream` (WebSocket). Errors are `{"error":{"code","message"}}`.
//!   `/v1/status` also reports `waiting_for` (members holding settlement back) and the
//!   p50/p99 time from acknowledging this node's orders to settling them.
//!
//! - **Discovery and peers**: bootstrap list, the persisted peer table (`.peers.json`),
//!   mDNS (pinned to `mdns_interfaces`), Grenache (with the `grenache` feature) and peer
//!   exchange (`GetPeers`/`Peers` on connect) feed addresses to the transport, which keeps
//!   them connected.
//! - **Hybrid mode** (feature `grenache`, `discovery_grenache: true`): the node also serves
//!   grenache-nodejs-http's RPC protocol on `rpc_port` (default `p2p_port + 6000`), announced
//!   on the Grape under `p2p-exchange-rpc/<network_id>` and
//!   `p2p-exchange-rpc/<network_id>/<node id>`. Clients (e.g. a Node.js `PeerRPCClient`) send
//!   `{"action":"status"|"book"|"trades"|"place", ...}` and get what the HTTP API answers,
//!   through the same code paths; errors come back as `"<code>: <message>"` in the error slot.
//!   Between nodes it is the fallback channel: a member that is not connected over TCP is
//!   linked through RPC, and what the engine sends it travels in signed `deliver` envelopes
//!   (bounded outbox per member, a pump every 250 ms, replies carry the other direction), where
//!   the receiver verifies every message exactly as TCP input. See `rpc.rs`.
//! - **Metrics**: `/metrics` renders the process's Prometheus recorder (installed once per
//!   process, shared by every node in it; fsync counts and latency, misbehaviour, plus the
//!   transport's own metrics) followed by this node's replication gauges.
//!
//! # What it does not do (yet)
//! No eviction of silent members (a later issue: any node of the same `NETWORK_ID` that asks
//! is admitted, and a member that goes silent stalls settlement until it returns), no
//! snapshots (replay starts at the beginning of the log, and every batch and order record
//! stays in memory), no `Leave` on shutdown (a restarting node stays a member), no tentative
//! matching of pending orders.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use node::{Config, Node};
//! use node::engine::OrderStatus;
//! use peer_protocol::PlaceOrder;
//! use orderbook_core::{OrderType, Side, TimeInForce};
//!
//! let dir = std::env::temp_dir().join(format!("node-doctest-{}", std::process::id()));
//! let config = Config {
//!     data_dir: Some(dir.clone()),
//!     p2p_host: "127.0.0.1".into(),
//!     p2p_port: 0,
//!     api_port: Some(0),
//!     discovery_mdns: false,
//!     discovery_grenache: false,
//!     found: true,
//!     ..Config::default()
//! };
//! let node = Node::start(config).await?;
//! let handle = node.handle();
//! // Wait until the founder is a member of its own network.
//! while handle.status().await?.engine.members.is_empty() {
//!     tokio::time::sleep(std::time::Duration::from_millis(5)).await;
//! }
//! let order = PlaceOrder {
//!     client_order_id: None,
//!     market: "BTC-USD".into(),
//!     side: Side::Buy,
//!     order_type: OrderType::Limit,
//!     price: Some("100.50".parse()?),
//!     quantity: "1".parse()?,
//!     time_in_force: TimeInForce::Gtc,
//! };
//! let placed = handle.place(order).await?.expect("valid order");
//! // A lone founder settles at once.
//! assert_eq!(placed.status, OrderStatus::Open);
//! node.shutdown().await?;
//! # std::fs::remove_dir_all(dir).ok();
//! # Ok(())
//! # }
//! ```

mod api;
mod config;
pub mod engine;
mod error;
pub mod ids;
#[cfg(feature = "grenache")]
mod rpc;
mod runtime;
pub mod storage;
mod wire;

pub use config::{Config, MarketConfig, default_markets};
pub use error::Error;
pub use peer_protocol::NodeId;
pub use runtime::{Node, NodeHandle, PeerView, Status};
