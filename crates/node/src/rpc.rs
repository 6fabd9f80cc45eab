//! The Grenache RPC endpoint of the hybrid mode (feature `grenache`).
//!
//! A node with Grenache enabled serves grenache-nodejs-http's RPC protocol
//! ([`discovery_grenache::RpcServer`]) on its RPC port and announces that port under
//! `p2p-exchange-rpc/<NETWORK_ID>` and `p2p-exchange-rpc/<NETWORK_ID>/<node id>`. The payload's
//! `action` selects what to do:
//!
//! - `{"action":"status"}`: the `/v1/status` object.
//! - `{"action":"book","market":"BTC-USD","depth":N}`: the `/v1/markets/{market}/book` object
//!   (`depth` optional).
//! - `{"action":"trades","market":"BTC-USD","limit":N}`: the `/v1/markets/{market}/trades` list.
//! - `{"action":"place", ...}`: the other fields are exactly the `POST /v1/orders` body; the
//!   answer is the object that route answers.
//! - `{"action":"deliver", ...}`: node-to-node fallback (below).
//!
//! Errors go into the reply's error slot as `"<code>: <message>"`, with the codes of the HTTP
//! API (`unknown_market`, `invalid_side`, ...) plus `unknown_action` and `invalid_payload`.
//!
//! # The fallback channel
//!
//! When a member is not connected over TCP, the runtime treats it as linked through RPC: every
//! message the engine sends or broadcasts to it is kept in a bounded outbox, and a pump task
//! posts the outbox every [`PUMP_INTERVAL`] to the member's RPC endpoint (found with a Grape
//! lookup of its per-member service name) as a `deliver` envelope. The reply is an envelope of
//! the same shape carrying what the callee has queued for the caller, so one reachable
//! direction is enough. An envelope is
//! `{"from","to","network_id","ts","messages":[hex of postcard Message],"sig"}`, signed by
//! `from`'s node key over all of it; the receiver checks the signature, that it is addressed
//! to it, fresh (within [`MAX_SKEW_MS`]) and from a current member, then feeds each message
//! through the same verification as TCP input (`Engine::check_message`: signatures of batches
//! and frontiers, duplicates, membership).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use discovery::discovery_grenache::{
    Announcer, GrapeClient, RpcClient, RpcServer, RpcServerConfig,
};
use peer_protocol::{Identity, Message, NodeId, Signature};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api;
use crate::runtime::{NodeHandle, Request};

/// How often the pump posts outboxes to members linked through RPC.
pub const PUMP_INTERVAL: Duration = Duration::from_millis(250);
/// The largest clock difference accepted on a `deliver` envelope, in milliseconds.
pub const MAX_SKEW_MS: u64 = 120_000;
/// The most messages in one `deliver` envelope.
pub const MAX_MESSAGES: usize = 256;
/// The most encoded message bytes in one `deliver` envelope (hex doubles it on the wire).
pub const MAX_ENVELOPE_BYTES: usize = 1 << 20;
/// The largest request body the RPC endpoint accepts.
const MAX_BODY_BYTES: usize = 3 * MAX_ENVELOPE_BYTES;
/// How long a looked-up member address is reused.
const LOOKUP_TTL: Duration = Duration::from_secs(5);
/// How long a member whose endpoint could not be found or reached is left alone.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// The timeout of one RPC call to a member.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The running RPC side of a node: the server, the announcers and the pump.
pub(crate) struct Rpc {
    pub(crate) local_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    server: Option<RpcServer>,
}

impl Rpc {
    /// Binds the RPC server and starts the announcers and the pump.
    pub(crate) async fn start(
        listen: SocketAddr,
        grape_url: &str,
        network_id: String,
        identity: Arc<Identity>,
        handle: NodeHandle,
        shutdown: CancellationToken,
    ) -> Result<Rpc, String> {
        let grape = GrapeClient::new(grape_url).map_err(|e| format!("grape url: {e}"))?;
        let me = identity.node_id();
        let handler = {
            let handle = handle.clone();
            let network_id = network_id.clone();
            let identity = identity.clone();
            move |_key: String, payload: Value| {
                let handle = handle.clone();
                let network_id = network_id.clone();
                let identity = identity.clone();
                async move { answer(&handle, &network_id, &identity, payload).await }
            }
        };
        let config = RpcServerConfig {
            max_body_bytes: MAX_BODY_BYTES,
            ..RpcServerConfig::default()
        };
        let server = RpcServer::bind(listen, handler, config, shutdown.clone())
            .await
            .map_err(|e| format!("cannot bind the rpc endpoint on {listen}: {e}"))?;
        let local_addr = server.local_addr();
        let port = local_addr.port();
        let mut tasks = Vec::new();
        for name in [
            discovery::rpc_service_name(&network_id),
            discovery::rpc_member_service_name(&network_id, &me),
        ] {
            let announcer = Announcer::new(grape.clone(), name, port);
            tasks.push(announcer.spawn(shutdown.clone()));
        }
        let pump = Pump {
            client: RpcClient::new(grape),
            network_id,
            identity,
            handle,
            addrs: HashMap::new(),
            retry_at: HashMap::new(),
        };
        tasks.push(tokio::spawn(pump.run(shutdown)));
        tracing::info!(rpc = %local_addr, "grenache rpc endpoint listening");
        Ok(Rpc {
            local_addr,
            tasks,
            server: Some(server),
        })
    }

