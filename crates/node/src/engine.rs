//! The deterministic core of a node: the replicated log, membership,
//! settlement and matching, as a pure state machine.
//!
//! [`Engine::handle`] takes one [`Input`] (a client command, a verified peer
//! message, a timer tick with the current time) and appends [`Effect`]s (make
//! these records durable, send this message, answer this client). It does no
//! I/O, reads no clock and uses no randomness: the same inputs give the same
//! effects and the same state, which is what the multi-node unit tests and
//! later fault-injection tests rely on. The async shell lives in `runtime.rs`.
//!
//! The effects of one batch of inputs must be executed in this order: every
//! [`Effect::Persist`] (and [`Effect::WipeLog`]) first, then one fsync, then
//! every other effect. Nothing leaves the node before what it depends on is
//! durable: an acknowledged order is on disk, and a frontier a peer receives
//! never covers events this node could forget in a crash.
//!
//! # Eviction and rejoin
//!
//! A silent member stalls settlement; a majority of the members may evict it. The rules:
//!
//! 1. `epoch` counts membership changes applied at settled positions (Join, Leave, Evict),
//!    0 at genesis, rebuilt by replay. `incarnation[m]` is the epoch at which `m` became a
//!    member (the founder: 0). A vote is about the key `(target, incarnation[target])`, carried
//!    in the `epoch` field of votes and `Evict` events.
//! 2. Failure detector: `last_heard[m]` is the engine time of the last new event or frontier of
//!    `m` (direct or relayed), or of any message or connection from `m` itself. An idle
//!    member only repeats its frontier: with eviction on, a repeat counts (and is relayed) once
//!    per heartbeat, so members that are not its neighbours hear it too. `last_heard` is reset
//!    when this node or `m` becomes a member and at the first tick after a restore.
//!    `m` is *suspect* when silent for [`EngineConfig::evict_after_ms`] (0: never). Only
//!    members vote, and only in networks of at least three members.
//! 3. On suspecting `m` a member asks every peer for `m`'s events (`SyncRequest`) and votes no
//!    earlier than [`VOTE_FETCH_MS`] later, and only while it hears a majority of the members
//!    (itself included: votes bind, rule 11, and a vote cast alone or on a minority side could
//!    never decide anything); if other votes name a higher `last_seq` than it holds, it
//!    fetches from those voters first. It votes `last_seq = delivered(m)`, once per key and
//!    round (in the latest round anyone voted in, rule 14), ever: [`Record::Vote`] is
//!    persisted before the vote leaves, and a restarted node
//!    re-sends its stored vote instead of casting a new one, whether or not it still suspects
//!    the target (while the key is current and undecided): a vote that never left before a
//!    crash binds its voter all the same (rule 11), and the others need it to decide.
//! 4. Votes are kept only for current members as voter and target (voter ≠ target) and the target's
//!    current incarnation. A vote carries (and signs) its voter's own incarnation and counts only
//!    while that is the voter's current one: a vote a node cast before it was evicted (its votes
//!    are released then, rule 11) never counts again once it is back. A second, different vote of
//!    one voter for one key in one round is equivocation: the first stays, it is counted, and the
//!    sender is flagged if it is the voter. New votes are relayed; votes for still-suspect targets
//!    are re-broadcast every [`VOTE_REBROADCAST_MS`].
//! 5. When votes of a majority of the current members (`> members / 2`) in one round agree on one
//!    `last_seq = N` (the latest round with such a majority), a member that is not the target,
//!    *still suspects it or voted against it*, holds its events up to `N` and has settled none of
//!    its events after `N` creates `Evict { target, last_seq: N, epoch, round, votes }` (votes
//!    sorted by voter), unless it already delivered one for that key. Duplicates are harmless.
//! 6. Delivering a valid `Evict` (target a member of that incarnation, not its creator; votes
//!    of distinct members other than the target, a majority, signatures valid; also a void
//!    one, rule 17) records the cut
//!    `N` (a second decision with another `N` is an error, counted, never applied). The
//!    target's unsettled events after `N` leave the log (their orders are `rejected` with
//!    [`EVICTED_REASON`]) and later ones are delivered *void*: they advance its delivered seq,
//!    are persisted and served to anti-entropy like any batch, but are never ordered (no
//!    lamport or settled-frontier checks, never in the unsettled set); a void `Place` becomes
//!    an order record `rejected` with [`EVICTED_REASON`], anything else does nothing. So every
//!    order a client was told about is on every node. The target no longer holds settlement
//!    back once this node holds its events up to `N`. An `Evict` not yet checkable
//!    (membership behind) waits in a small list, re-checked as membership changes (also
//!    during replay, so a replayed log voids the same events).
//! 7. At the `Evict`'s settled position (if no cut was recorded at delivery, it is checked
//!    against the settled membership first): if the target is still a member of that
//!    incarnation and the recorded cut is this `N`, it is removed, `epoch += 1`,
//!    `evictions += 1`; otherwise nothing happens.
//! 8. The evicted node learns the `Evict` by sync like any event: it cuts its own events alike
//!    (its pending orders after `N` become `rejected`), keeps its seq counter, stops taking
//!    orders ([`Phase::Joining`]) and asks to join again.
//! 9. A returning node gets a new `Join { member, first_seq }` whose `first_seq` is one past
//!    the highest seq it reported for itself in its `NetworkInfo` (or that the sponsor holds).
//!    Its events between the cut and `first_seq` are void (rule 6): every node fetches them
//!    like any others (the returning node holds them all), so delivered seqs line up with
//!    `first_seq` everywhere, and its ordered events resume at `first_seq` (also when
//!    `first_seq` is 1: a node evicted before its first event). Anti-entropy serves batches
//!    merged across origins in lamport order (the `Evict`, then the `Join`, then the new
//!    events, as they were stamped), never origin by origin. An event after the cut that
//!    arrives while no `Join` of its origin is known here (a live relay that overtook the
//!    sponsor's `Join`) and is stamped above the settled frontier waits in *limbo*: ordered
//!    in the unsettled set, not yet applied. A `Join` that brings the resume point sorts it
//!    (void, or an ordinary event of the new membership); reached in key order with no `Join`
//!    known it is void, as on every node: a `Join` ordered before it would have been
//!    delivered and settled here first. One stamped at or below the settled frontier is void
//!    at once for the same reason. A `Join` delivered before the decision that cuts its
//!    joiner (relayed ahead of it) gives the cut its resume point when the cut is recorded;
//!    without one, the target's events after the cut that were delivered as ordinary events
//!    before it (possibly of its next membership, relayed ahead of the decision) go to limbo
//!    too. A `Join` whose `first_seq` is at or below the cut is one of an earlier admission
//!    (a second sponsor's, relayed late) and never gives the resume point.
//! 10. A node back within `evict_after_ms` (a quick restart) is simply caught up. A
//!     (re)connecting member is not suspect any more, so stale votes are not acted on.
//!
//! 11. Acks, and votes as promises. Every frontier carries the signer's *acks*: for each current
//!     member and pending joiner, the highest seq of it delivered here. After voting `(target,
//!     incarnation, N)` (cast, restored from the log, or our own vote adopted back from a peer;
//!     with several rounds, `N` is its lowest vote, its first, rule 16) a node never acks the
//!     target beyond `N` until that incarnation ends (the `Evict` applied, or the target back with
//!     a new incarnation), with two refinements: it may ack as far as a majority of the *members*
//!     acks *without it* (any decision's voters, a majority of the members, then include one of
//!     those ackers, whose vote is at least that seq, so its own vote cannot be in a decision below
//!     it; pending joiners do not count here: a returning joiner's acks may be left over from its
//!     previous membership), and when this node is itself evicted its votes of that incarnation are
//!     released (never re-cast, re-sent or adopted again; once it is a member again they are
//!     forgotten, and it votes in its new incarnation like any member, also against a target it
//!     voted against before: barred from that, a rejoined member could be the one vote a blocked
//!     target lacks, and settlement stalled for good in a 60 s chaos run, seed 21). A node that did
//!     not vote acks a target with a recorded cut no further than the cut. A node that learned of
//!     its own eviction keeps announcing its frontier with acks until it is a member again, its
//!     released votes still capping them: its `Evict` may settle here first, while elsewhere it is
//!     still in the electorate of the events ordered before that `Evict`, which may need its acks
//!     (chaos seed 21), and the others keep counting them there (only its events after the cut are
//!     void; its acks are honest statements of what it holds). A member announces when its acks
//!     move, like when `(seq, lamport)` moves (same [`EngineConfig::frontier_min_interval_ms`]
//!     coalescing). Receivers keep, per origin, the acks of its verified frontiers merged by
//!     maximum (acks only grow; its frontier `seq` is its own ack), and a frontier is news
//!     (verified, kept, relayed) if its lamport is higher than the highest announced, or equal and
//!     it raises any ack held: the merged view's ack total grows (a total over one frontier alone
//!     would shrink when a member leaves the list, and hide news).
//! 12. Majority-held settlement. An event `(origin, seq)` settles only when, besides
//!     `lamport <= S`, a majority (`> n / 2`) of the *electorate* acks `seq` or more for its
//!     origin. The electorate is the current members plus the nodes admitted by delivered,
//!     unsettled `Join`s ordered before the event (as in [`Engine::settled_frontier`], a joiner
//!     counts from its `Join` on). This node counts by its own ack (what it holds, within its
//!     cap). No majority is needed when the origin is not in the electorate (its orders are
//!     rejected at settlement) or when a recorded decision of the origin's current
//!     incarnation keeps the event (`seq <= N`: the one decision of that incarnation can never
//!     cut it). The settle loop stays in key order: the first event lacking its majority stops
//!     it. In a network of one the node alone is the majority; of two, both. Replay settles up
//!     to the durable `Settled` marker without this check (those events were majority-held
//!     when first settled). Why it is safe: an eviction needs a majority of equal votes, a
//!     settlement a majority of acks; the two majorities share a member, who either acked `seq`
//!     before voting (its vote, and so the decision's `N`, is at least `seq`) or voted first
//!     (it never acks beyond its vote). So no decision ever cuts a settled event, and a member
//!     that hears the others but is heard by nobody (one-way loss, a stopped process) can no
//!     longer settle its own events that the others will cut. A node does not, as a separate
//!     rule, refuse to settle a target's events beyond its own vote: counting itself only
//!     within its cap is what safety needs, and the separate rule stalls a healed minority for
//!     good (it voted against the majority's members, whose later events the majority holds
//!     and settles).
//! 13. Joining a blocking vote. When the members whose votes cap them at or below some `N`
//!     leave at most half of the electorate of the target's event `N + 1` uncapped, that event
//!     can never gather a majority, here or anywhere, and neither can any later event of the
//!     target (they follow it in key order, and the settle loop stops at it): a member that
//!     holds the target's events up to `N` (none after `N` settled here), has not voted for
//!     that key and hears a majority votes `N` too (the highest such `N`), even if it does not
//!     suspect the target, and may then decide (rule 5). Voting `N` cuts nothing settled, and
//!     the eviction ends a block that would otherwise stall settlement for good (say two of
//!     four members voted while the fourth still heard the target). The electorate is that
//!     of event `N + 1` (rule 12: the members, plus joiners whose `Join` is ordered before
//!     it), not every pending joiner: a `Join` delivered while the target was silent is
//!     usually ordered after the target's next event, waits behind it, and its joiner acks
//!     nothing before it is a member, so counting it would hide the block and stall the
//!     network with the `Join` pending (chaos seed 21). When this node does not hold event
//!     `N + 1` (its key unknown), every pending joiner counts: the widest electorate, the
//!     strictest test. Capped voters cannot lift the block through rule 11's refinement
//!     either: at most half of the members are uncapped, never a majority without them.
//!     The join is cast in the latest round anyone voted in, at `N` or at what this node acked
//!     of the target if that is higher (rule 16; the round then splits and rule 14 brings it
//!     together); each voter is capped by its latest vote. `N` may also be what this node
//!     settled of the target when votes below it block the events after it (sim seed 397: the
//!     target's events past two equal votes settled with the acks of a member evicted since,
//!     and the two capped voters are now half of the electorate).
//! 14. Voting rounds. Votes are never withdrawn, so votes split between values (voters that
//!     held different amounts of the target's events, e.g. 8 and 12 among three members)
//!     would cap every voter for good with no value ever winning. A round `r` is *complete*
//!     when every current member but the target voted in it; complete without a majority
//!     (`count * 2 <= members` for every value) it can never decide, whatever else arrives.
//!     Then every member votes again in round `r + 1` at `q`: the highest value voted for the
//!     key (or what it settled or acked of the target, if higher), after fetching the target's
//!     events up to there from the voters that hold them. No vote goes down (rule 16), so a
//!     member that held more than the others is never asked to vote below what it acked, and
//!     from one complete round every member computes the same `q`: the next round decides.
//!     Acks stay capped by each voter's first (lowest) vote, so every vote a decision may
//!     count is at least every ack its voter gave. A node decides only in the highest round
//!     anyone voted in for the key. Remaining exposure: a
//!     dead round revived by a membership change (a leave or eviction of a voter of another
//!     value, or a late joiner's vote, can give a value held by half the voters a majority)
//!     would decide a second value; with every vote at or above its voter's acks it cuts
//!     nothing that majority settled, but the second decision is ignored where the first was
//!     recorded (rule 6), a divergence in the void events. The target is evicted even if it is
//!     heard again meanwhile: every member voted against it, and it rejoins.
//!     Rounds are bounded by [`MAX_VOTE_ROUND`].
//! 15. A member that learned of its own eviction (its cut recorded, [`Phase::Joining`]) still
//!     suspects, votes, joins blocking votes and votes in new rounds while it is in its own
//!     settled membership (it creates no `Evict`: its new events are void). Wherever its
//!     `Evict` has not settled it is a member and its vote may be the one a blocked decision
//!     lacks (sim seed 514: of five members two voted one value and one another, and only it
//!     was left to complete the round; chaos seed 21: two of four capped, the rest being the
//!     target and it); where its `Evict` has settled its vote is not counted and the majority
//!     is taken among the remaining members, which a one-member change keeps consistent (a
//!     majority of either membership shares a voter with any majority of the other).
//! 16. No vote below the voter's own acks. Every vote this node casts (rules 3, 13, 14) is at
//!     least every ack of the target it announced in this incarnation (kept per member, reset
//!     when the member leaves; after a restart, everything delivered, since announced acks are
//!     not logged) and what it would ack now. Then the quorum argument of rule 12
//!     needs no single membership: a decision's voters and a settlement's ackers share a
//!     member as long as the two memberships differ by at most one member, and that member's
//!     vote is at least its ack. Rule 13's join at the blocking `N` alone was safe only while
//!     the electorate stayed the same: chaos seed 21 (60 s) once cut 117 events its target had
//!     settled, after a member that had acked past `N` joined at `N` and another member left.
//! 17. A decision is a fact, whoever carries it. An `Evict` is an event of its creator, and
//!     two members may decide against each other at once (each `Evict` then lies after its
//!     creator's cut, void wherever the other decision is known first). So a void `Evict`
//!     records its decision like an ordinary one (the votes are a majority's), and every node
//!     ends with both cuts, in whichever order the copies arrive. A member that holds a
//!     recorded decision whose target is still a member of that incarnation, with no ordinary
//!     `Evict` carrying that cut left in its log (every copy was void), creates one carrying
//!     the same votes: the target then leaves the membership at that `Evict`'s settled
//!     position, the same on every node (rule 7). Such a copy may be checked after the other
//!     target has left: a vote counts when its voter is a member, or is the one member that
//!     left since the target's incarnation began (its removal recorded in `departed`, its
//!     signature checked under its last incarnation), and the majority is then taken over the
//!     members plus that one, the membership the votes were cast in (one change apart from the
//!     current one, so rule 16's quorum argument still holds; after two departures only
//!     members' votes count, as before). Test `two_members_deciding_against_each_other_converge`
//!     (the recording and re-issuing; the departed count is not reached there). Also, a
//!     [`Record::Vote`] is written after the settled marker of the membership it was cast in
//!     (replay must see a rejoin before the vote of the rejoined node).
//!
//! Where a decision takes effect. The membership change is applied at the `Evict`'s settled
//! position (rule 7), the same on every node. The cut is recorded when the decision is delivered
//! and the target's events after it leave the log then: the same outcome as voiding them at the
//! `Evict`'s position, since none of them can settle on any node before it (rule 12: settling one
//! needs the acks of a majority, and a majority voted at or below the cut and acks no further),
//! so the settled log, the books and the digests are the same either way; only the moment a
//! client reads `rejected` differs. Waiting for the `Evict`'s position would stall instead: an
//! event of the target after the cut that is ordered before the `Evict` never gathers its
//! majority and would hold the settle loop in front of the `Evict` for good.
//!
//! Equivocating origins. An origin that signs two different events with one seq is caught when
//! a batch of the second version reaches a node that delivered the first: counted in
//! `equivocations`, reported once, the origin scored down ([`PeerInput::Equivocation`]). Each
//! node keeps the version it delivered first, so an equivocating origin can still make nodes
//! diverge (their digest gossip shows it); versions that arrive only inside anti-entropy
//! responses are not compared.
//!
//! Known limits. Votes are never withdrawn: a vote that never becomes a decision caps its voter's
//! acks for that incarnation for good, and only a decision (possibly after new rounds, rule 14)
//! ends it. A round needs every member but the target to vote: while a member is down, a split
//! among the others waits for it (a stall, never a divergence). Each node counts rounds in the
//! membership it has settled: nodes at different epochs may compute different `q`s and split the
//! next round too, until their memberships agree; a change of two or more members while a round is
//! dead is not covered by rule 14's argument (see the revival case there). A member that
//! rejoined votes in its new incarnation (rule 11), while a node that has not settled its rejoin
//! yet still counts the vote it cast before its eviction: the two may differ, one more case of
//! nodes at different epochs deciding differently (before, such a member could not vote again
//! on that key at all, which stalled settlement for good). Rule 11's refinement
//! lets a capped voter ack past its vote while a majority of the members, the target included, acks
//! further: that is safe in one membership and, with rule 16, across a one-member change; two
//! changes while a vote is open are not covered. Rule 13 judges the block by the `Join`s this node
//! has delivered: a `Join` ordered before the target's event `N + 1` that it has not delivered yet
//! could widen that event's electorate elsewhere (the same exposure as the quorum argument's,
//! below). Rule 13 counts a member whose own eviction is decided but not yet settled as uncapped:
//! if its `Evict` is ordered behind a target's events that capped voters hold back, they settle
//! only once it is heard again (its acks keep counting, rule 11, and it votes, rule 15), not while
//! it stays down. An evicted node's released votes cap its acks only until it is a member again: a
//! node that has not yet settled its `Evict` then still counts its acks, uncapped, for events
//! ordered before it (a window not seen in tests). Cuts are recorded at delivery, not in log
//! order; membership changes at settled positions. Every node records every decision (rule 17),
//! so the cuts agree as long as each incarnation has one decision: two different decisions for
//! one key (the revival of rule 14) are recorded first-come, and the second is counted as an
//! error and ignored, a divergence in the void events (digest gossip reports it). Taking the
//! lower of the two would not close it: a node that knows only the higher one settles the
//! target's events up to it without a majority (rule 12), which is what lets a target's
//! events past the voters' first votes settle at all. Limbo (rule 9)
//! trusts the first `Join` it sees: a `Join` whose sponsor is itself cut (void on nodes that hold
//! that cut, delivered on the others) can sort the same event differently on two nodes; and a
//! faulty returning node could stamp a new event below its own `Join`, which nodes that have the
//! `Join` reject as below the settled position (an honest node creates nothing while joining).
//! Deciding void or ordinary at the settled position, from the first `Join` of the origin applied
//! before the event in key order, would close both. Pending joiners widen the electorate of
//! settlement but not that of a decision taken in the settled membership; the quorum argument
//! assumes the two are the same membership. A relay can keep a dead member looking alive by
//! replaying its last frontier (a liveness, not a safety, issue).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;

