//! The exchange: all markets, the global order index and the matching algorithm.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::book::{Book, NIL, RestingOrder};
use crate::error::Error;
use crate::types::{
    CancelReason, Command, Event, MarketSpec, NewOrder, OrderId, OrderState, OrderStatus,
    OrderType, OwnerId, RejectReason, SelfTradePrevention, Side, TimeInForce,
};
use crate::units::{Unit, UnitError};

/// The most orders one book can hold (slot numbers are `u32`, `u32::MAX` means "none").
const MAX_ORDERS_PER_BOOK: usize = (u32::MAX - 1) as usize;

/// A deterministic, fixed-key hasher for order ids: a folded multiply of both
/// halves. Results never depend on the map's iteration order, and the engine
/// stays free of randomness.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let full = u128::from(a) * u128::from(b);
    (full as u64) ^ ((full >> 64) as u64)
}

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut buf = [0u8; 8];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(buf));
        }
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = fold_mul(self.0 ^ i ^ 0x243f_6a88_85a3_08d3, 0x9e37_79b9_7f4a_7c15);
    }

    #[inline]
    fn write_u128(&mut self, i: u128) {
        let lo = i as u64;
        let hi = (i >> 64) as u64;
        self.0 = fold_mul(
            lo ^ 0x243f_6a88_85a3_08d3,
            hi ^ 0x1319_8a2e_0370_7344 ^ self.0,
        );
    }
}

/// Where a resting order lives.
#[derive(Debug, Clone, Copy)]
struct Location {
    market: u32,
    slot: u32,
}

type Index = HashMap<u128, Location, BuildHasherDefault<IdHasher>>;

/// A serializable copy of an exchange's full state (see [`Exchange::snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Format version, currently 1.
    pub version: u32,
    /// Every market, in the order they were added.
    pub markets: Vec<MarketSnapshot>,
}

/// One market of a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarketSnapshot {
    /// The market.
    pub spec: MarketSpec,
    /// Resting bids in priority order.
    pub bids: Vec<RestingOrder>,
    /// Resting asks in priority order.
    pub asks: Vec<RestingOrder>,
}

/// All markets and the matching engine. See the crate docs for an example.
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    /// Books in the order their markets were added (an order's location refers to this).
    books: Vec<Book>,
    /// `(name, index into books)` sorted by name, for lookup and canonical iteration.
    by_name: Vec<(String, u32)>,
    /// Resting order id -> location.
    index: Index,
}

impl Exchange {
    /// An exchange with these markets (names unique and non-empty, tick and lot sizes positive).
    pub fn new(markets: Vec<MarketSpec>) -> Result<Exchange, Error> {
        let mut exchange = Exchange::default();
        for spec in markets {
            exchange.add_market(spec)?;
        }
        Ok(exchange)
    }

    /// Adds a market.
    pub fn add_market(&mut self, spec: MarketSpec) -> Result<(), Error> {
        if spec.name.is_empty() {
            return Err(Error::EmptyMarketName);
        }
        let tick = Unit::new(spec.tick_size).ok_or_else(|| Error::InvalidTickSize {
            market: spec.name.clone(),
            value: spec.tick_size,
        })?;
        let lot = Unit::new(spec.lot_size).ok_or_else(|| Error::InvalidLotSize {
            market: spec.name.clone(),
            value: spec.lot_size,
        })?;
        let pos = match self
            .by_name
            .binary_search_by(|(n, _)| n.as_str().cmp(&spec.name))
        {
            Ok(_) => return Err(Error::DuplicateMarket(spec.name)),
            Err(pos) => pos,
        };
        let idx = u32::try_from(self.books.len())
            .map_err(|_| Error::InvalidSnapshot("too many markets".into()))?;
        self.by_name.insert(pos, (spec.name.clone(), idx));
        self.books.push(Book::new(spec, tick, lot));
        Ok(())
    }

    /// The book of a market.
    pub fn market(&self, name: &str) -> Option<&Book> {
        self.market_index(name).map(|i| &self.books[i])
    }

