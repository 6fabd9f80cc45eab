//! The HTTP JSON API (DESIGN.md section 5), served with axum.
//!
//! Every error is `{"error":{"code","message"}}` with a 4xx/5xx status; prices and
//! quantities are decimal strings, validated against the market before any event exists.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use orderbook_core::{OrderType, Side, TimeInForce};
use peer_protocol::PlaceOrder;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::engine::{ClientError, ClientErrorKind, OrderView};
use crate::ids::ApiOrderId;
use crate::runtime::NodeHandle;

/// The largest accepted request body (one order).
pub const MAX_BODY: usize = 64 * 1024;
/// The largest accepted batch request body.
pub const MAX_BATCH_BODY: usize = 1024 * 1024;
/// The most orders in one `POST /v1/orders/batch`.
pub const MAX_BATCH_ORDERS: usize = 1000;
/// The deepest book answered.
pub const MAX_DEPTH: usize = 1000;

/// The Prometheus recorder of this process.
#[derive(Clone)]
pub(crate) struct Metrics {
    handle: PrometheusHandle,
}

impl Metrics {
    /// The process-wide Prometheus recorder: installed globally by the first node of the
    /// process and shared by the others (so two nodes in one process never panic on a second
    /// install). If another recorder was installed by someone else, this node keeps a private
    /// one and `/metrics` shows only the node's own gauges.
    pub(crate) fn install() -> Metrics {
        static GLOBAL: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();
        let shared = GLOBAL.get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => Some(handle),
                Err(_) => {
                    tracing::debug!("another metrics recorder is installed in this process");
                    None
                }
            }
        });
        let handle = shared
            .clone()
            .unwrap_or_else(|| PrometheusBuilder::new().build_recorder().handle());
        Metrics { handle }
    }
}

#[derive(Clone)]
struct AppState {
    node: NodeHandle,
    metrics: Metrics,
}

/// Serves the API until `shutdown` is cancelled.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    node: NodeHandle,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let app = router(node, metrics);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "API server failed");
    }
}

fn router(node: NodeHandle, metrics: Metrics) -> Router {
    let state = AppState { node, metrics };
    Router::new()
        .route(
            "/v1/orders",
            post(place).layer(DefaultBodyLimit::max(MAX_BODY)),
        )
        .route(
            "/v1/orders/batch",
            post(place_batch).layer(DefaultBodyLimit::max(MAX_BATCH_BODY)),
        )
        .route("/v1/orders/{id}", get(get_order).delete(cancel))
        .route("/v1/markets", get(markets))
        .route("/v1/markets/{market}/book", get(book))
        .route("/v1/markets/{market}/trades", get(trades))
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/stream", get(stream))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// An API error: status + `{"error":{"code","message"}}`.
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// The error as the Grenache RPC endpoint puts it in the error slot: `"<code>: <message>"`.
    #[cfg_attr(not(feature = "grenache"), allow(dead_code))]
    pub(crate) fn rpc_message(&self) -> String {
        format!("{}: {}", self.code, self.message)
    }

    pub(crate) fn stopped() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stopped",
            "the node is shutting down",
        )
    }
}

impl From<ClientError> for ApiError {
    fn from(e: ClientError) -> Self {
        let status = match e.kind {
            ClientErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ClientErrorKind::NotFound => StatusCode::NOT_FOUND,
            ClientErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ClientErrorKind::Conflict => StatusCode::CONFLICT,
            ClientErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.code, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({"error": {"code": self.code, "message": self.message}})),
        )
            .into_response()
    }
}

/// The JSON body of a new order; every field a string, parsed strictly.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderBody {
    market: String,
    side: String,
    #[serde(rename = "type", default = "default_type")]
    order_type: String,
    #[serde(default)]
    price: Option<String>,
    quantity: String,
    #[serde(default = "default_tif")]
    time_in_force: String,
    #[serde(default)]
    client_order_id: Option<String>,
}

fn default_type() -> String {
    "limit".to_owned()
}

fn default_tif() -> String {
    "gtc".to_owned()
}

