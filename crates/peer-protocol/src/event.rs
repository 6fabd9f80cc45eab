//! Replicated events, signed batches of them, and signed frontiers.

use orderbook_core::{OrderType, Side, TimeInForce};
use rust_decimal::Decimal;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::identity::{Identity, NodeId, Signature, verify};
use crate::limits::{
    MAX_CLIENT_ORDER_ID_LEN, MAX_EVENTS_PER_BATCH, MAX_MARKET_LEN, MAX_MEMBERS, MAX_NETWORK_ID_LEN,
    check_len,
};

/// The domain tag in front of the canonical encoding of a batch's events when it is signed.
const BATCH_DOMAIN: &[u8] = b"p2p-exchange/batch/v1\0";
/// The domain tag in front of a frontier's fields when it is signed.
const FRONTIER_DOMAIN: &[u8] = b"p2p-exchange/frontier/v2\0";

/// One entry of the replicated log, created and signed by its `origin`.
///
/// The total order of the log is `(lamport, origin, seq)`. An event on its own carries no
/// signature: it travels inside a [`SignedBatch`], and only a [`VerifiedBatch`] should reach the
/// log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The node that created and signed the event.
    pub origin: NodeId,
    /// The origin's event counter: 1 for its first event, no gaps.
    pub seq: u64,
    /// The Lamport timestamp: 1 + the highest `lamport` the origin had seen.
    pub lamport: u64,
    /// What the event does.
    pub body: EventBody,
}

/// What an [`Event`] does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventBody {
    /// Founds a network: the first event of its founder.
    Genesis {
        /// The network's `NETWORK_ID` (at most [`MAX_NETWORK_ID_LEN`] bytes).
        network_id: String,
        /// A hash of the market configuration every member must share.
        market_hash: [u8; 32],
    },
    /// Places an order.
    Place(PlaceOrder),
    /// Cancels the origin's own order, the one placed by its event `order_seq`.
    Cancel {
        /// The `seq` of the origin's `Place` event.
        order_seq: u64,
    },
    /// A member admits a new member (effective at the event's settled position).
    Join {
        /// The node admitted.
        member: NodeId,
        /// The `seq` of the member's first event in this membership: 1 for a brand-new member;
        /// for a returning (evicted) member, one past the highest `seq` it reported for itself,
        /// so it never reuses a `seq` and the range its eviction cut stays cut.
        first_seq: u64,
    },
    /// The origin leaves the membership.
    Leave,
    /// A majority of the members evicts `target`.
    Evict {
        /// The member evicted.
        target: NodeId,
        /// The target's last valid `seq`; its later events are cut.
        last_seq: u64,
        /// The target's incarnation (the membership epoch at which it became a member).
        epoch: u64,
        /// The voting round every vote was cast in.
        round: u32,
        /// Each voter's signature over [`vote_transcript`](crate::vote_transcript) (at most
        /// [`MAX_MEMBERS`]).
        votes: Vec<(NodeId, Signature)>,
    },
}

/// A new order, as its origin placed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceOrder {
    /// The client's idempotency key (at most [`MAX_CLIENT_ORDER_ID_LEN`] bytes).
    pub client_order_id: Option<String>,
    /// The market symbol, such as `BTC-USD` (at most [`MAX_MARKET_LEN`] bytes).
    pub market: String,
    /// Buy or sell.
    pub side: Side,
    /// Limit or market.
    pub order_type: OrderType,
    /// The limit price (`None` for market orders).
    pub price: Option<Decimal>,
    /// The quantity.
    pub quantity: Decimal,
    /// How long the order stays active.
    pub time_in_force: TimeInForce,
}

impl Event {
    /// Checks the event's strings and lists against the protocol limits.
    pub fn check_limits(&self) -> Result<(), Error> {
        match &self.body {
            EventBody::Genesis { network_id, .. } => {
                check_len("genesis network_id", network_id.len(), MAX_NETWORK_ID_LEN)
            }
            EventBody::Place(order) => {
                check_len("market", order.market.len(), MAX_MARKET_LEN)?;
                if let Some(id) = &order.client_order_id {
                    check_len("client_order_id", id.len(), MAX_CLIENT_ORDER_ID_LEN)?;
                }
                Ok(())
            }
            EventBody::Evict { votes, .. } => check_len("evict votes", votes.len(), MAX_MEMBERS),
            EventBody::Cancel { .. } | EventBody::Join { .. } | EventBody::Leave => Ok(()),
        }
    }
}