    /// Waits for every task after the shutdown token was cancelled.
    pub(crate) async fn join(mut self) {
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
        if let Some(server) = self.server.take() {
            let _ = server.join().await;
        }
    }
}

/// Answers one RPC request.
async fn answer(
    handle: &NodeHandle,
    network_id: &str,
    identity: &Identity,
    payload: Value,
) -> Result<Value, String> {
    let Value::Object(mut fields) = payload else {
        return Err("invalid_payload: the payload must be an object with an action".to_owned());
    };
    let action = match fields.remove("action") {
        Some(Value::String(action)) => action,
        _ => return Err("invalid_payload: the payload has no string action".to_owned()),
    };
    let market = |fields: &serde_json::Map<String, Value>| match fields.get("market") {
        Some(Value::String(market)) => Ok(market.clone()),
        _ => Err("invalid_payload: market must be a string".to_owned()),
    };
    let number = |fields: &serde_json::Map<String, Value>, name: &str| match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .map(|n| Some(n.min(usize::MAX as u64) as usize))
            .ok_or_else(|| format!("invalid_payload: {name} must be a positive integer")),
    };
    match action.as_str() {
        "status" => {
            let status = handle
                .status()
                .await
                .map_err(|_| api::ApiError::stopped().rpc_message())?;
            serde_json::to_value(status).map_err(|e| format!("internal: {e}"))
        }
        "book" => {
            let market = market(&fields)?;
            let depth = number(&fields, "depth")?;
            api::book_value(handle, &market, depth)
                .await
                .map_err(|e| e.rpc_message())
        }
        "trades" => {
            let market = market(&fields)?;
            let limit = number(&fields, "limit")?;
            let trades = api::trades_list(handle, &market, limit)
                .await
                .map_err(|e| e.rpc_message())?;
            serde_json::to_value(trades).map_err(|e| format!("internal: {e}"))
        }
        "place" => {
            let order =
                api::order_from_value(Value::Object(fields)).map_err(|e| e.rpc_message())?;
            let view = api::place_order(handle, order)
                .await
                .map_err(|e| e.rpc_message())?;
            serde_json::to_value(view).map_err(|e| format!("internal: {e}"))
        }
        "deliver" => {
            let envelope = Envelope::open(&Value::Object(fields), network_id, &identity.node_id())
                .map_err(|e| format!("invalid_envelope: {e}"))?;
            let from = envelope.from;
            let replies = deliver(handle, envelope.from, envelope.messages, true).await?;
            Ok(Envelope::seal(identity, network_id, from, &replies))
        }
        other => Err(format!("unknown_action: unknown action {other:?}")),
    }
}

/// Hands received messages to the engine; with `drain`, answers what is queued for `from`
/// (to go back in the reply of the request being served).
async fn deliver(
    handle: &NodeHandle,
    from: NodeId,
    messages: Vec<Message>,
    drain: bool,
) -> Result<Vec<Vec<u8>>, String> {
    let (tx, rx) = oneshot::channel();
    handle
        .send_request(Request::RpcDeliver {
            from,
            messages,
            drain,
            reply: tx,
        })
        .await
        .map_err(|_| api::ApiError::stopped().rpc_message())?;
    rx.await
        .map_err(|_| api::ApiError::stopped().rpc_message())?
}