fn decimal(what: &'static str, text: &str) -> Result<Decimal, ApiError> {
    let valid = !text.is_empty()
        && text.len() <= 40
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-');
    let value = valid
        .then(|| text.parse::<Decimal>().ok())
        .flatten()
        .ok_or_else(|| {
            ApiError::bad(
                "invalid_decimal",
                format!("{what} must be a decimal string such as \"100.25\", got {text:?}"),
            )
        })?;
    // rust_decimal rounds what it cannot keep (more than 28 significant fractional digits,
    // or too many digits in all): an order must be for exactly what the client wrote.
    let fraction_digits = text.split_once('.').map_or(0, |(_, f)| f.len());
    if value.scale() as usize != fraction_digits {
        return Err(ApiError::bad(
            "imprecise_decimal",
            format!("{what} {text:?} has more digits than can be represented exactly"),
        ));
    }
    Ok(value)
}

fn parse_order(body: OrderBody) -> Result<PlaceOrder, ApiError> {
    let side = match body.side.as_str() {
        "buy" => Side::Buy,
        "sell" => Side::Sell,
        other => {
            return Err(ApiError::bad(
                "invalid_side",
                format!("side must be buy or sell, got {other:?}"),
            ));
        }
    };
    let order_type = match body.order_type.as_str() {
        "limit" => OrderType::Limit,
        "market" => OrderType::Market,
        other => {
            return Err(ApiError::bad(
                "invalid_type",
                format!("type must be limit or market, got {other:?}"),
            ));
        }
    };
    let time_in_force = match body.time_in_force.as_str() {
        "gtc" => TimeInForce::Gtc,
        "ioc" => TimeInForce::Ioc,
        "fok" => TimeInForce::Fok,
        "post_only" => TimeInForce::PostOnly,
        other => {
            return Err(ApiError::bad(
                "invalid_time_in_force",
                format!("time_in_force must be gtc, ioc, fok or post_only, got {other:?}"),
            ));
        }
    };
    let price = body
        .price
        .as_deref()
        .map(|p| decimal("price", p))
        .transpose()?;
    let quantity = decimal("quantity", &body.quantity)?;
    Ok(PlaceOrder {
        client_order_id: body.client_order_id,
        market: body.market,
        side,
        order_type,
        price,
        quantity,
        time_in_force,
    })
}

fn body_error(rejection: BytesRejection) -> ApiError {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(status, "body_too_large", "the request body is too large")
    } else {
        ApiError::new(status, "invalid_body", rejection.body_text().to_lowercase())
    }
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad("invalid_json", format!("malformed request: {e}")))
}

async fn place(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let order = parse_order(json_body::<OrderBody>(&body)?)?;
    let view = place_order(&state.node, order).await?;
    Ok((StatusCode::CREATED, axum::Json(view)).into_response())
}

/// Parses an order given as a JSON value with exactly the fields of the `POST /v1/orders` body.
#[cfg_attr(not(feature = "grenache"), allow(dead_code))]
pub(crate) fn order_from_value(value: serde_json::Value) -> Result<PlaceOrder, ApiError> {
    let body = serde_json::from_value::<OrderBody>(value)
        .map_err(|e| ApiError::bad("invalid_json", format!("malformed request: {e}")))?;
    parse_order(body)
}

/// Places a parsed order: what `POST /v1/orders` answers (with 201).
pub(crate) async fn place_order(
    node: &NodeHandle,
    order: PlaceOrder,
) -> Result<OrderView, ApiError> {
    Ok(node.place(order).await.map_err(|_| ApiError::stopped())??)
}

