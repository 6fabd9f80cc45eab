//! The one message type of the peer protocol, and its encoding.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use vector_clock::VectorClock;

use crate::Error;
use crate::event::{SignedBatch, SignedFrontier};
use crate::identity::{Identity, NodeId, Signature, handshake_transcript, verify};
use crate::limits::{
    MAX_AGENT_LEN, MAX_BATCHES_PER_SYNC, MAX_GOODBYE_TEXT_LEN, MAX_MEMBERS, MAX_NETWORK_ID_LEN,
    MAX_PEERS_PER_MESSAGE, check_len,
};

/// The protocol version this crate speaks, sent in [`Hello`].
pub const PROTOCOL_VERSION: u16 = 3;

/// The number of [`Message`] variants this version knows: a payload whose leading tag is at or
/// beyond it comes from a newer peer and decodes to [`Error::UnknownMessage`].
pub const KNOWN_MESSAGE_TAGS: u32 = 16;

/// The first message each side sends on a new connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's [`PROTOCOL_VERSION`].
    pub version: u16,
    /// The sender's `NETWORK_ID` (at most [`MAX_NETWORK_ID_LEN`] bytes).
    pub network_id: String,
    /// A hash of the sender's market configuration.
    pub market_hash: [u8; 32],
    /// The identity the sender claims; proven by its [`HelloAck`].
    pub node_id: NodeId,
    /// The port the sender accepts connections on (0 if none), for peer exchange.
    pub listen_port: u16,
    /// A fresh random nonce the other side must sign.
    pub nonce: [u8; 32],
    /// The sender's software, such as `p2p-exchange/0.1.0` (at most [`MAX_AGENT_LEN`] bytes).
    pub agent: String,
}

/// The answer to a [`Hello`]: proves the sender holds the key of the node id it claimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAck {
    /// The sender's signature over
    /// [`handshake_transcript`](crate::handshake_transcript)`(network_id, sender, other side's nonce)`.
    pub signature: Signature,
}

impl Hello {
    /// A `Hello` from `identity` with this crate's [`PROTOCOL_VERSION`] and a fresh random nonce
    /// (from the operating system; [`Error::Key`] if it is unavailable).
    pub fn new(
        identity: &Identity,
        network_id: impl Into<String>,
        market_hash: [u8; 32],
        listen_port: u16,
        agent: impl Into<String>,
    ) -> Result<Hello, Error> {
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(|e| Error::Key(format!("system rng: {e}")))?;
        Ok(Hello {
            version: PROTOCOL_VERSION,
            network_id: network_id.into(),
            market_hash,
            node_id: identity.node_id(),
            listen_port,
            nonce,
            agent: agent.into(),
        })
    }
}

impl HelloAck {
    /// `identity`'s answer to the other side's `Hello` carrying `peer_nonce`.
    pub fn new(identity: &Identity, network_id: &str, peer_nonce: &[u8; 32]) -> HelloAck {
        HelloAck {
            signature: identity.sign(&handshake_transcript(
                network_id,
                &identity.node_id(),
                peer_nonce,
            )),
        }
    }

    /// Checks that the peer which claimed `signer` in its `Hello` signed the nonce this side
    /// sent (`my_nonce`) for `network_id`: [`Error::BadSignature`] otherwise.
    pub fn verify(
        &self,
        network_id: &str,
        signer: &NodeId,
        my_nonce: &[u8; 32],
    ) -> Result<(), Error> {
        verify(
            signer,
            &handshake_transcript(network_id, signer, my_nonce),
            &self.signature,
        )
    }
}

/// A peer address shared in peer exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerAddress {
    /// Where the peer accepts connections. An IPv6 scope id or flow label is not carried: it
    /// means something only on the host that has it.
    pub addr: SocketAddr,
    /// Its node id, when known.
    pub node_id: Option<NodeId>,
}

/// Why a peer closes the connection.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GoodbyeReason {
    /// The sender is shutting down.
    Shutdown,
    /// The `NETWORK_ID`s differ.
    NetworkMismatch,
    /// The market configurations differ.
    MarketMismatch,
    /// The sender found it had connected to itself.
    SelfConnection,
    /// Another connection between the same two nodes survives this one.
    DuplicateConnection,
    /// The receiver broke the protocol.
    Misbehaviour,
    /// The sender has no room for another peer.
    TooManyPeers,
    /// The sender dropped this peer to make room for another.
    Evicted,
    /// Anything else, in words (at most [`MAX_GOODBYE_TEXT_LEN`] bytes).
    Other(String),
}