use orderbook_core::{
    Command, Event as BookEvent, Exchange, MarketSpec, NewOrder, OrderType, SelfTradePrevention,
    Side, TimeInForce,
};
use peer_protocol::{
    Event, EventBody, GoodbyeReason, Identity, Message, NodeId, PlaceOrder, Signature, SignedBatch,
    SignedFrontier, VerifiedBatch, VerifiedFrontier,
};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::ids::{ApiOrderId, hex, order_id, owner_of};

/// The total order key of an event: `(lamport, origin, seq)`.
pub type Key = (u64, NodeId, u64);

/// A digest and the settled position it was computed at: (settled events, settled key, digest).
type CachedDigest = (u64, Option<Key>, [u8; 32]);

/// Most local events signed into one batch.
pub const MAX_LOCAL_BATCH: usize = 1000;
/// Most out-of-order batches buffered (over all origins) while a gap is fetched.
pub const MAX_BUFFERED_BATCHES: usize = 4096;
/// Most buffered batches of origins not (yet) admitted to the network.
pub const MAX_BUFFERED_UNKNOWN: usize = 256;
/// Most events sent in one `SyncResponse`.
pub const MAX_SYNC_EVENTS: usize = 8192;
/// Trades kept per market for the API (the digest covers all of them through a hash chain).
pub const MAX_TRADES_KEPT: usize = 10_000;
/// A digest checkpoint is recorded every this many settled events.
pub const CHECKPOINT_EVERY: u64 = 1000;

/// The highest lamport a peer's event or frontier may carry. Anything above is invalid input
/// from that peer: the clock of an honest network never gets near it, and the ceiling leaves
/// room so that `clock + 1` can never wrap.
pub const MAX_LAMPORT: u64 = u64::MAX / 2;
const SYNC_INTERVAL_MS: u64 = 2000;
/// At most one `SyncRequest` per peer is answered per this interval; extra ones are dropped
/// (the requester's periodic sync asks again).
pub const SYNC_SERVE_INTERVAL_MS: u64 = 250;
const DIGEST_INTERVAL_MS: u64 = 1000;
const JOIN_RETRY_MS: u64 = 1000;
const GAP_SYNC_MIN_MS: u64 = 100;
const MAX_CLIENT_ORDER_ID_LEN: usize = peer_protocol::MAX_CLIENT_ORDER_ID_LEN;
/// After a member becomes suspect (and this node asked every peer for its events), this node
/// waits this long for the answers before it votes.
pub const VOTE_FETCH_MS: u64 = 1000;
/// Stored votes for still-suspect targets are re-broadcast this often (a member that connects
/// late gets them).
pub const VOTE_REBROADCAST_MS: u64 = 2000;
/// At most this often a voter-to-be asks the voters holding more of a target's events for them.
const VOTE_FETCH_RETRY_MS: u64 = 250;
/// Most delivered `Evict` events kept while they are not yet checkable.
const MAX_PENDING_EVICTS: usize = 64;
/// The highest voting round a vote may name (rule 14 of the module docs): a round only starts
/// when the one before is complete without a majority, so honest rounds stay far below this.
pub const MAX_VOTE_ROUND: u32 = 64;
/// Why an order is rejected when its node was evicted before the order settled.
pub const EVICTED_REASON: &str = "its node was evicted before the order settled";

/// The engine's fixed parameters.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The network id (part of the genesis and of join transcripts).
    pub network_id: String,
    /// The markets traded.
    pub markets: Vec<MarketSpec>,
    /// Found a network at the first tick instead of waiting `join_window_ms`.
    pub found: bool,
    /// How long a fresh node looks for an existing network before founding one.
    pub join_window_ms: u64,
    /// At least this often an idle member announces its frontier.
    pub heartbeat_ms: u64,
    /// At most this often a busy member announces its frontier (coalescing).
    pub frontier_min_interval_ms: u64,
    /// A member sponsors (admits) only a peer connected to it for at least this long, so
    /// that short-lived connections cannot collect memberships.
    pub sponsor_min_connected_ms: u64,
    /// After this much silence a member is suspect and the others vote to evict it (0: never).
    pub evict_after_ms: u64,
}

/// The default of [`EngineConfig::evict_after_ms`]: ten seconds of silence.
pub const DEFAULT_EVICT_AFTER_MS: u64 = 10_000;

/// One input to the engine.
#[derive(Debug)]
pub enum Input {
    /// A client places an order (validated here before any event exists).
    Place {
        /// Echoed in the [`Effect::Reply`].
        request: u64,
        /// The order.
        order: PlaceOrder,
    },
    /// A client cancels one of this node's orders.
    Cancel {
        /// Echoed in the [`Effect::Reply`].
        request: u64,
        /// The order.
        order_id: ApiOrderId,
    },
    /// A peer connected (its handshake succeeded).
    Connected {
        /// The peer.
        peer: NodeId,
    },
    /// A peer disconnected.
    Disconnected {
        /// The peer.
        peer: NodeId,
    },
    /// A message from a peer, signatures already checked.
    Peer {
        /// The sender (not necessarily the origin of what it carries).
        from: NodeId,
        /// The message.
        message: PeerInput,
    },
    /// Time passes: periodic work (frontier heartbeat, anti-entropy, digest gossip, join window).
    Tick {
        /// Milliseconds on a monotonic clock.
        now_ms: u64,
    },
    /// The end of one loop iteration: sign this iteration's local events into a batch and
    /// announce the frontier if it moved.
    Flush {
        /// Milliseconds on a monotonic clock.
        now_ms: u64,
    },
}

/// The peer messages the engine consumes, with signatures already verified by the caller.
#[derive(Debug)]
pub enum PeerInput {
    /// New events of one origin.
    Batch(VerifiedBatch),
    /// An origin's frontier.
    Frontier(VerifiedFrontier),
    /// Anti-entropy request: the peer's delivered clock.
    SyncRequest {
        /// Origin -> highest contiguous seq delivered.
        clock: BTreeMap<NodeId, u64>,
    },
    /// Anti-entropy answer.
    SyncResponse {
        /// The batches, in delivery order.
        batches: Vec<VerifiedBatch>,
        /// Whether the responder sent everything.
        done: bool,
    },
    /// Digest gossip.
    Digest {
        /// The settled lamport.
        lamport: u64,
        /// The settled event count.
        settled_events: u64,
        /// The digest at that position.
        digest: [u8; 32],
    },
    /// What the peer knows of its network.
    NetworkInfo {
        /// Its genesis id.
        genesis: Option<[u8; 32]>,
        /// Whether its log holds orders.
        has_orders: bool,
        /// Its current members.
        members: Vec<NodeId>,
        /// Its delivered clock.
        clock: BTreeMap<NodeId, u64>,
    },
    /// The peer (whose signature over the join transcript was checked) asks to be admitted.
    JoinRequest,
    /// Proof that `origin` signed two different events with one seq: a batch with a valid
    /// signature of `origin` that differs at `seq` from the event delivered here. (The sender
    /// may be a relay; the batch itself is dropped, the delivered event stays.)
    Equivocation {
        /// The origin that signed both.
        origin: NodeId,
        /// The first seq at which they differ.
        seq: u64,
    },
    /// A member's vote to evict another (its signature already checked; the sender may be a
    /// relay, not the voter).
    Vote {
        /// The member voting (the signer).
        voter: NodeId,
        /// The member to evict.
        target: NodeId,
        /// The target's incarnation (the epoch at which it became a member).
        epoch: u64,
        /// The voting round (rule 14 of the module docs).
        round: u32,
        /// The target's last valid `seq` in the voter's view.
        last_seq: u64,
        /// The voter's signature over [`peer_protocol::vote_transcript`].
        signature: Signature,
    },
}

/// A durable record of the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// A delivered batch (any origin).
    Batch(SignedBatch),
    /// Everything up to this key (inclusive) is settled: replay settles up to here.
    Settled {
        /// The key's lamport.
        lamport: u64,
        /// The key's origin.
        origin: NodeId,
        /// The key's seq.
        seq: u64,
    },
    /// This node voted to evict `target` (incarnation `epoch`) at `last_seq`: persisted before
    /// the vote leaves, so a restarted node re-sends it and never casts a second, different one.
    Vote {
        /// The member voted against.
        target: NodeId,
        /// Its incarnation.
        epoch: u64,
        /// The voting round (rule 14 of the module docs).
        round: u32,
        /// Its last valid `seq` in this node's vote.
        last_seq: u64,
    },
}

/// What the engine asks its shell to do.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Append a record to the durable log (before anything else of this iteration leaves).
    Persist(Record),
    /// Erase the durable log: this node's empty network lost a genesis merge.
    WipeLog,
    /// Send a message to one peer.
    Send {
        /// The peer.
        to: NodeId,
        /// The message.
        message: Message,
    },
    /// Send a message to every connected peer, except one.
    Broadcast {
        /// The message.
        message: Message,
        /// The peer not to send it to (usually the one it came from).
        except: Option<NodeId>,
    },
    /// Disconnect a peer.
    Disconnect {
        /// The peer.
        peer: NodeId,
        /// Why.
        reason: GoodbyeReason,
    },
    /// Score a peer down for provably bad behaviour.
    Misbehaviour {
        /// The peer.
        peer: NodeId,
        /// What it did.
        what: String,
    },
    /// Answer a client command (after the fsync).
    Reply {
        /// The request id of the input.
        request: u64,
        /// The answer.
        reply: Result<OrderView, ClientError>,
    },
    /// A settled trade (for the WebSocket stream).
    Trade(TradeView),
    /// One of this node's own orders settled (for settlement-latency metrics).
    Settled(ApiOrderId),
    /// A market's settled book changed (for the WebSocket stream).
    BookChanged(String),
}

/// Why a client command was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// The kind (maps to an HTTP status).
    pub kind: ClientErrorKind,
    /// A stable machine-readable code, e.g. `off_tick`.
    pub code: &'static str,
    /// A human-readable message (lowercase, no trailing period).
    pub message: String,
}

/// The kinds of [`ClientError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientErrorKind {
    /// Malformed or invalid input (400).
    BadRequest,
    /// No such order (404).
    NotFound,
    /// Not allowed (403).
    Forbidden,
    /// The order is already finished (409).
    Conflict,
    /// The node cannot take orders now, e.g. it is not a member yet (503).
    Unavailable,
}

impl ClientError {
    fn new(kind: ClientErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        ClientError {
            kind,
            code,
            message: message.into(),
        }
    }

    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        ClientError::new(ClientErrorKind::BadRequest, code, message)
    }
}

/// The status of an order as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Accepted into the log, not yet settled.
    Pending,
    /// Settled and resting, nothing filled.
    Open,
    /// Settled, resting, partly filled.
    PartiallyFilled,
    /// Completely filled.
    Filled,
    /// Cancelled (by its owner, or the unfilled rest of an IOC/market order).
    Cancelled,
    /// Rejected by the matcher at settlement (e.g. FOK unfillable, post-only would take).
    Rejected,
}

impl OrderStatus {
    fn is_final(self) -> bool {
        matches!(
            self,
            OrderStatus::Filled | OrderStatus::Cancelled | OrderStatus::Rejected
        )
    }
}

/// An order as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderView {
    /// `<origin prefix hex>-<seq>`.
    pub order_id: String,
    /// The node that placed it.
    pub origin: String,
    /// The client's idempotency key.
    pub client_order_id: Option<String>,
    /// The market.
    pub market: String,
    /// Buy or sell.
    pub side: Side,
    /// Limit or market.
    #[serde(rename = "type")]
    pub order_type: OrderType,
    /// The limit price.
    pub price: Option<Decimal>,
    /// The ordered quantity.
    pub quantity: Decimal,
    /// The time in force.
    pub time_in_force: TimeInForce,
    /// The status.
    pub status: OrderStatus,
    /// The filled quantity.
    pub filled_quantity: Decimal,
    /// The quantity still open (0 once finished).
    pub remaining_quantity: Decimal,
    /// Why it was rejected or cancelled, if it was.
    pub reason: Option<String>,
    /// The Lamport timestamp of its event.
    pub lamport: u64,
    /// Whether a cancel of it has been issued.
    pub cancel_requested: bool,
}

/// A settled trade as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TradeView {
    /// Sequential over the whole network's settled history, from 1.
    pub trade_id: u64,
    /// The market.
    pub market: String,
    /// The price (the maker's).
    pub price: Decimal,
    /// The quantity.
    pub quantity: Decimal,
    /// The resting order.
    pub maker_order_id: String,
    /// The incoming order.
    pub taker_order_id: String,
    /// The incoming order's side.
    pub taker_side: Side,
    /// The Lamport timestamp of the taker's event (its settled position).
    pub lamport: u64,
}

/// Where this node stands in joining its network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// No network yet: looking for one during the join window.
    Fresh,
    /// Found a network, waiting for a member to admit it.
    Joining,
    /// A member: may place orders.
    Member,
}

/// A snapshot of the engine's replication state, for `/v1/status`.
#[derive(Debug, Clone, Serialize)]
pub struct EngineStatus {
    /// This node's phase.
    pub phase: Phase,
    /// The genesis id (hex).
    pub genesis: Option<String>,
    /// The members (hex node ids), in id order.
    pub members: Vec<String>,
    /// Events delivered (all origins).
    pub events_delivered: u64,
    /// Events settled and applied.
    pub settled_events: u64,
    /// Events delivered but not yet settled.
    pub pending_events: u64,
    /// The settled Lamport position.
    pub settled_lamport: u64,
    /// The current settled frontier (min over members' frontiers).
    pub settled_frontier: Option<u64>,
    /// This node's Lamport clock.
    pub lamport: u64,
    /// The state digest (hex).
    pub digest: String,
    /// The members settlement waits for (hex), when events are pending: those whose frontier
    /// is below the first pending event, or, once every frontier is above it, those that do
    /// not ack it yet (it lacks a majority of holders).
    pub waiting_for: Vec<String>,
    /// Events rejected (bad lamport, below the settled frontier).
    pub rejected_events: u64,
    /// Digest mismatches with peers at the same position.
    pub digest_mismatches: u64,
    /// The per-origin delivered clock (hex -> seq).
    pub clock: BTreeMap<String, u64>,
    /// Membership changes (joins, leaves, evictions) applied at settled positions.
    pub epoch: u64,
    /// Members this node suspects (silent for `evict_after_ms`), hex.
    pub suspects: Vec<String>,
    /// Evictions applied.
    pub evictions: u64,
    /// The eviction votes held, as `voter>target@incarnation:last_seq` (short ids).
    pub votes: Vec<String>,
    /// Evicted origins (hex) -> their last valid seq: later events of theirs are cut.
    pub cut: BTreeMap<String, u64>,
    /// This node's lamport minus the settled lamport.
    pub settlement_lag: u64,
    /// How long settlement has not advanced while events are pending (0 when nothing is).
    pub stalled_ms: u64,
    /// Equivocating votes seen (a second, different vote of one voter for one target),
    /// conflicting eviction decisions (another `last_seq` for a decided target) and origins
    /// caught signing two different events with one seq.
    pub equivocations: u64,
}

#[derive(Debug, Default)]
struct OriginState {
    /// Highest contiguous seq delivered.
    delivered: u64,
    /// Lamport of the last delivered event.
    last_lamport: u64,
    /// Delivered batches, in seq order (for anti-entropy answers).
    batches: Vec<Arc<SignedBatch>>,
    /// Highest trusted frontier lamport.
    trusted: u64,
    /// Highest announced frontier not yet trusted: (seq, lamport).
    pending_frontier: Option<(u64, u64)>,
    /// Highest announced frontier lamport seen (trusted or not), for dedup.
    announced: u64,
    /// Highest seq of the origin's events settled here.
    settled: u64,
    /// When a frontier of the origin was last taken as a sign of life (and relayed).
    alive_ms: Option<u64>,
    /// The acks of the origin's frontiers (signatures verified), merged by maximum: node ->
    /// the highest seq of it the origin holds. Its own frontier `seq` counts as its own ack.
    acks: BTreeMap<NodeId, u64>,
}

#[derive(Debug, Clone)]
struct OrderRecord {
    origin: NodeId,
    seq: u64,
    lamport: u64,
    order: PlaceOrder,
    filled: Decimal,
    status: OrderStatus,
    reason: Option<String>,
    cancel_requested: bool,
}

#[derive(Debug, Default)]
struct PeerState {
    /// The genesis the peer reported (None until its NetworkInfo).
    genesis: Option<Option<[u8; 32]>>,
    /// Whether it reported itself a member.
    member: bool,
    last_gap_sync_ms: Option<u64>,
    /// When a `SyncRequest` of this peer was last answered (rate limit).
    last_sync_served_ms: Option<u64>,
    /// When the peer connected (engine time).
    connected_ms: u64,
    /// The highest seq of its own events the peer reported (in its last `NetworkInfo`).
    own_seq: u64,
}

/// An eviction decision as delivered: the target's events after `last_seq` (and before
/// `resume`, the first seq of its next membership, once a rejoin is delivered) are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cut {
    /// The target's incarnation the decision was about.
    incarnation: u64,
    /// The target's last valid seq.
    last_seq: u64,
    /// The first seq of the target's next membership, once its `Join` is delivered.
    resume: Option<u64>,
}

/// The votes behind a recorded cut (recorded with it; its incarnation and `last_seq` are the
/// cut's), kept so that a member can carry them again in a new `Evict` when every `Evict`
/// that carried them here was void (rule 17).
#[derive(Debug, Clone)]
struct Decision {
    /// The round the votes were cast in.
    round: u32,
    /// The agreeing votes, sorted by voter.
    votes: Vec<(NodeId, Signature)>,
}

impl Cut {
    fn drops(&self, seq: u64) -> bool {
        seq > self.last_seq && self.resume.is_none_or(|resume| seq < resume)
    }
}

/// A member this node suspects: silent since `since_ms`.
#[derive(Debug, Clone, Copy)]
struct Suspect {
    since_ms: u64,
    last_fetch_ms: Option<u64>,
}

/// What checking a delivered `Evict` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EvictCheck {
    Valid,
    /// Maybe valid once more of the log settles here (the target's or a voter's `Join`).
    NotYet,
    Invalid(&'static str),
}

