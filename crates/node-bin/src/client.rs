//! The client subcommands: talk to a node's HTTP API (DESIGN.md section 5)
//! and print readable tables.

use std::fmt;
use std::time::Duration;

use anyhow::{Context, anyhow};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Map, Value, json};

use crate::cli::{ApiArgs, Command, OrderArgs};
use crate::table::{Align, Table};

/// Responses larger than this are refused rather than buffered.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The node answered with an error status; `Display` shows its message.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The error code from `{"error":{"code"}}`, if the body had one.
    pub code: Option<String>,
    /// The server's message, or its raw body when it was not the JSON error shape.
    pub message: String,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(code) => write!(
                f,
                "{} ({code}, HTTP {})",
                self.message,
                self.status.as_u16()
            ),
            None => write!(f, "{} (HTTP {})", self.message, self.status.as_u16()),
        }
    }
}

impl std::error::Error for ApiError {}

/// A client of one node's HTTP API.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
}

impl Client {
    /// A client for the API at `api`, e.g. `http://127.0.0.1:8000`.
    pub fn new(api: &str) -> anyhow::Result<Client> {
        let base = Url::parse(api).with_context(|| format!("invalid API URL {api:?}"))?;
        // The node serves plain HTTP (put a TLS-terminating proxy in front of it to expose it
        // beyond the host), so the client is built without TLS support.
        if base.cannot_be_a_base() || base.scheme() != "http" {
            anyhow::bail!("invalid API URL {api:?}: expected http://host:port");
        }
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Client { http, base })
    }

    /// The URL of `segments` under the base, each segment percent-encoded.
    fn endpoint(&self, segments: &[&str]) -> anyhow::Result<Url> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow!("API URL {} cannot be a base", self.base))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Sends one request and returns the JSON body (`Null` when empty).
    pub async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let mut url = self.endpoint(segments)?;
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(key, value)| (*key, value.as_str())));
        }
        let mut request = self.http.request(method, url.clone());
        if let Some(body) = body {
            request = request.json(body);
        }
        let mut response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the node at {}", self.base))?;
        let status = response.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .with_context(|| format!("reading the answer of {url}"))?
        {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                anyhow::bail!("the answer of {url} exceeds {MAX_RESPONSE_BYTES} bytes");
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(api_error(status, &bytes).into());
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).with_context(|| format!("the answer of {url} is not JSON"))
    }
}

/// Reads `{"error":{"code","message"}}`, falling back to the raw body.
fn api_error(status: StatusCode, body: &[u8]) -> ApiError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |name: &str| {
        error
            .and_then(|e| e.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let message = field("message")
        .or_else(|| error.and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body).trim().to_owned();
            if text.is_empty() {
                status
                    .canonical_reason()
                    .unwrap_or("request failed")
                    .to_owned()
            } else {
                text
            }
        });
    ApiError {
        status,
        code: field("code"),
        message,
    }
}