    /// All books, sorted by market name.
    pub fn markets(&self) -> impl Iterator<Item = &Book> + '_ {
        self.by_name.iter().map(|&(_, i)| &self.books[i as usize])
    }

    /// The number of resting orders over all markets.
    pub fn resting_orders(&self) -> usize {
        self.index.len()
    }

    /// The state of a *resting* order (`Open` or `PartiallyFilled`).
    ///
    /// Finished orders (filled, cancelled, rejected) are dropped from the engine
    /// to keep memory bounded, so this returns `None` for them and for unknown
    /// ids; their final state is in the events that finished them.
    pub fn order(&self, id: OrderId) -> Option<OrderState> {
        let loc = self.index.get(&id.0)?;
        let book = &self.books[loc.market as usize];
        let slot = &book.slots[loc.slot as usize];
        Some(OrderState {
            id,
            owner: OwnerId(slot.owner),
            market: book.spec.name.clone(),
            side: slot.side,
            price: Some(book.tick.to_decimal(u128::from(slot.price))),
            quantity: book
                .lot
                .to_decimal(u128::from(slot.remaining) + u128::from(slot.filled)),
            filled: book.lot.to_decimal(u128::from(slot.filled)),
            status: if slot.filled == 0 {
                OrderStatus::Open
            } else {
                OrderStatus::PartiallyFilled
            },
        })
    }

    /// Applies one command and returns its outcome.
    pub fn execute(&mut self, cmd: Command) -> Vec<Event> {
        let mut out = Vec::new();
        self.execute_into(cmd, &mut out);
        out
    }

    /// Applies one command and appends its outcome to `out` (which is not cleared),
    /// so a caller can reuse one buffer.
    pub fn execute_into(&mut self, cmd: Command, out: &mut Vec<Event>) {
        match cmd {
            Command::Place(order) => self.place(order, out),
            Command::Cancel { id, owner } => self.cancel(id, owner, out),
        }
    }

    fn market_index(&self, name: &str) -> Option<usize> {
        self.by_name
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|pos| self.by_name[pos].1 as usize)
    }

    fn cancel(&mut self, id: OrderId, owner: OwnerId, out: &mut Vec<Event>) {
        let Some(&loc) = self.index.get(&id.0) else {
            out.push(Event::Rejected {
                id,
                reason: RejectReason::UnknownOrder,
            });
            return;
        };
        let book = &mut self.books[loc.market as usize];
        let slot = &book.slots[loc.slot as usize];
        if slot.owner != owner.0 {
            out.push(Event::Rejected {
                id,
                reason: RejectReason::NotOwner,
            });
            return;
        }
        let remaining = book.lot.to_decimal(u128::from(slot.remaining));
        book.remove(loc.slot);
        self.index.remove(&id.0);
        out.push(Event::Cancelled {
            id,
            reason: CancelReason::Requested,
            remaining,
        });
    }

    fn place(&mut self, order: NewOrder, out: &mut Vec<Event>) {
        let id = order.id;
        let reject = |out: &mut Vec<Event>, reason| out.push(Event::Rejected { id, reason });
        let Some(market) = self.market_index(&order.market) else {
            return reject(out, RejectReason::UnknownMarket);
        };
        let book = &mut self.books[market];
        let limit = match (order.order_type, order.price) {
            (OrderType::Limit, None) => return reject(out, RejectReason::MissingPrice),
            (OrderType::Market, Some(_)) => return reject(out, RejectReason::UnexpectedPrice),
            (OrderType::Market, None) => {
                if order.time_in_force == TimeInForce::PostOnly {
                    return reject(out, RejectReason::InvalidTimeInForce);
                }
                None
            }
            (OrderType::Limit, Some(price)) => match book.tick.to_units(price) {
                Ok(ticks) => Some(ticks),
                Err(UnitError::OffGrid) => return reject(out, RejectReason::OffTick),
                Err(_) => return reject(out, RejectReason::InvalidPrice),
            },
        };
        let quantity = match book.lot.to_units(order.quantity) {
            Ok(lots) => lots,
            Err(UnitError::OffGrid) => return reject(out, RejectReason::OffLot),
            Err(_) => return reject(out, RejectReason::InvalidQuantity),
        };
        if self.index.contains_key(&id.0) {
            return reject(out, RejectReason::DuplicateOrderId);
        }
        if book.len >= MAX_ORDERS_PER_BOOK {
            return reject(out, RejectReason::BookFull);
        }
        let taker = Taker {
            id: id.0,
            owner: order.owner.0,
            side: order.side,
            limit,
            stp: order.stp,
        };
        match order.time_in_force {
            TimeInForce::PostOnly => {
                if let Some(p) = limit
                    && book.crosses(order.side, p)
                {
                    return reject(out, RejectReason::PostOnlyWouldTake);
                }
            }
            TimeInForce::Fok => {
                if !book.can_fill(&taker, quantity) {
                    return reject(out, RejectReason::FokUnfillable);
                }
            }
            TimeInForce::Gtc | TimeInForce::Ioc => {}
        }
        out.push(Event::Accepted { id });
        let (remaining, outcome) = book.take(&taker, quantity, &mut self.index, out);
        match outcome {
            TakeOutcome::SelfTradeStop => out.push(Event::Cancelled {
                id,
                reason: CancelReason::SelfTrade,
                remaining: book.lot.to_decimal(u128::from(remaining)),
            }),
            TakeOutcome::Done if remaining == 0 => out.push(Event::Filled { id }),
            TakeOutcome::Done => match (limit, order.time_in_force) {
                (Some(price), TimeInForce::Gtc | TimeInForce::PostOnly) => {
                    let slot = book.insert(
                        id.0,
                        order.owner.0,
                        order.side,
                        price,
                        remaining,
                        quantity - remaining,
                    );
                    self.index.insert(
                        id.0,
                        Location {
                            market: market as u32,
                            slot,
                        },
                    );
                    out.push(Event::Rested {
                        id,
                        price: book.tick.to_decimal(u128::from(price)),
                        quantity: book.lot.to_decimal(u128::from(remaining)),
                    });
                }
                _ => out.push(Event::Cancelled {
                    id,
                    reason: CancelReason::Unfilled,
                    remaining: book.lot.to_decimal(u128::from(remaining)),
                }),
            },
        }
    }

    /// A copy of the full state: every market and its resting orders in priority order.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            version: 1,
            markets: self
                .books
                .iter()
                .map(|book| MarketSnapshot {
                    spec: book.spec.clone(),
                    bids: book.resting(Side::Buy),
                    asks: book.resting(Side::Sell),
                })
                .collect(),
        }
    }

    /// Rebuilds an exchange from a snapshot, validating it fully (grid, ids, a
    /// non-crossed book): `restore(x.snapshot())` has the same [`Exchange::digest`] as `x`.
    pub fn restore(snapshot: Snapshot) -> Result<Exchange, Error> {
        let bad = |msg: String| Err(Error::InvalidSnapshot(msg));
        if snapshot.version != 1 {
            return bad(format!("unsupported version {}", snapshot.version));
        }
        let mut exchange = Exchange::default();
        for market in snapshot.markets {
            exchange.add_market(market.spec)?;
            let m = exchange.books.len() - 1;
            for (side, orders) in [(Side::Buy, market.bids), (Side::Sell, market.asks)] {
                for o in orders {
                    let book = &mut exchange.books[m];
                    let name = &book.spec.name;
                    let (Ok(price), Ok(remaining)) =
                        (book.tick.to_units(o.price), book.lot.to_units(o.quantity))
                    else {
                        return bad(format!(
                            "order {} in {name}: price or quantity off grid",
                            o.id
                        ));
                    };
                    let filled = if o.filled.is_zero() {
                        0
                    } else {
                        match book.lot.to_units(o.filled) {
                            Ok(f)
                                if f.checked_add(remaining)
                                    .is_some_and(|t| t <= crate::units::MAX_UNITS) =>
                            {
                                f
                            }
                            _ => {
                                return bad(format!(
                                    "order {} in {name}: invalid filled quantity",
                                    o.id
                                ));
                            }
                        }
                    };
                    if exchange.index.contains_key(&o.id.0) {
                        return bad(format!("duplicate order id {}", o.id));
                    }
                    if book.len >= MAX_ORDERS_PER_BOOK {
                        return bad(format!("too many orders in {name}"));
                    }
                    let slot = book.insert(o.id.0, o.owner.0, side, price, remaining, filled);
                    exchange.index.insert(
                        o.id.0,
                        Location {
                            market: m as u32,
                            slot,
                        },
                    );
                }
            }
            let book = &exchange.books[m];
            if let (Some((&bid, _)), Some((&ask, _))) =
                (book.bids.last_key_value(), book.asks.first_key_value())
                && bid >= ask
            {
                return bad(format!("market {} is crossed", book.spec.name));
            }
        }
        Ok(exchange)
    }

    /// A SHA-256 digest of the full state: every market (by name) with its
    /// tick and lot size, and every resting order in priority order with its
    /// id, owner, price, remaining and filled quantity. Integers are encoded
    /// little-endian, so the same state gives the same digest on every machine.
    /// It costs one pass over the resting orders (about 50 bytes hashed each).
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"orderbook-core/state/v1");
        h.update((self.by_name.len() as u64).to_le_bytes());
        for book in self.markets() {
            h.update((book.spec.name.len() as u64).to_le_bytes());
            h.update(book.spec.name.as_bytes());
            for unit in [book.tick, book.lot] {
                let (m, s) = unit.parts();
                h.update(m.to_le_bytes());
                h.update(s.to_le_bytes());
            }
            for (side, levels) in [(0u8, book.bids.len()), (1u8, book.asks.len())] {
                h.update([side]);
                h.update((levels as u64).to_le_bytes());
                let side = if side == 0 { Side::Buy } else { Side::Sell };
                let mut buf = [0u8; 48];
                book.for_each_resting(side, |slot| {
                    buf[0..16].copy_from_slice(&slot.id.to_le_bytes());
                    buf[16..24].copy_from_slice(&slot.owner.to_le_bytes());
                    buf[24..32].copy_from_slice(&slot.price.to_le_bytes());
                    buf[32..40].copy_from_slice(&slot.remaining.to_le_bytes());
                    buf[40..48].copy_from_slice(&slot.filled.to_le_bytes());
                    h.update(buf);
                });
            }
        }
        h.finalize().into()
    }

    /// Checks the internal consistency of every book: not crossed, levels'
    /// totals and counts match their orders, links are consistent, every
    /// resting order is indexed and has a positive remainder. Meant for tests
    /// and for nodes that verify their state; costs a pass over all orders.
    pub fn check_invariants(&self) -> Result<(), Error> {
        let fail = |msg: String| Err(Error::Invariant(msg));
        let mut seen = 0usize;
        for (m, book) in self.books.iter().enumerate() {
            let name = &book.spec.name;
            if let (Some((&bid, _)), Some((&ask, _))) =
                (book.bids.last_key_value(), book.asks.first_key_value())
                && bid >= ask
            {
                return fail(format!("{name}: crossed book, bid {bid} >= ask {ask}"));
            }
            let mut count = 0usize;
            for (side, levels) in [(Side::Buy, &book.bids), (Side::Sell, &book.asks)] {
                for (&price, level) in levels {
                    let (mut n, mut total, mut prev, mut s) = (0u32, 0u128, NIL, level.head);
                    while s != NIL {
                        let Some(slot) = book.slots.get(s as usize) else {
                            return fail(format!("{name}: dangling slot {s}"));
                        };
                        if slot.prev != prev || slot.price != price || slot.side != side {
                            return fail(format!("{name}: broken link at order {}", slot.id));
                        }
                        if slot.remaining == 0 {
                            return fail(format!(
                                "{name}: order {} rests with nothing left",
                                slot.id
                            ));
                        }
                        match self.index.get(&slot.id) {
                            Some(loc) if loc.market as usize == m && loc.slot == s => {}
                            _ => return fail(format!("{name}: order {} not indexed", slot.id)),
                        }
                        n += 1;
                        total += u128::from(slot.remaining);
                        prev = s;
                        s = slot.next;
                        if n > level.count {
                            return fail(format!("{name}: level {price} has a cycle"));
                        }
                    }
                    if n == 0 || n != level.count || total != level.total || prev != level.tail {
                        return fail(format!(
                            "{name}: level {price} totals do not match its orders"
                        ));
                    }
                    count += n as usize;
                }
            }
            if count != book.len {
                return fail(format!(
                    "{name}: {count} orders on the book, {} counted",
                    book.len
                ));
            }
            seen += count;
        }
        if seen != self.index.len() {
            return fail(format!(
                "{} orders indexed, {seen} on books",
                self.index.len()
            ));
        }
        Ok(())
    }
}

