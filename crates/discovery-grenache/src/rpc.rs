//! The grenache-nodejs-http RPC protocol: [`RpcServer`] and [`RpcClient`].
//!
//! A request is an HTTP `POST /` whose JSON body is `[rid, key, payload]` (`key` is the
//! service name the client looked up); the reply is `[rid, error_or_null, result]`. This is what
//! grenache-nodejs-http's `TransportRPCServer` and `TransportRPCClient` speak, so a Node.js
//! `PeerRPCClient` can call an [`RpcServer`], and an [`RpcClient`] can call a Node.js
//! `PeerRPCServer`. Gzip compression (`grc-compress: gzip`) and streaming are not supported.

use crate::client::{ReadError, read_bounded, shorten};
use crate::{Error, GrapeClient, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What an [`RpcServer`] does with a request: `key` is the service name the caller used,
/// `payload` the request's JSON payload. `Err(message)` goes into the reply's error slot.
///
/// Any `Fn(String, Value) -> impl Future<Output = Result<Value, String>>` closure is a handler.
pub trait RpcHandler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(
        &self,
        key: String,
        payload: Value,
    ) -> impl Future<Output = std::result::Result<Value, String>> + Send;
}

impl<F, Fut> RpcHandler for F
where
    F: Fn(String, Value) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<Value, String>> + Send + 'static,
{
    fn handle(
        &self,
        key: String,
        payload: Value,
    ) -> impl Future<Output = std::result::Result<Value, String>> + Send {
        self(key, payload)
    }
}

/// Limits of an [`RpcServer`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcServerConfig {
    /// The largest request body accepted; larger ones get HTTP 413.
    pub max_body_bytes: usize,
    /// Requests handled at the same time; more get an `ERR_BUSY` reply.
    pub max_concurrent: usize,
    /// How long a handler may take before the request gets an `ERR_TIMEOUT` reply.
    pub handler_timeout: Duration,
}

impl Default for RpcServerConfig {
    fn default() -> Self {
        RpcServerConfig {
            max_body_bytes: 1 << 20,
            max_concurrent: 256,
            handler_timeout: Duration::from_secs(10),
        }
    }
}

/// The error strings an [`RpcServer`] puts in the error slot for requests it cannot pass on.
pub mod errors {
    /// The body is not a JSON array `[rid, key, payload]`.
    pub const PARSE: &str = "ERR_REQUEST_PARSE";
    /// The key (second element) is not a string.
    pub const KEY: &str = "ERR_REQUEST_KEY";
    /// The request is gzip-compressed, which this server does not support.
    pub const COMPRESSION: &str = "ERR_COMPRESSION_UNSUPPORTED";
    /// Too many requests are being handled already.
    pub const BUSY: &str = "ERR_BUSY";
    /// The handler did not answer within the configured timeout.
    pub const TIMEOUT: &str = "ERR_TIMEOUT";
    /// The handler panicked.
    pub const HANDLER: &str = "ERR_HANDLER_FAILED";
}

struct Shared<H> {
    handler: Arc<H>,
    permits: Arc<Semaphore>,
    config: RpcServerConfig,
}

/// An axum [`Router`] serving the RPC protocol on `POST /`, to mount in a larger server.
pub fn router<H: RpcHandler>(handler: H, config: RpcServerConfig) -> Router {
    let shared = Arc::new(Shared {
        handler: Arc::new(handler),
        permits: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
        config: config.clone(),
    });
    Router::new()
        .route("/", axum::routing::post(serve_request::<H>))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(shared)
}

/// A running RPC server (see the [module docs](self)), stopped by its shutdown token.
#[derive(Debug)]
pub struct RpcServer {
    local_addr: SocketAddr,
    task: JoinHandle<std::io::Result<()>>,
}

impl RpcServer {
    /// Binds `addr` (port 0 picks a free port) and serves `handler` until `shutdown` is
    /// cancelled.
    pub async fn bind<H: RpcHandler>(
        addr: SocketAddr,
        handler: H,
        config: RpcServerConfig,
        shutdown: CancellationToken,
    ) -> Result<RpcServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let app = router(handler, config);
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
        });
        tracing::debug!(%local_addr, "grenache rpc server listening");
        Ok(RpcServer { local_addr, task })
    }

    /// The address the server listens on (announce its port).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits until the server has stopped after its shutdown token was cancelled.
    pub async fn join(self) -> Result<()> {
        match self.task.await {
            Ok(result) => Ok(result?),
            Err(join) => Err(Error::Io(std::io::Error::other(join.to_string()))),
        }
    }
}