/// Runs one client subcommand and returns what to print: a table, or with
/// `--json` the node's answer as pretty-printed JSON.
pub async fn run(command: &Command) -> anyhow::Result<String> {
    let (api, answer, render): (&ApiArgs, Value, fn(&Value) -> String) = match command {
        Command::Node(_) => return Err(anyhow!("`node` is not a client subcommand")),
        Command::Order(order) => {
            let body = order_body(order)?;
            let answer = Client::new(&order.api.api)?
                .call(Method::POST, &["v1", "orders"], &[], Some(&body))
                .await?;
            (&order.api, answer, |v| render_object(v, ORDER_FIELDS))
        }
        Command::Cancel { id, api } => {
            let answer = Client::new(&api.api)?
                .call(Method::DELETE, &["v1", "orders", id], &[], None)
                .await?;
            (api, answer, |v| match v {
                Value::Object(_) => render_object(v, ORDER_FIELDS),
                _ => "cancel accepted\n".to_owned(),
            })
        }
        Command::OrderStatus { id, api } => {
            let answer = Client::new(&api.api)?
                .call(Method::GET, &["v1", "orders", id], &[], None)
                .await?;
            (api, answer, |v| render_object(v, ORDER_FIELDS))
        }
        Command::Book { market, depth, api } => {
            let query = [("depth", depth.to_string())];
            let answer = Client::new(&api.api)?
                .call(
                    Method::GET,
                    &["v1", "markets", market, "book"],
                    &query,
                    None,
                )
                .await?;
            (api, answer, render_book)
        }
        Command::Trades { market, limit, api } => {
            let query = [("limit", limit.to_string())];
            let answer = Client::new(&api.api)?
                .call(
                    Method::GET,
                    &["v1", "markets", market, "trades"],
                    &query,
                    None,
                )
                .await?;
            (api, answer, |v| render_list(v, TRADE_FIELDS))
        }
        Command::Markets { api } => {
            let answer = Client::new(&api.api)?
                .call(Method::GET, &["v1", "markets"], &[], None)
                .await?;
            (api, answer, |v| {
                render_list(v, &["name", "market", "tick_size", "lot_size"])
            })
        }
        Command::Status { api } => {
            let answer = Client::new(&api.api)?
                .call(Method::GET, &["v1", "status"], &[], None)
                .await?;
            (api, answer, |v| render_object(v, STATUS_FIELDS))
        }
        Command::Peers { api } => {
            let answer = Client::new(&api.api)?
                .call(Method::GET, &["v1", "peers"], &[], None)
                .await?;
            (api, answer, |v| render_list(v, PEER_FIELDS))
        }
    };
    if api.json {
        let mut text = serde_json::to_string_pretty(&answer)?;
        text.push('\n');
        Ok(text)
    } else {
        Ok(render(&answer))
    }
}

/// The columns of a trade shown first, in this order.
const TRADE_FIELDS: &[&str] = &[
    "trade_id",
    "price",
    "quantity",
    "taker_side",
    "maker_order_id",
    "taker_order_id",
];

/// The columns of a peer shown first, in this order.
const PEER_FIELDS: &[&str] = &[
    "node_id",
    "addr",
    "listen_addr",
    "inbound",
    "rtt_ms",
    "agent",
];

/// The `POST /v1/orders` body for `order`.
pub fn order_body(order: &OrderArgs) -> anyhow::Result<Value> {
    let price = order.limit_price()?;
    let time_in_force = match (order.tif, &price) {
        (Some(tif), _) => tif.as_str(),
        (None, Some(_)) => "gtc",
        // A market order never rests, so "immediate or cancel" is its meaning.
        (None, None) => "ioc",
    };
    let mut body = json!({
        "market": order.market,
        "side": order.side.as_str(),
        "type": if price.is_some() { "limit" } else { "market" },
        "quantity": order.quantity,
        "time_in_force": time_in_force,
    });
    if let Some(price) = price {
        body["price"] = Value::String(price);
    }
    if let Some(id) = &order.client_order_id {
        body["client_order_id"] = Value::String(id.clone());
    }
    Ok(body)
}

/// The fields of an order shown first, in this order.
const ORDER_FIELDS: &[&str] = &[
    "order_id",
    "status",
    "market",
    "side",
    "type",
    "price",
    "quantity",
    "filled_quantity",
    "remaining_quantity",
    "time_in_force",
    "client_order_id",
    "reason",
];

/// The fields of `/v1/status` shown first, in this order.
const STATUS_FIELDS: &[&str] = &[
    "node_id",
    "network_id",
    "phase",
    "p2p_addr",
    "api_addr",
    "peers",
    "members",
    "events_delivered",
    "settled_events",
    "pending_events",
    "waiting_for",
    "digest",
];

/// A cell's text: strings unquoted, arrays comma-joined, null empty,
/// fractional numbers (such as round-trip times) to three places.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => match n.as_f64() {
            Some(f) => format!("{f:.3}"),
            None => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// An object as a two-column FIELD / VALUE table: the `preferred` fields
/// first, then the rest alphabetically; null and empty-string fields are
/// left out, and a list prints one item per line.
pub fn render_object(value: &Value, preferred: &[&str]) -> String {
    let Some(object) = value.as_object() else {
        return format!("{}\n", cell(value));
    };
    let mut keys: Vec<&str> = preferred
        .iter()
        .copied()
        .filter(|key| object.contains_key(*key))
        .collect();
    keys.extend(
        object
            .keys()
            .map(String::as_str)
            .filter(|key| !preferred.contains(key)),
    );
    let mut table = Table::new(["FIELD", "VALUE"]);
    for key in keys {
        match &object[key] {
            Value::Null => {}
            Value::String(s) if s.is_empty() => {}
            Value::Array(items) if items.is_empty() => table.row([key, "(none)"]),
            Value::Array(items) if items.iter().all(|i| !i.is_array() && !i.is_object()) => {
                for (index, item) in items.iter().enumerate() {
                    table.row([if index == 0 { key } else { "" }.to_owned(), cell(item)]);
                }
            }
            value => table.row([key.to_owned(), cell(value)]),
        }
    }
    table.to_string()
}