async fn place_batch(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let bodies: Vec<serde_json::Value> = json_body(&body)?;
    if bodies.len() > MAX_BATCH_ORDERS {
        return Err(ApiError::bad(
            "batch_too_large",
            format!("at most {MAX_BATCH_ORDERS} orders per batch"),
        ));
    }
    // Parse everything first; only valid orders reach the node.
    let mut parsed: Vec<Result<PlaceOrder, ApiError>> = Vec::with_capacity(bodies.len());
    for value in bodies {
        parsed.push(
            serde_json::from_value::<OrderBody>(value)
                .map_err(|e| ApiError::bad("invalid_json", format!("malformed order: {e}")))
                .and_then(parse_order),
        );
    }
    let valid: Vec<PlaceOrder> = parsed
        .iter()
        .filter_map(|p| p.as_ref().ok().cloned())
        .collect();
    let mut replies = state
        .node
        .place_many(valid)
        .await
        .map_err(|_| ApiError::stopped())?
        .into_iter();
    let results: Vec<serde_json::Value> = parsed
        .into_iter()
        .map(|p| match p {
            Ok(_) => match replies.next() {
                Some(Ok(view)) => json!({"status": 201, "order": view}),
                Some(Err(e)) => {
                    let e = ApiError::from(e);
                    json!({"status": e.status.as_u16(), "error": {"code": e.code, "message": e.message}})
                }
                None => json!({"status": 503, "error": {"code": "stopped", "message": "no reply"}}),
            },
            Err(e) => json!({"status": e.status.as_u16(), "error": {"code": e.code, "message": e.message}}),
        })
        .collect();
    Ok(axum::Json(results).into_response())
}

fn order_id(text: &str) -> Result<ApiOrderId, ApiError> {
    text.parse()
        .map_err(|e: &str| ApiError::bad("invalid_order_id", e))
}

async fn get_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<axum::Json<OrderView>, ApiError> {
    let id = order_id(&id)?;
    state
        .node
        .order(id)
        .await
        .map_err(|_| ApiError::stopped())?
        .map(axum::Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "order_not_found",
                format!("no order {id}"),
            )
        })
}

async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = order_id(&id)?;
    let view = state
        .node
        .cancel(id)
        .await
        .map_err(|_| ApiError::stopped())??;
    Ok((StatusCode::ACCEPTED, axum::Json(view)).into_response())
}

async fn markets(State(state): State<AppState>) -> Response {
    let list: Vec<serde_json::Value> = state
        .node
        .markets()
        .iter()
        .map(|m| json!({"name": m.name, "tick_size": m.tick_size, "lot_size": m.lot_size}))
        .collect();
    axum::Json(list).into_response()
}

#[derive(Debug, Deserialize)]
struct DepthQuery {
    depth: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

fn unknown_market(market: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_market",
        format!("unknown market {market:?}"),
    )
}

async fn book(
    State(state): State<AppState>,
    Path(market): Path<String>,
    query: Result<Query<DepthQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::bad("invalid_query", e.body_text().to_lowercase()))?;
    Ok(axum::Json(book_value(&state.node, &market, query.depth).await?).into_response())
}

/// The settled book of `market` as `GET /v1/markets/{market}/book?depth=N` answers it
/// (`depth` default 20, clamped to 1..=[`MAX_DEPTH`]).
pub(crate) async fn book_value(
    node: &NodeHandle,
    market: &str,
    depth: Option<usize>,
) -> Result<serde_json::Value, ApiError> {
    let depth = depth.unwrap_or(20).clamp(1, MAX_DEPTH);
    let book = node
        .book(market, depth)
        .await
        .map_err(|_| ApiError::stopped())?
        .ok_or_else(|| unknown_market(market))?;
    Ok(json!({"market": market, "bids": book.bids, "asks": book.asks}))
}

async fn trades(
    State(state): State<AppState>,
    Path(market): Path<String>,
    query: Result<Query<LimitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::bad("invalid_query", e.body_text().to_lowercase()))?;
    Ok(axum::Json(trades_list(&state.node, &market, query.limit).await?).into_response())
}

/// The newest settled trades of `market` as `GET /v1/markets/{market}/trades?limit=N` answers
/// them (`limit` default 50, clamped to the number kept).
pub(crate) async fn trades_list(
    node: &NodeHandle,
    market: &str,
    limit: Option<usize>,
) -> Result<Vec<crate::engine::TradeView>, ApiError> {
    let limit = limit.unwrap_or(50).clamp(1, crate::engine::MAX_TRADES_KEPT);
    node.trades(market, limit)
        .await
        .map_err(|_| ApiError::stopped())?
        .ok_or_else(|| unknown_market(market))
}

async fn status(State(state): State<AppState>) -> Result<Response, ApiError> {
    let status = state.node.status().await.map_err(|_| ApiError::stopped())?;
    Ok(axum::Json(status).into_response())
}