/// Consecutive events of one origin, signed at once so the cost of ed25519 is shared by all of
/// them.
///
/// Always holds between 1 and [`MAX_EVENTS_PER_BATCH`] events (deserialization refuses anything
/// else). A `SignedBatch` from the wire is *unverified*: call [`SignedBatch::verify`] to get the
/// [`VerifiedBatch`] that the log accepts.
///
/// The signature covers a domain tag followed by the canonical postcard encoding of the events,
/// so it covers every field of every event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "BatchFields")]
pub struct SignedBatch {
    events: Vec<Event>,
    signature: Signature,
}

/// The fields of a [`SignedBatch`] before its invariants are checked.
#[derive(Deserialize)]
struct BatchFields {
    events: Vec<Event>,
    signature: Signature,
}

impl TryFrom<BatchFields> for SignedBatch {
    type Error = &'static str;

    fn try_from(fields: BatchFields) -> Result<SignedBatch, &'static str> {
        if fields.events.is_empty() {
            return Err("empty batch");
        }
        if fields.events.len() > MAX_EVENTS_PER_BATCH {
            return Err("too many events in a batch");
        }
        Ok(SignedBatch {
            events: fields.events,
            signature: fields.signature,
        })
    }
}

impl SignedBatch {
    /// Signs `events` as one batch of `identity`.
    ///
    /// The events must pass the same structural checks as [`SignedBatch::verify`] and all
    /// originate from `identity` ([`Error::WrongSigner`] otherwise).
    pub fn sign(identity: &Identity, events: Vec<Event>) -> Result<SignedBatch, Error> {
        check_structure(&events)?;
        let origin = events[0].origin;
        if origin != identity.node_id() {
            return Err(Error::WrongSigner {
                origin,
                signer: identity.node_id(),
            });
        }
        let signature = identity.sign(&signed_bytes(&events)?);
        Ok(SignedBatch { events, signature })
    }

    /// Checks the batch's structure, limits and signature, and returns it as trusted.
    ///
    /// Structure: 1 to [`MAX_EVENTS_PER_BATCH`] events of one origin, `seq` contiguous starting
    /// at 1 or later, `lamport` at least 1 and strictly increasing ([`Error::InvalidBatch`]).
    /// Then every event's [limits](Event::check_limits), then the origin's signature
    /// ([`Error::BadSignature`]).
    pub fn verify(self) -> Result<VerifiedBatch, Error> {
        check_structure(&self.events)?;
        for event in &self.events {
            event.check_limits()?;
        }
        verify(
            &self.origin(),
            &signed_bytes(&self.events)?,
            &self.signature,
        )?;
        Ok(VerifiedBatch(self))
    }

    /// The origin of the batch's first event (the signer, once verified).
    pub fn origin(&self) -> NodeId {
        self.first().origin
    }

    /// The `seq` of the first event.
    pub fn first_seq(&self) -> u64 {
        self.first().seq
    }

    /// The `seq` of the last event.
    pub fn last_seq(&self) -> u64 {
        self.last().seq
    }

    /// The `lamport` of the last event.
    pub fn last_lamport(&self) -> u64 {
        self.last().lamport
    }

    /// The events, in `seq` order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The signature.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Builds a batch from parts without checking anything (for tests of verification: a batch
    /// built this way must still pass [`SignedBatch::verify`] before it is trusted).
    ///
    /// Returns `None` if `events` is empty or longer than [`MAX_EVENTS_PER_BATCH`].
    pub fn from_parts(events: Vec<Event>, signature: Signature) -> Option<SignedBatch> {
        SignedBatch::try_from(BatchFields { events, signature }).ok()
    }

    fn first(&self) -> &Event {
        // Non-empty by construction: `sign`, `from_parts` and deserialization all refuse an
        // empty list.
        &self.events[0]
    }

    fn last(&self) -> &Event {
        &self.events[self.events.len() - 1]
    }
}