async fn serve_request<H: RpcHandler>(
    State(shared): State<Arc<Shared<H>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let compressed = headers
        .get("grc-compress")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    if compressed {
        return reply(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Value::Null,
            Some(errors::COMPRESSION),
            Value::Null,
        );
    }
    let Ok(Value::Array(mut items)) = serde_json::from_slice::<Value>(&body) else {
        return reply(
            StatusCode::BAD_REQUEST,
            Value::Null,
            Some(errors::PARSE),
            Value::Null,
        );
    };
    if !(2..=3).contains(&items.len()) {
        return reply(
            StatusCode::BAD_REQUEST,
            Value::Null,
            Some(errors::PARSE),
            Value::Null,
        );
    }
    let payload = if items.len() == 3 {
        items.pop().unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let key = items.pop().unwrap_or(Value::Null);
    let rid = items.pop().unwrap_or(Value::Null);
    let Value::String(key) = key else {
        return reply(StatusCode::BAD_REQUEST, rid, Some(errors::KEY), Value::Null);
    };
    let Ok(permit) = shared.permits.clone().try_acquire_owned() else {
        return reply(StatusCode::OK, rid, Some(errors::BUSY), Value::Null);
    };
    let handler = shared.handler.clone();
    // The handler runs in its own task so that a panic in it becomes an error reply instead of
    // a dropped connection.
    let mut task = tokio::spawn(async move {
        let _permit = permit;
        handler.handle(key, payload).await
    });
    match tokio::time::timeout(shared.config.handler_timeout, &mut task).await {
        Ok(Ok(Ok(result))) => reply(StatusCode::OK, rid, None, result),
        Ok(Ok(Err(message))) => reply(StatusCode::OK, rid, Some(&message), Value::Null),
        Ok(Err(join)) => {
            tracing::error!(error = %join, "grenache rpc handler failed");
            reply(StatusCode::OK, rid, Some(errors::HANDLER), Value::Null)
        }
        Err(_) => {
            task.abort();
            reply(StatusCode::OK, rid, Some(errors::TIMEOUT), Value::Null)
        }
    }
}

fn reply(status: StatusCode, rid: Value, error: Option<&str>, result: Value) -> Response {
    let body = json!([rid, error, result]).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The most addresses one [`RpcClient::request`] tries when connections fail.
const MAX_ATTEMPTS: usize = 3;

/// Calls services announced on a Grape with the grenache RPC protocol.
///
/// [`RpcClient::request`] looks the service up, then sends the request to one of the
/// addresses (rotating between calls); when the connection to it cannot even be opened it tries
/// the next one (at most three), so a stale announcement does not fail the call.
#[derive(Debug)]
pub struct RpcClient {
    grape: GrapeClient,
    http: reqwest::Client,
    next: AtomicUsize,
}

impl RpcClient {
    /// A client that looks services up through `grape`.
    pub fn new(grape: GrapeClient) -> Self {
        RpcClient {
            grape,
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .unwrap_or_default(),
            next: AtomicUsize::new(0),
        }
    }

    /// The Grape this client looks services up through.
    pub fn grape(&self) -> &GrapeClient {
        &self.grape
    }

    /// Sends `payload` to the service `service` (found through the Grape) and returns its
    /// result; the whole call, lookup included, is bounded by `timeout`.
    pub async fn request(&self, service: &str, payload: Value, timeout: Duration) -> Result<Value> {
        let call = async {
            let addrs = self.grape.lookup(service).await?;
            if addrs.is_empty() {
                return Err(Error::ServiceNotFound(service.to_owned()));
            }
            let start = self.next.fetch_add(1, Ordering::Relaxed) % addrs.len();
            let mut last = Error::ServiceNotFound(service.to_owned());
            for i in 0..addrs.len().min(MAX_ATTEMPTS) {
                let addr = addrs[(start + i) % addrs.len()];
                match self.send(addr, service, payload.clone()).await {
                    Err(Error::RpcTransport { addr, source }) if source.is_connect() => {
                        tracing::debug!(%addr, error = %source, "grenache rpc peer unreachable, trying the next");
                        last = Error::RpcTransport { addr, source };
                    }
                    other => return other,
                }
            }
            Err(last)
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| Error::Timeout)?
    }

    /// Sends `payload` under `key` to the RPC server at `addr` directly, without a lookup.
    pub async fn request_to(
        &self,
        addr: SocketAddr,
        key: &str,
        payload: Value,
        timeout: Duration,
    ) -> Result<Value> {
        tokio::time::timeout(timeout, self.send(addr, key, payload))
            .await
            .map_err(|_| Error::Timeout)?
    }

    async fn send(&self, addr: SocketAddr, key: &str, payload: Value) -> Result<Value> {
        let rid = uuid::Uuid::new_v4().to_string();
        let body = json!([rid, key, payload]).to_string();
        let transport = |source| Error::RpcTransport { addr, source };
        let response = self
            .http
            .post(format!("http://{addr}/"))
            .header(header::CONTENT_TYPE, "application/json")
            .header("grc-compress", "none")
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let bytes = read_bounded(response).await.map_err(|e| match e {
            ReadError::Http(source) => transport(source),
            ReadError::TooLarge => Error::InvalidResponse("rpc reply too large".into()),
        })?;
        let parsed = serde_json::from_slice::<Value>(&bytes).ok();
        let Some(Value::Array(mut items)) = parsed.filter(Value::is_array) else {
            return Err(if status.is_success() {
                Error::InvalidResponse(format!(
                    "rpc reply is not [rid, error, result]: {}",
                    shorten(&String::from_utf8_lossy(&bytes))
                ))
            } else {
                Error::HttpStatus {
                    status: status.as_u16(),
                    body: shorten(&String::from_utf8_lossy(&bytes)),
                }
            });
        };
        if items.len() != 3 {
            return Err(Error::InvalidResponse(format!(
                "rpc reply has {} elements, expected 3",
                items.len()
            )));
        }
        let result = items.pop().unwrap_or(Value::Null);
        let error = items.pop().unwrap_or(Value::Null);
        let reply_rid = items.pop().unwrap_or(Value::Null);
        match error {
            Value::Null => {}
            Value::String(message) => return Err(Error::Remote(shorten(&message))),
            other => return Err(Error::Remote(shorten(&other.to_string()))),
        }
        if reply_rid.as_str() != Some(rid.as_str()) {
            return Err(Error::InvalidResponse(
                "rpc reply carries another rid".into(),
            ));
        }
        if !status.is_success() {
            return Err(Error::HttpStatus {
                status: status.as_u16(),
                body: String::new(),
            });
        }
        Ok(result)
    }
}