async fn peers(State(state): State<AppState>) -> Response {
    axum::Json(state.node.peers()).into_response()
}

async fn health() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    let mut text = state.metrics.handle.render();
    if let Ok(status) = state.node.status().await {
        let e = &status.engine;
        let gauges: [(&str, &str, u64); 16] = [
            ("p2p_exchange_peers", "connected peers", status.peers as u64),
            (
                "p2p_exchange_members",
                "current members",
                e.members.len() as u64,
            ),
            (
                "p2p_exchange_events_delivered",
                "events delivered",
                e.events_delivered,
            ),
            (
                "p2p_exchange_settled_events",
                "events settled",
                e.settled_events,
            ),
            (
                "p2p_exchange_pending_events",
                "events delivered, not yet settled",
                e.pending_events,
            ),
            ("p2p_exchange_lamport", "lamport clock", e.lamport),
            (
                "p2p_exchange_rejected_events",
                "events rejected",
                e.rejected_events,
            ),
            (
                "p2p_exchange_digest_mismatches",
                "digest mismatches at the same position",
                e.digest_mismatches,
            ),
            (
                "p2p_exchange_epoch",
                "membership changes applied at settled positions",
                e.epoch,
            ),
            (
                "p2p_exchange_suspects",
                "members this node suspects of being gone",
                e.suspects.len() as u64,
            ),
            ("p2p_exchange_evictions", "evictions applied", e.evictions),
            (
                "p2p_exchange_eviction_votes",
                "eviction votes held",
                e.votes.len() as u64,
            ),
            (
                "p2p_exchange_settlement_lag",
                "lamport clock minus settled lamport",
                e.settlement_lag,
            ),
            (
                "p2p_exchange_stalled_ms",
                "milliseconds settlement has not advanced while events are pending",
                e.stalled_ms,
            ),
            (
                "p2p_exchange_waiting_for",
                "members whose frontier holds settlement back",
                e.waiting_for.len() as u64,
            ),
            (
                "p2p_exchange_equivocations",
                "equivocating eviction votes, conflicting eviction decisions and origins caught signing two events with one seq",
                e.equivocations,
            ),
        ];
        for (name, help, value) in gauges {
            text.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
            ));
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn stream(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    let rx = state.node.subscribe();
    ws.on_upgrade(move |socket| forward(socket, rx))
}

async fn forward(mut socket: WebSocket, mut rx: tokio::sync::broadcast::Receiver<Arc<str>>) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        tokio::select! {
            item = rx.recv() => match item {
                Ok(text) => {
                    if socket.send(WsMessage::Text(text.as_ref().into())).await.is_err() {
                        break;
                    }
                }
                Err(RecvError::Lagged(skipped)) => {
                    let note = json!({"type": "lagged", "skipped": skipped}).to_string();
                    if socket.send(WsMessage::Text(note.into())).await.is_err() {
                        break;
                    }
                }
                Err(RecvError::Closed) => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(result: Result<Decimal, ApiError>) -> &'static str {
        match result {
            Ok(value) => panic!("accepted as {value}"),
            Err(error) => {
                assert_eq!(error.status, StatusCode::BAD_REQUEST);
                error.code
            }
        }
    }

    /// Review #9: text that rust_decimal would round is rejected, never silently changed.
    #[test]
    fn decimals_that_would_be_rounded_are_rejected() {
        for text in [
            "0.00000000000000000000000000001",
            "1.00000000000000000000000000001",
            "7.9228162514264337593543950336",
            "100.123456789012345678901234567",
        ] {
            assert_eq!(code(decimal("price", text)), "imprecise_decimal", "{text}");
        }
        for text in ["abc", "", "1e5", "+1"] {
            assert_eq!(code(decimal("price", text)), "invalid_decimal", "{text}");
        }
    }

    #[test]
    fn exact_decimals_are_kept_exactly() {
        for text in [
            "100.25",
            "100.250",
            "1",
            "0.0000000000000000000000000001",
            "-3.5",
        ] {
            let Ok(value) = decimal("price", text) else {
                panic!("{text} rejected");
            };
            assert_eq!(value.to_string(), text);
        }
    }
}