/// Everything peers say to each other.
///
/// Encoded with postcard: a varint tag (the variant's position, so variants are only ever
/// appended, never reordered) followed by the fields. See [`encode`] and [`decode`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// Opens the handshake.
    Hello(Hello),
    /// Completes the handshake.
    HelloAck(HelloAck),
    /// Heartbeat; the receiver answers with a `Pong` of the same nonce.
    Ping {
        /// Echoed in the `Pong`.
        nonce: u64,
    },
    /// The answer to a `Ping`.
    Pong {
        /// The `Ping`'s nonce.
        nonce: u64,
    },
    /// Asks for known peer addresses.
    GetPeers,
    /// Known peer addresses (at most [`MAX_PEERS_PER_MESSAGE`]).
    Peers(Vec<PeerAddress>),
    /// New events of one origin.
    Batch(SignedBatch),
    /// An origin's frontier announcement.
    Frontier(SignedFrontier),
    /// Anti-entropy: "this is what I have delivered, send me what I lack".
    SyncRequest {
        /// Origin -> highest contiguous `seq` delivered (at most [`MAX_MEMBERS`] entries).
        #[serde(deserialize_with = "bounded_clock")]
        clock: VectorClock<NodeId>,
    },
    /// The events the requester lacks, in order, possibly over several responses.
    SyncResponse {
        /// Batches in delivery order (at most [`MAX_BATCHES_PER_SYNC`]).
        batches: Vec<SignedBatch>,
        /// Whether this is the last response to the request.
        done: bool,
    },
    /// State digest gossip.
    Digest {
        /// The settled position the digest was taken at.
        lamport: u64,
        /// The number of settled events at that position.
        settled_events: u64,
        /// The state digest.
        digest: [u8; 32],
    },
    /// What a node knows of its network, sent when it connects.
    NetworkInfo {
        /// The genesis id, if the node belongs to a network.
        genesis: Option<[u8; 32]>,
        /// Whether the network holds any order.
        has_orders: bool,
        /// The current members (at most [`MAX_MEMBERS`]).
        members: Vec<NodeId>,
        /// The node's delivered clock (at most [`MAX_MEMBERS`] entries).
        #[serde(deserialize_with = "bounded_clock")]
        clock: VectorClock<NodeId>,
    },
    /// A newcomer asks a member to admit it.
    JoinRequest {
        /// The newcomer.
        node_id: NodeId,
        /// Its signature over [`join_transcript`](crate::join_transcript).
        signature: Signature,
    },
    /// A vote to evict a member.
    Vote {
        /// The member voting.
        voter: NodeId,
        /// The voter's own incarnation (the membership epoch at which it became a member): a
        /// vote of an earlier membership of the voter does not count once it is back.
        voter_epoch: u64,
        /// The member to evict.
        target: NodeId,
        /// The target's incarnation: the membership epoch at which it became a member.
        epoch: u64,
        /// The voting round: 0 first; a new round starts only when every member but the
        /// target voted in the previous one and no `last_seq` won a majority.
        round: u32,
        /// The target's last valid `seq`.
        last_seq: u64,
        /// The voter's signature over [`vote_transcript`](crate::vote_transcript).
        signature: Signature,
    },
    /// The sender closes the connection.
    Goodbye {
        /// Why.
        reason: GoodbyeReason,
    },
    /// The node ids the sender is directly connected to right now, repeated whenever that
    /// changes. A relaying node skips the peers that are neighbours of a batch's origin: they
    /// get the batch from the origin itself. Advisory: a list that is stale or cut short only
    /// costs extra sends (or an anti-entropy round), never correctness.
    Neighbours {
        /// The sender's connected peers (at most [`MAX_PEERS_PER_MESSAGE`]; a longer list is
        /// cut, which only makes relays send more).
        peers: Vec<NodeId>,
    },
}

impl Message {
    /// The variant's wire tag (its position in the enum).
    pub fn tag(&self) -> u32 {
        match self {
            Message::Hello(_) => 0,
            Message::HelloAck(_) => 1,
            Message::Ping { .. } => 2,
            Message::Pong { .. } => 3,
            Message::GetPeers => 4,
            Message::Peers(_) => 5,
            Message::Batch(_) => 6,
            Message::Frontier(_) => 7,
            Message::SyncRequest { .. } => 8,
            Message::SyncResponse { .. } => 9,
            Message::Digest { .. } => 10,
            Message::NetworkInfo { .. } => 11,
            Message::JoinRequest { .. } => 12,
            Message::Vote { .. } => 13,
            Message::Goodbye { .. } => 14,
            Message::Neighbours { .. } => 15,
        }
    }