/// The array to tabulate: the value itself, or an object's only array field
/// (`{"peers":[...]}`).
fn as_rows(value: &Value) -> Option<&Vec<Value>> {
    match value {
        Value::Array(items) => Some(items),
        Value::Object(object) => {
            let mut arrays = object.values().filter_map(Value::as_array);
            match (arrays.next(), arrays.next()) {
                (Some(items), None) => Some(items),
                _ => None,
            }
        }
        _ => None,
    }
}

/// An array of objects as a table: the `preferred` columns that occur, in
/// that order, then any other field in order of first appearance.
pub fn render_list(value: &Value, preferred: &[&str]) -> String {
    let Some(items) = as_rows(value) else {
        return render_object(value, &[]);
    };
    if items.is_empty() {
        let header = Table::new(preferred.iter().map(|c| c.to_uppercase()));
        return format!("{header}(none)\n");
    }
    let empty = Map::new();
    let objects: Vec<&Map<String, Value>> = items
        .iter()
        .map(|item| item.as_object().unwrap_or(&empty))
        .collect();
    let mut columns: Vec<String> = preferred
        .iter()
        .filter(|name| objects.iter().any(|o| o.contains_key(**name)))
        .map(|name| (*name).to_owned())
        .collect();
    for object in &objects {
        for key in object.keys() {
            if !columns.contains(key) {
                columns.push(key.clone());
            }
        }
    }
    if columns.is_empty() {
        let mut table = Table::new(["VALUE"]);
        for item in items {
            table.row([cell(item)]);
        }
        return table.to_string();
    }
    let mut table = Table::new(columns.iter().map(|c| c.to_uppercase()));
    for (index, column) in columns.iter().enumerate() {
        if matches!(
            column.as_str(),
            "price" | "quantity" | "tick_size" | "lot_size" | "score"
        ) {
            table = table.align(index, Align::Right);
        }
    }
    for object in &objects {
        table.row(
            columns
                .iter()
                .map(|c| object.get(c).map(cell).unwrap_or_default()),
        );
    }
    table.to_string()
}