/// The incoming order, in internal units.
struct Taker {
    id: u128,
    owner: u64,
    side: Side,
    /// Limit price in ticks; `None` for a market order.
    limit: Option<u64>,
    stp: SelfTradePrevention,
}

impl Taker {
    /// Whether a resting order at `price` (on the other side) is acceptable.
    #[inline]
    fn accepts(&self, price: u64) -> bool {
        match (self.limit, self.side) {
            (None, _) => true,
            (Some(limit), Side::Buy) => price <= limit,
            (Some(limit), Side::Sell) => price >= limit,
        }
    }

    /// Whether self-trade prevention applies against a resting order of `owner`.
    #[inline]
    fn prevents(&self, owner: u64) -> bool {
        owner == self.owner && self.stp != SelfTradePrevention::None
    }
}

enum TakeOutcome {
    /// Ran out of quantity or of acceptable liquidity.
    Done,
    /// Self-trade prevention cancelled the incoming order.
    SelfTradeStop,
}

impl Book {
    /// Whether an order on `side` at `price` ticks would trade on arrival.
    fn crosses(&self, side: Side, price: u64) -> bool {
        match side {
            Side::Buy => self.asks.keys().next().is_some_and(|&ask| ask <= price),
            Side::Sell => self
                .bids
                .keys()
                .next_back()
                .is_some_and(|&bid| bid >= price),
        }
    }