/// A signed `deliver` envelope, opened.
struct Envelope {
    from: NodeId,
    messages: Vec<Message>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn transcript(
    network_id: &str,
    from: &NodeId,
    to: &NodeId,
    ts: u64,
    messages: &[Vec<u8>],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + messages.iter().map(|m| m.len() + 8).sum::<usize>());
    out.extend_from_slice(b"p2p-exchange/rpc-deliver/v1\0");
    out.extend_from_slice(&(network_id.len() as u64).to_le_bytes());
    out.extend_from_slice(network_id.as_bytes());
    out.extend_from_slice(from.as_bytes());
    out.extend_from_slice(to.as_bytes());
    out.extend_from_slice(&ts.to_le_bytes());
    out.extend_from_slice(&(messages.len() as u64).to_le_bytes());
    for message in messages {
        out.extend_from_slice(&(message.len() as u64).to_le_bytes());
        out.extend_from_slice(message);
    }
    out
}

impl Envelope {
    /// Builds the JSON form of an envelope from `identity` to `to` carrying encoded messages.
    fn seal(identity: &Identity, network_id: &str, to: NodeId, messages: &[Vec<u8>]) -> Value {
        let from = identity.node_id();
        let ts = now_ms();
        let signature = identity.sign(&transcript(network_id, &from, &to, ts, messages));
        json!({
            "from": from.to_string(),
            "to": to.to_string(),
            "network_id": network_id,
            "ts": ts,
            "messages": messages.iter().map(|m| crate::ids::hex(m)).collect::<Vec<_>>(),
            "sig": crate::ids::hex(signature.as_bytes()),
        })
    }

    /// Checks and decodes an envelope addressed to `me` (every field is untrusted).
    fn open(value: &Value, network_id: &str, me: &NodeId) -> Result<Envelope, String> {
        let text = |name: &str| {
            value
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{name} must be a string"))
        };
        let from: NodeId = text("from")?.parse().map_err(|_| "bad from".to_owned())?;
        let to: NodeId = text("to")?.parse().map_err(|_| "bad to".to_owned())?;
        if to != *me {
            return Err("addressed to another node".to_owned());
        }
        if text("network_id")? != network_id {
            return Err("another network".to_owned());
        }
        let ts = value
            .get("ts")
            .and_then(Value::as_u64)
            .ok_or("ts must be an integer")?;
        if now_ms().abs_diff(ts) > MAX_SKEW_MS {
            return Err("stale or future timestamp".to_owned());
        }
        let list = value
            .get("messages")
            .and_then(Value::as_array)
            .ok_or("messages must be an array")?;
        if list.len() > MAX_MESSAGES {
            return Err(format!("more than {MAX_MESSAGES} messages"));
        }
        let mut raw = Vec::with_capacity(list.len());
        for item in list {
            let bytes = item
                .as_str()
                .and_then(unhex)
                .ok_or("a message is not a hex string")?;
            raw.push(bytes);
        }
        let sig: [u8; 64] = text("sig")
            .ok()
            .and_then(unhex)
            .and_then(|b| b.try_into().ok())
            .ok_or("sig must be 64 hex bytes")?;
        peer_protocol::verify(
            &from,
            &transcript(network_id, &from, &to, ts, &raw),
            &Signature::from_bytes(sig),
        )
        .map_err(|_| "bad signature".to_owned())?;
        let mut messages = Vec::with_capacity(raw.len());
        for bytes in raw {
            messages.push(decode(&bytes)?);
        }
        Ok(Envelope { from, messages })
    }
}

fn decode(bytes: &[u8]) -> Result<Message, String> {
    postcard::from_bytes::<Message>(bytes).map_err(|e| format!("undecodable message: {e}"))
}