    /// The variant's name, for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::HelloAck(_) => "hello_ack",
            Message::Ping { .. } => "ping",
            Message::Pong { .. } => "pong",
            Message::GetPeers => "get_peers",
            Message::Peers(_) => "peers",
            Message::Batch(_) => "batch",
            Message::Frontier(_) => "frontier",
            Message::SyncRequest { .. } => "sync_request",
            Message::SyncResponse { .. } => "sync_response",
            Message::Digest { .. } => "digest",
            Message::NetworkInfo { .. } => "network_info",
            Message::JoinRequest { .. } => "join_request",
            Message::Vote { .. } => "vote",
            Message::Goodbye { .. } => "goodbye",
            Message::Neighbours { .. } => "neighbours",
        }
    }

    /// Checks every list and string against the protocol limits (not signatures: those are
    /// checked by [`SignedBatch::verify`] and [`SignedFrontier::verify`]).
    pub fn check_limits(&self) -> Result<(), Error> {
        match self {
            Message::Hello(hello) => {
                check_len(
                    "hello network_id",
                    hello.network_id.len(),
                    MAX_NETWORK_ID_LEN,
                )?;
                check_len("hello agent", hello.agent.len(), MAX_AGENT_LEN)
            }
            Message::Peers(peers) => check_len("peers", peers.len(), MAX_PEERS_PER_MESSAGE),
            Message::Neighbours { peers } => {
                check_len("neighbours", peers.len(), MAX_PEERS_PER_MESSAGE)
            }
            Message::Batch(batch) => check_batch(batch),
            Message::Frontier(frontier) => {
                check_len("frontier acks", frontier.acks.len(), MAX_MEMBERS)
            }
            Message::SyncRequest { clock } => check_clock(clock),
            Message::SyncResponse { batches, .. } => {
                check_len("sync batches", batches.len(), MAX_BATCHES_PER_SYNC)?;
                batches.iter().try_for_each(check_batch)
            }
            Message::NetworkInfo { members, clock, .. } => {
                check_len("members", members.len(), MAX_MEMBERS)?;
                check_clock(clock)
            }
            Message::Goodbye {
                reason: GoodbyeReason::Other(text),
            } => check_len("goodbye text", text.len(), MAX_GOODBYE_TEXT_LEN),
            Message::HelloAck(_)
            | Message::Ping { .. }
            | Message::Pong { .. }
            | Message::GetPeers
            | Message::Digest { .. }
            | Message::JoinRequest { .. }
            | Message::Vote { .. }
            | Message::Goodbye { .. } => Ok(()),
        }
    }
}

fn check_batch(batch: &SignedBatch) -> Result<(), Error> {
    batch.events().iter().try_for_each(|e| e.check_limits())
}

fn check_clock(clock: &VectorClock<NodeId>) -> Result<(), Error> {
    check_len("vector clock entries", clock.len(), MAX_MEMBERS)
}

/// Deserializes a vector clock in the format `vector_clock` writes (a sequence of
/// `(node, counter)` pairs), stopping at [`MAX_MEMBERS`] + 1 entries: a hostile peer cannot make
/// the decoder do more than linear work in the members limit, whatever the frame holds. A
/// repeated node is an error, as in `vector_clock` itself.
fn bounded_clock<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<VectorClock<NodeId>, D::Error> {
    struct ClockVisitor;

    impl<'de> Visitor<'de> for ClockVisitor {
        type Value = VectorClock<NodeId>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "at most {MAX_MEMBERS} (node, counter) pairs")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut counters = BTreeMap::new();
            while let Some((node, value)) = seq.next_element::<(NodeId, u64)>()? {
                if counters.len() == MAX_MEMBERS {
                    return Err(de::Error::custom("too many vector clock entries"));
                }
                if counters.insert(node, value).is_some() {
                    return Err(de::Error::custom("duplicate node in vector clock"));
                }
            }
            Ok(counters.into_iter().collect())
        }
    }

    deserializer.deserialize_seq(ClockVisitor)
}

/// Encodes a message payload (without the length prefix), after checking its limits.
pub fn encode(message: &Message) -> Result<Vec<u8>, Error> {
    encode_into(message, Vec::new())
}

/// Encodes `message` after the bytes already in `buf` (used to leave room for a prefix).
pub(crate) fn encode_into(message: &Message, buf: Vec<u8>) -> Result<Vec<u8>, Error> {
    message.check_limits()?;
    postcard::to_extend(message, buf).map_err(Error::Encode)
}

/// Decodes a message payload (without the length prefix) and checks its limits.
///
/// Never panics and never allocates more than the payload's own length can justify. A payload
/// whose leading tag is beyond [`KNOWN_MESSAGE_TAGS`] is [`Error::UnknownMessage`] (benign: a
/// newer peer); bytes left after the message are [`Error::TrailingBytes`]; everything else that
/// fails is [`Error::Decode`] or [`Error::LimitExceeded`]. Signatures are not checked here.
pub fn decode(bytes: &[u8]) -> Result<Message, Error> {
    let tag = read_tag(bytes)?;
    if tag >= KNOWN_MESSAGE_TAGS {
        return Err(Error::UnknownMessage { tag });
    }
    let (message, rest) = postcard::take_from_bytes::<Message>(bytes).map_err(Error::Decode)?;
    if !rest.is_empty() {
        return Err(Error::TrailingBytes(rest.len()));
    }
    message.check_limits()?;
    Ok(message)
}

/// Reads postcard's varint `u32` enum tag at the start of `bytes`.
fn read_tag(bytes: &[u8]) -> Result<u32, Error> {
    let mut value: u32 = 0;
    for (i, byte) in bytes.iter().take(5).enumerate() {
        let low = u32::from(byte & 0x7f);
        // The fifth byte may only hold the top 4 bits of a u32.
        if i == 4 && low > 0x0f {
            break;
        }
        value |= low << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Error::Decode(if bytes.len() < 5 {
        postcard::Error::DeserializeUnexpectedEnd
    } else {
        postcard::Error::DeserializeBadVarint
    }))
}