/// The replicated log, membership, settlement and matching of one node.
pub struct Engine {
    identity: Arc<Identity>,
    me: NodeId,
    config: EngineConfig,
    market_hash: [u8; 32],
    // Network.
    genesis: Option<([u8; 32], NodeId)>,
    target_genesis: Option<[u8; 32]>,
    /// Peers that told us they belong to `target_genesis` while we join it.
    target_reporters: BTreeSet<NodeId>,
    members: BTreeSet<NodeId>,
    /// For members admitted by a `Join`: its lamport (their frontier floor).
    member_floor: BTreeMap<NodeId, u64>,
    /// Delivered, not yet settled `Join` events: their key and the node they admit. Such a
    /// node's events (all stamped above its Join) may arrive before the Join settles, so it
    /// holds the settled frontier down like a member whose floor is the Join's lamport.
    pending_joins: BTreeMap<Key, NodeId>,
    /// Origins whose events are accepted: the founder and every node named by a delivered `Join`.
    known_origins: BTreeSet<NodeId>,
    has_orders: bool,
    // Log.
    origins: BTreeMap<NodeId, OriginState>,
    buffer: BTreeMap<(NodeId, u64), (Option<NodeId>, VerifiedBatch)>,
    clock: u64,
    unsettled: BTreeMap<Key, Event>,
    settled_key: Option<Key>,
    settled_events: u64,
    events_delivered: u64,
    local: Vec<Event>,
    persisted_settled: Option<Key>,
    // Matching.
    exchange: Exchange,
    orders: HashMap<u128, OrderRecord>,
    client_ids: HashMap<String, u64>,
    trades: BTreeMap<String, VecDeque<TradeView>>,
    trade_count: u64,
    trade_chain: [u8; 32],
    scratch: Vec<BookEvent>,
    // Digests.
    digests: VecDeque<(u64, [u8; 32])>,
    digest_mismatches: u64,
    rejected_events: u64,
    // Peers and timers.
    peers: BTreeMap<NodeId, PeerState>,
    now_ms: u64,
    started_ms: Option<u64>,
    last_frontier: (u64, u64),
    /// The acks of the last frontier announced.
    last_acks: Vec<(NodeId, u64)>,
    last_frontier_ms: Option<u64>,
    last_sync_ms: Option<u64>,
    last_digest_ms: Option<u64>,
    last_join_ms: Option<u64>,
    join_cursor: usize,
    announce_info: bool,
    /// The digest of the last settled position it was computed at (hashing every resting
    /// order is the costliest read: `/v1/status` and gossip ask for it many times per position).
    digest_cache: std::cell::Cell<Option<CachedDigest>>,
    // Eviction.
    /// Membership changes applied at settled positions.
    epoch: u64,
    /// Member -> the epoch at which it became a member (the founder: 0).
    incarnation: BTreeMap<NodeId, u64>,
    evictions: u64,
    equivocations: u64,
    /// Origins caught signing two different events with one seq (reported once each).
    equivocators: BTreeSet<NodeId>,
    /// Member -> engine time of the last new event or frontier of it.
    last_heard: BTreeMap<NodeId, u64>,
    suspects: BTreeMap<NodeId, Suspect>,
    /// (target, incarnation) -> (round, voter) -> (last_seq, signature); only current members.
    votes: BTreeMap<(NodeId, u64), RoundVotes>,
    /// This node's own votes (persisted as [`Record::Vote`]), key -> round -> `last_seq`,
    /// until its own eviction ends the incarnation it cast them in.
    my_votes: BTreeMap<(NodeId, u64), BTreeMap<u32, u64>>,
    /// This node's votes released by its own eviction (key -> round -> `last_seq`): never
    /// cast, re-sent or adopted again (rebuilt by replay, as the eviction is replayed after the
    /// votes). Until this node is a member again they still cap the acks it announces (rule 11).
    released_votes: BTreeMap<(NodeId, u64), BTreeMap<u32, u64>>,
    /// Per key: when this node last fetched the target's events to vote in a new round or to
    /// decide while not suspecting the target (rule 14).
    vote_fetch_ms: BTreeMap<(NodeId, u64), u64>,
    /// The highest ack this node announced for each member's current incarnation (rule 16:
    /// no vote of this node goes below it).
    max_announced: BTreeMap<NodeId, u64>,
    cuts: BTreeMap<NodeId, Cut>,
    /// The decision behind each recorded cut (rule 17).
    decisions: BTreeMap<NodeId, Decision>,
    /// For each node that left the membership (left or evicted) and is not back: the epoch
    /// its removal made current. A vote it cast while still a member keeps counting for a
    /// decision about a target that was a member with it (rule 17).
    departed: BTreeMap<NodeId, u64>,
    /// Unsettled events of a cut origin after its cut, delivered while no `Join` of it was
    /// known: void unless a `Join` ordered before them brings its resume point (rule 9).
    /// (Value: whether `on_delivered` already ran for it, delivered before its cut was known.)
    limbo: BTreeMap<Key, bool>,
    /// Delivered `Evict` events not yet checkable, with the epoch they were last checked at.
    pending_evicts: Vec<Event>,
    pending_evicts_checked: u64,
    last_vote_broadcast_ms: Option<u64>,
    /// (settled events, engine time) when settlement last advanced or nothing was pending.
    progress: (u64, u64),
}

/// Whether a periodic action last done at `last` is due at `now` (and marks it done).
fn due(last: &mut Option<u64>, now: u64, interval: u64) -> bool {
    match *last {
        Some(at) if now.saturating_sub(at) < interval => false,
        _ => {
            *last = Some(now);
            true
        }
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("me", &self.me)
            .field("phase", &self.phase())
            .field("clock", &self.clock)
            .field("settled_events", &self.settled_events)
            .finish_non_exhaustive()
    }
}

/// The genesis id of a founder's network: sha256 over a domain tag, the founder,
/// the network id and the market hash.
pub fn genesis_id(founder: &NodeId, network_id: &str, market_hash: &[u8; 32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"p2p-exchange/genesis/v1\0");
    hasher.update(founder.as_bytes());
    hasher.update((network_id.len() as u64).to_le_bytes());
    hasher.update(network_id.as_bytes());
    hasher.update(market_hash);
    hasher.finalize().into()
}