    /// Whether `taker` would fill `quantity` completely right now (for fill-or-kill),
    /// taking self-trade prevention into account.
    fn can_fill(&self, taker: &Taker, quantity: u64) -> bool {
        let mut available: u64 = 0;
        let mut visit = |(&price, level): (&u64, &crate::book::Level)| -> Option<bool> {
            if !taker.accepts(price) {
                return Some(false);
            }
            let mut s = level.head;
            while s != NIL {
                let slot = &self.slots[s as usize];
                if taker.prevents(slot.owner) {
                    if taker.stp == SelfTradePrevention::CancelIncoming {
                        return Some(false);
                    }
                } else {
                    available = available.saturating_add(slot.remaining);
                    if available >= quantity {
                        return Some(true);
                    }
                }
                s = slot.next;
            }
            None
        };
        let found = match taker.side {
            Side::Buy => self.asks.iter().find_map(&mut visit),
            Side::Sell => self.bids.iter().rev().find_map(&mut visit),
        };
        found.unwrap_or(false)
    }

    /// Matches `taker` for up to `quantity` lots against the other side, at the
    /// makers' prices in price-time priority. Returns the unfilled remainder.
    fn take(
        &mut self,
        taker: &Taker,
        mut remaining: u64,
        index: &mut Index,
        out: &mut Vec<Event>,
    ) -> (u64, TakeOutcome) {
        let Book {
            spec,
            tick,
            lot,
            bids,
            asks,
            slots,
            free,
            len,
        } = self;
        let levels = match taker.side {
            Side::Buy => asks,
            Side::Sell => bids,
        };
        while remaining > 0 {
            let entry = match taker.side {
                Side::Buy => levels.first_entry(),
                Side::Sell => levels.last_entry(),
            };
            let Some(mut entry) = entry else { break };
            let price = *entry.key();
            if !taker.accepts(price) {
                break;
            }
            let level = entry.get_mut();
            let price_dec = tick.to_decimal(u128::from(price));
            let mut stop = false;
            while remaining > 0 && level.head != NIL {
                let s = level.head;
                let maker = &mut slots[s as usize];
                let done = if taker.prevents(maker.owner) {
                    if taker.stp == SelfTradePrevention::CancelIncoming {
                        stop = true;
                        break;
                    }
                    out.push(Event::Cancelled {
                        id: OrderId(maker.id),
                        reason: CancelReason::SelfTrade,
                        remaining: lot.to_decimal(u128::from(maker.remaining)),
                    });
                    level.total -= u128::from(maker.remaining);
                    true
                } else {
                    let q = remaining.min(maker.remaining);
                    maker.remaining -= q;
                    maker.filled += q;
                    remaining -= q;
                    level.total -= u128::from(q);
                    out.push(Event::Trade {
                        market: spec.name.clone(),
                        maker: OrderId(maker.id),
                        taker: OrderId(taker.id),
                        maker_owner: OwnerId(maker.owner),
                        taker_owner: OwnerId(taker.owner),
                        price: price_dec,
                        quantity: lot.to_decimal(u128::from(q)),
                        taker_side: taker.side,
                    });
                    if maker.remaining == 0 {
                        out.push(Event::Filled {
                            id: OrderId(maker.id),
                        });
                        true
                    } else {
                        false
                    }
                };
                if done {
                    // Pop the head and free its slot.
                    let (id, next) = (maker.id, maker.next);
                    index.remove(&id);
                    level.head = next;
                    if next == NIL {
                        level.tail = NIL;
                    } else {
                        slots[next as usize].prev = NIL;
                    }
                    level.count -= 1;
                    slots[s as usize].next = *free;
                    *free = s;
                    *len -= 1;
                }
            }
            if level.head == NIL {
                entry.remove();
            }
            if stop {
                return (remaining, TakeOutcome::SelfTradeStop);
            }
        }
        (remaining, TakeOutcome::Done)
    }
}