/// `{"bids":[["price","qty"],..],"asks":[..]}` side by side, best first.
pub fn render_book(value: &Value) -> String {
    let levels = |side: &str| -> Vec<(String, String)> {
        value
            .get(side)
            .and_then(Value::as_array)
            .map(|levels| {
                levels
                    .iter()
                    .map(|level| match level {
                        Value::Array(pair) => (
                            pair.first().map(cell).unwrap_or_default(),
                            pair.get(1).map(cell).unwrap_or_default(),
                        ),
                        Value::Object(o) => (
                            o.get("price").map(cell).unwrap_or_default(),
                            o.get("quantity").map(cell).unwrap_or_default(),
                        ),
                        other => (cell(other), String::new()),
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let (bids, asks) = (levels("bids"), levels("asks"));
    let mut table = Table::new(["BID QTY", "BID PRICE", "ASK PRICE", "ASK QTY"])
        .align(0, Align::Right)
        .align(1, Align::Right)
        .align(2, Align::Right)
        .align(3, Align::Right);
    for index in 0..bids.len().max(asks.len()) {
        let (bid_price, bid_qty) = bids.get(index).cloned().unwrap_or_default();
        let (ask_price, ask_qty) = asks.get(index).cloned().unwrap_or_default();
        table.row([bid_qty, bid_price, ask_price, ask_qty]);
    }
    if table.is_empty() {
        return format!("{table}(empty book)\n");
    }
    table.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn order(args: &[&str]) -> OrderArgs {
        let cli = Cli::try_parse_from(["p2p-exchange", "order"].iter().chain(args)).unwrap();
        match cli.command {
            Some(Command::Order(order)) => order,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_limit_order_body_matches_the_api() {
        let body = order_body(&order(&[
            "buy",
            "BTC-USD",
            "2",
            "@",
            "100.50",
            "--client-order-id",
            "c1",
        ]))
        .unwrap();
        assert_eq!(
            body,
            json!({"market":"BTC-USD","side":"buy","type":"limit","price":"100.50",
                   "quantity":"2","time_in_force":"gtc","client_order_id":"c1"})
        );
    }

    #[test]
    fn a_market_order_has_no_price() {
        let body = order_body(&order(&["sell", "ETH-USD", "0.5", "--tif", "fok"])).unwrap();
        assert_eq!(
            body,
            json!({"market":"ETH-USD","side":"sell","type":"market","quantity":"0.5",
                   "time_in_force":"fok"})
        );
        let default_tif = order_body(&order(&["sell", "ETH-USD", "0.5"])).unwrap();
        assert_eq!(default_tif["time_in_force"], "ioc");
    }

    #[test]
    fn api_errors_show_the_server_message() {
        let body = br#"{"error":{"code":"off_tick","message":"price 1.001 is not a multiple of the tick size 0.01"}}"#;
        let error = api_error(StatusCode::BAD_REQUEST, body);
        assert_eq!(
            error.to_string(),
            "price 1.001 is not a multiple of the tick size 0.01 (off_tick, HTTP 400)"
        );
        let plain = api_error(StatusCode::NOT_FOUND, b"no such route");
        assert_eq!(plain.to_string(), "no such route (HTTP 404)");
        let empty = api_error(StatusCode::INTERNAL_SERVER_ERROR, b"");
        assert_eq!(empty.to_string(), "Internal Server Error (HTTP 500)");
    }

    #[test]
    fn endpoints_encode_their_segments() {
        let client = Client::new("http://127.0.0.1:8000/").unwrap();
        let url = client.endpoint(&["v1", "orders", "a/b c"]).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8000/v1/orders/a%2Fb%20c");
        let prefixed = Client::new("http://127.0.0.1:8000/exchange").unwrap();
        let url = prefixed.endpoint(&["v1", "status"]).unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8000/exchange/v1/status");
        assert!(Client::new("127.0.0.1:8000").is_err());
        assert!(Client::new("ftp://127.0.0.1").is_err());
    }

    #[test]
    fn a_book_prints_bids_and_asks_side_by_side() {
        let book = json!({"bids":[["100.5","2"],["100","10"]],"asks":[["101","1.25"]]});
        let expected = "\
BID QTY  BID PRICE  ASK PRICE  ASK QTY
      2      100.5        101     1.25
     10        100
";
        assert_eq!(render_book(&book), expected);
        assert!(render_book(&json!({"bids":[],"asks":[]})).contains("(empty book)"));
    }

    #[test]
    fn trades_print_preferred_columns_first() {
        let trades = json!([
            {"taker_order_id":"b-2","trade_id":"t1","price":"100","quantity":"1",
             "maker_order_id":"a-1","taker_side":"buy"}
        ]);
        let text = render_list(&trades, &["trade_id", "price", "quantity", "taker_side"]);
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "TRADE_ID  PRICE  QUANTITY  TAKER_SIDE  MAKER_ORDER_ID  TAKER_ORDER_ID"
        );
        assert_eq!(
            lines.next().unwrap(),
            "t1          100         1  buy         a-1             b-2"
        );
        assert!(render_list(&json!([]), &[]).contains("(none)"));
    }

    #[test]
    fn a_wrapped_list_is_unwrapped() {
        let peers = json!({"peers":[{"node_id":"n1","addr":"127.0.0.1:3001"}]});
        let text = render_list(&peers, &["node_id", "addr"]);
        assert_eq!(text, "NODE_ID  ADDR\nn1       127.0.0.1:3001\n");
    }

    #[test]
    fn an_object_prints_as_fields() {
        let status = json!({"node_id":"abc","peers":2,"members":["abc","def"],
                            "digest":null,"waiting_for":"","rtt":1.23456,"extra":[]});
        let expected = "\
FIELD    VALUE
node_id  abc
peers    2
members  abc
         def
extra    (none)
rtt      1.235
";
        assert_eq!(render_object(&status, STATUS_FIELDS), expected);
    }
}