/// A [`SignedBatch`] whose structure and signature have been checked: the only form of events
/// the log should accept.
///
/// Constructible only by [`SignedBatch::verify`] and [`VerifiedBatch::sign`]; it serializes as
/// the signed batch it holds (deserialize a [`SignedBatch`] and verify it again).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct VerifiedBatch(SignedBatch);

impl VerifiedBatch {
    /// Signs `events` and returns the batch as verified (the signer trusts its own events).
    pub fn sign(identity: &Identity, events: Vec<Event>) -> Result<VerifiedBatch, Error> {
        SignedBatch::sign(identity, events).map(VerifiedBatch)
    }

    /// The events, in `seq` order.
    pub fn events(&self) -> &[Event] {
        self.0.events()
    }

    /// The signed batch, to relay or store.
    pub fn signed(&self) -> &SignedBatch {
        &self.0
    }

    /// The signed batch, to relay or store.
    pub fn into_signed(self) -> SignedBatch {
        self.0
    }

    /// The events, taken out of the batch.
    pub fn into_events(self) -> Vec<Event> {
        self.0.events
    }

    /// The verified origin of every event.
    pub fn origin(&self) -> NodeId {
        self.0.origin()
    }

    /// The `seq` of the first event.
    pub fn first_seq(&self) -> u64 {
        self.0.first_seq()
    }

    /// The `seq` of the last event.
    pub fn last_seq(&self) -> u64 {
        self.0.last_seq()
    }

    /// The `lamport` of the last event.
    pub fn last_lamport(&self) -> u64 {
        self.0.last_lamport()
    }
}

/// An origin's promise that no later event of it will carry a `lamport` at or below
/// `lamport`; its events up to `seq` are the ones it had created when it made the promise.
///
/// It also carries the origin's *acks*: for each node it lists (sorted by node id, at most
/// [`MAX_MEMBERS`]), the highest `seq` of that node's events the origin holds and vouches for.
/// Settlement uses them to know that an event is held by a majority of the members.
///
/// Fields are public so it can be built and inspected freely; only [`SignedFrontier::verify`]
/// turns it into the [`VerifiedFrontier`] that settlement should trust. The signature covers
/// every field, the acks included.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedFrontier {
    /// The node making the promise.
    pub origin: NodeId,
    /// The origin's highest `seq` at the time.
    pub seq: u64,
    /// No later event of the origin carries a `lamport` at or below this.
    pub lamport: u64,
    /// `(node, seq)`: the origin holds `node`'s events up to `seq` (sorted by node, distinct,
    /// at most [`MAX_MEMBERS`]).
    #[serde(deserialize_with = "bounded_acks")]
    pub acks: Vec<(NodeId, u64)>,
    /// The origin's signature over the other fields.
    pub signature: Signature,
}

impl SignedFrontier {
    /// Signs a frontier of `identity` without acks.
    pub fn sign(identity: &Identity, seq: u64, lamport: u64) -> SignedFrontier {
        let origin = identity.node_id();
        SignedFrontier {
            origin,
            seq,
            lamport,
            acks: Vec::new(),
            signature: identity.sign(&frontier_bytes(&origin, seq, lamport, &[])),
        }
    }

    /// Signs a frontier of `identity` carrying `acks` (sorted here by node id).
    ///
    /// [`Error::LimitExceeded`] if there are more than [`MAX_MEMBERS`] acks,
    /// [`Error::InvalidMessage`] if a node appears twice.
    pub fn sign_with_acks(
        identity: &Identity,
        seq: u64,
        lamport: u64,
        mut acks: Vec<(NodeId, u64)>,
    ) -> Result<SignedFrontier, Error> {
        acks.sort_unstable();
        check_acks(&acks)?;
        let origin = identity.node_id();
        let signature = identity.sign(&frontier_bytes(&origin, seq, lamport, &acks));
        Ok(SignedFrontier {
            origin,
            seq,
            lamport,
            acks,
            signature,
        })
    }

    /// The sum of the acked seqs (acks only grow, so a higher total is news).
    pub fn ack_total(&self) -> u128 {
        self.acks.iter().map(|(_, seq)| u128::from(*seq)).sum()
    }

