//! `orderbook-core`: a pure, deterministic, fast limit order book for many markets.
//!
//! The main types are [`Exchange`] (all markets, the only thing that changes
//! state), [`Book`] (one market, read-only queries), [`Command`] (the input:
//! place or cancel) and [`Event`] (the outcome: accepted, trade, filled,
//! rested, cancelled, rejected). Every node of p2p-exchange feeds the same
//! commands in the same order into an [`Exchange`] and so computes the same
//! trades and the same [`Exchange::digest`].
//!
//! # Rules
//! - Prices and quantities are [`rust_decimal::Decimal`] at the API and must be
//!   positive multiples of the market's tick and lot size: anything else is
//!   rejected with a [`RejectReason`], never rounded. Inside, prices are
//!   integer ticks and quantities integer lots.
//! - Price-time priority: best price first, FIFO within a level; trades
//!   execute at the resting (maker) order's price.
//! - Limit orders `gtc` rest their remainder; `ioc` and market orders cancel
//!   it ([`CancelReason::Unfilled`]); `fok` fills completely at once or is
//!   rejected with no effect; `post_only` that would trade is rejected.
//! - A duplicate id of a *resting* order is rejected. Finished orders
//!   (filled, cancelled, rejected) are dropped to keep memory bounded, so
//!   [`Exchange::order`] returns `None` for them: their final state is in the
//!   events that finished them, which the caller keeps. Ids must therefore be
//!   globally unique; the caller (the node) guarantees that.
//! - Self-trade prevention is chosen by the incoming order
//!   ([`SelfTradePrevention`]). Cancels are honoured only from the owner;
//!   cancelling an unknown or finished order is a no-op answered with
//!   [`RejectReason::UnknownOrder`].
//! - [`Exchange::snapshot`] / [`Exchange::restore`] (serde) and
//!   [`Exchange::digest`] (SHA-256 over the full state in a canonical,
//!   little-endian encoding, no hash-map iteration).
//!
//! # Inside
//! Prices are `u64` ticks and quantities `u64` lots. Resting orders live in
//! a slab (56 bytes a slot, reused through a free list) with an id -> slot
//! hash map (24 bytes an entry) using a fixed, seedable hasher
//! ([`Exchange::with_hash_seed`]); nothing ever iterates that map, so results
//! never depend on its layout. Each price level holds a FIFO queue of 8-byte
//! `(slot, generation)` entries. A side finds its levels through a dense
//! ladder: a window of up to 65536 ticks indexed by tick offset, with a
//! bitset of non-empty ticks and the best tick cached, grown on demand and
//! re-centred when empty; levels priced outside the window go to an ordered
//! map, so any price works and memory stays bounded. A cancel frees the slot
//! (bumping its generation) and leaves a stale queue entry behind, skipped by
//! matching and compacted away once stale entries outnumber live ones.
//! A limit order that rests without trading costs one probe of the id map.
//! Measured: about 126 bytes of memory per resting order in a book of 1M
//! orders, about 180 after a third of them were cancelled. Once three
//! quarters of the slots are free (mass cancels or fills), the state is
//! rebuilt from its snapshot into right-sized memory (same digest).
//!
//! # What it does not do
//! No I/O, no async, no clocks, no randomness, no persistence, no trade ids or
//! trade history (the caller numbers and stores the [`Event`]s), no amend.
//!
//! # Example
//! ```
//! use orderbook_core::*;
//! use rust_decimal::Decimal;
//!
//! let d = |s: &str| s.parse::<Decimal>().unwrap();
//! let mut ex = Exchange::new(vec![MarketSpec::new("BTC-USD", d("0.01"), d("0.0001"))]).unwrap();
//! let order = |id, side, price: &str, qty: &str| {
//!     Command::Place(NewOrder {
//!         id: OrderId(id),
//!         owner: OwnerId(id as u64),
//!         market: "BTC-USD".into(),
//!         side,
//!         order_type: OrderType::Limit,
//!         price: Some(d(price)),
//!         quantity: d(qty),
//!         time_in_force: TimeInForce::Gtc,
//!         stp: SelfTradePrevention::None,
//!     })
//! };
//! ex.execute(order(1, Side::Sell, "100.25", "1.5"));
//! let events = ex.execute(order(2, Side::Buy, "101", "2"));
//! assert!(events.contains(&Event::Trade {
//!     market: "BTC-USD".into(),
//!     maker: OrderId(1),
//!     taker: OrderId(2),
//!     maker_owner: OwnerId(1),
//!     taker_owner: OwnerId(2),
//!     price: d("100.25"), // the maker's price
//!     quantity: d("1.5"),
//!     taker_side: Side::Buy,
//! }));
//! let book = ex.market("BTC-USD").unwrap();
//! assert_eq!(book.best_bid(), Some(d("101")));
//! assert_eq!(book.depth(10).bids, vec![(d("101"), d("0.5"))]);
//!
//! // Off-tick prices are rejected, never rounded.
//! let events = ex.execute(order(3, Side::Buy, "100.255", "1"));
//! assert_eq!(events, vec![Event::Rejected { id: OrderId(3), reason: RejectReason::OffTick }]);
//!
//! // Snapshots restore to the same digest.
//! let copy = Exchange::restore(ex.snapshot()).unwrap();
//! assert_eq!(copy.digest(), ex.digest());
//! ```
//!
//! # The `replay` example
//! `cargo run --release -p orderbook-core --example replay -- --tick 0.01 --lot 0.0001`
//! reads JSON Lines commands on stdin and writes JSON Lines events on stdout.
//! All orders share one owner and one market, with self-trade prevention off.
//!
//! Input, one command per line:
//! ```text
//! {"op":"place","id":"7","side":"buy","type":"limit","price":"100.25","quantity":"1.5","time_in_force":"gtc"}
//! {"op":"place","id":"8","side":"sell","type":"market","quantity":"0.5"}
//! {"op":"cancel","id":"7"}
//! ```
//! (`type` `market` has no price and no time in force.) Output, one line per event in order:
//! ```text
//! {"event":"accepted","id":"7"}
//! {"event":"rested","id":"7","price":"100.25","quantity":"1.5"}
//! {"event":"trade","maker":"7","taker":"8","price":"100.25","quantity":"0.5"}
//! {"event":"filled","id":"8"}
//! {"event":"cancelled","id":"7","reason":"requested","remaining":"1"}
//! {"event":"rejected","id":"9","reason":"off_tick"}
//! {"event":"book","bids":[["price","quantity"]],"asks":[]}
//! ```
//! The final `book` line lists the levels aggregated, best first. A line that
//! cannot be parsed yields `{"event":"error","line":N,"message":"..."}` and is skipped.
//! Decimals are printed normalized (no trailing zeros); market orders without
//! `time_in_force` are `ioc`, limit orders without it `gtc`.

mod book;
mod error;
mod exchange;
mod types;
mod units;

pub use book::{Book, RestingOrder};
pub use error::Error;
pub use exchange::{Exchange, MarketSnapshot, Snapshot};
pub use types::{
    CancelReason, Command, Depth, Event, MarketSpec, NewOrder, OrderId, OrderState, OrderStatus,
    OrderType, OwnerId, RejectReason, SelfTradePrevention, Side, TimeInForce,
};