/// Encodes a message for an envelope (the runtime encodes its outboxes the same way).
#[cfg(test)]
fn encode(message: &Message) -> Option<Vec<u8>> {
    postcard::to_allocvec(message).ok()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    text.as_bytes()
        .chunks_exact(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// Posts the outboxes of RPC-linked members.
struct Pump {
    client: RpcClient,
    network_id: String,
    identity: Arc<Identity>,
    handle: NodeHandle,
    addrs: HashMap<NodeId, (Vec<SocketAddr>, Instant)>,
    /// Members not looked up again before this time (after a failed lookup or delivery).
    retry_at: HashMap<NodeId, Instant>,
}

impl Pump {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(PUMP_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            // Only members whose endpoint is known get their outbox drained, so nothing queued
            // is taken out before it can be sent.
            let ready: Vec<NodeId> = self
                .addrs
                .iter()
                .filter(|(_, (_, at))| at.elapsed() < LOOKUP_TTL)
                .map(|(id, _)| *id)
                .collect();
            let (tx, rx) = oneshot::channel();
            let request = Request::RpcPoll { ready, reply: tx };
            if self.handle.send_request(request).await.is_err() {
                break;
            }
            let Ok(poll) = rx.await else { break };
            self.addrs.retain(|id, _| poll.links.contains(id));
            self.retry_at.retain(|id, _| poll.links.contains(id));
            let work = async {
                for member in &poll.links {
                    self.resolve(*member).await;
                }
                for (member, messages) in poll.outboxes {
                    self.post(member, messages).await;
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = work => {}
            }
        }
    }

    /// Looks up a member's RPC endpoint when it is not known or getting old.
    async fn resolve(&mut self, member: NodeId) {
        let fresh = self
            .addrs
            .get(&member)
            .is_some_and(|(_, at)| at.elapsed() < LOOKUP_TTL / 2);
        let waiting = self
            .retry_at
            .get(&member)
            .is_some_and(|at| Instant::now() < *at);
        if fresh || waiting {
            return;
        }
        let name = discovery::rpc_member_service_name(&self.network_id, &member);
        match self.client.grape().lookup(&name).await {
            Ok(addrs) if !addrs.is_empty() => {
                self.addrs.insert(member, (addrs, Instant::now()));
                return;
            }
            Ok(_) => {
                tracing::debug!(member = %member.short(), "member's rpc endpoint not found (yet)");
            }
            Err(error) => tracing::debug!(member = %member.short(), %error, "rpc lookup failed"),
        }
        self.retry_at.insert(member, Instant::now() + RETRY_AFTER);
    }

    /// Posts one envelope to `member` and feeds its reply back to the engine. When it cannot
    /// be delivered, the link restarts (so lost handshake messages are sent again).
    async fn post(&mut self, member: NodeId, messages: Vec<Vec<u8>>) {
        let addrs = self
            .addrs
            .get(&member)
            .map(|(addrs, _)| addrs.clone())
            .unwrap_or_default();
        let key = discovery::rpc_service_name(&self.network_id);
        let mut payload = Envelope::seal(&self.identity, &self.network_id, member, &messages);
        if let Value::Object(fields) = &mut payload {
            fields.insert("action".to_owned(), json!("deliver"));
        }
        for addr in addrs {
            match self
                .client
                .request_to(addr, &key, payload.clone(), CALL_TIMEOUT)
                .await
            {
                Ok(reply) => {
                    match Envelope::open(&reply, &self.network_id, &self.identity.node_id()) {
                        Ok(envelope) if envelope.from == member => {
                            tracing::trace!(
                                member = %member.short(),
                                sent = messages.len(),
                                received = envelope.messages.len(),
                                "rpc envelope exchanged"
                            );
                            if !envelope.messages.is_empty() {
                                let _ =
                                    deliver(&self.handle, member, envelope.messages, false).await;
                            }
                            return;
                        }
                        Ok(_) => tracing::debug!(%addr, "rpc reply from another node"),
                        Err(error) => tracing::debug!(%addr, %error, "bad rpc reply envelope"),
                    }
                }
                Err(error) => {
                    tracing::debug!(member = %member.short(), %addr, %error, "rpc deliver failed");
                }
            }
        }
        self.addrs.remove(&member);
        self.retry_at.insert(member, Instant::now() + RETRY_AFTER);
        if !messages.is_empty() {
            let _ = self.handle.send_request(Request::RpcReset(member)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_reject_tampering() {
        let a = Identity::generate();
        let b = Identity::generate();
        let messages = vec![encode(&Message::GetPeers).expect("encodes")];
        let sealed = Envelope::seal(&a, "net", b.node_id(), &messages);
        let opened = Envelope::open(&sealed, "net", &b.node_id()).expect("valid envelope");
        assert_eq!(opened.from, a.node_id());
        assert_eq!(opened.messages, vec![Message::GetPeers]);
        assert!(Envelope::open(&sealed, "other", &b.node_id()).is_err());
        assert!(Envelope::open(&sealed, "net", &a.node_id()).is_err());
        let mut forged = sealed.clone();
        forged["from"] = json!(b.node_id().to_string());
        assert!(Envelope::open(&forged, "net", &b.node_id()).is_err());
        let mut stale = sealed;
        stale["ts"] = json!(1);
        assert!(Envelope::open(&stale, "net", &b.node_id()).is_err());
    }

    #[test]
    fn hex_decoding_is_strict() {
        assert_eq!(unhex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }
}