impl Engine {
    /// A fresh engine (no network yet). Fails if the markets are invalid.
    pub fn new(identity: Arc<Identity>, config: EngineConfig) -> Result<Engine, String> {
        let exchange = Exchange::new(config.markets.clone()).map_err(|e| e.to_string())?;
        let market_hash = crate::ids::market_hash(&config.markets);
        Ok(Engine {
            me: identity.node_id(),
            identity,
            market_hash,
            genesis: None,
            target_genesis: None,
            target_reporters: BTreeSet::new(),
            members: BTreeSet::new(),
            member_floor: BTreeMap::new(),
            pending_joins: BTreeMap::new(),
            known_origins: BTreeSet::new(),
            has_orders: false,
            origins: BTreeMap::new(),
            buffer: BTreeMap::new(),
            clock: 0,
            unsettled: BTreeMap::new(),
            settled_key: None,
            settled_events: 0,
            events_delivered: 0,
            local: Vec::new(),
            persisted_settled: None,
            exchange,
            orders: HashMap::new(),
            client_ids: HashMap::new(),
            trades: BTreeMap::new(),
            trade_count: 0,
            trade_chain: [0; 32],
            scratch: Vec::new(),
            digests: VecDeque::new(),
            digest_mismatches: 0,
            rejected_events: 0,
            peers: BTreeMap::new(),
            now_ms: 0,
            started_ms: None,
            last_frontier: (0, 0),
            last_acks: Vec::new(),
            last_frontier_ms: None,
            last_sync_ms: None,
            last_digest_ms: None,
            last_join_ms: None,
            join_cursor: 0,
            announce_info: false,
            digest_cache: std::cell::Cell::new(None),
            epoch: 0,
            incarnation: BTreeMap::new(),
            evictions: 0,
            equivocations: 0,
            equivocators: BTreeSet::new(),
            last_heard: BTreeMap::new(),
            suspects: BTreeMap::new(),
            votes: BTreeMap::new(),
            my_votes: BTreeMap::new(),
            released_votes: BTreeMap::new(),
            vote_fetch_ms: BTreeMap::new(),
            max_announced: BTreeMap::new(),
            cuts: BTreeMap::new(),
            decisions: BTreeMap::new(),
            departed: BTreeMap::new(),
            limbo: BTreeMap::new(),
            pending_evicts: Vec::new(),
            pending_evicts_checked: 0,
            last_vote_broadcast_ms: None,
            progress: (0, 0),
            config,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.me
    }

    /// The market hash every member shares.
    pub fn market_hash(&self) -> [u8; 32] {
        self.market_hash
    }

    /// The configured markets.
    pub fn markets(&self) -> &[MarketSpec] {
        &self.config.markets
    }

    /// The genesis id, once this node belongs to a network.
    pub fn genesis(&self) -> Option<[u8; 32]> {
        self.genesis.map(|(id, _)| id)
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        if self.genesis.is_none() {
            if self.target_genesis.is_some() {
                Phase::Joining
            } else {
                Phase::Fresh
            }
        } else if self.members.contains(&self.me) && !self.cut_active(&self.me) {
            Phase::Member
        } else {
            // Also a node that left, or one that learned of its own eviction: it asks to be
            // admitted again.
            Phase::Joining
        }
    }

    /// The current members.
    pub fn members(&self) -> &BTreeSet<NodeId> {
        &self.members
    }

    /// The number of settled events.
    pub fn settled_events(&self) -> u64 {
        self.settled_events
    }

    /// The number of delivered events not yet settled.
    pub fn pending_events(&self) -> usize {
        self.unsettled.len()
    }

    /// The delivered clock: origin -> highest contiguous seq.
    pub fn clock(&self) -> BTreeMap<NodeId, u64> {
        self.origins
            .iter()
            .filter(|(_, st)| st.delivered > 0)
            .map(|(id, st)| (*id, st.delivered))
            .collect()
    }

    /// Whether a batch of `origin` ending at `last_seq` would add anything (lets the
    /// shell skip verifying duplicates, which flooding produces a lot of).
    pub fn wants_batch(&self, origin: &NodeId, last_seq: u64) -> bool {
        // Events after an eviction's cut are delivered too (as void), so every node holds the
        // evicted node's orders and can say they were rejected.
        last_seq > self.origins.get(origin).map_or(0, |st| st.delivered)
    }

    /// For a batch whose events were all delivered here: the first seq at which it differs
    /// from the batches held (none for a copy of one of them, the common case: an honest
    /// origin signs each event once, in batches it never re-cuts, and ed25519 signatures are
    /// deterministic, so a copy has the same signature).
    fn conflicting_seq(&self, batch: &SignedBatch) -> Option<u64> {
        let held = &self.origins.get(&batch.origin())?.batches;
        // Held batches are disjoint and in seq order: the last one starting at or before it.
        let at = held.partition_point(|b| b.first_seq() <= batch.first_seq());
        let same = held.get(at.checked_sub(1)?)?;
        if same.first_seq() == batch.first_seq()
            && same.last_seq() == batch.last_seq()
            && same.signature() == batch.signature()
        {
            return None;
        }
        batch.events().iter().find_map(|event| {
            let at = held.partition_point(|b| b.first_seq() <= event.seq);
            let holder = held.get(at.checked_sub(1)?)?;
            let mine = holder.events().iter().find(|e| e.seq == event.seq)?;
            (mine != event).then_some(event.seq)
        })
    }

    /// Whether a vote adds anything (lets the shell skip verifying the copies flooding brings).
    pub fn wants_vote(
        &self,
        voter: &NodeId,
        target: &NodeId,
        epoch: u64,
        round: u32,
        last_seq: u64,
    ) -> bool {
        self.votes
            .get(&(*target, epoch))
            .and_then(|votes| votes.get(&(round, *voter)))
            .is_none_or(|(seq, _)| *seq != last_seq)
    }

    /// The number of membership changes applied at settled positions (0 at genesis).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The number of evictions applied.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Whether a frontier of `origin` at `lamport` is news by its lamport alone (the shell
    /// skips verifying old ones). It ignores acks: [`Engine::wants_signed_frontier`] is the
    /// full test, which [`Engine::check_message`] uses.
    ///
    /// With eviction on, an idle member's repeated frontier is also news once per heartbeat:
    /// relayed, it tells members that are not its neighbours that it is alive.
    pub fn wants_frontier(&self, origin: &NodeId, lamport: u64) -> bool {
        *origin != self.me
            && self.origins.get(origin).is_none_or(|st| {
                lamport > st.announced
                    || (lamport == st.announced && self.repeat_is_news(origin, st))
            })
    }

    /// Whether a signed frontier is news: its lamport is higher than the highest announced one
    /// of its origin, or equal and it acks more than the origin's frontiers acked so far (acks
    /// only grow), or it is an idle member's repeat that counts as a sign of life.
    ///
    /// The shell and the relay dedup use this to skip verifying and relaying old frontiers.
    pub fn wants_signed_frontier(&self, frontier: &SignedFrontier) -> bool {
        let origin = &frontier.origin;
        if *origin == self.me {
            return false;
        }
        let Some(st) = self.origins.get(origin) else {
            return true;
        };
        frontier.lamport > st.announced
            || (frontier.lamport == st.announced
                && (acks_are_news(st, frontier.seq, origin, &frontier.acks)
                    || self.repeat_is_news(origin, st)))
    }

    fn repeat_is_news(&self, origin: &NodeId, st: &OriginState) -> bool {
        self.config.evict_after_ms > 0
            && self.members.contains(origin)
            && st
                .alive_ms
                .is_none_or(|at| self.now_ms.saturating_sub(at) >= self.config.heartbeat_ms.max(1))
    }

    /// The settled book of a market.
    pub fn book(&self, market: &str) -> Option<&orderbook_core::Book> {
        self.exchange.market(market)
    }

    /// The most recent settled trades of a market, newest first.
    pub fn trades(&self, market: &str, limit: usize) -> Vec<TradeView> {
        self.trades
            .get(market)
            .map(|list| list.iter().rev().take(limit).cloned().collect())
            .unwrap_or_default()
    }

    /// An order's state, if its event has been delivered here.
    pub fn order(&self, id: ApiOrderId) -> Option<OrderView> {
        self.orders.get(&id.0.0).map(|r| self.view(r))
    }

    fn view(&self, record: &OrderRecord) -> OrderView {
        let scales = self
            .config
            .markets
            .iter()
            .find(|m| m.name == record.order.market)
            .map_or((0, 0), |m| (m.tick_size.scale(), m.lot_size.scale()));
        view(record, scales)
    }

    /// The state digest: sha256 over the settled position, the matcher's digest and the
    /// trade hash chain.
    /// Computed once per settled position: the state only changes when an event settles.
    pub fn digest(&self) -> [u8; 32] {
        if let Some((events, key, digest)) = self.digest_cache.get()
            && events == self.settled_events
            && key == self.settled_key
        {
            return digest;
        }
        let digest = self.compute_digest();
        self.digest_cache
            .set(Some((self.settled_events, self.settled_key, digest)));
        digest
    }

    fn compute_digest(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(b"p2p-exchange/state/v1\0");
        hasher.update(self.settled_events.to_le_bytes());
        let (lamport, origin, seq) =
            self.settled_key
                .unwrap_or((0, NodeId::from_bytes([0; 32]), 0));
        hasher.update(lamport.to_le_bytes());
        hasher.update(origin.as_bytes());
        hasher.update(seq.to_le_bytes());
        hasher.update(self.exchange.digest());
        hasher.update(self.trade_count.to_le_bytes());
        hasher.update(self.trade_chain);
        hasher.finalize().into()
    }

    /// The current settled frontier: min over members of their trusted frontier.
    ///
    /// A member cut by a delivered eviction no longer counts once this node holds its events
    /// up to the cut (nothing of it is still to come). A returning member whose rejoin is
    /// delivered counts from its `Join` on, like any newcomer.
    pub fn settled_frontier(&self) -> Option<u64> {
        let members = self
            .members
            .iter()
            .filter(|m| !self.excluded(m))
            .map(|m| self.frontier_of(m))
            .min()?;
        // A node admitted by a delivered, unsettled Join counts from the Join's lamport on:
        // its honest events are all above it (review #4).
        let joining = self
            .pending_joins
            .iter()
            .filter(|(_, m)| !self.members.contains(m) || self.excluded(m))
            .map(|(&(lamport, _, _), m)| {
                let trusted = self.origins.get(m).map_or(0, |st| st.trusted);
                lamport.max(trusted)
            })
            .min();
        Some(joining.map_or(members, |j| j.min(members)))
    }

    /// A status snapshot.
    pub fn status(&self) -> EngineStatus {
        let waiting_for = match self.unsettled.keys().next() {
            Some(&key) if self.settled_frontier().is_some_and(|s| key.0 <= s) => {
                // Below the settled frontier: what is missing is a majority holding it.
                let (origin, seq) = (key.1, key.2);
                self.electorate(Some(&key))
                    .into_iter()
                    .filter(|m| {
                        *m != self.me
                            && self
                                .origins
                                .get(m)
                                .and_then(|st| st.acks.get(&origin))
                                .is_none_or(|acked| *acked < seq)
                    })
                    .map(|m| m.to_string())
                    .collect()
            }
            Some(&(lamport, _, _)) => self
                .members
                .iter()
                .filter(|m| self.frontier_of(m) < lamport)
                .map(|m| m.to_string())
                .collect(),
            None => Vec::new(),
        };
        EngineStatus {
            phase: self.phase(),
            genesis: self.genesis.map(|(id, _)| hex(&id)),
            members: self.members.iter().map(|m| m.to_string()).collect(),
            events_delivered: self.events_delivered,
            settled_events: self.settled_events,
            pending_events: self.unsettled.len() as u64,
            settled_lamport: self.settled_key.map_or(0, |k| k.0),
            settled_frontier: self.settled_frontier(),
            lamport: self.clock,
            digest: hex(&self.digest()),
            waiting_for,
            rejected_events: self.rejected_events,
            digest_mismatches: self.digest_mismatches,
            clock: self
                .clock()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            epoch: self.epoch,
            suspects: self.suspects.keys().map(|m| m.to_string()).collect(),
            evictions: self.evictions,
            votes: self
                .votes
                .iter()
                .flat_map(|((target, epoch), votes)| {
                    votes.iter().map(move |((round, voter), (last_seq, _))| {
                        format!(
                            "{}>{}@{epoch}r{round}:{last_seq}",
                            voter.short(),
                            target.short()
                        )
                    })
                })
                .collect(),
            cut: self
                .cuts
                .iter()
                .map(|(origin, cut)| (origin.to_string(), cut.last_seq))
                .collect(),
            settlement_lag: self
                .clock
                .saturating_sub(self.settled_key.map_or(0, |k| k.0)),
            stalled_ms: if self.unsettled.is_empty() {
                0
            } else {
                self.now_ms.saturating_sub(self.progress.1)
            },
            equivocations: self.equivocations,
        }
    }

    /// Handles one input, appending effects to `out`.
    pub fn handle(&mut self, input: Input, out: &mut Vec<Effect>) {
        match input {
            Input::Place { request, order } => {
                let reply = self.place(order, out);
                out.push(Effect::Reply { request, reply });
            }
            Input::Cancel { request, order_id } => {
                let reply = self.cancel(order_id, out);
                out.push(Effect::Reply { request, reply });
            }
            Input::Connected { peer } => {
                // A (re)connected member is alive: not suspect any more, so stale votes against
                // it are not acted on (votes are never withdrawn).
                if self.members.contains(&peer) {
                    self.last_heard.insert(peer, self.now_ms);
                    self.suspects.remove(&peer);
                }
                self.peers.insert(
                    peer,
                    PeerState {
                        connected_ms: self.now_ms,
                        ..PeerState::default()
                    },
                );
                out.push(Effect::Send {
                    to: peer,
                    message: self.network_info(),
                });
                if self.genesis.is_some() {
                    out.push(Effect::Send {
                        to: peer,
                        message: self.sync_request(),
                    });
                    if self.last_frontier.1 > 0
                        && let Some(frontier) = self.sign_frontier(
                            self.last_frontier.0,
                            self.last_frontier.1,
                            self.last_acks.clone(),
                        )
                    {
                        out.push(Effect::Send {
                            to: peer,
                            message: Message::Frontier(frontier),
                        });
                    }
                }
            }
            Input::Disconnected { peer } => {
                self.peers.remove(&peer);
            }
            Input::Peer { from, message } => {
                // Any message over the authenticated link proves the sender alive (an idle
                // member's repeated heartbeat frontier is skipped before it gets here, but its
                // digest gossip is not).
                if self.members.contains(&from) {
                    self.last_heard.insert(from, self.now_ms);
                }
                self.on_peer(from, message, out);
            }
            Input::Tick { now_ms } => self.on_tick(now_ms, out),
            Input::Flush { now_ms } => self.flush(now_ms, out),
        }
    }

    /// Turns a peer message into an engine input, checking signatures (the CPU-heavy part,
    /// kept out of [`Engine::handle`] so a shell may run it elsewhere).
    ///
    /// `Ok(None)`: nothing for the engine (transport-level messages, duplicates skipped before
    /// verifying). `Err(what)`: the peer sent something provably bad; score it down.
    pub fn check_message(
        &self,
        from: &NodeId,
        message: Message,
    ) -> Result<Option<PeerInput>, String> {
        Ok(Some(match message {
            Message::Batch(batch) => {
                if !self.wants_batch(&batch.origin(), batch.last_seq()) {
                    // Already delivered: a copy of what we hold (the common case, skipped
                    // unverified), or another version of it, which is proof of equivocation
                    // if the origin really signed it (if not, the sender forged it).
                    let Some(seq) = self.conflicting_seq(&batch) else {
                        return Ok(None);
                    };
                    let origin = batch.origin();
                    batch.verify().map_err(|e| format!("bad batch: {e}"))?;
                    return Ok(Some(PeerInput::Equivocation { origin, seq }));
                }
                PeerInput::Batch(batch.verify().map_err(|e| format!("bad batch: {e}"))?)
            }
            Message::Frontier(frontier) => {
                if !self.wants_signed_frontier(&frontier) {
                    return Ok(None);
                }
                PeerInput::Frontier(
                    frontier
                        .verify()
                        .map_err(|e| format!("bad frontier: {e}"))?,
                )
            }
            Message::SyncRequest { clock } => PeerInput::SyncRequest {
                clock: crate::wire::clock_from_wire(&clock),
            },
            Message::SyncResponse { batches, done } => {
                let mut verified = Vec::with_capacity(batches.len());
                for batch in batches {
                    if !self.wants_batch(&batch.origin(), batch.last_seq()) {
                        continue;
                    }
                    verified.push(
                        batch
                            .verify()
                            .map_err(|e| format!("bad synced batch: {e}"))?,
                    );
                }
                PeerInput::SyncResponse {
                    batches: verified,
                    done,
                }
            }
            Message::Digest {
                lamport,
                settled_events,
                digest,
            } => PeerInput::Digest {
                lamport,
                settled_events,
                digest,
            },
            Message::NetworkInfo {
                genesis,
                has_orders,
                members,
                clock,
            } => PeerInput::NetworkInfo {
                genesis,
                has_orders,
                members,
                clock: crate::wire::clock_from_wire(&clock),
            },
            Message::JoinRequest { node_id, signature } => {
                if node_id != *from {
                    return Err("join request for another node".to_owned());
                }
                let transcript = peer_protocol::join_transcript(&self.config.network_id, &node_id);
                peer_protocol::verify(&node_id, &transcript, &signature)
                    .map_err(|_| "bad join request signature".to_owned())?;
                PeerInput::JoinRequest
            }
            Message::Vote {
                voter,
                voter_epoch,
                target,
                epoch,
                round,
                last_seq,
                signature,
            } => {
                if self.incarnation.get(&voter) != Some(&voter_epoch)
                    || !self.wants_vote(&voter, &target, epoch, round, last_seq)
                {
                    // A vote of another membership of the voter (an earlier one it was evicted
                    // from, or one this node has not settled yet) counts for nothing here.
                    return Ok(None);
                }
                let transcript = peer_protocol::vote_transcript(
                    &self.config.network_id,
                    voter_epoch,
                    &target,
                    epoch,
                    round,
                    last_seq,
                );
                peer_protocol::verify(&voter, &transcript, &signature)
                    .map_err(|_| "bad vote signature".to_owned())?;
                PeerInput::Vote {
                    voter,
                    target,
                    epoch,
                    round,
                    last_seq,
                    signature,
                }
            }
            Message::Hello(_)
            | Message::HelloAck(_)
            | Message::Ping { .. }
            | Message::Pong { .. }
            | Message::GetPeers
            | Message::Peers(_)
            | Message::Goodbye { .. } => return Ok(None),
            // Messages of later protocol versions are for the transport or the shell.
            #[allow(unreachable_patterns)]
            _ => return Ok(None),
        }))
    }

    // ---- Restore from the durable log ----------------------------------------------------

    /// Replays one durable record (in log order). `Err` means the log is corrupt.
    pub fn restore_record(&mut self, record: Record) -> Result<(), String> {
        match record {
            Record::Batch(batch) => {
                let batch = batch
                    .verify()
                    .map_err(|e| format!("a stored batch fails verification: {e}"))?;
                self.restore_batch(batch);
            }
            Record::Settled {
                lamport,
                origin,
                seq,
            } => self.restore_settled((lamport, origin, seq)),
            Record::Vote {
                target,
                epoch,
                round,
                last_seq,
            } => {
                self.my_votes
                    .entry((target, epoch))
                    .or_default()
                    .insert(round, last_seq);
            }
        }
        Ok(())
    }

    /// Replays one durable batch (no effects: it is already durable and peers learn it by sync).
    pub fn restore_batch(&mut self, batch: VerifiedBatch) {
        if self.genesis.is_none()
            && self.target_genesis.is_none()
            && batch.first_seq() == 1
            && let Some(Event {
                origin,
                body:
                    EventBody::Genesis {
                        network_id,
                        market_hash,
                    },
                ..
            }) = batch.events().first()
        {
            self.target_genesis = Some(genesis_id(origin, network_id, market_hash));
        }
        let mut sink = Vec::new();
        self.offer(None, batch, false, &mut sink);
    }

    /// Replays a settled marker: settles everything up to `key` in key order.
    pub fn restore_settled(&mut self, key: Key) {
        let mut sink = Vec::new();
        while let Some(entry) = self.unsettled.first_entry() {
            if *entry.key() > key {
                break;
            }
            let k = *entry.key();
            if self.void_limbo(&k) {
                continue;
            }
            let Some(event) = self.unsettled.remove(&k) else {
                break;
            };
            self.apply(k, event, &mut sink);
            if !self.pending_evicts.is_empty() && self.pending_evicts_checked != self.epoch {
                // As `settle` does: a decision may become checkable (and its cut recorded)
                // before the void batches that follow it in the log.
                self.recheck_pending_evicts();
            }
        }
        self.persisted_settled = self.settled_key;
    }

    /// Ends a replay: the clock and own seq are what the log says.
    pub fn finish_restore(&mut self) {
        let own = self
            .origins
            .get(&self.me)
            .map_or((0, 0), |st| (st.delivered, st.last_lamport));
        // Never announce less than we may already have announced before a restart: every
        // frontier we sent was durable, so the replayed clock covers it.
        self.last_frontier = (own.0, 0);
        self.last_acks.clear();
        // The acks announced before the restart are not in the log: assume the most that can
        // have been announced, everything delivered, so no vote goes below them (rule 16).
        let delivered: Vec<(NodeId, u64)> = self
            .electorate(None)
            .into_iter()
            .map(|m| (m, self.delivered(&m)))
            .collect();
        self.max_announced = delivered.into_iter().collect();
        // Replay ran at engine time 0: every member counts as heard at the first tick.
        self.last_heard.clear();
        self.suspects.clear();
    }

    // ---- Client commands ---------------------------------------------------------------

    fn place(
        &mut self,
        order: PlaceOrder,
        out: &mut Vec<Effect>,
    ) -> Result<OrderView, ClientError> {
        if let Some(client_id) = &order.client_order_id {
            if client_id.is_empty() || client_id.len() > MAX_CLIENT_ORDER_ID_LEN {
                return Err(ClientError::bad(
                    "invalid_client_order_id",
                    format!("client_order_id must be 1 to {MAX_CLIENT_ORDER_ID_LEN} bytes"),
                ));
            }
            if let Some(seq) = self.client_ids.get(client_id) {
                let id = order_id(&self.me, *seq);
                if let Some(record) = self.orders.get(&id.0) {
                    if record.order != order {
                        // The same key for a different order is a client bug, not a retry.
                        return Err(ClientError::new(
                            ClientErrorKind::Conflict,
                            "client_order_id_reused",
                            format!(
                                "client_order_id {client_id:?} already names order {} with \
                                 different fields",
                                ApiOrderId(id)
                            ),
                        ));
                    }
                    return Ok(self.view(record));
                }
            }
        }
        self.validate(&order)?;
        if self.phase() != Phase::Member {
            return Err(ClientError::new(
                ClientErrorKind::Unavailable,
                "not_member",
                "this node is not a member of a network yet; try again shortly",
            ));
        }
        let seq = self
            .create(EventBody::Place(order), out)
            .ok_or_else(clock_exhausted)?;
        let id = order_id(&self.me, seq);
        self.orders.get(&id.0).map(|r| self.view(r)).ok_or_else(|| {
            ClientError::new(ClientErrorKind::Unavailable, "internal", "order vanished")
        })
    }

    fn validate(&self, order: &PlaceOrder) -> Result<(), ClientError> {
        let Some(spec) = self.config.markets.iter().find(|m| m.name == order.market) else {
            return Err(ClientError::bad(
                "unknown_market",
                format!("unknown market {:?}", order.market),
            ));
        };
        match (order.order_type, order.price) {
            (OrderType::Limit, None) => {
                return Err(ClientError::bad(
                    "missing_price",
                    "a limit order needs a price",
                ));
            }
            (OrderType::Market, Some(_)) => {
                return Err(ClientError::bad(
                    "unexpected_price",
                    "a market order takes no price",
                ));
            }
            (OrderType::Market, None) if order.time_in_force == TimeInForce::PostOnly => {
                return Err(ClientError::bad(
                    "invalid_time_in_force",
                    "a market order cannot be post_only",
                ));
            }
            _ => {}
        }
        if let Some(price) = order.price {
            if price <= Decimal::ZERO {
                return Err(ClientError::bad("invalid_price", "price must be positive"));
            }
            // Checked: a client's price near Decimal::MAX must not panic the engine.
            let off_tick = price
                .checked_rem(spec.tick_size)
                .is_none_or(|rest| !rest.is_zero());
            if off_tick {
                return Err(ClientError::bad(
                    "off_tick",
                    format!(
                        "price {price} is not a multiple of the tick size {}",
                        spec.tick_size
                    ),
                ));
            }
        }
        if order.quantity <= Decimal::ZERO {
            return Err(ClientError::bad(
                "invalid_quantity",
                "quantity must be positive",
            ));
        }
        let off_lot = order
            .quantity
            .checked_rem(spec.lot_size)
            .is_none_or(|rest| !rest.is_zero());
        if off_lot {
            return Err(ClientError::bad(
                "off_lot",
                format!(
                    "quantity {} is not a multiple of the lot size {}",
                    order.quantity, spec.lot_size
                ),
            ));
        }
        // The matcher keeps integer ticks and lots: refuse what it could not represent, so a
        // valid-looking order is never rejected only at settlement.
        // Checked division: a quotient beyond Decimal's range is "out of range", not a panic.
        let limit = Decimal::from(u64::MAX / 4);
        if let Some(price) = order.price
            && price.checked_div(spec.tick_size).is_none_or(|t| t > limit)
        {
            return Err(ClientError::bad(
                "price_out_of_range",
                format!("price {price} is out of range"),
            ));
        }
        if order
            .quantity
            .checked_div(spec.lot_size)
            .is_none_or(|l| l > limit)
        {
            return Err(ClientError::bad(
                "quantity_out_of_range",
                format!("quantity {} is out of range", order.quantity),
            ));
        }
        Ok(())
    }

    fn cancel(&mut self, id: ApiOrderId, out: &mut Vec<Effect>) -> Result<OrderView, ClientError> {
        let Some(record) = self.orders.get(&id.0.0) else {
            return Err(ClientError::new(
                ClientErrorKind::NotFound,
                "order_not_found",
                format!("no order {id}"),
            ));
        };
        if record.origin != self.me {
            return Err(ClientError::new(
                ClientErrorKind::Forbidden,
                "not_owner",
                "only the node that placed an order can cancel it",
            ));
        }
        if record.status.is_final() {
            return Err(ClientError::new(
                ClientErrorKind::Conflict,
                "order_finished",
                format!("order {id} is already {:?}", record.status).to_lowercase(),
            ));
        }
        if record.cancel_requested {
            return Ok(self.view(record));
        }
        if self.phase() != Phase::Member {
            return Err(ClientError::new(
                ClientErrorKind::Unavailable,
                "not_member",
                "this node is not a member of the network",
            ));
        }
        let order_seq = record.seq;
        self.create(EventBody::Cancel { order_seq }, out)
            .ok_or_else(clock_exhausted)?;
        // Delivering the cancel event to ourselves marked the order `cancel_requested`.
        let record = self.orders.get(&id.0.0).ok_or_else(|| {
            ClientError::new(
                ClientErrorKind::NotFound,
                "order_not_found",
                "order vanished",
            )
        })?;
        Ok(self.view(record))
    }

    /// Creates a local event: next own seq, `lamport = 1 + max seen`; delivered to self at once.
    /// `None` (and no event) if the clock would pass [`MAX_LAMPORT`]: never wrap.
    fn create(&mut self, body: EventBody, out: &mut Vec<Effect>) -> Option<u64> {
        let me = self.me;
        let Some(lamport) = self
            .clock
            .checked_add(1)
            .filter(|&lamport| lamport <= MAX_LAMPORT)
        else {
            tracing::error!(
                clock = self.clock,
                "lamport clock exhausted; not creating an event"
            );
            return None;
        };
        let st = self.origins.entry(me).or_default();
        let seq = st.delivered.checked_add(1)?;
        self.clock = lamport;
        st.delivered = seq;
        st.last_lamport = lamport;
        let event = Event {
            origin: me,
            seq,
            lamport,
            body,
        };
        self.local.push(event.clone());
        self.known_origins.insert(me);
        self.on_delivered(&event);
        self.unsettled.insert((lamport, me, seq), event);
        self.settle(out);
        Some(seq)
    }

    fn flush(&mut self, now_ms: u64, out: &mut Vec<Effect>) {
        self.now_ms = now_ms;
        if std::mem::take(&mut self.announce_info) {
            out.push(Effect::Broadcast {
                message: self.network_info(),
                except: None,
            });
        }
        let local = std::mem::take(&mut self.local);
        let mut rest = local.as_slice();
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_LOCAL_BATCH));
            rest = tail;
            match SignedBatch::sign(&self.identity, chunk.to_vec()) {
                Ok(batch) => {
                    let batch = Arc::new(batch);
                    if let Some(st) = self.origins.get_mut(&self.me) {
                        st.batches.push(batch.clone());
                    }
                    out.push(Effect::Persist(Record::Batch((*batch).clone())));
                    out.push(Effect::Broadcast {
                        message: Message::Batch((*batch).clone()),
                        except: None,
                    });
                }
                Err(error) => {
                    // Only reachable through a bug in event creation: never send a batch the
                    // peers would reject.
                    tracing::error!(%error, "cannot sign local events");
                }
            }
        }
        self.persist_settled(out);
        self.maybe_announce(now_ms, false, out);
    }

    /// Persists the settled position if it moved since the last marker. Also written right
    /// before a [`Record::Vote`]: a vote belongs to the membership settled when it was cast, and
    /// replay must see the settled events first (a vote of a node that just rejoined, written
    /// before the marker covering its `Evict` and `Join`, would be replayed into the
    /// incarnation it had before and dropped with it).
    fn persist_settled(&mut self, out: &mut Vec<Effect>) {
        // Never ahead of this node's own events not yet written (they are, at the flush).
        if self
            .local
            .iter()
            .any(|e| Some((e.lamport, e.origin, e.seq)) <= self.settled_key)
        {
            return;
        }
        if self.settled_key != self.persisted_settled
            && let Some((lamport, origin, seq)) = self.settled_key
        {
            out.push(Effect::Persist(Record::Settled {
                lamport,
                origin,
                seq,
            }));
            self.persisted_settled = self.settled_key;
        }
    }

    fn maybe_announce(&mut self, now_ms: u64, heartbeat: bool, out: &mut Vec<Effect>) {
        // An evicted node keeps announcing until it is a member again: elsewhere its `Evict`
        // may not have settled yet, and there its acks still count for the events ordered
        // before it (rule 11 of the module docs).
        let evicted = self.cuts.contains_key(&self.me);
        if self.genesis.is_none() || !(self.members.contains(&self.me) || evicted) {
            return;
        }
        let seq = self.origins.get(&self.me).map_or(0, |st| st.delivered);
        let acks = self.my_acks();
        // Acks move without the clock when this node delivers events stamped below it: that is
        // news too (settlement elsewhere waits for it).
        let moved = (seq, self.clock) != self.last_frontier || acks != self.last_acks;
        let since = self
            .last_frontier_ms
            .map_or(u64::MAX, |at| now_ms.saturating_sub(at));
        let due = since >= self.config.frontier_min_interval_ms;
        let idle_due = since >= self.config.heartbeat_ms;
        if (moved && due) || (heartbeat && idle_due) {
            let Some(frontier) = self.sign_frontier(seq, self.clock, acks.clone()) else {
                return;
            };
            self.last_frontier = (seq, self.clock);
            for (member, ack) in &acks {
                let max = self.max_announced.entry(*member).or_insert(0);
                *max = (*max).max(*ack);
            }
            self.last_acks = acks;
            self.last_frontier_ms = Some(now_ms);
            out.push(Effect::Broadcast {
                message: Message::Frontier(frontier),
                except: None,
            });
        }
    }

    fn sign_frontier(
        &self,
        seq: u64,
        lamport: u64,
        acks: Vec<(NodeId, u64)>,
    ) -> Option<SignedFrontier> {
        match SignedFrontier::sign_with_acks(&self.identity, seq, lamport, acks) {
            Ok(frontier) => Some(frontier),
            Err(error) => {
                // Only reachable through a bug: `my_acks` is sorted, distinct and bounded.
                tracing::error!(%error, "cannot sign a frontier");
                None
            }
        }
    }

    /// This node's acks: for every current member and pending joiner, the highest seq of it
    /// delivered here, capped by this node's eviction vote against it (rule 11 of the module
    /// docs), or by its recorded cut if this node did not vote.
    fn my_acks(&self) -> Vec<(NodeId, u64)> {
        self.electorate(None)
            .into_iter()
            .map(|m| (m, self.my_ack(&m)))
            .filter(|(_, seq)| *seq > 0)
            .take(peer_protocol::MAX_MEMBERS)
            .collect()
    }

    /// The nodes whose acks settle the event at `key` (every event if `None`): the current
    /// members, and the nodes admitted by a delivered, unsettled `Join` ordered before it (as
    /// in [`Engine::settled_frontier`], a joiner counts from its `Join` on).
    fn electorate(&self, key: Option<&Key>) -> BTreeSet<NodeId> {
        let mut nodes = self.members.clone();
        nodes.extend(
            self.pending_joins
                .iter()
                .filter(|(join, _)| key.is_none_or(|key| *join < key))
                .map(|(_, m)| *m),
        );
        nodes
    }

    /// The key of this node's vote against `member`'s current incarnation, if it is a member.
    fn current_key(&self, member: &NodeId) -> Option<(NodeId, u64)> {
        if !self.members.contains(member) {
            return None;
        }
        self.incarnation.get(member).map(|inc| (*member, *inc))
    }

    /// The highest seq of `member` this node acks: what it holds, within its cap, or beyond
    /// the cap as far as a majority of the others already acks (rule 11 of the module docs).
    fn my_ack(&self, member: &NodeId) -> u64 {
        let delivered = self.delivered(member);
        let Some(cap) = self.ack_cap(member) else {
            return delivered;
        };
        delivered.min(cap.max(self.acked_by_others(member)))
    }

    /// The lowest value this node may vote for `member` (rule 16 of the module docs): every
    /// ack of it this node announced or would announce now. A vote below it would let a
    /// decision cut an event this node's own ack helped settle.
    fn ack_floor(&self, member: &NodeId) -> u64 {
        let announced = self.max_announced.get(member).copied().unwrap_or(0);
        self.my_ack(member).max(announced)
    }

    /// The highest seq of `member` that a majority of the members acks without this node:
    /// acking up to there breaks no promise of this node's vote (any decision's voters, a
    /// majority of the members, then include one of those ackers, whose vote is at least that
    /// seq). Members only, not pending joiners: a decision is a majority of the members, and
    /// a returning joiner's acks may be left over from its previous membership.
    fn acked_by_others(&self, member: &NodeId) -> u64 {
        let electorate = &self.members;
        let mut acks: Vec<u64> = electorate
            .iter()
            .filter(|m| **m != self.me)
            .map(|m| {
                self.origins
                    .get(m)
                    .and_then(|st| st.acks.get(member))
                    .copied()
                    .unwrap_or(0)
            })
            .collect();
        let needed = electorate.len() / 2 + 1;
        if acks.len() < needed {
            return 0;
        }
        acks.sort_unstable_by(|a, b| b.cmp(a));
        acks[needed - 1]
    }

    /// The highest seq of `member` this node may ack: its own vote (a promise, until the
    /// incarnation ends; after this node's own eviction, until it is a member again), else
    /// the recorded cut of its current incarnation.
    fn ack_cap(&self, member: &NodeId) -> Option<u64> {
        let key = self.current_key(member)?;
        let released = (!self.members.contains(&self.me))
            .then(|| self.released_votes.get(&key))
            .flatten();
        // The lowest of this node's votes (its first: votes never go down, rule 16): every
        // vote of it that a decision may count stays at or above every ack it announces.
        let lowest = |votes: &BTreeMap<u32, u64>| votes.values().min().copied();
        self.my_votes
            .get(&key)
            .or(released)
            .and_then(lowest)
            .or_else(|| {
                self.cuts
                    .get(member)
                    .filter(|cut| cut.incarnation == key.1)
                    .map(|cut| cut.last_seq)
            })
    }

    /// Whether the event `key` may settle here as far as holding goes (rule 12 of the module
    /// docs): a majority of the electorate acks it, this node counting only within its own
    /// cap (or a recorded decision keeps it, or its origin is no member at all).
    fn majority_holds(&self, key: &Key) -> bool {
        let (origin, seq) = (&key.1, key.2);
        if self.incarnation.get(origin).is_some_and(|inc| {
            self.cuts
                .get(origin)
                .is_some_and(|cut| cut.incarnation == *inc && seq <= cut.last_seq)
        }) {
            // The one decision of this incarnation keeps it: no cut can ever remove it.
            return true;
        }
        let electorate = self.electorate(Some(key));
        if !electorate.contains(origin) {
            // Not a member (its orders are rejected at settlement) and not joining: nothing to
            // protect.
            return true;
        }
        let holders = electorate
            .iter()
            .filter(|m| {
                if **m == self.me {
                    self.my_ack(origin) >= seq
                } else {
                    self.origins
                        .get(m)
                        .and_then(|st| st.acks.get(origin))
                        .is_some_and(|acked| *acked >= seq)
                }
            })
            .count();
        holders * 2 > electorate.len()
    }

    // ---- Timers ------------------------------------------------------------------------

    fn on_tick(&mut self, now_ms: u64, out: &mut Vec<Effect>) {
        self.now_ms = now_ms;
        let started = *self.started_ms.get_or_insert(now_ms);
        if self.genesis.is_none()
            && self.target_genesis.is_none()
            && (self.config.found || now_ms.saturating_sub(started) >= self.config.join_window_ms)
        {
            self.found(out);
        }
        if self.genesis.is_some() || self.target_genesis.is_some() {
            if self.phase() == Phase::Joining && due(&mut self.last_join_ms, now_ms, JOIN_RETRY_MS)
            {
                self.request_join(out);
            }
            if due(&mut self.last_sync_ms, now_ms, SYNC_INTERVAL_MS) {
                let request = self.sync_request();
                for peer in self.same_network_peers() {
                    out.push(Effect::Send {
                        to: peer,
                        message: request.clone(),
                    });
                }
            }
        }
        if self.genesis.is_some() && due(&mut self.last_digest_ms, now_ms, DIGEST_INTERVAL_MS) {
            let digest = self.digest();
            self.remember_digest(self.settled_events, digest);
            out.push(Effect::Broadcast {
                message: Message::Digest {
                    lamport: self.settled_key.map_or(0, |k| k.0),
                    settled_events: self.settled_events,
                    digest,
                },
                except: None,
            });
        }
        self.maybe_announce(now_ms, true, out);
        if self.unsettled.is_empty() || self.settled_events != self.progress.0 {
            self.progress = (self.settled_events, now_ms);
        }
        self.detect_failures(now_ms, out);
    }

    fn found(&mut self, out: &mut Vec<Effect>) {
        let id = genesis_id(&self.me, &self.config.network_id, &self.market_hash);
        tracing::info!(genesis = %hex(&id), "founding a new network");
        self.target_genesis = Some(id);
        let body = EventBody::Genesis {
            network_id: self.config.network_id.clone(),
            market_hash: self.market_hash,
        };
        self.create(body, out);
        out.push(Effect::Broadcast {
            message: self.network_info(),
            except: None,
        });
    }

    fn request_join(&mut self, out: &mut Vec<Effect>) {
        let Some(target) = self.target_genesis.or(self.genesis()) else {
            return;
        };
        let sponsors: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| p.member && p.genesis == Some(Some(target)))
            .map(|(id, _)| *id)
            .collect();
        if sponsors.is_empty() {
            return;
        }
        let sponsor = sponsors[self.join_cursor % sponsors.len()];
        self.join_cursor = self.join_cursor.wrapping_add(1);
        let signature = self.identity.sign(&peer_protocol::join_transcript(
            &self.config.network_id,
            &self.me,
        ));
        tracing::debug!(sponsor = %sponsor.short(), "asking to join");
        out.push(Effect::Send {
            to: sponsor,
            message: Message::JoinRequest {
                node_id: self.me,
                signature,
            },
        });
    }

    // ---- Peer messages -----------------------------------------------------------------

    /// The `NetworkInfo` message this node sends on connect (the runtime repeats it on links
    /// that may lose messages, such as the Grenache RPC fallback).
    pub fn network_info_message(&self) -> Message {
        self.network_info()
    }

    fn network_info(&self) -> Message {
        Message::NetworkInfo {
            genesis: self.genesis(),
            has_orders: self.has_orders,
            members: self.members.iter().copied().collect(),
            clock: crate::wire::clock_to_wire(&self.clock()),
        }
    }

    fn sync_request(&self) -> Message {
        Message::SyncRequest {
            clock: crate::wire::clock_to_wire(&self.clock()),
        }
    }

    fn our_network(&self) -> Option<[u8; 32]> {
        self.genesis().or(self.target_genesis)
    }

    fn same_network_peers(&self) -> Vec<NodeId> {
        let ours = self.our_network();
        self.peers
            .iter()
            .filter(|(_, p)| ours.is_some() && p.genesis == Some(ours))
            .map(|(id, _)| *id)
            .collect()
    }

    fn peer_in_network(&self, peer: &NodeId) -> bool {
        let ours = self.our_network();
        ours.is_some()
            && self
                .peers
                .get(peer)
                .is_some_and(|p| p.genesis == Some(ours))
    }

    fn on_peer(&mut self, from: NodeId, message: PeerInput, out: &mut Vec<Effect>) {
        if let PeerInput::NetworkInfo {
            genesis,
            has_orders,
            members,
            clock,
        } = message
        {
            self.on_network_info(from, genesis, has_orders, members, clock, out);
            return;
        }
        match message {
            PeerInput::JoinRequest => {
                // Its signature covers our network id; the newcomer may not know our genesis yet.
                self.on_join_request(from, out);
                return;
            }
            PeerInput::SyncRequest { clock } => {
                // A peer of our network id that is a member of our genesis, or a newcomer
                // without one, may read our log (a newcomer needs it to join), at a bounded rate.
                if self.may_serve_sync(&from) {
                    self.answer_sync(from, &clock, out);
                }
                return;
            }
            _ => {}
        }
        if !self.peer_in_network(&from) {
            tracing::debug!(peer = %from.short(), "ignoring log message from a peer of another network");
            return;
        }
        match message {
            PeerInput::Batch(batch) => {
                self.offer(Some(from), batch, true, out);
                self.settle(out);
            }
            PeerInput::Frontier(frontier) => self.on_frontier(from, frontier, out),
            PeerInput::SyncRequest { .. } => {}
            PeerInput::SyncResponse { batches, done } => {
                for batch in batches {
                    self.offer(Some(from), batch, false, out);
                }
                self.settle(out);
                if !done {
                    out.push(Effect::Send {
                        to: from,
                        message: self.sync_request(),
                    });
                }
            }
            PeerInput::Digest {
                lamport: _,
                settled_events,
                digest,
            } => self.on_digest(from, settled_events, digest),
            PeerInput::JoinRequest => self.on_join_request(from, out),
            PeerInput::Equivocation { origin, seq } => self.on_equivocation(origin, seq, out),
            PeerInput::NetworkInfo { .. } => {}
            PeerInput::Vote {
                voter,
                target,
                epoch,
                round,
                last_seq,
                signature,
            } => {
                let vote = (voter, round, last_seq, signature);
                self.on_vote(from, (target, epoch), vote, out)
            }
        }
    }

    /// Whether a `SyncRequest` of `peer` is answered now (and, if so, marks it served): only
    /// a peer that told us (by `NetworkInfo`) it is of our genesis or has none yet, and at
    /// most once per [`SYNC_SERVE_INTERVAL_MS`]. Strangers and floods get nothing.
    fn may_serve_sync(&mut self, peer: &NodeId) -> bool {
        let Some(ours) = self.our_network() else {
            return false;
        };
        let now = self.now_ms;
        let Some(state) = self.peers.get_mut(peer) else {
            tracing::debug!(peer = %peer.short(), "ignoring a sync request before its network info");
            return false;
        };
        match state.genesis {
            Some(None) => {}
            Some(Some(theirs)) if theirs == ours => {}
            _ => {
                tracing::debug!(peer = %peer.short(), "ignoring a sync request from another network");
                return false;
            }
        }
        due(&mut state.last_sync_served_ms, now, SYNC_SERVE_INTERVAL_MS)
    }

    fn on_network_info(
        &mut self,
        from: NodeId,
        genesis: Option<[u8; 32]>,
        has_orders: bool,
        members: Vec<NodeId>,
        clock: BTreeMap<NodeId, u64>,
        out: &mut Vec<Effect>,
    ) {
        let peer = self.peers.entry(from).or_default();
        peer.genesis = Some(genesis);
        peer.member = members.contains(&from);
        peer.own_seq = clock.get(&from).copied().unwrap_or(0);
        let Some(theirs) = genesis else {
            return;
        };
        match self.our_network() {
            None => {
                tracing::info!(genesis = %hex(&theirs), peer = %from.short(), "found a network to join");
                self.target_genesis = Some(theirs);
                out.push(Effect::Send {
                    to: from,
                    message: self.sync_request(),
                });
            }
            Some(ours) if ours == theirs => {
                let mine = self.clock();
                if clock
                    .iter()
                    .any(|(origin, seq)| mine.get(origin).copied().unwrap_or(0) < *seq)
                {
                    out.push(Effect::Send {
                        to: from,
                        message: self.sync_request(),
                    });
                }
            }
            Some(ours) => {
                if self.genesis.is_none() {
                    // Still joining: keep the network found first, unless a node that told us
                    // it belongs to it now belongs to another (that network gave way: its lone
                    // founder wiped it, or lost it in a crash and joined elsewhere) and no
                    // connected peer still belongs to it. A node that has not joined yet has
                    // nothing to lose. (Not on mere silence: a sponsor that admitted us may
                    // only be unreachable, and leaving would strand it with a ghost member.)
                    let gave_way = self.target_reporters.contains(&from);
                    let target_reachable = self
                        .peers
                        .iter()
                        .any(|(id, p)| *id != from && p.genesis == Some(Some(ours)));
                    if gave_way && !target_reachable {
                        tracing::info!(
                            dropped = %hex(&ours),
                            genesis = %hex(&theirs),
                            peer = %from.short(),
                            "no peer of the network being joined is left: joining this one"
                        );
                        self.wipe(theirs, out);
                        self.target_reporters.insert(from);
                        out.push(Effect::Send {
                            to: from,
                            message: self.sync_request(),
                        });
                    }
                    return;
                }
                // A network with orders or with more than one member is never wiped (other
                // nodes depend on it); of two such networks neither gives way (review #5).
                let ours_fixed =
                    self.has_orders || self.members.len() > 1 || self.known_origins.len() > 1;
                let theirs_fixed = has_orders || members.len() > 1;
                let we_lose = !ours_fixed && (theirs_fixed || theirs < ours);
                if we_lose {
                    tracing::warn!(
                        ours = %hex(&ours),
                        theirs = %hex(&theirs),
                        "two fresh networks met: ours holds no orders and loses, wiping it to join theirs"
                    );
                    self.wipe(theirs, out);
                    out.push(Effect::Send {
                        to: from,
                        message: self.sync_request(),
                    });
                } else if ours_fixed && theirs_fixed {
                    tracing::error!(
                        ours = %hex(&ours),
                        theirs = %hex(&theirs),
                        peer = %from.short(),
                        "refusing a peer of another network with the same NETWORK_ID: both hold orders or several members and are never merged"
                    );
                    out.push(Effect::Disconnect {
                        peer: from,
                        reason: GoodbyeReason::NetworkMismatch,
                    });
                }
            }
        }
        if self.genesis.is_none() && self.target_genesis == Some(theirs) {
            self.target_reporters.insert(from);
        }
    }

    /// Forgets this node's (orderless) network and starts joining `target`.
    fn wipe(&mut self, target: [u8; 32], out: &mut Vec<Effect>) {
        let peers = std::mem::take(&mut self.peers);
        let fresh = match Engine::new(self.identity.clone(), self.config.clone()) {
            Ok(engine) => engine,
            Err(error) => {
                tracing::error!(%error, "cannot reset the engine");
                return;
            }
        };
        let started = self.started_ms;
        *self = fresh;
        self.peers = peers;
        self.started_ms = started;
        self.target_genesis = Some(target);
        out.push(Effect::WipeLog);
        out.push(Effect::Broadcast {
            message: self.network_info(),
            except: None,
        });
    }

    fn on_join_request(&mut self, from: NodeId, out: &mut Vec<Effect>) {
        if self.phase() != Phase::Member {
            return;
        }
        // An evicted node may come back: it gets a new Join that says where its events resume.
        let returning = self.cuts.contains_key(&from);
        if self.members.contains(&from)
            || self.pending_joins.values().any(|m| *m == from)
            || (self.known_origins.contains(&from) && !returning)
        {
            // Already admitted, or a Join for it is on its way to settlement.
            return;
        }
        let connected_long_enough = self.peers.get(&from).is_some_and(|p| {
            self.now_ms.saturating_sub(p.connected_ms) >= self.config.sponsor_min_connected_ms
        });
        if !connected_long_enough {
            // The newcomer asks again (every JOIN_RETRY_MS) while it stays connected.
            tracing::debug!(newcomer = %from.short(), "not sponsoring a peer connected only briefly");
            return;
        }
        // A returning node resumes one past the highest seq it ever used (its own report, or
        // what we hold of it if that is more), so no seq is reused and the cut range stays cut.
        let first_seq = if returning {
            let reported = self.peers.get(&from).map_or(0, |p| p.own_seq);
            reported.max(self.delivered(&from)).saturating_add(1)
        } else {
            1
        };
        tracing::info!(newcomer = %from.short(), first_seq, "admitting a new member");
        self.create(
            EventBody::Join {
                member: from,
                first_seq,
            },
            out,
        );
    }

    fn on_digest(&mut self, from: NodeId, settled_events: u64, digest: [u8; 32]) {
        let ours = if settled_events == self.settled_events {
            Some(self.digest())
        } else {
            self.digests
                .iter()
                .find(|(count, _)| *count == settled_events)
                .map(|(_, d)| *d)
        };
        if let Some(ours) = ours
            && ours != digest
        {
            self.digest_mismatches += 1;
            tracing::error!(
                peer = %from.short(),
                settled_events,
                ours = %hex(&ours),
                theirs = %hex(&digest),
                "state digest mismatch at the same settled position"
            );
        }
    }

    fn remember_digest(&mut self, settled_events: u64, digest: [u8; 32]) {
        if self
            .digests
            .back()
            .is_some_and(|(c, _)| *c == settled_events)
        {
            return;
        }
        if self.digests.len() >= 64 {
            self.digests.pop_front();
        }
        self.digests.push_back((settled_events, digest));
    }

    fn answer_sync(&mut self, to: NodeId, theirs: &BTreeMap<NodeId, u64>, out: &mut Vec<Effect>) {
        let mut batches = Vec::new();
        let mut events = 0usize;
        let mut done = true;
        // Batches go out merged across origins in the order of their first event's lamport
        // (each origin's own batches stay in seq order: their lamports increase). That order
        // respects what matters to the requester: the genesis (lamport 1) first, an `Evict`
        // before the `Join` that re-admits its target (the sponsor stamps it after the
        // `Evict`), and that `Join` before the returning node's new events (stamped after it
        // learned its `Join`). Served origin by origin instead, a requester that holds a cut
        // and not yet the `Join` would deliver the returning node's new events void while
        // everyone else orders them, and diverge (chaos seed 21: a restarted node syncing
        // while the evicted founder had been re-admitted, the founder's batches going first).
        let first_lamport = |batch: &SignedBatch| batch.events().first().map_or(0, |e| e.lamport);
        let mut next: BinaryHeap<Reverse<(u64, NodeId, usize)>> = BinaryHeap::new();
        for (origin, st) in &self.origins {
            let have = theirs.get(origin).copied().unwrap_or(0);
            if st.delivered <= have {
                continue;
            }
            let start = st.batches.partition_point(|b| b.last_seq() <= have);
            if let Some(batch) = st.batches.get(start) {
                next.push(Reverse((first_lamport(batch), *origin, start)));
            }
        }
        while let Some(Reverse((_, origin, index))) = next.pop() {
            let Some(st) = self.origins.get(&origin) else {
                continue;
            };
            let Some(batch) = st.batches.get(index) else {
                continue;
            };
            // At least one batch per response, so a huge batch cannot stall the sync.
            if batches.len() >= peer_protocol::MAX_BATCHES_PER_SYNC
                || (!batches.is_empty() && events + batch.events().len() > MAX_SYNC_EVENTS)
            {
                done = false;
                break;
            }
            events += batch.events().len();
            batches.push((**batch).clone());
            if let Some(following) = st.batches.get(index + 1) {
                next.push(Reverse((first_lamport(following), origin, index + 1)));
            }
        }
        if batches.is_empty() && done {
            return;
        }
        out.push(Effect::Send {
            to,
            message: Message::SyncResponse { batches, done },
        });
    }

    fn on_frontier(&mut self, from: NodeId, frontier: VerifiedFrontier, out: &mut Vec<Effect>) {
        let origin = frontier.origin();
        if origin == self.me || !self.known_origins.contains(&origin) {
            return;
        }
        if frontier.lamport() > MAX_LAMPORT {
            out.push(Effect::Misbehaviour {
                peer: from,
                what: format!(
                    "frontier of {} with a lamport beyond the ceiling",
                    origin.short()
                ),
            });
            return;
        }
        let now = self.now_ms;
        let st = self.origins.entry(origin).or_default();
        if frontier.lamport() < st.announced {
            return;
        }
        if frontier.lamport() == st.announced
            && acks_are_news(st, frontier.seq(), &origin, frontier.acks())
        {
            // Same promise, more acks: news for settlement, relayed like a new frontier.
            merge_acks(
                st,
                frontier.seq(),
                &origin,
                frontier.acks(),
                &self.known_origins,
            );
            st.alive_ms = Some(now);
            self.last_heard.insert(origin, now);
            out.push(Effect::Broadcast {
                message: Message::Frontier(frontier.into_signed()),
                except: Some(from),
            });
            self.settle(out);
            return;
        }
        if frontier.lamport() == st.announced {
            // A repeat: only a sign of life, relayed at most once per heartbeat.
            let news = self
                .origins
                .get(&origin)
                .is_some_and(|st| self.repeat_is_news(&origin, st));
            if news {
                if let Some(st) = self.origins.get_mut(&origin) {
                    st.alive_ms = Some(now);
                }
                self.last_heard.insert(origin, now);
                out.push(Effect::Broadcast {
                    message: Message::Frontier(frontier.into_signed()),
                    except: Some(from),
                });
            }
            return;
        }
        st.announced = frontier.lamport();
        st.alive_ms = Some(now);
        merge_acks(
            st,
            frontier.seq(),
            &origin,
            frontier.acks(),
            &self.known_origins,
        );
        self.last_heard.insert(origin, now);
        let st = self.origins.entry(origin).or_default();
        match st.pending_frontier {
            Some((seq, _)) if seq > frontier.seq() => {}
            _ => st.pending_frontier = Some((frontier.seq(), frontier.lamport())),
        }
        out.push(Effect::Broadcast {
            message: Message::Frontier(frontier.into_signed()),
            except: Some(from),
        });
        self.try_trust(&origin);
        self.settle(out);
    }

    fn try_trust(&mut self, origin: &NodeId) {
        if let Some(st) = self.origins.get_mut(origin)
            && let Some((seq, lamport)) = st.pending_frontier
            && seq <= st.delivered
        {
            st.trusted = st.trusted.max(lamport);
            st.pending_frontier = None;
        }
    }

    // ---- Delivery ----------------------------------------------------------------------

    fn accepts_origin(&self, origin: &NodeId, batch: &VerifiedBatch) -> bool {
        if self.known_origins.contains(origin) {
            return true;
        }
        // Before the genesis is known, only the genesis batch of the network we join.
        self.genesis.is_none()
            && batch.first_seq() == 1
            && self.target_genesis.is_some()
            && matches!(
                batch.events().first().map(|e| &e.body),
                Some(EventBody::Genesis { network_id, market_hash })
                    if Some(genesis_id(origin, network_id, market_hash)) == self.target_genesis
            )
    }

    /// Offers a verified batch: delivered if it is next for its origin, buffered if it is ahead
    /// of a gap (the gap is fetched), dropped if already delivered.
    fn offer(
        &mut self,
        from: Option<NodeId>,
        batch: VerifiedBatch,
        relay: bool,
        out: &mut Vec<Effect>,
    ) {
        let origin = batch.origin();
        let delivered = self.origins.get(&origin).map_or(0, |st| st.delivered);
        if batch.last_seq() <= delivered {
            return;
        }
        let known = self.accepts_origin(&origin, &batch);
        if !known || batch.first_seq() > delivered + 1 {
            // Batches of origins not (yet) admitted wait in a small part of the buffer, so a
            // stranger cannot crowd out the members' out-of-order batches.
            let room = if known {
                self.buffer.len() < MAX_BUFFERED_BATCHES
            } else {
                self.buffer
                    .keys()
                    .filter(|(o, _)| !self.known_origins.contains(o))
                    .count()
                    < MAX_BUFFERED_UNKNOWN
            };
            if room {
                self.buffer
                    .insert((origin, batch.first_seq()), (from, batch));
            }
            if let Some(peer) = from {
                self.request_gap(peer, out);
            }
            return;
        }
        if !self.deliver(from, batch, relay, out) {
            return;
        }
        self.drain_buffer(out);
    }

    fn request_gap(&mut self, peer: NodeId, out: &mut Vec<Effect>) {
        let now = self.now_ms;
        let request = self.sync_request();
        if let Some(p) = self.peers.get_mut(&peer) {
            if !due(&mut p.last_gap_sync_ms, now, GAP_SYNC_MIN_MS) {
                return;
            }
            out.push(Effect::Send {
                to: peer,
                message: request,
            });
        }
    }

    fn drain_buffer(&mut self, out: &mut Vec<Effect>) {
        loop {
            let mut progressed = false;
            let keys: Vec<(NodeId, u64)> = self.buffer.keys().copied().collect();
            for key in keys {
                let origin = key.0;
                let delivered = self.origins.get(&origin).map_or(0, |st| st.delivered);
                let Some((_, batch)) = self.buffer.get(&key) else {
                    continue;
                };
                if batch.last_seq() <= delivered {
                    self.buffer.remove(&key);
                    continue;
                }
                if batch.first_seq() <= delivered + 1
                    && self.accepts_origin(&origin, batch)
                    && let Some((from, batch)) = self.buffer.remove(&key)
                {
                    self.deliver(from, batch, from.is_some(), out);
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
    }

    /// Delivers the new events of a batch that starts at or before the next expected seq.
    fn deliver(
        &mut self,
        from: Option<NodeId>,
        batch: VerifiedBatch,
        relay: bool,
        out: &mut Vec<Effect>,
    ) -> bool {
        let origin = batch.origin();
        let (delivered, last_lamport) = self
            .origins
            .get(&origin)
            .map_or((0, 0), |st| (st.delivered, st.last_lamport));
        let cut = self.cuts.get(&origin).copied();
        let new: Vec<&Event> = batch
            .events()
            .iter()
            .filter(|e| e.seq > delivered)
            .collect();
        let Some(first) = new.first() else {
            return false;
        };
        let (last_seq, last_kept_lamport) = new
            .last()
            .map_or((first.seq, first.lamport), |e| (e.seq, e.lamport));
        // Events after an eviction's cut are void: delivered (so every node holds the evicted
        // node's orders, as rejected), never ordered, so the checks against the settled
        // frontier and position do not apply to them. While no `Join` of the origin is known
        // here, one stamped above the settled frontier may still be an event of its next
        // membership whose `Join` has not arrived yet: it waits, ordered, in limbo (rule 9).
        let frontier = self.settled_frontier();
        let settled_key = self.settled_key;
        let in_limbo = |e: &Event| {
            cut.is_some_and(|c| c.drops(e.seq) && c.resume.is_none())
                && frontier.is_none_or(|s| e.lamport > s)
                && settled_key.is_none_or(|k| (e.lamport, origin, e.seq) > k)
        };
        let is_void = |e: &Event| cut.is_some_and(|c| c.drops(e.seq)) && !in_limbo(e);
        let first_ordered = new
            .iter()
            .find(|e| !cut.is_some_and(|c| c.drops(e.seq)))
            .copied();
        if first.lamport <= last_lamport {
            self.reject(from, &origin, "lamport not increasing across batches");
            return false;
        }
        // Lamports strictly increase within a verified batch: the last one is the largest.
        if batch.last_lamport() > MAX_LAMPORT {
            self.reject(from, &origin, "lamport beyond the ceiling");
            if let Some(peer) = from {
                out.push(Effect::Misbehaviour {
                    peer,
                    what: format!(
                        "event of {} with a lamport beyond the ceiling",
                        origin.short()
                    ),
                });
            }
            return false;
        }
        if let Some(first) = first_ordered
            && let Some(s) = frontier
            && first.lamport <= s
        {
            self.rejected_events += new.len() as u64;
            tracing::warn!(
                origin = %origin.short(),
                seq = first.seq,
                lamport = first.lamport,
                settled_frontier = s,
                "rejecting events stamped at or below the settled frontier"
            );
            if let Some(peer) = from {
                out.push(Effect::Misbehaviour {
                    peer,
                    what: format!("event of {} below the settled frontier", origin.short()),
                });
            }
            return false;
        }
        if let Some(first) = first_ordered
            && self
                .settled_key
                .is_some_and(|k| (first.lamport, origin, first.seq) <= k)
        {
            self.reject(from, &origin, "event before the settled position");
            return false;
        }
        let events: Vec<Event> = new.into_iter().cloned().collect();
        if from.is_some() && first_ordered.is_some() {
            self.last_heard.insert(origin, self.now_ms);
        }
        for event in events {
            if is_void(&event) {
                self.on_void(&event);
                continue;
            }
            if in_limbo(&event) {
                self.clock = self.clock.max(event.lamport);
                let key = (event.lamport, event.origin, event.seq);
                self.limbo.insert(key, false);
                self.unsettled.insert(key, event);
                continue;
            }
            self.clock = self.clock.max(event.lamport);
            self.on_delivered(&event);
            self.unsettled
                .insert((event.lamport, event.origin, event.seq), event);
        }
        let st = self.origins.entry(origin).or_default();
        st.delivered = st.delivered.max(last_seq);
        st.last_lamport = st.last_lamport.max(last_kept_lamport);
        let signed = Arc::new(batch.into_signed());
        st.batches.push(signed.clone());
        if from.is_some() {
            out.push(Effect::Persist(Record::Batch((*signed).clone())));
        }
        if relay {
            out.push(Effect::Broadcast {
                message: Message::Batch((*signed).clone()),
                except: from,
            });
        }
        self.try_trust(&origin);
        true
    }

    /// A void event (after its origin's cut): counted as delivered; a `Place` becomes an order
    /// record `rejected` with [`EVICTED_REASON`]; nothing else has any effect.
    /// Sorts `origin`'s events in limbo now that its resume point is known: void (out of the
    /// log, orders rejected) or ordinary events of its new membership.
    fn resolve_limbo(&mut self, origin: NodeId) {
        let keys: Vec<(Key, bool)> = self
            .limbo
            .iter()
            .filter(|((_, o, _), _)| *o == origin)
            .map(|(key, delivered)| (*key, *delivered))
            .collect();
        for (key, delivered) in keys {
            self.limbo.remove(&key);
            let void = self.cuts.get(&origin).is_some_and(|c| c.drops(key.2));
            if void {
                if let Some(event) = self.unsettled.remove(&key) {
                    self.void_delivered(&event, delivered);
                }
            } else if !delivered && let Some(event) = self.unsettled.get(&key).cloned() {
                self.on_delivered(&event);
            }
        }
    }

    /// An event in limbo reached in key order with no `Join` of its origin known: none was
    /// ordered before it (that `Join` would be delivered and settled here first), so it is
    /// void on every node alike.
    fn void_limbo(&mut self, key: &Key) -> bool {
        let Some(delivered) = self.limbo.remove(key) else {
            return false;
        };
        if let Some(event) = self.unsettled.remove(key) {
            self.void_delivered(&event, delivered);
        }
        true
    }

    /// Voids an event out of limbo: as at delivery, or, if it was delivered as an ordinary
    /// event before its cut was known, by rejecting its order.
    fn void_delivered(&mut self, event: &Event, delivered: bool) {
        if !delivered {
            self.on_void(event);
            return;
        }
        self.pending_joins
            .remove(&(event.lamport, event.origin, event.seq));
        if let EventBody::Place(_) = event.body {
            self.set_status(
                order_id(&event.origin, event.seq).0,
                OrderStatus::Rejected,
                Some(EVICTED_REASON.to_owned()),
            );
        }
    }

    fn on_void(&mut self, event: &Event) {
        self.events_delivered += 1;
        if let EventBody::Evict { .. } = &event.body {
            self.take_decision(event);
        }
        if let EventBody::Place(order) = &event.body {
            self.has_orders = true;
            if event.origin == self.me
                && let Some(client_id) = &order.client_order_id
            {
                self.client_ids.insert(client_id.clone(), event.seq);
            }
            self.orders.insert(
                order_id(&event.origin, event.seq).0,
                OrderRecord {
                    origin: event.origin,
                    seq: event.seq,
                    lamport: event.lamport,
                    order: order.clone(),
                    filled: Decimal::ZERO,
                    status: OrderStatus::Rejected,
                    reason: Some(EVICTED_REASON.to_owned()),
                    cancel_requested: false,
                },
            );
        }
    }

    /// An origin signed two different events with one seq (proof checked in
    /// `check_message`): counted and reported once per origin, and the origin is scored down.
    /// What was delivered first stays; nodes that delivered the other version first diverge
    /// from this one, and the digest gossip shows where.
    fn on_equivocation(&mut self, origin: NodeId, seq: u64, out: &mut Vec<Effect>) {
        if !self.equivocators.insert(origin) {
            return;
        }
        self.equivocations += 1;
        tracing::error!(origin = %origin.short(), seq, "an origin signed two different events with one seq (equivocation); keeping the one delivered first");
        out.push(Effect::Misbehaviour {
            peer: origin,
            what: format!("signed two different events with seq {seq}"),
        });
    }

    fn reject(&mut self, from: Option<NodeId>, origin: &NodeId, what: &str) {
        self.rejected_events += 1;
        tracing::warn!(origin = %origin.short(), from = ?from.map(|f| f.short()), what, "rejecting a batch");
    }

    fn on_delivered(&mut self, event: &Event) {
        self.events_delivered += 1;
        match &event.body {
            EventBody::Genesis {
                network_id,
                market_hash,
            } => {
                let id = genesis_id(&event.origin, network_id, market_hash);
                if self.genesis.is_none() && event.seq == 1 && Some(id) == self.target_genesis {
                    self.genesis = Some((id, event.origin));
                    self.target_genesis = None;
                    self.members.insert(event.origin);
                    self.incarnation.insert(event.origin, 0);
                    self.known_origins.insert(event.origin);
                    self.announce_info = true;
                    tracing::info!(genesis = %hex(&id), founder = %event.origin.short(), "network genesis");
                }
            }
            EventBody::Place(order) => {
                self.has_orders = true;
                let id = order_id(&event.origin, event.seq);
                if event.origin == self.me
                    && let Some(client_id) = &order.client_order_id
                {
                    self.client_ids.insert(client_id.clone(), event.seq);
                }
                self.orders.insert(
                    id.0,
                    OrderRecord {
                        origin: event.origin,
                        seq: event.seq,
                        lamport: event.lamport,
                        order: order.clone(),
                        filled: Decimal::ZERO,
                        status: OrderStatus::Pending,
                        reason: None,
                        cancel_requested: false,
                    },
                );
            }
            EventBody::Cancel { order_seq } => {
                if let Some(record) = self.orders.get_mut(&order_id(&event.origin, *order_seq).0)
                    && record.origin == event.origin
                {
                    record.cancel_requested = true;
                }
            }
            EventBody::Join { member, first_seq } => {
                self.known_origins.insert(*member);
                self.pending_joins
                    .insert((event.lamport, event.origin, event.seq), *member);
                // (Also with `first_seq` 1: a member evicted before it created any event. A `Join`
                // at or below the cut is one of an earlier admission, relayed late.)
                if let Some(cut) = self.cuts.get_mut(member)
                    && cut.resume.is_none()
                    && *first_seq > cut.last_seq
                {
                    // A returning member: its events resume at `first_seq`; what lies between
                    // its cut and there is void (delivered, never ordered). Its void events
                    // are fetched like any others: the returning node holds them all.
                    cut.resume = Some(*first_seq);
                    self.resolve_limbo(*member);
                }
            }
            EventBody::Evict { .. } => self.take_decision(event),
            EventBody::Leave => {}
        }
    }

    /// Records the decision an `Evict` carries, whether the event is ordinary or void (rule
    /// 17): the votes are a majority's, whoever carried them.
    fn take_decision(&mut self, event: &Event) {
        match self.check_and_record(event) {
            EvictCheck::Valid => {}
            EvictCheck::NotYet => {
                if self.pending_evicts.len() < MAX_PENDING_EVICTS {
                    self.pending_evicts.push(event.clone());
                } else {
                    tracing::warn!(origin = %event.origin.short(), "too many unchecked evictions pending; it is checked at its settled position");
                }
            }
            EvictCheck::Invalid(why) => {
                tracing::warn!(origin = %event.origin.short(), seq = event.seq, why, "ignoring an invalid eviction");
            }
        }
    }

    /// Checks an `Evict` event against the current membership and records its cut if it is
    /// valid; returns the check.
    fn check_and_record(&mut self, event: &Event) -> EvictCheck {
        let EventBody::Evict {
            target,
            last_seq,
            epoch,
            round,
            votes,
        } = &event.body
        else {
            return EvictCheck::Invalid("not an eviction");
        };
        let check = self.check_evict(&event.origin, target, *epoch, *round, *last_seq, votes);
        if let EvictCheck::Valid = check {
            self.record_cut(*target, *epoch, *round, *last_seq, votes);
        }
        check
    }

    // ---- Eviction -----------------------------------------------------------------------

    fn delivered(&self, origin: &NodeId) -> u64 {
        self.origins.get(origin).map_or(0, |st| st.delivered)
    }

    /// Whether a delivered eviction cut `member` in its current membership.
    fn cut_active(&self, member: &NodeId) -> bool {
        self.cuts
            .get(member)
            .is_some_and(|cut| Some(&cut.incarnation) == self.incarnation.get(member))
    }

    /// Whether `member` no longer holds settlement back: it is cut in its current membership
    /// and this node holds its events up to the cut.
    fn excluded(&self, member: &NodeId) -> bool {
        self.cuts.get(member).is_some_and(|cut| {
            Some(&cut.incarnation) == self.incarnation.get(member)
                && self.delivered(member) >= cut.last_seq
        })
    }

    /// After a membership change: votes, suspicions and silence timers only for current
    /// members (votes only for the targets' current incarnations), and tell peers.
    fn membership_changed(&mut self) {
        let members = &self.members;
        let incarnation = &self.incarnation;
        self.votes.retain(|(target, epoch), votes| {
            votes.retain(|(_, voter), _| members.contains(voter));
            members.contains(target) && incarnation.get(target) == Some(epoch) && !votes.is_empty()
        });
        self.suspects.retain(|m, _| members.contains(m));
        self.last_heard.retain(|m, _| members.contains(m));
        // A member that left takes its announced acks with it: when it returns, its new
        // incarnation starts from its `Join`.
        let joiners: BTreeSet<NodeId> = self.pending_joins.values().copied().collect();
        self.max_announced
            .retain(|m, _| members.contains(m) || joiners.contains(m));
        self.vote_fetch_ms
            .retain(|(target, _), _| members.contains(target));
        // Peers pick sponsors by the member list we advertise.
        self.announce_info = true;
    }

    /// Checks a delivered `Evict` against the current membership (rule 6 of the module docs).
    fn check_evict(
        &self,
        origin: &NodeId,
        target: &NodeId,
        epoch: u64,
        round: u32,
        last_seq: u64,
        votes: &[(NodeId, Signature)],
    ) -> EvictCheck {
        if origin == target {
            return EvictCheck::Invalid("a node cannot evict itself");
        }
        match self.incarnation.get(target) {
            None => return EvictCheck::NotYet,
            Some(&inc) if inc < epoch => return EvictCheck::NotYet,
            Some(&inc) if inc > epoch => return EvictCheck::Invalid("an earlier membership"),
            Some(_) => {}
        }
        if !self.members.contains(target) {
            return EvictCheck::Invalid("not a member any more");
        }
        if !votes.windows(2).all(|w| w[0].0 < w[1].0) {
            return EvictCheck::Invalid("votes not sorted by distinct voters");
        }
        if votes.iter().any(|(voter, _)| voter == target) {
            return EvictCheck::Invalid("the target voted");
        }
        // A vote counts if its voter is a member and signed it in its current membership (a
        // vote from a membership it has since lost, or not yet settled here, does not), or if
        // its voter was a member alongside this incarnation of the target and has left since
        // (rule 17): then the majority is taken over the members and those departed voters,
        // a membership that existed while the votes were cast.
        // Only across one departure: the members plus the one that left then were the
        // membership the votes were cast in (rule 16's quorum argument holds across one
        // change; with two, votes of two departed members could make a majority of no
        // membership that ever was, and cut what the current one settled).
        let departed_since: Vec<&NodeId> = self
            .departed
            .iter()
            .filter(|(node, at)| **at > epoch && !self.members.contains(node))
            .map(|(node, _)| node)
            .collect();
        let departed_voter =
            |voter: &NodeId| departed_since.len() == 1 && departed_since[0] == voter;
        let counted: Vec<&NodeId> = votes
            .iter()
            .filter(|(voter, sig)| {
                (self.members.contains(voter) || departed_voter(voter))
                    && self.incarnation.get(voter).is_some_and(|voter_epoch| {
                        let transcript = peer_protocol::vote_transcript(
                            &self.config.network_id,
                            *voter_epoch,
                            target,
                            epoch,
                            round,
                            last_seq,
                        );
                        peer_protocol::verify(voter, &transcript, sig).is_ok()
                    })
            })
            .map(|(voter, _)| voter)
            .collect();
        let departed = counted.iter().filter(|voter| departed_voter(voter)).count();
        if counted.len() * 2 > self.members.len() + departed {
            EvictCheck::Valid
        } else {
            EvictCheck::NotYet
        }
    }

    /// Re-checks the delivered evictions that were not checkable; true if one took effect.
    fn recheck_pending_evicts(&mut self) -> bool {
        self.pending_evicts_checked = self.epoch;
        let pending = std::mem::take(&mut self.pending_evicts);
        let mut recorded = false;
        for event in pending {
            match self.check_and_record(&event) {
                EvictCheck::Valid => recorded = true,
                EvictCheck::NotYet => self.pending_evicts.push(event),
                EvictCheck::Invalid(_) => {}
            }
        }
        recorded
    }

    /// Records a valid decision's cut (the first one for the target's incarnation wins; a
    /// different one is an error, counted and never applied).
    fn record_cut(
        &mut self,
        target: NodeId,
        incarnation: u64,
        round: u32,
        last_seq: u64,
        votes: &[(NodeId, Signature)],
    ) {
        if let Some(cut) = self.cuts.get(&target)
            && cut.incarnation == incarnation
        {
            if cut.last_seq != last_seq {
                self.equivocations += 1;
                tracing::error!(
                    target_node = %target.short(),
                    recorded = cut.last_seq,
                    other = last_seq,
                    "two eviction decisions with different cuts; keeping the first"
                );
            }
            return;
        }
        // A `Join` of the target delivered before this decision (relayed ahead of it) already
        // names where its next membership resumes: a sponsor admits it only once its eviction
        // settled there, so that `Join` belongs after this cut.
        let resume = self
            .pending_joins
            .iter()
            .filter(|(_, member)| **member == target)
            .filter_map(|(key, _)| match self.unsettled.get(key).map(|e| &e.body) {
                Some(EventBody::Join { first_seq, .. }) if *first_seq > last_seq => {
                    Some(*first_seq)
                }
                _ => None,
            })
            .min();
        let cut = Cut {
            incarnation,
            last_seq,
            resume,
        };
        self.cuts.insert(target, cut);
        self.decisions.insert(
            target,
            Decision {
                round,
                votes: votes.to_vec(),
            },
        );
        self.suspects.remove(&target);
        // Its later events leave the log: their orders are rejected, on every node alike.
        let doomed: Vec<Key> = self
            .unsettled
            .keys()
            .filter(|(_, origin, seq)| *origin == target && cut.drops(*seq))
            .copied()
            .collect();
        for key in &doomed {
            if resume.is_none() {
                // Without a `Join` known, the target's later events might belong to its next
                // membership (relayed ahead of this decision and of that `Join`): they wait in
                // limbo like events delivered after the cut (rule 9).
                self.limbo.entry(*key).or_insert(true);
                continue;
            }
            let delivered = self.limbo.remove(key).unwrap_or(true);
            if let Some(event) = self.unsettled.remove(key) {
                self.void_delivered(&event, delivered);
            }
        }
        if target == self.me {
            tracing::warn!(
                last_seq,
                cut = doomed.len(),
                "a majority decided to evict this node; its later pending events are rejected (in limbo until settlement reaches them if no Join of it is known)"
            );
            self.announce_info = true;
        } else {
            tracing::info!(member = %target.short(), last_seq, cut = doomed.len(), "eviction decided");
        }
    }

    /// The failure detector and the voting steps (rules 2 to 5 of the module docs).
    fn detect_failures(&mut self, now: u64, out: &mut Vec<Effect>) {
        let limit = self.config.evict_after_ms;
        // A member that learned of its own eviction still votes (rule 15 of the module docs):
        // wherever its `Evict` has not settled yet it is a member, and its vote may be the one
        // a blocked decision lacks.
        let member = self.genesis.is_some() && self.members.contains(&self.me);
        if limit == 0 || !member || self.members.len() < 3 {
            self.suspects.clear();
            return;
        }
        let others: Vec<NodeId> = self
            .members
            .iter()
            .copied()
            .filter(|m| *m != self.me)
            .collect();
        // Votes bind (rule 11), so only a member that hears a majority of the members (itself
        // included) casts one: on the minority side of a split, or alone, a node's votes could
        // never decide anything and would only cap its acks for good.
        let hearing = 1 + others
            .iter()
            .filter(|m| {
                self.last_heard
                    .get(m)
                    .is_none_or(|at| now.saturating_sub(*at) < limit)
            })
            .count();
        let may_vote = hearing * 2 > self.members.len();
        for member in others {
            let heard = *self.last_heard.entry(member).or_insert(now);
            let epoch = self.incarnation.get(&member).copied().unwrap_or(0);
            if now.saturating_sub(heard) < limit || self.cut_active(&member) {
                if self.suspects.remove(&member).is_some() {
                    tracing::info!(member = %member.short(), "a suspect member is heard again");
                }
                continue;
            }
            let Some(suspect) = self.suspects.get(&member).copied() else {
                tracing::warn!(member = %member.short(), silent_ms = now.saturating_sub(heard), "member is silent: suspect; fetching its events before voting");
                self.suspects.insert(
                    member,
                    Suspect {
                        since_ms: now,
                        last_fetch_ms: Some(now),
                    },
                );
                let request = self.sync_request();
                for peer in self.same_network_peers() {
                    out.push(Effect::Send {
                        to: peer,
                        message: request.clone(),
                    });
                }
                continue;
            };
            if may_vote && now.saturating_sub(suspect.since_ms) >= VOTE_FETCH_MS {
                self.vote(member, epoch, now, out);
            }
        }
        if may_vote {
            self.join_blocking_votes(now, out);
        }
        self.advance_rounds(now, out);
        self.reinstate_own_votes(out);
        if due(&mut self.last_vote_broadcast_ms, now, VOTE_REBROADCAST_MS) {
            for ((target, epoch), votes) in &self.votes {
                // Also the votes of keys this node voted on: they bind it, and a member that
                // missed them may need them to join a blocking vote (rule 13).
                if !self.suspects.contains_key(target)
                    && !self.my_votes.contains_key(&(*target, *epoch))
                {
                    continue;
                }
                for ((round, voter), (last_seq, signature)) in votes {
                    let vote = (*voter, *round, *last_seq, *signature);
                    out.push(Effect::Broadcast {
                        message: self.vote_message((*target, *epoch), vote),
                        except: None,
                    });
                }
            }
        }
        let keys: Vec<(NodeId, u64)> = self.votes.keys().copied().collect();
        for key in keys {
            self.decide(key, now, out);
        }
        self.reissue_orphaned_decisions(out);
    }

    /// Rule 17: a recorded decision whose target is still a member of that incarnation, with
    /// no ordinary `Evict` carrying that cut left in the log here (every one was void: its
    /// creator was cut too), is carried again in a new `Evict` of this node's, so that the
    /// target still leaves the membership at one settled position on every node.
    fn reissue_orphaned_decisions(&mut self, out: &mut Vec<Effect>) {
        if self.phase() != Phase::Member {
            return;
        }
        let candidates: Vec<(NodeId, Cut, Decision)> = self
            .cuts
            .iter()
            .filter(|(target, cut)| {
                **target != self.me
                    && self.members.contains(target)
                    && self.cut_active(target)
                    && self.delivered(target) >= cut.last_seq
            })
            .filter_map(|(target, cut)| Some((*target, *cut, self.decisions.get(target)?.clone())))
            .collect();
        for (target, cut, decision) in candidates {
            let carried = self.unsettled.iter().any(|(key, event)| {
                !self.limbo.contains_key(key)
                    && matches!(
                        &event.body,
                        EventBody::Evict { target: t, epoch, last_seq, .. }
                            if *t == target
                                && *epoch == cut.incarnation
                                && *last_seq == cut.last_seq
                    )
            });
            if carried {
                continue;
            }
            tracing::warn!(
                target_node = %target.short(),
                last_seq = cut.last_seq,
                "every Evict carrying a recorded decision was void here: carrying it again"
            );
            self.create(
                EventBody::Evict {
                    target,
                    last_seq: cut.last_seq,
                    epoch: cut.incarnation,
                    round: decision.round,
                    votes: decision.votes,
                },
                out,
            );
        }
    }

    /// Casts (or, after a restart, re-sends) this node's vote against `target`: one per round,
    /// in the latest round anyone voted in.
    fn vote(&mut self, target: NodeId, epoch: u64, now: u64, out: &mut Vec<Effect>) {
        let key = (target, epoch);
        if self.released_votes.contains_key(&key) {
            // Cast before this node's eviction, which settled here: no vote on this key until
            // it is a member again (then its released votes are forgotten, rule 11).
            return;
        }
        if self.my_votes.contains_key(&key) {
            // Later rounds start by rule 14 (`advance_rounds`), not by suspicion.
            self.republish_own_votes(key, out);
            return;
        }
        let delivered = self.delivered(&target);
        let ahead: Vec<NodeId> = self
            .votes
            .get(&key)
            .map(|votes| {
                votes
                    .iter()
                    .filter(|(_, (seq, _))| *seq > delivered)
                    .map(|((_, voter), _)| *voter)
                    .collect::<BTreeSet<NodeId>>()
                    .into_iter()
                    .collect()
            })
            .unwrap_or_default();
        if !ahead.is_empty() {
            // Another voter holds more of the target's events: fetch them before voting.
            if let Some(suspect) = self.suspects.get_mut(&target)
                && due(&mut suspect.last_fetch_ms, now, VOTE_FETCH_RETRY_MS)
            {
                let request = self.sync_request();
                for voter in ahead {
                    if self.peers.contains_key(&voter) {
                        out.push(Effect::Send {
                            to: voter,
                            message: request.clone(),
                        });
                    }
                }
            }
            return;
        }
        let round = self.max_round(&key);
        tracing::warn!(target_node = %target.short(), epoch, round, last_seq = delivered, "voting to evict a silent member");
        self.cast_vote(key, round, delivered, now, out);
    }

    /// The highest round anyone voted in for `key` (0 if nobody did).
    fn max_round(&self, key: &(NodeId, u64)) -> u32 {
        self.votes
            .get(key)
            .and_then(|votes| votes.keys().map(|(round, _)| *round).max())
            .unwrap_or(0)
    }

    /// Puts this node's own stored votes of current keys back into the tally and sends them
    /// (rule 3 of the module docs). After a restart a vote is only in `my_votes`: if it never
    /// left before the crash (cast on one side of a partition, say), nobody else holds it, yet
    /// it caps this node's acks (rule 11). Re-sent only while the target was suspect, it would
    /// be lost for good once the target is heard again, and the two capped halves of a
    /// majority would block the target's later events forever, each waiting for the other.
    fn reinstate_own_votes(&mut self, out: &mut Vec<Effect>) {
        let keys: Vec<(NodeId, u64)> = self
            .my_votes
            .keys()
            .filter(|key| {
                key.0 != self.me
                    && self.current_key(&key.0) == Some(**key)
                    && !self.released_votes.contains_key(key)
                    && self
                        .cuts
                        .get(&key.0)
                        .is_none_or(|cut| cut.incarnation != key.1)
            })
            .copied()
            .collect();
        for key in keys {
            self.republish_own_votes(key, out);
        }
    }

    /// Publishes every stored vote of this node for `key` that is missing from the tally.
    fn republish_own_votes(&mut self, key: (NodeId, u64), out: &mut Vec<Effect>) {
        let me = self.me;
        let missing: Vec<(u32, u64)> = self
            .my_votes
            .get(&key)
            .into_iter()
            .flatten()
            .filter(|(round, _)| {
                !self
                    .votes
                    .get(&key)
                    .is_some_and(|votes| votes.contains_key(&(**round, me)))
            })
            .map(|(round, seq)| (*round, *seq))
            .collect();
        for (round, last_seq) in missing {
            tracing::info!(target_node = %key.0.short(), epoch = key.1, round, last_seq, "re-sending this node's stored eviction vote");
            self.publish_own_vote(key, round, last_seq, out);
        }
    }

    /// Casts this node's vote for `key` in `round` at `last_seq`: persisted before it leaves.
    fn cast_vote(
        &mut self,
        key: (NodeId, u64),
        round: u32,
        last_seq: u64,
        now: u64,
        out: &mut Vec<Effect>,
    ) {
        let (target, epoch) = key;
        self.my_votes
            .entry(key)
            .or_default()
            .insert(round, last_seq);
        self.persist_settled(out);
        out.push(Effect::Persist(Record::Vote {
            target,
            epoch,
            round,
            last_seq,
        }));
        self.publish_own_vote(key, round, last_seq, out);
        self.decide(key, now, out);
    }

    /// Signs this node's vote for `key` in `round` at `last_seq`, puts it in the tally and
    /// broadcasts it (a new vote, or a stored one that is not in the tally).
    fn publish_own_vote(
        &mut self,
        key: (NodeId, u64),
        round: u32,
        last_seq: u64,
        out: &mut Vec<Effect>,
    ) {
        let (target, epoch) = key;
        let me = self.me;
        let signature = self.sign_vote(&target, epoch, round, last_seq);
        self.votes
            .entry(key)
            .or_default()
            .insert((round, me), (last_seq, signature));
        out.push(Effect::Broadcast {
            message: self.vote_message(key, (me, round, last_seq, signature)),
            except: None,
        });
    }

    /// Joins a vote that already blocks its target (rule 13 of the module docs): when the
    /// members whose votes cap them at or below some `N` leave too few others to ever ack
    /// the target beyond `N` (at most half of the electorate), no event of the target after
    /// `N` can settle anywhere, so voting `N` cuts nothing settled, and it lets a decision
    /// end the block instead of stalling settlement for good.
    fn join_blocking_votes(&mut self, now: u64, out: &mut Vec<Effect>) {
        let mut join = Vec::new();
        for (key, votes) in &self.votes {
            let (target, epoch) = *key;
            if target == self.me
                || self.current_key(&target) != Some(*key)
                || self.my_votes.contains_key(key)
                || self.released_votes.contains_key(key)
                || self.cut_active(&target)
            {
                continue;
            }
            let delivered = self.delivered(&target);
            let settled = self.origins.get(&target).map_or(0, |st| st.settled);
            // Each voter is capped by its lowest vote.
            let caps = lowest_votes(votes);
            // The highest N that blocks: voters at or below it are capped there. (Below what
            // this node settled nothing blocks, and a decision there would never be taken; but
            // votes below it still block the events after it: sim seed 397, where the target's
            // events past two votes settled while an evicted member still acked them.)
            let blocking = caps
                .values()
                .copied()
                .chain([settled])
                .filter(|n| *n <= delivered && *n >= settled)
                .filter(|n| {
                    let electorate = self.blocking_electorate(&target, *n);
                    let capped = caps
                        .iter()
                        .filter(|(voter, seq)| *seq <= n && electorate.contains(voter))
                        .count();
                    (electorate.len() - capped) * 2 <= electorate.len()
                })
                .max();
            if let Some(blocking) = blocking {
                let round = votes.keys().map(|(round, _)| *round).max().unwrap_or(0);
                // Never below what this node acked (rule 16): if that is higher, the round
                // splits and rule 14 brings the values together.
                let last_seq = blocking.max(self.ack_floor(&target));
                join.push(((target, epoch), round, last_seq));
            }
        }
        for (key, round, last_seq) in join {
            tracing::warn!(target_node = %key.0.short(), epoch = key.1, round, last_seq, "joining eviction votes that already block the member's later events");
            self.cast_vote(key, round, last_seq, now, out);
        }
    }

    /// Starts the next voting round where the last one cannot decide (rule 14 of the module
    /// docs): every member but the target voted in round `r` and no `last_seq` has a majority.
    /// Then every voter is capped at its round-`r` vote or below, so no event of the target
    /// beyond the `⌊n/2⌋`-th highest of those votes (`q`) can ever gather a majority of acks:
    /// voting `q` in round `r + 1` cuts nothing settled, and every member computes the same
    /// `q` from the same complete round.
    fn advance_rounds(&mut self, now: u64, out: &mut Vec<Effect>) {
        let n = self.members.len();
        let mut next = Vec::new();
        for (key, votes) in &self.votes {
            let target = key.0;
            if target == self.me
                || self.current_key(&target) != Some(*key)
                || self.released_votes.contains_key(key)
                || self.cut_active(&target)
            {
                continue;
            }
            let max_round = votes.keys().map(|(round, _)| *round).max().unwrap_or(0);
            for round in (0..=max_round).rev() {
                let mut values: Vec<u64> = Vec::with_capacity(n);
                for voter in self.members.iter().filter(|m| **m != target) {
                    match votes.get(&(round, *voter)) {
                        Some((seq, _)) => values.push(*seq),
                        None => break,
                    }
                }
                if values.len() + 1 != n {
                    continue; // incomplete: it may still decide
                }
                let mut tally: BTreeMap<u64, usize> = BTreeMap::new();
                for seq in &values {
                    *tally.entry(*seq).or_default() += 1;
                }
                if tally.values().any(|count| count * 2 > n) {
                    break; // decided: `decide` takes it
                }
                // The highest value voted for this key: no voter's vote goes down (rule 16), so
                // every member can vote it, and a majority of equal votes follows. Never below
                // what this node settled or acked of the target either.
                let settled = self.origins.get(&target).map_or(0, |st| st.settled);
                let highest = votes.values().map(|(seq, _)| *seq).max().unwrap_or(0);
                let q = highest.max(settled).max(self.ack_floor(&target));
                let voted_next = self
                    .my_votes
                    .get(key)
                    .is_some_and(|mine| mine.keys().any(|r| *r > round));
                if !voted_next && round < MAX_VOTE_ROUND {
                    next.push((*key, round + 1, q));
                }
                break;
            }
        }
        for (key, round, q) in next {
            let target = key.0;
            if self.delivered(&target) < q {
                // Fetch the target's events up to `q` from the voters that hold them.
                if self.vote_fetch_due(key, now) {
                    let request = self.sync_request();
                    let holders: BTreeSet<NodeId> = self
                        .votes
                        .get(&key)
                        .into_iter()
                        .flatten()
                        .filter(|(_, (seq, _))| *seq >= q)
                        .map(|((_, voter), _)| *voter)
                        .filter(|voter| self.peers.contains_key(voter))
                        .collect();
                    for voter in holders {
                        out.push(Effect::Send {
                            to: voter,
                            message: request.clone(),
                        });
                    }
                }
                continue;
            }
            tracing::warn!(target_node = %target.short(), epoch = key.1, round, last_seq = q, "no majority in a complete round of eviction votes: voting in the next round");
            self.cast_vote(key, round, q, now, out);
        }
    }

    /// Whether fetching `key`'s target's events for a vote or a decision is due (at most every
    /// [`VOTE_FETCH_RETRY_MS`] per key; marks it done).
    fn vote_fetch_due(&mut self, key: (NodeId, u64), now: u64) -> bool {
        let last = self.vote_fetch_ms.get(&key).copied();
        if last.is_some_and(|at| now.saturating_sub(at) < VOTE_FETCH_RETRY_MS) {
            return false;
        }
        self.vote_fetch_ms.insert(key, now);
        true
    }

    /// The electorate that must ack `target`'s first event after `n` for any of its events
    /// after `n` to settle (rule 13 of the module docs): settlement runs in key order and the
    /// target's later events follow that one, so if it can never gather a majority, none
    /// can. A pending joiner counts only if its `Join` is ordered before that event (as in
    /// [`Engine::majority_holds`], on every node alike: the key order decides it). If this
    /// node does not hold that event (its key unknown), every pending joiner counts (the
    /// widest electorate, so the test is the strictest).
    fn blocking_electorate(&self, target: &NodeId, n: u64) -> BTreeSet<NodeId> {
        let first_after = n.saturating_add(1);
        let key = self
            .unsettled
            .keys()
            .find(|(_, origin, seq)| origin == target && *seq == first_after);
        self.electorate(key)
    }

    /// The message carrying `vote` for `key` (the voter's current incarnation, in which every
    /// kept vote was cast: `membership_changed` drops the votes of members that left).
    fn vote_message(&self, key: (NodeId, u64), vote: Ballot) -> Message {
        let (voter, round, last_seq, signature) = vote;
        Message::Vote {
            voter,
            voter_epoch: self.incarnation.get(&voter).copied().unwrap_or(0),
            target: key.0,
            epoch: key.1,
            round,
            last_seq,
            signature,
        }
    }

    fn sign_vote(&self, target: &NodeId, epoch: u64, round: u32, last_seq: u64) -> Signature {
        let my_epoch = self.incarnation.get(&self.me).copied().unwrap_or(0);
        self.identity.sign(&peer_protocol::vote_transcript(
            &self.config.network_id,
            my_epoch,
            target,
            epoch,
            round,
            last_seq,
        ))
    }

    /// A verified vote from a peer (rule 4 of the module docs).
    fn on_vote(&mut self, from: NodeId, key: (NodeId, u64), vote: Ballot, out: &mut Vec<Effect>) {
        let (target, epoch) = key;
        let (voter, round, last_seq, signature) = vote;
        if voter == target
            || round > MAX_VOTE_ROUND
            || !self.members.contains(&voter)
            || !self.members.contains(&target)
            || self.incarnation.get(&target) != Some(&epoch)
        {
            tracing::debug!(voter = %voter.short(), target_node = %target.short(), epoch, round, "ignoring a vote outside the current membership");
            return;
        }
        if voter == self.me && self.released_votes.contains_key(&key) {
            // Our own vote of an earlier incarnation, relayed back: it binds us no more, so it
            // must not count again.
            return;
        }
        let votes = self.votes.entry(key).or_default();
        match votes.get(&(round, voter)) {
            Some((seq, _)) if *seq == last_seq => return,
            Some((seq, _)) => {
                let first = *seq;
                self.equivocations += 1;
                tracing::error!(
                    voter = %voter.short(),
                    target_node = %target.short(),
                    epoch,
                    round,
                    first,
                    second = last_seq,
                    "equivocating eviction vote; keeping the first"
                );
                if from == voter {
                    out.push(Effect::Misbehaviour {
                        peer: from,
                        what: format!("two different eviction votes against {}", target.short()),
                    });
                }
                return;
            }
            None => {}
        }
        votes.insert((round, voter), (last_seq, signature));
        if voter == self.me
            && !self
                .my_votes
                .get(&key)
                .is_some_and(|mine| mine.contains_key(&round))
        {
            // Our own vote, lost with our log: it binds us all the same.
            self.my_votes
                .entry(key)
                .or_default()
                .insert(round, last_seq);
            self.persist_settled(out);
            out.push(Effect::Persist(Record::Vote {
                target,
                epoch,
                round,
                last_seq,
            }));
        }
        out.push(Effect::Broadcast {
            message: self.vote_message(key, vote),
            except: Some(from),
        });
        let now = self.now_ms;
        self.decide(key, now, out);
    }

    /// Creates an `Evict` once a majority of the members agree on one cut in one round and
    /// this node holds the target's events up to it (rule 5 of the module docs).
    fn decide(&mut self, key: (NodeId, u64), now: u64, out: &mut Vec<Effect>) {
        let (target, epoch) = key;
        // Acted on only while this node itself suspects the target, or has voted against it
        // (then the votes bind: a majority of them blocks the target's later events, and only
        // the eviction ends that). Not otherwise: stale votes of others against a member heard
        // again, acted on by everyone, could evict several members against each other at once
        // (see "Known limits" in the module docs).
        if self.phase() != Phase::Member
            || (!self.suspects.contains_key(&target) && !self.my_votes.contains_key(&key))
            || target == self.me
            || !self.members.contains(&target)
            || self.incarnation.get(&target) != Some(&epoch)
            || self
                .cuts
                .get(&target)
                .is_some_and(|c| c.incarnation == epoch)
        {
            return;
        }
        let Some(votes) = self.votes.get(&key) else {
            return;
        };
        let mut tally: BTreeMap<(u32, u64), usize> = BTreeMap::new();
        for ((round, voter), (seq, _)) in votes {
            if *voter != target && self.members.contains(voter) {
                *tally.entry((*round, *seq)).or_default() += 1;
            }
        }
        // The latest round with a majority (one value at most per round), and only in the
        // highest round anyone voted in: an earlier round was found complete without a
        // majority, and one that regains a majority after a membership change is not taken
        // here (rule 14).
        let my_round = votes.keys().map(|(round, _)| *round).max().unwrap_or(0);
        let Some((round, last_seq)) = tally
            .iter()
            .rev()
            .find(|(_, count)| **count * 2 > self.members.len())
            .map(|(at, _)| *at)
            .filter(|(round, _)| *round >= my_round)
        else {
            return;
        };
        let settled = self.origins.get(&target).map_or(0, |st| st.settled);
        if last_seq < settled {
            // Never cut what this node already settled (stale votes from an earlier silence).
            tracing::warn!(target_node = %target.short(), last_seq, settled, "not evicting: the agreed cut is below events already settled");
            return;
        }
        let agreeing = |((r, voter), (seq, _)): (&(u32, NodeId), &(u64, Signature))| {
            *r == round && *seq == last_seq && *voter != target && self.members.contains(voter)
        };
        if self.delivered(&target) < last_seq {
            // Decided, but we lack some of the target's events: fetch them from the voters.
            let voters: Vec<NodeId> = votes
                .iter()
                .filter(|vote| agreeing(*vote))
                .map(|((_, voter), _)| *voter)
                .filter(|voter| self.peers.contains_key(voter))
                .collect();
            if !self.vote_fetch_due(key, now) {
                return;
            }
            let request = self.sync_request();
            for voter in voters {
                out.push(Effect::Send {
                    to: voter,
                    message: request.clone(),
                });
            }
            return;
        }
        let signed: Vec<(NodeId, Signature)> = votes
            .iter()
            .filter(|vote| agreeing(*vote))
            .map(|((_, voter), (_, signature))| (*voter, *signature))
            .take(peer_protocol::MAX_MEMBERS)
            .collect();
        tracing::warn!(target_node = %target.short(), epoch, round, last_seq, votes = signed.len(), "a majority voted: evicting");
        self.create(
            EventBody::Evict {
                target,
                last_seq,
                epoch,
                round,
                votes: signed,
            },
            out,
        );
    }

    // ---- Settlement --------------------------------------------------------------------

    fn frontier_of(&self, member: &NodeId) -> u64 {
        if *member == self.me {
            return self.clock;
        }
        let floor = self.member_floor.get(member).copied().unwrap_or(0);
        let trusted = self.origins.get(member).map_or(0, |st| st.trusted);
        floor.max(trusted)
    }

    /// Applies every delivered event at or below the settled frontier, in key order. A
    /// membership change recomputes the frontier before the next event.
    fn settle(&mut self, out: &mut Vec<Effect>) {
        while let Some(s) = self.settled_frontier() {
            let Some(entry) = self.unsettled.first_entry() else {
                break;
            };
            if entry.key().0 > s {
                break;
            }
            // In key order: the first event not held by a majority stops the loop.
            let key = *entry.key();
            if self.void_limbo(&key) {
                continue;
            }
            if !self.majority_holds(&key) {
                break;
            }
            let Some(event) = self.unsettled.remove(&key) else {
                break;
            };
            self.apply(key, event, out);
        }
        if !self.pending_evicts.is_empty()
            && self.pending_evicts_checked != self.epoch
            && self.recheck_pending_evicts()
        {
            // A new cut may let settlement pass the evicted member.
            self.settle(out);
        }
    }

    fn apply(&mut self, key: Key, event: Event, out: &mut Vec<Effect>) {
        self.pending_joins.remove(&key);
        self.settled_key = Some(key);
        self.settled_events += 1;
        let origin = event.origin;
        if let Some(st) = self.origins.get_mut(&origin) {
            st.settled = st.settled.max(event.seq);
        }
        let is_member = self.members.contains(&origin);
        match event.body {
            EventBody::Genesis { .. } => {}
            EventBody::Place(order) => {
                let id = order_id(&origin, event.seq);
                if !is_member {
                    if let Some(record) = self.orders.get_mut(&id.0) {
                        record.status = OrderStatus::Rejected;
                        record.reason = Some("its node is not a member".to_owned());
                    }
                } else {
                    let market = order.market.clone();
                    let cmd = Command::Place(NewOrder {
                        id,
                        owner: owner_of(&origin),
                        market: order.market,
                        side: order.side,
                        order_type: order.order_type,
                        price: order.price,
                        quantity: order.quantity,
                        time_in_force: order.time_in_force,
                        // One owner per node, many clients behind it: self-trade prevention
                        // would cancel unrelated clients' orders, so it is off.
                        stp: SelfTradePrevention::None,
                    });
                    self.execute(cmd, key.0, out);
                    if origin == self.me {
                        out.push(Effect::Settled(ApiOrderId(id)));
                    }
                    out.push(Effect::BookChanged(market));
                }
            }
            EventBody::Cancel { order_seq } => {
                if is_member {
                    let id = order_id(&origin, order_seq);
                    let market = self.orders.get(&id.0).map(|r| r.order.market.clone());
                    self.execute(
                        Command::Cancel {
                            id,
                            owner: owner_of(&origin),
                        },
                        key.0,
                        out,
                    );
                    if let Some(market) = market {
                        out.push(Effect::BookChanged(market));
                    }
                }
            }
            EventBody::Join { member, .. } => {
                if is_member && !self.members.contains(&member) {
                    self.members.insert(member);
                    self.departed.remove(&member);
                    self.member_floor.insert(member, key.0);
                    self.epoch += 1;
                    self.incarnation.insert(member, self.epoch);
                    self.last_heard.insert(member, self.now_ms);
                    if member == self.me {
                        // We just became a member: everyone counts as heard from now on.
                        for m in &self.members {
                            self.last_heard.insert(*m, self.now_ms);
                        }
                        // The votes of our earlier incarnation cap nothing any more (rule 11)
                        // and count nowhere (a vote signs its voter's incarnation): in this one
                        // we are a voter like any other, also against a target we voted
                        // against before.
                        self.released_votes.clear();
                    }
                    self.membership_changed();
                    tracing::info!(member = %member.short(), by = %origin.short(), epoch = self.epoch, "member joined");
                }
            }
            EventBody::Leave => {
                if is_member && self.members.len() > 1 {
                    self.members.remove(&origin);
                    self.epoch += 1;
                    self.departed.insert(origin, self.epoch);
                    self.membership_changed();
                    tracing::info!(member = %origin.short(), "member left");
                }
            }
            EventBody::Evict {
                target,
                last_seq,
                epoch,
                ..
            } => {
                self.pending_evicts
                    .retain(|e| (e.lamport, e.origin, e.seq) != key);
                // Not recorded at delivery (not checkable then): check against the settled
                // membership now.
                let recorded = self
                    .cuts
                    .get(&target)
                    .is_some_and(|cut| cut.incarnation == epoch);
                if !recorded && !matches!(self.check_and_record(&event), EvictCheck::Valid) {
                    tracing::debug!(target_node = %target.short(), "a settled eviction that does not apply: no-op");
                }
                let cut_matches = self
                    .cuts
                    .get(&target)
                    .is_some_and(|cut| cut.incarnation == epoch && cut.last_seq == last_seq);
                if cut_matches
                    && self.incarnation.get(&target) == Some(&epoch)
                    && self.members.remove(&target)
                {
                    self.member_floor.remove(&target);
                    self.epoch += 1;
                    self.departed.insert(target, self.epoch);
                    self.evictions += 1;
                    self.membership_changed();
                    if target == self.me {
                        // This node's votes were cast as a member of the incarnation that just
                        // ended: they no longer bind its acks (rule 11 of the module docs).
                        let released = std::mem::take(&mut self.my_votes);
                        self.released_votes.extend(released);
                        tracing::warn!(
                            last_seq,
                            "this node was evicted by a majority of the members; asking to join again"
                        );
                    } else {
                        tracing::warn!(member = %target.short(), last_seq, epoch = self.epoch, "member evicted");
                    }
                }
            }
        }
        if self.settled_events.is_multiple_of(CHECKPOINT_EVERY) {
            let digest = self.digest();
            self.remember_digest(self.settled_events, digest);
        }
    }

    fn execute(&mut self, cmd: Command, lamport: u64, out: &mut Vec<Effect>) {
        let is_cancel = matches!(cmd, Command::Cancel { .. });
        let mut events = std::mem::take(&mut self.scratch);
        events.clear();
        self.exchange.execute_into(cmd, &mut events);
        for event in events.drain(..) {
            match event {
                BookEvent::Accepted { .. } => {}
                BookEvent::Trade {
                    market,
                    maker,
                    taker,
                    price,
                    quantity,
                    taker_side,
                    ..
                } => {
                    for (id, is_maker) in [(maker, true), (taker, false)] {
                        if let Some(record) = self.orders.get_mut(&id.0) {
                            record.filled = record.filled.saturating_add(quantity);
                            if is_maker && !record.status.is_final() {
                                record.status = OrderStatus::PartiallyFilled;
                            }
                        }
                    }
                    self.trade_count += 1;
                    let trade = TradeView {
                        trade_id: self.trade_count,
                        market: market.clone(),
                        price,
                        quantity,
                        maker_order_id: ApiOrderId(maker).to_string(),
                        taker_order_id: ApiOrderId(taker).to_string(),
                        taker_side,
                        lamport,
                    };
                    self.chain_trade(&trade, maker.0, taker.0);
                    let list = self.trades.entry(market).or_default();
                    if list.len() >= MAX_TRADES_KEPT {
                        list.pop_front();
                    }
                    list.push_back(trade.clone());
                    out.push(Effect::Trade(trade));
                }
                BookEvent::Filled { id } => self.set_status(id.0, OrderStatus::Filled, None),
                BookEvent::Rested { id, .. } => {
                    let status = match self.orders.get(&id.0) {
                        Some(r) if r.filled > Decimal::ZERO => OrderStatus::PartiallyFilled,
                        _ => OrderStatus::Open,
                    };
                    self.set_status(id.0, status, None);
                }
                BookEvent::Cancelled { id, reason, .. } => {
                    self.set_status(id.0, OrderStatus::Cancelled, Some(reason.to_string()));
                }
                BookEvent::Rejected { id, reason } => {
                    // A rejected cancel (unknown or finished order) is a no-op, not a state of
                    // the order it names.
                    if !is_cancel {
                        self.set_status(id.0, OrderStatus::Rejected, Some(reason.to_string()));
                    }
                }
            }
        }
        self.scratch = events;
    }

    fn set_status(&mut self, id: u128, status: OrderStatus, reason: Option<String>) {
        if let Some(record) = self.orders.get_mut(&id) {
            record.status = status;
            if reason.is_some() {
                record.reason = reason;
            }
        }
    }

    fn chain_trade(&mut self, trade: &TradeView, maker: u128, taker: u128) {
        let mut hasher = Sha256::new();
        hasher.update(self.trade_chain);
        hasher.update(trade.trade_id.to_le_bytes());
        hasher.update((trade.market.len() as u64).to_le_bytes());
        hasher.update(trade.market.as_bytes());
        hasher.update(maker.to_le_bytes());
        hasher.update(taker.to_le_bytes());
        for d in [trade.price, trade.quantity] {
            let s = d.normalize().to_string();
            hasher.update((s.len() as u64).to_le_bytes());
            hasher.update(s.as_bytes());
        }
        hasher.update([u8::from(trade.taker_side == Side::Buy)]);
        self.trade_chain = hasher.finalize().into();
    }
}

/// Whether a frontier's acks (its `seq` counting as the origin's own ack) raise any of the acks
/// held for its origin.
fn acks_are_news(st: &OriginState, seq: u64, origin: &NodeId, acks: &[(NodeId, u64)]) -> bool {
    let held = |node: &NodeId| st.acks.get(node).copied().unwrap_or(0);
    seq > held(origin) || acks.iter().any(|(node, acked)| *acked > held(node))
}

/// Merges a verified frontier's acks into its origin's (by maximum; only known origins, so
/// the map stays bounded by the log's membership).
fn merge_acks(
    st: &mut OriginState,
    seq: u64,
    origin: &NodeId,
    acks: &[(NodeId, u64)],
    known: &BTreeSet<NodeId>,
) {
    for (node, acked) in std::iter::once((origin, &seq)).chain(acks.iter().map(|(n, a)| (n, a))) {
        if known.contains(node) {
            let held = st.acks.entry(*node).or_insert(0);
            *held = (*held).max(*acked);
        }
    }
}

/// The votes of one key: (round, voter) -> (last_seq, signature).
type RoundVotes = BTreeMap<(u32, NodeId), (u64, Signature)>;

/// One vote: (voter, round, last_seq, signature).
type Ballot = (NodeId, u32, u64, Signature);

/// Each voter's lowest vote among `votes`: the value that caps its acks (rule 11).
fn lowest_votes(votes: &RoundVotes) -> BTreeMap<NodeId, u64> {
    let mut lowest: BTreeMap<NodeId, u64> = BTreeMap::new();
    for ((_, voter), (seq, _)) in votes {
        let cap = lowest.entry(*voter).or_insert(*seq);
        *cap = (*cap).min(*seq);
    }
    lowest
}

fn clock_exhausted() -> ClientError {
    ClientError::new(
        ClientErrorKind::Unavailable,
        "clock_exhausted",
        "the lamport clock is exhausted; this node cannot create events",
    )
}

fn view(record: &OrderRecord, scales: (u32, u32)) -> OrderView {
    let at = |d: Decimal, scale: u32| {
        let mut d = d;
        d.rescale(scale);
        d
    };
    let remaining = if record.status.is_final() {
        Decimal::ZERO
    } else {
        record
            .order
            .quantity
            .checked_sub(record.filled)
            .unwrap_or(Decimal::ZERO)
            .max(Decimal::ZERO)
    };
    OrderView {
        order_id: ApiOrderId(order_id(&record.origin, record.seq)).to_string(),
        origin: record.origin.to_string(),
        client_order_id: record.order.client_order_id.clone(),
        market: record.order.market.clone(),
        side: record.order.side,
        order_type: record.order.order_type,
        price: record.order.price.map(|p| at(p, scales.0)),
        quantity: at(record.order.quantity, scales.1),
        time_in_force: record.order.time_in_force,
        status: record.status,
        filled_quantity: at(record.filled, scales.1),
        remaining_quantity: at(remaining, scales.1),
        reason: record.reason.clone(),
        lamport: record.lamport,
        cancel_requested: record.cancel_requested,
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