    /// Checks the acks (sorted, distinct, within [`MAX_MEMBERS`]) and the origin's signature.
    pub fn verify(self) -> Result<VerifiedFrontier, Error> {
        check_acks(&self.acks)?;
        verify(
            &self.origin,
            &frontier_bytes(&self.origin, self.seq, self.lamport, &self.acks),
            &self.signature,
        )?;
        Ok(VerifiedFrontier(self))
    }
}

/// A [`SignedFrontier`] whose acks and signature have been checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct VerifiedFrontier(SignedFrontier);

impl VerifiedFrontier {
    /// The origin that signed it.
    pub fn origin(&self) -> NodeId {
        self.0.origin
    }

    /// The origin's highest `seq` at the time.
    pub fn seq(&self) -> u64 {
        self.0.seq
    }

    /// No later event of the origin carries a `lamport` at or below this.
    pub fn lamport(&self) -> u64 {
        self.0.lamport
    }

    /// The origin's acks: `(node, highest seq of it held)`, sorted by node.
    pub fn acks(&self) -> &[(NodeId, u64)] {
        &self.0.acks
    }

    /// The signed frontier, to relay.
    pub fn signed(&self) -> &SignedFrontier {
        &self.0
    }

    /// The signed frontier, to relay.
    pub fn into_signed(self) -> SignedFrontier {
        self.0
    }
}

/// Acks must be sorted by distinct node ids and within the members limit.
fn check_acks(acks: &[(NodeId, u64)]) -> Result<(), Error> {
    check_len("frontier acks", acks.len(), MAX_MEMBERS)?;
    if acks.windows(2).all(|w| w[0].0 < w[1].0) {
        Ok(())
    } else {
        Err(Error::InvalidMessage(
            "frontier acks not sorted by distinct nodes",
        ))
    }
}

/// Deserializes frontier acks, stopping at [`MAX_MEMBERS`] + 1 entries: a hostile peer cannot
/// make the decoder allocate or work beyond the members limit, whatever the frame holds.
fn bounded_acks<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<(NodeId, u64)>, D::Error> {
    struct AcksVisitor;

    impl<'de> Visitor<'de> for AcksVisitor {
        type Value = Vec<(NodeId, u64)>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "at most {MAX_MEMBERS} (node, seq) pairs")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut acks = Vec::new();
            while let Some(pair) = seq.next_element::<(NodeId, u64)>()? {
                if acks.len() == MAX_MEMBERS {
                    return Err(de::Error::custom("too many frontier acks"));
                }
                acks.push(pair);
            }
            Ok(acks)
        }
    }

    deserializer.deserialize_seq(AcksVisitor)
}

fn check_structure(events: &[Event]) -> Result<(), Error> {
    let Some(first) = events.first() else {
        return Err(Error::InvalidBatch("empty batch"));
    };
    check_len("batch events", events.len(), MAX_EVENTS_PER_BATCH)?;
    if first.seq == 0 {
        return Err(Error::InvalidBatch("seq starts at 1"));
    }
    if first.lamport == 0 {
        return Err(Error::InvalidBatch("lamport starts at 1"));
    }
    for pair in events.windows(2) {
        let (prev, next) = (&pair[0], &pair[1]);
        if next.origin != first.origin {
            return Err(Error::InvalidBatch("events of more than one origin"));
        }
        if prev.seq.checked_add(1) != Some(next.seq) {
            return Err(Error::InvalidBatch("seq not contiguous"));
        }
        if next.lamport <= prev.lamport {
            return Err(Error::InvalidBatch("lamport not strictly increasing"));
        }
    }
    Ok(())
}

fn signed_bytes(events: &[Event]) -> Result<Vec<u8>, Error> {
    postcard::to_extend(events, BATCH_DOMAIN.to_vec()).map_err(Error::Encode)
}

fn frontier_bytes(origin: &NodeId, seq: u64, lamport: u64, acks: &[(NodeId, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRONTIER_DOMAIN.len() + 56 + acks.len() * 40);
    out.extend_from_slice(FRONTIER_DOMAIN);
    out.extend_from_slice(origin.as_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&lamport.to_be_bytes());
    // The count first, so that no two ack lists encode to the same bytes.
    out.extend_from_slice(&(acks.len() as u64).to_be_bytes());
    for (node, seq) in acks {
        out.extend_from_slice(node.as_bytes());
        out.extend_from_slice(&seq.to_be_bytes());
    }
    out
}
