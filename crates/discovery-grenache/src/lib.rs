//! `discovery_grenache`: a client for [Grenache](https://github.com/bitfinexcom/grenache)
//! Grape servers, and the grenache-nodejs-http RPC protocol.
//!
//! A Grape is a small Node.js server (npm package `grenache-grape`) that keeps a DHT of
//! *service name -> `ip:port`* announcements and exposes it over HTTP. This crate speaks that
//! API exactly as grenache-nodejs-link does, and the RPC protocol of grenache-nodejs-http, so
//! Rust programs and unmodified Node.js programs can find and call each other.
//!
//! Main types:
//! - [`GrapeClient`]: [`announce`](GrapeClient::announce) a service on a port and
//!   [`lookup`](GrapeClient::lookup) the addresses of a service.
//! - [`Announcer`]: a task that keeps a service announced (every 30 s by default), recovers from
//!   `"No nodes to query"`, and treats an unreachable Grape as a warning with exponential
//!   backoff, never as fatal.
//! - [`RpcServer`] (or [`rpc::router`] to mount it in a larger axum app) serving a
//!   [`RpcHandler`], and [`RpcClient`] calling a service found through a Grape.
//! - [`Error`], telling transient failures from permanent ones ([`Error::is_transient`]).
//!
//! What it does not do: it knows nothing of p2p-exchange's `Discovery` trait (the `discovery`
//! crate adapts it behind its `grenache` feature), it does not start Grape servers, and it
//! supports neither the compressed nor the streaming RPC variants, nor the DHT `put`/`get`.
//!
//! # Example
//!
//! An RPC server and a direct request to it (with a Grape, [`RpcClient::request`] finds the
//! address by service name instead):
//!
//! ```
//! use discovery_grenache::{GrapeClient, RpcClient, RpcServer, RpcServerConfig};
//! use serde_json::{Value, json};
//! use std::time::Duration;
//! use tokio_util::sync::CancellationToken;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), discovery_grenache::Error> {
//! let shutdown = CancellationToken::new();
//! let echo = |key: String, payload: Value| async move {
//!     Ok::<Value, String>(json!({ "service": key, "echo": payload }))
//! };
//! let server = RpcServer::bind(
//!     "127.0.0.1:0".parse().unwrap(),
//!     echo,
//!     RpcServerConfig::default(),
//!     shutdown.clone(),
//! )
//! .await?;
//!
//! let client = RpcClient::new(GrapeClient::new("http://127.0.0.1:30001")?);
//! let reply = client
//!     .request_to(server.local_addr(), "my-service", json!({ "action": "ping" }), Duration::from_secs(5))
//!     .await?;
//! assert_eq!(reply, json!({ "service": "my-service", "echo": { "action": "ping" } }));
//!
//! shutdown.cancel();
//! server.join().await?;
//! # Ok(())
//! # }
//! ```

mod announcer;
mod client;
mod error;
pub mod rpc;
#[cfg(feature = "testing")]
pub mod testing;

pub use announcer::{Announcer, AnnouncerConfig};
pub use client::{DEFAULT_TIMEOUT, GrapeClient, MAX_RESPONSE_BYTES};
pub use error::{Error, Result};
pub use rpc::{RpcClient, RpcHandler, RpcServer, RpcServerConfig};
