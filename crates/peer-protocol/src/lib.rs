//! `peer_protocol`: everything p2p-exchange nodes say to each other, and who says it.
//!
//! - [`Message`] is the one enum of the wire protocol: the handshake ([`Hello`], [`HelloAck`]),
//!   heartbeats, peer exchange, replicated events ([`SignedBatch`]), frontier announcements
//!   ([`SignedFrontier`]), anti-entropy, digest gossip, membership and `Goodbye`.
//! - [`encode`] / [`decode`] turn a message into a postcard payload and back; [`Codec`] frames
//!   payloads behind a big-endian `u32` length for tokio streams, refusing frames above the
//!   maximum *before* allocating anything for them.
//! - [`Identity`] is a node's ed25519 key (kept in a `0600` file by
//!   [`Identity::load_or_create`]); [`NodeId`] is its public key. [`handshake_transcript`],
//!   [`join_transcript`] and [`vote_transcript`] are the domain-separated bytes signed for each
//!   purpose, checked with [`verify`].
//! - An origin signs a batch of its consecutive [`Event`]s at once, so signing and verification
//!   costs are shared by every event of the batch. A [`SignedBatch`] from the wire is untrusted
//!   until [`SignedBatch::verify`] returns a [`VerifiedBatch`], the only form the log should
//!   accept.
//!
//! Limits: every list and string a peer sends has a maximum (see the `MAX_*` constants), checked
//! after decoding; a peer beyond one misbehaves ([`Error::is_misbehaviour`]). A message tag from
//! a newer protocol version is [`Error::UnknownMessage`], which is benign.
//!
//! What this crate does not do: no sockets, no tasks, no retries (that is `transport`), no
//! decisions about the log such as delivery order or settlement (that is `node`). It does not
//! negotiate versions: it puts [`PROTOCOL_VERSION`] in the `Hello` and leaves the policy to the
//! transport.
//!
//! # Example
//!
//! ```
//! use peer_protocol::{Codec, Event, EventBody, Identity, Message, SignedBatch, decode, encode};
//! use tokio_util::codec::{Decoder, Encoder};
//!
//! // An origin signs two consecutive events at once.
//! let alice = Identity::generate();
//! let events = vec![
//!     Event { origin: alice.node_id(), seq: 1, lamport: 1, body: EventBody::Leave },
//!     Event { origin: alice.node_id(), seq: 2, lamport: 5, body: EventBody::Cancel { order_seq: 1 } },
//! ];
//! let batch = SignedBatch::sign(&alice, events)?;
//!
//! // The payload round-trips; a receiver verifies before trusting the events.
//! let payload = encode(&Message::Batch(batch))?;
//! let Message::Batch(received) = decode(&payload)? else { unreachable!() };
//! let verified = received.verify()?;
//! assert_eq!((verified.origin(), verified.last_seq()), (alice.node_id(), 2));
//!
//! // The codec frames messages for a byte stream and rejects oversize frames.
//! let mut codec = Codec::new(1024);
//! let mut buf = bytes::BytesMut::new();
//! codec.encode(Message::Ping { nonce: 7 }, &mut buf)?;
//! assert_eq!(codec.decode(&mut buf)?, Some(Message::Ping { nonce: 7 }));
//! let mut oversize = bytes::BytesMut::from(&(4096u32).to_be_bytes()[..]);
//! assert!(codec.decode(&mut oversize).is_err_and(|e| e.is_misbehaviour()));
//! # Ok::<(), peer_protocol::Error>(())
//! ```

mod codec;
mod error;
mod event;
mod identity;
mod limits;
mod message;

pub use codec::Codec;
pub use error::Error;
pub use event::{
    Event, EventBody, PlaceOrder, SignedBatch, SignedFrontier, VerifiedBatch, VerifiedFrontier,
};
pub use identity::{
    Identity, NodeId, Signature, handshake_transcript, join_transcript, verify, vote_transcript,
};
pub use limits::{
    MAX_AGENT_LEN, MAX_BATCHES_PER_SYNC, MAX_CLIENT_ORDER_ID_LEN, MAX_EVENTS_PER_BATCH,
    MAX_FRAME_LEN, MAX_GOODBYE_TEXT_LEN, MAX_MARKET_LEN, MAX_MEMBERS, MAX_NETWORK_ID_LEN,
    MAX_PEERS_PER_MESSAGE,
};
pub use message::{
    GoodbyeReason, Hello, HelloAck, KNOWN_MESSAGE_TAGS, Message, PROTOCOL_VERSION, PeerAddress,
    decode, encode,
};
